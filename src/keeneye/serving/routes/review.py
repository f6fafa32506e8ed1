"""The review queue over HTTP: the list, the stored images, and the page where a person answers.

``GET /v1/pipelines/{name}/review`` lists the open queue (most uncertain first) with the champion's
answer and the classes a person may choose from; ``GET /v1/observations/{id}/image`` returns the stored
image bytes; ``GET /pipelines/{name}/review`` is the page. Answers go through the feedback API
(``POST /v1/observations/{id}/feedback``), which resolves the observation's queue items.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, Field

from keeneye.domain import NotFound
from keeneye.lifecycle import LabelSchema, ReviewEntry, review_queue
from keeneye.pipelines import ModelNotReady
from keeneye.serving.app import AppState
from keeneye.serving.routes.deps import ClientDep, StateDep

router = APIRouter(tags=["review"])
_templates = Jinja2Templates(
    env=Environment(loader=PackageLoader("keeneye.web", "templates"), autoescape=select_autoescape())
)
MAX_LIMIT = 500


class ReviewClass(BaseModel):
    name: str
    label: str


class ReviewItemResponse(BaseModel):
    observation_id: str
    priority: float
    reasons: list[str]
    details: dict[str, Any]
    queued_at: str | None
    observed_at: str
    resolved_at: str | None
    image_url: str | None = Field(description="the stored image; null when it was not stored")
    content_type: str
    model_version: str | None
    prediction: dict[str, Any] | None = Field(description="the champion's answer, as predict returned it")


class ReviewListResponse(BaseModel):
    pipeline: str
    task: str
    decision: bool = Field(description="the pipeline decides OK / DEFECT")
    model_version: str | None = Field(description="the model whose classes are listed")
    classes: list[ReviewClass] = Field(
        description="the classes a label may use; empty while no model is served"
    )
    items: list[ReviewItemResponse]


def _schema(state: AppState, name: str) -> LabelSchema | None:
    try:
        loaded = state.runtime.get(name)
    except ModelNotReady:
        return None
    spec = state.catalog.get(name)
    return LabelSchema.from_manifest(spec, loaded.bundle.manifest, model_version=loaded.ref.version)


def _item(entry: ReviewEntry) -> ReviewItemResponse:
    return ReviewItemResponse(
        observation_id=entry.observation_id,
        priority=entry.priority,
        reasons=list(entry.reasons),
        details=entry.details,
        queued_at=entry.queued_at.isoformat() if entry.queued_at else None,
        observed_at=entry.observed_at.isoformat(),
        resolved_at=entry.resolved_at.isoformat() if entry.resolved_at else None,
        image_url=f"/v1/observations/{entry.observation_id}/image" if entry.object_key else None,
        content_type=entry.content_type,
        model_version=entry.model_version,
        prediction=entry.prediction,
    )


@router.get(
    "/v1/pipelines/{name}/review",
    response_model=ReviewListResponse,
    summary="The review queue: answers a person should check, most uncertain first",
)
async def list_review(
    name: str,
    state: StateDep,
    _client: ClientDep,
    limit: int = Query(50, ge=1, le=MAX_LIMIT, description="at most this many observations"),
    include_resolved: bool = Query(False, description="list answered items too"),
) -> ReviewListResponse:
    spec = state.catalog.get(name)  # 404 with the known names
    entries = await asyncio.to_thread(
        review_queue, state.service.db, name, limit=limit, include_resolved=include_resolved
    )
    schema = _schema(state, name)
    return ReviewListResponse(
        pipeline=name,
        task=spec.task.value,
        decision=spec.decision.kind == "ok-defect",
        model_version=schema.model_version if schema else None,
        classes=[ReviewClass(name=c.name, label=c.label) for c in schema.classes] if schema else [],
        items=[_item(e) for e in entries],
    )


@router.get(
    "/v1/observations/{observation_id}/image",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/tiff": {}}}, 404: {}},
    summary="The stored image of an observation",
)
async def observation_image(observation_id: str, state: StateDep, _client: ClientDep) -> StreamingResponse:
    db, objects = state.service.db, state.service.objects
    obs = await asyncio.to_thread(db.get_observation, observation_id)
    if obs is None:
        raise NotFound(f"no observation {observation_id[:64]!r}")
    if obs.object_key is None:
        raise NotFound(
            f"observation {observation_id} has no stored image",
            fix="images are stored when the observation is accepted; this one was not kept",
        )
    key = obs.object_key
    try:
        info = await asyncio.to_thread(objects.info, key)
    except NotFound:
        raise NotFound(
            f"the image of observation {observation_id} is no longer stored",
            fix="the pipeline's retention policy removed it",
        ) from None
    return StreamingResponse(
        objects.stream(key),  # a sync iterator: Starlette reads it in a worker thread
        media_type=obs.content_type,
        headers={
            "Content-Length": str(info.size),
            "Cache-Control": "private, max-age=86400, immutable",  # the bytes of an observation never change
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/review", include_in_schema=False)
def review_default(state: StateDep) -> RedirectResponse:
    """The nav link: the default pipeline's review queue."""
    return RedirectResponse(f"/pipelines/{state.settings.serving.default_pipeline}/review", status_code=307)


@router.get("/pipelines/{name}/review", response_class=HTMLResponse, include_in_schema=False)
def review_page(name: str, request: Request, state: StateDep) -> HTMLResponse:
    spec = state.catalog.get(name)
    return _templates.TemplateResponse(
        request,
        "review.html",
        {
            "pipeline": name,
            "pipelines": state.catalog.names(),
            "title": spec.title,
            "task": spec.task.value,
            "decision": spec.decision.kind == "ok-defect",
        },
    )
