"""smartcut over HTTP (docs/smartcut.md → "HTTP API"): the live plugins, requests and their results.

The backend (:class:`keeneye.video.backend.SmartcutBackend`) is opened on first use in this process
and closed with the app; its state is the results DB, so any API process answers a GET. An uploaded
``video`` is streamed by Starlette's form parser into a spooled temporary file (at most 1 MB in
memory), then copied in 1 MB blocks beside the chunks and deleted once sampled; a ``Content-Length``
over ``KEENEYE_SMARTCUT__MAX_VIDEO_BYTES`` is refused before a byte is read.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from keeneye.domain import InvalidInput
from keeneye.serving.routes.deps import VIEWER, DbDep, OperatorDep, StateDep, ViewerDep
from keeneye.serving.routes.params import RequestUid
from keeneye.serving.routes.smartcut_studio import (
    end_chunks,
    read_chunk_frames,
    remember_source,
    score_chunk,
)
from keeneye.serving.routes.smartcut_users import acting_user, listed_user, visible_request
from keeneye.serving.schemas import API_ERRORS, ErrorResponse, error_responses
from keeneye.serving.security import confine
from keeneye.serving.state import AppState
from keeneye.store.smartcut import SmartcutRequestRecord
from keeneye.stream.bus import open_bus
from keeneye.video.backend import BackendLimits, SmartcutBackend, SmartcutBusy
from keeneye.video.chunks import CHUNK_FRAMES, MAX_FRAME_BYTES
from keeneye.video.errors import (
    BAD_CHUNK,
    BAD_OPTIONS,
    VIDEO_NOT_FOUND,
    VIDEO_TOO_LARGE,
    VideoLimits,
    VideoRejected,
)
from keeneye.video.messages import RequestOptions
from keeneye.video.protocol import MalformedMessage, class_names
from keeneye.video.remote import RemoteVideo, open_s3_video

router = APIRouter(tags=["smartcut"], responses=API_ERRORS)
_OPEN_LOCK = threading.Lock()
_BLOCK = 1024 * 1024


def _form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_TEXT = {"type": "string", "maxLength": 1024}
_REQUEST_FORM = _form(
    {
        "plugin": {**_TEXT, "description": "a running plugin (GET /v1/smartcut/plugins)"},
        "user_id": {
            **_TEXT,
            "description": "whose request; with an API key: the key's name unless the key is an admin's",
        },
        "sensitivity": {"type": "number", "exclusiveMinimum": 0, "description": "seconds between frames"},
        "video": {"type": "string", "format": "binary", "description": "the video, or:"},
        "path": {**_TEXT, "description": "a file under an allowed root, or s3://bucket/key, or:"},
        "video_name": {**_TEXT, "description": "the client samples and sends chunks itself"},
        "classes": {**_TEXT, "description": "comma-separated, for plugins that announce classes"},
    },
    ["plugin"],
)
_CHUNK_FORM = _form(
    {"chunk": {"type": "string", "format": "binary", "description": "a zip of ≤ 50 numbered JPEGs"}},
    ["chunk"],
)


def smartcut_backend(request: Request, state: AppState) -> SmartcutBackend:
    """This app's backend, opened once (threads: plugin registry, answers, timeouts)."""
    with _OPEN_LOCK:
        backend: SmartcutBackend | None = getattr(request.app.state, "smartcut", None)
        if backend is None:
            s = state.settings.smartcut
            assert s.root is not None  # derived from KEENEYE_HOME
            s.root.mkdir(parents=True, exist_ok=True)
            backend = SmartcutBackend(
                open_bus(state.settings),
                state.db,
                s.root,
                BackendLimits(
                    max_inflight_per_user=s.max_inflight_per_user,
                    max_active_users=s.max_active_users,
                    plugin_timeout_seconds=s.plugin_timeout_seconds,
                ),
                VideoLimits(max_duration_seconds=s.max_duration_seconds, max_bytes=s.max_video_bytes),
            )
            backend.start()
            request.app.state.smartcut = backend
        return backend


