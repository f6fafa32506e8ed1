"""Labels → COCO annotations: a person's stored label, or a confident champion answer, as the
annotations one retraining image trains on.

Pure functions, no I/O. :func:`label_annotations` reads the feedback's shape (``{"class"}`` or
``{"instances"}`` with COCO boxes and polygons) and says ``None`` when a label cannot train the task;
:func:`pseudo_label` turns a champion answer into that shape only when it is confident (see
:data:`PSEUDO_MIN_CONFIDENCE`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from keeneye.domain import JsonObject, JsonValue, Task

PSEUDO_MIN_CONFIDENCE: Final = 0.95
PIXEL_CENTRE: Final = 0.5  # model polygons trace pixel centres; COCO polygons pixel edges


@dataclass(frozen=True)
class CocoAnnotation:
    """One annotation before it has ids: class name, ``[x, y, w, h]`` box, area, segmentation."""

    category: str
    bbox: tuple[float, float, float, float]
    area: float
    segmentation: Any = None  # COCO polygons or RLE; None = the box
    iscrowd: int = 0


def finite_number(value: Any) -> float | None:
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
        if isinstance(p, list)
        and len(p) >= 6
        and len(p) % 2 == 0
        and all(finite_number(v) is not None for v in p)
    ]
    box = [finite_number(v) for v in bbox] if isinstance(bbox, list | tuple) and len(bbox) == 4 else None
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


def pseudo_label(result: Mapping[str, Any], task: Task) -> JsonObject | None:
    """A confident champion answer as a label in the feedback's shape; None when it is not confident.

    Classification: top-1 probability ≥ :data:`PSEUDO_MIN_CONFIDENCE` → ``{"class"}``. Segmentation:
    at least one instance and every instance scoring that high → ``{"instances"}`` with COCO boxes and
    polygons (one doubtful region and the image is skipped: its other regions may be incomplete).
    """
    if task is Task.classify:
        confidence = finite_number(result.get("confidence"))
        name = result.get("predicted_class")
        if confidence is None or confidence < PSEUDO_MIN_CONFIDENCE or not isinstance(name, str):
            return None
        return {"class": name}
    items = result.get("instances")
    if not isinstance(items, list) or not items:
        return None
    instances: list[JsonValue] = []
    for item in items:
        score = finite_number(item.get("score")) if isinstance(item, Mapping) else None
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


__all__ = ["PSEUDO_MIN_CONFIDENCE", "CocoAnnotation", "finite_number", "label_annotations", "pseudo_label"]
