"""The smartcut studio (docs/smartcut.md → "Studio"): the ``/smartcut`` page and what it calls beside
the engine's routes — a request's studio view (keyframes, activity curve), the user's edited segments
(GET/PUT), exports (JSON/CSV/EDL), the lossless cut as a zip, and the server-held video for the player.

Every route here takes the ``user_id`` the request was made with: another user's request answers 404
exactly like an unknown one, so users see only their own requests and edits. With an API key the user
is the key's name and ``user_id`` may be left out (:mod:`keeneye.serving.routes.smartcut_users`).
Edits live in the results DB (``smartcut_requests.edits``); the studio record (source, keyframes,
curve) on the smartcut volume (:mod:`keeneye.video.studio`).
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from keeneye.domain import JsonObject, NotFound
from keeneye.serving.routes.deps import DbDep, OperatorDep, StateDep, ViewerDep
from keeneye.serving.routes.params import RequestUid
from keeneye.serving.routes.shell import templates
from keeneye.serving.routes.smartcut_users import bound_user, visible_request
from keeneye.serving.schemas import API_ERRORS, ErrorResponse
from keeneye.serving.security import confine
from keeneye.serving.state import AppState
from keeneye.store.engine import utcnow
from keeneye.store.smartcut import SmartcutRequestRecord
from keeneye.video.chunks import ChunkFrame, read_chunk
from keeneye.video.errors import VideoLimits
from keeneye.video.studio import (
    MAX_FRAMES_PER_SEGMENT,
    ChunkActivity,
    StudioRecord,
    as_timestamps,
    check_edits,
    cut_to_zip,
    export,
    frames_to_zip,
    load_record,
    remember_server_video,
)

router = APIRouter(tags=["smartcut"], responses=API_ERRORS)
_LOCK = threading.Lock()
UserQuery = Query(
    None,
    min_length=1,
    max_length=128,
    description="the user the request belongs to (with an API key: the key's name, the default)",
)
_USER = "the user the request belongs to (with an API key: the key's name, the default)"
MEDIA = {"json": "application/json", "csv": "text/csv", "edl": "text/plain"}


class EditsBody(BaseModel):
    user_id: str | None = Field(None, min_length=1, max_length=128, description=_USER)
    timestamps: list[Any] = Field(description='[{"start": s, "stop": s}, …] in seconds')


class CutBody(BaseModel):
    user_id: str | None = Field(None, min_length=1, max_length=128, description=_USER)
    as_dataset: bool = Field(False, description="frames as a COCO folder for labelling instead of clips")
    frames_per_segment: int = Field(
        10,
        ge=1,
        le=MAX_FRAMES_PER_SEGMENT,
        description="with as_dataset: frames taken evenly from each segment",
    )


def _root(state: AppState) -> Path:
    root = state.settings.smartcut.root
    assert root is not None  # derived from KEENEYE_HOME
    return root


def _limits(state: AppState) -> VideoLimits:
    s = state.settings.smartcut
    return VideoLimits(max_duration_seconds=s.max_duration_seconds, max_bytes=s.max_video_bytes)


def chunk_activity(request: Request, state: AppState) -> ChunkActivity:
    """This app's scorer of browser-sampled chunks (one per process, like chunk numbering)."""
    with _LOCK:
        activity: ChunkActivity | None = getattr(request.app.state, "smartcut_activity", None)
        if activity is None:
            activity = request.app.state.smartcut_activity = ChunkActivity(_root(state))
        return activity


def read_chunk_frames(chunk: Path) -> list[ChunkFrame]:
    """The frames of a client's chunk, read before the backend files it (and the plugin deletes it)."""
    return read_chunk(chunk)


def score_chunk(request: Request, state: AppState, uid: str, frames: list[ChunkFrame]) -> None:
    """Extend the activity curve of a browser-sampled request with a chunk the backend accepted."""
    record = state.db.smartcut_request(uid)
    chunk_activity(request, state).add(uid, record.plugin, frames, record.sensitivity)


def end_chunks(request: Request, state: AppState, uid: str) -> None:
    chunk_activity(request, state).complete(uid)


def remember_source(state: AppState, uid: str, path: Path, plugin: str, sensitivity: float) -> None:
    """A ``path`` request: the server holds the video, so the studio can cut it and draw its curve."""
    remember_server_video(_root(state), uid, path, plugin, sensitivity, _limits(state))