def close_smartcut(app_state: Any) -> None:
    """Stop this app's backend threads and its bus (called from the app's lifespan)."""
    backend: SmartcutBackend | None = getattr(app_state, "smartcut", None)
    if backend is not None:
        backend.close()
        backend.bus.close()  # type: ignore[attr-defined]  # a stream Bus; the protocol does not name close


def busy_response(exc: SmartcutBusy) -> JSONResponse:
    return JSONResponse(
        status_code=429,
        headers={"Retry-After": str(exc.retry_after)},
        content={"reason": exc.reason, "detail": exc.message, "fix": exc.fix},
    )


def request_json(r: SmartcutRequestRecord) -> dict[str, Any]:
    return {
        "request_uid": r.uid,
        "user_id": r.user_id,
        "plugin": r.plugin,
        "video_name": r.video_name,
        "sensitivity": r.sensitivity,
        "status": r.status,
        "reason": r.reason,
        "progress": {
            "frames_sampled": r.frames_sampled,
            "chunks_sent": r.chunks_sent,
            "chunks_processed": r.chunks_processed,
        },
        "timestamps": None if r.segments is None else r.segments.get("timestamps"),
        "edits": None if r.edits is None else r.edits.get("timestamps"),
        "options": r.options or {},
        "created_at": r.created_at.isoformat(),
        "updated_at": r.updated_at.isoformat(),
    }


@router.get("/v1/smartcut/plugins", summary="Running smartcut plugins", dependencies=[VIEWER])
async def get_plugins(request: Request, state: StateDep) -> dict[str, Any]:
    """The plugins that announced themselves on ``started-plugins`` and have not stopped (refreshed
    every 5 s): ``plugin_name``, ``label`` (for people) and ``img_size`` (longest side of the frames)."""
    backend = await asyncio.to_thread(smartcut_backend, request, state)
    return {"plugins": list(backend.plugins().values())}


def _text(form: Any, name: str, default: str | None = None) -> str:
    value = form.get(name, default)
    if value is None or not isinstance(value, str):
        raise InvalidInput("bad_request", f"form field {name!r} is required (text)", status=422)
    return value.strip()


def _options(form: Any) -> RequestOptions | None:
    """``classes`` (repeated fields or one comma-separated field) → the request's options."""
    names = [c.strip() for v in form.getlist("classes") if isinstance(v, str) for c in v.split(",")]
    names = [c for c in names if c]
    if not names:
        return None
    try:
        return {"classes": class_names(names, "classes")}
    except MalformedMessage as exc:
        raise InvalidInput(BAD_OPTIONS, exc.message, status=422, fix="e.g. classes=person,car") from None


def _copy(upload: UploadFile, dest: Path, limit: int, what: str = "video") -> None:
    size = 0
    with dest.open("wb") as out:
        while block := upload.file.read(_BLOCK):
            size += len(block)
            if size > limit:
                reason = VIDEO_TOO_LARGE if what == "video" else BAD_CHUNK
                raise VideoRejected(reason, f"the {what} is over {limit} bytes", status=413)
            out.write(block)


def _allowed_path(raw: str, roots: list[Path]) -> Path:
    path = confine(raw, roots, setting="KEENEYE_SMARTCUT__ALLOWED_ROOTS (or upload the file as `video`)")
    if not path.is_file():
        raise VideoRejected(VIDEO_NOT_FOUND, f"no file at {raw!r}", status=404)
    return path


