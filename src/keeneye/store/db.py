"""Results database: observations, predictions, feedback, model events and alerts.

One class, :class:`ResultsDB`, serves both deployments — SQLite (embedded default) and PostgreSQL
(scaled) — chosen by ``KEENEYE_DATABASE_URL``. The schema is owned by Alembic migrations packaged in
``keeneye/store/migrations``; the ORM models below must match them exactly (a test compares them).

The repository methods return frozen dataclasses, never ORM rows or sessions, so callers cannot hold
a transaction open by accident. Every write that must be atomic (e.g. a prediction plus the ``done``
status) happens inside one method, in one transaction.

Invariants served here (see ARCHITECTURE.md):

1. ``create_observation`` is durable when it returns; ``set_status(..., expect=…)`` is the claim that
   moves an observation between states, and ``claim_stale`` lets a reconciler find lost claims.
2. Predictions are unique on (observation, model name, model version, variant); ``save_prediction``
   and ``complete_observation`` are idempotent (``INSERT … ON CONFLICT DO NOTHING``).
5. A prediction row records input hash (via its observation), model name+version+variant and the
   latency breakdown.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, CursorResult, Result, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeEngine

from keeneye.domain import (
    BackendHealth,
    ConfigError,
    Decision,
    NotFound,
    ObservationStatus,
    Variant,
)
from keeneye.settings import Settings, mask_url, split_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger(__name__)

SETTING = "KEENEYE_DATABASE_URL"
SCHEMES = {
    "sqlite": "embedded file",
    "postgresql+psycopg": "PostgreSQL",
    "postgresql": "PostgreSQL (psycopg 3)",
}
CONNECT_TIMEOUT_S = 3
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any constant works; it only has to be the same in every keeneye process (serialises migrations).
_PG_MIGRATION_LOCK = 0x6B65656E_657965

TERMINAL_STATUSES = frozenset({ObservationStatus.done, ObservationStatus.rejected, ObservationStatus.failed})

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


def _key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


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


class Observation(Base):
    """One accepted input (image, frame, video chunk) and where it is in its life."""

    __tablename__ = "observations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    object_key: Mapped[str | None] = mapped_column(String(1024))
    content_type: Mapped[str] = mapped_column(String(128))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType)
    source: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # The reconciler's query: one pipeline, some statuses, oldest updated_at first.
    __table_args__ = (
        Index("ix_observations_pipeline_status_updated_at", "pipeline", "status", "updated_at"),
    )


class Prediction(Base):
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
    result: Mapped[dict[str, Any]] = mapped_column(JSONType)
    decision: Mapped[str | None] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Double)
    latency_ms: Mapped[float] = mapped_column(Double)
    timings: Mapped[dict[str, Any]] = mapped_column(JSONType)
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


class Feedback(Base):
    """Ground truth for one observation, from the API, an import, or a reviewer."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    observation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("observations.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[dict[str, Any]] = mapped_column(JSONType)
    source: Mapped[str] = mapped_column(String(32))
    author: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Copied from the observation so online quality reads one pipeline's window by index (0003).
    pipeline: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (Index("ix_feedback_pipeline_created_at", "pipeline", "created_at"),)


class ModelEvent(Base):
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
    details: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Alert(Base):
    """One alert instance: a rule firing for one label set, from pending to resolved."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(256))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any]] = mapped_column(JSONType)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSONType)
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


class DriftReport(Base):
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
    features: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # {source, dim, n_reference, n_current, mmd, p_value, alarm} or {} when there is no embedding
    embedding: Mapped[dict[str, Any]] = mapped_column(JSONType)
    source: Mapped[str] = mapped_column(String(128))  # which process closed the window (host:pid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_drift_reports_pipeline_window_end", "pipeline", "window_end"),)


class AlertSilence(Base):
    """Mute matching alerts (rule and/or labels) until ``ends_at``; notifications stop, state goes on."""

    __tablename__ = "alert_silences"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    rule: Mapped[str | None] = mapped_column(String(256))  # None = any rule
    matchers: Mapped[dict[str, Any]] = mapped_column(JSONType)  # label → exact value
    created_by: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AlertNotification(Base):
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


class TrainingRun(Base):
    """One (re)training run: why it started, on what, how long, what came out (issue 7 lifecycle)."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(128))
    cause: Mapped[str] = mapped_column(String(32))  # schedule | new_labels | drift | quality_drop | manual
    reason: Mapped[str] = mapped_column(Text)
    dedup_key: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | refused | failed
    inputs: Mapped[dict[str, Any]] = mapped_column(JSONType)
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_training_runs_pipeline_requested_at", "pipeline", "requested_at"),)


