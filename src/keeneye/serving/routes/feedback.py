"""Ground truth in, online quality out.

``POST /v1/observations/{id}/feedback`` takes a label for an observation the platform answered and
stores it (201); ``GET /v1/pipelines/{name}/quality`` shows how each model version does on those
labels against its test-split values. Both are thin: the checks and the arithmetic live in
:mod:`keeneye.monitoring.quality`, shared with ``keeneye feedback`` / ``keeneye quality``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from keeneye.domain import InvalidInput
from keeneye.monitoring.quality import (
    MAX_FEEDBACK_BYTES,
    ManifestLookup,
    feedback_target,
    find_observation,
    parse_feedback,
    pipeline_quality,
    quality_report,
    registry_manifests,
    store_feedback,
)
from keeneye.serving.routes.deps import (
    AdmitDep,
    ClientDep,
    DbDep,
    OperatorDep,
    StateDep,
    ViewerDep,
    admitted,
    audit_name,
)
from keeneye.serving.routes.params import ObservationId, PipelineName
from keeneye.serving.routes.predict import read_limited_body
from keeneye.serving.schemas import API_ERRORS, ErrorResponse, FeedbackCreated
from keeneye.serving.state import AppState

router = APIRouter(tags=["feedback"], responses=API_ERRORS)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in {
        400: "the body is not a JSON object",
        401: "API key missing or invalid",
        404: "unknown observation",
        409: "the observation has no prediction yet (not done)",
        413: "body over 2 MiB or too many instances",
        415: "content type is not application/json",
        422: "the label was refused (reason says why)",
        429: "rate limited or too many requests in flight for this client or key (Retry-After)",
        503: "busy or the registry is unreachable (Retry-After)",
    }.items()
}

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "class": {"type": "string", "description": "classify: the true class"},
                        "decision": {"type": "string", "enum": ["OK", "DEFECT"]},
                        "instances": {
                            "type": "array",
                            "description": "segment/detect, COCO style: class + bbox [x,y,w,h] "
                            "and/or segmentation [[x1,y1,x2,y2,…]]",
                            "items": {"type": "object"},
                        },
                        "author": {"type": "string"},
                        "source": {"type": "string", "default": "api"},
                    },
                },
                "examples": {
                    "classify": {"value": {"class": "esox_lucius", "author": "ana"}},
                    "ok-defect": {"value": {"decision": "DEFECT"}},
                    "instances": {"value": {"instances": [{"class": "scratch", "bbox": [10, 12, 30, 8]}]}},
                },
            }
        },
    }
}


def manifests_of(request: Request, state: AppState) -> ManifestLookup:
    """One manifest lookup per app (it caches; the served bundles are read from the model cache)."""
    lookup: ManifestLookup | None = getattr(request.app.state, "keeneye_manifests", None)
    if lookup is None:
        lookup = registry_manifests(state.registry)
        request.app.state.keeneye_manifests = lookup
    return lookup


async def read_json_body(request: Request) -> Any:
    """The JSON body, at most :data:`MAX_FEEDBACK_BYTES`; 415 / 413 / 400 otherwise."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise InvalidInput(
            "unsupported_media_type",
            f"content type {content_type or '(none)'!r} is not accepted",
            status=415,
            fix="send the label as application/json",
        )
    raw = await read_limited_body(request, MAX_FEEDBACK_BYTES)
    if not raw.strip():
        raise InvalidInput("bad_request", "the body is empty", status=400, fix='send e.g. {"class": "…"}')
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput("bad_json", f"the body is not valid JSON: {exc}"[:300], status=400) from exc


@router.post(
    "/v1/observations/{observation_id}/feedback",
    status_code=201,
    response_model=FeedbackCreated,
    responses=_ERRORS,
    openapi_extra=_BODY_DOC,
    summary="Record the ground truth of an observation",
)
async def create_feedback(
    observation_id: ObservationId,
    request: Request,
    state: StateDep,
    db: DbDep,
    client: ClientDep,
    actor: OperatorDep,
) -> Any:
    """One label per request: ``{"class": …}`` (classify), ``{"decision": "OK"|"DEFECT"}`` (ok-defect)
    or ``{"instances": […]}`` (segment / detect, COCO style), plus optional ``author`` and ``source``.
    A later label for the same observation replaces the earlier one in the quality metrics."""
    body = await read_json_body(request)
    observation = await asyncio.to_thread(find_observation, db, observation_id)
    with admitted(state, observation.pipeline, client):
        target = await asyncio.to_thread(
            feedback_target, db, state.catalog, observation, manifests_of(request, state)
        )
        parsed = parse_feedback(body, target, default_source="api")
        parsed = replace(parsed, author=audit_name(actor, parsed.author))  # who, as the key says
        receipt = await asyncio.to_thread(store_feedback, db, target, parsed)
    state.metrics.feedback.labels(receipt.pipeline, receipt.source).inc()
    link = f"/v1/observations/{receipt.observation_id}"
    return JSONResponse(status_code=201, headers={"Location": link}, content=receipt.to_dict())


@router.get(
    "/v1/pipelines/{name}/quality",
    responses={k: v for k, v in _ERRORS.items() if k in (401, 404, 429, 503)},
    summary="Online precision / recall / F1 per model version against its test values",
)
async def get_quality(
    name: PipelineName, state: StateDep, db: DbDep, _client: AdmitDep, _actor: ViewerDep
) -> dict[str, Any]:
    """Computed on request over the last ``monitoring.quality_window_seconds`` of feedback; ``drop`` is
    true when a metric is more than ``monitoring.quality_drop`` (relative) below the version's test
    value on at least ``monitoring.quality_min_feedback`` labels."""
    spec = state.catalog.get(name)
    windows = await asyncio.to_thread(pipeline_quality, state.settings, db, state.registry, spec)
    return quality_report(state.settings, spec, windows)
