"""The labelling loop: which answers a person should check, and the round trip through labelling tools.

A model improves only on labels, and people label slowly, so their time goes where it teaches the most:

* :func:`review_reasons` decides, for one stored answer, whether it belongs in the review queue — the
  model was unsure (low top-1 confidence, a small top-1/top-2 margin, an OK/DEFECT score close to the
  decision threshold) or the observation fell into the random audit sample (a fixed share chosen by a
  hash of its id, so the estimate of online quality is not biased towards hard cases).
  :func:`enqueue` stores them; other code (drift, shadow disagreement) enqueues through it as well.
* :func:`review_queue` lists the open items, most urgent first, with the champion's answer.
* :func:`export_labels` writes the queue (or the latest answers) as pre-annotations — the model's
  answers, for a person to correct instead of drawing from scratch — in COCO (CVAT, Label Studio,
  keeneye training) or as Label Studio tasks; :func:`import_labels` reads the corrected file back and
  stores every image's label as feedback (``ResultsDB.add_feedback``), which resolves its review items.

Labels are stored in the JSON shape the feedback API takes: ``{"class": name}`` (classification),
``{"decision": "OK" | "DEFECT"}`` (OK/DEFECT pipelines) and ``{"instances": [{"class", "bbox",
"segmentation"}]}`` with COCO geometry: ``bbox`` ``[x, y, w, h]`` and ``segmentation`` a list of
polygons ``[x1, y1, x2, y2, …]`` in pixel-edge coordinates (pixel ``(x, y)`` covers
``[x, x+1) × [y, y+1)``). The model's polygons trace pixel centres, so they move by half a pixel on
the way out; nothing else changes, which is why an unchanged export imports as the model's answers.

An import is all or nothing: every image is checked first (known observation of this pipeline, known
classes, sane geometry) and each problem names the file, the annotation and the fix; nothing is written
while any image has an error unless ``skip_invalid`` asks to store the valid ones.
"""

from keeneye.lifecycle.labels.coco import COCO_FILE, OBSERVATION_FIELD
from keeneye.lifecycle.labels.export import (
    EXPORT_FORMATS,
    IMAGES_DIR,
    ExportFormat,
    ExportReport,
    export_labels,
)
from keeneye.lifecycle.labels.importer import ImportReport, import_labels
from keeneye.lifecycle.labels.label_studio import LABEL_STUDIO_CONFIG, LABEL_STUDIO_FILE, label_studio_config
from keeneye.lifecycle.labels.queue import (
    REASONS,
    ReviewEntry,
    ReviewReason,
    audit_draw,
    decision_threshold,
    enqueue,
    latest_answers,
    queue_answers,
    review_queue,
    review_reasons,
)
from keeneye.lifecycle.labels.schema import LabelClass, LabelSchema, load_label_schema

__all__ = [
    "COCO_FILE",
    "EXPORT_FORMATS",
    "IMAGES_DIR",
    "LABEL_STUDIO_CONFIG",
    "LABEL_STUDIO_FILE",
    "OBSERVATION_FIELD",
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
