"""Dependencies shared by the routers: app state, API-key check, rate limit, in-flight bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from keeneye.serving.app import AppState
from keeneye.serving.limits import retry_after_header


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.keeneye
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def api_key_of(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


def client_identity(request: Request, state: StateDep) -> str:
    """Who the rate limit counts against: the API key when there is one, else the client address.

    Refuses with 401 when keys are required and the request has no valid one.
    """
    key = api_key_of(request)
    if state.require_api_key:
        if key is None:
            raise HTTPException(
                401,
                detail="an API key is required: send it as 'X-API-Key: <key>' "
                "(create one: keeneye keys create)",
            )
        key_id = state.service.db.verify_api_key(key)
        if key_id is None:
            raise HTTPException(401, detail="unknown or revoked API key")
        return f"key:{key_id}"
    host = request.client.host if request.client else "unknown"
    return f"addr:{host}"


ClientDep = Annotated[str, Depends(client_identity)]


@contextmanager
def admitted(state: AppState, pipeline: str, client: str) -> Iterator[None]:
    """Rate limit (429) then the in-flight bound (503), both with Retry-After, for one pipeline.

    Routes whose pipeline is in the path use :func:`admit` (a dependency); routes that learn the
    pipeline later (feedback: from the observation) enter this directly.
    """
    rate, inflight = state.rate.get(pipeline), state.inflight.get(pipeline)
    if rate is None or inflight is None:
        state.catalog.get(pipeline)  # raises NotFound with the known names
        raise AssertionError("every catalogued pipeline has limiters")
    wait = rate.acquire(client)
    if wait > 0:
        state.metrics.requests.labels(pipeline, "429").inc()
        raise HTTPException(
            429,
            detail="rate limit exceeded for this client",
            headers={"Retry-After": retry_after_header(wait)},
        )
    if not inflight.try_enter():
        state.metrics.requests.labels(pipeline, "503").inc()
        raise HTTPException(
            503, detail="server busy: too many requests in flight", headers={"Retry-After": "1"}
        )
    state.metrics.inflight.inc()
    try:
        yield
    finally:
        inflight.leave()
        state.metrics.inflight.dec()


async def admit(request: Request, state: StateDep, client: ClientDep) -> AsyncIterator[str]:
    """Dependency form of :func:`admitted` for routes with the pipeline in the path (``{name}``)."""
    pipeline = request.path_params.get("name", state.settings.serving.default_pipeline)
    with admitted(state, pipeline, client):
        yield client


AdmitDep = Annotated[str, Depends(admit)]
