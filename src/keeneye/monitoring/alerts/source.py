"""Where the rules engine reads metrics from: the current Prometheus exposition, as plain samples.

The engine sees exactly what Prometheus would scrape (exposition names: ``_total``, ``_bucket`` with
``le``), so a rule means the same in the embedded engine and in the exported Prometheus rules.
Three sources cover the deployments:

* :class:`RegistrySource` — a ``CollectorRegistry`` in this process (tests, a single process);
* :class:`MultiprocessSource` — the ``PROMETHEUS_MULTIPROC_DIR`` that ``keeneye up``'s processes
  (API, workers, scheduler) share, read without any HTTP;
* :class:`ScrapeSource` — ``GET /metrics`` of one or more running processes, with a bounded timeout.

:func:`default_source` picks the multiprocess folder when the environment names one, else scrapes the
API at ``serving.host:port``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keeneye.domain import KeeneyeError
from keeneye.settings import Settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_SCRAPE_TIMEOUT_S = 5.0


class MetricsUnavailable(KeeneyeError):
    """No metrics could be read this tick (the API is down, the folder is gone …)."""


@dataclass(frozen=True)
class Sample:
    """One series of the exposition at this moment: ``name{labels} value``."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    value: float = 0.0


class MetricSource(Protocol):
    """Anything that can produce the current samples; raises :class:`MetricsUnavailable` when it cannot."""

    def samples(self) -> list[Sample]: ...


def parse_exposition(text: str) -> list[Sample]:
    """Prometheus text exposition → samples (names as PromQL sees them)."""
    try:
        return [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    except ValueError as exc:
        raise MetricsUnavailable(f"the metrics exposition cannot be parsed: {exc}") from exc


class RegistrySource:
    """The metrics of one ``CollectorRegistry`` in this process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def samples(self) -> list[Sample]:
        return parse_exposition(generate_latest(self.registry).decode())


class MultiprocessSource:
    """Every process's metrics from a ``PROMETHEUS_MULTIPROC_DIR`` (aggregated like ``/metrics``)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._registry: CollectorRegistry | None = None

    def samples(self) -> list[Sample]:
        if not self.directory.is_dir():
            raise MetricsUnavailable(
                f"{MULTIPROC_ENV}={self.directory} is not a folder",
                fix="start keeneye with `keeneye up`, or unset the variable to scrape the API",
            )
        if self._registry is None:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
            self._registry = registry
        return RegistrySource(self._registry).samples()


class ScrapeSource:
    """``GET /metrics`` of each URL. With several URLs every series gains an ``instance`` label
    (``host:port``), as Prometheus adds one, so equal series from two processes stay apart.

    A URL that fails is logged and left out; when every URL fails the tick has no data and
    :class:`MetricsUnavailable` is raised (the engine then changes nothing rather than resolving
    every alert because the API restarted).
    """

    def __init__(self, urls: Sequence[str], *, timeout: float = DEFAULT_SCRAPE_TIMEOUT_S) -> None:
        if not urls:
            raise ValueError("ScrapeSource needs at least one URL")
        self.urls = list(urls)
        self.timeout = timeout

    def samples(self) -> list[Sample]:
        out: list[Sample] = []
        errors: list[str] = []
        with httpx.Client(timeout=self.timeout) as client:
            for url in self.urls:
                try:
                    response = client.get(url)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    errors.append(f"{url}: {exc or type(exc).__name__}")
                    continue
                samples = parse_exposition(response.text)
                if len(self.urls) > 1:
                    instance = urlsplit(url).netloc
                    samples = [Sample(s.name, {**s.labels, "instance": instance}, s.value) for s in samples]
                out.extend(samples)
        if errors and len(errors) == len(self.urls):
            raise MetricsUnavailable(
                "cannot read metrics: " + "; ".join(errors),
                fix="start the API (keeneye up / keeneye serve) or check serving.host and serving.port",
            )
        for error in errors:  # some targets answered: evaluate with theirs, say which did not
            log.warning("cannot scrape metrics from %s", error)
        return out


def api_metrics_url(settings: Settings) -> str:
    """``http://host:port/metrics`` of the configured API; a wildcard bind address means loopback."""
    host = settings.serving.host
    if host in {"0.0.0.0", ""}:  # noqa: S104 - a bind address, read here, never bound
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.serving.port}/metrics"


def default_source(settings: Settings) -> MetricSource:
    """The multiprocess folder when ``PROMETHEUS_MULTIPROC_DIR`` is set, else a scrape of the API."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        return MultiprocessSource(directory)
    return ScrapeSource([api_metrics_url(settings)])


__all__ = [
    "MULTIPROC_ENV",
    "MetricSource",
    "MetricsUnavailable",
    "MultiprocessSource",
    "RegistrySource",
    "Sample",
    "ScrapeSource",
    "api_metrics_url",
    "default_source",
    "parse_exposition",
]
