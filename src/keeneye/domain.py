"""The shared vocabulary of keeneye: plain types and errors, no I/O.

Every package may import this module (and ``settings``); nothing here imports another keeneye
package. Stages pass :class:`Instances` between them instead of inventing their own dicts, and a
pipeline's answer stays an :class:`Answer` from ``finish()`` to the edges: it becomes JSON only there
(:meth:`Answer.to_json`: API response, ``.out`` bus payload, DB JSON column, cache) and comes back with
:meth:`Answer.from_stored`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, Required, TypeAlias, TypedDict, TypeGuard, cast

import numpy as np
import numpy.typing as npt

# --------------------------------------------------------------------------------------------------
# Errors. Each carries a one-line message for the user and, where there is one, the fix.
# --------------------------------------------------------------------------------------------------


class KeeneyeError(Exception):
    """Base class for every error keeneye raises on purpose (user or environment errors)."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        """The message and the fix on one line, as the CLI prints it."""
        return f"{self.message} — {self.fix}" if self.fix else self.message


class ConfigError(KeeneyeError):
    """A setting is malformed or names something that cannot be used."""

    def __init__(self, setting: str, message: str, *, fix: str | None = None) -> None:
        super().__init__(f"{setting}: {message}", fix=fix)
        self.setting = setting


class BackendUnavailable(KeeneyeError):
    """A configured backend (database, bus, object store, cache, registry) cannot be reached."""

    def __init__(self, setting: str, url: str, message: str, *, fix: str | None = None) -> None:
        super().__init__(f"{setting} ({url}): {message}", fix=fix)
        self.setting = setting
        self.url = url


class InvalidInput(KeeneyeError):
    """An input was refused. ``reason`` is a stable machine-readable code (e.g. ``corrupt_image``).

    ``status`` is the HTTP status the API answers with; workers record ``reason`` as the
    ``rejected`` reason of the observation.
    """

    def __init__(self, reason: str, message: str, *, status: int = 422, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.reason = reason
        self.status = status


class NotFound(KeeneyeError):
    """A named thing (pipeline, model version, observation, object key) does not exist."""


class MessageTooLarge(KeeneyeError):
    """A message or object exceeds the configured size limit."""

    def __init__(self, what: str, size: int, limit: int, *, setting: str) -> None:
        super().__init__(
            f"{what} is {size} bytes, over the limit of {limit} bytes",
            fix=f"send it by reference through the object store, or raise {setting}",
        )
        self.size = size
        self.limit = limit
        self.setting = setting


# --------------------------------------------------------------------------------------------------
# JSON: what JSON columns hold, the bus carries and the API answers when its shape is open (labels,
# metadata, annotations a user sends). Narrower than Any: a reader must check what it got. Where the
# shape is known, a TypedDict or a dataclass says it instead.
# --------------------------------------------------------------------------------------------------

JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None
JsonObject: TypeAlias = dict[str, JsonValue]


# --------------------------------------------------------------------------------------------------
# Core enums
# --------------------------------------------------------------------------------------------------


class ObservationStatus(enum.StrEnum):
    queued = "queued"
    processing = "processing"
    done = "done"
    rejected = "rejected"
    failed = "failed"


class Task(enum.StrEnum):
    classify = "classify"
    detect = "detect"
    segment = "segment"


class Decision(enum.StrEnum):
    """Image-level verdict of line-inspection; DEFECT is also the fail-safe answer."""

    ok = "OK"
    defect = "DEFECT"


class Variant(enum.StrEnum):
    """Which model answered: the champion, the canary challenger, or the silent shadow."""

    champion = "champion"
    canary = "canary"
    shadow = "shadow"


class Role(enum.StrEnum):
    """What an API key may do; each role may do everything the ones before it may.

    ``viewer`` reads (pages, GET APIs); ``operator`` also acts on the running system (predict,
    acknowledge and silence alerts, review and feedback, shadow / canary / abort a rollout);
    ``admin`` also manages keys and moves the champion (promote, roll back).
    """

    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """Whether a key with this role may do what ``needed`` guards."""
        return self.rank >= needed.rank


# --------------------------------------------------------------------------------------------------
# Instances: the one result type for classification, detection and segmentation
# --------------------------------------------------------------------------------------------------

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
# COCO polygons of one instance, each flat ``[x1, y1, x2, y2, …]`` in pixel-edge coordinates.
Polygons = list[list[float]]
# An answer's outline of one instance: ``[[x, y], …]`` through pixel indices (``geometry.mask_outline``).
Outline = list[list[float]]


@dataclass
class Instances:
    """N predicted instances in original-image pixel coordinates.

    * ``boxes``: (N, 4) float32 ``x1, y1, x2, y2``; for classification the whole image.
    * ``scores``: (N,) float32 confidence.
    * ``class_ids``: (N,) int64 index into the model's class list.
    * ``masks``: optional (N, H, W) bool, H×W the original image size.
    * ``class_probabilities``: optional (C,) float32 for whole-image classification (softmax).
    * ``polygons``: optional COCO polygons per instance (possibly none for one), where the shapes
      come as outlines instead of masks (stored answers, labels).
    """

    boxes: FloatArray
    scores: FloatArray
    class_ids: IntArray
    masks: BoolArray | None = None
    class_probabilities: FloatArray | None = None
    polygons: list[Polygons] | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must be ({n}, 4), got {self.boxes.shape}")
        if self.class_ids.shape != (n,):
            raise ValueError(f"class_ids must be ({n},), got {self.class_ids.shape}")
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[0] != n):
            raise ValueError(f"masks must be ({n}, H, W), got {self.masks.shape}")
        if self.polygons is not None and len(self.polygons) != n:
            raise ValueError(f"polygons must be {n} lists, got {len(self.polygons)}")

    @classmethod
    def empty(cls, image_shape: tuple[int, int] | None = None) -> Instances:
        masks = None if image_shape is None else np.zeros((0, *image_shape), dtype=np.bool_)
        return cls(
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros((0,), dtype=np.float32),
            class_ids=np.zeros((0,), dtype=np.int64),
            masks=masks,
        )

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def areas(self) -> FloatArray:
        """Mask pixel counts when masks exist, otherwise box areas."""
        if self.masks is not None:
            counts: FloatArray = self.masks.sum(axis=(1, 2)).astype(np.float32)  # also for N = 0
            return counts
        w = np.clip(self.boxes[:, 2] - self.boxes[:, 0], 0, None)
        h = np.clip(self.boxes[:, 3] - self.boxes[:, 1], 0, None)
        box_areas: FloatArray = (w * h).astype(np.float32)
        return box_areas

    def filter(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> Instances:
        return Instances(
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            class_ids=self.class_ids[keep],
            masks=None if self.masks is None else self.masks[keep],
            class_probabilities=self.class_probabilities,
            polygons=None
            if self.polygons is None
            else [self.polygons[int(i)] for i in np.arange(len(self))[keep]],
        )


@dataclass(frozen=True)
class ModelRef:
    """A registered model version: ``models:/<name>/<version>``; ``alias`` when resolved from one."""

    name: str
    version: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass
class Prediction:
    """What one model said about one image, with where the time went."""

    instances: Instances
    model: ModelRef
    task: Task
    variant: Variant = Variant.champion
    timings_ms: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Answer: what a pipeline says about one image, typed from finish() to the edges
# --------------------------------------------------------------------------------------------------

# The JSON shapes of an answer, as the API answers, the bus publishes and the DB stores them.
# ``class`` is a Python keyword, hence the functional TypedDict form.
ClassScoreJson = TypedDict("ClassScoreJson", {"class": str, "label": str, "probability": float})
InstanceJson = TypedDict(
    "InstanceJson",
    {
        "class": str,
        "label": str,
        "score": float,
        "box": list[float],
        "area_px": float,
        "polygon": NotRequired[Outline],
    },
)


class ImageJson(TypedDict):
    width: int
    height: int
    bands: list[str]
    format: str
    quality: dict[str, float]


AreaBasis: TypeAlias = Literal["projected", "geodesic", "gsd", "pixels"]


class IndexStatsJson(TypedDict):
    """One spectral index over the valid pixels; the numbers are None when no pixel is valid."""

    mean: float | None
    p10: float | None
    p50: float | None
    p90: float | None
    valid_px: int


# "class" is a Python keyword, hence the functional form.
ZonePropertiesJson = TypedDict(
    "ZonePropertiesJson",
    {
        "kind": Literal["vigour", "disease"],
        "class": str,
        "confidence": float | None,
        "severity": float | None,
        "severity_basis": Literal["ndvi_deficit", "probability"] | None,
        "index_mean": float | None,
        "area_px": int,
        "area_m2": float | None,
        "area_ha": float | None,
    },
)


class ZoneFeatureJson(TypedDict):
    type: Literal["Feature"]
    geometry: JsonObject
    properties: ZonePropertiesJson


class ZoneCollectionJson(TypedDict):
    """A GeoJSON FeatureCollection of zones; ``crs`` (GeoJSON 2008 named CRS) only when not WGS84."""

    type: Literal["FeatureCollection"]
    features: list[ZoneFeatureJson]
    crs: NotRequired[JsonObject]


class GeoModelJson(TypedDict):
    """Whether the disease model ran on the raster: ``ran``; when it did not, ``reason`` and the
    ``missing_bands`` it needed; ``tiles`` it ran on, each ``tile_size`` px (the model's input)."""

    ran: bool
    reason: str | None
    missing_bands: list[str]
    tiles: int
    tile_size: int | None


class GeoPartJson(TypedDict):
    indices: dict[str, IndexStatsJson]
    crs: str | None
    georeferenced: bool
    area_basis: AreaBasis
    zones_crs: str | None
    bands: list[str]
    vigour_index: str | None
    zones: ZoneCollectionJson
    notes: list[str]
    model: NotRequired[GeoModelJson]


class AnswerJson(TypedDict, total=False):
    """``classify``: predicted class, label, confidence and top 3; ``detect`` / ``segment``:
    instances, count, confidence (None without instances) and the OK/DEFECT decision where the
    pipeline decides; both: the image facts."""

    task: Required[str]
    predicted_class: str
    predicted_label: str
    confidence: float | None
    top_3_predictions: list[ClassScoreJson]
    instances: list[InstanceJson]
    count: int
    decision: str
    image: ImageJson
    geo: GeoPartJson


@dataclass(frozen=True)
class ClassLabel:
    """A class as an answer names it: ``name`` (stable id) and ``display`` (for people)."""

    name: str
    display: str


@dataclass(frozen=True)
class ImageFacts:
    """The decoded image an answer is about, and its image-quality features (drift inputs)."""

    width: int
    height: int
    bands: tuple[str, ...]
    format: str
    quality: Mapping[str, float]


@dataclass
class GeoPart:
    """Crop-health's geographic answer (keeneye.geo builds it; docs/crop-health.md has the schema).

    ``indices``: statistics per spectral index; ``crs``: ``EPSG:…`` of the raster, None without
    georeference; ``area_basis``: how ``area_m2`` was obtained (``projected``, ``geodesic``, ``gsd``)
    or that it could not be (``pixels``); ``zones_crs``: the CRS of the zones' coordinates
    (``EPSG:4326`` for WGS84, the native CRS, None for pixel coordinates); ``zones``: vigour and
    disease zones as a GeoJSON FeatureCollection; ``notes``: what could not be answered and why.
    """

    indices: dict[str, IndexStatsJson]
    crs: str | None
    area_basis: AreaBasis
    zones_crs: str | None
    zones: ZoneCollectionJson
    bands: tuple[str, ...] = ()
    vigour_index: str | None = None
    notes: list[str] = field(default_factory=list)
    model: GeoModelJson | None = None  # None: no model was asked (geo.analyse_field alone)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    def to_json(self) -> GeoPartJson:
        out: GeoPartJson = {
            "indices": dict(self.indices),
            "crs": self.crs,
            "georeferenced": self.georeferenced,
            "area_basis": self.area_basis,
            "zones_crs": self.zones_crs,
            "bands": list(self.bands),
            "vigour_index": self.vigour_index,
            "zones": self.zones,
            "notes": list(self.notes),
        }
        if self.model is not None:
            out["model"] = self.model
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> GeoPart:
        """Read back defensively (like :meth:`Answer.from_stored`): a malformed index entry is skipped,
        a missing or malformed zone collection reads as an empty one."""
        indices = doc.get("indices")
        zones = doc.get("zones")
        feats = zones.get("features") if isinstance(zones, Mapping) else None
        collection: ZoneCollectionJson = {
            "type": "FeatureCollection",
            "features": [cast(ZoneFeatureJson, f) for f in feats if isinstance(f, dict)]
            if isinstance(feats, list)
            else [],
        }
        if isinstance(zones, Mapping) and isinstance(zones.get("crs"), dict):
            collection["crs"] = zones["crs"]
        basis = doc.get("area_basis")
        crs, zones_crs, vigour = doc.get("crs"), doc.get("zones_crs"), doc.get("vigour_index")
        bands, notes = doc.get("bands"), doc.get("notes")
        return cls(
            indices={
                str(k): cast(IndexStatsJson, v)
                for k, v in (indices.items() if isinstance(indices, Mapping) else ())
                if isinstance(v, dict) and "valid_px" in v
            },
            crs=crs if isinstance(crs, str) else None,
            area_basis=basis if basis in ("projected", "geodesic", "gsd") else "pixels",
            zones_crs=zones_crs if isinstance(zones_crs, str) else None,
            zones=collection,
            bands=tuple(str(b) for b in bands) if isinstance(bands, list) else (),
            vigour_index=vigour if isinstance(vigour, str) else None,
            notes=[str(n) for n in notes] if isinstance(notes, list) else [],
            model=_geo_model_of(doc.get("model")),
        )


def _geo_model_of(value: Any) -> GeoModelJson | None:
    """A stored ``geo.model`` read back; None when absent or malformed."""
    if not isinstance(value, Mapping) or not isinstance(value.get("ran"), bool):
        return None
    reason, missing = value.get("reason"), value.get("missing_bands")
    tiles, size = value.get("tiles"), value.get("tile_size")
    return {
        "ran": value["ran"],
        "reason": reason if isinstance(reason, str) else None,
        "missing_bands": [str(b) for b in missing] if isinstance(missing, list) else [],
        "tiles": tiles if isinstance(tiles, int) else 0,
        "tile_size": size if isinstance(size, int) else None,
    }


@dataclass(frozen=True)
class AnswerParts:
    """Per-application parts of an answer. Each application adds one optional typed field here
    (geo zones for crop-health, the PLC decision for line-inspection, video segments for smartcut);
    a part that is None is left out of the answer's JSON.

    ``geo``: crop-health's indices, CRS and zones (:class:`GeoPart`)."""

    geo: GeoPart | None = None


@dataclass
class Answer:
    """One pipeline's answer about one image.

    * ``prediction``: the model's :class:`Instances` (whole-image classes by descending score for
      classification), which model and variant answered, timings;
    * ``classes``: the vocabulary ``prediction.instances.class_ids`` index;
    * ``areas_px``: per instance, mask pixels (segment) or box area (detect), as answered;
    * ``outlines``: per instance, the mask outline (segment), None without masks;
    * ``decision``: OK/DEFECT where the pipeline decides; ``image``: image facts; ``parts``.
    """

    prediction: Prediction
    classes: tuple[ClassLabel, ...]
    areas_px: npt.NDArray[np.float64] | FloatArray | None = None
    outlines: list[Outline] | None = None
    decision: Decision | None = None
    image: ImageFacts | None = None
    parts: AnswerParts = field(default_factory=AnswerParts)

    @property
    def instances(self) -> Instances:
        return self.prediction.instances

    @property
    def task(self) -> Task:
        return self.prediction.task

    def class_name(self, i: int) -> str:
        """The class name of instance ``i``."""
        return self.classes[int(self.instances.class_ids[i])].name

    @property
    def class_names(self) -> list[str]:
        """Per instance (classification: by descending score), the class name."""
        return [self.class_name(i) for i in range(len(self.instances))]

    def instances_on(self, vocabulary: list[str]) -> Instances:
        """The instances with ``class_ids`` indexing ``vocabulary`` (class names; names it lacks are
        appended), so answers of different class lists can be compared."""
        ids = []
        for name in self.class_names:
            if name not in vocabulary:
                vocabulary.append(name)
            ids.append(vocabulary.index(name))
        inst = self.instances
        return Instances(
            boxes=inst.boxes,
            scores=inst.scores,
            class_ids=np.asarray(ids, dtype=np.int64),
            masks=inst.masks,
            class_probabilities=inst.class_probabilities,
            polygons=inst.polygons,
        )

    @property
    def predicted_class(self) -> str | None:
        """Classification: the top class; None for other tasks or an empty answer."""
        if self.task is not Task.classify or not len(self.instances):
            return None
        return self.class_name(0)

    @property
    def confidence(self) -> float | None:
        """The top class's probability, or the highest instance score; None without instances."""
        scores = self.instances.scores
        return round(float(scores.max()), 6) if len(scores) else None

    # -- the edges -------------------------------------------------------------------------------

    def to_json(self) -> AnswerJson:
        """The JSON document of this answer (the one shape every edge writes)."""
        inst = self.instances
        out: AnswerJson
        if self.task is Task.classify:
            top: list[ClassScoreJson] = [
                {
                    "class": self.classes[int(c)].name,
                    "label": self.classes[int(c)].display,
                    "probability": round(float(p), 6),
                }
                for c, p in zip(inst.class_ids, inst.scores, strict=True)
            ]
            out = {"task": Task.classify.value}
            if top:
                out["predicted_class"] = top[0]["class"]
                out["predicted_label"] = top[0]["label"]
                out["confidence"] = top[0]["probability"]
            out["top_3_predictions"] = top[:3]
        else:
            areas = inst.areas if self.areas_px is None else self.areas_px
            items: list[InstanceJson] = []
            for i in range(len(inst)):
                c = self.classes[int(inst.class_ids[i])]
                item: InstanceJson = {
                    "class": c.name,
                    "label": c.display,
                    "score": round(float(inst.scores[i]), 6),
                    "box": [round(float(v), 2) for v in inst.boxes[i]],
                    "area_px": float(areas[i]),
                }
                if self.outlines is not None:
                    item["polygon"] = self.outlines[i]
                items.append(item)
            out = {
                "task": self.task.value,
                "instances": items,
                "count": len(items),
                "confidence": self.confidence,
            }
            if self.decision is not None:
                out["decision"] = self.decision.value
        if self.image is not None:
            im = self.image
            out["image"] = {
                "width": im.width,
                "height": im.height,
                "bands": list(im.bands),
                "format": im.format,
                "quality": dict(im.quality),
            }
        if self.parts.geo is not None:
            out["geo"] = self.parts.geo.to_json()
        return out

    @classmethod
    def from_stored(
        cls,
        doc: Mapping[str, Any],
        classes: Sequence[ClassLabel] = (),
        *,
        model: ModelRef | None = None,
        variant: Variant = Variant.champion,
    ) -> Answer:
        """An answer read back from its JSON (DB column, cache, bus). Read defensively: stored
        answers may come from older versions or other tools, so a malformed instance is skipped and a
        missing field stays empty, never a crash. ``classes`` (e.g. the manifest's) fixes the class
        index; names it lacks are appended in order of appearance. Masks are not stored: instances
        carry their outlines as polygons instead (0.5 px on: pixel centres in edge coordinates)."""
        vocabulary = list(classes)
        index = {c.name: i for i, c in enumerate(vocabulary)}

        def class_id(name: str, label: Any) -> int:
            if name not in index:
                index[name] = len(vocabulary)
                vocabulary.append(ClassLabel(name, label if isinstance(label, str) else name))
            return index[name]

        classify = doc.get("task") == Task.classify.value or (
            "task" not in doc and ("top_3_predictions" in doc or "predicted_class" in doc)
        )
        ids: list[int] = []
        scores: list[float] = []
        boxes: list[list[float]] = []
        areas: list[float] = []
        outlines: list[Outline] = []
        polygons: list[Polygons] = []
        if classify:
            top = doc.get("top_3_predictions")
            for entry in top if isinstance(top, list) else []:
                if isinstance(entry, Mapping) and isinstance(entry.get("class"), str):
                    p = entry.get("probability")
                    ids.append(class_id(entry["class"], entry.get("label")))
                    scores.append(float(p) if _is_number(p) else 0.0)
            if not ids and isinstance(doc.get("predicted_class"), str):
                confidence = doc.get("confidence")
                ids.append(class_id(doc["predicted_class"], doc.get("predicted_label")))
                scores.append(float(confidence) if _is_number(confidence) else 1.0)
            boxes = [[0.0, 0.0, 0.0, 0.0]] * len(ids)
        else:
            items = doc.get("instances")
            for item in items if isinstance(items, list) else []:
                if not isinstance(item, Mapping):
                    continue
                box = item.get("box")
                if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
                    continue
                score, area = item.get("score"), item.get("area_px")
                ids.append(class_id(str(item.get("class")), item.get("label")))
                scores.append(float(score) if _is_number(score) else 1.0)
                boxes.append([float(v) for v in box])
                areas.append(
                    float(area) if _is_number(area) else max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
                )
                outline = item.get("polygon")
                outline = outline if isinstance(outline, list) else []
                outlines.append(outline)
                points = [
                    pt for pt in outline if isinstance(pt, list) and len(pt) == 2 and all(map(_is_number, pt))
                ]
                valid = len(points) >= 3 and len(points) == len(outline)
                polygons.append([[float(v) + 0.5 for pt in points for v in pt]] if valid else [])
        has_outlines = any("polygon" in i for i in doc.get("instances") or [] if isinstance(i, Mapping))
        instances = Instances(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(scores, dtype=np.float32),
            class_ids=np.asarray(ids, dtype=np.int64),
            polygons=polygons if has_outlines else None,
        )
        task = str(doc.get("task"))
        prediction = Prediction(
            instances=instances,
            model=model or ModelRef("", ""),
            task=Task.classify if classify else Task(task) if task in Task.__members__ else Task.detect,
            variant=variant,
        )
        decision = doc.get("decision")
        return cls(
            prediction=prediction,
            classes=tuple(vocabulary),
            areas_px=None if classify else np.asarray(areas, dtype=np.float64),
            outlines=outlines if has_outlines else None,
            decision=Decision(decision) if decision in (Decision.ok.value, Decision.defect.value) else None,
            image=_image_facts(doc.get("image")),
            parts=_answer_parts(doc),
        )


def _is_number(value: object) -> TypeGuard[int | float]:
    """A finite JSON number (bools are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _answer_parts(doc: Mapping[str, Any]) -> AnswerParts:
    geo = doc.get("geo")
    return AnswerParts(geo=GeoPart.from_json(geo) if isinstance(geo, Mapping) else None)


def _image_facts(value: object) -> ImageFacts | None:
    if not isinstance(value, Mapping):
        return None
    quality = value.get("quality")
    bands = value.get("bands")
    return ImageFacts(
        width=int(value.get("width") or 0),
        height=int(value.get("height") or 0),
        bands=tuple(str(b) for b in bands) if isinstance(bands, list) else (),
        format=str(value.get("format") or ""),
        quality=dict(quality) if isinstance(quality, Mapping) else {},
    )


@dataclass(frozen=True)
class BackendHealth:
    """What ``keeneye doctor`` reports for one configured backend."""

    setting: str
    url: str  # secrets masked
    reachable: bool
    version: str = ""
    detail: str = ""
    fix: str = ""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"5m"`` → 300.0 seconds (Prometheus duration syntax, one unit): alert rules and pipeline specs."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
