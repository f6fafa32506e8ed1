"""Training runs of a pipeline: why each (re)training started and what it produced."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query

from keeneye.lifecycle.runs import MAX_RUNS, list_runs
from keeneye.serving.routes.deps import VIEWER, ClientDep, DbDep, StateDep
from keeneye.serving.routes.params import PipelineName
from keeneye.serving.schemas import API_ERRORS, ErrorResponse

router = APIRouter(tags=["lifecycle"], dependencies=[VIEWER], responses=API_ERRORS)


@router.get(
    "/v1/pipelines/{name}/runs",
    summary="Training runs of a pipeline, newest first",
    responses={404: {"model": ErrorResponse, "description": "no such pipeline"}},
)
async def get_runs(
    name: PipelineName,
    state: StateDep,
    db: DbDep,
    _client: ClientDep,
    limit: int = Query(20, ge=1, le=MAX_RUNS, description="how many runs"),
) -> dict[str, Any]:
    """Each run's cause (schedule, new_labels, drift, quality_drop, manual), status (queued, running,
    succeeded, refused, failed), what triggered it (``inputs``) and, once finished, its ``outcome``:
    the registered version, the gate result, challenger and champion metrics on the same test split,
    the data version and dataset sizes — or the ``error``."""
    state.catalog.get(name)  # NotFound → 404 with the known names
    runs = await asyncio.to_thread(list_runs, db, name, limit=limit)
    return {"pipeline": name, "runs": [r.to_dict() for r in runs]}
