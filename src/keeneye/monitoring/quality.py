"""Online quality: how well each model version does on live traffic that people have labelled.

A model's test-split metrics describe the data it was trained on; the line, the fields and the photos
move on. Ground truth arrives as *feedback* (``POST /v1/observations/{id}/feedback``, ``keeneye
feedback``, label imports, reviewers) and is joined here with what every model version said about the
same observations, so precision / recall / F1 can be compared with the version's own test values.
When a metric falls more than ``settings.monitoring.quality_drop`` (relative) below its test value on
at least ``quality_min_feedback`` labelled observations, :attr:`QualityWindow.drop` is raised; the
scheduler publishes it as ``keeneye_quality_drop`` and the ``QualityDrop`` alert fires.

Two halves share this module because the API and the CLI must accept exactly the same labels:

* **feedback**: :func:`submit_feedback` (lookup → validation → ``db.add_feedback``), with the pure
  :func:`parse_feedback` doing every check against the pipeline spec and the predicting model's classes;
* **quality**: :func:`online_quality` (one pipeline, one window), :func:`evaluate_quality` (every
  pipeline, what the scheduler runs) and :func:`update_quality_metrics` (the gauges).

Metric names follow :func:`keeneye.training.evaluate.compute_metrics`, whose functions compute them here
too, so an online value and its reference mean the same thing (see :data:`REFERENCE_NAMES`).
Queries stay bounded for any table size: feedback is read by ``(pipeline, created_at)`` newest first
in pages, at most :data:`MAX_WINDOW_FEEDBACK` rows per window; predictions by observation id in chunks.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import numpy as np

from keeneye.domain import Decision, InvalidInput, KeeneyeError, NotFound, ObservationStatus, Task, Variant
from keeneye.models.manifest import MANIFEST_FILE, ModelManifest
from keeneye.models.postprocess import DEFAULT_OK_CLASSES, box_iou, ok_class_names
from keeneye.store.db import (
    Feedback,
    ObservationRecord,
    Prediction,
    PredictionRecord,
    ResultsDB,
    utcnow,
)
from keeneye.training.datasets import polygons_to_mask
from keeneye.training.evaluate import binary_metrics, classification_metrics, confusion_matrix

if TYPE_CHECKING:
    from keeneye.monitoring.metrics import Metrics
    from keeneye.pipelines import PipelineCatalog, PipelineSpec
    from keeneye.registry import ModelRegistry
    from keeneye.settings import Settings

log = logging.getLogger(__name__)

# --- limits: a label is small; anything bigger is a mistake or an attack --------------------------
MAX_FEEDBACK_BYTES = 2 * 1024 * 1024  # one request body / one --coco file
MAX_INSTANCES = 1000  # per label (413 beyond)
MAX_POLYGONS = 64  # per instance
MAX_POLYGON_POINTS = 10_000  # per polygon
MAX_LABEL_POINTS = 200_000  # all polygons of one label together (413 beyond)
MAX_NAME_CHARS = 256
MAX_COORDINATE = 100_000.0  # when the prediction does not say how big the image was
EDGE_TOLERANCE_PX = 1.0  # annotation tools round outlines a little past the border
SOURCE_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
LABEL_KEYS = ("class", "decision", "instances")
BODY_KEYS = frozenset({*LABEL_KEYS, "author", "source"})
INSTANCE_KEYS = frozenset({"class", "bbox", "segmentation"})

# --- the window ---------------------------------------------------------------------------------
IOU_THRESHOLD = 0.5  # an instance counts as found at IoU ≥ 0.5 (COCO's AP50 criterion)
FEEDBACK_PAGE = 500  # feedback rows per query (keyset pages, newest first)
PREDICTION_CHUNK = 500  # observation ids per IN (...) query: below every backend's parameter limit
MAX_WINDOW_FEEDBACK = 50_000  # feedback rows read per window and pipeline
MAX_CROP_PIXELS = 16_000_000  # mask IoU is computed on at most this many pixels (scaled down above)

QualityKind = Literal["classify", "ok-defect", "instances"]

# Online metric name → the manifest (test-split) metric it is compared with. The classify values are
# macro averages (``compute_metrics`` also stores them as precision/recall/f1); ok-defect is image-level
# with DEFECT positive; instance metrics count instances matched at IoU ≥ 0.5 (class must agree).
REFERENCE_NAMES: dict[QualityKind, dict[str, str]] = {
    "classify": {
        "precision": "macro_precision",
        "recall": "macro_recall",
        "f1": "macro_f1",
        "accuracy": "accuracy",
        "macro_precision": "macro_precision",
        "macro_recall": "macro_recall",
        "macro_f1": "macro_f1",
    },
    "ok-defect": {"precision": "precision", "recall": "recall", "f1": "f1", "accuracy": "accuracy"},
    "instances": {"precision": "instance_precision", "recall": "instance_recall", "f1": "instance_f1"},
}


def quality_kind(spec: PipelineSpec) -> QualityKind:
    """Which truth a pipeline's quality is measured on (the same choice ``evaluate_bundle`` makes)."""
    if spec.task is Task.classify:
        return "classify"
    if spec.decision.kind == "ok-defect":
        return "ok-defect"
    return "instances"


