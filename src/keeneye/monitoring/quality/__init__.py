"""Online quality: how well each model version does on live traffic that people have labelled.

A model's test-split metrics describe the data it was trained on; the line, the fields and the photos
move on. Ground truth arrives as *feedback* (``POST /v1/observations/{id}/feedback``, ``keeneye
feedback``, label imports, reviewers) and is joined here with what every model version said about the
same observations, so precision / recall / F1 can be compared with the version's own test values.
When a metric falls more than ``settings.monitoring.quality_drop`` (relative) below its test value on
at least ``quality_min_feedback`` labelled observations, :attr:`QualityWindow.drop` is raised; the
scheduler publishes it as ``keeneye_quality_drop`` and the ``QualityDrop`` alert fires.

Two halves, one package, because the API and the CLI must accept exactly the same labels:

* **feedback** (``feedback.py``): :func:`submit_feedback` (lookup → validation →
  ``db.add_feedback``), with the pure :func:`parse_feedback` doing every check against the pipeline
  spec and the predicting model's classes;
* **quality** (``windows.py``): :func:`online_quality` (one pipeline, one window),
  :func:`evaluate_quality` (every pipeline, what the scheduler runs) and :func:`update_quality_metrics`
  (the gauges).

Metric names follow :func:`keeneye.training.evaluate.compute_metrics`, whose functions compute them here
too, so an online value and its reference mean the same thing (see :data:`REFERENCE_NAMES`).
Queries stay bounded for any table size: feedback is read by ``(pipeline, created_at)`` newest first
in pages, at most :data:`MAX_WINDOW_FEEDBACK` rows per window; predictions by observation id in chunks.
"""

from keeneye.monitoring.quality.feedback import (
    BODY_KEYS,
    EDGE_TOLERANCE_PX,
    INSTANCE_KEYS,
    LABEL_KEYS,
    MAX_COORDINATE,
    MAX_FEEDBACK_BYTES,
    MAX_INSTANCES,
    MAX_LABEL_POINTS,
    MAX_NAME_CHARS,
    MAX_POLYGON_POINTS,
    MAX_POLYGONS,
    SOURCE_PATTERN,
    FeedbackReceipt,
    FeedbackTarget,
    ManifestLookup,
    ParsedFeedback,
    accepted_label_kinds,
    feedback_target,
    find_observation,
    parse_feedback,
    registry_manifests,
    store_feedback,
    submit_feedback,
    truth_decision,
    truth_instances,
)
from keeneye.monitoring.quality.windows import (
    FEEDBACK_PAGE,
    MAX_WINDOW_FEEDBACK,
    PREDICTION_CHUNK,
    REFERENCE_NAMES,
    QualityKind,
    QualityWindow,
    evaluate_quality,
    online_quality,
    pipeline_quality,
    quality_kind,
    quality_report,
    update_quality_metrics,
)

__all__ = [
    "BODY_KEYS",
    "EDGE_TOLERANCE_PX",
    "FEEDBACK_PAGE",
    "INSTANCE_KEYS",
    "LABEL_KEYS",
    "MAX_COORDINATE",
    "MAX_FEEDBACK_BYTES",
    "MAX_INSTANCES",
    "MAX_LABEL_POINTS",
    "MAX_NAME_CHARS",
    "MAX_POLYGONS",
    "MAX_POLYGON_POINTS",
    "MAX_WINDOW_FEEDBACK",
    "PREDICTION_CHUNK",
    "REFERENCE_NAMES",
    "SOURCE_PATTERN",
    "FeedbackReceipt",
    "FeedbackTarget",
    "ManifestLookup",
    "ParsedFeedback",
    "QualityKind",
    "QualityWindow",
    "accepted_label_kinds",
    "evaluate_quality",
    "feedback_target",
    "find_observation",
    "online_quality",
    "parse_feedback",
    "pipeline_quality",
    "quality_kind",
    "quality_report",
    "registry_manifests",
    "store_feedback",
    "submit_feedback",
    "truth_decision",
    "truth_instances",
    "update_quality_metrics",
]
