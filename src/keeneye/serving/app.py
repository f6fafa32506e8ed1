"""``create_app(settings)``: the keeneye HTTP API and web page."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from keeneye.domain import InvalidInput, KeeneyeError, NotFound
from keeneye.monitoring.metrics import Metrics
from keeneye.pipelines import ModelNotReady, ModelRuntime, PipelineCatalog
from keeneye.registry import ModelRegistry
from keeneye.serving.limits import InflightLimiter, RateLimiter
from keeneye.serving.service import PredictionService
from keeneye.settings import Settings
from keeneye.store import open_cache, open_object_store, open_results_db

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class AppState:
    """Everything a request handler needs, built once in the lifespan."""

    settings: Settings
    catalog: PipelineCatalog
    registry: ModelRegistry
    runtime: ModelRuntime
    service: PredictionService
    metrics: Metrics
    rate: dict[str, RateLimiter]  # per pipeline: the spec's limits, else the global settings
    inflight: dict[str, InflightLimiter]
    require_api_key: bool


async def open_state(settings: Settings, *, poll_aliases: bool = True) -> AppState:
    """Open every backend and load the served models; the API and ``keeneye predict`` share this."""
    db = open_results_db(settings)
    db.ensure_schema()
    objects = open_object_store(settings)
    cache = open_cache(settings)
    metrics = Metrics()
    catalog = PipelineCatalog(settings)
    registry = ModelRegistry(settings, events=db)
    runtime = ModelRuntime(settings, catalog, registry, metrics)
    await runtime.start(poll=poll_aliases)
    serving = settings.serving
    require_key = serving.require_api_key
    if require_key is None:
        require_key = not is_loopback(serving.host)
    return AppState(
        settings=settings,
        catalog=catalog,
        registry=registry,
        runtime=runtime,
        service=PredictionService(settings, catalog, runtime, db, objects, cache, metrics),
        metrics=metrics,
        rate={
            n: RateLimiter(
                catalog.get(n).limits.rate_per_second or serving.rate_limit_per_second,
                catalog.get(n).limits.burst or serving.rate_limit_burst,
            )
            for n in catalog.names()
        },
        inflight={
            n: InflightLimiter(catalog.get(n).limits.max_inflight or serving.max_inflight)
            for n in catalog.names()
        },
        require_api_key=require_key,
    )


async def close_state(state: AppState) -> None:
    await asyncio.to_thread(state.service.drift.flush_all)  # a partial drift window still counts
    await state.runtime.stop()
    state.service.cache.close()


def create_app(settings: Settings, *, poll_aliases: bool = True) -> FastAPI:
    """Build the app. Backends open in the lifespan, so importing or creating the app does no I/O."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await open_state(settings, poll_aliases=poll_aliases)
        app.state.keeneye = state
        try:
            yield
        finally:
            await close_state(state)

    app = FastAPI(
        title="keeneye",
        version=_version(),
        description="Turn image and video streams into decisions. Predictions, observations, models.",
        lifespan=lifespan,
    )

    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status, content={"reason": exc.reason, "detail": exc.message, "fix": exc.fix}
        )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(
            status_code=404, content={"reason": "not_found", "detail": exc.message, "fix": exc.fix}
        )

    @app.exception_handler(ModelNotReady)
    async def _not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "10"},
            content={"reason": "model_not_ready", "detail": exc.message, "fix": exc.fix},
        )

    @app.exception_handler(KeeneyeError)
    async def _keeneye(request: Request, exc: KeeneyeError) -> JSONResponse:
        return JSONResponse(
            status_code=500, content={"reason": "error", "detail": exc.message, "fix": exc.fix}
        )

    from keeneye.serving.routes import (
        alerts,
        drift,
        feedback,
        monitoring,
        observations,
        pipelines,
        predict,
        review,
        rollout,
        runs,
        system,
        system_view,
        web,
    )

    app.include_router(system.router)
    app.include_router(system_view.router)
    app.include_router(predict.router)
    app.include_router(observations.router)
    app.include_router(pipelines.router)
    app.include_router(web.router)
    app.include_router(drift.router)
    app.include_router(feedback.router)
    app.include_router(alerts.router)
    app.include_router(monitoring.router)
    app.include_router(review.router)
    app.include_router(runs.router)
    app.include_router(rollout.router)
    app.mount("/static", StaticFiles(packages=[("keeneye.web", "static")]), name="static")
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keeneye")
    except PackageNotFoundError:
        return "0.0.0"