def accepted_label_kinds(spec: PipelineSpec) -> list[str]:
    """The feedback keys a pipeline accepts: ``class`` (classify), ``decision`` (ok-defect),
    ``instances`` (segment / detect)."""
    kinds = []
    if spec.task is Task.classify:
        kinds.append("class")
    if spec.decision.kind == "ok-defect":
        kinds.append("decision")
    if spec.task in (Task.segment, Task.detect):
        kinds.append("instances")
    return kinds


# ==================================================================================================
# Feedback: lookup, validation, storage
# ==================================================================================================

ManifestLookup = Callable[[str, str], ModelManifest]
"""``(registered model name, version) → manifest``; versions are immutable, so answers may be cached."""

_MANIFESTS: OrderedDict[tuple[str, str, str], ModelManifest] = OrderedDict()
_MANIFESTS_LOCK = threading.Lock()
_MANIFEST_CACHE_SIZE = 64


def registry_manifests(registry: ModelRegistry) -> ManifestLookup:
    """Manifests from the registry: the bundle already downloaded for serving when there is one
    (no registry round trip), otherwise a download. Cached per process (a version never changes)."""

    def lookup(model_name: str, version: str) -> ModelManifest:
        key = (registry.uri, model_name, str(version))
        with _MANIFESTS_LOCK:
            if key in _MANIFESTS:
                _MANIFESTS.move_to_end(key)
                return _MANIFESTS[key]
        path = registry.cache_dir(model_name, str(version)) / MANIFEST_FILE
        manifest: ModelManifest | None = None
        if path.is_file():  # the cache folder appears by an atomic rename after verification
            try:
                manifest = ModelManifest.load(path)
            except InvalidInput:
                manifest = None
        if manifest is None:
            manifest = registry.download(model_name, str(version)).manifest
        with _MANIFESTS_LOCK:
            _MANIFESTS[key] = manifest
            while len(_MANIFESTS) > _MANIFEST_CACHE_SIZE:
                _MANIFESTS.popitem(last=False)
        return manifest

    return lookup


@dataclass(frozen=True)
class FeedbackTarget:
    """What a label is checked against: the observation, its spec, and the model that answered."""

    observation: ObservationRecord
    spec: PipelineSpec
    prediction: PredictionRecord
    manifest: ModelManifest

    @property
    def image_size(self) -> tuple[float, float]:
        """``(width, height)`` of the predicted image; generous bounds when the result lacks them."""
        image = self.prediction.result.get("image")
        if isinstance(image, Mapping):
            w, h = image.get("width"), image.get("height")
            if _is_number(w) and _is_number(h) and float(w) > 0 and float(h) > 0:
                return float(w), float(h)
        return MAX_COORDINATE, MAX_COORDINATE


@dataclass(frozen=True)
class ParsedFeedback:
    label: dict[str, Any]
    author: str | None
    source: str


@dataclass(frozen=True)
class FeedbackReceipt:
    """What the API answers (201) and the CLI prints."""

    id: int
    observation_id: str
    pipeline: str
    model_version: str
    source: str
    author: str | None
    label: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "observation_id": self.observation_id,
            "pipeline": self.pipeline,
            "model_version": self.model_version,
            "source": self.source,
            "author": self.author,
            "label": self.label,
        }


_OBSERVATION_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def find_observation(db: ResultsDB, observation_id: str) -> ObservationRecord:
    """The observation, or :class:`NotFound` (404)."""
    obs = db.get_observation(observation_id) if _OBSERVATION_ID.match(observation_id) else None
    if obs is None:
        raise NotFound(
            f"no observation {observation_id[:64]!r}",
            fix="send feedback for an id that predict or observations returned",
        )
    return obs


def feedback_target(
    db: ResultsDB, catalog: PipelineCatalog, observation: ObservationRecord, manifests: ManifestLookup
) -> FeedbackTarget:
    """The spec and the answering model of a ``done`` observation; 409 while there is no answer."""
    spec = catalog.get(observation.pipeline)
    if observation.status is not ObservationStatus.done:
        raise InvalidInput(
            "not_done",
            f"observation {observation.id} is {observation.status.value}: there is no prediction to "
            "compare a label with",
            status=409,
            fix="send feedback once GET /v1/observations/{id} says done",
        )
    prediction = _answering_prediction(db.predictions_for(observation.id))
    if prediction is None:
        raise InvalidInput(
            "no_prediction", f"observation {observation.id} has no stored prediction", status=409
        )
    try:
        manifest = manifests(prediction.model_name, prediction.model_version)
    except NotFound as exc:
        raise InvalidInput(
            "model_unknown",
            f"{prediction.model_name} v{prediction.model_version}, which answered observation "
            f"{observation.id}, is no longer in the registry: its classes cannot be checked",
            status=409,
        ) from exc
    except KeeneyeError as exc:
        raise InvalidInput(
            "registry_unavailable", f"cannot read the model's classes: {exc.message}", status=503, fix=exc.fix
        ) from exc
    return FeedbackTarget(observation, spec, prediction, manifest)


