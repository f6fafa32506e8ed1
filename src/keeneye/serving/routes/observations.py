"""Asynchronous ingestion: ``POST /v1/pipelines/{name}/observations`` → ``202`` with the id.

The image is durable (object + ``queued`` row) before the answer; a stream worker produces the result,
which ``GET /v1/observations/{id}`` shows.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from keeneye.domain import InvalidInput
from keeneye.serving.routes.deps import OPERATOR, AdmitDep, StateDep
from keeneye.serving.routes.params import PipelineName
from keeneye.serving.routes.predict import _BODY_DOC, _ERRORS, extract_image
from keeneye.serving.schemas import API_ERRORS, ErrorResponse, ObservationAccepted
from keeneye.serving.state import AppState
from keeneye.stream import Ingestor, IngestUnavailable

router = APIRouter(tags=["observations"], dependencies=[OPERATOR], responses=API_ERRORS)

_LOCK = threading.Lock()


def ingestor_of(request: Request, state: AppState) -> Ingestor:
    """One :class:`Ingestor` per app, sharing the app's database and object store; bus opened lazily."""
    app_state = request.app.state
    ingestor: Ingestor | None = getattr(app_state, "keeneye_ingestor", None)
    if ingestor is None:
        with _LOCK:
            ingestor = getattr(app_state, "keeneye_ingestor", None)
            if ingestor is None:
                ingestor = Ingestor(state.settings, catalog=state.catalog, db=state.db, objects=state.objects)
                app_state.keeneye_ingestor = ingestor
    return ingestor


@router.post(
    "/v1/pipelines/{name}/observations",
    status_code=202,
    response_model=ObservationAccepted,
    responses={
        **_ERRORS,
        503: {"model": ErrorResponse, "description": "storage unavailable or busy (Retry-After)"},
    },
    openapi_extra=_BODY_DOC,
    summary="Accept one image for asynchronous processing",
)
async def create_observation(name: PipelineName, request: Request, state: StateDep, _client: AdmitDep) -> Any:
    """Send the image like ``/predict``. The answer (202) comes once the image is durable; poll
    ``links.self`` for the status (``queued`` → ``processing`` → ``done`` | ``rejected`` | ``failed``)."""
    spec = state.catalog.get(name)  # 404 before reading a byte
    limit = spec.input.max_upload_bytes or state.settings.serving.max_upload_bytes
    try:
        data, metadata = await extract_image(request, limit)
        accepted = await asyncio.to_thread(
            ingestor_of(request, state).accept, name, data, metadata, source="http"
        )
    except InvalidInput as exc:
        state.metrics.requests.labels(name, str(exc.status)).inc()
        raise
    except IngestUnavailable as exc:
        state.metrics.requests.labels(name, "503").inc()
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
            content={"reason": exc.reason, "detail": exc.message, "fix": exc.fix},
        )
    state.metrics.requests.labels(name, "202").inc()
    link = f"/v1/observations/{accepted.id}"
    return JSONResponse(
        status_code=202,
        headers={"Location": link},
        content={"id": accepted.id, "status": accepted.status, "links": {"self": link}},
    )
