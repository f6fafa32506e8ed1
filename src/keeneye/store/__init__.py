"""Storage adapters chosen by URL: results DB, object store, cache.

``keeneye.store`` is the only code that writes SQL: :class:`ResultsDB` gathers one repository per
aggregate (``observations``, ``predictions``, ``feedback``, ``reviews``, ``runs``, ``rollouts``,
``alerts``, ``drift_reports``, ``model_events``, ``keys``, ``smartcut``, ``fields``) and hands out
the frozen records below.
"""

from keeneye.store.backup import (
    PredictedObject,
    RegisteredVersion,
    alembic_revision,
    copy_sqlite,
    integrity_problems,
    known_revision,
    predicted_objects,
    rebase_mlflow_artifacts,
    registered_versions,
    sqlite_file,
    table_counts,
)
from keeneye.store.cache import Cache, open_cache
from keeneye.store.db import ResultsDB, open_results_db
from keeneye.store.drift_partials import CloseRule, DriftPartialRecord, DriftShare
from keeneye.store.engine import insert_ignoring_conflicts, utcnow
from keeneye.store.fields import FieldFlightRecord, FieldRecord, NewField, NewFieldFlight
from keeneye.store.group_commit import GroupCommit, GroupCommitClosed
from keeneye.store.integrity import IntegrityReport, ObjectProblem, check_integrity
from keeneye.store.objects import NewObject, ObjectInfo, ObjectStore, open_object_store
from keeneye.store.observations import ObservationFilter, ObservationPage
from keeneye.store.outages import (
    RETRY_AFTER_SECONDS,
    TRANSIENT_ERRORS,
    StorageFull,
    outage_of,
    outage_reason,
    retry_after_seconds,
)
from keeneye.store.records import (
    ALERT_STATES,
    OPEN_ALERT_STATES,
    TRAINING_RUN_ACTIVE,
    AlertChanges,
    AlertRecord,
    ApiKeyRecord,
    Completion,
    DriftReportRecord,
    DriftWindow,
    FeedbackRecord,
    ModelEventRecord,
    NewObservation,
    NewPrediction,
    NewReviewItem,
    NotificationRecord,
    ObservationRecord,
    PredictionRecord,
    ReviewItemRecord,
    SilenceRecord,
    TrainingRunRecord,
)
from keeneye.store.rollouts import RolloutRecord, RolloutState
from keeneye.store.runs import RunRequest

__all__ = [
    "ALERT_STATES",
    "OPEN_ALERT_STATES",
    "RETRY_AFTER_SECONDS",
    "TRAINING_RUN_ACTIVE",
    "TRANSIENT_ERRORS",
    "AlertChanges",
    "AlertRecord",
    "ApiKeyRecord",
    "Cache",
    "CloseRule",
    "Completion",
    "DriftPartialRecord",
    "DriftReportRecord",
    "DriftShare",
    "DriftWindow",
    "FeedbackRecord",
    "FieldFlightRecord",
    "FieldRecord",
    "GroupCommit",
    "GroupCommitClosed",
    "IntegrityReport",
    "ModelEventRecord",
    "NewField",
    "NewFieldFlight",
    "NewObject",
    "NewObservation",
    "NewPrediction",
    "NewReviewItem",
    "NotificationRecord",
    "ObjectInfo",
    "ObjectProblem",
    "ObjectStore",
    "ObservationFilter",
    "ObservationPage",
    "ObservationRecord",
    "PredictedObject",
    "PredictionRecord",
    "RegisteredVersion",
    "ResultsDB",
    "ReviewItemRecord",
    "RolloutRecord",
    "RolloutState",
    "RunRequest",
    "SilenceRecord",
    "StorageFull",
    "TrainingRunRecord",
    "alembic_revision",
    "check_integrity",
    "copy_sqlite",
    "insert_ignoring_conflicts",
    "integrity_problems",
    "known_revision",
    "open_cache",
    "open_object_store",
    "open_results_db",
    "outage_of",
    "outage_reason",
    "predicted_objects",
    "rebase_mlflow_artifacts",
    "registered_versions",
    "retry_after_seconds",
    "sqlite_file",
    "table_counts",
    "utcnow",
]
