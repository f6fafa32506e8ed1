"""Storage adapters chosen by URL: results DB, object store, cache.

``keeneye.store`` is the only code that writes SQL: :class:`ResultsDB` gathers one repository per
aggregate (``observations``, ``predictions``, ``feedback``, ``reviews``, ``runs``, ``rollouts``,
``alerts``, ``drift_reports``, ``model_events``, ``keys``, ``smartcut``, ``fields``) and hands out
the frozen records below.
"""

from keeneye.store.cache import Cache, open_cache
from keeneye.store.db import ResultsDB, open_results_db
from keeneye.store.drift_partials import CloseRule, DriftPartialRecord, DriftShare
from keeneye.store.engine import insert_ignoring_conflicts, utcnow
from keeneye.store.fields import FieldFlightRecord, FieldRecord, NewField, NewFieldFlight
from keeneye.store.group_commit import GroupCommit, GroupCommitClosed
from keeneye.store.objects import NewObject, ObjectInfo, ObjectStore, open_object_store
from keeneye.store.observations import ObservationFilter, ObservationPage
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
    "TRAINING_RUN_ACTIVE",
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
    "ModelEventRecord",
    "NewField",
    "NewFieldFlight",
    "NewObject",
    "NewObservation",
    "NewPrediction",
    "NewReviewItem",
    "NotificationRecord",
    "ObjectInfo",
    "ObjectStore",
    "ObservationFilter",
    "ObservationPage",
    "ObservationRecord",
    "PredictionRecord",
    "ResultsDB",
    "ReviewItemRecord",
    "RolloutRecord",
    "RolloutState",
    "RunRequest",
    "SilenceRecord",
    "TrainingRunRecord",
    "insert_ignoring_conflicts",
    "open_cache",
    "open_object_store",
    "open_results_db",
    "utcnow",
]
