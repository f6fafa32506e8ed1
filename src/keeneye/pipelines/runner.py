"""What a pipeline does with one image, shared by the HTTP API and the stream workers.

``prepare``: bytes → decoded, validated image → model input tensor (raises InvalidInput).
``finish``: raw model outputs → Instances → the typed :class:`~keeneye.domain.Answer` (classes,
instances with outlines, OK/DEFECT decision, image facts and quality features); it becomes JSON only
at the edges (``Answer.to_json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keeneye.domain import (
    Answer,
    AnswerParts,
    ClassLabel,
    ImageFacts,
    InvalidInput,
    JsonObject,
    ModelRef,
    Prediction,
    Task,
)
from keeneye.geometry import mask_outline
from keeneye.imaging import Image, Transform, content_hash, decode_image, prepare_input, quality_features
from keeneye.models import MicroBatcher, decide_ok_defect, postprocess
from keeneye.models.manifest import ModelManifest
from keeneye.pipelines.crophealth import GeoInput, geo_answer, geo_request, read_geo_input, run_tiles
from keeneye.pipelines.spec import PipelineSpec
from keeneye.settings import Settings

# "zip": a multi-file capture (one TIFF per band) queued by ``keeneye ingest`` for a geo pipeline.
EXTENSIONS = {"jpeg": "jpg", "png": "png", "tiff": "tif", "zip": "zip"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "tiff": "image/tiff", "zip": "application/zip"}


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
    """One decoded image and its model input. ``geo``: a geo pipeline's raster and tiles (then the
    model runs per tile, :func:`run_model`, and ``tensor`` is unused)."""

    image: Image
    tensor: np.ndarray
    transform: Transform
    geo: GeoInput | None = None


def prepare(
    spec: PipelineSpec,
    manifest: ModelManifest,
    data: bytes,
    settings: Settings,
    metadata: JsonObject | None = None,
) -> Prepared:
    """Decode and validate ``data`` for ``spec`` and build the model input; raises InvalidInput.

    ``metadata``: the request's, read by geo pipelines (``band_map``, ``camera``, ``crs``)."""
    if not data:
        raise InvalidInput(
            "empty", "the request carries no image bytes", status=400,
            fix="send the image as multipart field 'file' or as the raw body",
        )  # fmt: skip
    if spec.input.geo:
        return _prepare_geo(spec, manifest, data, settings, metadata)
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
    _check_size(spec, image.full_height, image.full_width)
    tensor, transform = prepare_input(image, manifest.input)
    return Prepared(image, tensor, transform)


def _check_size(spec: PipelineSpec, height: int, width: int) -> None:
    """Refuse an image with a side under ``input.min_side`` (a 1 × 1 PNG is a valid file, not a frame)."""
    side = spec.input.min_side
    if min(height, width) < side:
        raise InvalidInput(
            "image_too_small",
            f"the image is {width} × {height} pixels; pipeline {spec.name!r} needs at least {side} a side",
            fix=f"send the camera's frame (at least {side} × {side} pixels), or lower input.min_side in "
            "the pipeline spec",
        )


def _prepare_geo(
    spec: PipelineSpec, manifest: ModelManifest, data: bytes, settings: Settings, metadata: JsonObject | None
) -> Prepared:
    """A geo pipeline's upload: the raster as reflectance (the image facts and drift features see
    reflectance 0–1, comparable across cameras) and its tiles at the model's native size."""
    request = geo_request(spec, metadata)
    geo = read_geo_input(
        spec, manifest, data, request, max_pixels=spec.input.max_pixels or settings.imaging.max_pixels
    )
    raster = geo.raster
    _check_size(spec, *raster.shape)
    image = Image(geo.pixels, raster.bands, "tiff", content_hash(data))
    height, width = raster.shape
    empty = np.zeros((0,), dtype=np.float32)
    return Prepared(image, empty, Transform.fit(height, width, manifest.input), geo)


async def run_model(batcher: MicroBatcher, prepared: Prepared) -> list[np.ndarray]:
    """The model's outputs for one prepared image: one submit, or one per tile for a geo pipeline."""
    if prepared.geo is not None:
        return await run_tiles(batcher, prepared.geo)
    return await batcher.submit(prepared.tensor)


def finish(
    spec: PipelineSpec, manifest: ModelManifest, ref: ModelRef, prepared: Prepared, outputs: list[np.ndarray]
) -> Answer:
    """Post-process one image's model outputs into the pipeline's answer."""
    parts = AnswerParts()
    if prepared.geo is not None:
        instances, geo_part = geo_answer(spec, manifest, prepared.geo, outputs)
        parts = AnswerParts(geo=geo_part)
    else:
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
    return answer_of(prediction, manifest, spec, image=facts, parts=parts)


def answer_of(
    prediction: Prediction,
    manifest: ModelManifest,
    spec: PipelineSpec,
    *,
    image: ImageFacts | None = None,
    parts: AnswerParts | None = None,
) -> Answer:
    """A prediction with what the pipeline adds: class names, outlines, the OK/DEFECT decision."""
    inst = prediction.instances
    classes = tuple(ClassLabel(c.name, c.display) for c in manifest.classes)
    if prediction.task is Task.classify:
        return Answer(prediction=prediction, classes=classes, image=image, parts=parts or AnswerParts())
    decision = decide_ok_defect(inst, manifest) if spec.decision.kind == "ok-defect" else None
    return Answer(
        prediction=prediction,
        classes=classes,
        areas_px=inst.areas,
        outlines=None if inst.masks is None else [mask_outline(m) for m in inst.masks],
        decision=decision,
        image=image,
        parts=parts or AnswerParts(),
    )
