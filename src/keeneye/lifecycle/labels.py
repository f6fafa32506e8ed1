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

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, TypeGuard
from xml.sax.saxutils import quoteattr

from sqlalchemy import Select, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keeneye.domain import BoolArray, Decision, InvalidInput, NotFound, ObservationStatus, Task, Variant
from keeneye.store.db import Feedback, Observation, Prediction, ResultsDB, ReviewItem, utcnow
from keeneye.training import Problem, load_coco
from keeneye.training.datasets import decode_rle, mask_to_polygons

if TYPE_CHECKING:
    from keeneye.models import ModelManifest
    from keeneye.monitoring.quality import ManifestLookup
    from keeneye.pipelines import PipelineCatalog, PipelineSpec
    from keeneye.settings import Settings
    from keeneye.store import ObjectStore
    from keeneye.training import Annotation, Dataset, DatasetImage

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Review reasons
# --------------------------------------------------------------------------------------------------

REASONS = ("low_confidence", "drift", "disagreement", "audit")
DEFAULT_MIN_CONFIDENCE = 0.6
DEFAULT_MIN_MARGIN = 0.1
DEFAULT_DECISION_BAND = 0.1
DEFAULT_AUDIT_SHARE = 0.02
DEFAULT_DECISION_THRESHOLD = 0.5
AUDIT_PRIORITY = 0.0  # audit items come after every uncertain one; they are a sample, not a worry

ReviewReason = tuple[str, float, dict[str, Any]]


