"""Synchronous prediction: ``POST /v1/pipelines/{name}/predict`` and the species-id ``POST /predict``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile

from keeneye.domain import InvalidInput, JsonObject
from keeneye.imaging.archive import pack_files
from keeneye.serving.routes.deps import OPERATOR, AdmitDep, StateDep
from keeneye.serving.routes.params import PipelineName
from keeneye.serving.schemas import API_ERRORS, ErrorResponse, PredictResponse
from keeneye.serving.service import PredictionJson

router = APIRouter(tags=["predict"], dependencies=[OPERATOR], responses=API_ERRORS)

RAW_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/tiff", "image/tif", "application/octet-stream"}

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in {
        400: "empty or malformed request",
        401: "API key missing or invalid",
        404: "unknown pipeline",
        413: "upload or image too large",
        415: "content type not accepted",
        422: "the image was refused (reason says why)",
        429: "rate limited or too many requests in flight for this client or key (Retry-After)",
        503: "busy or no model ready (Retry-After)",
    }.items()
}


def _observation_link(path: str, method: str = "get") -> dict[str, Any]:
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {
        "operationRef": f"#/paths/{pointer}/{method}",
        "parameters": {"observation_id": "$response.body#/observation_id"},
    }


# OpenAPI links: what a client (or schemathesis' stateful phase) can do next with the answer's id.
ANSWER_LINKS: dict[str, Any] = {
    "GetObservation": _observation_link("/v1/observations/{observation_id}"),
    "GetTrace": _observation_link("/v1/observations/{observation_id}/trace"),
    "GetImage": _observation_link("/v1/observations/{observation_id}/image"),
    "GetImagePng": _observation_link("/v1/observations/{observation_id}/image.png"),
    "PostFeedback": _observation_link("/v1/observations/{observation_id}/feedback", "post"),
}

_BODY_DOC = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "metadata": {
                            "type": "string",
                            "description": "JSON object stored with the observation",
                        },
                    },
                    "required": ["file"],
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/tiff": {"schema": {"type": "string", "format": "binary"}},
        },
        "required": True,
    }
}


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, refusing with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("bad_request", "Content-Length is not a number", status=400) from None
        if size > limit:
            raise InvalidInput(
                "too_large",
                f"upload of {size} bytes is over the limit of {limit} bytes",
                status=413,
                fix="send a smaller image, or raise KEENEYE_SERVING__MAX_UPLOAD_BYTES",
            )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise InvalidInput(
                "too_large",
                f"upload is over the limit of {limit} bytes",
                status=413,
                fix="send a smaller image, or raise KEENEYE_SERVING__MAX_UPLOAD_BYTES",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def parse_metadata(raw: str | bytes | None) -> JsonObject:
    if raw is None or raw in ("", b""):
        return {}
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(
            "bad_metadata",
            f"metadata is not valid JSON: {exc}",
            status=400,
            fix='send a JSON object, e.g. {"field": "A7"}',
        ) from exc
    if not isinstance(value, dict):
        raise InvalidInput("bad_metadata", "metadata must be a JSON object", status=400)
    return value


MAX_CAPTURE_FILES = 16  # multi-file captures: one TIFF per band, a dozen bands at most


async def extract_image(request: Request, limit: int, *, many: bool = False) -> tuple[bytes, JsonObject]:
    """Image bytes and metadata from a multipart form (field ``file``) or a raw image body.

    ``many`` (crop-health): several ``file`` fields are one multi-file capture, one TIFF per band;
    they are packed into one zip (stored as sent; the pipeline checks and stacks it)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        body = await read_limited_body(request, limit)
        request._body = body  # let Starlette's form parser read the bytes we already bounded
        try:
            form = await request.form(
                max_files=MAX_CAPTURE_FILES if many else 1, max_fields=16, max_part_size=limit
            )
        except Exception as exc:  # the multipart parser raises several types for malformed bodies
            raise InvalidInput(
                "bad_request",
                f"malformed multipart body: {exc}",
                status=400,
                fix=f"send one 'file' field ({MAX_CAPTURE_FILES} for a crop-health capture)"
                if "files" in str(exc)
                else None,
            ) from exc
        uploads = [u for u in form.getlist("file") if isinstance(u, UploadFile)]
        if len(uploads) > 1:
            files = [(u.filename or f"band_{i + 1}.tif", await u.read()) for i, u in enumerate(uploads)]
            meta_field = form.get("metadata")
            return pack_files(files), parse_metadata(meta_field if isinstance(meta_field, str) else None)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput(
                "missing_file",
                "multipart body has no 'file' field",
                status=400,
                fix="send the image as form field 'file' (curl -F file=@photo.jpg)",
            )
        data = await upload.read()
        meta_field = form.get("metadata")
        metadata = parse_metadata(meta_field if isinstance(meta_field, str) else None)
        return data, metadata
    if content_type in RAW_TYPES or content_type.startswith("image/"):
        data = await read_limited_body(request, limit)
        return data, parse_metadata(request.headers.get("x-keeneye-metadata"))
    raise InvalidInput(
        "unsupported_media_type",
        f"content type {content_type or '(none)'!r} is not accepted",
        status=415,
        fix="send multipart/form-data with a 'file' field, "
        "or the raw image as image/jpeg, image/png or image/tiff",
    )


async def _predict(name: str, request: Request, state: StateDep, crs: str | None = None) -> PredictionJson:
    spec = state.catalog.get(name)  # 404 before reading a byte
    limit = spec.input.max_upload_bytes or state.settings.serving.max_upload_bytes
    try:
        data, metadata = await extract_image(request, limit, many=spec.input.geo)
        if crs is not None:  # crop-health: the zones' CRS, read by the pipeline like metadata.crs
            metadata = {**metadata, "crs": crs}
        result = await state.service.predict(name, data, metadata, source="http")
    except InvalidInput as exc:
        state.metrics.requests.labels(name, str(exc.status)).inc()
        raise
    state.metrics.requests.labels(name, "200").inc()
    return result


@router.post(
    "/v1/pipelines/{name}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses={**_ERRORS, 200: {"description": "the answer", "links": ANSWER_LINKS}},
    openapi_extra=_BODY_DOC,
    summary="Predict on one image, synchronously",
)
async def predict(
    name: PipelineName,
    request: Request,
    state: StateDep,
    _client: AdmitDep,
    crs: str | None = Query(
        None,
        description="crop-health: the zones' coordinates, wgs84 (GeoJSON lon/lat, the default) or "
        "native (the raster's own CRS)",
    ),
) -> PredictionJson:
    """Send the image as multipart field ``file`` (optional ``metadata`` JSON) or as the raw body.

    Every accepted image is stored with its prediction; the same bytes for the same model version are
    answered from the cache (``cached: true``). Crop-health reads ``metadata.band_map`` /
    ``metadata.camera`` and ``?crs=native``, and takes a multi-file capture as several ``file``
    fields (one TIFF per band) or one zip (docs/crop-health.md).
    """
    return await _predict(name, request, state, crs)


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses={**_ERRORS, 200: {"description": "the answer", "links": ANSWER_LINKS}},
    openapi_extra=_BODY_DOC,
    summary="Predict with the default pipeline (species-id compatible)",
)
async def predict_default(request: Request, state: StateDep, _client: AdmitDep) -> PredictionJson:
    return await _predict(state.settings.serving.default_pipeline, request, state)