@router.post(
    "/v1/smartcut/requests",
    summary="Start a smartcut request",
    status_code=202,
    responses={
        201: {"description": "`video_name` given: the request waits for the chunks the client sends"},
        403: {
            "model": ErrorResponse,
            "description": "a `path` outside the allowed roots, or a `user_id` other than the key's",
        },
        404: {"model": ErrorResponse, "description": "unknown plugin (the detail names the running ones)"},
        413: {"model": ErrorResponse, "description": "video over the size limit"},
        429: {
            "model": ErrorResponse,
            "description": "too many requests in flight (per user or users), with Retry-After",
        },
    },
    openapi_extra=_REQUEST_FORM,
)
async def post_request(request: Request, state: StateDep, actor: OperatorDep) -> Any:
    """Multipart form: ``video`` (a file) or ``path`` (a file under an allowed root, or an
    ``s3://bucket/key`` URL under ``KEENEYE_SMARTCUT__ALLOWED_S3``), ``plugin``,
    ``sensitivity`` (seconds between sampled frames) and ``user_id`` → ``{"request_uid"}`` (202).
    With an API key the user is the key's name (``user_id`` may be left out; another one is 403
    ``other_user`` unless the key is an admin's).
    ``classes`` (comma-separated, optional): what a plugin that announces classes (``objects``)
    looks for; 422 ``unknown_class`` names the ones it offers.
    Poll ``GET /v1/smartcut/requests/{request_uid}`` for progress and the segments."""
    s = state.settings.smartcut
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > s.max_video_bytes + _BLOCK:
        raise VideoRejected(
            VIDEO_TOO_LARGE, f"the body is {length} bytes, over {s.max_video_bytes}", status=413
        )
    backend = await asyncio.to_thread(smartcut_backend, request, state)
    async with request.form(max_files=1, max_fields=40) as form:  # `classes` may repeat
        plugin = _text(form, "plugin")
        raw_user = form.get("user_id")
        user_id = acting_user(actor, raw_user if isinstance(raw_user, str) else None)
        try:
            sensitivity = float(_text(form, "sensitivity", str(s.default_sensitivity)))
        except ValueError:
            raise InvalidInput(
                "bad_sensitivity", "sensitivity must be a number of seconds", status=422
            ) from None
        options = _options(form)
        try:
            await asyncio.to_thread(backend.admit, user_id, plugin, sensitivity, options)
        except SmartcutBusy as exc:
            return busy_response(exc)
        video = form.get("video")
        source: Path | RemoteVideo
        if isinstance(video, UploadFile):
            assert s.root is not None
            uploads = s.root / ".uploads"
            uploads.mkdir(parents=True, exist_ok=True)
            name = Path(video.filename or "video").name
            dest = uploads / f"{uuid.uuid4()}-{name}"
            try:
                await asyncio.to_thread(_copy, video, dest, s.max_video_bytes)
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
            source, delete = dest, True
        elif isinstance(form.get("path"), str) and str(form.get("path")).startswith("s3://"):
            remote = await asyncio.to_thread(
                open_s3_video,
                str(form.get("path")),
                allowed=list(s.allowed_s3),
                s3=state.settings.s3,
                max_bytes=s.max_video_bytes,
            )  # one HEAD: 403 / 404 / 413 now; copied beside the chunks by the sampling thread
            source, name, delete = remote, remote.name, False
        elif isinstance(form.get("path"), str) and form.get("path"):
            source = _allowed_path(str(form.get("path")), list(s.allowed_roots))
            name, delete = source.name, False
            size = source.stat().st_size
            if size > s.max_video_bytes:  # refused now, like an upload, not after a 202
                raise VideoRejected(
                    VIDEO_TOO_LARGE,
                    f"{name} is {size} bytes, over the limit of {s.max_video_bytes} bytes",
                    status=413,
                    fix="split the video, or raise KEENEYE_SMARTCUT__MAX_VIDEO_BYTES",
                )
        elif isinstance(form.get("video_name"), str) and form.get("video_name"):
            uid = await asyncio.to_thread(
                backend.create_upload,
                user_id=user_id,
                plugin=plugin,
                sensitivity=sensitivity,
                video_name=Path(str(form.get("video_name"))).name[:255],
                options=options,
            )
            return JSONResponse(status_code=201, content={"request_uid": uid})
        else:
            raise InvalidInput(
                "bad_request",
                "send a `video` file, a `path`, or a `video_name` to upload chunks yourself",
                status=422,
            )
    try:
        uid = await asyncio.to_thread(
            backend.submit_video,
            source,
            user_id=user_id,
            plugin=plugin,
            sensitivity=sensitivity,
            video_name=name,
            delete_video=delete,
            options=options,
        )
    except SmartcutBusy as exc:
        if delete and isinstance(source, Path):
            source.unlink(missing_ok=True)
        return busy_response(exc)
    except BaseException:
        if delete and isinstance(source, Path):
            source.unlink(missing_ok=True)
        raise
    if not delete and isinstance(source, Path):  # a server-held video: the studio can cut and play it
        remember_source(state, uid, source, plugin, sensitivity)
    return JSONResponse(status_code=202, content={"request_uid": uid})


