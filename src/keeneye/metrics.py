"""The metric catalogue: every Prometheus metric keeneye exports, defined once, here.

Metrics live in a :class:`Metrics` object bound to a ``CollectorRegistry`` (one per app, so tests and
several apps in one process never collide). Names, labels and help text are the contract dashboards
and alert rules depend on: add freely, rename only with care. ``docs/metrics.md`` is generated from
this module (``python -m keeneye.metrics > docs/metrics.md``); a test keeps the two equal.

**Several processes.** ``keeneye up`` runs the API, the stream workers and the scheduler as separate
processes, each counting for itself. With ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client keeps
every value in a per-process memory-mapped file in that directory, and :func:`render_metrics` (the
API's ``/metrics``) or :func:`serve_metrics` (a worker's own port) add them up: counters and
histograms are summed; each gauge says how it combines (its ``multiprocess_mode``, reasoned beside
it below). prometheus_client chooses between in-memory and file-backed values when it is first
imported (``prometheus_client.values.ValueClass``); :func:`enable_multiprocess` switches a process
that imported it before the directory was known, so it must run before the process creates its
first metric value. Without the variable (tests, one process per pod) each :class:`Metrics` renders
its own registry. With it, a labelled value cannot be taken back (``remove()``/``clear()`` leave it in
the file): set a gauge to 0 instead; and keep one :class:`Metrics` per process, since two instances
in one process share its files and would overwrite each other's counts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)

from keeneye.domain import ConfigError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets in seconds: fine below the 348/490 ms SLOs, coarse above.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.348,
    0.4,
    0.49,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

STAGES = ("decode", "queue", "infer", "post", "store")

MetricKind = Literal["counter", "gauge", "histogram"]
GaugeMode = Literal[
    "all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent"
]

# How a gauge's per-process values become one number, in words for docs/metrics.md.
_MODE_WORDS: dict[str, str] = {
    "sum": "sum",
    "livesum": "sum over live processes",
    "max": "maximum",
    "livemax": "maximum over live processes",
    "min": "minimum",
    "livemin": "minimum over live processes",
    "mostrecent": "latest write of any process",
    "livemostrecent": "latest write of a live process",
    "all": "one series per process (pid label)",
    "liveall": "one series per live process (pid label)",
}


@dataclass(frozen=True)
class MetricDoc:
    """One catalogue entry, as docs/metrics.md shows it."""

    name: str  # as registered; a counter is exposed as <name>_total
    kind: MetricKind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    mode: str = "sum"  # across processes: counters and histograms always add up

    @property
    def exposed(self) -> str:
        return f"{self.name}_total" if self.kind == "counter" else self.name


class Metrics:
    """Every keeneye metric, registered on one ``CollectorRegistry``; :attr:`catalogue` describes them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.catalogue: list[MetricDoc] = []
        self.requests = self._counter(
            "keeneye_requests",
            "HTTP prediction requests by pipeline and response status",
            ["pipeline", "status"],
        )
        self.rejections = self._counter(
            "keeneye_rejections", "Refused inputs by pipeline and reason code", ["pipeline", "reason"]
        )
        self.stage_seconds = self._histogram(
            "keeneye_stage_seconds",
            "Time spent per processing stage (decode, queue, infer, post, store)",
            ["pipeline", "stage"],
            buckets=LATENCY_BUCKETS,
        )
        self.request_seconds = self._histogram(
            "keeneye_request_seconds",
            "End-to-end prediction latency inside the server",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = self._histogram(
            "keeneye_batch_size", "Images per model run (micro-batching)", ["pipeline"], buckets=BATCH_BUCKETS
        )
        self.store_group_size = self._histogram(
            "keeneye_store_group_size",
            "Answers made durable by one group commit of the API (one flush, one transaction)",
            [],
            buckets=BATCH_BUCKETS,
        )
        self.cache = self._counter(
            "keeneye_cache", "Prediction cache lookups by result (hit|miss)", ["pipeline", "result"]
        )
        # Each API process counts its own requests in flight: the total is their sum, and a process
        # that died has none in flight any more (live).
        self.inflight = self._gauge(
            "keeneye_inflight_requests", "Prediction requests being processed now", [], mode="livesum"
        )
        # The API and every worker set 1 for the version they serve and 0 for the one they left:
        # 1 = at least one live process serves it (mid-rollout both versions show 1).
        self.model_info = self._gauge(
            "keeneye_model_info",
            "The model version serving each pipeline (value 1)",
            ["pipeline", "model", "version"],
            mode="livemax",
        )
        self.model_reloads = self._counter(
            "keeneye_model_reloads", "Served model switched after an alias move", ["pipeline"]
        )
        # Scaling (keeneye up's autoscaler; the Kubernetes HPA/KEDA in the scaled deployment). The
        # supervisor sets these each control tick and the API copies the same numbers from the system
        # view: one truth, so the latest write is the value. Not live: the numbers stay right across
        # a restart of the API.
        self.replicas = self._gauge(
            "keeneye_replicas", "Worker replicas running per pipeline", ["pipeline"], mode="mostrecent"
        )
        self.desired_replicas = self._gauge(
            "keeneye_desired_replicas",
            "Worker replicas the autoscaler wants per pipeline (clamped to min/max)",
            ["pipeline"],
            mode="mostrecent",
        )
        # One metric for every kind of replica: kind=stream (the supervisor's mean and busiest of
        # the workers' busy fractions, copied by the API as above) and kind=api (the API processes'
        # request slots in use over time, serving/load.py: every API process computes the same mean
        # and busiest from the processes' shared files), so the latest write is the value.
        self.worker_utilization = self._gauge(
            "keeneye_worker_utilization",
            "Load of a pipeline's replicas by kind (stream: workers' busy fraction; api: API processes' "
            "in-flight slots in use), mean (stat=mean) and busiest replica (stat=max), 0..1",
            ["pipeline", "kind", "stat"],
            mode="mostrecent",
        )
        self.queue_lag = self._gauge(
            "keeneye_queue_lag",
            "Messages of keeneye.<pipeline>.in not yet acknowledged by the workers",
            ["pipeline"],
            mode="mostrecent",
        )
        self.scaling_decisions = self._counter(
            "keeneye_scaling_decisions",
            "Autoscaler decisions by direction (up|down|none)",
            ["pipeline", "direction"],
        )
        # Stream workers.
        self.observations = self._counter(
            "keeneye_observations",
            "Observations settled by the stream workers, by final status (done|rejected|failed)",
            ["pipeline", "status"],
        )
        self.observation_seconds = self._histogram(
            "keeneye_observation_seconds",
            "Ingest-to-result latency of stream observations (accepted → stored)",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
        )
        self.dead_letters = self._counter(
            "keeneye_dead_letters",
            "Messages sent to keeneye.<pipeline>.dlq, by reason code",
            ["pipeline", "reason"],
        )
        # The supervisor's bounds per pipeline, set with the replica gauges above (same reasoning).
        self.min_replicas = self._gauge(
            "keeneye_min_replicas", "Autoscaler floor per pipeline", ["pipeline"], mode="mostrecent"
        )
        self.max_replicas = self._gauge(
            "keeneye_max_replicas", "Autoscaler ceiling per pipeline", ["pipeline"], mode="mostrecent"
        )
        # Drift (keeneye.monitoring.drift): the latest closed window per pipeline, whichever process
        # closed it (the scheduler, a restarted scheduler, `keeneye drift`). A maximum would keep an
        # old alarm after a newer clean window; not live, because a window's result stays true after
        # the process that computed it has exited.
        self.drift_score = self._gauge(
            "keeneye_drift_score",
            "Latest drift window: PSI or KS statistic per feature (test=psi|ks), MMD p-value (test=mmd_p)",
            ["pipeline", "feature", "test"],
            mode="mostrecent",
        )
        self.drift_alarm = self._gauge(
            "keeneye_drift_alarm",
            "1 when the latest drift window of the pipeline alarms (PSI, KS or MMD), else 0",
            ["pipeline"],
            mode="mostrecent",
        )
        self.drift_windows = self._counter(
            "keeneye_drift_windows",
            "Drift windows closed, by outcome (alarm=true|false)",
            ["pipeline", "alarm"],
        )
        # Online quality from feedback (keeneye.monitoring.quality): latest window, as for drift.
        self.online_quality = self._gauge(
            "keeneye_online_quality",
            "Precision, recall or F1 (metric=…) of a model version on labelled live traffic, latest window",
            ["pipeline", "version", "metric"],
            mode="mostrecent",
        )
        self.quality_drop = self._gauge(
            "keeneye_quality_drop",
            "1 when a model version's online quality is more than the allowed share below its test value",
            ["pipeline", "version"],
            mode="mostrecent",
        )
        self.feedback = self._counter(
            "keeneye_feedback", "Ground-truth labels received, by source", ["pipeline", "source"]
        )
        # Alerting (keeneye.monitoring.alerts). The rules engine's latest evaluation is the truth, and
        # the alerts of an engine that died must vanish rather than stay firing forever (live).
        self.alerts = self._gauge(
            "keeneye_alerts",
            "Alerts now pending or firing, by rule and severity",
            ["rule", "severity", "state"],
            mode="livemostrecent",
        )
        self.alert_notifications = self._counter(
            "keeneye_alert_notifications",
            "Notification attempts by channel and outcome (ok=true|false)",
            ["channel", "ok"],
        )
        # Lifecycle (keeneye.lifecycle): retraining and rollout.
        self.training_runs = self._counter(
            "keeneye_training_runs",
            "Retraining runs finished, by cause and status",
            ["pipeline", "cause", "status"],
        )
        # Whichever process moved the rollout (API route, scheduler) sets every state of the
        # pipeline: the latest move wins, and it stays true after that process exits.
        self.rollout_state = self._gauge(
            "keeneye_rollout_state",
            "1 for the pipeline's current rollout state (stable|shadow|canary), 0 for the others",
            ["pipeline", "state"],
            mode="mostrecent",
        )
        self.variant_predictions = self._counter(
            "keeneye_variant_predictions",
            "Predictions by variant (champion|canary|shadow)",
            ["pipeline", "variant"],
        )
        # A windowed share computed by one process at a time: the latest window, as for drift.
        self.shadow_agreement = self._gauge(
            "keeneye_shadow_agreement",
            "Share of shadow predictions agreeing with the champion, latest window",
            ["pipeline"],
            mode="mostrecent",
        )

        # PLC sinks (keeneye.sinks): one edge runner process per line and camera owns each series. The
        # latest write is the truth, and it stays after the runner exits: a runner that died while its
        # PLC was down keeps PlcUnreachable firing until someone looks (not live).
        self.plc_up = self._gauge(
            "keeneye_plc_up",
            "1 while the sink is connected to the line's PLC (or broker), 0 while it reconnects",
            ["pipeline", "line", "camera", "sink"],
            mode="mostrecent",
        )
        self.plc_writes = self._counter(
            "keeneye_plc_writes",
            "Decisions handed to a PLC sink, by outcome (acked|failed)",
            ["pipeline", "line", "camera", "sink", "outcome"],
        )
        self.plc_write_seconds = self._histogram(
            "keeneye_plc_write_seconds",
            "Time from the sink thread starting a decision's write to the PLC's acknowledgement",
            ["pipeline", "line", "camera", "sink"],
            buckets=LATENCY_BUCKETS,
        )

        # The line-inspection edge runner (keeneye.edge): one process per line and camera.
        self.edge_decisions = self._counter(
            "keeneye_edge_decisions",
            "Parts decided by the edge runner, by PLC result (ok|defect|failsafe_defect)",
            ["pipeline", "line", "camera", "result"],
        )
        self.edge_failsafe = self._counter(
            "keeneye_edge_failsafe",
            "Fail-safe DEFECT decisions, by reason (deadline_missed|unreadable_frame|model_error)",
            ["pipeline", "line", "camera", "reason"],
        )
        self.edge_decision_seconds = self._histogram(
            "keeneye_edge_decision_seconds",
            "Time from a frame's trigger to its decision being handed to the PLC sink",
            ["pipeline", "line", "camera"],
            buckets=LATENCY_BUCKETS,
        )
        self.edge_line_stop = self._gauge(
            "keeneye_edge_line_stop",
            "1 while the runner's line-stop output says stop (its PLC unreachable too long), else 0",
            ["pipeline", "line", "camera"],
            mode="mostrecent",
        )
        self.edge_late_answers = self._counter(
            "keeneye_edge_late_answers",
            "Model answers that came after their part's fail-safe decision (discarded, never sent)",
            ["pipeline", "line", "camera"],
        )
        self.edge_unstored = self._gauge(
            "keeneye_edge_unstored_events",
            "Decided events in the edge journal not yet in the results DB",
            ["pipeline", "line", "camera"],
            mode="mostrecent",
        )
        # crop-health fields (keeneye.fields): the latest flight of each field, for trends and alerts.
        self.field_ndvi_mean = self._gauge(
            "keeneye_field_ndvi_mean",
            "Mean NDVI of the field's latest flight (the whole image's valid pixels)",
            ["field"],
            mode="mostrecent",
        )
        self.field_diseased_hectares = self._gauge(
            "keeneye_field_diseased_hectares",
            "Hectares of disease zones inside the field on its latest flight",
            ["field"],
            mode="mostrecent",
        )
        # Retention (store/retention.py): what each pipeline's `retention:` deleted, by kind of data
        # (raw_images, defect_images, ok_sample_images, events); a dry run counts nothing here.
        self.retention_deleted = self._counter(
            "keeneye_retention_deleted",
            "Images (their observation keeps its row) and events (observation rows) deleted by retention",
            ["pipeline", "kind"],
        )
        self.retention_deleted_bytes = self._counter(
            "keeneye_retention_deleted_bytes",
            "Object-store bytes freed by retention",
            ["pipeline", "kind"],
        )
        self.retention_runs = self._counter(
            "keeneye_retention_runs",
            "Retention runs per pipeline by outcome (ok; partial: out of time, goes on next run; error)",
            ["pipeline", "outcome"],
        )
        # max: the newest finished run of any process (CLI or scheduler) is what an alert wants.
        self.retention_last_run = self._gauge(
            "keeneye_retention_last_run_timestamp_seconds",
            "When retention last finished a run for the pipeline (Unix time)",
            ["pipeline"],
            mode="max",
        )

    def _counter(self, name: str, help_text: str, labels: Sequence[str]) -> Counter:
        self.catalogue.append(MetricDoc(name, "counter", help_text, tuple(labels)))
        return Counter(name, help_text, labels, registry=self.registry)

    def _gauge(self, name: str, help_text: str, labels: Sequence[str], *, mode: GaugeMode) -> Gauge:
        self.catalogue.append(MetricDoc(name, "gauge", help_text, tuple(labels), mode=mode))
        return Gauge(name, help_text, labels, registry=self.registry, multiprocess_mode=mode)

    def _histogram(
        self, name: str, help_text: str, labels: Sequence[str], *, buckets: Sequence[float]
    ) -> Histogram:
        self.catalogue.append(MetricDoc(name, "histogram", help_text, tuple(labels), buckets=tuple(buckets)))
        return Histogram(name, help_text, labels, buckets=buckets, registry=self.registry)

    def observe_stage(self, pipeline: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(pipeline, stage).observe(seconds)

    def render(self) -> bytes:
        """This instance's own registry; :func:`render_metrics` is what ``/metrics`` serves."""
        return generate_latest(self.registry)


# --------------------------------------------------------------------------------------------------
# Several processes (PROMETHEUS_MULTIPROC_DIR)
# --------------------------------------------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    """The directory this process's metric values go to (``PROMETHEUS_MULTIPROC_DIR``), if any."""
    value = os.environ.get(MULTIPROC_ENV, "")
    return Path(value) if value else None


def enable_multiprocess(path: Path) -> None:
    """Write this process's metric values to ``path`` from now on, and let its children inherit it.

    For a process entry point (``keeneye up``, ``keeneye worker --metrics-port``), before its first
    metric value exists: values created earlier stay in memory and are not aggregated.
    """
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client read the variable at import, before it was set: switch, as its own
        # multiprocess tests do. One MultiProcessValue per process: it owns the open files.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def prepare_multiprocess_dir(path: Path) -> None:
    """Create ``path``, or empty it of the files an earlier run left (their counters would be added
    to this run's forever). The calling process's own files are kept: it may have them open."""
    path.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for file in path.glob("*.db"):
        if not file.name.endswith(own):
            file.unlink(missing_ok=True)


def mark_process_dead(pid: int, path: Path | None = None) -> None:
    """Drop the ``live*`` gauge values of an exited process (``path`` defaults to the variable).

    Counters and histograms of the dead process stay: what it counted still happened.
    """
    folder = path or multiprocess_dir()
    if folder is not None:
        multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]


def _aggregated_registry(path: Path) -> CollectorRegistry:
    """A registry that reads every process's values from ``path`` on each collection."""
    if not path.is_dir():
        raise ConfigError(
            MULTIPROC_ENV,
            f"{path} is not a directory",
            fix="create it, or unset PROMETHEUS_MULTIPROC_DIR for a single process",
        )
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry


def render_metrics(metrics: Metrics) -> bytes:
    """The Prometheus text for ``/metrics``: every process's values when ``PROMETHEUS_MULTIPROC_DIR``
    is set (the ``keeneye up`` case), else ``metrics``' own registry."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(metrics.registry)
    return generate_latest(_aggregated_registry(path))


def serve_metrics(metrics: Metrics | None, port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread, for a process without the API.

    Multiprocess-aware as :func:`render_metrics`; ``metrics`` may be ``None`` only then. Port 0 picks
    a free one (``server.server_port``). Raises ``OSError`` when the address cannot be bound; call
    ``shutdown()`` and ``server_close()`` on the returned server to stop it.
    """
    path = multiprocess_dir()
    if path is not None:
        registry = _aggregated_registry(path)
    elif metrics is not None:
        registry = metrics.registry
    else:
        raise ValueError("serve_metrics needs a Metrics object unless PROMETHEUS_MULTIPROC_DIR is set")
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


# --------------------------------------------------------------------------------------------------
# docs/metrics.md
# --------------------------------------------------------------------------------------------------

REGENERATE = "python -m keeneye.metrics > docs/metrics.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _number(value: float) -> str:
    return f"{value:g}"


def catalogue_markdown() -> str:
    """docs/metrics.md: every metric of :class:`Metrics`, from the definitions above."""
    docs = Metrics().catalogue
    lines = [
        "# Metric catalogue",
        "",
        f"<!-- Generated from src/keeneye/metrics.py by `{REGENERATE}`; do not edit. -->",
        "",
        "Every Prometheus metric keeneye exports, generated from `src/keeneye/metrics.py`",
        f"(regenerate with `{REGENERATE}`; a test fails while the two differ).",
        "",
        'Counters are exposed with the suffix `_total`; histograms as `<name>_bucket{le="…"}`, `<name>_sum`',
        "and `<name>_count`. Under `keeneye up` every process writes its values to one directory and the",
        "API's `/metrics` shows them combined ([operations.md](operations.md#metrics-in-keeneye-up)):",
        "counters and histograms are summed; a gauge combines as its *across processes* column says, and",
        "a *live* gauge forgets the values of a process that has exited.",
        "",
        "| metric | type | labels | across processes | help |",
        "|---|---|---|---|---|",
    ]
    for d in docs:
        name = f"`{d.exposed}`"
        if d.kind == "histogram":
            name += " (`_bucket`, `_sum`, `_count`)"
        labels = ", ".join(d.labels) or "—"
        lines.append(f"| {name} | {d.kind} | {labels} | {_MODE_WORDS[d.mode]} | {_cell(d.help)} |")
    lines += ["", "## Histogram buckets", "", "| histogram | upper bounds (`le`) |", "|---|---|"]
    for d in docs:
        if d.kind == "histogram":
            bounds = ", ".join([*(_number(b) for b in d.buckets), "+Inf"])
            lines.append(f"| `{d.name}` | {bounds} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(catalogue_markdown())
