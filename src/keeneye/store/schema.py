"""The results database's schema: column types and the ORM rows (one class per table).

The schema is owned by the Alembic migrations packaged in ``keeneye/store/migrations``; these rows
must match them exactly (``tests/unit/store/test_db.py`` compares them on SQLite and PostgreSQL).
Rows are named ``…Row`` so they never meet the domain's ``Prediction`` or ``Observation``; nothing
outside ``keeneye.store`` sees them — repositories hand out the records of :mod:`keeneye.store.records`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from keeneye.domain import JsonObject

# --------------------------------------------------------------------------------------------------
# Column types
# --------------------------------------------------------------------------------------------------

# JSONB on PostgreSQL (indexable, compact); SQLite stores JSON as text.
JSONType: TypeEngine[Any] = JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL needs 64 bits at fleet rates.
BigIntId: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both backends.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    (which also keeps its text comparison in time order) and read back with ``tzinfo=UTC``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: keeneye stores only timezone-aware timestamps")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --------------------------------------------------------------------------------------------------
# ORM models (the schema of migration 0001)
# --------------------------------------------------------------------------------------------------

# Named constraints so future migrations (and SQLite batch mode) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ObservationRow(Base):
    """One accepted input (image, frame, video chunk) and where it is in its life."""

    __tablename__ = "observations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    object_key: Mapped[str | None] = mapped_column(String(1024), index=True)  # retention: still held?
    content_type: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[JsonObject] = mapped_column("metadata", JSONType)
    source: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # The reconciler's query: one pipeline, some statuses, oldest updated_at first. The observations
    # list and retention: one pipeline in updated_at order. The line dashboard: a pipeline's edge parts
    # of a created_at window (0009; benchmarks/observation_indexes.py).
    __table_args__ = (
        Index("ix_observations_pipeline_status_updated_at", "pipeline", "status", "updated_at"),
        Index("ix_observations_pipeline_updated_at", "pipeline", "updated_at"),
        Index("ix_observations_pipeline_source_created_at", "pipeline", "source", "created_at"),
    )


class PredictionRow(Base):
    """What one model version (in one variant) said about one observation."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    observation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("observations.id", ondelete="CASCADE"), index=True
    )
    pipeline: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(256))
    model_version: Mapped[str] = mapped_column(String(128))
    variant: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(16))
    result: Mapped[JsonObject] = mapped_column(JSONType)
    decision: Mapped[str | None] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Double)
    latency_ms: Mapped[float] = mapped_column(Double)
    timings: Mapped[JsonObject] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # Invariant 2: a re-delivered message can never record the same prediction twice.
    __table_args__ = (
        Index("ix_predictions_pipeline_created_at", "pipeline", "created_at"),
        UniqueConstraint(
            "observation_id",
            "model_name",
            "model_version",
            "variant",
            name="uq_predictions_observation_model_variant",
        ),
    )


class FeedbackRow(Base):
    """Ground truth for one observation, from the API, an import, or a reviewer."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    observation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("observations.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[JsonObject] = mapped_column(JSONType)
    source: Mapped[str] = mapped_column(String(32))
    author: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Copied from the observation so online quality reads one pipeline's window by index (0003).
    pipeline: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (Index("ix_feedback_pipeline_created_at", "pipeline", "created_at"),)


class ModelEventRow(Base):
    """Audit log of the model lifecycle (registered, alias moves, gates, rollout). Append-only."""

    __tablename__ = "model_events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(128), index=True)
    event: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(128))
    from_version: Mapped[str | None] = mapped_column(String(128))
    alias: Mapped[str | None] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[JsonObject] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AlertRow(Base):
    """One alert instance: a rule firing for one label set, from pending to resolved."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(256))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    labels: Mapped[JsonObject] = mapped_column(JSONType)
    annotations: Mapped[JsonObject] = mapped_column(JSONType)
    value: Mapped[float | None] = mapped_column(Double)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acked_by: Mapped[str | None] = mapped_column(String(256))
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    silenced_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # Open alerts are read often (engine, API, monitoring page): find them by index.
    __table_args__ = (Index("ix_alerts_state_started_at", "state", "started_at"),)


