"""What a pipeline does with one image, shared by the HTTP API and the stream workers.

``prepare``: bytes → decoded, validated image → model input tensor (raises InvalidInput).
``finish``: raw model outputs → Instances → the JSON result (classification fields, instances,
OK/DEFECT decision, image facts and quality features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from keeneye.domain import Decision, InvalidInput, ModelRef, Prediction, Task
from keeneye.imaging import Image, Transform, decode_image, prepare_input, quality_features
from keeneye.models import decide_ok_defect, postprocess
from keeneye.models.manifest import ModelManifest
from keeneye.pipelines.spec import PipelineSpec
from keeneye.settings import Settings

EXTENSIONS = {"jpeg": "jpg", "png": "png", "tiff": "tif"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "tiff": "image/tiff"}


def content_type_of(fmt: str | None) -> str:
    return CONTENT_TYPES.get(fmt or "", "application/octet-stream")


def observation_key(pipeline: str, content_hash: str, fmt: str | None) -> str:
    """Objects are addressed by content, so the same photo sent twice is stored once."""
    ext = EXTENSIONS.get(fmt or "", "bin")
    return f"observations/{pipeline}/{content_hash[:2]}/{content_hash}.{ext}"


def quarantine_key(pipeline: str, content_hash: str) -> str:
    return f"quarantine/{pipeline}/{content_hash[:2]}/{content_hash}.bin"


@dataclass(frozen=True)
class Prepared:
    image: Image
    tensor: np.ndarray
    transform: Transform


def prepare(spec: PipelineSpec, manifest: ModelManifest, data: bytes, settings: Settings) -> Prepared:
    """Decode and validate ``data`` for ``spec`` and build the model input; raises InvalidInput."""
    if not data:
        raise InvalidInput(
            "empty", "the request carries no image bytes", status=400,
            fix="send the image as multipart field 'file' or as the raw body",
        )  # fmt: skip
    image = decode_image(
        data,
        band_map=spec.input.band_map,
        max_pixels=spec.input.max_pixels or settings.imaging.max_pixels,
        expected_bands=spec.input.expected_bands,
    )
    if image.format not in spec.input.formats:
        raise InvalidInput(
            "unsupported_format",
            f"{image.format.upper()} is not accepted by pipeline {spec.name!r}",
            status=415,
            fix=f"send one of: {', '.join(spec.input.formats)}",
        )
    tensor, transform = prepare_input(image, manifest.input)
    return Prepared(image, tensor, transform)


def finish(
    spec: PipelineSpec, manifest: ModelManifest, ref: ModelRef, prepared: Prepared, outputs: list[np.ndarray]
) -> dict[str, Any]:
    """Post-process one image's model outputs into the pipeline's JSON result."""
    instances = postprocess(manifest, outputs, prepared.transform)
    prediction = Prediction(instances=instances, model=ref, task=manifest.task)
    result = format_result(prediction, manifest, spec)
    image = prepared.image
    result["image"] = {
        "width": image.width,
        "height": image.height,
        "bands": list(image.bands),
        "format": image.format,
        "quality": quality_features(image),
    }
    return result


def format_result(prediction: Prediction, manifest: ModelManifest, spec: PipelineSpec) -> dict[str, Any]:
    """Instances → the JSON the API answers with and the results DB stores."""
    inst = prediction.instances
    classes = manifest.classes
    if prediction.task is Task.classify:
        top = [
            {
                "class": classes[int(c)].name,
                "label": classes[int(c)].display,
                "probability": round(float(p), 6),
            }
            for c, p in zip(inst.class_ids, inst.scores, strict=True)
        ]
        best = top[0]
        return {
            "task": "classify",
            "predicted_class": best["class"],
            "predicted_label": best["label"],
            "confidence": best["probability"],
            "top_3_predictions": top[:3],
        }
    instances = []
    for i in range(len(inst)):
        c = classes[int(inst.class_ids[i])]
        item: dict[str, Any] = {
            "class": c.name,
            "label": c.display,
            "score": round(float(inst.scores[i]), 6),
            "box": [round(float(v), 2) for v in inst.boxes[i]],
            "area_px": float(inst.areas[i]),
        }
        if inst.masks is not None:
            item["polygon"] = mask_polygon(inst.masks[i])
        instances.append(item)
    out: dict[str, Any] = {
        "task": prediction.task.value,
        "instances": instances,
        "count": len(instances),
        "confidence": round(float(inst.scores.max()), 6) if len(inst) else None,
    }
    if spec.decision.kind == "ok-defect":
        decision = decide_ok_defect(inst, manifest)
        out["decision"] = decision.value if isinstance(decision, Decision) else str(decision)
    return out


def mask_polygon(mask: np.ndarray, tolerance: float = 1.0) -> list[list[float]]:
    """The outline of the largest region of a mask, simplified, as [[x, y], …] in pixels."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    largest = max(contours, key=cv2.contourArea)
    approx = cv2.approxPolyDP(largest, tolerance, True)
    return [[float(x), float(y)] for x, y in approx.reshape(-1, 2)]
