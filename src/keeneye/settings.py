"""One settings tree for all of keeneye.

Values come, strongest first, from: keyword arguments, ``KEENEYE_*`` environment variables (nested
sections as ``KEENEYE_SECTION__KEY``), the YAML file named by ``KEENEYE_CONFIG`` or ``./keeneye.yaml``,
and the defaults below. Backends are chosen by URL; every default lives under ``KEENEYE_HOME``
(``./.keeneye``), so a laptop needs nothing installed.

Build it with :func:`get_settings` (cached) — never at import time.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from keeneye.domain import ConfigError, parse_duration

MiB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3Settings(_Section):
    """Connection details for ``s3://`` object stores (AWS, MinIO, Ceph, moto …)."""

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000 for MinIO; empty for AWS")
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    create_bucket: bool = Field(True, description="create the bucket on first use when it does not exist")
    read_timeout_seconds: float = Field(
        10.0, gt=0, description="a request whose answer stalls this long fails (and is retried)"
    )
    max_attempts: int = Field(
        3, ge=1, le=10, description="tries per request; a stalled server holds a caller ≤ this × the timeout"
    )


class BusSettings(_Section):
    max_message_bytes: int = Field(1 * MiB, gt=0, description="larger payloads travel by object reference")
    partitions: int = Field(4, ge=1, description="partitions per topic (Kafka); bounds consumers per group")
    lease_seconds: float = Field(
        30.0, gt=0, description="SQLite bus: an unacked message is redelivered after this long"
    )
    session_timeout_ms: int = Field(6000, ge=1000, description="Kafka consumer-group session timeout")
    max_poll_interval_ms: int = Field(
        300_000,
        ge=1000,
        description="Kafka: a member that neither polls nor keeps its messages alive this long leaves "
        "the group and its messages go to another (at least the session timeout)",
    )


class ObjectStoreSettings(_Section):
    max_object_bytes: int = Field(512 * MiB, gt=0)


class CacheSettings(_Section):
    max_entries: int = Field(10_000, gt=0, description="in-process cache capacity (LRU)")
    ttl_seconds: float = Field(24 * 3600, gt=0, description="default time to live of a cache entry")


class ImagingSettings(_Section):
    max_pixels: int = Field(
        100_000_000, gt=0, description="images with more pixels per band are refused (decompression bombs)"
    )
    jpeg_shrink: bool = Field(
        True,
        description="decode a JPEG at 1/2, 1/4 or 1/8 of its size (DCT scaling) when the model's input "
        "is that much smaller: less decode work, same answers in full-size coordinates",
    )


class InferenceSettings(_Section):
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per session; 0 = all cores")
    inter_op_threads: int = Field(1, ge=0)
    allow_spinning: bool = Field(
        False,
        description="let ONNX Runtime's threads busy-wait for work between runs: a little lower latency "
        "on an idle machine, but under load the spinning takes the cores that decoding and storing need",
    )
    max_batch: int = Field(16, ge=1, description="micro-batcher: largest batch sent to the model")
    max_wait_ms: float = Field(4.0, ge=0, description="micro-batcher: how long a request waits for company")
    alias_poll_seconds: float = Field(5.0, gt=0, description="how often serving checks for an alias move")


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_pipeline: str = "species-id"
    max_upload_bytes: int = Field(32 * MiB, gt=0, description="larger uploads get 413")
    max_body_bytes: int = Field(
        4 * MiB,
        gt=0,
        description="largest request body of a route that takes no upload (JSON, forms); more → 413 "
        "too_large (image uploads: max_upload_bytes, videos: smartcut.max_video_bytes)",
    )
    hsts_max_age_seconds: int = Field(
        365 * 24 * 3600,
        ge=0,
        description="Strict-Transport-Security max-age sent on answers served over https; 0: never sent",
    )
    max_inflight: int = Field(64, ge=1, description="requests in flight before 503 + Retry-After")
    rate_limit_per_second: float = Field(100.0, gt=0, description="token bucket refill per API key/client")
    rate_limit_burst: int = Field(200, ge=1)
    max_inflight_per_client: int = Field(
        16,
        ge=1,
        description="requests one client address may have in flight, all pipelines together; more → "
        "429 too_many_in_flight (a flood from one address cannot take the server's in-flight slots)",
    )
    max_inflight_per_key: int = Field(
        32,
        ge=1,
        description="requests one API key may have in flight, all pipelines together, from any "
        "address; more → 429 too_many_in_flight",
    )
    require_api_key: bool | None = Field(
        None, description="None = required exactly when the server binds a non-loopback address"
    )
    store_group_max: int = Field(
        64, ge=1, description="most answers stored by one group commit (one flush, one transaction)"
    )
    processes: int = Field(
        1,
        ge=1,
        description="serving processes sharing the port (set by `keeneye serve --workers`); the rate "
        "and in-flight limits are divided among them so the configured limits hold for the whole server",
    )
    basemap_url: str = Field(
        "",
        description="tile URL template of the fields page's basemap ({z}/{x}/{y}, e.g. an internal "
        "tile server); empty: no basemap, the page works offline",
    )