class DriftReportRow(Base):
    """One closed drift window of one pipeline and model version, compared with the reference profile."""

    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    n: Mapped[int] = mapped_column(Integer)
    alarm: Mapped[bool] = mapped_column(Boolean)
    # {feature: {psi, ks, ks_p, alarm, reference: {quantiles…}, current: {quantiles, sample}}}
    features: Mapped[JsonObject] = mapped_column(JSONType)
    # {source, dim, n_reference, n_current, mmd, p_value, alarm} or {} when there is no embedding
    embedding: Mapped[JsonObject] = mapped_column(JSONType)
    source: Mapped[str] = mapped_column(String(128))  # which process closed the window (host:pid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_drift_reports_pipeline_window_end", "pipeline", "window_end"),)


class DriftPartialRow(Base):
    """One process's share of a pipeline's open drift window (one row per monitor, see
    :mod:`keeneye.monitoring.drift`): its bounded reservoirs, so that any process can close the window
    for the pipeline as a whole. A close deletes the rows it merged; the next publish starts afresh."""

    __tablename__ = "drift_partials"

    token: Mapped[str] = mapped_column(String(32), primary_key=True)  # one monitor of one process
    pipeline: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(128))  # host:pid, for people
    n: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # {version, n, start, values: {feature: reservoir}, classes: {class: count}, embeddings: reservoir}
    payload: Mapped[JsonObject] = mapped_column(JSONType)

    __table_args__ = (Index("ix_drift_partials_pipeline_model_version", "pipeline", "model_version"),)


class AlertSilenceRow(Base):
    """Mute matching alerts (rule and/or labels) until ``ends_at``; notifications stop, state goes on."""

    __tablename__ = "alert_silences"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    rule: Mapped[str | None] = mapped_column(String(256))  # None = any rule
    matchers: Mapped[dict[str, str]] = mapped_column(JSONType)  # label → exact value
    created_by: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AlertNotificationRow(Base):
    """Every notification attempt: which alert, which channel, which escalation level, did it work."""

    __tablename__ = "alert_notifications"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(128))
    level: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # firing | resolved | escalated
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TrainingRunRow(Base):
    """One (re)training run: why it started, on what, how long, what came out (issue 7 lifecycle)."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(128))
    cause: Mapped[str] = mapped_column(String(32))  # schedule | new_labels | drift | quality_drop | manual
    reason: Mapped[str] = mapped_column(Text)
    dedup_key: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | refused | failed
    inputs: Mapped[JsonObject] = mapped_column(JSONType)
    outcome: Mapped[JsonObject] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_training_runs_pipeline_requested_at", "pipeline", "requested_at"),)


class RolloutRow(Base):
    """Rollout state per pipeline: stable → shadow → canary → stable (one row per pipeline)."""

    __tablename__ = "rollouts"

    pipeline: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # stable | shadow | canary
    champion_version: Mapped[str | None] = mapped_column(String(128))
    challenger_version: Mapped[str | None] = mapped_column(String(128))
    canary_share: Mapped[float] = mapped_column(Double)
    shadow_sample: Mapped[float] = mapped_column(Double)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    details: Mapped[JsonObject] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReviewItemRow(Base):
    """An observation worth a person's look (labelling queue); resolved when feedback arrives."""

    __tablename__ = "review_queue"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    observation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("observations.id", ondelete="CASCADE"), index=True
    )
    pipeline: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(32))  # low_confidence | drift | disagreement | audit
    priority: Mapped[float] = mapped_column(Double)
    details: Mapped[JsonObject] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("observation_id", "reason", name="uq_review_queue_observation_reason"),
        Index("ix_review_queue_pipeline_resolved_at_priority", "pipeline", "resolved_at", "priority"),
    )


