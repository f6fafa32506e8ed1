"""The metric catalogue: every Prometheus metric keeneye exports, defined once, here.

Metrics live in a :class:`Metrics` object bound to a ``CollectorRegistry`` (one per app, so tests and
several apps in one process never collide). Names, labels and help text are the contract dashboards
and alert rules depend on: add freely, rename only with care.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "keeneye_requests",
            "HTTP prediction requests by pipeline and response status",
            ["pipeline", "status"],
            registry=r,
        )
        self.rejections = Counter(
            "keeneye_rejections",
            "Refused inputs by pipeline and reason code",
            ["pipeline", "reason"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "keeneye_stage_seconds",
            "Time spent per processing stage (decode, queue, infer, post, store)",
            ["pipeline", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "keeneye_request_seconds",
            "End-to-end prediction latency inside the server",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "keeneye_batch_size",
            "Images per model run (micro-batching)",
            ["pipeline"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "keeneye_cache",
            "Prediction cache lookups by result (hit|miss)",
            ["pipeline", "result"],
            registry=r,
        )
        self.inflight = Gauge(
            "keeneye_inflight_requests", "Prediction requests being processed now", registry=r
        )
        self.model_info = Gauge(
            "keeneye_model_info",
            "The model version serving each pipeline (value 1)",
            ["pipeline", "model", "version"],
            registry=r,
        )
        self.model_reloads = Counter(
            "keeneye_model_reloads", "Served model switched after an alias move", ["pipeline"], registry=r
        )
        # Scaling (keeneye up's autoscaler; the Kubernetes HPA/KEDA in the scaled deployment).
        self.replicas = Gauge(
            "keeneye_replicas", "Worker replicas running per pipeline", ["pipeline"], registry=r
        )
        self.desired_replicas = Gauge(
            "keeneye_desired_replicas",
            "Worker replicas the autoscaler wants per pipeline (clamped to min/max)",
            ["pipeline"],
            registry=r,
        )
        self.worker_utilization = Gauge(
            "keeneye_worker_utilization",
            "Busy fraction of a pipeline's workers: mean (stat=mean) and busiest replica (stat=max)",
            ["pipeline", "stat"],
            registry=r,
        )
        self.queue_lag = Gauge(
            "keeneye_queue_lag",
            "Messages of keeneye.<pipeline>.in not yet acknowledged by the workers",
            ["pipeline"],
            registry=r,
        )
        self.scaling_decisions = Counter(
            "keeneye_scaling_decisions",
            "Autoscaler decisions by direction (up|down|none)",
            ["pipeline", "direction"],
            registry=r,
        )
        # Stream workers.
        self.observations = Counter(
            "keeneye_observations",
            "Observations settled by the stream workers, by final status (done|rejected|failed)",
            ["pipeline", "status"],
            registry=r,
        )
        self.observation_seconds = Histogram(
            "keeneye_observation_seconds",
            "Ingest-to-result latency of stream observations (accepted → stored)",
            ["pipeline"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "keeneye_dead_letters",
            "Messages sent to keeneye.<pipeline>.dlq, by reason code",
            ["pipeline", "reason"],
            registry=r,
        )
        self.min_replicas = Gauge(
            "keeneye_min_replicas", "Autoscaler floor per pipeline", ["pipeline"], registry=r
        )
        self.max_replicas = Gauge(
            "keeneye_max_replicas", "Autoscaler ceiling per pipeline", ["pipeline"], registry=r
        )
        # Drift (keeneye.monitoring.drift): the latest closed window per pipeline.
        self.drift_score = Gauge(
            "keeneye_drift_score",
            "Latest drift window: PSI or KS statistic per feature (test=psi|ks), MMD p-value (test=mmd_p)",
            ["pipeline", "feature", "test"],
            registry=r,
        )
        self.drift_alarm = Gauge(
            "keeneye_drift_alarm",
            "1 when the latest drift window of the pipeline alarms (PSI, KS or MMD), else 0",
            ["pipeline"],
            registry=r,
        )
        self.drift_windows = Counter(
            "keeneye_drift_windows",
            "Drift windows closed, by outcome (alarm=true|false)",
            ["pipeline", "alarm"],
            registry=r,
        )
        # Online quality from feedback (keeneye.monitoring.quality).
        self.online_quality = Gauge(
            "keeneye_online_quality",
            "Precision, recall or F1 (metric=…) of a model version on labelled live traffic, latest window",
            ["pipeline", "version", "metric"],
            registry=r,
        )
        self.quality_drop = Gauge(
            "keeneye_quality_drop",
            "1 when a model version's online quality is more than the allowed share below its test value",
            ["pipeline", "version"],
            registry=r,
        )
        self.feedback = Counter(
            "keeneye_feedback", "Ground-truth labels received, by source", ["pipeline", "source"], registry=r
        )
        # Alerting (keeneye.monitoring.alerts).
        self.alerts = Gauge(
            "keeneye_alerts",
            "Alerts now pending or firing, by rule and severity",
            ["rule", "severity", "state"],
            registry=r,
        )
        self.alert_notifications = Counter(
            "keeneye_alert_notifications",
            "Notification attempts by channel and outcome (ok=true|false)",
            ["channel", "ok"],
            registry=r,
        )
        # Lifecycle (keeneye.lifecycle): retraining and rollout.
        self.training_runs = Counter(
            "keeneye_training_runs",
            "Retraining runs finished, by cause and status",
            ["pipeline", "cause", "status"],
            registry=r,
        )
        self.rollout_state = Gauge(
            "keeneye_rollout_state",
            "1 for the pipeline's current rollout state (stable|shadow|canary), 0 for the others",
            ["pipeline", "state"],
            registry=r,
        )
        self.variant_predictions = Counter(
            "keeneye_variant_predictions",
            "Predictions by variant (champion|challenger|shadow)",
            ["pipeline", "variant"],
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "keeneye_shadow_agreement",
            "Share of shadow predictions agreeing with the champion, latest window",
            ["pipeline"],
            registry=r,
        )

    def observe_stage(self, pipeline: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(pipeline, stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
