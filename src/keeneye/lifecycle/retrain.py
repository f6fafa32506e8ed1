"""The retraining job: one queued run → a dataset → ``train_pipeline`` → the run's outcome.

:func:`run_retraining` executes a run that a trigger (or ``keeneye retrain``) requested:

1. **Dataset.** A new COCO folder ``<home>/datasets/<pipeline>/retrain-<run id>/`` holds

   * the champion's training data (the folder its registry tag ``keeneye.data_dir`` names, or the
     run's ``data_dir`` input), hard-linked where the file system allows, copied otherwise;
   * every labelled observation of the pipeline (the newest label per observation, at most
     ``max_feedback``), its image fetched from the object store and its label converted to COCO:
     ``{"class"}`` → one whole-image box, ``{"instances"}`` → boxes and polygons, an OK without
     instances → an image without annotations. A label that replaces a training image with the same
     bytes wins over it (people corrected it), and the feedback of an earlier retraining is not
     added twice;
   * with ``pseudo_labels``, observations nobody labelled whose champion answer was confident
     (classification top-1 ≥ 0.95; segmentation: every instance ≥ 0.95), marked ``"pseudo": true``
     and capped at 20 % of the dataset. Pseudo-labelled images only ever train (``split_dataset``
     keeps them out of validation and test), and a later retraining drops them and draws new ones.

   Every image carries ``keeneye_time``: the observation's arrival for feedback and pseudo-labels,
   and for the base data its own ``keeneye_time``, the spec's time key or ``captured_at``, else the
   champion's registration time.
2. **Split by time.** The spec's fractions and seed with strategy ``time`` on ``keeneye_time``: the
   test split holds the newest data, which is how the challenger and the champion will meet the
   future, and what both are compared on.
3. **Fine-tune.** Training starts from the champion's weights (the ``checkpoint.pt`` that
   ``train_pipeline`` keeps in its run folder) when they exist and fit the recipe's backbone; else
   from scratch, and the outcome says why.
4. **Train, gate, register** with :func:`~keeneye.training.run.train_pipeline` — the code of
   ``keeneye train`` — as actor ``keeneye-retrain`` with the run's cause as the reason.

The run finishes ``succeeded`` (registered, gates passed, alias ``challenger``), ``refused``
(registered without an alias: the gates said no) or ``failed`` (the error's one line), with the
outcome: version, gate result, challenger and champion metrics on the same test split, data version,
dataset sizes and timings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import and_, or_, select

from keeneye.domain import InvalidInput, KeeneyeError, NotFound, Task
from keeneye.lifecycle.runs import TrainingRunRecord, finish, start
from keeneye.store.db import Feedback, Observation, Prediction, ResultsDB

if TYPE_CHECKING:
    from keeneye.monitoring.metrics import Metrics
    from keeneye.pipelines import PipelineSpec, SplitsSection
    from keeneye.registry import ModelRegistry, ModelVersionInfo
    from keeneye.settings import Settings
    from keeneye.store import ObjectStore
    from keeneye.training import Dataset
    from keeneye.training.trainers import ProgressCallback

log = logging.getLogger(__name__)

ACTOR: Final = "keeneye-retrain"
TIME_KEY: Final = "keeneye_time"
SOURCE_KEY: Final = "keeneye_source"  # base | feedback | pseudo
OBSERVATION_KEY: Final = "keeneye_observation_id"
PSEUDO_MIN_CONFIDENCE: Final = 0.95
PSEUDO_MAX_SHARE: Final = 0.2
MAX_FEEDBACK: Final = 50_000  # labelled observations per run (the newest)
FEEDBACK_PAGE: Final = 500
ID_CHUNK: Final = 500  # ids per IN (...) query
PSEUDO_SCAN_FACTOR: Final = 20  # predictions looked at per pseudo-label wanted
MAX_PSEUDO_SCAN: Final = 50_000
PIXEL_CENTRE: Final = 0.5  # model polygons trace pixel centres; COCO polygons pixel edges
_SUFFIXES: Final = {"image/jpeg": ".jpg", "image/png": ".png", "image/tiff": ".tif"}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# Labels → COCO annotations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoAnnotation:
    """One annotation before it has ids: class name, ``[x, y, w, h]`` box, area, segmentation."""

    category: str
    bbox: tuple[float, float, float, float]
    area: float
    segmentation: Any = None  # COCO polygons or RLE; None = the box
    iscrowd: int = 0


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _polygon_box(polygons: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    xs = [float(v) for p in polygons for v in p[0::2]]
    ys = [float(v) for p in polygons for v in p[1::2]]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def _polygon_area(polygons: Sequence[Sequence[float]]) -> float:
    """Shoelace area of the polygons (COCO's ``area`` of a polygon annotation)."""
    total = 0.0
    for p in polygons:
        xs, ys = p[0::2], p[1::2]
        n = len(xs)
        total += abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2
    return total


def _instance(name: Any, bbox: Any, polygons: Any) -> CocoAnnotation | None:
    if not isinstance(name, str) or not name:
        return None
    polys = [
        [float(v) for v in p]
        for p in (polygons if isinstance(polygons, list) else [])
        if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_number(v) is not None for v in p)
    ]
    box = [_number(v) for v in bbox] if isinstance(bbox, list | tuple) and len(bbox) == 4 else None
    if polys:
        x, y, w, h = _polygon_box(polys)
        if box is not None and all(v is not None for v in box):
            x, y, w, h = (float(v) for v in box)  # type: ignore[arg-type]
        return CocoAnnotation(name, (x, y, w, h), _polygon_area(polys) or w * h, polys)
    if box is None or any(v is None for v in box):
        return None
    x, y, w, h = (float(v) for v in box)  # type: ignore[arg-type]
    return CocoAnnotation(name, (x, y, w, h), w * h, None) if w > 0 and h > 0 else None


