"""Drift reports of a pipeline: its latest closed windows, compared with the served model's reference."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query

from keeneye.domain import JsonObject
from keeneye.monitoring.drift import MAX_REPORTS, latest_reports, no_report_note
from keeneye.serving.routes.deps import VIEWER, DbDep, StateDep
from keeneye.serving.routes.params import PipelineName
from keeneye.serving.schemas import API_ERRORS, error_responses

router = APIRouter(tags=["monitoring"], dependencies=[VIEWER], responses=API_ERRORS)


DRAIN_SECONDS = 5.0  # longest a GET waits for this process's queued drift work


@router.get(
    "/v1/pipelines/{name}/drift",
    summary="Latest drift windows of a pipeline, newest first",
    responses=error_responses(404),
)
async def get_drift(
    name: PipelineName,
    state: StateDep,
    db: DbDep,
    limit: int = Query(20, ge=1, le=MAX_REPORTS, description="how many windows"),
    model_version: str | None = Query(None, description="only this model version's windows"),
) -> dict[str, Any]:
    """Per feature PSI / KS / p-value / alarm, class-mix PSI and the embedding MMD test of each window.

    An empty ``reports`` list comes with ``note``: why there is nothing yet and when a window closes.
    """
    state.catalog.get(name)  # NotFound → 404 with the known names
    # Read this process's own writes: a window completed by a prediction already answered closes on
    # the drift thread a moment later; wait (bounded) for what that thread has queued.
    await asyncio.to_thread(state.service.drift.drain, DRAIN_SECONDS)
    reports = await asyncio.to_thread(latest_reports, db, name, limit=limit, model_version=model_version)
    window = state.settings.monitoring
    body: JsonObject = {
        "pipeline": name,
        "window": {
            "size": window.drift_window_size,
            "seconds": window.drift_window_seconds,
            "min_samples": window.drift_min_samples,
        },
        "reports": [r.to_dict() for r in reports],
    }
    if not reports:
        monitor = state.service.drift.get(name)
        body["note"] = no_report_note(
            name,
            window,
            pending=monitor.pending() if monitor is not None else None,
            has_profile=monitor.active if monitor is not None else None,
        )
    return body
