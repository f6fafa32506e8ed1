"""Exporting for annotators: the queue's (or the newest) observations, their images copied once per
content hash into ``images/``, and the model's answers as pre-annotations in COCO
(:mod:`~keeneye.lifecycle.labels.coco`) or Label Studio (:mod:`~keeneye.lifecycle.labels.label_studio`)
form. The same database state exports the same files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from keeneye.domain import InvalidInput, JsonObject, NotFound
from keeneye.lifecycle.labels.coco import COCO_FILE, ExportRecord, coco_document
from keeneye.lifecycle.labels.label_studio import (
    LABEL_STUDIO_CONFIG,
    LABEL_STUDIO_FILE,
    label_studio_config,
    label_studio_task,
)
from keeneye.lifecycle.labels.queue import ReviewEntry, latest_answers, review_queue
from keeneye.lifecycle.labels.schema import LabelSchema
from keeneye.store import ObjectStore, ResultsDB

ExportFormat = Literal["coco", "label-studio"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("coco", "label-studio")
IMAGES_DIR = "images"
_SUFFIXES = {"image/jpeg": ".jpg", "image/png": ".png", "image/tiff": ".tif"}


@dataclass
class ExportReport:
    out_dir: Path
    format: ExportFormat
    files: list[Path]  # the annotation files written
    n_images: int = 0
    n_annotations: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (observation id, why)

    def to_dict(self) -> JsonObject:
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
    records: list[ExportRecord] = []
    for done, entry in enumerate(entries, start=1):
        record = _export_image(objects, entry, images_dir, {r.file_name for r in records})
        if isinstance(record, str):
            report.skipped.append((entry.observation_id, record))
        else:
            records.append(record)
        if progress is not None:
            progress(done, len(entries))
    if fmt == "coco":
        writer, info = coco_document(schema, records)
        report.n_annotations = len(writer.annotations)
        report.files.append(writer.write(out / COCO_FILE, info))
    else:
        tasks = [label_studio_task(schema, r, image_root) for r in records]
        report.n_annotations = sum(len(t["predictions"][0]["result"]) for t in tasks if t["predictions"])
        report.files.append(_write_json(out / LABEL_STUDIO_FILE, tasks))
        config = out / LABEL_STUDIO_CONFIG
        config.write_text(label_studio_config(schema), encoding="utf-8")
        report.files.append(config)
    report.n_images = len(records)
    return report


def _export_image(
    objects: ObjectStore, entry: ReviewEntry, images_dir: Path, written: set[str]
) -> ExportRecord | str:
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
    return ExportRecord(entry, file_name, width, height)


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
    image = (entry.prediction or {}).get("image")
    w, h = (image.get("width"), image.get("height")) if isinstance(image, dict) else (None, None)
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
