"""``GET /v1/observations``: past observations, filtered and paged; ``…/{id}/trace``: one in full.

The list is newest first by when each observation last changed (for a finished one, when it
finished), filtered by pipeline, status, time range, predicted class, OK/DEFECT decision and
variant, and paged by an opaque ``cursor`` (keyset: a page costs the same however deep it is). It
is what the observations page shows; :meth:`keeneye.store.ResultsDB.find_observations` is the query.

The trace is invariant 5 made visible: the input (hash, size, source, metadata), every answer of
every variant with its model version and latency breakdown, and the feedback it got.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from keeneye.domain import Decision, InvalidInput, JsonObject, NotFound, ObservationStatus, Variant
from keeneye.serving.routes.deps import VIEWER, ClientDep, StateDep
from keeneye.serving.routes.params import ObservationId
from keeneye.serving.schemas import API_ERRORS, ErrorResponse
from keeneye.store import ObservationFilter, ObservationRecord, PredictionRecord

router = APIRouter(tags=["observations"], dependencies=[VIEWER], responses=API_ERRORS)

MAX_PAGE = 200


def encode_cursor(after: tuple[datetime, str]) -> str:
    """The opaque ``cursor`` of a keyset position (``updated_at``, ``id``)."""
    at, obs_id = after
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{obs_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The keyset position of a ``cursor``; 400 for one this API did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, obs_id = raw.split("|", 1)
        when = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput(
            "bad_query",
            f"cursor {cursor[:64]!r} is not one this API handed out",
            status=400,
            fix="pass next_cursor from the previous page unchanged, or leave cursor out for the first page",
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)), obs_id


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # a time without zone is UTC


def answer_json(p: PredictionRecord) -> JsonObject:
    """The short form of an answer in a list row."""
    result = p.result
    return {
        "variant": str(p.variant),
        "model_version": p.model_version,
        "task": p.task,
        "predicted_class": result.get("predicted_class"),
        "predicted_label": result.get("predicted_label"),
        "count": result.get("count"),
        "decision": None if p.decision is None else str(p.decision),
        "confidence": p.confidence,
        "latency_ms": p.latency_ms,
    }


def _links(obs: ObservationRecord) -> dict[str, str | None]:
    base = f"/v1/observations/{obs.id}"
    return {
        "self": base,
        "trace": f"{base}/trace",
        "image": f"{base}/image" if obs.object_key else None,
        "page": f"/observations?id={obs.id}",
    }


def _row(obs: ObservationRecord, answer: PredictionRecord | None) -> JsonObject:
    return {
        "id": obs.id,
        "pipeline": obs.pipeline,
        "status": str(obs.status),
        "reason": obs.reason,
        "source": obs.source,
        "created_at": obs.created_at.isoformat(),
        "updated_at": obs.updated_at.isoformat(),
        "answer": answer_json(answer) if answer else None,
        "links": dict(_links(obs)),
    }


@router.get(
    "/v1/observations",
    summary="Past observations, newest first, filtered and paged",
    responses={
        400: {"model": ErrorResponse, "description": "a cursor this API did not hand out"},
        404: {"model": ErrorResponse, "description": "unknown pipeline"},
    },
)
async def list_observations(
    state: StateDep,
    _client: ClientDep,
    pipeline: Annotated[str | None, Query(description="only this pipeline")] = None,
    status: Annotated[ObservationStatus | None, Query(description="only this status")] = None,
    since: Annotated[
        datetime | None, Query(description="changed at or after (ISO 8601; no zone = UTC)")
    ] = None,
    until: Annotated[datetime | None, Query(description="changed before (ISO 8601; no zone = UTC)")] = None,
    predicted_class: Annotated[
        str | None, Query(alias="class", max_length=256, description="classification: the top class")
    ] = None,
    decision: Annotated[Decision | None, Query(description="OK or DEFECT")] = None,
    variant: Annotated[
        Variant | None,
        Query(description="answered by this variant (rows then show its answer, e.g. a shadow's)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows per page")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page")
    ] = None,
) -> dict[str, Any]:
    """Each row: the observation (status, reason, times) and the answer it shows — the one the client
    got (champion or canary), or with ``variant`` that variant's — with links to the image and the
    full trace. ``next_cursor`` is null on the last page."""
    if pipeline is not None:
        state.catalog.get(pipeline)  # NotFound → 404 naming the pipelines
    where = ObservationFilter(
        pipeline=pipeline,
        status=status,
        since=_utc(since),
        until=_utc(until),
        predicted_class=predicted_class,
        decision=decision,
        variant=variant,
    )
    after = decode_cursor(cursor) if cursor else None
    page = await asyncio.to_thread(state.db.find_observations, where, limit=limit, after=after)
    return {
        "observations": [_row(o, page.answers.get(o.id)) for o in page.observations],
        "next_cursor": encode_cursor(page.next_after) if page.next_after else None,
    }


def _trace(state: StateDep, observation_id: str) -> JsonObject:
    db = state.db
    obs = db.get_observation(observation_id)
    if obs is None:
        raise NotFound(f"no observation {observation_id[:64]!r}")
    predictions = db.predictions_for(observation_id)
    feedback = db.feedback_for(observation_id)
    answered = [p for p in predictions if p.variant in (Variant.champion, Variant.canary)]
    return {
        **_row(obs, answered[-1] if answered else None),
        "content_hash": obs.content_hash,
        "content_type": obs.content_type,
        "size_bytes": obs.size_bytes,
        "metadata": obs.metadata,
        "attempts": obs.attempts,
        "completed_at": obs.completed_at.isoformat() if obs.completed_at else None,
        "predictions": [
            {
                "id": p.id,
                "model_name": p.model_name,
                "model_version": p.model_version,
                "variant": str(p.variant),
                "task": p.task,
                "decision": None if p.decision is None else str(p.decision),
                "confidence": p.confidence,
                "latency_ms": p.latency_ms,
                "timings": p.timings,
                "result": p.result,
                "created_at": p.created_at.isoformat(),
            }
            for p in predictions
        ],
        "feedback": [
            {
                "id": f.id,
                "label": f.label,
                "source": f.source,
                "author": f.author,
                "created_at": f.created_at.isoformat(),
            }
            for f in feedback
        ],
    }


@router.get(
    "/v1/observations/{observation_id}/trace",
    summary="One observation in full: input, every answer with its latency breakdown, feedback",
    responses={404: {"model": ErrorResponse, "description": "no such observation"}},
)
async def observation_trace(
    observation_id: ObservationId, state: StateDep, _client: ClientDep
) -> dict[str, Any]:
    """Invariant 5, traceable: input hash → model name, version and variant of every answer (shadow
    ones included) → latency breakdown (``timings``) → the feedback it got."""
    return await asyncio.to_thread(_trace, state, observation_id)
