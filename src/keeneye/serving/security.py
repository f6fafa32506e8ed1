"""Web security of every answer, in one ASGI middleware (docs/security.md, "Web security").

:class:`SecurityMiddleware` wraps the whole app, so it covers pages, API answers, static files, the
docs and every error:

* **Headers.** A strict Content-Security-Policy (:func:`content_security_policy`: everything is
  self-hosted, so ``default-src 'self'`` and no ``'unsafe-inline'`` / ``'unsafe-eval'`` for scripts or
  styles; a route that sets its own policy keeps it — only the API docs do, see
  ``routes/shell.py``), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
  ``X-Frame-Options: DENY``, a ``Permissions-Policy`` that turns off camera, microphone, geolocation,
  payment and USB, ``Cross-Origin-Opener-Policy: same-origin``, and ``Strict-Transport-Security`` on
  answers served over https (``serving.hsts_max_age_seconds``, 0 = never).
* **Cross-site changes.** A request that may change something (not GET / HEAD / OPTIONS) which a
  browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site`` is refused (403 ``cross_site``) before
  it reaches a route: another site (or another port of this host) cannot submit a form here — the
  login form included. It backs up the double-submit CSRF check of cookie-authenticated requests
  (``routes/deps.py``); API clients send no ``Sec-Fetch-*`` header and are not concerned.
* **Body limits.** Every request body is bounded: :data:`UPLOAD_ROUTES` take uploads up to their
  settings (an image of a pipeline, a video, a chunk), every other route up to
  ``serving.max_body_bytes``. A ``Content-Length`` over the limit is refused before a byte is read; a
  body streamed without one is counted and cut off when it passes the limit. Both answer 413 with
  reason ``too_large`` and the setting to raise. The routes keep their own, finer checks inside.

:func:`confine` is the one check for a path a request names (a video to read, a file to serve): it
must resolve, symlinks followed, inside one of the configured folders.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keeneye.domain import InvalidInput, NotFound
from keeneye.serving.state import AppState
from keeneye.settings import Settings
from keeneye.video.chunks import CHUNK_FRAMES, MAX_FRAME_BYTES
from keeneye.video.errors import BAD_CHUNK, VIDEO_TOO_LARGE

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A browser's own label of where a request comes from; "none" is the user typing the address.
CROSS_SITE = frozenset({"cross-site", "same-site"})
# Above an upload route's own limit: multipart framing, and room for the route's own check (on the
# Content-Length, or on the file as it is copied) to answer first with its own reason
# (video_too_large, …). This cap is the outer bound, e.g. for a chunked body the form parser would
# otherwise spool whole before the route sees it.
UPLOAD_SLACK = 16 * 1024 * 1024

PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


def content_security_policy(settings: Settings) -> str:
    """The policy of every page and answer. Images may also be ``data:`` (the pages' inline icons,
    Leaflet's) and ``blob:`` (a photo shown before it is sent, the NDVI overlay), and come from the
    basemap's tile server when ``serving.basemap_url`` names one; media are ``blob:`` too (the studio
    plays a video from the user's disk)."""
    images = ["'self'", "data:", "blob:"]
    basemap = urlsplit(settings.serving.basemap_url) if settings.serving.basemap_url else None
    if basemap is not None and basemap.scheme in ("http", "https") and basemap.netloc:
        images.append(f"{basemap.scheme}://{basemap.netloc}")
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": " ".join(images),
        "media-src": "'self' blob:",
        "font-src": "'self'",
        "connect-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def security_headers(settings: Settings, *, https: bool) -> dict[str, str]:
    """The headers every answer carries (the CSP only when the route set none)."""
    headers = {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Permissions-Policy": PERMISSIONS_POLICY,
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if https and settings.serving.hsts_max_age_seconds > 0:
        headers["Strict-Transport-Security"] = f"max-age={settings.serving.hsts_max_age_seconds}"
    return headers


@dataclass(frozen=True)
class BodyLimit:
    """A request body's limit: the configured one (``limit``, what the answer names) and the bytes
    enforced here (``limit`` plus :data:`UPLOAD_SLACK` on an upload route); the refusal's reason
    (the route's own: ``too_large``, ``video_too_large``, ``bad_chunk``) and its fix."""

    limit: int
    fix: str
    reason: str = "too_large"
    slack: int = 0

    @property
    def max_bytes(self) -> int:
        return self.limit + self.slack


def _pipeline_upload(settings: Settings, state: AppState | None, params: dict[str, str]) -> BodyLimit:
    name = params.get("name", settings.serving.default_pipeline)
    limit = settings.serving.max_upload_bytes
    if state is not None:
        with contextlib.suppress(NotFound):  # an unknown pipeline: the route answers 404, names known
            limit = state.catalog.get(name).input.max_upload_bytes or limit
    return BodyLimit(limit, _raise("KEENEYE_SERVING__MAX_UPLOAD_BYTES"), slack=UPLOAD_SLACK)


def _video_upload(settings: Settings, state: AppState | None, params: dict[str, str]) -> BodyLimit:
    limit = settings.smartcut.max_video_bytes
    return BodyLimit(limit, _raise("KEENEYE_SMARTCUT__MAX_VIDEO_BYTES"), VIDEO_TOO_LARGE, UPLOAD_SLACK)


def _chunk_upload(settings: Settings, state: AppState | None, params: dict[str, str]) -> BodyLimit:
    fix = f"send at most {CHUNK_FRAMES} frames of at most {MAX_FRAME_BYTES} bytes a chunk (docs/smartcut.md)"
    return BodyLimit(CHUNK_FRAMES * MAX_FRAME_BYTES, fix, BAD_CHUNK, UPLOAD_SLACK)


def _raise(setting: str) -> str:
    return f"send less, or raise {setting}"


LimitOf = Callable[[Settings, AppState | None, dict[str, str]], BodyLimit]

# (method, route path) → its upload limit; every other route: serving.max_body_bytes. A test checks
# that each names a route of the app, so a renamed route cannot silently fall back to the small cap.
UPLOAD_ROUTES: dict[tuple[str, str], LimitOf] = {
    ("POST", "/v1/pipelines/{name}/predict"): _pipeline_upload,
    ("POST", "/v1/pipelines/{name}/observations"): _pipeline_upload,
    ("POST", "/predict"): _pipeline_upload,
    ("POST", "/v1/smartcut/requests"): _video_upload,
    ("POST", "/v1/smartcut/requests/{uid}/chunks"): _chunk_upload,
}
_COMPILED = [(method, compile_path(path)[0], limit) for (method, path), limit in UPLOAD_ROUTES.items()]


def body_limit(settings: Settings, state: AppState | None, method: str, path: str) -> BodyLimit:
    """The body limit of one request (see :data:`UPLOAD_ROUTES`)."""
    for route_method, pattern, limit in _COMPILED:
        if route_method == method and (found := pattern.match(path)) is not None:
            return limit(settings, state, found.groupdict())
    return BodyLimit(settings.serving.max_body_bytes, _raise("KEENEYE_SERVING__MAX_BODY_BYTES"))


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes its limit. An ``HTTPException`` so that
    FastAPI's body parsing passes it on instead of answering 400; :meth:`body` is the 413's."""

    def __init__(self, limit: BodyLimit, size: int | None) -> None:
        self.limit = limit
        self.size = size
        shown = f" is {size} bytes," if size is not None else " is"
        super().__init__(413, detail=f"the request body{shown} over the limit of {limit.limit} bytes")

    def body(self) -> dict[str, str]:
        return {
            "reason": self.limit.reason,
            "detail": str(self.detail),
            "fix": self.limit.fix,
        }


def _json(status: int, content: dict[str, str]) -> tuple[Message, Message]:
    data = json.dumps(content).encode()
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
    }
    return start, {"type": "http.response.body", "body": data}


class SecurityMiddleware:
    """See the module docstring. ``settings`` are the app's; the pipelines' upload limits are read
    from the app state once the lifespan opened it."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._https_headers = _encoded(security_headers(settings, https=True))
        self._http_headers = _encoded(security_headers(settings, https=False))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._https_headers if scope.get("scheme") == "https" else self._http_headers
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    if name not in headers:  # a route's own (looser, documented) CSP wins
                        headers[name] = value
            await send(message)

        async def refuse(status: int, content: dict[str, str]) -> None:
            for message in _json(status, content):
                await send_secured(message)

        method, headers = scope["method"], Headers(scope=scope)
        if method not in SAFE_METHODS and headers.get("sec-fetch-site", "") in CROSS_SITE:
            await refuse(403, _CROSS_SITE)
            return
        state: AppState | None = getattr(getattr(scope.get("app"), "state", None), "keeneye", None)
        limit = body_limit(self.settings, state, method, scope["path"])
        declared = _content_length(headers)
        if declared is not None and declared > limit.max_bytes:
            await refuse(413, BodyTooLarge(limit, declared).body())
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise BodyTooLarge(limit, None)
            return message

        try:
            await self.app(scope, receive_limited, send_secured)
        except BodyTooLarge as exc:  # raised where no handler answered it (e.g. a streaming reader)
            if started:
                raise
            await refuse(413, exc.body())


_CROSS_SITE = {
    "reason": "cross_site",
    "detail": "another site may not change anything here (the browser sent Sec-Fetch-Site: cross-site "
    "or same-site)",
    "fix": "use keeneye's own pages, or call the API with an X-API-Key header from a program",
}


def _encoded(headers: dict[str, str]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in headers.items()]


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.isdigit():
        return None  # the server (h11 / httptools) refuses a malformed one itself
    return int(value)


def confine(raw: str | Path, roots: Iterable[Path], *, setting: str) -> Path:
    """``raw`` resolved (``~``, ``..`` and symlinks followed) when it lies inside one of ``roots``;
    403 ``path_not_allowed`` otherwise — ``..``, an absolute path elsewhere, a symlink out of a root
    (and a root that is itself missing) all end here."""
    text, fix = str(raw), f"ask the admin to add its folder to {setting}"
    if "\x00" in text:
        raise InvalidInput("path_not_allowed", "a path may not contain NUL", status=403, fix=fix)
    path = Path(text).expanduser().resolve()
    for root in roots:
        base = root.expanduser().resolve()
        if path == base or path.is_relative_to(base):
            return path
    raise InvalidInput(
        "path_not_allowed", f"{text[:256]!r} is outside the folders the server may read", status=403, fix=fix
    )