class PipelineSettings(_Section):
    dirs: list[Path] = Field(default_factory=list, description="extra folders of pipeline spec YAML files")


class StreamSettings(_Section):
    """Stream workers (``keeneye worker``) and the outbox reconciler."""

    batch_size: int = Field(16, ge=1, description="messages a worker takes from the bus per model run")
    poll_timeout_seconds: float = Field(0.2, gt=0, description="how long an idle worker waits per poll")
    max_attempts: int = Field(5, ge=1, description="processing attempts before failed + dead letter")
    retry_backoff_max_seconds: float = Field(5.0, ge=0, description="cap of the backoff after a failure")
    reconcile_interval_seconds: float = Field(10.0, gt=0, description="how often a worker reconciles")
    stale_after_seconds: float = Field(
        60.0, gt=0, description="queued/processing observations untouched this long are re-published"
    )
    status_interval_seconds: float = Field(2.0, gt=0, description="how often a worker writes its status")
    ingest_lock_timeout_seconds: float = Field(
        2.0, gt=0, description="SQLite: how long accepting an input waits for a locked database (then 503)"
    )


class ScalingSettings(_Section):
    """``keeneye up``: worker replicas, the autoscaler (local HPA rule) and child-process restarts."""

    replica_profile: Literal["auto", "embedded", "spec"] = Field(
        "auto",
        description="worker min/max: 'spec' = each pipeline's replicas section (ops: 4–6), 'embedded' = "
        "embedded_min/max_replicas (a laptop: 1–2), 'auto' = embedded on the SQLite bus, spec on Kafka",
    )
    embedded_min_replicas: int = Field(1, ge=0, description="worker replicas per pipeline, embedded floor")
    embedded_max_replicas: int = Field(2, ge=1, description="worker replicas per pipeline, embedded ceiling")
    utilization_target: float = Field(0.7, gt=0, le=1, description="target mean busy fraction per worker")
    lag_per_replica_target: float = Field(
        100.0, gt=0, description="target unprocessed messages of the .in topic per worker replica"
    )
    tolerance: float = Field(0.1, ge=0, lt=1, description="no change within |metric/target - 1| ≤ this")
    scale_down_window_seconds: float = Field(
        300.0, ge=0, description="scale down only to the highest recommendation seen over this window"
    )
    interval_seconds: float = Field(5.0, gt=0, description="control loop: heartbeats + lag → autoscaler")
    heartbeat_timeout_seconds: float = Field(
        60.0, gt=0, description="a worker whose heartbeat is older than this is restarted"
    )
    restart_initial_seconds: float = Field(1.0, gt=0, description="first restart delay of a crashed child")
    restart_max_seconds: float = Field(60.0, gt=0, description="restart delays double up to this cap")
    restart_reset_seconds: float = Field(
        60.0, gt=0, description="a child that stayed up this long restarts without delay next time"
    )
    stop_grace_seconds: float = Field(
        30.0, gt=0, description="after SIGTERM a child has this long to drain before SIGKILL"
    )

    @model_validator(mode="after")
    def _check_embedded(self) -> ScalingSettings:
        if self.embedded_min_replicas > self.embedded_max_replicas:
            raise ValueError("embedded_min_replicas must not exceed embedded_max_replicas")
        return self


