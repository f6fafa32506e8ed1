"""The line dashboard: ``GET /v1/lines`` (its data) and the ``/lines`` page around it.

The JSON is :func:`keeneye.monitoring.lines.lines_summary` over what the edge runners
(``keeneye inspect``) stored: per line / camera / SKU the OK, DEFECT and fail-safe counts and the
defect rate over a window, throughput, decision latency p50 / p95 against the pipeline's deadline, the
PLC link and its last acknowledged write, and the newest defects with their outlines. The page polls it
every 2 seconds (docs/line-inspection.md, *The line dashboard*). Viewer role.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from keeneye.domain import InvalidInput
from keeneye.edge import DEFAULT_DEADLINE_MS
from keeneye.monitoring.lines import LineQuery, lines_summary
from keeneye.pipelines import PipelineSpec
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.routes.shell import templates
from keeneye.serving.schemas import API_ERRORS
from keeneye.serving.state import AppState

router = APIRouter(tags=["lines"], dependencies=[VIEWER], responses=API_ERRORS)
pages = APIRouter(include_in_schema=False)  # included in router: its VIEWER applies

DEFAULT_PIPELINE = "line-inspection"
REFRESH_S = 2
MAX_MINUTES = 7 * 24 * 60


def _line_spec(state: AppState, pipeline: str) -> PipelineSpec:
    spec = state.catalog.get(pipeline)  # NotFound → 404 naming the known pipelines
    if spec.decision.kind != "ok-defect":
        lines = [n for n in state.catalog.names() if state.catalog.get(n).decision.kind == "ok-defect"]
        raise InvalidInput(
            "not_a_line_pipeline",
            f"{pipeline} makes no OK/DEFECT decision, so no line runs it",
            status=400,
            fix="use ?pipeline=" + (" or ?pipeline=".join(lines) or DEFAULT_PIPELINE),
        )
    return spec


@router.get(
    "/v1/lines",
    summary="Per line and camera: OK/DEFECT counts and rate, throughput, latency vs deadline, PLC link, "
    "last defects",
)
def lines(
    state: StateDep,
    pipeline: Annotated[str, Query(description="an OK/DEFECT pipeline")] = DEFAULT_PIPELINE,
    minutes: Annotated[int, Query(ge=1, le=MAX_MINUTES, description="window to count over")] = 60,
    defects: Annotated[int, Query(ge=0, le=100, description="how many of the newest defects")] = 12,
    line: Annotated[
        str | None, Query(min_length=1, max_length=64, description="only this line (default: all)")
    ] = None,
) -> dict[str, Any]:
    spec = _line_spec(state, pipeline)
    deadline = spec.decision.deadline_ms or DEFAULT_DEADLINE_MS
    query = LineQuery(pipeline=spec.name, minutes=minutes, defects=defects, line=line)
    return lines_summary(state.db, query, deadline_ms=deadline)


@pages.get("/lines", response_class=HTMLResponse)
def lines_page(
    request: Request,
    state: StateDep,
    pipeline: Annotated[str, Query(description="an OK/DEFECT pipeline")] = DEFAULT_PIPELINE,
) -> HTMLResponse:
    spec = _line_spec(state, pipeline)
    return templates.TemplateResponse(
        request,
        "lines.html",
        {
            "pipeline": spec.name,
            "title": spec.title or spec.name,
            "deadline_ms": spec.decision.deadline_ms or DEFAULT_DEADLINE_MS,
            "refresh_s": REFRESH_S,
        },
    )


router.include_router(pages)

__all__ = ["router"]