def _answering_prediction(predictions: Sequence[PredictionRecord]) -> PredictionRecord | None:
    """The prediction the client saw (champion or canary, newest); a shadow's only when alone."""
    answered = [p for p in predictions if p.variant in (Variant.champion, Variant.canary)]
    pool = answered or list(predictions)
    return pool[-1] if pool else None


def parse_feedback(body: Any, target: FeedbackTarget, *, default_source: str = "api") -> ParsedFeedback:
    """Validate a feedback body against the pipeline and the model; the normalised label.

    Raises :class:`InvalidInput` with a stable reason: ``bad_request`` (400), ``unknown_field``,
    ``missing_label``, ``ambiguous_label``, ``wrong_label_kind``, ``unknown_class``, ``bad_decision``,
    ``bad_instances``, ``bad_geometry``, ``bad_author``, ``bad_source`` (422), ``too_many_instances``
    and ``too_large`` (413).
    """
    if not isinstance(body, Mapping):
        raise InvalidInput(
            "bad_request",
            f"the feedback must be a JSON object, got {_json_type(body)}",
            status=400,
            fix='send e.g. {"class": "esox_lucius"}',
        )
    unknown = sorted(str(k) for k in body if k not in BODY_KEYS)
    if unknown:
        raise InvalidInput(
            "unknown_field",
            f"unknown field(s) {', '.join(unknown)[:200]}",
            fix=f"use only {', '.join(sorted(BODY_KEYS))}",
        )
    accepted = accepted_label_kinds(target.spec)
    given = [k for k in LABEL_KEYS if k in body]
    if not given:
        raise InvalidInput(
            "missing_label",
            f"the feedback carries no label; pipeline {target.spec.name} accepts {' or '.join(accepted)}",
            fix=_example(accepted[0]),
        )
    if len(given) > 1:
        raise InvalidInput(
            "ambiguous_label",
            f"send one label per feedback, got {' and '.join(given)}",
            fix=_example(accepted[0]),
        )
    kind = given[0]
    if kind not in accepted:
        raise InvalidInput(
            "wrong_label_kind",
            f"pipeline {target.spec.name} ({_describe(target.spec)}) takes {' or '.join(accepted)} "
            f"labels, not {kind}",
            fix=_example(accepted[0]),
        )
    if kind == "class":
        label: dict[str, Any] = {"class": _class_name(body["class"], target.manifest, "class")}
    elif kind == "decision":
        label = {"decision": _decision(body["decision"]).value}
    else:
        instances = _instances(body["instances"], target)
        label = {"instances": instances}
        if target.spec.decision.kind == "ok-defect":
            label["decision"] = truth_decision(instances, target.manifest).value
    return ParsedFeedback(label, _author(body.get("author")), _source(body.get("source", default_source)))


def store_feedback(db: ResultsDB, target: FeedbackTarget, parsed: ParsedFeedback) -> FeedbackReceipt:
    feedback_id = db.add_feedback(target.observation.id, parsed.label, parsed.source, author=parsed.author)
    log.info(
        "feedback %s on observation %s (%s, source=%s)",
        feedback_id, target.observation.id, target.spec.name, parsed.source,
    )  # fmt: skip
    return FeedbackReceipt(
        id=feedback_id,
        observation_id=target.observation.id,
        pipeline=target.spec.name,
        model_version=target.prediction.model_version,
        source=parsed.source,
        author=parsed.author,
        label=parsed.label,
    )


def submit_feedback(
    db: ResultsDB,
    catalog: PipelineCatalog,
    manifests: ManifestLookup,
    observation_id: str,
    body: Any,
    *,
    default_source: str = "api",
) -> FeedbackReceipt:
    """Look up, validate and store one label (what ``keeneye feedback`` runs; the API runs the same
    steps with its rate limit between the lookup and the validation)."""
    observation = find_observation(db, observation_id)
    target = feedback_target(db, catalog, observation, manifests)
    return store_feedback(db, target, parse_feedback(body, target, default_source=default_source))


def truth_decision(instances: Sequence[Mapping[str, Any]], manifest: ModelManifest | None) -> Decision:
    """DEFECT when any labelled instance is of a defect class (the model's ``extra.defect_classes``,
    else every class that is neither an OK class nor the background) — ``decide_ok_defect``'s rule."""
    ok: frozenset[str]
    if manifest is None:
        ok = frozenset(n.lower() for n in DEFAULT_OK_CLASSES)
        return (
            Decision.defect
            if any(str(i.get("class", "")).lower() not in ok for i in instances)
            else Decision.ok
        )
    if "defect_classes" in manifest.extra:
        defects = {str(n).lower() for n in manifest.extra["defect_classes"]}
    else:
        ok = ok_class_names(manifest)
        defects = {
            c.name.lower()
            for c in manifest.classes
            if c.name.lower() not in ok and c.id != manifest.background_class
        }
    return Decision.defect if any(str(i["class"]).lower() in defects for i in instances) else Decision.ok


# --- validation helpers ---------------------------------------------------------------------------


def _example(kind: str) -> str:
    return {
        "class": 'send {"class": "<one of the model\'s classes>"}',
        "decision": 'send {"decision": "OK"} or {"decision": "DEFECT"}',
        "instances": 'send {"instances": [{"class": "...", "bbox": [x, y, w, h]}]}',
    }[kind]