def audit_draw(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: the same observation is in the audit sample everywhere."""
    digest = hashlib.sha256(f"keeneye-audit:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def decision_threshold(spec: PipelineSpec) -> float:
    """The instance score at which an OK/DEFECT pipeline says DEFECT (the spec's, else 0.5)."""
    th = spec.thresholds
    if th.defect_score is not None:
        return th.defect_score
    return th.score if th.score is not None else DEFAULT_DECISION_THRESHOLD


def review_reasons(
    spec: PipelineSpec,
    result: Mapping[str, Any] | None,
    *,
    audit_share: float = DEFAULT_AUDIT_SHARE,
    rng_key: str,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    min_margin: float = DEFAULT_MIN_MARGIN,
    decision_band: float = DEFAULT_DECISION_BAND,
) -> list[ReviewReason]:
    """Why a person should look at this answer: ``[(reason, priority, details)]``, possibly empty.

    ``result`` is the champion's stored answer (:func:`keeneye.pipelines.format_result`). Priority is
    the model's uncertainty in [0, 1] (higher = reviewed first):

    * classify: ``low_confidence`` when the top-1 probability is below ``min_confidence`` (priority
      ``1 − confidence``) or the top-1/top-2 margin is below ``min_margin`` (priority ``1 − margin``);
    * OK/DEFECT pipelines: ``low_confidence`` when the highest instance score lies within
      ``decision_band`` of the decision threshold (priority ``1 − distance / band``);
    * other segmentation/detection: ``low_confidence`` when an instance scores below ``min_confidence``;
    * every task: ``audit`` for the share ``audit_share`` of observations chosen by a hash of
      ``rng_key`` (the observation id), priority 0.
    """
    if not 0 <= audit_share <= 1:
        raise ValueError(f"audit_share must be within [0, 1], got {audit_share}")
    out: list[ReviewReason] = []
    if result:
        uncertain = _uncertainty(spec, result, min_confidence, min_margin, decision_band)
        if uncertain is not None:
            out.append(("low_confidence", *uncertain))
    if audit_share > 0 and audit_draw(rng_key) < audit_share:
        out.append(("audit", AUDIT_PRIORITY, {"share": audit_share}))
    return out


def _uncertainty(
    spec: PipelineSpec, result: Mapping[str, Any], min_confidence: float, min_margin: float, band: float
) -> tuple[float, dict[str, Any]] | None:
    if result.get("task") == Task.classify.value or "top_3_predictions" in result:
        return _classify_uncertainty(result, min_confidence, min_margin)
    scores = [float(i["score"]) for i in result.get("instances") or [] if _is_number(i.get("score"))]
    if spec.decision.kind == "ok-defect":
        threshold = decision_threshold(spec)
        top = max(scores, default=None)
        if top is None or abs(top - threshold) >= band:
            return None
        distance = abs(top - threshold)
        details = {"score": top, "threshold": threshold, "band": band, "decision": result.get("decision")}
        return round(1.0 - distance / band, 6), details
    low = [s for s in scores if s < min_confidence]
    if not low:
        return None
    return round(1.0 - min(low), 6), {"min_score": min(low), "threshold": min_confidence, "n_low": len(low)}


def _classify_uncertainty(
    result: Mapping[str, Any], min_confidence: float, min_margin: float
) -> tuple[float, dict[str, Any]] | None:
    top = [float(p["probability"]) for p in result.get("top_3_predictions") or []]
    confidence = float(result["confidence"]) if _is_number(result.get("confidence")) else (top or [1.0])[0]
    margin = top[0] - top[1] if len(top) >= 2 else None
    priorities: list[float] = []
    details: dict[str, Any] = {"confidence": confidence}
    if confidence < min_confidence:
        priorities.append(1.0 - confidence)
        details["threshold"] = min_confidence
    if margin is not None:
        details["margin"] = round(margin, 6)
        if margin < min_margin:
            priorities.append(1.0 - margin)
            details["min_margin"] = min_margin
    if not priorities:
        return None
    return round(max(priorities), 6), details


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def enqueue(db: ResultsDB, observation_id: str, pipeline: str, items: Iterable[ReviewReason]) -> int:
    """Put an observation in the review queue for each reason; returns how many items are new.

    Idempotent: (observation, reason) is unique, a repeated reason is ignored (``ON CONFLICT DO
    NOTHING`` on SQLite and PostgreSQL). An observation that already has feedback is not queued again —
    a person answered it. Raises :class:`NotFound` for an unknown observation.
    """
    now = utcnow()
    rows = [
        {
            "observation_id": observation_id,
            "pipeline": pipeline,
            "reason": str(reason),
            "priority": float(priority),
            "details": dict(details),
            "created_at": now,
            "resolved_at": None,
        }
        for reason, priority, details in items
    ]
    if not rows:
        return 0
    stmt = _insert_items(db, rows)
    answered = select(Feedback.id).where(Feedback.observation_id == observation_id).limit(1)
    try:
        with db.session() as s:
            if s.execute(answered).first() is not None:
                return 0
            return len(s.execute(stmt).all())
    except IntegrityError as exc:  # the foreign key: no such observation
        raise NotFound(f"observation {observation_id} does not exist") from exc


def queue_answers(
    db: ResultsDB,
    spec: PipelineSpec,
    answers: Iterable[tuple[str, Mapping[str, Any] | None]],
    *,
    audit_share: float = DEFAULT_AUDIT_SHARE,
) -> int:
    """:func:`review_reasons` for freshly stored answers ``(observation id, result)`` and one
    ``INSERT … ON CONFLICT DO NOTHING`` for all their items; returns how many were queued.

    What the API and the stream workers call right after storing predictions. It never raises: the
    queue helps people choose what to label, and an answer already stored must not fail because of it
    (a failure is logged). Fresh answers have no feedback yet, so unlike :func:`enqueue` it does not
    look for any.
    """
    now = utcnow()
    rows = [
        {
            "observation_id": obs_id,
            "pipeline": spec.name,
            "reason": reason,
            "priority": priority,
            "details": details,
            "created_at": now,
            "resolved_at": None,
        }
        for obs_id, result in answers
        for reason, priority, details in review_reasons(spec, result, audit_share=audit_share, rng_key=obs_id)
    ]
    if not rows:
        return 0
    try:
        with db.session() as s:
            # Chunks stay below SQLite's limit of bound parameters per statement.
            return sum(
                len(s.execute(_insert_items(db, rows[i : i + 500])).all()) for i in range(0, len(rows), 500)
            )
    except Exception:  # never fail an answer because of the review queue
        log.warning("could not queue %d answer(s) of %s for review", len(rows), spec.name, exc_info=True)
        return 0


def _insert_items(db: ResultsDB, rows: list[dict[str, Any]]) -> Any:
    dialect = sqlite_dialect if db.backend == "sqlite" else postgresql
    return (
        dialect.insert(ReviewItem)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["observation_id", "reason"])
        .returning(ReviewItem.id)
    )


# --------------------------------------------------------------------------------------------------
# The queue
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewEntry:
    """One observation in the review queue, with every reason it is there and the champion's answer."""

    observation_id: str
    pipeline: str
    priority: float
    reasons: tuple[str, ...]
    details: dict[str, Any]  # reason → details
    queued_at: datetime | None  # first reason; None for an answer listed without a queue item
    resolved_at: datetime | None  # None while any of its items is open
    object_key: str | None
    content_type: str
    content_hash: str
    observed_at: datetime
    prediction: dict[str, Any] | None  # the champion's result
    model_version: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "observation_id": self.observation_id,
            "pipeline": self.pipeline,
            "priority": self.priority,
            "reasons": list(self.reasons),
            "details": self.details,
            "queued_at": self.queued_at.isoformat() if self.queued_at else None,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "object_key": self.object_key,
            "content_type": self.content_type,
            "content_hash": self.content_hash,
            "observed_at": self.observed_at.isoformat(),
            "model_version": self.model_version,
            "prediction": self.prediction,
            "metadata": self.metadata,
        }