class MonitoringSettings(_Section):
    """Drift windows and online quality (keeneye.monitoring)."""

    drift_window_seconds: float = Field(3600.0, gt=0, description="a drift window closes after this long…")
    drift_window_size: int = Field(500, ge=10, description="…or after this many observations")
    drift_min_samples: int = Field(
        50, ge=5, description="a window closed by time with fewer observations is merged into the next"
    )
    drift_reservoir: int = Field(
        2000, ge=100, description="values kept per feature and window (reservoir sample): bounded memory"
    )
    drift_embedding_reservoir: int = Field(256, ge=20, description="embeddings kept per window for MMD")
    drift_permutations: int = Field(200, ge=20, description="permutations for the MMD p-value")
    drift_publish_every: int = Field(
        50, ge=1, description="publish this process's share of the open drift window every this many samples…"
    )
    drift_publish_seconds: float = Field(
        5.0, gt=0, description="…or this often: windows close for all processes of a pipeline together"
    )
    quality_window_seconds: float = Field(
        24 * 3600.0, gt=0, description="online precision/recall/F1 over feedback of this long a window"
    )
    quality_min_feedback: int = Field(20, ge=1, description="labelled observations needed per window")
    quality_drop: float = Field(
        0.1, gt=0, lt=1, description="signal when a metric is this much (relative) below its test value"
    )