def label_annotations(
    label: Mapping[str, Any], task: Task, width: int, height: int
) -> list[CocoAnnotation] | None:
    """A stored feedback label as COCO annotations; None when it cannot train this task.

    Classification: ``{"class"}`` → one whole-image box. Segmentation: ``{"instances"}`` → one
    annotation each (an empty list, or an OK decision without instances, is an image with nothing to
    find); a DEFECT decision without regions says nothing about *where*, so it cannot train a
    segmenter.
    """
    if task is Task.classify:
        name = label.get("class")
        if not isinstance(name, str) or not name:
            return None
        return [CocoAnnotation(name, (0.0, 0.0, float(width), float(height)), float(width * height))]
    items = label.get("instances")
    if items is None:
        return [] if label.get("decision") == "OK" else None
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        ann = (
            _instance(item.get("class"), item.get("bbox"), item.get("segmentation"))
            if isinstance(item, Mapping)
            else None
        )
        if ann is None:
            return None  # one unreadable region makes the whole label untrustworthy
        out.append(ann)
    return out


def pseudo_label(result: Mapping[str, Any], task: Task) -> dict[str, Any] | None:
    """A confident champion answer as a label in the feedback's shape; None when it is not confident.

    Classification: top-1 probability ≥ :data:`PSEUDO_MIN_CONFIDENCE` → ``{"class"}``. Segmentation:
    at least one instance and every instance scoring that high → ``{"instances"}`` with COCO boxes and
    polygons (one doubtful region and the image is skipped: its other regions may be incomplete).
    """
    if task is Task.classify:
        confidence = _number(result.get("confidence"))
        name = result.get("predicted_class")
        if confidence is None or confidence < PSEUDO_MIN_CONFIDENCE or not isinstance(name, str):
            return None
        return {"class": name}
    items = result.get("instances")
    if not isinstance(items, list) or not items:
        return None
    instances = []
    for item in items:
        score = _number(item.get("score")) if isinstance(item, Mapping) else None
        box = item.get("box") if isinstance(item, Mapping) else None
        if score is None or score < PSEUDO_MIN_CONFIDENCE or not isinstance(box, list) or len(box) != 4:
            return None
        x1, y1, x2, y2 = (float(v) for v in box)
        points = item.get("polygon") or []
        instances.append(
            {
                "class": item.get("class"),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "segmentation": (
                    [[round(float(v) + PIXEL_CENTRE, 2) for xy in points for v in xy[:2]]]
                    if len(points) >= 3
                    else []
                ),
            }
        )
    return {"instances": instances}


