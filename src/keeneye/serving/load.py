"""The API's utilisation per pipeline, reported as the stream workers' is: ``keeneye_worker_utilization``
with ``kind="api"`` (the workers' series carry ``kind="stream"``), so one load rule covers both.

**What it measures.** For each pipeline, the mean number of its requests in flight over the last 30 s
divided by the process's in-flight bound for it (``serving.max_inflight`` or the pipeline's
``limits.max_inflight``, each ``serve --workers`` process holding its share): the busy time of the
process's request slots over their wall time (:meth:`~keeneye.serving.limits.InflightLimiter.utilization`).
At 1.0 every slot is taken and the next request is answered 503, so it says "this replica is
saturated" whatever the bottleneck is (decoding, the model, storing), as a worker's busy fraction does
for a worker. Requests refused by the per-client caps never take a slot and do not count.

**Several processes.** ``keeneye serve --workers N`` (also under ``keeneye up``) runs N API processes
that share one metrics folder. Every :data:`REPORT_SECONDS` each writes its own numbers to
``<home>/run/api-load/<host>-<pid>.json`` and reads every fresh file there, then sets ``stat="mean"``
(the mean over the API processes) and ``stat="max"`` (the busiest). Every process computes the same
numbers from the same files, so the gauge's ``mostrecent`` combination is right whichever wrote last.
A file not rewritten for :data:`STALE_SECONDS` (a killed process) is ignored and later removed; a
process removes its own when it stops. In a cluster each pod has its own home: each pod reports its
own numbers and Prometheus compares every pod's series with the rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from keeneye.metrics import Metrics
from keeneye.serving.limits import InflightLimiter

log = logging.getLogger(__name__)

KIND = "api"
REPORT_SECONDS = 2.0
STALE_SECONDS = 10.0


def load_dir(home: Path) -> Path:
    """Where the API processes of one home write their utilisation."""
    return home / "run" / "api-load"


@dataclass(frozen=True)
class PipelineLoad:
    """One pipeline's utilisation over the API processes: their mean and the busiest one."""

    mean: float
    max: float
    processes: int


def combine(loads: Sequence[Mapping[str, float]]) -> dict[str, PipelineLoad]:
    """Per pipeline, the mean and the maximum of the processes that report it."""
    values: dict[str, list[float]] = {}
    for load in loads:
        for pipeline, value in load.items():
            values.setdefault(pipeline, []).append(value)
    return {p: PipelineLoad(sum(v) / len(v), max(v), len(v)) for p, v in sorted(values.items())}


class ApiLoad:
    """This process's utilisation per pipeline, shared with the other API processes of its home."""

    def __init__(
        self,
        folder: Path,
        limiters: Mapping[str, InflightLimiter],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        self.folder = folder
        self.limiters = limiters
        self.metrics = metrics
        self.clock = clock
        self.path = folder / f"{name or f'{socket.gethostname()}-{os.getpid()}'}.json"

    def own(self) -> dict[str, float]:
        return {name: limiter.utilization() for name, limiter in self.limiters.items()}

    def tick(self) -> dict[str, PipelineLoad]:
        """Write this process's numbers, read everyone's, set the gauges; returns what it set.

        Never raises for the folder: a process that cannot share its file still reports its own load.
        """
        own = self.own()
        now = self.clock()
        loads: list[Mapping[str, float]] = [own]
        try:
            self._write(own, now)
            loads = [*self._read_others(now), own]
        except OSError as exc:
            log.warning("cannot share the API load in %s: %s", self.folder, exc)
        combined = combine(loads)
        for pipeline, load in combined.items():
            self.metrics.worker_utilization.labels(pipeline=pipeline, kind=KIND, stat="mean").set(load.mean)
            self.metrics.worker_utilization.labels(pipeline=pipeline, kind=KIND, stat="max").set(load.max)
        return combined

    def close(self) -> None:
        """A stopping process has no load: its file goes and its gauges read 0 (the values of a
        process stay in a shared metrics folder; any API process still running rewrites them)."""
        with contextlib.suppress(OSError):
            self.path.unlink()
        for pipeline in self.limiters:
            for stat in ("mean", "max"):
                self.metrics.worker_utilization.labels(pipeline=pipeline, kind=KIND, stat=stat).set(0.0)

    def _write(self, own: Mapping[str, float], now: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"updated_at": now, "pipelines": own}), encoding="utf-8")
        os.replace(tmp, self.path)  # a reader never sees half a file

    def _read_others(self, now: float) -> list[dict[str, float]]:
        loads = []
        for path in self.folder.glob("*.json"):
            if path == self.path:
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                updated, pipelines = float(data["updated_at"]), data["pipelines"]
                load = {str(k): float(v) for k, v in pipelines.items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # removed meanwhile, or not ours
            if now - updated > STALE_SECONDS:
                if now - updated > 10 * STALE_SECONDS:
                    with contextlib.suppress(OSError):
                        path.unlink()  # a process killed long ago
                continue
            loads.append(load)
        return loads


async def report_load(load: ApiLoad, interval: float = REPORT_SECONDS) -> None:
    """The API's background task: :meth:`ApiLoad.tick` every ``interval`` seconds until cancelled."""
    try:
        while True:
            try:
                await asyncio.to_thread(load.tick)
            except Exception:  # a failed tick must not end the reporting for the process's life
                log.exception("reporting the API load failed; trying again in %.0f s", interval)
            await asyncio.sleep(interval)
    finally:
        load.close()


__all__ = [
    "KIND",
    "REPORT_SECONDS",
    "STALE_SECONDS",
    "ApiLoad",
    "PipelineLoad",
    "combine",
    "load_dir",
    "report_load",
]