class Rollout(Base):
    """Rollout state per pipeline: stable → shadow → canary → stable (one row per pipeline)."""

    __tablename__ = "rollouts"

    pipeline: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # stable | shadow | canary
    champion_version: Mapped[str | None] = mapped_column(String(128))
    challenger_version: Mapped[str | None] = mapped_column(String(128))
    canary_share: Mapped[float] = mapped_column(Double)
    shadow_sample: Mapped[float] = mapped_column(Double)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReviewItem(Base):
    """An observation worth a person's look (labelling queue); resolved when feedback arrives."""

    __tablename__ = "review_queue"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    observation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("observations.id", ondelete="CASCADE"), index=True
    )
    pipeline: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(32))  # low_confidence | drift | disagreement | audit
    priority: Mapped[float] = mapped_column(Double)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("observation_id", "reason", name="uq_review_queue_observation_reason"),
        Index("ix_review_queue_pipeline_resolved_at_priority", "pipeline", "resolved_at", "priority"),
    )


class ApiKey(Base):
    """An API key: only its SHA-256 is stored; the secret is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(256))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# --------------------------------------------------------------------------------------------------
# Records handed to callers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One finished observation for :meth:`ResultsDB.complete_many`: its prediction, then ``done``."""

    observation_id: str
    pipeline: str
    model_name: str
    model_version: str
    variant: Variant
    task: str
    result: Mapping[str, Any]
    decision: Decision | None
    confidence: float | None
    latency_ms: float
    timings: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ObservationRecord:
    id: str
    pipeline: str
    status: ObservationStatus
    reason: str | None
    content_hash: str
    object_key: str | None
    content_type: str
    size_bytes: int
    metadata: dict[str, Any]
    source: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    claimed_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def from_row(cls, row: Observation) -> ObservationRecord:
        return cls(
            id=row.id,
            pipeline=row.pipeline,
            status=ObservationStatus(row.status),
            reason=row.reason,
            content_hash=row.content_hash,
            object_key=row.object_key,
            content_type=row.content_type,
            size_bytes=row.size_bytes,
            metadata=row.metadata_,
            source=row.source,
            attempts=row.attempts,
            created_at=row.created_at,
            updated_at=row.updated_at,
            claimed_at=row.claimed_at,
            completed_at=row.completed_at,
        )


@dataclass(frozen=True)
class PredictionRecord:
    id: int
    observation_id: str
    pipeline: str
    model_name: str
    model_version: str
    variant: Variant
    task: str
    result: dict[str, Any]
    decision: Decision | None
    confidence: float | None
    latency_ms: float
    timings: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Prediction) -> PredictionRecord:
        return cls(
            id=row.id,
            observation_id=row.observation_id,
            pipeline=row.pipeline,
            model_name=row.model_name,
            model_version=row.model_version,
            variant=Variant(row.variant),
            task=row.task,
            result=row.result,
            decision=None if row.decision is None else Decision(row.decision),
            confidence=row.confidence,
            latency_ms=row.latency_ms,
            timings=row.timings,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class FeedbackRecord:
    id: int
    observation_id: str
    label: dict[str, Any]
    source: str
    author: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Feedback) -> FeedbackRecord:
        return cls(row.id, row.observation_id, row.label, row.source, row.author, row.created_at)


@dataclass(frozen=True)
class ModelEventRecord:
    id: int
    pipeline: str
    event: str
    model_version: str | None
    from_version: str | None
    alias: str | None
    actor: str
    reason: str
    details: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: ModelEvent) -> ModelEventRecord:
        return cls(
            id=row.id,
            pipeline=row.pipeline,
            event=row.event,
            model_version=row.model_version,
            from_version=row.from_version,
            alias=row.alias,
            actor=row.actor,
            reason=row.reason,
            details=row.details,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class AlertRecord:
    id: int
    rule: str
    fingerprint: str
    severity: str
    state: str
    labels: dict[str, Any]
    annotations: dict[str, Any]
    value: float | None
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    acked_by: str | None
    acked_at: datetime | None
    silenced_until: datetime | None
    escalation_level: int
    last_notified_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Alert) -> AlertRecord:
        return cls(
            id=row.id,
            rule=row.rule,
            fingerprint=row.fingerprint,
            severity=row.severity,
            state=row.state,
            labels=row.labels,
            annotations=row.annotations,
            value=row.value,
            started_at=row.started_at,
            fired_at=row.fired_at,
            resolved_at=row.resolved_at,
            acked_by=row.acked_by,
            acked_at=row.acked_at,
            silenced_until=row.silenced_until,
            escalation_level=row.escalation_level,
            last_notified_at=row.last_notified_at,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True)