# --------------------------------------------------------------------------------------------------
# Reading labelled and confidently answered observations (bounded, indexed)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledObservation:
    """The newest label of one observation, with what is needed to fetch its image."""

    observation_id: str
    feedback_id: int
    label: dict[str, Any]
    source: str
    labelled_at: datetime
    object_key: str | None
    content_hash: str
    content_type: str
    observed_at: datetime
    metadata: dict[str, Any]


def _observations(db: ResultsDB, ids: Sequence[str]) -> dict[str, Observation]:
    out: dict[str, Observation] = {}
    with db.session() as s:
        for i in range(0, len(ids), ID_CHUNK):
            chunk = list(ids[i : i + ID_CHUNK])
            out.update({o.id: o for o in s.scalars(select(Observation).where(Observation.id.in_(chunk)))})
    return out


def latest_labels(db: ResultsDB, pipeline: str, *, limit: int = MAX_FEEDBACK) -> list[LabelledObservation]:
    """The newest label of each of the ``limit`` most recently labelled observations, oldest first.

    Keyset pages, newest first, on ``ix_feedback_pipeline_created_at``; at most ``2 × limit`` rows are
    read, so a pipeline with millions of corrections costs no more than its newest labels.
    """
    newest: dict[str, Any] = {}
    cursor: tuple[datetime, int] | None = None
    read = 0
    while len(newest) < limit and read < 2 * limit:
        stmt = (
            select(Feedback.id, Feedback.observation_id, Feedback.label, Feedback.source, Feedback.created_at)
            .where(Feedback.pipeline == pipeline)
            .order_by(Feedback.created_at.desc(), Feedback.id.desc())
            .limit(FEEDBACK_PAGE)
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
        for row in rows:
            if row.observation_id not in newest and isinstance(row.label, dict) and len(newest) < limit:
                newest[row.observation_id] = row
        read += len(rows)
        if len(rows) < FEEDBACK_PAGE:
            break
        cursor = (rows[-1].created_at, rows[-1].id)
    observations = _observations(db, list(newest))
    out = []
    for obs_id, row in newest.items():
        obs = observations.get(obs_id)
        if obs is None:
            continue
        out.append(
            LabelledObservation(
                observation_id=obs_id,
                feedback_id=int(row.id),
                label=dict(row.label),
                source=str(row.source),
                labelled_at=row.created_at,
                object_key=obs.object_key,
                content_hash=obs.content_hash,
                content_type=obs.content_type,
                observed_at=obs.created_at,
                metadata=dict(obs.metadata_ or {}),
            )
        )
    return sorted(out, key=lambda o: (o.observed_at, o.observation_id))


@dataclass(frozen=True)
class ConfidentAnswer:
    observation_id: str
    result: dict[str, Any]
    object_key: str | None
    content_hash: str
    content_type: str
    observed_at: datetime
    metadata: dict[str, Any]


def confident_answers(
    db: ResultsDB, spec: PipelineSpec, champion_version: str, *, scan: int
) -> list[ConfidentAnswer]:
    """The champion's answers with confidence ≥ :data:`PSEUDO_MIN_CONFIDENCE` among the pipeline's
    newest ``scan`` predictions (the ``(pipeline, created_at)`` index, then a LIMIT), newest first."""
    newest = (
        select(Prediction.id)
        .where(Prediction.pipeline == spec.name)
        .order_by(Prediction.created_at.desc())
        .limit(scan)
        .subquery()
    )
    stmt = (
        select(Prediction.observation_id, Prediction.result)
        .where(
            Prediction.id.in_(select(newest.c.id)),
            Prediction.model_name == spec.model_name,
            Prediction.model_version == champion_version,
            Prediction.variant == "champion",
            Prediction.confidence >= PSEUDO_MIN_CONFIDENCE,
        )
        .order_by(Prediction.created_at.desc())
    )
    with db.session() as s:
        rows = s.execute(stmt).all()
    observations = _observations(db, [r.observation_id for r in rows])
    out = []
    for row in rows:
        obs = observations.get(row.observation_id)
        if obs is not None and isinstance(row.result, dict):
            out.append(
                ConfidentAnswer(
                    row.observation_id,
                    dict(row.result),
                    obs.object_key,
                    obs.content_hash,
                    obs.content_type,
                    obs.created_at,
                    dict(obs.metadata_ or {}),
                )
            )
    return out


# --------------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------------


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if (n := _number(value)) is not None:
        return datetime.fromtimestamp(n, tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; (0, 0) when unreadable."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return int(page.imagewidth), int(page.imagelength)
        from PIL import Image

        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception:  # any unreadable file means "size unknown"; the image is skipped
        return 0, 0


def _place(source: Path, target: Path) -> None:
    """Hard-link (no copy of the bytes) where the file system allows, else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _fetch(objects: ObjectStore, key: str, target: Path) -> bool:
    """The object's bytes into ``target``; False when the store no longer has it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with tmp.open("wb") as fh:
            for chunk in objects.stream(key):
                fh.write(chunk)
    except NotFound:
        tmp.unlink(missing_ok=True)
        return False
    tmp.replace(target)
    return True


def _suffix(object_key: str | None, content_type: str) -> str:
    return PurePosixPath(object_key or "").suffix.lower() or _SUFFIXES.get(content_type, ".bin")


def _jsonable(value: Any) -> Any:
    """Plain JSON: non-finite floats become None (PostgreSQL's JSONB refuses NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Path):
        return str(value)
    return value


class _CocoWriter:
    """Accumulates images and annotations; :meth:`write` saves ``annotations.json``."""

    def __init__(self, root: Path, base: Dataset | None) -> None:
        self.root = root
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.categories: dict[str, dict[str, Any]] = {}
        for c in base.categories if base is not None else []:
            self.categories[c.name] = {
                "id": c.id,
                "name": c.name,
                "supercategory": c.supercategory,
                **c.extra,
            }

    def category_id(self, name: str) -> int:
        entry = self.categories.get(name)
        if entry is None:
            entry = {"id": max((c["id"] for c in self.categories.values()), default=0) + 1, "name": name}
            self.categories[name] = entry
        return int(entry["id"])

    def add(
        self,
        file_name: str,
        width: int,
        height: int,
        metadata: Mapping[str, Any],
        anns: Iterable[CocoAnnotation],
    ) -> None:
        image_id = len(self.images) + 1
        self.images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "metadata": _jsonable(metadata),
            }
        )
        for a in anns:
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.category_id(a.category),
                    "bbox": [round(v, 2) for v in a.bbox],
                    "area": round(a.area, 2),
                    "iscrowd": a.iscrowd,
                    "segmentation": a.segmentation if a.segmentation is not None else [],
                }
            )

    def write(self, info: Mapping[str, Any]) -> None:
        doc = {
            "info": {"description": "keeneye retraining dataset"},
            "images": self.images,
            "annotations": self.annotations,
            "categories": sorted(self.categories.values(), key=lambda c: int(c["id"])),
        }
        (self.root / "annotations.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        (self.root / "dataset.json").write_text(json.dumps(_jsonable(info), indent=2), encoding="utf-8")


@dataclass
class BuiltDataset:
    """The folder a retraining trains on, and how it was put together."""

    path: Path
    base_dir: Path | None
    base: int = 0
    feedback: int = 0
    pseudo: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return self.base + self.feedback + self.pseudo

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": str(self.path),
            "base_dir": str(self.base_dir) if self.base_dir else None,
            "images": self.images,
            "base": self.base,
            "feedback": self.feedback,
            "pseudo": self.pseudo,
            "skipped": dict(self.skipped),
        }


def _emit(
    progress: ProgressCallback | None, message: str, done: int | None = None, total: int | None = None
) -> None:
    if progress is not None:
        from keeneye.training.trainers import ProgressEvent

        progress(ProgressEvent("dataset", message, done=done, total=total))


def build_dataset(
    db: ResultsDB,
    objects: ObjectStore,
    spec: PipelineSpec,
    out_dir: Path,
    *,
    base_dir: Path | None,
    champion: ModelVersionInfo | None,
    pseudo_labels: bool = False,
    max_feedback: int = MAX_FEEDBACK,
    info: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> BuiltDataset:
    """Write the retraining dataset (see the module docstring) into ``out_dir`` (replaced)."""
    from keeneye.training.run import load_dataset

    task = Task.classify if spec.task is Task.classify else Task.segment
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a crashed attempt's leftovers
    out_dir.mkdir(parents=True)
    built = BuiltDataset(out_dir, base_dir)
    _emit(progress, "reading labelled observations")
    labelled = latest_labels(db, spec.name, limit=max_feedback)
    corrected = {o.content_hash for o in labelled}

    base = load_dataset(base_dir) if base_dir is not None else None
    writer = _CocoWriter(out_dir, base)
    base_hashes: set[str] = set()
    if base is not None:
        fallback_time = champion.created if champion is not None else _EPOCH
        base_hashes = _add_base(writer, base, spec, built, corrected, fallback_time, progress)
    taken = _add_feedback(writer, objects, task, labelled, built, progress)
    if pseudo_labels and champion is not None:
        _add_pseudo(
            db, objects, spec, task, champion, writer, built, exclude=taken | base_hashes, progress=progress
        )
    if built.images == 0:
        raise InvalidInput(
            "no_training_data",
            f"nothing to retrain {spec.name} on: no training data folder"
            + (f" ({base_dir} is empty)" if base_dir else "")
            + " and no usable labelled observations",
            fix="pass --data DIR, or label observations (keeneye labels export/import) first",
        )
    writer.write(
        {
            **(base.info if base is not None else {}),
            "task": "classify" if task is Task.classify else "segment",
            "keeneye": {**dict(info or {}), **built.to_dict()},
        }
    )
    return built


def _add_base(
    writer: _CocoWriter,
    base: Dataset,
    spec: PipelineSpec,
    built: BuiltDataset,
    corrected: set[str],
    fallback_time: datetime,
    progress: ProgressCallback | None,
) -> set[str]:
    """Link the base images in (minus old pseudo-labels and images people relabelled); their hashes."""
    from keeneye.training.run import PSEUDO_FIELD

    spec_key = spec.splits.group_by if spec.splits.strategy == "time" else None
    time_keys = [k for k in (TIME_KEY, spec_key, "captured_at") if k]
    names = {c.id: c.name for c in base.categories}
    hashes: set[str] = set()
    for k, im in enumerate(base.images, start=1):
        _emit(progress, "linking the champion's training data", k, len(base.images))
        if im.metadata.get(PSEUDO_FIELD) is True:
            built.skip("old_pseudo_label")  # pseudo-labels are drawn afresh from the current champion
            continue
        if not im.path.is_file():
            built.skip("base_file_missing")
            continue
        digest = im.sha256()
        if digest in corrected:
            built.skip("base_replaced_by_feedback")
            continue
        hashes.add(digest)
        _place(im.path, writer.root / im.file_name)
        when = next((t for key in time_keys if (t := _parse_time(im.metadata.get(key)))), fallback_time)
        metadata = {**im.metadata, TIME_KEY: _iso(when), SOURCE_KEY: im.metadata.get(SOURCE_KEY, "base")}
        anns = [
            CocoAnnotation(
                names.get(a.category_id, f"#{a.category_id}"),
                (a.box[0], a.box[1], a.box[2] - a.box[0], a.box[3] - a.box[1]),
                a.area,
                a.segmentation,
                a.iscrowd,
            )
            for a in im.annotations
        ]
        writer.add(im.file_name, im.width, im.height, metadata, anns)
        built.base += 1
    return hashes


def _add_feedback(
    writer: _CocoWriter,
    objects: ObjectStore,
    task: Task,
    labelled: Sequence[LabelledObservation],
    built: BuiltDataset,
    progress: ProgressCallback | None,
) -> set[str]:
    """Fetch each labelled observation's image and add it with its label; the hashes added."""
    from keeneye.training.run import PSEUDO_FIELD

    taken: set[str] = set()
    for k, obs in enumerate(reversed(labelled), start=1):  # the newest label wins for equal bytes
        _emit(progress, "exporting labelled observations", k, len(labelled))
        if obs.content_hash in taken:
            built.skip("duplicate_image")
            continue
        file_name = f"feedback/{obs.content_hash}{_suffix(obs.object_key, obs.content_type)}"
        size = _materialise(objects, obs.object_key, writer.root / file_name, built)
        if size is None:
            continue
        anns = label_annotations(obs.label, task, *size)
        if anns is None:
            built.skip("label_not_trainable")
            (writer.root / file_name).unlink()
            continue
        taken.add(obs.content_hash)
        metadata = {
            **obs.metadata,
            TIME_KEY: _iso(obs.observed_at),
            SOURCE_KEY: "feedback",
            OBSERVATION_KEY: obs.observation_id,
            "keeneye_feedback_id": obs.feedback_id,
            "label_source": obs.source,
            PSEUDO_FIELD: False,  # a client's metadata cannot make a person's label train-only
        }
        writer.add(file_name, *size, metadata, anns)
        built.feedback += 1
    return taken


def _materialise(
    objects: ObjectStore, key: str | None, target: Path, built: BuiltDataset
) -> tuple[int, int] | None:
    """Fetch one observation's image; its (width, height), or None (and why, in ``built``)."""
    if key is None:
        built.skip("image_not_stored")
        return None
    if not _fetch(objects, key, target):
        built.skip("image_gone")
        return None
    size = _image_size(target)
    if size[0] <= 0 or size[1] <= 0:
        built.skip("image_unreadable")
        target.unlink()
        return None
    return size


def _add_pseudo(
    db: ResultsDB,
    objects: ObjectStore,
    spec: PipelineSpec,
    task: Task,
    champion: ModelVersionInfo,
    writer: _CocoWriter,
    built: BuiltDataset,
    *,
    exclude: set[str],
    progress: ProgressCallback | None,
) -> None:
    from keeneye.training.run import PSEUDO_FIELD

    # p / (n + p) ≤ share  ⇔  p ≤ n · share / (1 − share)
    cap = math.floor(built.images * PSEUDO_MAX_SHARE / (1 - PSEUDO_MAX_SHARE) + 1e-9)
    if cap <= 0:
        return
    scan = min(MAX_PSEUDO_SCAN, cap * PSEUDO_SCAN_FACTOR)
    answers = confident_answers(db, spec, champion.version, scan=scan)
    for answer in answers:
        if built.pseudo >= cap:
            break
        _emit(progress, "adding confident pseudo-labels", built.pseudo, cap)
        if answer.content_hash in exclude:
            continue
        label = pseudo_label(answer.result, task)
        if label is None:
            continue
        file_name = f"pseudo/{answer.content_hash}{_suffix(answer.object_key, answer.content_type)}"
        size = _materialise(objects, answer.object_key, writer.root / file_name, built)
        if size is None:
            continue
        anns = label_annotations(label, task, *size)
        if anns is None:
            built.skip("pseudo_label_unusable")
            (writer.root / file_name).unlink()
            continue
        exclude.add(answer.content_hash)
        metadata = {
            **answer.metadata,
            TIME_KEY: _iso(answer.observed_at),
            SOURCE_KEY: "pseudo",
            OBSERVATION_KEY: answer.observation_id,
            "pseudo_model_version": champion.version,
            PSEUDO_FIELD: True,
        }
        writer.add(file_name, *size, metadata, anns)
        built.pseudo += 1


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def time_splits(spec: PipelineSpec) -> SplitsSection:
    """The spec's fractions and seed, split by :data:`TIME_KEY`: the newest images are the test."""
    from keeneye.pipelines import SplitsSection

    s = spec.splits
    return SplitsSection(
        strategy="time", group_by=TIME_KEY, train=s.train, val=s.val, test=s.test, seed=s.seed
    )


def base_data_dir(
    inputs: Mapping[str, Any], champion: ModelVersionInfo | None, notes: list[str]
) -> Path | None:
    """The run's ``data_dir`` input, else the champion's training folder when it is still there."""
    from keeneye.training.run import TAG_DATA_DIR

    given = inputs.get("data_dir")
    if given:
        path = Path(str(given)).expanduser()
        if not path.exists():
            raise InvalidInput(
                "bad_dataset", f"{path} does not exist", fix="point --data at a dataset folder"
            )
        return path
    if champion is None:
        notes.append("no champion: trained on the labelled observations only")
        return None
    tagged = champion.tags.get(TAG_DATA_DIR)
    if not tagged:
        notes.append(
            f"champion v{champion.version} records no training data folder: trained on the labelled "
            "observations only (pass --data to add its data)"
        )
        return None
    path = Path(tagged)
    if not path.exists():
        notes.append(
            f"champion v{champion.version}'s training data {path} is not on this machine: labels only"
        )
        return None
    return path


def start_weights(
    spec: PipelineSpec, champion: ModelVersionInfo | None, overrides: Mapping[str, Any], notes: list[str]
) -> tuple[Path | None, str | None]:
    """(checkpoint, champion version) to fine-tune from, or (None, None) with the reason in ``notes``."""
    from keeneye.training.run import CHECKPOINT_FILE, CHECKPOINT_INFO_FILE, TAG_RUN_DIR

    if overrides.get("weights"):
        return Path(str(overrides["weights"])), None
    if champion is None:
        notes.append("trained from scratch: there is no champion to start from")
        return None, None
    run_dir = champion.tags.get(TAG_RUN_DIR)
    checkpoint = Path(run_dir) / CHECKPOINT_FILE if run_dir else None
    if checkpoint is None or not checkpoint.is_file():
        notes.append(f"trained from scratch: champion v{champion.version} has no checkpoint on this machine")
        return None, None
    try:
        saved = json.loads((checkpoint.parent / CHECKPOINT_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    backbone = overrides.get("backbone") or spec.training.backbone
    task = "classify" if spec.task is Task.classify else "segment"
    if saved.get("backbone") != backbone or saved.get("task") != task:
        notes.append(
            f"trained from scratch: champion v{champion.version} is a {saved.get('backbone')} "
            f"{saved.get('task')} model, the recipe asks for a {backbone} {task} model"
        )
        return None, None
    return checkpoint, champion.version


def run_retraining(
    settings: Settings,
    run_id: int,
    *,
    progress: ProgressCallback | None = None,
    registry: ModelRegistry | None = None,
    db: ResultsDB | None = None,
    objects: ObjectStore | None = None,
    metrics: Metrics | None = None,
) -> TrainingRunRecord:
    """Execute the queued run ``run_id`` and return it finished (see the module docstring).

    Errors do not escape: the run finishes ``failed`` with the error's one line (the log has the
    traceback). A 409 ``InvalidInput`` is raised when the run is not queued (already taken).
    """
    from keeneye.store import open_object_store, open_results_db

    db = db or open_results_db(settings)
    run = start(db, run_id)
    started = time.perf_counter()
    try:
        outcome, status = _execute(
            settings,
            db,
            run,
            registry=registry,
            objects=objects or open_object_store(settings),
            progress=progress,
        )
    except KeeneyeError as exc:
        log.warning("training run %d of %s failed: %s", run.id, run.pipeline, exc.one_line())
        return _failed(db, run, exc.one_line(), started, metrics)
    except Exception as exc:
        log.exception("training run %d of %s failed", run.id, run.pipeline)
        return _failed(db, run, f"{type(exc).__name__}: {exc}", started, metrics)
    except BaseException:  # Ctrl-C, SystemExit: leave no run "running" behind
        _failed(db, run, "interrupted", started, metrics)
        raise
    outcome["timings_s"]["total"] = round(time.perf_counter() - started, 2)
    return finish(db, run.id, status, _jsonable(outcome), metrics=metrics)


def _failed(
    db: ResultsDB, run: TrainingRunRecord, error: str, started: float, metrics: Metrics | None
) -> TrainingRunRecord:
    outcome = {"timings_s": {"total": round(time.perf_counter() - started, 2)}}
    return finish(db, run.id, "failed", outcome, error[:4000], metrics=metrics)


def _execute(
    settings: Settings,
    db: ResultsDB,
    run: TrainingRunRecord,
    *,
    registry: ModelRegistry | None,
    objects: ObjectStore,
    progress: ProgressCallback | None,
) -> tuple[dict[str, Any], str]:
    from keeneye.pipelines import PipelineCatalog
    from keeneye.registry import CHAMPION, ModelRegistry
    from keeneye.training.run import train_pipeline

    spec = PipelineCatalog(settings).get(run.pipeline)
    reg = registry or ModelRegistry(settings, events=db)
    champion = reg.resolve(spec.model_name, CHAMPION)
    inputs = run.inputs
    notes: list[str] = []
    overrides = dict(inputs.get("overrides") or {})
    weights, fine_tuned_from = start_weights(spec, champion, overrides, notes)
    if weights is not None:
        overrides["weights"] = str(weights)
    began = time.perf_counter()
    built = build_dataset(
        db,
        objects,
        spec,
        settings.home / "datasets" / spec.name / f"retrain-{run.id}",
        base_dir=base_data_dir(inputs, champion, notes),
        champion=champion,
        pseudo_labels=bool(inputs.get("pseudo_labels")),
        max_feedback=int(inputs.get("max_feedback") or MAX_FEEDBACK),
        info={
            "run_id": run.id,
            "cause": run.cause,
            "champion_version": champion.version if champion else None,
        },
        progress=progress,
    )
    dataset_seconds = time.perf_counter() - began
    result = train_pipeline(
        settings,
        spec.name,
        built.path,
        epochs=int(inputs["epochs"]) if inputs.get("epochs") else None,
        skip_invalid=True,  # an unreadable upload must not stop the whole retraining; it is reported
        progress=progress,
        overrides=overrides,
        registry=reg,
        actor=ACTOR,
        reason=f"{run.cause}: {run.reason}"[:1000],
        splits=time_splits(spec),
    )
    gates = result.gates
    outcome: dict[str, Any] = {
        "version": result.version,
        "alias": result.alias,
        "gates": {"passed": gates.passed, "reasons": gates.reasons, "notes": list(gates.notes)},
        "metrics": result.metrics,
        "champion": {"version": gates.champion_version, "metrics": result.champion_metrics},
        "data_version": result.data_version,
        "dataset": {**built.to_dict(), "skipped_invalid": list(result.validation.skipped)},
        "split_sizes": list(result.split_sizes),
        "fine_tuned_from": fine_tuned_from,
        "weights": str(weights) if weights is not None else None,
        "notes": notes,
        "run_dir": str(result.run_dir),
        "mlflow_run_id": result.run_id,
        "timings_s": {
            "dataset": round(dataset_seconds, 2),
            **{k: round(v, 2) for k, v in result.timings.items()},
        },
    }
    status = "succeeded" if gates.passed and result.version is not None else "refused"
    return outcome, status


def iter_outcome_lines(run: TrainingRunRecord) -> Iterator[str]:
    """A human summary of a finished run, one line each (the CLI prints these)."""
    o = run.outcome
    yield f"run {run.id} of {run.pipeline} ({run.cause}): {run.status}"
    if run.error:
        yield f"error: {run.error}"
    dataset = o.get("dataset") or {}
    if dataset:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted((dataset.get("skipped") or {}).items()))
        yield (
            f"dataset: {dataset.get('images')} images ({dataset.get('base')} base, {dataset.get('feedback')} "
            f"labelled, {dataset.get('pseudo')} pseudo-labelled)"
            + (f"; skipped {skipped}" if skipped else "")
        )
    if o.get("split_sizes"):
        yield "train/val/test (test = newest): " + "/".join(str(n) for n in o["split_sizes"])
    if o.get("metrics"):
        yield "challenger: " + ", ".join(
            f"{k}={v:.4f}" for k, v in o["metrics"].items() if isinstance(v, float)
        )
    champion = o.get("champion") or {}
    if champion.get("metrics"):
        yield f"champion v{champion['version']} on the same test split: " + ", ".join(
            f"{k}={v:.4f}" for k, v in champion["metrics"].items() if isinstance(v, float)
        )
    for note in o.get("notes") or []:
        yield f"note: {note}"
    gates = o.get("gates") or {}
    if gates:
        yield (
            "gates passed"
            if gates.get("passed")
            else "gates failed: " + "; ".join(gates.get("reasons") or [])
        )
    if o.get("version"):
        alias = f" with alias {o['alias']}" if o.get("alias") else " without an alias"
        yield f"registered v{o['version']}{alias}"


__all__ = [
    "ACTOR",
    "PSEUDO_MAX_SHARE",
    "PSEUDO_MIN_CONFIDENCE",
    "TIME_KEY",
    "BuiltDataset",
    "CocoAnnotation",
    "ConfidentAnswer",
    "LabelledObservation",
    "base_data_dir",
    "build_dataset",
    "confident_answers",
    "iter_outcome_lines",
    "label_annotations",
    "latest_labels",
    "pseudo_label",
    "run_retraining",
    "start_weights",
    "time_splits",
]
