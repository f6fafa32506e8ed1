"""The app shell's own routes: offline API docs and the HTML 404 page.

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) are FastAPI's pages pointed at the vendored assets in
``keeneye/web/static/vendor`` (see its README), so they render without internet. A browser asking for
a page that does not exist (``Accept: text/html``) gets the shell's 404 page; API clients keep the
JSON body (``reason``, ``detail``, ``fix``) they always got.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from keeneye.serving.routes.deps import PUBLIC_ROUTE
from keeneye.web import FAVICON, VENDOR, environment

router = APIRouter(include_in_schema=False, dependencies=[PUBLIC_ROUTE])
templates = Jinja2Templates(env=environment())

OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# The docs pages may load nothing from elsewhere: ReDoc's bundle, for one, links a logo on a CDN.
# The browser refuses such requests before they reach the network.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'"
)


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} · API docs",
        swagger_js_url=VENDOR["swagger_js"],
        swagger_css_url=VENDOR["swagger_css"],
        swagger_favicon_url=FAVICON,
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
    )
    return _local_only(page)


@router.get(OAUTH2_REDIRECT_URL, response_class=HTMLResponse)
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} · ReDoc",
        redoc_js_url=VENDOR["redoc_js"],
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,  # no request leaves the machine
    )
    return _local_only(page)


def wants_html(request: Request) -> bool:
    """A browser navigating to a page: its Accept names text/html (fetch() and API clients do not)."""
    return "text/html" in request.headers.get("accept", "")


def not_found_page(request: Request, detail: str, fix: str | None = None) -> Response:
    """The 404 page of the shell, with what was not found and how to go on."""
    return templates.TemplateResponse(
        request, "404.html", {"detail": detail, "fix": fix, "path": request.url.path}, status_code=404
    )


def not_found(request: Request, detail: str, fix: str | None = None) -> Response:
    """404 as the client wants it: the page for a browser, the JSON body for everyone else."""
    if wants_html(request):
        return not_found_page(request, detail, fix)
    return JSONResponse(status_code=404, content={"reason": "not_found", "detail": detail, "fix": fix})


__all__ = ["not_found", "not_found_page", "router", "templates", "wants_html"]