def _describe(spec: PipelineSpec) -> str:
    return spec.task.value + (", ok-defect" if spec.decision.kind == "ok-defect" else "")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _class_name(value: Any, manifest: ModelManifest, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("unknown_class", f"{where} must be a class name (a non-empty string)")
    name = value.strip()
    names = manifest.class_names
    background = (
        names[manifest.background_class]
        if manifest.background_class is not None and manifest.background_class < len(names)
        else None
    )
    if name not in names or name == background:
        known = [n for n in names if n != background]
        shown = ", ".join(known[:20]) + (f" … ({len(known)} in all)" if len(known) > 20 else "")
        raise InvalidInput(
            "unknown_class",
            f"{where} {name[:MAX_NAME_CHARS]!r} is not a class of {manifest.name} (known: {shown})",
            fix="use the model's class names exactly (keeneye models show)",
        )
    return name


def _decision(value: Any) -> Decision:
    if isinstance(value, str) and value.strip().upper() in (Decision.ok.value, Decision.defect.value):
        return Decision(value.strip().upper())
    raise InvalidInput(
        "bad_decision", f"decision must be OK or DEFECT, got {str(value)[:50]!r}", fix=_example("decision")
    )


def _author(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        raise InvalidInput("bad_author", f"author must be a string of at most {MAX_NAME_CHARS} characters")
    return value.strip() or None


def _source(value: Any) -> str:
    if not isinstance(value, str) or not SOURCE_PATTERN.match(value):
        raise InvalidInput(
            "bad_source",
            f"source {str(value)[:40]!r} is not a short lower-case word",
            fix="use e.g. api, review, import (letters, digits, - and _, at most 32)",
        )
    return value


def _bad_geometry(index: int, message: str) -> InvalidInput:
    return InvalidInput(
        "bad_geometry",
        f"instances[{index}]: {message}",
        fix="bbox is [x, y, width, height] and segmentation [[x1, y1, x2, y2, …], …] in image pixels",
    )


def _instances(value: Any, target: FeedbackTarget) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidInput("bad_instances", f"instances must be an array, got {_json_type(value)}")
    if len(value) > MAX_INSTANCES:
        raise InvalidInput(
            "too_many_instances",
            f"{len(value)} instances in one label, over the limit of {MAX_INSTANCES}",
            status=413,
            fix="label fewer, larger regions",
        )
    width, height = target.image_size
    points = 0
    out = []
    for k, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise InvalidInput("bad_instances", f"instances[{k}] must be an object, got {_json_type(item)}")
        extra = sorted(str(key) for key in item if key not in INSTANCE_KEYS)
        if extra:
            raise InvalidInput(
                "bad_instances",
                f"instances[{k}]: unknown field(s) {', '.join(extra)[:200]}",
                fix="use class, bbox and/or segmentation",
            )
        if "bbox" not in item and "segmentation" not in item:
            raise InvalidInput("bad_instances", f"instances[{k}] needs a bbox or a segmentation")
        normalised: dict[str, Any] = {
            "class": _class_name(item.get("class"), target.manifest, f"instances[{k}].class")
        }
        if "segmentation" in item:
            polygons = _polygons(k, item["segmentation"], width, height)
            points += sum(len(p) // 2 for p in polygons)
            if points > MAX_LABEL_POINTS:
                raise InvalidInput(
                    "too_large",
                    f"the polygons have more than {MAX_LABEL_POINTS} points in all",
                    status=413,
                    fix="simplify the outlines",
                )
            normalised["segmentation"] = polygons
            xs = [v for p in polygons for v in p[0::2]]
            ys = [v for p in polygons for v in p[1::2]]
            normalised["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        if "bbox" in item:
            normalised["bbox"] = _bbox(k, item["bbox"], width, height)
        out.append(normalised)
    return out


def _bbox(index: int, value: Any, width: float, height: float) -> list[float]:
    if not isinstance(value, list) or len(value) != 4 or not all(_is_number(v) for v in value):
        raise _bad_geometry(index, "bbox must be four finite numbers [x, y, width, height]")
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise _bad_geometry(index, f"bbox width and height must be above 0, got {w:g} × {h:g}")
    if (
        x < -EDGE_TOLERANCE_PX
        or y < -EDGE_TOLERANCE_PX
        or x + w > width + EDGE_TOLERANCE_PX
        or (y + h > height + EDGE_TOLERANCE_PX)
    ):
        raise _bad_geometry(index, f"bbox {[x, y, w, h]} leaves the {width:g} × {height:g} image")
    return [x, y, w, h]


def _polygons(index: int, value: Any, width: float, height: float) -> list[list[float]]:
    if isinstance(value, Mapping):
        raise _bad_geometry(index, "RLE masks are not accepted as feedback; send polygons")
    if not isinstance(value, list) or not value:
        raise _bad_geometry(index, "segmentation must be a non-empty array of polygons")
    if len(value) > MAX_POLYGONS:
        raise _bad_geometry(index, f"{len(value)} polygons, over the limit of {MAX_POLYGONS}")
    out = []
    for j, poly in enumerate(value):
        where = f"polygon {j}"
        if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
            raise _bad_geometry(index, f"{where} must be a flat array of finite numbers [x1, y1, x2, y2, …]")
        if len(poly) % 2:
            raise _bad_geometry(index, f"{where} has an odd number of coordinates ({len(poly)})")
        if len(poly) < 6:
            raise _bad_geometry(index, f"{where} has {len(poly) // 2} points; a polygon needs at least 3")
        if len(poly) > 2 * MAX_POLYGON_POINTS:
            raise _bad_geometry(index, f"{where} has {len(poly) // 2} points, over {MAX_POLYGON_POINTS}")
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        lo, hi = -EDGE_TOLERANCE_PX, np.array([width, height]) + EDGE_TOLERANCE_PX
        if (xy < lo).any() or (xy > hi).any():
            raise _bad_geometry(index, f"{where} leaves the {width:g} × {height:g} image")
        x, y = xy[:, 0], xy[:, 1]
        area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
        if area <= 0:
            raise _bad_geometry(index, f"{where} encloses no area")
        out.append([float(v) for v in poly])
    return out


# ==================================================================================================
# Instance matching (pure)
# ==================================================================================================


@dataclass(frozen=True)
class Shape:
    """One instance for matching: class, ``x1, y1, x2, y2`` box, optional COCO polygons, score."""

    class_name: str
    box: tuple[float, float, float, float]
    polygons: tuple[tuple[float, ...], ...] = ()
    score: float = 1.0


@dataclass(frozen=True)
class MatchCounts:
    tp: int
    fp: int
    fn: int


def truth_shapes(label: Mapping[str, Any]) -> list[Shape] | None:
    """Shapes of a stored ``instances`` label; None when it is not a usable instance label (labels
    written by other tools are read defensively: a malformed one is skipped, never a crash)."""
    items = label.get("instances")
    if not isinstance(items, list):
        return None
    shapes = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("class"), str):
            return None
        seg = item.get("segmentation")
        polygons = tuple(
            poly
            for p in (seg if isinstance(seg, list) else [])
            if (poly := _floats(p)) is not None and len(poly) >= 6 and len(poly) % 2 == 0
        )
        bbox = _floats(item.get("bbox"))
        if polygons:
            xs = [v for p in polygons for v in p[0::2]]
            ys = [v for p in polygons for v in p[1::2]]
            box = (min(xs), min(ys), max(xs), max(ys))
        elif bbox is not None and len(bbox) == 4:
            box = (bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3])
        else:
            return None
        shapes.append(Shape(item["class"], box, polygons))
    return shapes


def predicted_shapes(result: Mapping[str, Any]) -> list[Shape]:
    """Shapes of a stored segment / detect result (``format_result``'s ``instances``)."""
    items = result.get("instances")
    shapes = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        box = _floats(item.get("box"))
        if box is None or len(box) != 4:
            continue
        outline = item.get("polygon")
        points = [_floats(pt) for pt in outline] if isinstance(outline, list) else []
        polygons: tuple[tuple[float, ...], ...] = ()
        if len(points) >= 3 and all(pt is not None and len(pt) == 2 for pt in points):
            # mask_polygon traces pixel indices; +0.5 puts the outline on pixel centres (edge coordinates).
            polygons = (tuple(v + 0.5 for pt in points if pt is not None for v in pt),)
        score = item.get("score")
        shapes.append(
            Shape(
                str(item.get("class")),
                (box[0], box[1], box[2], box[3]),
                polygons,
                float(score) if _is_number(score) else 1.0,
            )
        )
    return shapes


def _floats(value: Any) -> tuple[float, ...] | None:
    """A list of finite numbers as floats, else None."""
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        return None
    return tuple(float(v) for v in value)


def shape_iou(a: Shape, b: Shape) -> float:
    """Mask IoU when both have polygons (rasterised on the pair's bounding crop), else box IoU."""
    if a.polygons and b.polygons:
        return _mask_iou(a.polygons, b.polygons)
    return float(box_iou(np.asarray([a.box]), np.asarray([b.box]))[0, 0])


def _mask_iou(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    xs = [v for p in (*a, *b) for v in p[0::2]]
    ys = [v for p in (*a, *b) for v in p[1::2]]
    x0, y0 = math.floor(min(xs)), math.floor(min(ys))
    w, h = max(1, math.ceil(max(xs)) - x0), max(1, math.ceil(max(ys)) - y0)
    scale = min(1.0, math.sqrt(MAX_CROP_PIXELS / (w * h)))  # IoU is scale-free; memory is not

    def raster(polys: Sequence[Sequence[float]]) -> np.ndarray:
        shifted = [[(v - (x0 if i % 2 == 0 else y0)) * scale for i, v in enumerate(p)] for p in polys]
        return polygons_to_mask(shifted, max(1, math.ceil(h * scale)), max(1, math.ceil(w * scale)))

    ma, mb = raster(a), raster(b)
    union = int((ma | mb).sum())
    return int((ma & mb).sum()) / union if union else 0.0


def match_instances(
    truth: Sequence[Shape], predicted: Sequence[Shape], iou_threshold: float = IOU_THRESHOLD
) -> MatchCounts:
    """Greedy COCO-style matching: predictions by descending score each take the unmatched truth of
    the same class with the highest IoU ≥ ``iou_threshold``. Unmatched predictions are false
    positives, unmatched truths false negatives."""
    if not truth or not predicted:
        return MatchCounts(0, len(predicted), len(truth))
    iou = box_iou(np.asarray([t.box for t in truth]), np.asarray([p.box for p in predicted])).astype(
        np.float64
    )
    for i, t in enumerate(truth):
        for j, p in enumerate(predicted):
            if t.class_name != p.class_name:
                iou[i, j] = 0.0
            elif iou[i, j] > 0 and t.polygons and p.polygons:  # disjoint boxes → disjoint masks
                iou[i, j] = _mask_iou(t.polygons, p.polygons)
    matched = np.zeros(len(truth), dtype=bool)
    tp = 0
    for j in np.argsort([-p.score for p in predicted], kind="stable"):
        candidates = np.where(matched, -1.0, iou[:, j])
        i = int(np.argmax(candidates))
        if candidates[i] >= iou_threshold:
            matched[i] = True
            tp += 1
    return MatchCounts(tp, len(predicted) - tp, len(truth) - tp)


# ==================================================================================================
# Online quality
# ==================================================================================================


@dataclass(frozen=True)
class QualityWindow:
    """One model version (in one variant) on the labelled observations of one window."""

    pipeline: str
    model_version: str
    variant: str
    kind: QualityKind
    n: int  # labelled observations this version answered
    metrics: Mapping[str, float | None]  # None = undefined (e.g. precision when nothing was positive)
    reference: Mapping[str, float]  # the version's test-split values, by the same names
    relative_drops: Mapping[str, float]  # (reference − online) / reference, per metric with both
    drop: bool
    window_start: datetime
    window_end: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "model_version": self.model_version,
            "variant": self.variant,
            "kind": self.kind,
            "n": self.n,
            "metrics": dict(self.metrics),
            "reference": dict(self.reference),
            "relative_drops": dict(self.relative_drops),
            "drop": self.drop,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
        }


@dataclass
class _Accumulator(abc.ABC):
    """Truth against one version's answers, added one observation at a time."""

    n: int = 0  # observations counted

    @abc.abstractmethod
    def add(self, label: Mapping[str, Any], result: Mapping[str, Any], decision: str | None) -> None: ...

    @abc.abstractmethod
    def metrics(self) -> dict[str, float | None]: ...


@dataclass
class _ClassifyAccumulator(_Accumulator):
    truth: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)

    def add(self, label: Mapping[str, Any], result: Mapping[str, Any], decision: str | None) -> None:
        t, p = label.get("class"), result.get("predicted_class")
        if isinstance(t, str) and isinstance(p, str):
            self.truth.append(t)
            self.predicted.append(p)
            self.n += 1

    def metrics(self) -> dict[str, float | None]:
        names = sorted({*self.truth, *self.predicted})
        index = {name: i for i, name in enumerate(names)}
        cm = confusion_matrix([index[t] for t in self.truth], [index[p] for p in self.predicted], len(names))
        m = classification_metrics(cm, names)
        out: dict[str, float | None] = {
            "precision": m["macro_precision"],
            "recall": m["macro_recall"],
            "f1": m["macro_f1"],
            "accuracy": m["accuracy"],
        }
        out.update({k: m[k] for k in ("macro_precision", "macro_recall", "macro_f1")})
        return out


@dataclass
class _DecisionAccumulator(_Accumulator):
    truth: list[bool] = field(default_factory=list)
    predicted: list[bool] = field(default_factory=list)

    def add(self, label: Mapping[str, Any], result: Mapping[str, Any], decision: str | None) -> None:
        said = decision or result.get("decision")
        truth = label.get("decision")
        if truth is None and isinstance(label.get("instances"), list):  # stored by an importer
            truth = truth_decision([i for i in label["instances"] if isinstance(i, Mapping)], None).value
        if said in (Decision.ok.value, Decision.defect.value) and truth in (
            Decision.ok.value,
            Decision.defect.value,
        ):
            self.truth.append(truth == Decision.defect.value)
            self.predicted.append(said == Decision.defect.value)
            self.n += 1

    def metrics(self) -> dict[str, float | None]:
        b = binary_metrics(self.truth, self.predicted)
        return {k: b[k] for k in ("precision", "recall", "f1", "accuracy")}


@dataclass
class _InstanceAccumulator(_Accumulator):
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, label: Mapping[str, Any], result: Mapping[str, Any], decision: str | None) -> None:
        truth = truth_shapes(label)
        if truth is None:
            return
        counts = match_instances(truth, predicted_shapes(result))
        self.tp, self.fp, self.fn = self.tp + counts.tp, self.fp + counts.fp, self.fn + counts.fn
        self.n += 1

    def metrics(self) -> dict[str, float | None]:
        # One entry per instance outcome: tp (found), fp (false find), fn (missed).
        truth = [True] * self.tp + [False] * self.fp + [True] * self.fn
        predicted = [True] * (self.tp + self.fp) + [False] * self.fn
        b = binary_metrics(truth, predicted)
        return {k: b[k] for k in ("precision", "recall", "f1")}


