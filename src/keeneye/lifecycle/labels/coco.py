"""The COCO export: the model's answers as pre-annotations in ``annotations.json`` (CVAT, Label Studio,
keeneye training read it), written by the one :class:`~keeneye.training.CocoWriter`.

Classification answers become one whole-image box of the top class; instances their box, polygons
(moved from pixel centres to pixel edges by :data:`PIXEL_CENTRE`) and area, each with the model's
score. Every image carries its observation id, model version, review reasons and decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from keeneye.domain import JsonObject, Task
from keeneye.lifecycle.labels.queue import ReviewEntry
from keeneye.lifecycle.labels.schema import LabelSchema
from keeneye.training import CocoLayout, CocoWriter

COCO_FILE = "annotations.json"
OBSERVATION_FIELD = "keeneye_observation_id"
PIXEL_CENTRE = 0.5  # model polygons trace pixel centres; COCO polygons pixel edges
# Indented for the person who opens it; sections in the order exports have always had.
COCO_LAYOUT = CocoLayout(sections=("info", "licenses", "images", "annotations", "categories"), indent=1)


class CocoAnnotationJson(TypedDict):
    """One COCO annotation of an exported image, with the model's score."""

    category_id: int
    bbox: list[float]
    area: float
    segmentation: list[list[float]]
    iscrowd: int
    score: float | None


@dataclass(frozen=True)
class ExportRecord:
    """One exported image: the queue entry, its file name under ``images/`` and its size."""

    entry: ReviewEntry
    file_name: str
    width: int
    height: int

    @property
    def result(self) -> dict[str, Any]:
        assert self.entry.prediction is not None  # export refused the others
        return self.entry.prediction


def coco_document(schema: LabelSchema, records: Sequence[ExportRecord]) -> tuple[CocoWriter, JsonObject]:
    """The images and annotations of ``records`` in a :class:`CocoWriter`, and the document's ``info``."""
    writer = CocoWriter(
        [
            {"id": schema.category_id(c.name), "name": c.name, "supercategory": "", "label": c.label}
            for c in schema.classes
        ],
        layout=COCO_LAYOUT,
    )
    for r in records:
        fields: JsonObject = {
            OBSERVATION_FIELD: r.entry.observation_id,
            "keeneye_model_version": r.entry.model_version,
            "keeneye_reasons": list(r.entry.reasons),
        }
        if "decision" in r.result:
            fields["keeneye_decision"] = r.result["decision"]
        image_id = writer.add_image(r.file_name, r.width, r.height, **fields)
        for ann in coco_annotations(schema, r):
            writer.add_annotation(
                image_id,
                ann["category_id"],
                ann["bbox"],
                ann["area"],
                ann["segmentation"],
                iscrowd=ann["iscrowd"],
                score=ann["score"],
            )
    versions = sorted({r.entry.model_version for r in records if r.entry.model_version})
    info: JsonObject = {
        "description": f"keeneye {schema.pipeline}: the model's answers as pre-annotations",
        "version": ",".join(versions),
        "keeneye": {"pipeline": schema.pipeline, "task": schema.task.value, "model_versions": list(versions)},
    }
    return writer, info


def coco_annotations(schema: LabelSchema, r: ExportRecord) -> list[CocoAnnotationJson]:
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
    out: list[CocoAnnotationJson] = []
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