def _segments(record: SmartcutRequestRecord) -> tuple[list[Any], bool]:
    """The user's edits when saved, else the plugin's segments; and whether they are edits."""
    for held, edited in ((record.edits, True), (record.segments, False)):
        if held is not None:
            raw = held.get("timestamps")
            return (list(raw) if isinstance(raw, list) else []), edited
    return [], False


def _studio(state: AppState, record: SmartcutRequestRecord) -> StudioRecord:
    return load_record(_root(state), record.uid) or StudioRecord("browser")


@router.get("/smartcut", response_class=HTMLResponse, include_in_schema=False)
def smartcut_page(request: Request, state: StateDep, actor: ViewerDep) -> HTMLResponse:
    s = state.settings.smartcut
    return templates.TemplateResponse(
        request,
        "smartcut.html",
        {
            "default_user": actor.name,
            "user_bound": bound_user(actor) is not None,  # the key's name: the page locks the field
            "default_sensitivity": s.default_sensitivity,
            "server_paths": bool(s.allowed_roots),
            "max_inflight": s.max_inflight_per_user,
            "max_users": s.max_active_users,
        },
    )


@router.get("/v1/smartcut/requests/{uid}/studio", summary="A request as the studio shows it")
async def get_studio(
    uid: RequestUid,
    db: DbDep,
    state: StateDep,
    actor: ViewerDep,
    user_id: str | None = UserQuery,
    brief: bool = Query(False, description="leave out keyframes and the curve (a progress poll)"),
) -> dict[str, Any]:
    """Status and progress, the plugin's ``timestamps``, the user's ``edits`` (null until saved),
    ``source`` (``server``: the server can cut and play it; ``browser``), ``duration``, ``keyframes``
    (seconds, for snapping; server-held only) and the ``activity`` curve (``times``, ``scores``)."""
    record = await asyncio.to_thread(visible_request, db, uid, actor, user_id)
    studio = await asyncio.to_thread(_studio, state, record)
    return {
        "request_uid": record.uid,
        "user_id": record.user_id,
        "plugin": record.plugin,
        "video_name": record.video_name,
        "sensitivity": record.sensitivity,
        "status": record.status,
        "reason": record.reason,
        "progress": {
            "frames_sampled": record.frames_sampled,
            "chunks_sent": record.chunks_sent,
            "chunks_processed": record.chunks_processed,
        },
        "timestamps": None if record.segments is None else record.segments.get("timestamps"),
        "edits": None if record.edits is None else record.edits.get("timestamps"),
        "saved_at": None if record.edits is None else record.edits.get("saved_at"),
        **studio.public(brief),
    }


@router.get("/v1/smartcut/requests/{uid}/edits", summary="The user's edited segments")
async def get_edits(
    uid: RequestUid, db: DbDep, actor: ViewerDep, user_id: str | None = UserQuery
) -> dict[str, Any]:
    """``timestamps`` [{start, stop}]: the saved edits, or the plugin's segments while none are saved
    (``edited`` says which)."""
    record = await asyncio.to_thread(visible_request, db, uid, actor, user_id)
    timestamps, edited = _segments(record)
    return {"request_uid": uid, "user_id": record.user_id, "edited": edited, "timestamps": timestamps}


@router.put(
    "/v1/smartcut/requests/{uid}/edits",
    summary="Save the user's edited segments",
    responses={
        404: {"model": ErrorResponse, "description": "no such request for this user"},
        422: {"model": ErrorResponse, "description": "bad segments"},
    },
)
async def put_edits(
    uid: RequestUid,
    db: DbDep,
    state: StateDep,
    actor: OperatorDep,
    body: EditsBody,
) -> dict[str, Any]:
    """Replace the user's edits with ``timestamps`` (sorted, each inside the video; kept beside the
    plugin's own segments, which never change)."""
    record = await asyncio.to_thread(visible_request, db, uid, actor, body.user_id)
    user_id = record.user_id
    studio = await asyncio.to_thread(_studio, state, record)
    segments = check_edits(body.timestamps, studio.duration)
    saved_at = utcnow().isoformat()
    edits: JsonObject = {"timestamps": as_timestamps(segments), "user_id": user_id, "saved_at": saved_at}
    await asyncio.to_thread(db.set_smartcut_edits, uid, edits)
    return {"request_uid": uid, "user_id": user_id, "edited": True, **edits}