_ACCUMULATORS: dict[QualityKind, Callable[[], _Accumulator]] = {
    "classify": _ClassifyAccumulator,
    "ok-defect": _DecisionAccumulator,
    "instances": _InstanceAccumulator,
}


def online_quality(
    db: ResultsDB,
    pipeline: str,
    *,
    spec: PipelineSpec,
    window_seconds: float,
    reference_for: Callable[[str], Mapping[str, float]],
    min_feedback: int,
    drop: float,
    now: datetime | None = None,
) -> list[QualityWindow]:
    """Quality of every model version and variant on the window ``(now − window_seconds, now]``.

    The latest feedback per observation wins (a correction replaces the first label). Each labelled
    observation counts for every version that answered it (champion, canary, shadow), so versions
    are compared on the same truth but never mixed. ``reference_for(version)`` gives the version's
    test-split metrics (the manifest's, as the registry stores them).
    """
    end = now or utcnow()
    start = end - timedelta(seconds=window_seconds)
    kind = quality_kind(spec)
    accumulators: dict[tuple[str, str], _Accumulator] = {}
    for labels in _latest_feedback(db, pipeline, start, end):
        for observation_id, version, variant, result, decision in _predictions(db, spec, list(labels)):
            acc = accumulators.get((version, variant))
            if acc is None:
                acc = accumulators[(version, variant)] = _ACCUMULATORS[kind]()
            acc.add(labels[observation_id], result, decision)
    references: dict[str, Mapping[str, float]] = {}
    windows = []
    for (version, variant), acc in sorted(
        accumulators.items(), key=lambda kv: (_version_key(kv[0][0]), kv[0][1])
    ):
        if acc.n == 0:
            continue
        if version not in references:
            references[version] = reference_for(version)
        windows.append(
            _window(
                pipeline, version, variant, kind, acc, references[version], min_feedback, drop, start, end
            )
        )
    return windows


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (10**12, version)


