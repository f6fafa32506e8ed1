"""Records the results database hands to callers: frozen dataclasses, never ORM rows or sessions.

A caller cannot hold a transaction open through a record, and a record never changes under it. The
``New…`` records are what a caller gives to store something whose id does not exist yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, TypedDict

from keeneye.domain import Decision, JsonObject, ObservationStatus, Role, Variant
from keeneye.store.schema import (
    AlertNotificationRow,
    AlertRow,
    AlertSilenceRow,
    DriftReportRow,
    FeedbackRow,
    ModelEventRow,
    ObservationRow,
    PredictionRow,
    ReviewItemRow,
    TrainingRunRow,
)

ALERT_STATES = ("pending", "firing", "resolved")
OPEN_ALERT_STATES = ("pending", "firing")
EMBEDDING: Final = "embedding"
"""The name a drift report gives its embedding test among the alarms."""
TRAINING_RUN_ACTIVE: Final[tuple[str, ...]] = ("queued", "running")


@dataclass(frozen=True)
class NewObservation:
    """An accepted input about to be stored (its id is made when it is)."""

    pipeline: str
    content_hash: str
    object_key: str | None
    content_type: str
    size_bytes: int
    metadata: Mapping[str, Any] | None
    source: str


@dataclass(frozen=True)
class NewPrediction:
    """What one model version (in one variant) answered, about to be stored for an observation."""

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
class Completion:
    """One finished observation for :meth:`ResultsDB.complete_many`: its prediction, then ``done``."""

    observation_id: str
    pipeline: str
    prediction: NewPrediction


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
    metadata: JsonObject
    source: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    claimed_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def from_row(cls, row: ObservationRow) -> ObservationRecord:
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
    timings: JsonObject
    created_at: datetime

    @classmethod
    def from_row(cls, row: PredictionRow) -> PredictionRecord:
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
    label: JsonObject
    source: str
    author: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: FeedbackRow) -> FeedbackRecord:
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
    details: JsonObject
    created_at: datetime

    @classmethod
    def from_row(cls, row: ModelEventRow) -> ModelEventRecord:
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
    labels: JsonObject
    annotations: JsonObject
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
    def from_row(cls, row: AlertRow) -> AlertRecord:
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


class AlertChanges(TypedDict, total=False):
    """The columns of an alert that :meth:`ResultsDB.update_alert` may set."""

    state: str
    severity: str
    value: float | None
    annotations: dict[str, str]
    fired_at: datetime
    resolved_at: datetime
    silenced_until: datetime | None
    last_notified_at: datetime
    escalation_level: int


@dataclass(frozen=True)
class ApiKeyRecord:
    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    role: Role


@dataclass(frozen=True)
class DriftReportRecord:
    """One closed window as stored in ``drift_reports``."""

    id: int
    pipeline: str
    model_version: str
    window_start: datetime
    window_end: datetime
    n: int
    alarm: bool
    features: dict[str, Any]
    embedding: dict[str, Any]
    source: str
    created_at: datetime

    @property
    def alarms(self) -> list[str]:
        """Names of what alarmed: features, ``class_mix``, ``embedding``."""
        names = [name for name, f in self.features.items() if f.get("alarm")]
        return [*names, EMBEDDING] if self.embedding.get("alarm") else names

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "model_version": self.model_version,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "n": self.n,
            "alarm": self.alarm,
            "alarms": self.alarms,
            "features": self.features,
            "embedding": self.embedding,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def of(cls, row: DriftReportRow) -> DriftReportRecord:
        return cls(
            id=int(row.id),
            pipeline=row.pipeline,
            model_version=row.model_version,
            window_start=row.window_start,
            window_end=row.window_end,
            n=int(row.n),
            alarm=bool(row.alarm),
            features=dict(row.features or {}),
            embedding=dict(row.embedding or {}),
            source=row.source,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class NewReviewItem:
    """An observation worth a person's look, for one reason, about to be queued."""

    observation_id: str
    pipeline: str
    reason: str
    priority: float
    details: Mapping[str, Any]