@router.get(
    "/v1/smartcut/requests/{uid}/export",
    summary="Export the segments (JSON, CSV, EDL)",
)
async def get_export(
    uid: RequestUid,
    db: DbDep,
    state: StateDep,
    actor: ViewerDep,
    user_id: str | None = UserQuery,
    format: Literal["json", "csv", "edl"] = Query("json", description="json (for `smartcut cut`), csv, edl"),
) -> Response:
    """The edits (or the plugin's segments) as a download: ``json`` is the processed-files message that
    ``keeneye smartcut cut VIDEO FILE --out DIR`` reads; ``csv`` n,start,stop,duration; ``edl`` CMX 3600."""
    record = await asyncio.to_thread(visible_request, db, uid, actor, user_id)
    studio = await asyncio.to_thread(_studio, state, record)
    timestamps, _ = _segments(record)
    segments = check_edits(timestamps, None)
    meta = {"user_id": record.user_id, "user_request_uid": uid, "plugin_name": record.plugin}
    body = export(segments, format, video_name=Path(record.video_name).stem, fps=studio.fps, meta=meta)
    name = f"{Path(record.video_name).stem}_segments.{format}"
    return Response(
        body,
        media_type=MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/v1/smartcut/requests/{uid}/cut",
    summary="Cut a server-held video into clips, or frames for labelling (zip)",
    response_class=FileResponse,
    responses={
        409: {
            "model": ErrorResponse,
            "description": "the browser holds the video: export the segments instead",
        }
    },
)
async def post_cut(
    uid: RequestUid, db: DbDep, state: StateDep, actor: OperatorDep, body: CutBody
) -> FileResponse:
    """Lossless cut (keyframe-aligned stream copy) of the saved edits, or of the plugin's segments
    when none are saved, → a zip of the clips with ``clips.json`` (asked and real start/stop).
    ``as_dataset``: instead, ``frames_per_segment`` frames from each segment as a zipped COCO folder
    without annotations (``annotations.json`` + ``images/``), for labelling."""
    record = await asyncio.to_thread(visible_request, db, uid, actor, body.user_id)
    studio = await asyncio.to_thread(_studio, state, record)
    if studio.source == "server" and studio.path is not None:  # the record sits in the shared root
        confine(studio.path, state.settings.smartcut.allowed_roots, setting="KEENEYE_SMARTCUT__ALLOWED_ROOTS")
    timestamps, _ = _segments(record)
    segments = check_edits(timestamps, studio.duration)
    work = Path(tempfile.mkdtemp(prefix="smartcut-cut-", dir=_root(state)))
    try:
        if body.as_dataset:
            archive = await asyncio.to_thread(
                functools.partial(
                    frames_to_zip,
                    studio,
                    segments,
                    work,
                    per_segment=body.frames_per_segment,
                    request_uid=uid,
                    limits=_limits(state),
                )
            )
        else:
            archive, _ = await asyncio.to_thread(cut_to_zip, studio, segments, work, _limits(state))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=archive.name,
        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True),
    )


@router.get("/v1/smartcut/requests/{uid}/video", summary="The server-held video")
async def get_video(
    uid: RequestUid, db: DbDep, state: StateDep, actor: ViewerDep, user_id: str | None = UserQuery
) -> FileResponse:
    """The video of a ``path`` request, for the studio's player (byte ranges supported)."""
    record = await asyncio.to_thread(visible_request, db, uid, actor, user_id)
    studio = await asyncio.to_thread(_studio, state, record)
    if studio.source != "server" or studio.path is None or not Path(studio.path).is_file():
        raise NotFound(f"the server holds no video for request {uid!r}", fix="play the local file instead")
    # Checked again now: the record sits in the root shared with the plugins, the folder may have left
    # the allowed roots, or the file become a symlink out of them.
    roots = state.settings.smartcut.allowed_roots
    return FileResponse(confine(studio.path, roots, setting="KEENEYE_SMARTCUT__ALLOWED_ROOTS"))


__all__ = ["end_chunks", "read_chunk_frames", "remember_source", "router", "score_chunk"]