@router.post(
    "/v1/smartcut/requests/{uid}/chunks",
    summary="Send one chunk of a client-sampled request",
    responses={
        409: {"model": ErrorResponse, "description": "the request is not taking chunks"},
        422: {"model": ErrorResponse, "description": "bad chunk"},
    },
    openapi_extra=_CHUNK_FORM,
)
async def post_chunk(
    uid: RequestUid, request: Request, state: StateDep, actor: OperatorDep
) -> dict[str, Any]:
    """Multipart field ``chunk``: a zip of ≤ 50 JPEGs named ``{index:07d}_{milliseconds:011d}.jpg``
    (docs/smartcut.md → Chunks), in time order across chunks. Checked before it is filed; every chunk
    but the last is announced to the plugin as soon as the next one arrives."""
    await asyncio.to_thread(visible_request, state.db, uid, actor)  # another user's: 404
    backend = await asyncio.to_thread(smartcut_backend, request, state)
    assert state.settings.smartcut.root is not None
    uploads = state.settings.smartcut.root / ".uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    dest = uploads / f"{uuid.uuid4()}.zip"
    try:
        async with request.form(max_files=1, max_fields=2) as form:
            chunk = form.get("chunk")
            if not isinstance(chunk, UploadFile):
                raise InvalidInput(
                    "bad_request", "multipart field `chunk` (a zip file) is required", status=422
                )
            await asyncio.to_thread(_copy, chunk, dest, CHUNK_FRAMES * MAX_FRAME_BYTES, "chunk")
        studio_frames = await asyncio.to_thread(read_chunk_frames, dest)  # the studio's curve
        frames = await asyncio.to_thread(backend.add_chunk, uid, dest)
        await asyncio.to_thread(score_chunk, request, state, uid, studio_frames)
    finally:
        dest.unlink(missing_ok=True)
    return {"request_uid": uid, "frames": frames}


@router.post(
    "/v1/smartcut/requests/{uid}/complete",
    summary="End a client-sampled request's upload",
    status_code=202,
)
async def post_complete(
    uid: RequestUid, request: Request, state: StateDep, actor: OperatorDep
) -> dict[str, Any]:
    """The last chunk was sent: the plugin is told (``uploaded``) and the request is ``processing``."""
    await asyncio.to_thread(visible_request, state.db, uid, actor)  # another user's: 404
    backend = await asyncio.to_thread(smartcut_backend, request, state)
    await asyncio.to_thread(backend.complete_upload, uid)
    await asyncio.to_thread(end_chunks, request, state, uid)
    return {"request_uid": uid, "status": "processing"}


@router.get(
    "/v1/smartcut/requests/{uid}",
    summary="One smartcut request",
    responses=error_responses(404),
)
async def get_request(uid: RequestUid, db: DbDep, actor: ViewerDep) -> dict[str, Any]:
    """``status`` (sampling, processing, done, failed), ``reason`` when failed, ``progress`` (frames
    sampled, chunks sent, chunks processed) and, when done, ``timestamps`` [{start, stop}] in seconds.
    A key that is not an admin's sees only its own user's requests (another's: 404)."""
    return request_json(await asyncio.to_thread(visible_request, db, uid, actor))


@router.get("/v1/smartcut/requests", summary="A user's smartcut requests")
async def list_requests(
    db: DbDep,
    actor: ViewerDep,
    user_id: str | None = Query(
        None,
        min_length=1,
        max_length=128,
        description="whose requests (with a key that is not an admin's: the key's name, the default)",
    ),
) -> dict[str, Any]:
    """The user's requests, newest first (at most 100). With an API key the user is the key's name
    (another ``user_id``: 403 ``other_user``); an admin key, or no key on a server without required
    keys, lists every user's requests when ``user_id`` is left out (``user_id`` is then null)."""
    user = listed_user(actor, user_id)
    records = await asyncio.to_thread(db.smartcut_requests, user)
    return {"user_id": user, "requests": [request_json(r) for r in records]}


__all__ = ["close_smartcut", "router", "smartcut_backend"]