class ChannelSettings(_Section):
    """One notification channel: ``log``, ``webhook`` (POST JSON to ``url``) or ``email`` (SMTP)."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9_-]*$")
    kind: Literal["log", "webhook", "email"]
    url: str | None = Field(None, description="webhook: where to POST")
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    sender: str = "keeneye@localhost"
    recipients: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ChannelSettings:
        if self.kind == "webhook" and not self.url:
            raise ValueError(f"channel {self.name!r}: a webhook needs url")
        if self.kind == "email" and not self.recipients:
            raise ValueError(f"channel {self.name!r}: an email channel needs recipients")
        return self


class AlertingSettings(_Section):
    """The embedded rules engine (keeneye up's scheduler). Prometheus + Alertmanager replace it at scale."""

    rules: list[Path] = Field(
        default_factory=list, description="extra rule files or folders, on top of the packaged defaults"
    )
    interval_seconds: float = Field(15.0, gt=0, description="how often the rules are evaluated")
    channels: list[ChannelSettings] = Field(default_factory=lambda: [ChannelSettings(name="log", kind="log")])
    route: list[str] = Field(
        default_factory=lambda: ["log"],
        description="channel names in escalation order: level 0 first, the next when not acknowledged",
    )
    escalate_after_minutes: float = Field(
        15.0, gt=0, description="a critical alert not acknowledged this long goes to the next channel"
    )
    repeat_minutes: float = Field(240.0, gt=0, description="re-notify a still-firing alert this often")
    for_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="rule name → the `for` the built-in engine waits instead of the rule's, e.g. "
        "{WorkerLoadHigh: 20s} for a drill or a test; a pipeline spec's own `for` still wins",
    )

    @model_validator(mode="after")
    def _check_for_overrides(self) -> AlertingSettings:
        for name, duration in self.for_overrides.items():
            if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", name):
                raise ValueError(f"alerting.for_overrides: {name!r} is not a rule name (CamelCase)")
            try:
                parse_duration(duration)
            except ValueError as exc:
                raise ValueError(f"alerting.for_overrides.{name}: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _check_route(self) -> AlertingSettings:
        listed = [c.name for c in self.channels]
        dupes = sorted({n for n in listed if listed.count(n) > 1})
        if dupes:
            raise ValueError(f"alerting.channels defines {dupes} more than once")
        names = set(listed)
        unknown = [r for r in self.route if r not in names]
        if unknown:
            raise ValueError(f"alerting.route names unknown channels {unknown}; defined: {sorted(names)}")
        if not self.route:
            raise ValueError("alerting.route needs at least one channel")
        return self


class PlcHandshakeSettings(_Section):
    """The result-ready / result-ack handshake every PLC sink offers (Modbus, OPC UA, MQTT): a decision
    counts as acked only once the PLC echoes its sequence; see docs/line-inspection.md."""

    handshake: bool = Field(
        False, description="result-ready / result-ack handshake: a result counts once the PLC echoes it"
    )
    ack_timeout_seconds: float = Field(
        0.25, gt=0, description="handshake: no echo within this long fails the decision (not_acknowledged)"
    )


class ModbusMapSettings(PlcHandshakeSettings):
    """Where a Modbus TCP sink writes (holding registers, 0-based). The five result registers are one
    block — sequence, result, class id, confidence × scale, latency ms — written in one request."""

    result_address: int = Field(0, ge=0, le=65530, description="first of the 5 result registers (HR0)")
    heartbeat_address: int | None = Field(
        5, ge=0, le=65535, description="heartbeat counter register (HR5); None = no heartbeat"
    )
    unit: int = Field(1, ge=0, le=255, description="unit / device id, unless the URL says ?unit=N")
    confidence_scale: int = Field(1000, ge=1, le=65535, description="confidence register = round(c × this)")
    ready_address: int = Field(6, ge=0, le=65535, description="handshake: 1 while a result waits (HR6)")
    ack_address: int = Field(7, ge=0, le=65535, description="handshake: the PLC writes the sequence it took")

    @model_validator(mode="after")
    def _check_overlap(self) -> ModbusMapSettings:
        block = range(self.result_address, self.result_address + 5)
        singles = {"heartbeat_address": self.heartbeat_address}
        if self.handshake:
            singles |= {"ready_address": self.ready_address, "ack_address": self.ack_address}
        for name, address in singles.items():
            if address in block:
                raise ValueError(f"{name} must not be one of the 5 result registers")
        used = [a for a in singles.values() if a is not None]
        if len(used) != len(set(used)):
            raise ValueError(f"heartbeat, ready and ack registers must differ, got {singles}")
        return self


class OpcUaSettings(PlcHandshakeSettings):
    """Node ids an OPC UA sink writes; ``{line}``, ``{camera}`` and ``{name}`` are filled in. With
    ``handshake`` the sink also raises ``Ready`` and waits for the PLC to copy Sequence into ``Ack``."""

    node_pattern: str = Field(
        "ns=2;s=keeneye.{line}.{camera}.{name}",
        description="node id per value (name: Sequence, Result, ClassId, Confidence, LatencyMs, Heartbeat; "
        "with handshake also Ready, Ack)",
    )
    nodes: dict[str, str] = Field(
        default_factory=dict, description="explicit node id per name, overriding node_pattern"
    )


class MqttSinkSettings(PlcHandshakeSettings):
    """An MQTT sink's delivery; with ``handshake`` a decision counts once the PLC publishes its
    sequence on ``TOPIC/ack``."""

    qos: Literal[0, 1, 2] = Field(1, description="QoS of decision messages; 1 = the broker acks each")
    keepalive_seconds: int = Field(10, ge=1, description="MQTT keepalive; the will goes out after 1.5× this")


class PlcSettings(_Section):
    """PLC sinks of line-inspection (``--plc modbus://…|opcua://…|mqtt://…``), see docs/line-inspection.md."""

    queue_size: int = Field(
        1024, ge=1, description="decisions waiting for the sink thread; beyond it send() fails them at once"
    )
    connect_timeout_seconds: float = Field(1.0, gt=0, description="a connection attempt gives up after this")
    write_timeout_seconds: float = Field(1.0, gt=0, description="one write waits this long for the PLC's ack")
    heartbeat_seconds: float = Field(1.0, gt=0, description="how often the heartbeat counter is written")
    backoff_initial_seconds: float = Field(0.5, gt=0, description="first reconnect delay after a failure")
    backoff_max_seconds: float = Field(30.0, gt=0, description="reconnect delays double up to this cap")
    replay: bool = Field(
        False,
        description="send decisions made while the PLC was down once it is back (off: they are failed, "
        "the parts have passed)",
    )
    replay_limit: int = Field(1000, ge=1, description="replay keeps at most this many (oldest fail first)")
    line_stop_after_seconds: float = Field(
        10.0, gt=0, description="PLC unreachable this long → the line-stop output (--line-stop) says stop"
    )
    line_stop_register: int = Field(
        0,
        ge=0,
        le=65535,
        description="Modbus line-stop output: the holding register set to 1 (stop) / 0 (run)",
    )
    modbus: ModbusMapSettings = Field(default_factory=ModbusMapSettings)
    opcua: OpcUaSettings = Field(default_factory=OpcUaSettings)
    mqtt: MqttSinkSettings = Field(default_factory=MqttSinkSettings)


class SkuThresholds(_Section):
    """One SKU's OK/DEFECT thresholds on the line (``None`` keeps the pipeline spec's value)."""

    defect_score: float | None = Field(
        None, ge=0, le=1, description="DEFECT when a defect scores at least this"
    )
    defect_min_area: int | None = Field(None, ge=0, description="ignore smaller defect instances (px)")


_EDGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class EdgeCamera(_Section):
    """One camera ``keeneye up`` runs an edge runner for (a supervised ``keeneye inspect`` child)."""

    line: str = Field(pattern=_EDGE_NAME, description="line id, e.g. L1")
    camera: str = Field(pattern=_EDGE_NAME, description="camera id on that line, e.g. cam-1")
    source: str = Field(min_length=1, description="a folder (watched for new frames), a video file, rtsp://…")
    plc: str = Field(min_length=1, description="modbus://… | opcua://… | mqtt://…/TOPIC")
    sku: str = ""
    batch: str = ""
    pipeline: str = "line-inspection"
    fps: float | None = Field(None, gt=0, description="play a folder or video file at this rate")
    model: Path | None = Field(None, description="a bundle folder instead of the registered champion")
    replay: bool | None = Field(None, description="override plc.replay for this camera")
    line_stop: str = Field(
        "", description="modbus://… | mqtt://…/TOPIC told to stop the line while the PLC is unreachable"
    )


class EdgeSettings(_Section):
    """The line-inspection edge runner (``keeneye inspect``), see docs/line-inspection.md."""

    journal_dir: Path | None = Field(
        None, description="where decided events wait to be stored (default: $KEENEYE_HOME/edge)"
    )
    decision_margin_ms: float = Field(
        15.0,
        ge=0,
        description="the watchdog gives up this long before the deadline, so the fail-safe is in time",
    )
    flush_interval_seconds: float = Field(0.2, gt=0, description="how often the journal is copied to the DB")
    outcome_wait_seconds: float = Field(
        2.0, ge=0, description="a decision waits this long for its PLC outcome, then is stored without it"
    )
    fsync_interval_seconds: float = Field(
        1.0, gt=0, description="the journal is fsynced this often (kill -9 loses nothing; power loss ≤ this)"
    )
    keep_images: bool = Field(True, description="store each frame's image with its event (retention applies)")
    sku_thresholds: dict[str, SkuThresholds] = Field(
        default_factory=dict, description="per-SKU overrides of thresholds.defect_score / defect_min_area"
    )
    cameras: list[EdgeCamera] = Field(
        default_factory=list, description="the cameras `keeneye up` runs `keeneye inspect` for, one each"
    )

    @model_validator(mode="after")
    def _unique_cameras(self) -> EdgeSettings:
        seen = [(c.line, c.camera) for c in self.cameras]
        twice = sorted({f"{line}/{camera}" for line, camera in seen if seen.count((line, camera)) > 1})
        if twice:
            raise ValueError(f"edge.cameras lists {', '.join(twice)} more than once: one runner per camera")
        return self


class SmartcutSettings(_Section):
    """smartcut (docs/smartcut.md): where chunks live and what one video may be (the seed's pilot limits)."""

    root: Path | None = Field(
        None,
        description="chunk folder shared with the plugins; paths in messages are relative to it "
        "(default: $KEENEYE_HOME/smartcut)",
    )
    max_duration_seconds: float = Field(
        24 * 3600.0, gt=0, description="longer videos are refused (seed: 24 h)"
    )
    max_video_bytes: int = Field(
        25 * 1000**3, gt=0, description="larger video files are refused (seed: 25 GB)"
    )
    default_sensitivity: float = Field(1.0, gt=0, description="seconds between sampled frames when not given")
    max_inflight_per_user: int = Field(3, ge=1, description="open requests per user_id (seed: 3); more → 429")
    max_active_users: int = Field(10, ge=1, description="users with open requests (seed: 10); more → 429")
    plugin_timeout_seconds: float = Field(
        600.0, gt=0, description="a request whose plugin shows no progress this long fails (slot freed)"
    )
    allowed_roots: list[Path] = Field(
        default_factory=list, description="folders POST /v1/smartcut/requests may read a `path` from"
    )
    allowed_s3: list[str] = Field(
        default_factory=list,
        description="s3://bucket[/prefix] locations POST /v1/smartcut/requests may read a video URL from "
        "(with the KEENEYE_S3__* connection)",
    )
    objects_detector: str = Field(
        "",
        description="detector of the `objects` plugin: a detection pipeline (its served model from the "
        "registry) or a model bundle folder; empty: OpenCV's HOG people detector",
    )


class RetentionSettings(_Section):
    """How the scheduler enforces each pipeline spec's ``retention:`` (docs/storage.md#retention)."""

    enabled: bool = Field(True, description="the scheduler deletes what the pipelines' retention lets go")
    interval_seconds: float = Field(3600.0, gt=0, description="how often the scheduler runs retention")
    batch_size: int = Field(
        500, ge=1, le=10000, description="observations per transaction (and per object-store delete)"
    )
    max_run_seconds: float = Field(
        300.0, gt=0, description="a scheduled run stops after this long and goes on at the next round"
    )


class Settings(BaseSettings):
    """The whole configuration. Backend URLs left empty are derived from ``home``."""

    model_config = SettingsConfigDict(
        env_prefix="KEENEYE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(".keeneye"), description="data directory of the embedded defaults")
    database_url: str = Field("", description="sqlite:///… | postgresql+psycopg://…")
    bus_url: str = Field("", description="sqlite:///… | kafka://host:9092[,host2:9092]")
    objects_url: str = Field("", description="file:///… | s3://bucket/prefix")
    cache_url: str = Field("", description="memory:// | redis://host:6379/0")
    registry_uri: str = Field("", description="sqlite:///…/mlflow.db | http://mlflow:5000")
    log_level: str = "INFO"

    s3: S3Settings = Field(default_factory=S3Settings)
    bus: BusSettings = Field(default_factory=BusSettings)
    objects: ObjectStoreSettings = Field(default_factory=ObjectStoreSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    imaging: ImagingSettings = Field(default_factory=ImagingSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    pipelines: PipelineSettings = Field(default_factory=PipelineSettings)
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)
    plc: PlcSettings = Field(default_factory=PlcSettings)
    edge: EdgeSettings = Field(default_factory=EdgeSettings)
    smartcut: SmartcutSettings = Field(default_factory=SmartcutSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = Path(os.environ.get("KEENEYE_CONFIG", "keeneye.yaml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if str(yaml_file) == os.devnull:
            pass  # explicitly no file: tests use this to ignore a developer's keeneye.yaml
        elif yaml_file.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        elif "KEENEYE_CONFIG" in os.environ:
            raise ConfigError(
                "KEENEYE_CONFIG", f"file {yaml_file} does not exist", fix="point it at a YAML file"
            )
        return tuple(sources)

    @model_validator(mode="after")
    def _derive_urls(self) -> Settings:
        home = self.home.expanduser().absolute()
        self.home = home
        if not self.database_url:
            self.database_url = f"sqlite:///{home / 'keeneye.db'}"
        if not self.bus_url:
            self.bus_url = f"sqlite:///{home / 'bus.db'}"
        if not self.objects_url:
            self.objects_url = (home / "objects").as_uri()
        if not self.cache_url:
            self.cache_url = "memory://"
        if not self.registry_uri:
            self.registry_uri = f"sqlite:///{home / 'mlflow.db'}"
        if self.smartcut.root is None:
            self.smartcut.root = home / "smartcut"
        return self

    def backend_urls(self) -> dict[str, str]:
        """Setting name → URL for every backend, in the order ``doctor`` checks them."""
        return {
            "KEENEYE_DATABASE_URL": self.database_url,
            "KEENEYE_BUS_URL": self.bus_url,
            "KEENEYE_OBJECTS_URL": self.objects_url,
            "KEENEYE_CACHE_URL": self.cache_url,
            "KEENEYE_REGISTRY_URI": self.registry_uri,
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests build :class:`Settings` directly instead."""
    return load_settings()


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning pydantic's validation errors into one clear :class:`ConfigError`."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = "__".join(str(p) for p in err["loc"]).upper()
        raise ConfigError(
            f"KEENEYE_{loc}" if loc else "settings",
            err["msg"],
            fix="correct the environment variable or keeneye.yaml entry",
        ) from exc


def split_url(setting: str, url: str, schemes: dict[str, str]) -> tuple[str, Any]:
    """Parse a backend URL; ``schemes`` maps each allowed scheme to what it selects.

    Returns ``(scheme, SplitResult)``; raises :class:`ConfigError` naming the setting for a malformed
    URL or an unknown scheme.
    """
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric port
    except ValueError as exc:
        raise ConfigError(
            setting, f"malformed URL {mask_url(url)!r} ({exc})", fix=_scheme_fix(schemes)
        ) from exc
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        shown = f"scheme {scheme!r}" if scheme else "no scheme"
        raise ConfigError(setting, f"{shown} in {mask_url(url)!r} is not supported", fix=_scheme_fix(schemes))
    return scheme, parts


def _scheme_fix(schemes: dict[str, str]) -> str:
    return "use one of: " + ", ".join(f"{s}://… ({what})" for s, what in schemes.items())


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, errors and ``doctor``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None or "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+@[^\s'\"<>]*")
_SECRET_PARAM = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|secret_key|access_key|api_key|apikey|token|sasl_password)="
    r"([^&\s'\"<>]+)"
)
_API_KEY = re.compile(r"\bke_[A-Za-z0-9_\-]{8,}")  # keeneye keys (store/keys.py): "ke_" + 43 chars


def mask_secrets(text: str) -> str:
    """``text`` with every secret it may carry replaced by ``***``: the password of each URL in it
    (:func:`mask_url`, what ``doctor`` shows), ``password=…``-style query parameters, and keeneye API
    keys (``ke_…``). Applied to every log record (:func:`mask_secrets_in_logs`)."""
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", text)
    if "ke_" in text:
        text = _API_KEY.sub("ke_***", text)
    return text


def mask_secrets_in_logs() -> None:
    """Mask secrets (:func:`mask_secrets`) in every log record from now on, whatever logger or handler
    it goes to (uvicorn's, a library's): the record factory renders the message, its arguments and its
    traceback once and masks them. Idempotent; called by ``create_app`` and the CLI."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "keeneye_masks_secrets", False):
        return

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format: the logging module reports it when emitting
            return record
        record.msg, record.args = mask_secrets(message), None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = mask_secrets("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    masked_record.keeneye_masks_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(masked_record)
