"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from keeneye.metrics import render_metrics
from keeneye.serving.routes.deps import PUBLIC_ROUTE, StateDep
from keeneye.serving.routes.system_view import export_scaling_metrics
from keeneye.serving.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["system"], dependencies=[PUBLIC_ROUTE])  # probes and scrapers send no key


@router.get("/health", response_model=HealthResponse, summary="The process is alive")
def health() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get("/ready", response_model=ReadyResponse, summary="Every registered model is loaded and warm")
def ready(state: StateDep, response: Response) -> ReadyResponse:
    runtime = state.runtime
    served = {name: ref.version for name, ref in runtime.served().items()}
    is_ready = runtime.ready and bool(served)
    if not is_ready:
        response.status_code = 503
    return ReadyResponse(ready=is_ready, models=served, problems=runtime.problems())


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(state: StateDep) -> Response:

    export_scaling_metrics(state.settings, state.metrics)  # keeneye up's replicas, lag, utilisation
    # Under keeneye up: every process's values (PROMETHEUS_MULTIPROC_DIR), not only the API's.
    return Response(render_metrics(state.metrics), media_type=CONTENT_TYPE_LATEST)
