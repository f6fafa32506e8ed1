"""Pipelines, models and observations: read-only views."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from keeneye.domain import NotFound
from keeneye.serving.routes.deps import VIEWER, DbDep, StateDep
from keeneye.serving.routes.params import ObservationId, PipelineName
from keeneye.serving.schemas import API_ERRORS, ObservationResponse, PipelineSummary, error_responses

router = APIRouter(tags=["pipelines"], dependencies=[VIEWER], responses=API_ERRORS)


def _summary(state: StateDep, name: str) -> PipelineSummary:
    spec = state.catalog.get(name)
    served = state.runtime.served().get(name)
    return PipelineSummary(
        name=spec.name,
        title=spec.title,
        task=spec.task.value,
        model=spec.model.name,
        alias=spec.model.alias,
        serving_version=served.version if served else None,
        slo_p95_ms=spec.slo.p95_latency_ms if spec.slo else None,
    )


@router.get(
    "/v1/pipelines", response_model=list[PipelineSummary], summary="Every pipeline and what it serves"
)
def list_pipelines(state: StateDep) -> list[PipelineSummary]:
    return [_summary(state, n) for n in state.catalog.names()]


@router.get(
    "/v1/pipelines/{name}", summary="One pipeline: its spec and served model", responses=error_responses(404)
)
def get_pipeline(name: PipelineName, state: StateDep) -> dict[str, Any]:
    spec = state.catalog.get(name)
    return {**_summary(state, name).model_dump(), "spec": spec.model_dump(mode="json")}


@router.get("/v1/models", summary="Registered model versions per pipeline")
def list_models(state: StateDep) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name in state.catalog.names():
        spec = state.catalog.get(name)
        out[name] = [v.to_dict() for v in state.registry.versions(spec.model.name)]
    return out


@router.get(
    "/v1/observations/{observation_id}",
    response_model=ObservationResponse,
    summary="Status and result",
    responses=error_responses(404),
)
def get_observation(observation_id: ObservationId, db: DbDep) -> ObservationResponse:
    obs = db.get_observation(observation_id)
    if obs is None:
        raise NotFound(f"no observation {observation_id!r}")
    # The answer the client got: the champion's or a canary's, never a shadow's.
    preds = [p for p in db.predictions_for(observation_id) if p.variant in ("champion", "canary")]
    latest = preds[-1] if preds else None
    return ObservationResponse(
        id=obs.id,
        pipeline=obs.pipeline,
        status=str(obs.status),
        reason=obs.reason,
        content_hash=obs.content_hash,
        created_at=obs.created_at.isoformat(),
        updated_at=obs.updated_at.isoformat(),
        metadata=obs.metadata,
        result=latest.result if latest else None,
        model_version=latest.model_version if latest else None,
    )
