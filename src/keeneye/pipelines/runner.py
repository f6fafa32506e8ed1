"""What a pipeline does with one image, shared by the HTTP API and the stream workers.

``prepare``: bytes → decoded, validated image → model input tensor (raises InvalidInput).
``finish``: raw model outputs → Instances → the typed :class:`~keeneye.domain.Answer` (classes,
instances with outlines, OK/DEFECT decision, image facts and quality features); it becomes JSON only
at the edges (``Answer.to_json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keeneye.domain import Answer, ClassLabel, ImageFacts, InvalidInput, ModelRef, Prediction, Task
from keeneye.geometry import mask_outline
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
        # a 640×480 photo for a 224 px model decodes at 320×240 (JPEG DCT scaling): the model sees
        # the same resize of a smaller decode, answers stay in full-size coordinates
        shrink_to=(manifest.input.width, manifest.input.height) if settings.imaging.jpeg_shrink else None,
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
) -> Answer:
    """Post-process one image's model outputs into the pipeline's answer."""
    instances = postprocess(manifest, outputs, prepared.transform)
    prediction = Prediction(instances=instances, model=ref, task=manifest.task)
    image = prepared.image
    facts = ImageFacts(
        width=image.full_width,
        height=image.full_height,
        bands=tuple(image.bands),
        format=image.format,
        quality=quality_features(image),
    )
    return answer_of(prediction, manifest, spec, image=facts)


def answer_of(
    prediction: Prediction, manifest: ModelManifest, spec: PipelineSpec, *, image: ImageFacts | None = None
) -> Answer:
    """A prediction with what the pipeline adds: class names, outlines, the OK/DEFECT decision."""
    inst = prediction.instances
    classes = tuple(ClassLabel(c.name, c.display) for c in manifest.classes)
    if prediction.task is Task.classify:
        return Answer(prediction=prediction, classes=classes, image=image)
    decision = decide_ok_defect(inst, manifest) if spec.decision.kind == "ok-defect" else None
    return Answer(
        prediction=prediction,
        classes=classes,
        areas_px=inst.areas,
        outlines=None if inst.masks is None else [mask_outline(m) for m in inst.masks],
        decision=decision,
        image=image,
    )