def _window(
    pipeline: str,
    version: str,
    variant: str,
    kind: QualityKind,
    acc: _Accumulator,
    manifest_metrics: Mapping[str, float],
    min_feedback: int,
    drop: float,
    start: datetime,
    end: datetime,
) -> QualityWindow:
    metrics = acc.metrics()
    reference = {
        name: float(manifest_metrics[source])
        for name, source in REFERENCE_NAMES[kind].items()
        if source in manifest_metrics and _is_number(manifest_metrics[source])
    }
    drops = {}
    for name, ref in reference.items():
        value = metrics.get(name)
        if value is not None and ref > 0:
            drops[name] = (ref - value) / ref
    # Rounded so that "exactly 10 %" does not flip on the last bit of a float.
    dropped = acc.n >= min_feedback and any(round(d, 9) > drop for d in drops.values())
    return QualityWindow(
        pipeline=pipeline,
        model_version=version,
        variant=variant,
        kind=kind,
        n=acc.n,
        metrics=metrics,
        reference=reference,
        relative_drops=drops,
        drop=dropped,
        window_start=start,
        window_end=end,
    )


def _latest_feedback(
    db: ResultsDB, pipeline: str, start: datetime, end: datetime
) -> Iterator[dict[str, dict[str, Any]]]:
    """``{observation_id: label}`` per page of the window's feedback, newest first, each observation
    once (its newest label). Keyset pages on ``ix_feedback_pipeline_created_at``."""
    from sqlalchemy import and_, or_, select

    seen: set[str] = set()
    cursor: tuple[datetime, int] | None = None
    read = 0
    while read < MAX_WINDOW_FEEDBACK:
        stmt = (
            select(Feedback.id, Feedback.observation_id, Feedback.label, Feedback.created_at)
            .where(Feedback.pipeline == pipeline, Feedback.created_at > start, Feedback.created_at <= end)
            .order_by(Feedback.created_at.desc(), Feedback.id.desc())
            .limit(min(FEEDBACK_PAGE, MAX_WINDOW_FEEDBACK - read))
        )
        if cursor is not None:
            stmt = stmt.where(
                or_(
                    Feedback.created_at < cursor[0],
                    and_(Feedback.created_at == cursor[0], Feedback.id < cursor[1]),
                )
            )
        with db.session() as s:
            rows = s.execute(stmt).all()
        if not rows:
            return
        read += len(rows)
        cursor = (rows[-1].created_at, rows[-1].id)
        page: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row.observation_id not in seen and isinstance(row.label, dict):
                seen.add(row.observation_id)
                page[row.observation_id] = row.label
        if page:
            yield page
        if len(rows) < FEEDBACK_PAGE:
            return
    log.warning(
        "quality window of %s holds more than %d feedback rows; the oldest are left out", pipeline, read
    )


