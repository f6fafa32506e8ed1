"""The monitoring page and its data: ``GET /v1/pipelines/{name}/monitoring`` and the HTML around it.

The JSON is :func:`keeneye.monitoring.summary.pipeline_summary` — computed from the results database
with bounded queries — plus what only this process knows: the pipeline spec (SLO, drift thresholds)
and the model version it serves. The page (``/pipelines/{name}/monitoring``) is server-rendered and
draws its charts in the browser from that JSON, refreshing every 10 seconds; no CDN, works offline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from keeneye.domain import KeeneyeError
from keeneye.monitoring.summary import QualityInputs, pipeline_summary
from keeneye.registry import ModelRegistry
from keeneye.serving.routes.browse import rule_units
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.routes.params import PipelineName
from keeneye.serving.schemas import API_ERRORS
from keeneye.web import environment

log = logging.getLogger(__name__)

router = APIRouter(tags=["monitoring"], dependencies=[VIEWER], responses=API_ERRORS)
pages = APIRouter(include_in_schema=False)  # included in router: its VIEWER applies
_templates = Jinja2Templates(env=environment())

MIN_WINDOW_S = 60
MAX_WINDOW_S = 7 * 24 * 3600
BUCKETS = 60
REFRESH_S = 10


@lru_cache(maxsize=256)
def _reference_metrics(registry: ModelRegistry, model: str, version: str) -> Mapping[str, float]:
    """A registered version's test metrics (immutable once registered, so cached per process)."""
    return registry.get(model, version).metrics


def _reference_for(registry: ModelRegistry, model: str) -> Any:
    def reference(version: str) -> Mapping[str, float]:
        try:
            return _reference_metrics(registry, model, version)
        except KeeneyeError as exc:
            log.info("no reference metrics for %s v%s: %s", model, version, exc.message)
            return {}

    return reference


@router.get(
    "/v1/pipelines/{name}/monitoring",
    summary="Traffic, errors, latency vs SLO, drift, online quality and open alerts of one pipeline",
)
def monitoring_summary(
    name: PipelineName,
    state: StateDep,
    window: Annotated[
        int, Query(ge=MIN_WINDOW_S, le=MAX_WINDOW_S, description="seconds to look back (60 buckets)")
    ] = 3600,
) -> dict[str, Any]:
    spec = state.catalog.get(name)  # NotFound → 404 with the known names
    served = state.runtime.served().get(name)
    monitoring = state.settings.monitoring
    quality = QualityInputs(
        reference_for=_reference_for(state.registry, spec.model.name),
        window_seconds=monitoring.quality_window_seconds,
        min_feedback=monitoring.quality_min_feedback,
        drop=monitoring.quality_drop,
    )
    return pipeline_summary(
        state.db,
        name,
        window_seconds=window,
        buckets=BUCKETS,
        spec=spec,
        served_version=served.version if served else None,
        quality=quality,
    )


def _drift_window_phrase(monitoring: Any) -> str:
    """When a drift window closes, in words for the empty drift card."""
    minutes = monitoring.drift_window_seconds / 60
    return f"a window closes after {monitoring.drift_window_size} predictions or {minutes:g} minutes"


@pages.get("/monitoring")
def monitoring_default(state: StateDep) -> RedirectResponse:
    name = state.settings.serving.default_pipeline
    return RedirectResponse(f"/pipelines/{name}/monitoring", status_code=307)


@pages.get("/pipelines/{name}/monitoring", response_class=HTMLResponse)
def monitoring_page(name: str, request: Request, state: StateDep) -> HTMLResponse:
    spec = state.catalog.get(name)
    served = state.runtime.served().get(name)
    return _templates.TemplateResponse(
        request,
        "monitoring.html",
        {
            "pipeline": spec.name,
            "title": spec.title,
            "pipelines": state.catalog.names(),
            "model_version": served.version if served else None,
            "slo_ms": spec.slo.p95_latency_ms,
            "refresh_s": REFRESH_S,
            "min_feedback": state.settings.monitoring.quality_min_feedback,
            "drift_window": _drift_window_phrase(state.settings.monitoring),
            "units": rule_units(state),
        },
    )


router.include_router(pages)

__all__ = ["router"]
