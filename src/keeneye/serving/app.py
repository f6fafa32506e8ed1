"""``create_app(settings)``: the keeneye HTTP API and web page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from keeneye.domain import InvalidInput, KeeneyeError, NotFound
from keeneye.pipelines import ModelNotReady
from keeneye.serving.limits import Refused
from keeneye.serving.load import report_load
from keeneye.serving.routes import (
    alerts,
    browse,
    drift,
    feedback,
    fields,
    fields_page,
    images,
    index_maps,
    lines,
    login,
    model_aliases,
    model_evaluation,
    monitoring,
    observation_list,
    observations,
    overview,
    pipelines,
    predict,
    review,
    rollout,
    runs,
    shell,
    smartcut,
    smartcut_studio,
    system,
    system_view,
    web,
)
from keeneye.serving.routes.login import login_redirect
from keeneye.serving.routes.shell import not_found, wants_html
from keeneye.serving.schemas import http_error_body, invalid_request_body
from keeneye.serving.security import BodyTooLarge, SecurityMiddleware
from keeneye.serving.state import AppState, close_state, open_state
from keeneye.settings import Settings, load_settings, mask_secrets_in_logs
from keeneye.store import TRANSIENT_ERRORS, outage_of, outage_reason, retry_after_seconds

log = logging.getLogger(__name__)


async def _drift_ticks(state: AppState) -> None:
    """Every ``drift_publish_seconds``: publish this process's drift samples to the pipeline-wide
    window and close a window whose time is up, also while no request arrives (docs/drift.md)."""
    interval = state.settings.monitoring.drift_publish_seconds
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(state.service.drift.tick)  # never raises: errors are counted


def app_from_environment() -> FastAPI:
    """The app of one ``keeneye serve --workers N`` process: uvicorn imports this in every process it
    starts, and the settings come from the environment the parent prepared."""
    return create_app(load_settings())


def create_app(settings: Settings, *, poll_aliases: bool = True) -> FastAPI:
    """Build the app. Backends open in the lifespan, so importing or creating the app does no I/O."""
    mask_secrets_in_logs()  # no password of a URL, no API key in any log line (docs/security.md)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await open_state(settings, poll_aliases=poll_aliases)
        app.state.keeneye = state
        ticker = asyncio.create_task(_drift_ticks(state), name="keeneye-drift-tick")
        loads = asyncio.create_task(report_load(state.load), name="keeneye-load-tick")  # kind="api"
        try:
            yield
        finally:
            for task in (ticker, loads):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(smartcut.close_smartcut, app.state)
            await close_state(state)

    app = FastAPI(
        title="keeneye",
        version=_version(),
        description="Turn image and video streams into decisions. Predictions, observations, models.",
        lifespan=lifespan,
        docs_url=None,  # served by routes/shell.py from the vendored assets: no CDN
        redoc_url=None,
    )

    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status, content={"reason": exc.reason, "detail": exc.message, "fix": exc.fix}
        )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return not_found(request, exc.message, exc.fix)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc, BodyTooLarge):  # a body streamed past its limit (serving/security.py)
            return JSONResponse(status_code=413, content=exc.body())
        if exc.status_code == 404 and wants_html(request):  # a browser on an unknown page
            return not_found(request, f"There is no page at {request.url.path}.")
        if exc.status_code == 401 and wants_html(request) and request.method in ("GET", "HEAD"):
            return login_redirect(request)  # a browser without a valid key: log in, then come back
        if exc.status_code < 400:
            return await http_exception_handler(request, exc)
        body = http_error_body(exc.status_code, exc.detail)  # every refusal: reason, detail, fix
        return JSONResponse(status_code=exc.status_code, content=body, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=invalid_request_body(exc.errors()))

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:  # the flood guard (limits.py)
        return JSONResponse(
            status_code=exc.status,
            headers={"Retry-After": exc.retry_after_header},
            content={"reason": exc.reason, "detail": exc.message, "fix": exc.fix},
        )

    @app.exception_handler(ModelNotReady)
    async def _not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "10"},
            content={"reason": "model_not_ready", "detail": exc.message, "fix": exc.fix},
        )

    async def _outage(request: Request, exc: Exception) -> JSONResponse:
        """A dependency is down (database, object store, full disk): 503 + Retry-After with a stable
        reason, so a client backs off and retries (docs/operations.md, "When a dependency goes
        down"). Anything that is not an outage stays what it was: a 500."""
        outage = outage_of(exc, database_url=settings.database_url)
        if outage is None:
            raise exc
        reason = outage_reason(outage)
        log.warning("answering 503 %s: %s", reason, outage.message, extra={"path": request.url.path})
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": str(retry_after_seconds(outage))},
            content={"reason": reason, "detail": outage.message, "fix": outage.fix},
        )

    for kind in TRANSIENT_ERRORS:
        app.add_exception_handler(kind, _outage)

    @app.exception_handler(KeeneyeError)
    async def _keeneye(request: Request, exc: KeeneyeError) -> JSONResponse:
        return JSONResponse(
            status_code=500, content={"reason": "error", "detail": exc.message, "fix": exc.fix}
        )

    app.include_router(shell.router)
    app.include_router(login.router)
    app.include_router(system.router)
    app.include_router(system_view.router)
    app.include_router(predict.router)
    app.include_router(observations.router)
    app.include_router(pipelines.router)
    app.include_router(web.router)
    app.include_router(overview.router)
    app.include_router(browse.router)
    app.include_router(drift.router)
    app.include_router(feedback.router)
    app.include_router(alerts.router)
    app.include_router(fields.router)
    app.include_router(fields_page.router)
    app.include_router(monitoring.router)
    app.include_router(lines.router)
    app.include_router(review.router)
    app.include_router(images.router)
    app.include_router(index_maps.router)
    app.include_router(runs.router)
    app.include_router(rollout.router)
    app.include_router(model_aliases.router)
    app.include_router(model_evaluation.router)
    app.include_router(observation_list.router)
    app.include_router(smartcut.router)
    app.include_router(smartcut_studio.router)
    app.mount("/static", StaticFiles(packages=[("keeneye.web", "static")]), name="static")
    app.add_middleware(SecurityMiddleware, settings=settings)  # headers, CSP, body limits, cross-site
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keeneye")
    except PackageNotFoundError:
        return "0.0.0"
