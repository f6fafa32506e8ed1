"""``GET /v1/system``: the supervisor's view of processes, replicas, queue lag and utilisation.

``keeneye up`` writes the view to ``<home>/run/system.json`` every control interval; this route
serves it, or says the supervisor is not running (file missing, marked stopped, stale, or written
by a process that is gone). The same numbers are exported on ``/metrics`` by
:func:`export_scaling_metrics`, so Prometheus sees the scaling gauges through the API.
"""

from __future__ import annotations

from fastapi import APIRouter

from keeneye.metrics import Metrics
from keeneye.scaling import SystemStatus, read_status
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.schemas import API_ERRORS
from keeneye.settings import Settings

router = APIRouter(tags=["system"], dependencies=[VIEWER], responses=API_ERRORS)


@router.get(
    "/v1/system",
    response_model=SystemStatus,
    summary="Processes, worker replicas per pipeline, queue lag and utilisation (from keeneye up)",
)
def system_view(state: StateDep) -> SystemStatus:
    return read_status(state.settings.home)


def export_scaling_metrics(settings: Settings, metrics: Metrics) -> None:
    """Copy the supervisor's latest per-pipeline numbers into this process's scaling gauges."""
    status = read_status(settings.home)
    if not status.running or status.system is None:
        return
    for name, p in status.system.pipelines.items():
        metrics.replicas.labels(name).set(p.replicas)
        metrics.desired_replicas.labels(name).set(p.desired)
        if p.utilization is not None:
            metrics.worker_utilization.labels(pipeline=name, kind="stream", stat="mean").set(p.utilization)
        if p.utilization_max is not None:
            metrics.worker_utilization.labels(pipeline=name, kind="stream", stat="max").set(p.utilization_max)
        if p.lag is not None:
            metrics.queue_lag.labels(name).set(p.lag)


__all__ = ["export_scaling_metrics", "router"]
