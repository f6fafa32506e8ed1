"""Pages to browse what keeneye holds: models, training runs, alerts and observations.

Models and runs are rendered on the server from the registry, the rollout state, the model audit log
and the runs table (the same calls as ``GET /v1/models``, ``…/rollout``, ``…/models/events`` and
``GET /v1/pipelines/{name}/runs``); a run started by the scheduler shows the tail of its log. The
alerts and observations pages draw in the browser from the JSON API (``/v1/alerts``,
``/v1/observations``). Every action a page offers — promote, roll back, start a rollout, acknowledge,
silence — is a call to the audited API routes with a reason, exactly as the CLI does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from keeneye.domain import JsonObject, ObservationStatus
from keeneye.lifecycle.runs import list_runs
from keeneye.lifecycle.triggers import retrain_log_path
from keeneye.monitoring.alerts.rules import AlertRule, load_rules
from keeneye.registry.versions import FORCED_TAG_PREFIX, TAG_DATA_VERSION
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.routes.model_aliases import event_json
from keeneye.serving.routes.shell import templates
from keeneye.settings import Settings
from keeneye.store import TrainingRunRecord

router = APIRouter(include_in_schema=False, dependencies=[VIEWER])

RUNS_PER_PIPELINE = 20
EVENTS_PER_PIPELINE = 8
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024


def _models(state: StateDep) -> list[JsonObject]:
    out: list[JsonObject] = []
    for name in state.catalog.names():
        spec = state.catalog.get(name)
        served = state.runtime.served().get(name)
        versions = sorted(state.registry.versions(spec.model.name), key=lambda v: v.created, reverse=True)
        rollout = state.db.read_rollout(name)
        out.append(
            {
                "pipeline": name,
                "title": spec.title,
                "model": spec.model.name,
                "alias": spec.model.alias,
                "served": served.version if served else None,
                "versions": [
                    {
                        **v.to_dict(),
                        "data_version": v.tags.get(TAG_DATA_VERSION),
                        "forced": [  # the prefix is common, so sorting the tags sorts the names
                            k.removeprefix(FORCED_TAG_PREFIX)
                            for k in sorted(v.tags)
                            if k.startswith(FORCED_TAG_PREFIX)
                        ],
                    }
                    for v in versions
                ],
                "previous": any("previous" in v.aliases for v in versions),
                "rollout": rollout.to_dict() if rollout is not None and rollout.active else None,
                "events": [
                    event_json(e) for e in state.db.model_events(spec.model.name, EVENTS_PER_PIPELINE)
                ],
            }
        )
    return out


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str | None:
    """The last ``lines`` lines of a log (read from its last 64 KiB), None when there is no such file."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _run_view(settings: Settings, run: TrainingRunRecord) -> JsonObject:
    """A run as the page shows it: its record, and the tail of its log when the scheduler started it."""
    return {**run.to_dict(), "log": log_tail(retrain_log_path(settings, run.pipeline, run.id))}


def alert_units(rules: list[AlertRule]) -> dict[str, str]:
    """How the pages print each rule's value: ``s`` (a latency in seconds), ``ratio`` (a share, as a
    percentage), ``count``, or ``""`` (a plain number, e.g. a 0/1 alarm flag)."""
    units = {}
    for r in rules:
        metric = r.metric or ""
        if r.kind == "quantile" or metric.endswith("_seconds"):
            units[r.name] = "s"
        elif r.kind == "rate_ratio" or "utilization" in metric:
            units[r.name] = "ratio"
        elif r.kind == "increase" or metric.endswith("_total"):
            units[r.name] = "count"
        else:
            units[r.name] = ""
    return units


def rule_units(state: StateDep) -> dict[str, str]:
    return alert_units(load_rules(state.settings.alerting.rules))


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request, state: StateDep) -> HTMLResponse:
    pipelines = await asyncio.to_thread(_models, state)
    return templates.TemplateResponse(request, "models.html", {"pipelines": pipelines})


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(
    request: Request, state: StateDep, pipeline: str | None = Query(None, description="only this one")
) -> HTMLResponse:
    names = state.catalog.names()
    if pipeline is not None:
        state.catalog.get(pipeline)  # NotFound → the 404 page, naming the pipelines
        names = [pipeline]
    runs = {
        n: [
            _run_view(state.settings, r)
            for r in await asyncio.to_thread(list_runs, state.db, n, limit=RUNS_PER_PIPELINE)
        ]
        for n in names
    }
    return templates.TemplateResponse(
        request,
        "runs.html",
        {"runs": runs, "pipeline": pipeline, "pipelines": state.catalog.names()},
    )


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, state: StateDep) -> HTMLResponse:
    units = await asyncio.to_thread(rule_units, state)
    return templates.TemplateResponse(request, "alerts.html", {"units": units})


@router.get("/observations", response_class=HTMLResponse)
def observations_page(request: Request, state: StateDep) -> HTMLResponse:
    """The list and its filters draw from ``GET /v1/observations``; ``?id=…`` opens one."""
    return templates.TemplateResponse(
        request,
        "observations.html",
        {"pipelines": state.catalog.names(), "statuses": [s.value for s in ObservationStatus]},
    )
