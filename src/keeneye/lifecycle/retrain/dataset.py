"""Writing the retraining dataset: the champion's data, labelled observations and pseudo-labels in one
COCO folder ``out_dir`` (``annotations.json``, ``dataset.json``, the image files).

:func:`build_dataset` replaces ``out_dir``; it links the base images in (hard links where the file
system allows), fetches each labelled observation's image from the object store, adds confident
pseudo-labels (capped at :data:`PSEUDO_MAX_SHARE` of the dataset, marked train-only) and stamps every
image with :data:`TIME_KEY` (the time the split orders by) and :data:`SOURCE_KEY`. A label replaces a
base image with the same bytes; an image that cannot be used is counted, by reason, in
:attr:`BuiltDataset.skipped`. ``annotations.json`` is written by the one
:class:`~keeneye.training.CocoWriter`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final

from keeneye.domain import InvalidInput, JsonObject, NotFound, Task
from keeneye.lifecycle.retrain.annotations import (
    CocoAnnotation,
    finite_number,
    label_annotations,
    pseudo_label,
)
from keeneye.lifecycle.retrain.sources import (
    MAX_FEEDBACK,
    LabelledObservation,
    confident_answers,
    latest_labels,
)
from keeneye.pipelines import PipelineSpec
from keeneye.registry import ModelVersionInfo
from keeneye.store import ObjectStore, ResultsDB
from keeneye.training import ANNOTATIONS_FILE, DATASET_INFO_FILE, Category, CocoLayout, CocoWriter, Dataset

# keeneye.training.run / trainers import torch (the optional `train` extra): the scheduler and the API
# import this module without it, so those names are imported where a retraining run uses them.
if TYPE_CHECKING:
    from keeneye.training.trainers import ProgressCallback

TIME_KEY: Final = "keeneye_time"
SOURCE_KEY: Final = "keeneye_source"  # base | feedback | pseudo
OBSERVATION_KEY: Final = "keeneye_observation_id"
PSEUDO_MAX_SHARE: Final = 0.2
PSEUDO_SCAN_FACTOR: Final = 20  # predictions looked at per pseudo-label wanted
MAX_PSEUDO_SCAN: Final = 50_000
# The layout retraining datasets have always had (indented, ASCII, ``iscrowd`` before ``segmentation``).
COCO_LAYOUT: Final = CocoLayout(
    sections=("info", "images", "annotations", "categories"),
    annotation_keys=("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"),
    indent=1,
    ensure_ascii=True,
    final_newline=False,
)
_SUFFIXES: Final = {"image/jpeg": ".jpg", "image/png": ".png", "image/tiff": ".tif"}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if (n := finite_number(value)) is not None:
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


def jsonable(value: Any) -> Any:
    """Plain JSON: non-finite floats become None (PostgreSQL's JSONB refuses NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Path):
        return str(value)
    return value


class _DatasetFolder:
    """The folder being written: image files under ``root``, their annotations in a :class:`CocoWriter`.

    The base data set's categories keep their ids (the newest entry of a repeated name wins); a class
    only the labels know gets the next free id.
    """

    def __init__(self, root: Path, base: Dataset | None) -> None:
        self.root = root
        newest: dict[str, Category] = {}  # a repeated name: the newest entry wins
        for c in base.categories if base is not None else []:
            newest[c.name] = c
        categories = [
            {"id": c.id, "name": c.name, "supercategory": c.supercategory, **c.extra}  # extra has no id
            for c in sorted(newest.values(), key=lambda c: c.id)
        ]
        self.coco = CocoWriter(categories, layout=COCO_LAYOUT)

    def add(
        self,
        file_name: str,
        width: int,
        height: int,
        metadata: Mapping[str, Any],
        anns: Iterable[CocoAnnotation],
    ) -> None:
        coco = self.coco
        image_id = coco.add_image(file_name, width, height, metadata=jsonable(metadata))
        for a in anns:
            coco.add_annotation(
                image_id,
                coco.add_category(a.category),
                [round(v, 2) for v in a.bbox],
                round(a.area, 2),
                a.segmentation,
                iscrowd=a.iscrowd,
            )

    def write(self, info: Mapping[str, Any]) -> None:
        self.coco.write(self.root / ANNOTATIONS_FILE, {"description": "keeneye retraining dataset"})
        (self.root / DATASET_INFO_FILE).write_text(json.dumps(jsonable(info), indent=2), encoding="utf-8")


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

    def to_dict(self) -> JsonObject:
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
    writer = _DatasetFolder(out_dir, base)
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
    writer: _DatasetFolder,
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
    writer: _DatasetFolder,
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
    writer: _DatasetFolder,
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


__all__ = [
    "OBSERVATION_KEY",
    "PSEUDO_MAX_SHARE",
    "SOURCE_KEY",
    "TIME_KEY",
    "BuiltDataset",
    "build_dataset",
    "jsonable",
]