def _predictions(
    db: ResultsDB, spec: PipelineSpec, observation_ids: Sequence[str]
) -> Iterator[tuple[str, str, str, dict[str, Any], str | None]]:
    """``(observation_id, version, variant, result, decision)`` of the pipeline's model, in chunks."""
    from sqlalchemy import select

    for i in range(0, len(observation_ids), PREDICTION_CHUNK):
        chunk = observation_ids[i : i + PREDICTION_CHUNK]
        stmt = select(
            Prediction.observation_id,
            Prediction.model_version,
            Prediction.variant,
            Prediction.result,
            Prediction.decision,
        ).where(Prediction.observation_id.in_(chunk), Prediction.model_name == spec.model_name)
        with db.session() as s:
            rows = s.execute(stmt).all()
        for row in rows:
            yield row.observation_id, row.model_version, row.variant, row.result or {}, row.decision


# --- publishing and scheduling --------------------------------------------------------------------

# Which label sets each Metrics object carries per pipeline, so a retired version's gauges go away
# instead of alarming forever.
_PUBLISHED: weakref.WeakKeyDictionary[Metrics, dict[str, set[tuple[str, ...]]]] = weakref.WeakKeyDictionary()
_PUBLISHED_LOCK = threading.Lock()


def update_quality_metrics(
    metrics: Metrics, windows: Iterable[QualityWindow], *, pipelines: Iterable[str] | None = None
) -> None:
    """Set ``online_quality{pipeline,version,metric}`` and ``quality_drop{pipeline,version}``.

    ``pipelines`` (default: those in ``windows``) are replaced wholesale: versions without a window now
    lose their gauges. A version seen in two variants is published from the one with more feedback.
    """
    windows = list(windows)
    covered = set(pipelines) if pipelines is not None else {w.pipeline for w in windows}
    chosen: dict[tuple[str, str], QualityWindow] = {}
    for w in windows:
        key = (w.pipeline, w.model_version)
        if key not in chosen or w.n > chosen[key].n:
            chosen[key] = w
    with _PUBLISHED_LOCK:
        published = _PUBLISHED.setdefault(metrics, {})
        for pipeline in covered:
            for labels in published.pop(pipeline, set()):
                gauge = metrics.online_quality if len(labels) == 3 else metrics.quality_drop
                with contextlib.suppress(KeyError):  # already gone
                    gauge.remove(*labels)
        for (pipeline, version), w in chosen.items():
            if pipeline not in covered:
                continue
            sets = published.setdefault(pipeline, set())
            for name, value in w.metrics.items():
                if value is not None:
                    metrics.online_quality.labels(pipeline, version, name).set(value)
                    sets.add((pipeline, version, name))
            metrics.quality_drop.labels(pipeline, version).set(1 if w.drop else 0)
            sets.add((pipeline, version))