def review_queue(
    db: ResultsDB, pipeline: str, *, limit: int = 50, include_resolved: bool = False
) -> list[ReviewEntry]:
    """The pipeline's open review queue, highest priority first (oldest first on ties), one entry per
    observation (its reasons merged), each with the champion's latest answer and the image key.
    ``include_resolved`` appends the most recently answered ones after the open items.

    Reads pages of the ``(pipeline, resolved_at, priority)`` index until ``limit`` observations are
    found, so a long queue or a long history costs no more than the page it shows.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    grouped: dict[str, list[ReviewItem]] = {}
    base = select(ReviewItem).where(ReviewItem.pipeline == pipeline)
    phases = [
        base.where(ReviewItem.resolved_at.is_(None)).order_by(ReviewItem.priority.desc(), ReviewItem.id)
    ]
    if include_resolved:
        resolved = base.where(ReviewItem.resolved_at.is_not(None))
        phases.append(resolved.order_by(ReviewItem.resolved_at.desc(), ReviewItem.id.desc()))
    with db.session() as s:
        for stmt in phases:
            _collect(s, stmt, grouped, limit)
        # Reasons of the listed observations that sorted below the page (a low-priority audit item).
        if grouped:
            seen = {r.id for rows in grouped.values() for r in rows}
            extra = select(ReviewItem).where(ReviewItem.observation_id.in_(list(grouped)))
            for row in s.scalars(extra):
                if row.id not in seen and (include_resolved or row.resolved_at is None):
                    grouped[row.observation_id].append(row)
        return _entries(s, grouped, list(grouped))


def _collect(s: Session, stmt: Select[ReviewItem], grouped: dict[str, list[ReviewItem]], limit: int) -> None:
    """Add rows of ``stmt`` page by page until ``grouped`` holds ``limit`` observations."""
    page = limit * len(REASONS)  # an observation has at most one item per reason
    offset = 0
    while len(grouped) < limit:
        rows = list(s.scalars(stmt.offset(offset).limit(page)))
        for row in rows:
            if row.observation_id in grouped or len(grouped) < limit:
                grouped.setdefault(row.observation_id, []).append(row)
        if len(rows) < page:
            return
        offset += page


def latest_answers(db: ResultsDB, pipeline: str, *, limit: int = 50) -> list[ReviewEntry]:
    """The newest finished observations of a pipeline (queued or not), newest first."""
    stmt = (
        select(Observation.id)
        .where(Observation.pipeline == pipeline, Observation.status == ObservationStatus.done.value)
        .order_by(Observation.updated_at.desc(), Observation.id)
        .limit(limit)
    )
    with db.session() as s:
        ids = list(s.scalars(stmt))
        grouped: dict[str, list[ReviewItem]] = {i: [] for i in ids}
        if ids:
            for row in s.scalars(select(ReviewItem).where(ReviewItem.observation_id.in_(ids))):
                grouped[row.observation_id].append(row)
        return _entries(s, grouped, ids)


def _entries(s: Session, grouped: Mapping[str, list[ReviewItem]], order: Sequence[str]) -> list[ReviewEntry]:
    if not order:
        return []
    observations = {o.id: o for o in s.scalars(select(Observation).where(Observation.id.in_(list(order))))}
    champion: dict[str, Prediction] = {}
    preds = select(Prediction).where(
        Prediction.observation_id.in_(list(order)), Prediction.variant == Variant.champion.value
    )
    for p in s.scalars(preds.order_by(Prediction.id)):
        champion[p.observation_id] = p  # the latest wins
    out: list[ReviewEntry] = []
    for obs_id in order:
        obs = observations.get(obs_id)
        if obs is None:
            continue
        items = grouped.get(obs_id, [])
        pred = champion.get(obs_id)
        open_items = [i for i in items if i.resolved_at is None]
        resolved = [i.resolved_at for i in items if i.resolved_at is not None]
        out.append(
            ReviewEntry(
                observation_id=obs_id,
                pipeline=obs.pipeline,
                priority=max((i.priority for i in items), default=0.0),
                reasons=tuple(sorted({i.reason for i in items}, key=_reason_order)),
                details={i.reason: i.details for i in items},
                queued_at=min((i.created_at for i in items), default=None),
                resolved_at=max(resolved) if resolved and not open_items else None,
                object_key=obs.object_key,
                content_type=obs.content_type,
                content_hash=obs.content_hash,
                observed_at=obs.created_at,
                prediction=dict(pred.result) if pred is not None else None,
                model_version=pred.model_version if pred is not None else None,
                metadata=dict(obs.metadata_ or {}),
            )
        )
    return out


def _reason_order(reason: str) -> tuple[int, str]:
    return (REASONS.index(reason) if reason in REASONS else len(REASONS), reason)


# --------------------------------------------------------------------------------------------------
# What a label may say: the model's classes, and whether the pipeline decides OK / DEFECT
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelClass:
    name: str
    label: str  # the human name


@dataclass(frozen=True)
class LabelSchema:
    """The classes a label may use (the served model's, background excluded) and the label's shape."""

    pipeline: str
    task: Task
    classes: tuple[LabelClass, ...]
    decision: bool = False  # an OK/DEFECT pipeline: labels carry a decision
    model_version: str | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def category_id(self, name: str) -> int:
        """COCO category id of a class: its position + 1 (COCO ids start at 1)."""
        return self.names.index(name) + 1

    @classmethod
    def from_manifest(
        cls, spec: PipelineSpec, manifest: ModelManifest, *, model_version: str | None = None
    ) -> LabelSchema:
        classes = tuple(
            LabelClass(c.name, c.display) for c in manifest.classes if c.id != manifest.background_class
        )
        return cls(
            pipeline=spec.name,
            task=manifest.task,
            classes=classes,
            decision=spec.decision.kind == "ok-defect",
            model_version=model_version,
        )


def load_label_schema(settings: Settings, spec: PipelineSpec) -> LabelSchema:
    """The schema of the model that serves ``spec`` (its alias in the registry); downloads the bundle
    once into the local model cache. Raises :class:`NotFound` when no model has that alias."""
    from keeneye.registry import ModelRegistry

    registry = ModelRegistry(settings)
    info = registry.resolve(spec.model_name, spec.model.alias)
    if info is None:
        raise NotFound(
            f"pipeline {spec.name!r} has no model with alias {spec.model.alias!r}, "
            "so the classes a label may use are unknown",
            fix=f"register one: keeneye models register --pipeline {spec.name} --alias {spec.model.alias} …",
        )
    bundle = registry.download(spec.model_name, info.version)
    return LabelSchema.from_manifest(spec, bundle.manifest, model_version=str(info.version))


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------

ExportFormat = Literal["coco", "label-studio"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("coco", "label-studio")
COCO_FILE = "annotations.json"
LABEL_STUDIO_FILE = "tasks.json"
LABEL_STUDIO_CONFIG = "label_config.xml"
IMAGES_DIR = "images"
OBSERVATION_FIELD = "keeneye_observation_id"
# Label Studio control names in label_config.xml; predictions and imports use the same ones.
LS_IMAGE, LS_CLASS, LS_DECISION, LS_POLYGON, LS_BOX = "image", "class", "decision", "label", "box"
PIXEL_CENTRE = 0.5  # model polygons trace pixel centres; COCO polygons pixel edges
_SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "image/tiff": ".tif"}
_HASH_NAME = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ExportReport:
    out_dir: Path
    format: ExportFormat
    files: list[Path]  # the annotation files written
    n_images: int = 0
    n_annotations: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (observation id, why)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "format": self.format,
            "files": [str(f) for f in self.files],
            "images": self.n_images,
            "annotations": self.n_annotations,
            "skipped": [{"observation_id": o, "why": w} for o, w in self.skipped],
        }


ProgressFn = Callable[[int, int], None]


def export_labels(
    db: ResultsDB,
    objects: ObjectStore,
    pipeline: str,
    out_dir: str | Path,
    *,
    schema: LabelSchema,
    fmt: ExportFormat = "coco",
    limit: int = 500,
    only_queue: bool = True,
    image_root: str = IMAGES_DIR + "/",
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write images and the model's answers as pre-annotations into ``out_dir``.

    ``only_queue``: the open review queue, most urgent first; otherwise the newest answers. Images go
    to ``out_dir/images/<content hash>.<ext>`` (the same bytes once, however often they were sent);
    ``coco`` writes ``annotations.json``, ``label-studio`` writes ``tasks.json`` (``data.image`` =
    ``image_root`` + file name) and the matching ``label_config.xml``. The order is the queue's, so
    the same database state exports the same files. Observations without a stored image or a
    champion answer are skipped and listed in the report.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(
            "bad_format", f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(EXPORT_FORMATS)}"
        )
    entries = (
        review_queue(db, pipeline, limit=limit) if only_queue else latest_answers(db, pipeline, limit=limit)
    )
    out = Path(out_dir)
    images_dir = out / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir=out, format=fmt, files=[])
    records: list[_ExportRecord] = []
    for done, entry in enumerate(entries, start=1):
        record = _export_image(objects, entry, images_dir, {r.file_name for r in records})
        if isinstance(record, str):
            report.skipped.append((entry.observation_id, record))
        else:
            records.append(record)
        if progress is not None:
            progress(done, len(entries))
    if fmt == "coco":
        doc = _coco_document(schema, records)
        report.n_annotations = len(doc["annotations"])
        report.files.append(_write_json(out / COCO_FILE, doc))
    else:
        tasks = [_label_studio_task(schema, r, image_root) for r in records]
        report.n_annotations = sum(len(t["predictions"][0]["result"]) for t in tasks if t["predictions"])
        report.files.append(_write_json(out / LABEL_STUDIO_FILE, tasks))
        config = out / LABEL_STUDIO_CONFIG
        config.write_text(label_studio_config(schema), encoding="utf-8")
        report.files.append(config)
    report.n_images = len(records)
    return report


@dataclass(frozen=True)
class _ExportRecord:
    entry: ReviewEntry
    file_name: str
    width: int
    height: int

    @property
    def result(self) -> dict[str, Any]:
        assert self.entry.prediction is not None  # _export_image refused the others
        return self.entry.prediction


def _export_image(
    objects: ObjectStore, entry: ReviewEntry, images_dir: Path, written: set[str]
) -> _ExportRecord | str:
    """Copy one observation's image into ``images_dir``; the record to annotate, or why not."""
    if entry.object_key is None:
        return "the image was not stored with the observation"
    if entry.prediction is None:
        return "no champion answer yet"
    file_name = _file_name(entry)
    if file_name in written:
        return f"same image bytes as an earlier item ({file_name})"
    target = images_dir / file_name
    missing = _copy_image(objects, entry.object_key, target)
    if missing is not None:
        return missing
    width, height = _image_size(entry, target)
    if not (width and height):
        target.unlink(missing_ok=True)
        return "the image size is unknown (the stored file cannot be read)"
    return _ExportRecord(entry, file_name, width, height)


def _file_name(entry: ReviewEntry) -> str:
    suffix = PurePosixPath(entry.object_key or "").suffix or _SUFFIXES.get(entry.content_type, ".bin")
    return f"{entry.content_hash}{suffix}"


def _copy_image(objects: ObjectStore, key: str, target: Path) -> str | None:
    """Stream the object into ``target`` (whole or not at all); why not, when it is gone."""
    tmp = target.with_name(target.name + ".part")
    try:
        with tmp.open("wb") as fh:
            for chunk in objects.stream(key):
                fh.write(chunk)
    except NotFound:
        tmp.unlink(missing_ok=True)
        return f"image {key} is no longer in the object store (retention?)"
    tmp.replace(target)
    return None


def _image_size(entry: ReviewEntry, path: Path) -> tuple[int, int]:
    image = (entry.prediction or {}).get("image") or {}
    w, h = image.get("width"), image.get("height")
    if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
        return w, h
    try:  # an answer without image facts (a fail-safe one): read the file's header
        from PIL import Image

        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception:  # any unreadable file means "size unknown"
        return 0, 0


def _write_json(path: Path, doc: Any) -> Path:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _coco_document(schema: LabelSchema, records: Sequence[_ExportRecord]) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, r in enumerate(records, start=1):
        image: dict[str, Any] = {
            "id": image_id,
            "file_name": r.file_name,
            "width": r.width,
            "height": r.height,
            OBSERVATION_FIELD: r.entry.observation_id,
            "keeneye_model_version": r.entry.model_version,
            "keeneye_reasons": list(r.entry.reasons),
        }
        if "decision" in r.result:
            image["keeneye_decision"] = r.result["decision"]
        images.append(image)
        for ann in _coco_annotations(schema, r):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    versions = sorted({r.entry.model_version for r in records if r.entry.model_version})
    return {
        "info": {
            "description": f"keeneye {schema.pipeline}: the model's answers as pre-annotations",
            "version": ",".join(versions),
            "keeneye": {"pipeline": schema.pipeline, "task": schema.task.value, "model_versions": versions},
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": schema.category_id(c.name), "name": c.name, "supercategory": "", "label": c.label}
            for c in schema.classes
        ],
    }


def _coco_annotations(schema: LabelSchema, r: _ExportRecord) -> list[dict[str, Any]]:
    """Classification: one whole-image box of the top class (CVAT shows it as a rectangle whose label
    is the class; keeneye training reads it as the image's class). Instances: box, polygons, area."""
    result = r.result
    if schema.task is Task.classify:
        name = result.get("predicted_class")
        if name not in schema.names:
            return []
        return [
            {
                "category_id": schema.category_id(name),
                "bbox": [0.0, 0.0, float(r.width), float(r.height)],
                "area": float(r.width * r.height),
                "segmentation": [],
                "iscrowd": 0,
                "score": result.get("confidence"),
            }
        ]
    out = []
    for inst in result.get("instances") or []:
        if inst.get("class") not in schema.names:
            continue
        x1, y1, x2, y2 = (float(v) for v in inst["box"])
        out.append(
            {
                "category_id": schema.category_id(inst["class"]),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": float(inst.get("area_px", (x2 - x1) * (y2 - y1))),
                "segmentation": _model_polygon_to_coco(inst.get("polygon") or []),
                "iscrowd": 0,
                "score": inst.get("score"),
            }
        )
    return out


def _model_polygon_to_coco(points: Sequence[Sequence[float]]) -> list[list[float]]:
    if len(points) < 3:
        return []
    return [[round(float(v) + PIXEL_CENTRE, 2) for xy in points for v in xy[:2]]]


def _label_studio_task(schema: LabelSchema, r: _ExportRecord, image_root: str) -> dict[str, Any]:
    result = r.result
    items: list[dict[str, Any]] = []
    if schema.task is Task.classify:
        if result.get("predicted_class") in schema.names:
            items.append(_ls_choice(LS_CLASS, result["predicted_class"]))
    else:
        for ann in _coco_annotations(schema, r):
            items.append(_ls_region(schema, ann, r.width, r.height, f"k{len(items) + 1}"))
    if schema.decision and result.get("decision") in (Decision.ok.value, Decision.defect.value):
        items.append(_ls_choice(LS_DECISION, result["decision"]))
    score = result.get("confidence")
    return {
        "data": {
            LS_IMAGE: image_root + r.file_name,
            OBSERVATION_FIELD: r.entry.observation_id,
            "keeneye_reasons": list(r.entry.reasons),
        },
        "predictions": [
            {
                "model_version": str(r.entry.model_version or ""),
                "score": float(score) if _is_number(score) else 0.0,
                "result": items,
            }
        ],
    }


def _ls_choice(control: str, value: str) -> dict[str, Any]:
    return {"from_name": control, "to_name": LS_IMAGE, "type": "choices", "value": {"choices": [value]}}


def _ls_region(schema: LabelSchema, ann: Mapping[str, Any], w: int, h: int, rid: str) -> dict[str, Any]:
    name = schema.names[int(ann["category_id"]) - 1]
    base = {"id": rid, "to_name": LS_IMAGE, "original_width": w, "original_height": h, "image_rotation": 0}
    if ann["segmentation"]:
        flat = ann["segmentation"][0]
        points = [
            [round(flat[i] * 100 / w, 6), round(flat[i + 1] * 100 / h, 6)] for i in range(0, len(flat), 2)
        ]
        value: dict[str, Any] = {"points": points, "closed": True, "polygonlabels": [name]}
        return {
            **base,
            "from_name": LS_POLYGON,
            "type": "polygonlabels",
            "value": value,
            "score": ann["score"],
        }
    x, y, bw, bh = ann["bbox"]
    value = {
        "x": round(x * 100 / w, 6),
        "y": round(y * 100 / h, 6),
        "width": round(bw * 100 / w, 6),
        "height": round(bh * 100 / h, 6),
        "rotation": 0,
        "rectanglelabels": [name],
    }
    return {**base, "from_name": LS_BOX, "type": "rectanglelabels", "value": value, "score": ann["score"]}


def label_studio_config(schema: LabelSchema) -> str:
    """The Label Studio labelling interface whose control names the exported predictions use."""
    lines = ["<View>", f'  <Image name="{LS_IMAGE}" value="${LS_IMAGE}" zoom="true"/>']
    if schema.task is Task.classify:
        lines.append(f'  <Choices name="{LS_CLASS}" toName="{LS_IMAGE}" choice="single" showInLine="true">')
        lines += [
            f"    <Choice value={quoteattr(c.name)} hint={quoteattr(c.label)}/>" for c in schema.classes
        ]
        lines.append("  </Choices>")
    else:
        for tag, name in (("PolygonLabels", LS_POLYGON), ("RectangleLabels", LS_BOX)):
            lines.append(f'  <{tag} name="{name}" toName="{LS_IMAGE}">')
            lines += [
                f"    <Label value={quoteattr(c.name)} hint={quoteattr(c.label)}/>" for c in schema.classes
            ]
            lines.append(f"  </{tag}>")
    if schema.decision:
        lines.append(
            f'  <Choices name="{LS_DECISION}" toName="{LS_IMAGE}" choice="single" showInLine="true">'
        )
        lines += [f'    <Choice value="{d.value}"/>' for d in (Decision.ok, Decision.defect)]
        lines.append("  </Choices>")
    lines.append("</View>")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    source: Path
    n_images: int = 0
    written: int = 0  # feedback rows stored
    unchanged: int = 0  # the same label from the same source was stored before: not repeated
    not_labelled: list[str] = field(default_factory=list)  # Label Studio tasks nobody annotated
    skipped: list[str] = field(default_factory=list)  # files with errors left out (skip_invalid)
    problems: list[Problem] = field(default_factory=list)
    feedback_ids: list[int] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": str(self.source),
            "images": self.n_images,
            "written": self.written,
            "unchanged": self.unchanged,
            "not_labelled": self.not_labelled,
            "skipped": self.skipped,
            "errors": len(self.errors),
            "problems": [p.__dict__ for p in self.problems],
        }


