"""``/v1/alerts``: the alerts of the built-in rules engine — list, acknowledge, silence.

The scheduler (``keeneye up``) evaluates the rules and writes the alerts; these routes read and act
on the same rows, as ``keeneye alerts`` does.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

from keeneye.domain import InvalidInput
from keeneye.monitoring.alerts.rules import load_rules
from keeneye.monitoring.alerts.store import MAX_LIMIT, AlertStore, alert_json
from keeneye.serving.routes.deps import ClientDep, OperatorDep, StateDep, ViewerDep, audit_name
from keeneye.serving.routes.params import AlertId
from keeneye.serving.schemas import API_ERRORS, AckRequest, SilenceRequest, error_response
from keeneye.serving.state import AppState

router = APIRouter(tags=["alerts"], responses=API_ERRORS)

_STATES = ("active", "all")


def _store(state: AppState) -> AlertStore:
    return AlertStore(state.db)


def _now() -> datetime:
    return datetime.now(UTC)


@router.get(
    "/v1/alerts",
    summary="Active alerts, or the newest alerts of any state",
    responses=error_response(400, "unknown state, or limit out of range"),
)
async def list_alerts(
    app_state: StateDep, _client: ClientDep, _actor: ViewerDep, state: str = "active", limit: int = 200
) -> Any:
    """``state=active`` (default): pending and firing alerts, oldest first. ``state=all``: the newest
    ``limit`` alerts including resolved ones."""
    if state not in _STATES:
        raise InvalidInput(
            "bad_query", f"state must be one of {', '.join(_STATES)}, got {state!r}", status=400
        )
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput("bad_query", f"limit must be between 1 and {MAX_LIMIT}, got {limit}", status=400)
    store = _store(app_state)
    alerts = await asyncio.to_thread(store.list_alerts, active_only=state == "active", limit=limit)
    silenced = await asyncio.to_thread(store.silenced_ids, alerts, _now())
    return {"state": state, "alerts": [{**alert_json(a), "silenced": a.id in silenced} for a in alerts]}


@router.get("/v1/alerts/silences", summary="Silences in force now")
async def list_silences(app_state: StateDep, _client: ClientDep, _actor: ViewerDep) -> Any:
    rows = await asyncio.to_thread(_store(app_state).active_silences, _now())
    return {"silences": [_json(r.to_json()) for r in rows]}


@router.post(
    "/v1/alerts/silences",
    status_code=201,
    summary="Mute notifications of matching alerts for a while",
    responses=error_response(400, "no rule and no labels, unknown rule, bad duration, no reason"),
)
async def create_silence(app_state: StateDep, actor: OperatorDep, body: SilenceRequest) -> Any:
    """Match by ``rule`` and/or ``labels`` (every label must be equal). Alerts keep their state;
    only notifications stop until the silence ends."""
    known = [r.name for r in await asyncio.to_thread(load_rules, app_state.settings.alerting.rules)]
    record = await asyncio.to_thread(
        _store(app_state).silence,
        known,
        rule=body.rule,
        matchers=body.labels,
        duration=body.duration,
        reason=body.reason,
        by=audit_name(actor, body.by),
        now=_now(),
    )
    return JSONResponse(status_code=201, content=_json(record.to_json()))


@router.get(
    "/v1/alerts/{alert_id}",
    summary="One alert and its notification attempts",
    responses=error_response(404, "no such alert"),
)
async def get_alert(alert_id: AlertId, app_state: StateDep, _client: ClientDep, _actor: ViewerDep) -> Any:
    store = _store(app_state)
    record = await asyncio.to_thread(store.get, alert_id)
    sent = await asyncio.to_thread(store.notifications, alert_id)
    return {**alert_json(record), "notifications": [_json(asdict(n)) for n in sent]}


@router.post(
    "/v1/alerts/{alert_id}/ack",
    summary="Acknowledge an alert (stops escalation)",
    responses={**error_response(404, "no such alert"), **error_response(409, "already resolved")},
)
async def ack_alert(
    alert_id: AlertId,
    app_state: StateDep,
    actor: OperatorDep,
    body: Annotated[AckRequest | None, Body()] = None,
) -> Any:
    """Someone is on it: a critical alert is not escalated to the next channel. Idempotent — a second
    acknowledgement keeps the first one's name and time."""
    by = audit_name(actor, body.by if body else None)
    record = await asyncio.to_thread(_store(app_state).ack, alert_id, by, _now())
    return alert_json(record)


def _json(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}
