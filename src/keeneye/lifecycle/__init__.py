"""The model lifecycle: the labelling loop (review queue, pre-annotations, COCO / Label Studio round trip).

Retraining triggers, shadow and canary rollout join this package as they are built.
"""

from keeneye.lifecycle.labels import (
    EXPORT_FORMATS,
    REASONS,
    ExportFormat,
    ExportReport,
    ImportReport,
    LabelClass,
    LabelSchema,
    ReviewEntry,
    ReviewReason,
    audit_draw,
    decision_threshold,
    enqueue,
    export_labels,
    import_labels,
    label_studio_config,
    latest_answers,
    load_label_schema,
    queue_answers,
    review_queue,
    review_reasons,
)

__all__ = [
    "EXPORT_FORMATS",
    "REASONS",
    "ExportFormat",
    "ExportReport",
    "ImportReport",
    "LabelClass",
    "LabelSchema",
    "ReviewEntry",
    "ReviewReason",
    "audit_draw",
    "decision_threshold",
    "enqueue",
    "export_labels",
    "import_labels",
    "label_studio_config",
    "latest_answers",
    "load_label_schema",
    "queue_answers",
    "review_queue",
    "review_reasons",
]
