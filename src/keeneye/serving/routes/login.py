"""The login page: a person pastes an API key; the browser keeps it in a cookie until log out.

``POST /login`` checks the key and sets two cookies, both ``SameSite=Strict`` (``Secure`` when the
request came over https): :data:`~keeneye.serving.routes.deps.KEY_COOKIE` (``HttpOnly``: page scripts
never see the key) and :data:`~keeneye.serving.routes.deps.CSRF_COOKIE`, a random token the pages'
``keeneyeFetch`` (``web/static/api.js``) sends back as the ``X-Keeneye-CSRF`` header on every change.
``POST /logout`` drops both. A browser asking for a page without a valid key, where keys are
required, is sent here by :func:`login_redirect` and comes back to the page after logging in.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from keeneye.serving.routes.deps import (
    CSRF_COOKIE,
    KEY_COOKIE,
    PUBLIC_ROUTE,
    Actor,
    StateDep,
    authenticate,
)
from keeneye.serving.routes.shell import templates

router = APIRouter(include_in_schema=False, dependencies=[PUBLIC_ROUTE])


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (never ``//elsewhere``)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def login_redirect(request: Request) -> RedirectResponse:
    """Send a browser to the login page, remembering the page it asked for."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)


def _signed_in(request: Request, state: StateDep) -> Actor | None:
    try:
        return authenticate(request, state)
    except HTTPException:  # a stale cookie: the page offers to log in again
        return None


def _page(request: Request, state: StateDep, target: str, error: str | None, status: int) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "login.html",
        {
            "next": safe_next(target),
            "error": error,
            "required": state.require_api_key,
            "signed_in": _signed_in(request, state),
        },
        status_code=status,
    )


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request, state: StateDep, target: Annotated[str, Query(alias="next")] = "/"
) -> HTMLResponse:
    return await asyncio.to_thread(_page, request, state, target, None, 200)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    state: StateDep,
    key: Annotated[str, Form()] = "",
    target: Annotated[str, Form(alias="next")] = "/",
) -> Response:
    key = key.strip()
    found = await asyncio.to_thread(state.db.find_api_key, key) if key else None
    if found is None:
        error = "That key is unknown or revoked." if key else "Paste an API key."
        return await asyncio.to_thread(_page, request, state, target, error, 401)
    secure = request.url.scheme == "https"
    done = RedirectResponse(safe_next(target), status_code=303)
    done.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", secure=secure, path="/")
    # Not HttpOnly: the page scripts read it to send it back as the CSRF header (double submit).
    done.set_cookie(
        CSRF_COOKIE, secrets.token_urlsafe(32), httponly=False, samesite="strict", secure=secure, path="/"
    )
    return done


@router.post("/logout")
def logout() -> RedirectResponse:
    done = RedirectResponse("/login", status_code=303)
    for name in (KEY_COOKIE, CSRF_COOKIE):
        done.delete_cookie(name, path="/", samesite="strict")
    return done


__all__ = ["login_redirect", "router", "safe_next"]
