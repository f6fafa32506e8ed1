"""The Label Studio export: one task per image (``data.image`` = image root + file name) with the model's
answer as a prediction, and the ``label_config.xml`` whose control names those predictions — and the
import of corrected tasks — use.
"""

from __future__ import annotations

from typing import TypedDict
from xml.sax.saxutils import quoteattr

from keeneye.domain import Decision, JsonObject, JsonValue, Task
from keeneye.lifecycle.labels.coco import (
    OBSERVATION_FIELD,
    CocoAnnotationJson,
    ExportRecord,
    coco_annotations,
)
from keeneye.lifecycle.labels.queue import is_number
from keeneye.lifecycle.labels.schema import LabelSchema

LABEL_STUDIO_FILE = "tasks.json"
LABEL_STUDIO_CONFIG = "label_config.xml"
# Label Studio control names in label_config.xml; predictions and imports use the same ones.
LS_IMAGE, LS_CLASS, LS_DECISION, LS_POLYGON, LS_BOX = "image", "class", "decision", "label", "box"


class LabelStudioPredictionJson(TypedDict):
    """The model's answer to one task, as Label Studio pre-annotations."""

    model_version: str
    score: float
    result: list[JsonObject]


class LabelStudioTaskJson(TypedDict):
    """One Label Studio task: the image (and the observation it came from) and the model's answer."""

    data: JsonObject
    predictions: list[LabelStudioPredictionJson]


def label_studio_task(schema: LabelSchema, r: ExportRecord, image_root: str) -> LabelStudioTaskJson:
    result = r.result
    items: list[JsonObject] = []
    if schema.task is Task.classify:
        if result.get("predicted_class") in schema.names:
            items.append(_ls_choice(LS_CLASS, result["predicted_class"]))
    else:
        for ann in coco_annotations(schema, r):
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
                "score": float(score) if is_number(score) else 0.0,
                "result": items,
            }
        ],
    }


def _ls_choice(control: str, value: str) -> JsonObject:
    return {"from_name": control, "to_name": LS_IMAGE, "type": "choices", "value": {"choices": [value]}}


def _ls_region(schema: LabelSchema, ann: CocoAnnotationJson, w: int, h: int, rid: str) -> JsonObject:
    name = schema.names[int(ann["category_id"]) - 1]
    base: JsonObject = {
        "id": rid,
        "to_name": LS_IMAGE,
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
    }
    if ann["segmentation"]:
        flat = ann["segmentation"][0]
        points: list[JsonValue] = [
            [round(flat[i] * 100 / w, 6), round(flat[i + 1] * 100 / h, 6)] for i in range(0, len(flat), 2)
        ]
        value: JsonObject = {"points": points, "closed": True, "polygonlabels": [name]}
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
