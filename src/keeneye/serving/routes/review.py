"""The review queue over HTTP: the list, the stored images, and the page where a person answers.

``GET /v1/pipelines/{name}/review`` lists the open queue (most uncertain first) with the champion's
answer and the classes a person may choose from; ``GET /pipelines/{name}/review`` is the page (the
images come from :mod:`keeneye.serving.routes.images`). Answers go through the feedback API
(``POST /v1/observations/{id}/feedback``), which resolves the observation's queue items;
``DELETE /v1/observations/{id}/feedback/{feedback_id}`` withdraws one (the page's undo) and puts the
item back in the queue when it was the only answer.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from keeneye.lifecycle import LabelSchema, ReviewEntry, review_queue
from keeneye.pipelines import ModelNotReady
from keeneye.serving.routes.deps import VIEWER, ClientDep, OperatorDep, StateDep, ViewerDep, audit_name
from keeneye.serving.routes.params import FeedbackId, ObservationId, PipelineName
from keeneye.serving.schemas import (
    API_ERRORS,
    ErrorResponse,
    FeedbackWithdrawn,
    ReviewClass,
    ReviewItemResponse,
    ReviewListResponse,
)
from keeneye.serving.state import AppState
from keeneye.web import environment

log = logging.getLogger(__name__)
router = APIRouter(tags=["review"], responses=API_ERRORS)
_templates = Jinja2Templates(env=environment())
MAX_LIMIT = 500


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
    name: PipelineName,
    state: StateDep,
    _client: ClientDep,
    _actor: ViewerDep,
    limit: int = Query(50, ge=1, le=MAX_LIMIT, description="at most this many observations"),
    include_resolved: bool = Query(False, description="list answered items too"),
) -> ReviewListResponse:
    spec = state.catalog.get(name)  # 404 with the known names
    entries = await asyncio.to_thread(
        review_queue, state.db, name, limit=limit, include_resolved=include_resolved
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


@router.delete(
    "/v1/observations/{observation_id}/feedback/{feedback_id}",
    response_model=FeedbackWithdrawn,
    responses={404: {"model": ErrorResponse, "description": "no such feedback of this observation"}},
    tags=["feedback"],
    summary="Withdraw one feedback (a reviewer's undo); the item returns to the review queue",
)
async def withdraw_feedback(
    observation_id: ObservationId, feedback_id: FeedbackId, state: StateDep, actor: OperatorDep
) -> FeedbackWithdrawn:
    """Removes the label for good: online quality and training exports stop counting it. When it was
    the observation's only feedback, its review items are open again."""
    db = state.db
    record = await asyncio.to_thread(db.withdraw_feedback, observation_id, feedback_id)
    left = await asyncio.to_thread(db.feedback_for, observation_id)
    log.info("feedback %s on observation %s withdrawn by %s", feedback_id, observation_id, audit_name(actor))
    return FeedbackWithdrawn(
        id=record.id,
        observation_id=record.observation_id,
        source=record.source,
        author=record.author,
        label=record.label,
        queued_again=not left,
    )


@router.get("/review", include_in_schema=False, dependencies=[VIEWER])
def review_default(state: StateDep) -> RedirectResponse:
    """The nav link: the default pipeline's review queue."""
    return RedirectResponse(f"/pipelines/{state.settings.serving.default_pipeline}/review", status_code=307)


@router.get(
    "/pipelines/{name}/review", response_class=HTMLResponse, include_in_schema=False, dependencies=[VIEWER]
)
def review_page(name: str, request: Request, state: StateDep) -> HTMLResponse:
    spec = state.catalog.get(name)
    return _templates.TemplateResponse(
        request,
        "review.html",
        {
            "pipeline": name,
            "pipelines": state.catalog.names(),
            "title": spec.title,
            "description": spec.description,
            "task": spec.task.value,
            "decision": spec.decision.kind == "ok-defect",
        },
    )
