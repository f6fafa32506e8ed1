"""The one COCO writer: categories, images and annotations gathered in order, saved as one JSON file.

:mod:`keeneye.training.datasets` reads COCO; this module writes it, for every producer of a COCO file:
the synthetic generators (``training/synth``), the retraining dataset (``lifecycle/retrain``) and the
pre-annotations exported for annotators (``lifecycle/labels``).

Contract:

* image and annotation ids are 1-based and follow the order of :meth:`CocoWriter.add_image` and
  :meth:`CocoWriter.add_annotation`; categories keep the order they were given or added, and a new
  category gets the highest id so far + 1;
* an image is ``{"id", "file_name", "width", "height", **fields}``; an annotation holds ``id``,
  ``image_id``, ``category_id``, ``bbox`` (``[x, y, w, h]``), ``area``, ``segmentation`` (polygons or
  RLE; ``[]`` for a box) and ``iscrowd``, then any extra keys (``score``);
* the file is written whole or not at all (a ``.part`` file renamed over it), and the same calls give
  the same bytes: nothing of the run itself (clock, host) goes in.

How the file is laid out — the order of its sections and of an annotation's keys, indentation, ASCII
escapes — is a :class:`CocoLayout` chosen by each producer: compact for large synthetic sets, indented
where a person reads or edits the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from keeneye.domain import JsonObject, JsonValue

SECTIONS = ("info", "licenses", "categories", "images", "annotations")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "area", "segmentation", "iscrowd")


class CocoCategory(TypedDict):
    """A category as the synthetic generators declare it."""

    id: int
    name: str
    supercategory: NotRequired[str]
    label: NotRequired[str]  # a human name (species-id)
    novel: NotRequired[bool]  # a class the model never saw (drift "new-class")


@dataclass(frozen=True)
class CocoLayout:
    """How :meth:`CocoWriter.write` lays the document out (the content is the same in every layout)."""

    sections: tuple[str, ...] = SECTIONS  # top-level keys, in file order; a section left out is not written
    annotation_keys: tuple[str, ...] = ANNOTATION_KEYS  # an annotation's keys in order; extras follow
    indent: int | None = None
    ensure_ascii: bool = False
    final_newline: bool = True

    def dumps(self, doc: Any) -> str:
        text = json.dumps(doc, indent=self.indent, ensure_ascii=self.ensure_ascii)
        return text + "\n" if self.final_newline else text


class CocoWriter:
    """Accumulates COCO categories, images and annotations; :meth:`write` saves the document."""

    def __init__(
        self, categories: Iterable[Mapping[str, Any]] = (), *, layout: CocoLayout | None = None
    ) -> None:
        self.layout = layout or CocoLayout()
        self.categories: list[JsonObject] = []
        self.images: list[JsonObject] = []
        self.annotations: list[JsonObject] = []
        self._ids: dict[str, int] = {}  # name → id (the first category of a name)
        self._names: dict[int, str] = {}  # id → name (the last category of an id)
        self._image_categories: dict[int, set[int]] = {}  # image id → the category ids annotated on it
        for c in categories:
            self.categories.append(dict(c))
            self._ids.setdefault(str(c["name"]), int(c["id"]))
            self._names[int(c["id"])] = str(c["name"])

    def category_id(self, name: str) -> int:
        """The id of category ``name``; ``KeyError`` when there is none."""
        return self._ids[name]

    def add_category(self, name: str) -> int:
        """The id of category ``name``, added as ``{"id", "name"}`` with the next free id if it is new."""
        if name not in self._ids:
            new_id = max(self._names, default=0) + 1
            self.categories.append({"id": new_id, "name": name})
            self._ids[name] = new_id
            self._names[new_id] = name
        return self._ids[name]

    def add_image(self, file_name: str, width: int, height: int, **fields: Any) -> int:
        """Register an image (its bytes are the caller's business); returns its id."""
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height, **fields}
        )
        return image_id

    def add_annotation(
        self,
        image_id: int,
        category_id: int,
        bbox: Sequence[float],
        area: float,
        segmentation: Any = None,
        *,
        iscrowd: int = 0,
        **extra: Any,
    ) -> None:
        """One annotation of image ``image_id``; ``segmentation`` None = the box alone (``[]``)."""
        values: JsonObject = {
            "id": len(self.annotations) + 1,
            "image_id": image_id,
            "category_id": category_id,
            "bbox": list(bbox),
            "area": area,
            "segmentation": segmentation if segmentation is not None else [],
            "iscrowd": iscrowd,
        }
        annotation = {k: values[k] for k in self.layout.annotation_keys if k in values}
        annotation.update((k, v) for k, v in values.items() if k not in annotation)
        annotation.update(extra)
        self.annotations.append(annotation)
        self._image_categories.setdefault(image_id, set()).add(category_id)

    def class_counts(self) -> dict[str, int]:
        """Images per category name (an image with two instances of a class counts once)."""
        counts = dict.fromkeys(self._ids, 0)
        for cats in self._image_categories.values():
            for cid in cats:
                counts[self._names[cid]] += 1
        return counts

    def document(self, info: Mapping[str, Any]) -> JsonObject:
        """The COCO document, its sections in the layout's order."""
        sections: JsonObject = {
            "info": dict(info),
            "licenses": [],
            "categories": list[JsonValue](self.categories),
            "images": list[JsonValue](self.images),
            "annotations": list[JsonValue](self.annotations),
        }
        return {k: sections[k] for k in self.layout.sections}

    def write(self, path: Path, info: Mapping[str, Any]) -> Path:
        """Save the document to ``path`` atomically; returns ``path``."""
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.layout.dumps(self.document(info)), encoding="utf-8")
        tmp.replace(path)
        return path


__all__ = ["ANNOTATION_KEYS", "SECTIONS", "CocoCategory", "CocoLayout", "CocoWriter"]