class ApiKeyRecord:
    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


ALERT_STATES = ("pending", "firing", "resolved")

# --------------------------------------------------------------------------------------------------
# URL handling and engine
# --------------------------------------------------------------------------------------------------


def engine_url(url: str) -> URL:
    """Validate ``KEENEYE_DATABASE_URL`` and return the SQLAlchemy URL it selects.

    ``postgresql://`` means psycopg 3 (the only PostgreSQL driver keeneye ships with). Raises
    :class:`ConfigError` for an unknown scheme, a malformed URL, or SQLite without a file path.
    """
    scheme, _ = split_url(SETTING, url, SCHEMES)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(SETTING, f"malformed URL {mask_url(url)!r}", fix=_fix_scheme()) from exc
    if scheme == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if scheme == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ConfigError(
                SETTING,
                f"{mask_url(url)!r} names no database file (results must survive a restart)",
                fix="use sqlite:////absolute/path/keeneye.db or sqlite:///relative/path.db",
            )
    return parsed


def _fix_scheme() -> str:
    return "use one of: " + ", ".join(f"{s}://… ({what})" for s, what in SCHEMES.items())


def _on_sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of
        # failing with "database is locked"; SQLite leaves foreign keys off unless asked.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL (not WAL's usual NORMAL): an acknowledged observation survives a power loss too.
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        assert url.database is not None  # engine_url refused a URL without one
        folder = Path(url.database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                SETTING,
                f"cannot create the folder {folder} ({exc.strerror})",
                fix="point it at a writable path",
            ) from exc
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,  # survive a PostgreSQL restart or an idle connection cut by a proxy
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "keeneye"},
    )