class ApiKeyRow(Base):
    """An API key: only its SHA-256 is stored; the secret is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # domain.Role; keys made before roles existed could do everything, so they stay admin.
    role: Mapped[str] = mapped_column(String(16), server_default="admin")


class SmartcutRequestRow(Base):
    """One smartcut request (docs/smartcut.md): who asked which plugin about which video, how far it
    got and the segments the plugin answered. Chunks are deleted once processed; this row stays."""

    __tablename__ = "smartcut_requests"

    uid: Mapped[str] = mapped_column(String(36), primary_key=True)  # the seed's user_request_uid
    user_id: Mapped[str] = mapped_column(String(128))
    plugin: Mapped[str] = mapped_column(String(128))
    video_name: Mapped[str] = mapped_column(String(255))
    sensitivity: Mapped[float] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(16))  # sampling | processing | done | failed
    reason: Mapped[str | None] = mapped_column(Text)
    frames_sampled: Mapped[int] = mapped_column(Integer)
    chunks_sent: Mapped[int] = mapped_column(Integer)
    chunks_processed: Mapped[int] = mapped_column(Integer)
    # {"timestamps": [{"start", "stop"}]} as the plugin answered, and the user's edited version
    segments: Mapped[JsonObject | None] = mapped_column(JSONType)
    edits: Mapped[JsonObject | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # what the request asked its plugin for beyond the seed's fields, e.g. {"classes": ["person"]}
    options: Mapped[JsonObject | None] = mapped_column(JSONType)

    __table_args__ = (
        Index("ix_smartcut_requests_user_id", "user_id"),
        Index("ix_smartcut_requests_status", "status"),
    )


class FieldRow(Base):
    """A crop-health field (docs/crop-health.md, "Fields"): its boundary as a WGS84 GeoJSON geometry,
    its geodesic area and bounding box (the bbox prefilters the overlap join in SQL)."""

    __tablename__ = "fields"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # a slug: a7, north-12
    name: Mapped[str] = mapped_column(String(255))
    crop: Mapped[str | None] = mapped_column(String(128))
    sowing_date: Mapped[date | None] = mapped_column(Date)
    boundary: Mapped[JsonObject] = mapped_column(JSONType)
    area_ha: Mapped[float] = mapped_column(Double)
    min_lon: Mapped[float] = mapped_column(Double)
    min_lat: Mapped[float] = mapped_column(Double)
    max_lon: Mapped[float] = mapped_column(Double)
    max_lat: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FieldFlightRow(Base):
    """What one flight saw over one field: index statistics, hectares per disease class and vigour
    zone, and the zones clipped to the boundary (WGS84) a prescription is cut from. One per field and
    flight: a later image of the same flight replaces the row."""

    __tablename__ = "field_flights"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    field_id: Mapped[str] = mapped_column(String(64), ForeignKey("fields.id", ondelete="CASCADE"))
    flight: Mapped[str] = mapped_column(String(64))
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    observation_id: Mapped[str | None] = mapped_column(String(32))
    joined_by: Mapped[str] = mapped_column(String(16))  # metadata | overlap
    indices: Mapped[JsonObject] = mapped_column(JSONType)
    disease_ha: Mapped[JsonObject] = mapped_column(JSONType)
    vigour_ha: Mapped[JsonObject] = mapped_column(JSONType)
    zones: Mapped[JsonObject] = mapped_column(JSONType)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("field_id", "flight"),
        Index("ix_field_flights_field_id_observed_at", "field_id", "observed_at"),
    )


__all__ = [
    "AlertNotificationRow",
    "AlertRow",
    "AlertSilenceRow",
    "ApiKeyRow",
    "Base",
    "BigIntId",
    "DriftPartialRow",
    "DriftReportRow",
    "FeedbackRow",
    "FieldFlightRow",
    "FieldRow",
    "JSONType",
    "ModelEventRow",
    "ObservationRow",
    "PredictionRow",
    "ReviewItemRow",
    "RolloutRow",
    "SmartcutRequestRow",
    "TrainingRunRow",
    "UTCDateTime",
]
