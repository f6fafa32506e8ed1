"""Feedback: ground truth for one observation, looked up, checked and stored — the same code for the
API (``POST /v1/observations/{id}/feedback``), ``keeneye feedback`` and label imports, so all accept
exactly the same labels.

:func:`submit_feedback` = :func:`feedback_target` (the observation, its pipeline and the model version
that answered it) → the pure :func:`parse_feedback` (every check against the pipeline spec and that
model's classes; each refusal an ``InvalidInput`` with the fix) → :func:`store_feedback`. The limits
below bound a label's size. :func:`truth_decision` and :func:`truth_instances` read a stored label as
the truth online quality is measured on.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeGuard

import numpy as np

from keeneye.domain import (
    Decision,
    Instances,
    InvalidInput,
    JsonObject,
    JsonValue,
    KeeneyeError,
    NotFound,
    ObservationStatus,
    Polygons,
    Task,
    Variant,
)
from keeneye.geometry import polygons_box
from keeneye.models.manifest import MANIFEST_FILE, ModelManifest
from keeneye.models.postprocess import DEFAULT_OK_CLASSES, ok_class_names
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.registry import ModelRegistry
from keeneye.store import ObservationRecord, PredictionRecord, ResultsDB

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
            if is_number(w) and is_number(h) and float(w) > 0 and float(h) > 0:
                return float(w), float(h)
        return MAX_COORDINATE, MAX_COORDINATE


@dataclass(frozen=True)
class ParsedFeedback:
    label: JsonObject  # {"class": …}, {"decision": …} or {"instances": […], "decision"?: …}
    author: str | None
    source: str


class FeedbackReceiptJson(TypedDict):
    id: int
    observation_id: str
    pipeline: str
    model_version: str
    source: str
    author: str | None
    label: JsonObject


@dataclass(frozen=True)
class FeedbackReceipt:
    """What the API answers (201) and the CLI prints."""

    id: int
    observation_id: str
    pipeline: str
    model_version: str
    source: str
    author: str | None
    label: JsonObject

    def to_dict(self) -> FeedbackReceiptJson:
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
        label: JsonObject = {"class": _class_name(body["class"], target.manifest, "class")}
    elif kind == "decision":
        label = {"decision": _decision(body["decision"]).value}
    else:
        instances = _instances(body["instances"], target)
        label = {"instances": list[JsonValue](instances)}
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


def is_number(value: Any) -> TypeGuard[int | float]:
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


def _instances(value: Any, target: FeedbackTarget) -> list[JsonObject]:
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
    out: list[JsonObject] = []
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
        normalised: JsonObject = {
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
            normalised["segmentation"] = [list[JsonValue](p) for p in polygons]
            xs = [v for p in polygons for v in p[0::2]]
            ys = [v for p in polygons for v in p[1::2]]
            normalised["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        if "bbox" in item:
            normalised["bbox"] = list[JsonValue](_bbox(k, item["bbox"], width, height))
        out.append(normalised)
    return out


def _bbox(index: int, value: Any, width: float, height: float) -> list[float]:
    if not isinstance(value, list) or len(value) != 4 or not all(is_number(v) for v in value):
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
        if not isinstance(poly, list) or not all(is_number(v) for v in poly):
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
# Truth of an instance label (matching itself: keeneye.geometry)
# ==================================================================================================


def truth_instances(label: Mapping[str, Any], vocabulary: list[str]) -> Instances | None:
    """The instances of a stored ``instances`` label, ``class_ids`` indexing ``vocabulary`` (names it
    lacks are appended); None when it is not a usable instance label (labels written by other tools
    are read defensively: a malformed one is skipped, never a crash)."""
    items = label.get("instances")
    if not isinstance(items, list):
        return None
    ids: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    shapes: list[Polygons] = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("class"), str):
            return None
        seg = item.get("segmentation")
        polygons = [
            list(poly)
            for p in (seg if isinstance(seg, list) else [])
            if (poly := _floats(p)) is not None and len(poly) >= 6 and len(poly) % 2 == 0
        ]
        bbox = _floats(item.get("bbox"))
        if polygons:
            box = polygons_box(polygons)
        elif bbox is not None and len(bbox) == 4:
            box = (bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3])
        else:
            return None
        if item["class"] not in vocabulary:
            vocabulary.append(item["class"])
        ids.append(vocabulary.index(item["class"]))
        boxes.append(box)
        shapes.append(polygons)
    return Instances(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        scores=np.ones(len(ids), dtype=np.float32),
        class_ids=np.asarray(ids, dtype=np.int64),
        polygons=shapes,
    )


def _floats(value: Any) -> tuple[float, ...] | None:
    """A list of finite numbers as floats, else None."""
    if not isinstance(value, list) or not all(is_number(v) for v in value):
        return None
    return tuple(float(v) for v in value)