def pipeline_quality(
    settings: Settings,
    db: ResultsDB,
    registry: ModelRegistry,
    spec: PipelineSpec,
    now: datetime | None = None,
) -> list[QualityWindow]:
    """:func:`online_quality` with the settings' window and thresholds and the registry's references."""
    monitoring = settings.monitoring

    def reference_for(version: str) -> Mapping[str, float]:
        try:
            return registry.get(spec.model_name, version).metrics
        except NotFound:  # a deleted version: nothing to compare with
            return {}

    return online_quality(
        db,
        spec.name,
        spec=spec,
        window_seconds=monitoring.quality_window_seconds,
        reference_for=reference_for,
        min_feedback=monitoring.quality_min_feedback,
        drop=monitoring.quality_drop,
        now=now,
    )


def evaluate_quality(
    settings: Settings,
    db: ResultsDB,
    registry: ModelRegistry,
    catalog: PipelineCatalog,
    metrics: Metrics,
    now: datetime | None = None,
) -> dict[str, list[QualityWindow]]:
    """Every pipeline's quality windows, published as gauges; the scheduler runs this each interval.

    A pipeline whose evaluation fails (registry down) is logged and left out; its gauges keep their
    last values until the next successful evaluation.
    """
    out: dict[str, list[QualityWindow]] = {}
    for spec in catalog.specs():
        try:
            out[spec.name] = pipeline_quality(settings, db, registry, spec, now)
        except KeeneyeError as exc:
            log.warning("online quality of %s not evaluated: %s", spec.name, exc.one_line())
    update_quality_metrics(metrics, [w for ws in out.values() for w in ws], pipelines=out)
    for name, ws in out.items():
        for w in ws:
            if w.drop:
                log.warning(
                    "quality drop: %s v%s (%s) on %d labels: %s",
                    name, w.model_version, w.variant, w.n,
                    ", ".join(f"{k} {d:.1%} below test" for k, d in w.relative_drops.items() if d > 0),
                )  # fmt: skip
    return out


def quality_report(
    settings: Settings, spec: PipelineSpec, windows: Sequence[QualityWindow]
) -> dict[str, Any]:
    """The JSON of ``GET /v1/pipelines/{name}/quality`` and ``keeneye quality --json``."""
    monitoring = settings.monitoring
    return {
        "pipeline": spec.name,
        "kind": quality_kind(spec),
        "window_seconds": monitoring.quality_window_seconds,
        "min_feedback": monitoring.quality_min_feedback,
        "drop_threshold": monitoring.quality_drop,
        "reference_names": REFERENCE_NAMES[quality_kind(spec)],
        "windows": [w.to_dict() for w in windows],
    }