@dataclass
class _Region:
    ref: str  # "annotation 7" / "region k3", for messages
    name: str | None  # None: no label or an unknown category id (reported)
    bbox: list[float] | None
    polygons: list[list[float]]


@dataclass
class _Candidate:
    """One labelled image from a COCO or Label Studio file, before it is checked."""

    file: str
    observation_ref: str | None  # keeneye_observation_id, when the file carries it
    classes: list[str] = field(default_factory=list)  # classification choices
    decision: str | None = None
    regions: list[_Region] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def import_labels(
    db: ResultsDB,
    pipeline: str,
    source_path: str | Path,
    *,
    catalog: PipelineCatalog,
    manifests: ManifestLookup,
    author: str | None,
    source: str = "import",
    skip_invalid: bool = False,
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Store the labels of a corrected COCO folder/file or Label Studio JSON export as feedback.

    Images map to observations by ``keeneye_observation_id``, else by a file name that is the image's
    content hash. Each label is checked exactly as ``POST /v1/observations/{id}/feedback`` checks it
    (:func:`keeneye.monitoring.quality.parse_feedback`: the answering model's classes, geometry inside
    the image), every image before anything is written; with errors nothing is written unless
    ``skip_invalid`` (then the valid images are, and the others are listed in ``skipped``). A label
    already stored for the observation from the same ``source`` is not stored twice.
    ``manifests`` finds the answering model's manifest (``registry_manifests(registry)``).
    """
    catalog.get(pipeline)  # NotFound with the known names
    path = Path(source_path).expanduser()
    report = ImportReport(source=path)
    candidates = _read_candidates(path, report)
    report.n_images = len(candidates)
    labels = _check_candidates(db, pipeline, candidates, catalog, manifests, source, report)
    if not report.ok and not skip_invalid:
        return report
    bad = {p.file for p in report.errors}
    report.skipped = sorted(bad)
    todo = [(obs, label, file) for obs, label, file in labels if file not in bad]
    for done, (obs_id, label, file) in enumerate(todo, start=1):
        if _already_stored(db, obs_id, label, source):
            report.unchanged += 1
        else:
            try:
                report.feedback_ids.append(db.add_feedback(obs_id, label, source, author))
                report.written += 1
            except NotFound:  # deleted between the check and the write
                report.problems.append(
                    _problem("unknown_observation", file, f"observation {obs_id} was deleted meanwhile", "")
                )
                report.skipped.append(file)
        if progress is not None:
            progress(done, len(todo))
    return report


def _read_candidates(path: Path, report: ImportReport) -> list[_Candidate]:
    if path.is_file() and path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(
                "bad_labels", f"{path} is not valid JSON ({exc})", fix="export the labels again"
            ) from exc
        if isinstance(doc, list):
            return _label_studio_candidates(doc, path, report)
    return _coco_candidates(load_coco(path))


def _coco_candidates(ds: Dataset) -> list[_Candidate]:
    names = {c.id: c.name for c in ds.categories}
    out = []
    for im in ds.images:
        ref = im.metadata.get(OBSERVATION_FIELD)
        cand = _Candidate(im.file_name, str(ref) if ref else None)
        for a in im.annotations:
            name = names.get(a.category_id)
            if name is None:
                cand.problems.append(
                    _problem(
                        "unknown_category",
                        im.file_name,
                        f"annotation {a.id} has category id {a.category_id}, which is not in categories",
                        "add the category or relabel the annotation",
                    )
                )
                continue
            cand.classes.append(name)
            x1, y1, x2, y2 = a.box
            bbox = [x1, y1, x2 - x1, y2 - y1]
            cand.regions.append(_Region(f"annotation {a.id}", name, bbox, _coco_polygons(im, a, cand)))
        out.append(cand)
    return out


def _coco_polygons(im: DatasetImage, a: Annotation, cand: _Candidate) -> list[list[float]]:
    seg: Any = a.segmentation
    if not seg:
        return []
    if isinstance(seg, dict):  # RLE (CVAT masks): back to polygons, the shape feedback stores
        try:
            mask = _decode_rle(seg, im)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            cand.problems.append(
                _problem(
                    "bad_geometry", im.file_name, f"annotation {a.id}: unreadable RLE mask ({exc})", _REDRAW
                )
            )
            return []
        return mask_to_polygons(mask) if mask.any() else []
    if isinstance(seg, list):
        return list(seg)  # checked with the label
    cand.problems.append(
        _problem(
            "bad_geometry",
            im.file_name,
            f"annotation {a.id}: segmentation is neither polygons nor RLE",
            _REDRAW,
        )
    )
    return []


MAX_MASK_PIXELS = 64 * 1024 * 1024  # an RLE claiming a bigger canvas is refused before decoding


def _decode_rle(rle: Mapping[str, Any], im: DatasetImage) -> BoolArray:
    """Decode an RLE whose size matches the image (a forged size could allocate gigabytes)."""
    h, w = (int(v) for v in rle["size"])
    if im.width and im.height and (w, h) != (im.width, im.height):
        raise ValueError(f"its size {w}×{h} is not the image's {im.width}×{im.height}")
    if h <= 0 or w <= 0 or h * w > MAX_MASK_PIXELS:
        raise ValueError(f"its size {w}×{h} is not a plausible image size")
    return decode_rle(rle)


def _label_studio_candidates(tasks: list[Any], path: Path, report: ImportReport) -> list[_Candidate]:
    out = []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise InvalidInput(
                "bad_labels",
                f"{path}: task {index} is not a Label Studio task (no 'data' object)",
                fix="export the project as 'JSON' from Label Studio",
            )
        data = task["data"]
        image = str(data.get(LS_IMAGE, f"task {task.get('id', index)}"))
        file = PurePosixPath(image.split("?d=")[-1]).name or image
        ref = data.get(OBSERVATION_FIELD)
        annotation = _latest_annotation(task)
        if annotation is None:
            report.not_labelled.append(file)
            continue
        cand = _Candidate(file, str(ref) if ref else None)
        for n, item in enumerate(annotation.get("result") or [], start=1):
            _add_ls_result(cand, item, n)
        out.append(cand)
    return out


def _latest_annotation(task: Mapping[str, Any]) -> Mapping[str, Any] | None:
    done = [
        a
        for a in task.get("annotations") or []
        if isinstance(a, dict) and not a.get("was_cancelled") and a.get("result") is not None
    ]
    return done[-1] if done else None


def _add_ls_result(cand: _Candidate, item: Any, n: int) -> None:
    if not isinstance(item, dict):
        return
    kind, control, value = item.get("type"), item.get("from_name"), item.get("value") or {}
    ref = f"region {item.get('id', n)}"
    if kind == "choices":
        chosen = [str(c) for c in value.get("choices") or []]
        if control == LS_DECISION:
            cand.decision = chosen[0] if chosen else None
        else:
            cand.classes += chosen
        return
    if kind not in ("polygonlabels", "rectanglelabels"):
        cand.problems.append(
            _problem(
                "unsupported_region",
                cand.file,
                f"{ref}: Label Studio {kind!r} regions are not supported",
                "use polygons, rectangles or choices (see label_config.xml)",
            )
        )
        return
    w, h = item.get("original_width"), item.get("original_height")
    if not (_is_number(w) and _is_number(h) and w > 0 and h > 0):
        cand.problems.append(
            _problem(
                "bad_geometry", cand.file, f"{ref}: no original_width/height", "export it from Label Studio"
            )
        )
        return
    labels = value.get(kind) or []
    name = str(labels[0]) if labels else None
    try:
        if kind == "polygonlabels":
            flat = [
                round(float(v) * s / 100, 2)
                for x, y in value.get("points") or []
                for v, s in ((x, w), (y, h))
            ]
            cand.regions.append(_Region(ref, name, None, [flat]))
        else:
            keys = (("x", w), ("y", h), ("width", w), ("height", h))
            bbox = [float(value[k]) * s / 100 for k, s in keys]
            if value.get("rotation"):
                raise ValueError("a rotated box cannot be stored; draw it unrotated")
            cand.regions.append(_Region(ref, name, bbox, []))
    except (KeyError, TypeError, ValueError) as exc:
        cand.problems.append(
            _problem("bad_geometry", cand.file, f"{ref}: unreadable {kind} ({exc})", _REDRAW)
        )


_REDRAW = "redraw the region in the labelling tool"
_INSTANCE_REF = re.compile(r"^instances\[(\d+)\]")


def _problem(code: str, file: str, message: str, fix: str | None) -> Problem:
    return Problem("error", code, file, message, fix or "")


def _check_candidates(
    db: ResultsDB,
    pipeline: str,
    candidates: Sequence[_Candidate],
    catalog: PipelineCatalog,
    manifests: ManifestLookup,
    source: str,
    report: ImportReport,
) -> list[tuple[str, dict[str, Any], str]]:
    """Map each candidate to its observation and validate its label; problems go into the report."""
    from keeneye.monitoring.quality import feedback_target, parse_feedback

    classify = catalog.get(pipeline).task is Task.classify
    mapped = _resolve_observations(db, pipeline, candidates)
    observations = db.get_observations(set(mapped.values()))
    labels: list[tuple[str, dict[str, Any], str]] = []
    claimed: dict[str, str] = {}
    for cand in candidates:
        obs_id = mapped.get(id(cand))
        problems = list(cand.problems)
        if obs_id is None or obs_id not in observations:
            problems.append(_unmapped(cand, pipeline))
        elif obs_id in claimed:
            problems.append(
                _problem(
                    "duplicate_observation",
                    cand.file,
                    f"observation {obs_id} is labelled by {claimed[obs_id]} as well",
                    "keep one of the two images",
                )
            )
        else:
            claimed[obs_id] = cand.file
        body = _feedback_body(cand, classify, problems)
        if not problems and obs_id is not None:
            try:
                target = feedback_target(db, catalog, observations[obs_id], manifests)
                parsed = parse_feedback(body, target, default_source=source)
                _check_decision(cand, parsed.label, problems)
            except InvalidInput as exc:
                if exc.status >= 500:  # the registry is down: no label can be checked
                    raise
                problems.append(_problem(exc.reason, cand.file, _region_message(cand, exc.message), exc.fix))
            else:
                if not problems:
                    labels.append((obs_id, parsed.label, cand.file))
        report.problems.extend(problems)
    return labels


def _feedback_body(cand: _Candidate, classify: bool, problems: list[Problem]) -> dict[str, Any]:
    """The feedback API's body for one image: a class, a decision, or the regions as instances."""
    if classify:
        names = sorted(set(cand.classes))
        if len(names) > 1:
            problems.append(
                _problem(
                    "several_classes",
                    cand.file,
                    f"the image has {len(names)} classes ({', '.join(names)}); classification takes one",
                    "keep one class per image",
                )
            )
            return {}
        if names:
            return {"class": names[0]}
        if cand.decision is not None:
            return {"decision": cand.decision}
        problems.append(_problem("no_label", cand.file, "the image has no class", "choose its class"))
        return {}
    if not cand.regions and cand.decision == Decision.defect.value:
        return {"decision": cand.decision}  # DEFECT without drawing where
    instances = []
    for r in cand.regions:
        item: dict[str, Any] = {"class": r.name}
        if r.bbox is not None:
            item["bbox"] = [round(float(v), 2) for v in r.bbox]
        if r.polygons:
            item["segmentation"] = r.polygons
        instances.append(item)
    return {"instances": instances}  # none drawn: nothing there (OK)


def _check_decision(cand: _Candidate, label: Mapping[str, Any], problems: list[Problem]) -> None:
    """A Label Studio decision that contradicts the drawn regions is a mistake, not a choice."""
    if cand.decision is None or "decision" not in label or label["decision"] == cand.decision:
        return
    problems.append(
        _problem(
            "conflicting_decision",
            cand.file,
            f"the decision says {cand.decision} but the drawn regions mean {label['decision']}",
            "remove the defect regions or choose DEFECT",
        )
    )


def _region_message(cand: _Candidate, message: str) -> str:
    """``instances[3]: …`` → ``annotation 12: …`` so the person finds the region in the file."""
    match = _INSTANCE_REF.match(message)
    if match is None or int(match.group(1)) >= len(cand.regions):
        return message
    return cand.regions[int(match.group(1))].ref + message[match.end() :]


def _unmapped(cand: _Candidate, pipeline: str) -> Problem:
    if cand.observation_ref:
        return _problem(
            "unknown_observation",
            cand.file,
            f"{OBSERVATION_FIELD} {cand.observation_ref!r} is not an observation of pipeline {pipeline!r}",
            "import into the pipeline it was exported from, or remove the image",
        )
    return _problem(
        "unknown_observation",
        cand.file,
        f"no {OBSERVATION_FIELD}, and the file name is not the content hash of an observation "
        f"of {pipeline!r}",
        f"keep the {OBSERVATION_FIELD} field or the file names `keeneye labels export` wrote",
    )


def _resolve_observations(db: ResultsDB, pipeline: str, candidates: Sequence[_Candidate]) -> dict[int, str]:
    """candidate (by ``id()``) → observation id, by the id the file carries or else by content hash."""
    refs = sorted({c.observation_ref for c in candidates if c.observation_ref})
    hashes = sorted({h for c in candidates if not c.observation_ref and (h := _hash_of(c.file)) is not None})
    known: set[str] = set()
    by_hash: dict[str, str] = {}
    with db.session() as s:
        for chunk in _chunks(refs):
            by_id = select(Observation.id).where(Observation.id.in_(chunk), Observation.pipeline == pipeline)
            known.update(s.scalars(by_id))
        for chunk in _chunks(hashes):
            # The newest observation with these bytes (ordered oldest first, so the last one wins).
            stmt = (
                select(Observation.content_hash, Observation.id)
                .where(Observation.content_hash.in_(chunk), Observation.pipeline == pipeline)
                .order_by(Observation.created_at, Observation.id)
            )
            for content_hash, obs_id in s.execute(stmt):
                by_hash[content_hash] = obs_id
    out: dict[int, str] = {}
    for c in candidates:
        if c.observation_ref:
            if c.observation_ref in known:
                out[id(c)] = c.observation_ref
        elif (h := _hash_of(c.file)) is not None and h in by_hash:
            out[id(c)] = by_hash[h]
    return out


def _hash_of(file: str) -> str | None:
    stem = PurePosixPath(file).stem.lower()
    return stem if _HASH_NAME.match(stem) else None


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _already_stored(db: ResultsDB, observation_id: str, label: Mapping[str, Any], source: str) -> bool:
    return any(f.source == source and f.label == label for f in db.feedback_for(observation_id))
