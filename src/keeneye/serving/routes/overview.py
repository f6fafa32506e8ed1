"""The overview page (``/``) and the system page (``/system``).

The overview shows every pipeline at once: the champion version it serves, traffic of the last hour,
p95 latency against its SLO, firing alerts, and — under ``keeneye up`` — its workers and queue lag.
It reads what the other pages read: :func:`keeneye.monitoring.summary.pipeline_summary` (bounded
queries on the results database) and the supervisor's view behind ``/v1/system``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from keeneye.domain import JsonObject
from keeneye.monitoring.summary import pipeline_summary
from keeneye.scaling import SystemStatus, read_status
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.routes.shell import templates

router = APIRouter(include_in_schema=False, dependencies=[VIEWER])

WINDOW_S = 3600
BUCKETS = 30


@dataclass(frozen=True)
class PipelineCard:
    """One pipeline on the overview."""

    name: str
    title: str
    task: str
    model: str
    champion: str | None
    predictions: int
    rate_now: float
    p95_ms: float | None
    slo_ms: float | None
    within_slo: bool | None
    errors: int
    firing: list[JsonObject]  # the firing alerts, as the alerts API lists them
    pending: int
    workers: Any  # the supervisor's PipelineView (replicas, lag, utilisation); None without keeneye up
    series: dict[str, list[Any]]


def _card(state: StateDep, name: str, status: SystemStatus) -> PipelineCard:
    spec = state.catalog.get(name)
    served = state.runtime.served().get(name)
    summary = pipeline_summary(state.db, name, window_seconds=WINDOW_S, buckets=BUCKETS, spec=spec)
    traffic, latency = summary["traffic"], summary["latency"]
    alerts = summary["alerts"]
    system = status.system if status.running else None
    return PipelineCard(
        name=name,
        title=spec.title,
        task=spec.task.value,
        model=spec.model.name,
        champion=served.version if served else None,
        predictions=int(traffic["totals"]["predictions"]),
        rate_now=float(traffic["rate_now_per_second"] or 0.0),
        p95_ms=latency["p95_ms"],
        slo_ms=latency["slo_ms"],
        within_slo=latency["within_slo"],
        errors=int(traffic["totals"]["rejected"]) + int(traffic["totals"]["failed"]),
        firing=[a for a in alerts if a["state"] == "firing"],
        pending=sum(1 for a in alerts if a["state"] == "pending"),
        workers=system.pipelines.get(name) if system else None,
        series={
            "t": traffic["series"]["t"],
            "predictions": traffic["series"]["predictions"],
            "p95_ms": latency["series"]["p95_ms"],
        },
    )


@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, state: StateDep) -> HTMLResponse:
    status = await asyncio.to_thread(read_status, state.settings.home)
    cards = [await asyncio.to_thread(_card, state, name, status) for name in state.catalog.names()]
    firing = sum(len(c.firing) for c in cards)
    return templates.TemplateResponse(
        request,
        "overview.html",
        {
            "cards": cards,
            "status": status,
            "firing": firing,
            "window_s": WINDOW_S,
            "series": {c.name: {**c.series, "slo_ms": c.slo_ms} for c in cards},
        },
    )


@router.get("/system", response_class=HTMLResponse)
async def system_page(request: Request, state: StateDep) -> HTMLResponse:
    status = await asyncio.to_thread(read_status, state.settings.home)
    return templates.TemplateResponse(request, "system.html", {"status": status})
