"""Move a pipeline's champion alias from the API: promote a version, roll back; read the audit log.

``POST /v1/pipelines/{name}/models/{version}/promote`` and ``POST /v1/pipelines/{name}/models/rollback``
go through :meth:`keeneye.registry.ModelRegistry.promote` / ``rollback`` exactly as ``keeneye models
promote`` / ``rollback`` do, so invariant 4 holds here too: a version that failed its gates is
refused (409) unless ``force`` with a reason. Moving the champion is an admin's call (as in
``rollout.py``); a reason is always required, and every move is a ``model_events`` row naming who did
it (``GET /v1/pipelines/{name}/models/events``). This process serves the new champion at once; the
others at their next alias poll.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query

from keeneye.domain import InvalidInput, JsonObject
from keeneye.registry import ModelVersionInfo
from keeneye.serving.routes.deps import AdminDep, StateDep, ViewerDep, audit_name
from keeneye.serving.routes.params import ModelVersion, PipelineName
from keeneye.serving.schemas import API_ERRORS, AliasMoveRequest, ErrorResponse
from keeneye.serving.state import AppState
from keeneye.store import ModelEventRecord

router = APIRouter(tags=["models"], responses=API_ERRORS)

MAX_EVENTS = 500


def _model(state: AppState, name: str) -> str:
    return state.catalog.get(name).model.name  # NotFound → 404 naming the pipelines


def _promote(state: AppState, name: str, version: str, body: AliasMoveRequest, who: str) -> ModelVersionInfo:
    model = _model(state, name)
    info = state.registry.get(model, version)  # NotFound naming the versions that exist
    if info.gates == "failed" and not body.force:
        raise InvalidInput(
            "gates_failed",
            f"{model} v{info.version} failed its quality gates and cannot become champion",
            status=409,
            fix="train a model that passes the gates, or send force=true with the reason",
        )
    return state.registry.promote(
        model, info.version, actor=who, reason=body.reason.strip(), force=body.force
    )


def _rollback(state: AppState, name: str, body: AliasMoveRequest, who: str) -> ModelVersionInfo:
    return state.registry.rollback(
        _model(state, name), actor=who, reason=body.reason.strip(), force=body.force
    )


_MOVE_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "unknown pipeline or version, or no previous champion"},
    409: {"model": ErrorResponse, "description": "the version failed its gates (send force with the reason)"},
    422: {"model": ErrorResponse, "description": "no reason"},
}


@router.post(
    "/v1/pipelines/{name}/models/{version}/promote",
    summary="Make a version the champion (audited; a failed-gates version needs force)",
    responses=_MOVE_ERRORS,
)
async def promote_version(
    name: PipelineName, version: ModelVersion, body: AliasMoveRequest, state: StateDep, who: AdminDep
) -> dict[str, Any]:
    """The old champion becomes ``previous`` (what rollback returns to)."""
    info = await asyncio.to_thread(_promote, state, name, version, body, audit_name(who, body.by))
    state.runtime.refresh_soon()
    return info.to_dict()


@router.post(
    "/v1/pipelines/{name}/models/rollback",
    summary="Give the champion alias back to the previous champion (audited)",
    responses=_MOVE_ERRORS,
)
async def rollback_champion(
    name: PipelineName, body: AliasMoveRequest, state: StateDep, who: AdminDep
) -> dict[str, Any]:
    info = await asyncio.to_thread(_rollback, state, name, body, audit_name(who, body.by))
    state.runtime.refresh_soon()
    return info.to_dict()


@router.get(
    "/v1/pipelines/{name}/models/events",
    summary="The model audit log of a pipeline, newest first",
    responses={404: {"model": ErrorResponse, "description": "unknown pipeline"}},
)
async def model_events(
    name: PipelineName, state: StateDep, _actor: ViewerDep, limit: int = Query(50, ge=1, le=MAX_EVENTS)
) -> dict[str, Any]:
    """Registrations, alias moves (promoted, rolled back, rollout steps) and gate results: who, when,
    from which version to which, and why."""
    model = _model(state, name)
    events = await asyncio.to_thread(state.db.model_events, model, limit)
    return {"pipeline": name, "model": model, "events": [event_json(e) for e in events]}


def event_json(e: ModelEventRecord) -> JsonObject:
    """One ``model_events`` row as JSON."""
    return {
        "id": e.id,
        "event": e.event,
        "model_version": e.model_version,
        "from_version": e.from_version,
        "alias": e.alias,
        "actor": e.actor,
        "reason": e.reason,
        "details": e.details,
        "created_at": e.created_at.isoformat(),
    }