def _driver_message(exc: BaseException) -> str:
    """The driver's own error text on one line (no SQLAlchemy boilerplate, no traceback)."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = " ".join(str(orig).split())
    return message or type(orig).__name__


def _rowcount(result: Result[Any]) -> int:
    """Rows an INSERT/UPDATE/DELETE touched (``Session.execute`` types them as a plain ``Result``)."""
    return cast(CursorResult[Any], result).rowcount


def _fix_for(message: str, backend: str) -> str:
    lowered = message.lower()
    if backend == "sqlite":
        return f"make the database file writable or point {SETTING} at another path"
    if "password" in lowered or "authentication" in lowered or "role" in lowered:
        return f"correct the user and password in {SETTING}"
    if "does not exist" in lowered and "database" in lowered:
        return f"create the database (createdb) or correct its name in {SETTING}"
    return f"start PostgreSQL (make services) or correct host and port in {SETTING}"


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


class ResultsDB:
    """The results database on SQLite or PostgreSQL; thread-safe, one per process is enough."""

    def __init__(self, url: str) -> None:
        self.url = url  # as configured; show it with mask_url
        self.sa_url = engine_url(url)
        self.backend = self.sa_url.get_backend_name()  # "sqlite" | "postgresql"
        self.engine = _create_engine(self.sa_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._at_head = False

    def __repr__(self) -> str:
        return f"ResultsDB({mask_url(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sessions

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits when the block succeeds, rolls back when it raises."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    # ------------------------------------------------------------------ migrations

    def _alembic_config(self, connection: Connection | None = None) -> AlembicConfig:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("keeneye.store") / "migrations"))
        # "%" is ConfigParser interpolation; URLs may contain percent-escapes in passwords.
        cfg.set_main_option(
            "sqlalchemy.url", self.sa_url.render_as_string(hide_password=False).replace("%", "%%")
        )
        cfg.attributes["connection"] = connection
        return cfg

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        assert head is not None
        return head

    def current_revision(self) -> str | None:
        """The revision the database is at; ``None`` for a database never migrated."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to ``revision``; safe to run from several processes at once."""
        from alembic import command

        with self.engine.connect() as conn:
            # Serialise concurrent upgrades and make the migration all-or-nothing on both backends.
            if self.backend == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.begin()
                conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            try:
                command.upgrade(self._alembic_config(conn), revision)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        log.info("results database migrated", extra={"url": mask_url(self.url), "revision": revision})
        self._at_head = False

    def ensure_schema(self) -> None:
        """Upgrade to head unless already there (cheap after the first call in a process)."""
        if self._at_head:
            return
        head = self.head_revision()
        if self.current_revision() != head:
            self.upgrade("head")
        self._at_head = True

    # ------------------------------------------------------------------ health

    def check(self) -> BackendHealth:
        """Reachability and server version for ``keeneye doctor``; never raises for a down server."""
        shown = mask_url(self.url)
        try:
            with self.engine.connect() as conn:
                if self.backend == "sqlite":
                    version = f"SQLite {sqlite3.sqlite_version}"
                else:
                    server = conn.exec_driver_sql("SHOW server_version").scalar_one()
                    version = f"PostgreSQL {str(server).split()[0]}"
                from alembic.runtime.migration import MigrationContext

                revision = MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as exc:
            message = _driver_message(exc)
            return BackendHealth(SETTING, shown, False, detail=message, fix=_fix_for(message, self.backend))
        head = self.head_revision()
        if revision == head:
            detail = f"schema at revision {revision}"
        else:
            detail = f"schema at revision {revision or 'none'}, code expects {head}; run `keeneye db upgrade`"
        return BackendHealth(SETTING, shown, True, version=version, detail=detail)

    # ------------------------------------------------------------------ observations

    def _insert(self, model: type[Base]) -> Any:
        """``INSERT`` that supports ``ON CONFLICT DO NOTHING`` on this backend."""
        if self.backend == "sqlite":
            return sqlite_dialect.insert(model)
        return postgresql.insert(model)

    def create_observation(
        self,
        pipeline: str,
        content_hash: str,
        object_key: str | None,
        content_type: str,
        size_bytes: int,
        metadata: Mapping[str, Any] | None,
        source: str,
        status: ObservationStatus = ObservationStatus.queued,
        id: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Record an accepted input; durable when this returns. Returns its id.

        Re-creating an existing id (a re-delivered bus message) is a no-op, never a second row.
        """
        obs_id = id or uuid.uuid4().hex
        now = utcnow()
        stmt = (
            self._insert(Observation)
            .values(
                id=obs_id,
                pipeline=pipeline,
                status=ObservationStatus(status).value,
                reason=reason,
                content_hash=content_hash,
                object_key=object_key,
                content_type=content_type,
                size_bytes=size_bytes,
                metadata_=dict(metadata or {}),
                source=source,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(Observation.id)
        )
        with self.session() as s:
            inserted = s.execute(stmt).first() is not None
        if not inserted:
            log.info("observation already recorded", extra={"observation_id": obs_id})
        return obs_id

    def get_observation(self, observation_id: str) -> ObservationRecord | None:
        with self.session() as s:
            row = s.get(Observation, observation_id)
            return None if row is None else ObservationRecord.from_row(row)

    def set_status(
        self,
        observation_id: str,
        status: ObservationStatus,
        reason: str | None = None,
        *,
        expect: Collection[ObservationStatus] | None = None,
    ) -> bool:
        """Move an observation to ``status``; returns whether it changed.

        With ``expect`` the move happens only from one of those statuses, atomically — the way a
        worker claims work (``queued → processing``): of two claimers exactly one gets ``True``.
        Moving to ``processing`` counts an attempt; a terminal status sets ``completed_at``.
        """
        status = ObservationStatus(status)
        now = utcnow()
        values: dict[str, Any] = {"status": status.value, "reason": reason, "updated_at": now}
        if status is ObservationStatus.processing:
            values.update(claimed_at=now, attempts=Observation.attempts + 1, completed_at=None)
        elif status in TERMINAL_STATUSES:
            values["completed_at"] = now
        stmt = update(Observation).where(Observation.id == observation_id).values(**values)
        if expect is not None:
            stmt = stmt.where(Observation.status.in_([ObservationStatus(e).value for e in expect]))
        with self.session() as s:
            return _rowcount(s.execute(stmt)) == 1

    def get_observations(self, observation_ids: Collection[str]) -> dict[str, ObservationRecord]:
        """The observations that exist among ``observation_ids``, by id (one read)."""
        ids = sorted(set(observation_ids))
        if not ids:
            return {}
        with self.session() as s:
            rows = s.scalars(select(Observation).where(Observation.id.in_(ids)))
            return {row.id: ObservationRecord.from_row(row) for row in rows}

    def claim_many(
        self,
        observation_ids: Collection[str],
        *,
        expect: Collection[ObservationStatus] = (ObservationStatus.queued, ObservationStatus.processing),
    ) -> dict[str, ObservationRecord]:
        """Claim a batch: :meth:`set_status` ``→ processing`` with ``expect``, in one transaction.

        One conditional ``UPDATE`` moves every listed observation that is in ``expect`` to
        ``processing`` (counting an attempt); the claimed rows are returned as they are after the
        claim, by id. Ids that were not claimed (finished already, or unknown) are left out — the
        caller reads those with :meth:`get_observations` when it needs to know why.
        """
        ids = sorted(set(observation_ids))
        if not ids:
            return {}
        now = utcnow()
        claim = (
            update(Observation)
            .where(
                Observation.id.in_(ids),
                Observation.status.in_([ObservationStatus(e).value for e in expect]),
            )
            .values(
                status=ObservationStatus.processing.value,
                reason=None,
                updated_at=now,
                claimed_at=now,
                attempts=Observation.attempts + 1,
                completed_at=None,
            )
            .returning(Observation.id)
        )
        with self.session() as s:
            claimed = list(s.execute(claim).scalars())
            if not claimed:
                return {}
            rows = s.scalars(select(Observation).where(Observation.id.in_(claimed)))
            return {row.id: ObservationRecord.from_row(row) for row in rows}

    def claim_stale(
        self,
        pipeline: str | None,
        older_than_seconds: float,
        statuses: Collection[ObservationStatus],
        *,
        limit: int = 100,
    ) -> list[str]:
        """Ids in ``statuses`` not updated for ``older_than_seconds`` (oldest first, at most ``limit``).

        The rows are claimed by touching ``updated_at``, so a second reconciler running at the same
        time gets other rows, and these come back only after another ``older_than_seconds``.
        The caller decides what to do with them (re-publish, re-queue, dead-letter).
        """
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_seconds)
        wanted = [ObservationStatus(s).value for s in statuses]
        candidates = (
            select(Observation.id)
            .where(Observation.status.in_(wanted), Observation.updated_at < cutoff)
            .order_by(Observation.updated_at)
            .limit(limit)
            # PostgreSQL: concurrent reconcilers skip each other's rows (SQLite ignores this).
            .with_for_update(skip_locked=True)
        )
        if pipeline is not None:
            candidates = candidates.where(Observation.pipeline == pipeline)
        with self.session() as s:
            ids = list(s.execute(candidates).scalars())
            if not ids:
                return []
            # The update repeats the conditions: on SQLite another writer may have moved a row
            # between the read and this write; only rows this call really touched are returned.
            claim = (
                update(Observation)
                .where(
                    Observation.id.in_(ids), Observation.status.in_(wanted), Observation.updated_at < cutoff
                )
                .values(updated_at=now)
                .returning(Observation.id)
            )
            claimed = set(s.execute(claim).scalars())
        return [i for i in ids if i in claimed]

    def delete_observation(self, observation_id: str) -> bool:
        """Remove an observation with its predictions and feedback (a half-accepted request)."""
        with self.session() as s:
            stmt = delete(Observation).where(Observation.id == observation_id)
            return _rowcount(s.execute(stmt)) == 1

    # ------------------------------------------------------------------ predictions

    def _prediction_insert(
        self,
        observation_id: str,
        pipeline: str,
        model_name: str,
        model_version: str,
        variant: Variant,
        task: str,
        result: Mapping[str, Any],
        decision: Decision | None,
        confidence: float | None,
        latency_ms: float,
        timings: Mapping[str, Any] | None,
    ) -> Any:
        return (
            self._insert(Prediction)
            .values(
                **self._prediction_row(
                    observation_id,
                    pipeline,
                    model_name,
                    model_version,
                    variant,
                    task,
                    result,
                    decision,
                    confidence,
                    latency_ms,
                    timings,
                )
            )
            .on_conflict_do_nothing(
                index_elements=["observation_id", "model_name", "model_version", "variant"]
            )
            # RETURNING says whether a row went in (rowcount is unreliable for ON CONFLICT).
            .returning(Prediction.id)
        )

    @staticmethod
    def _prediction_row(
        observation_id: str,
        pipeline: str,
        model_name: str,
        model_version: str,
        variant: Variant,
        task: str,
        result: Mapping[str, Any],
        decision: Decision | None,
        confidence: float | None,
        latency_ms: float,
        timings: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        return {
            "observation_id": observation_id,
            "pipeline": pipeline,
            "model_name": model_name,
            "model_version": str(model_version),
            "variant": Variant(variant).value,
            "task": str(task),
            "result": dict(result),
            "decision": None if decision is None else Decision(decision).value,
            "confidence": None if confidence is None else float(confidence),
            "latency_ms": float(latency_ms),
            "timings": dict(timings or {}),
            "created_at": utcnow(),
        }

    def save_prediction(
        self,
        observation_id: str,
        pipeline: str,
        model_name: str,
        model_version: str,
        variant: Variant,
        task: str,
        result: Mapping[str, Any],
        decision: Decision | None,
        confidence: float | None,
        latency_ms: float,
        timings: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store a prediction; ``False`` (and no second row) when this model+variant already answered.

        Raises :class:`NotFound` when the observation does not exist.
        """
        stmt = self._prediction_insert(
            observation_id, pipeline, model_name, model_version, variant, task, result,
            decision, confidence, latency_ms, timings,
        )  # fmt: skip
        try:
            with self.session() as s:
                return s.execute(stmt).first() is not None
        except IntegrityError as exc:  # the foreign key: no such observation
            raise NotFound(f"observation {observation_id} does not exist") from exc

    def complete_observation(
        self,
        observation_id: str,
        *,
        pipeline: str,
        model_name: str,
        model_version: str,
        variant: Variant,
        task: str,
        result: Mapping[str, Any],
        decision: Decision | None,
        confidence: float | None,
        latency_ms: float,
        timings: Mapping[str, Any] | None = None,
    ) -> bool:
        """Save the prediction and mark the observation ``done`` in one transaction.

        A crash leaves either both or neither. Returns whether the prediction was new (``False`` on a
        re-delivery). Raises :class:`NotFound` for an unknown observation.
        """
        now = utcnow()
        mark_done = (
            update(Observation)
            .where(Observation.id == observation_id)
            .values(status=ObservationStatus.done.value, reason=None, updated_at=now, completed_at=now)
        )
        insert = self._prediction_insert(
            observation_id, pipeline, model_name, model_version, variant, task, result,
            decision, confidence, latency_ms, timings,
        )  # fmt: skip
        with self.session() as s:
            # Status first: it locks the observation row, and a failing insert rolls it back.
            if _rowcount(s.execute(mark_done)) != 1:
                raise NotFound(f"observation {observation_id} does not exist")
            return s.execute(insert).first() is not None

    def complete_many(self, completions: Sequence[Completion]) -> dict[str, bool]:
        """:meth:`complete_observation` for a batch, in one transaction (one commit, one fsync).

        Every prediction goes in (``ON CONFLICT DO NOTHING``) and every observation is marked ``done``,
        or — when the transaction fails — none. Returns ``{observation_id: prediction was new}``; an
        observation that does not exist (deleted under the worker) is left out and nothing is stored
        for it. A second completion of the same observation in one call is ignored.
        """
        unique: dict[str, Completion] = {}
        for c in completions:
            unique.setdefault(c.observation_id, c)
        if not unique:
            return {}
        now = utcnow()
        ids = sorted(unique)  # a fixed lock order: concurrent batches on PostgreSQL cannot deadlock
        mark_done = (
            update(Observation)
            .where(Observation.id.in_(ids))
            .values(status=ObservationStatus.done.value, reason=None, updated_at=now, completed_at=now)
            .returning(Observation.id)
        )
        with self.session() as s:
            # Status first: it locks the observation rows, and a failing insert rolls it back.
            present = set(s.execute(mark_done).scalars())
            if not present:
                return {}
            todo = [unique[i] for i in ids if i in present]
            # Which already have this prediction (a redelivery): the observation rows are locked by
            # the update above, so a concurrent completion of the same ids waits for this commit.
            existing: set[str] = set()
            by_model: dict[tuple[str, str, str], list[str]] = {}
            for c in todo:
                by_model.setdefault(
                    (c.model_name, str(c.model_version), Variant(c.variant).value), []
                ).append(c.observation_id)
            for (model_name, model_version, variant), group in by_model.items():
                existing.update(
                    s.execute(
                        select(Prediction.observation_id).where(
                            Prediction.observation_id.in_(group),
                            Prediction.model_name == model_name,
                            Prediction.model_version == model_version,
                            Prediction.variant == variant,
                        )
                    ).scalars()
                )
            rows = [
                self._prediction_row(**_completion_fields(c))
                for c in todo
                if c.observation_id not in existing
            ]
            if rows:
                # executemany of one constant statement: compiled once, unlike a multi-row VALUES.
                # ON CONFLICT DO NOTHING still guards against any writer outside the row locks.
                insert = self._insert(Prediction).on_conflict_do_nothing(
                    index_elements=["observation_id", "model_name", "model_version", "variant"]
                )
                s.execute(insert, rows)
            new = {c.observation_id for c in todo if c.observation_id not in existing}
        return {i: i in new for i in ids if i in present}

    def predictions_for(self, observation_id: str) -> list[PredictionRecord]:
        with self.session() as s:
            rows = s.scalars(
                select(Prediction).where(Prediction.observation_id == observation_id).order_by(Prediction.id)
            )
            return [PredictionRecord.from_row(r) for r in rows]

    def count_predictions(self, pipeline: str | None = None) -> int:
        stmt = select(func.count()).select_from(Prediction)
        if pipeline is not None:
            stmt = stmt.where(Prediction.pipeline == pipeline)
        with self.session() as s:
            return int(s.execute(stmt).scalar_one())

    def record_prediction(
        self,
        *,
        pipeline: str,
        content_hash: str,
        object_key: str | None,
        content_type: str,
        size_bytes: int,
        metadata: Mapping[str, Any] | None,
        source: str,
        model_name: str,
        model_version: str,
        variant: Variant,
        task: str,
        result: Mapping[str, Any],
        decision: Decision | None,
        confidence: float | None,
        latency_ms: float,
        timings: Mapping[str, Any] | None = None,
    ) -> str:
        """A synchronous answer: the observation (``done``) and its prediction in one transaction.

        Used by ``POST /predict``, where the answer exists before anything is stored; either both rows
        are written or neither. Returns the new observation id.
        """
        obs_id = uuid.uuid4().hex
        now = utcnow()
        observation = Observation(
            id=obs_id,
            pipeline=pipeline,
            status=ObservationStatus.done.value,
            content_hash=content_hash,
            object_key=object_key,
            content_type=content_type,
            size_bytes=size_bytes,
            metadata_=dict(metadata or {}),
            source=source,
            attempts=1,
            created_at=now,
            updated_at=now,
            completed_at=now,
        )
        insert = self._prediction_insert(
            obs_id, pipeline, model_name, model_version, variant, task, result,
            decision, confidence, latency_ms, timings,
        )  # fmt: skip
        with self.session() as s:
            s.add(observation)
            s.flush()
            s.execute(insert)
        return obs_id

    def observations_with_status(
        self, pipeline: str, status: ObservationStatus | str, *, limit: int = 100
    ) -> list[ObservationRecord]:
        """The newest observations of a pipeline in one status (uses the reconciler's index)."""
        stmt = (
            select(Observation)
            .where(Observation.pipeline == pipeline, Observation.status == ObservationStatus(status).value)
            .order_by(Observation.updated_at.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [ObservationRecord.from_row(r) for r in s.scalars(stmt)]

    # ------------------------------------------------------------------ API keys

    def create_api_key(self, name: str) -> tuple[int, str]:
        """A new key for ``name``; returns ``(id, secret)``. The secret is never stored."""
        secret = "ke_" + secrets.token_urlsafe(32)
        row = ApiKey(
            name=name, prefix=secret[:10], key_hash=_key_hash(secret), created_at=utcnow(), revoked_at=None
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            return row.id, secret

    def verify_api_key(self, secret: str) -> int | None:
        """The id of the active key with this secret, else ``None``."""
        stmt = select(ApiKey.id).where(ApiKey.key_hash == _key_hash(secret), ApiKey.revoked_at.is_(None))
        with self.session() as s:
            return s.execute(stmt).scalar_one_or_none()

    def list_api_keys(self) -> list[ApiKeyRecord]:
        with self.session() as s:
            return [
                ApiKeyRecord(r.id, r.name, r.prefix, r.created_at, r.revoked_at)
                for r in s.scalars(select(ApiKey).order_by(ApiKey.id))
            ]

    def revoke_api_key(self, key_id: int) -> bool:
        stmt = (
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
        with self.session() as s:
            return _rowcount(s.execute(stmt)) == 1

    # ------------------------------------------------------------------ feedback

    def add_feedback(
        self, observation_id: str, label: Mapping[str, Any], source: str, author: str | None = None
    ) -> int:
        """Record ground truth; returns its id. Raises :class:`NotFound` for an unknown observation.

        The observation leaves the review queue (it has its answer) in the same transaction.
        """
        now = utcnow()
        row = Feedback(
            observation_id=observation_id,
            label=dict(label),
            source=source,
            author=author,
            created_at=now,
            pipeline=select(Observation.pipeline).where(Observation.id == observation_id).scalar_subquery(),
        )
        try:
            # No read-before-write: the foreign key answers "does it exist" inside the insert.
            with self.session() as s:
                s.add(row)
                s.flush()
                s.execute(
                    update(ReviewItem)
                    .where(ReviewItem.observation_id == observation_id, ReviewItem.resolved_at.is_(None))
                    .values(resolved_at=now)
                )
                return row.id
        except IntegrityError as exc:
            raise NotFound(
                f"observation {observation_id} does not exist", fix="send feedback for an id the API returned"
            ) from exc

    def feedback_for(self, observation_id: str) -> list[FeedbackRecord]:
        with self.session() as s:
            rows = s.scalars(
                select(Feedback).where(Feedback.observation_id == observation_id).order_by(Feedback.id)
            )
            return [FeedbackRecord.from_row(r) for r in rows]

    # ------------------------------------------------------------------ model events (audit)

    def record_model_event(
        self,
        pipeline: str,
        event: str,
        *,
        model_version: str | None = None,
        from_version: str | None = None,
        alias: str | None = None,
        actor: str,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        row = ModelEvent(
            pipeline=pipeline,
            event=event,
            model_version=model_version,
            from_version=from_version,
            alias=alias,
            actor=actor,
            reason=reason,
            details=dict(details or {}),
            created_at=utcnow(),
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            return row.id

    def model_events(self, pipeline: str, limit: int = 100) -> list[ModelEventRecord]:
        """The pipeline's audit log, newest first."""
        stmt = (
            select(ModelEvent)
            .where(ModelEvent.pipeline == pipeline)
            .order_by(ModelEvent.created_at.desc(), ModelEvent.id.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [ModelEventRecord.from_row(r) for r in s.scalars(stmt)]

    # ------------------------------------------------------------------ alerts

    def upsert_alert(
        self,
        rule: str,
        fingerprint: str,
        *,
        severity: str,
        state: str,
        labels: Mapping[str, Any] | None = None,
        annotations: Mapping[str, Any] | None = None,
        value: float | None = None,
    ) -> AlertRecord:
        """Create or advance the open (not resolved) alert with this fingerprint.

        ``pending`` → ``firing`` sets ``fired_at``; ``resolved`` sets ``resolved_at`` and closes the
        instance, so the next firing of the same rule+labels starts a new row (the history stays).
        """
        if state not in ALERT_STATES:
            raise ValueError(f"alert state {state!r} is not one of {ALERT_STATES}")
        now = utcnow()
        with self.session() as s:
            row = s.scalars(
                select(Alert)
                .where(Alert.fingerprint == fingerprint, Alert.state != "resolved")
                .order_by(Alert.id.desc())
                .limit(1)
                .with_for_update()
            ).first()
            if row is None:
                if state == "resolved":
                    raise NotFound(f"no open alert with fingerprint {fingerprint}")
                row = Alert(
                    rule=rule,
                    fingerprint=fingerprint,
                    severity=severity,
                    state=state,
                    labels=dict(labels or {}),
                    annotations=dict(annotations or {}),
                    value=value,
                    started_at=now,
                    escalation_level=0,
                    updated_at=now,
                )
                s.add(row)
            else:
                row.state = state
                row.severity = severity
                row.value = value
                if annotations is not None:
                    row.annotations = dict(annotations)
                row.updated_at = now
            if state == "firing" and row.fired_at is None:
                row.fired_at = now
            if state == "resolved":
                row.resolved_at = now
            s.flush()
            return AlertRecord.from_row(row)

    def active_alerts(self) -> list[AlertRecord]:
        """Alerts pending or firing, oldest first."""
        stmt = select(Alert).where(Alert.state != "resolved").order_by(Alert.started_at, Alert.id)
        with self.session() as s:
            return [AlertRecord.from_row(r) for r in s.scalars(stmt)]

    def ack_alert(self, alert_id: int, by: str) -> bool:
        """Acknowledge an alert (stops escalation); ``False`` when there is no such alert."""
        now = utcnow()
        stmt = update(Alert).where(Alert.id == alert_id).values(acked_by=by, acked_at=now, updated_at=now)
        with self.session() as s:
            return _rowcount(s.execute(stmt)) == 1


_OPEN: dict[str, ResultsDB] = {}
_OPEN_LOCK = threading.Lock()


def open_results_db(settings: Settings, *, migrate: bool = True) -> ResultsDB:
    """The results database named by ``KEENEYE_DATABASE_URL``, one shared instance per URL and process.

    With ``migrate`` (the default) the schema is brought to head first, so no caller ever meets a
    missing table; ``keeneye doctor`` passes ``migrate=False`` to report the revision as it is.
    """
    with _OPEN_LOCK:
        db = _OPEN.get(settings.database_url)
        if db is None:
            db = _OPEN[settings.database_url] = ResultsDB(settings.database_url)
    if migrate:
        db.ensure_schema()
    return db


def _completion_fields(c: Completion) -> dict[str, Any]:
    return {
        "observation_id": c.observation_id,
        "pipeline": c.pipeline,
        "model_name": c.model_name,
        "model_version": c.model_version,
        "variant": c.variant,
        "task": c.task,
        "result": c.result,
        "decision": c.decision,
        "confidence": c.confidence,
        "latency_ms": c.latency_ms,
        "timings": c.timings,
    }
