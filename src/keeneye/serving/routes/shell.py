"""The app shell's own routes: offline API docs and the HTML 404 page.

``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) are FastAPI's pages pointed at the vendored assets in
``keeneye/web/static/vendor`` (see its README), so they render without internet. A browser asking for
a page that does not exist (``Accept: text/html``) gets the shell's 404 page; API clients keep the
JSON body (``reason``, ``detail``, ``fix``) they always got.
"""

from __future__ import annotations

import base64
import hashlib
import re

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
# The docs pages are FastAPI's HTML around the vendored bundles, and the only pages with a policy of
# their own (every other answer gets serving/security.py's strict one). They may load nothing from
# elsewhere either: ReDoc's bundle, for one, links a logo on a CDN, refused before it reaches the
# network. What is looser, and why:
# * the inline <script> that starts Swagger UI (and the OAuth2 redirect page's) is allowed by its
#   SHA-256 alone (:func:`_inline_hashes`), not by 'unsafe-inline';
# * ReDoc styles itself with styled-components, which writes <style> elements at run time, and
#   starts its search index in a Worker made from a blob: URL — so /redoc allows inline styles and
#   blob: workers. Nothing there renders user data as HTML: the page shows the API's own description.
_DOCS_BASE = (
    "default-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _inline_hashes(html: str, tag: str) -> str:
    """The CSP source list of the inline ``<tag>`` blocks of ``html``: one ``'sha256-…'`` each."""
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for kind, body in _INLINE.findall(html)
        if kind == tag
    )


def _local_only(page: HTMLResponse, *, redoc: bool = False) -> HTMLResponse:
    html = bytes(page.body).decode()
    scripts = f"script-src 'self' {_inline_hashes(html, 'script')}".rstrip()
    if redoc:
        styles, workers = "style-src 'self' 'unsafe-inline'", "; worker-src 'self' blob:"
    else:
        styles, workers = f"style-src 'self' {_inline_hashes(html, 'style')}".rstrip(), ""
    page.headers["Content-Security-Policy"] = f"{_DOCS_BASE}; {scripts}; {styles}{workers}"
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
    return _local_only(get_swagger_ui_oauth2_redirect_html())


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} · ReDoc",
        redoc_js_url=VENDOR["redoc_js"],
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,  # no request leaves the machine
    )
    return _local_only(page, redoc=True)


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
