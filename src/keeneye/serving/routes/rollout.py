"""``/v1/pipelines/{name}/rollout``: the rollout of a challenger model — read it, move it.

``GET`` shows the state, the versions, what the controller measured per variant (answers, p95
latency, failures, online quality, shadow agreement) and what it would do next. ``POST`` moves it
(``shadow``, ``canary``, ``promote``, ``abort``) exactly as ``keeneye models rollout`` does; this
process then follows the move at once, the others at their next alias poll.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from keeneye.lifecycle.rollout import RolloutController
from keeneye.serving.app import AppState
from keeneye.serving.routes.deps import ClientDep, StateDep

router = APIRouter(tags=["rollout"])


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["shadow", "canary", "promote", "abort"]
    share: float | None = Field(
        None, gt=0, le=1, description="canary: the share of inputs the challenger answers, 0.1 = 10 %"
    )
    sample: float | None = Field(None, ge=0, le=1, description="shadow: the share of inputs it also runs on")
    version: str | None = Field(
        None, pattern=r"^[1-9][0-9]*$", description="shadow/canary: make this version the challenger first"
    )
    reason: str = Field("", max_length=2000, description="recorded in the audit log")
    force: bool = Field(
        False,
        description="canary without shadow, promote from shadow, or a challenger whose gates failed "
        "(needs a reason)",
    )


def _controller(state: AppState) -> RolloutController:
    return RolloutController(state.settings, state.service.db, state.registry, state.catalog, state.metrics)


def _serving(state: AppState, name: str) -> dict[str, Any]:
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
    responses={404: {"description": "unknown pipeline"}},
)
async def get_rollout(name: str, app_state: StateDep, _client: ClientDep) -> Any:
    report = await asyncio.to_thread(_controller(app_state).report, name)
    return {**report, "serving": _serving(app_state, name)}


@router.post(
    "/v1/pipelines/{name}/rollout",
    summary="Move the rollout: shadow, canary, promote or abort",
    responses={
        404: {"description": "unknown pipeline or model version"},
        409: {"description": "not possible in the current state (the body says why and what to do)"},
        422: {"description": "bad body, or a forced move without a reason"},
    },
)
async def post_rollout(name: str, body: RolloutRequest, app_state: StateDep, client: ClientDep) -> Any:
    record = await asyncio.to_thread(
        _controller(app_state).apply,
        name,
        body.action,
        actor=f"api:{client}",
        reason=body.reason,
        share=body.share,
        sample=body.sample,
        version=body.version,
        force=body.force,
    )
    app_state.runtime.refresh_soon()
    return record.to_dict()