@dataclass(frozen=True)
class ReviewItemRecord:
    """One review queue item; resolved when feedback for its observation arrived."""

    id: int
    observation_id: str
    pipeline: str
    reason: str
    priority: float
    details: JsonObject
    created_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, row: ReviewItemRow) -> ReviewItemRecord:
        return cls(
            id=int(row.id),
            observation_id=row.observation_id,
            pipeline=row.pipeline,
            reason=row.reason,
            priority=float(row.priority),
            details=dict(row.details or {}),
            created_at=row.created_at,
            resolved_at=row.resolved_at,
        )


@dataclass(frozen=True)
class DriftWindow:
    """A drift report's window without its statistics (the monitoring page's history)."""

    window_start: datetime
    window_end: datetime
    alarm: bool
    n: int
    model_version: str


@dataclass(frozen=True)
class TrainingRunRecord:
    """One training run as stored."""

    id: int
    pipeline: str
    cause: str
    reason: str
    dedup_key: str
    status: str
    inputs: dict[str, Any]
    outcome: dict[str, Any]
    error: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def active(self) -> bool:
        return self.status in TRAINING_RUN_ACTIVE

    @property
    def seconds(self) -> float | None:
        """How long it ran (so far, for a running one: None)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """JSON view (``keeneye runs --json``, ``GET /v1/pipelines/{name}/runs``)."""
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "cause": self.cause,
            "reason": self.reason,
            "dedup_key": self.dedup_key,
            "status": self.status,
            "inputs": self.inputs,
            "outcome": self.outcome,
            "error": self.error,
            "requested_at": self.requested_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "seconds": None if self.seconds is None else round(self.seconds, 1),
        }

    @classmethod
    def of(cls, row: TrainingRunRow) -> TrainingRunRecord:
        return cls(
            id=int(row.id),
            pipeline=row.pipeline,
            cause=row.cause,
            reason=row.reason,
            dedup_key=row.dedup_key,
            status=row.status,
            inputs=dict(row.inputs or {}),
            outcome=dict(row.outcome or {}),
            error=row.error,
            requested_at=row.requested_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


@dataclass(frozen=True)
class SilenceRecord:
    id: int
    rule: str | None
    matchers: dict[str, str]
    created_by: str
    reason: str
    starts_at: datetime
    ends_at: datetime

    @classmethod
    def from_row(cls, row: AlertSilenceRow) -> SilenceRecord:
        return cls(
            row.id,
            row.rule,
            {str(k): str(v) for k, v in row.matchers.items()},
            row.created_by,
            row.reason,
            row.starts_at,
            row.ends_at,
        )

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, rule: str, labels: Mapping[str, Any]) -> bool:
        """Same rule (when the silence names one) and every matcher equal to the alert's label."""
        if self.rule is not None and self.rule != rule:
            return False
        return all(str(labels.get(k, "")) == v for k, v in self.matchers.items())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NotificationRecord:
    id: int
    alert_id: int
    channel: str
    level: int
    kind: str
    ok: bool
    error: str | None
    sent_at: datetime

    @classmethod
    def from_row(cls, row: AlertNotificationRow) -> NotificationRecord:
        return cls(row.id, row.alert_id, row.channel, row.level, row.kind, row.ok, row.error, row.sent_at)


__all__ = [
    "ALERT_STATES",
    "EMBEDDING",
    "OPEN_ALERT_STATES",
    "TRAINING_RUN_ACTIVE",
    "AlertChanges",
    "AlertRecord",
    "ApiKeyRecord",
    "Completion",
    "DriftReportRecord",
    "DriftWindow",
    "FeedbackRecord",
    "ModelEventRecord",
    "NewObservation",
    "NewPrediction",
    "NewReviewItem",
    "NotificationRecord",
    "ObservationRecord",
    "PredictionRecord",
    "ReviewItemRecord",
    "SilenceRecord",
    "TrainingRunRecord",
]
