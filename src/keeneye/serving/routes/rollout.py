"""``/v1/pipelines/{name}/rollout``: the rollout of a challenger model — read it, move it.

``GET`` shows the state, the versions, what the controller measured per variant (answers, p95
latency, failures, online quality, shadow agreement) and what it would do next. ``POST`` moves it
(``shadow``, ``canary``, ``promote``, ``abort``) exactly as ``keeneye models rollout`` does; this
process then follows the move at once, the others at their next alias poll.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from keeneye.domain import JsonObject, Role
from keeneye.lifecycle.rollout import RolloutController
from keeneye.serving.routes.deps import ClientDep, OperatorDep, StateDep, ViewerDep, audit_name, ensure_role
from keeneye.serving.routes.params import PipelineName
from keeneye.serving.schemas import API_ERRORS, ErrorResponse, RolloutRequest
from keeneye.serving.state import AppState

router = APIRouter(tags=["rollout"], responses=API_ERRORS)


def _controller(state: AppState) -> RolloutController:
    return RolloutController(state.settings, state.db, state.registry, state.catalog, state.metrics)


def _serving(state: AppState, name: str) -> JsonObject:
    """What this process serves for the pipeline right now (others follow at their next poll)."""
    runtime = state.runtime
    champion = runtime.served().get(name)
    challenger = runtime.challenger(name)
    shadow = runtime.shadow_runner
    return {
        "champion": champion.version if champion else None,
        "challenger": challenger.ref.version if challenger else None,
        "shadow_pending": shadow.pending,
        "shadow_skipped": shadow.skipped.get(name, 0),
        "shadow_failed": shadow.failed.get(name, 0),
    }


@router.get(
    "/v1/pipelines/{name}/rollout",
    summary="The pipeline's rollout: state, versions, measurements per variant, next step",
    responses={404: {"model": ErrorResponse, "description": "unknown pipeline"}},
)
async def get_rollout(name: PipelineName, app_state: StateDep, _client: ClientDep, _actor: ViewerDep) -> Any:
    report = await asyncio.to_thread(_controller(app_state).report, name)
    return {**report, "serving": _serving(app_state, name)}


@router.post(
    "/v1/pipelines/{name}/rollout",
    summary="Move the rollout: shadow, canary, promote or abort",
    responses={
        404: {"model": ErrorResponse, "description": "unknown pipeline or model version"},
        409: {
            "model": ErrorResponse,
            "description": "not possible in the current state (the body says why and what to do)",
        },
        422: {"model": ErrorResponse, "description": "bad body, or a forced move without a reason"},
    },
)
async def post_rollout(
    name: PipelineName, body: RolloutRequest, app_state: StateDep, _client: ClientDep, actor: OperatorDep
) -> Any:
    if body.action == "promote":  # moves the champion alias: as `models promote`, an admin's call
        ensure_role(actor, Role.admin, "promoting the challenger")
    record = await asyncio.to_thread(
        _controller(app_state).apply,
        name,
        body.action,
        actor=audit_name(actor),
        reason=body.reason,
        share=body.share,
        sample=body.sample,
        version=body.version,
        force=body.force,
    )
    app_state.runtime.refresh_soon()
    return record.to_dict()
