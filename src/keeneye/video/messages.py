"""The seed's smartcut bus messages (binding: seed 004, PRODUCT.md §4), as typed dictionaries.

Topics: ``started-plugins`` (:class:`StartedPlugin`), ``stopped-plugins`` (:class:`StoppedPlugin`),
``{plugin_name}-new-files`` (:class:`ChunkInProgress` per chunk, then :class:`UploadComplete`) and
``processed-files`` (:class:`ProcessedFiles`). Keys and spelling are exactly the seed's; chunk paths are
relative to the smartcut root. The bus protocol itself comes with the plugin SDK.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

from keeneye.video.segments import Segment

STARTED_PLUGINS = "started-plugins"
STOPPED_PLUGINS = "stopped-plugins"
PROCESSED_FILES = "processed-files"


def new_files_topic(plugin_name: str) -> str:
    return f"{plugin_name}-new-files"


class StartedPlugin(TypedDict):
    plugin_name: str
    label: str
    img_size: int
    # keeneye's extension (the seed's readers ignore it): the classes a plugin can be asked for
    classes: NotRequired[list[str]]


class RequestOptions(TypedDict, total=False):
    """keeneye's extension of ``{plugin}-new-files`` values: ``"options"``, what the request asked
    the plugin for beyond the seed's fields. Sent only when not empty, so a request without options
    is the seed's message byte for byte."""

    classes: list[str]


class StoppedPlugin(TypedDict):
    plugin_name: str


class ChunkInProgress(TypedDict):
    status: Literal["in-progress"]
    user_id: str
    last_zipped_chunk_path: str
    options: NotRequired[RequestOptions]


class UploadComplete(TypedDict):
    status: Literal["uploaded"]
    user_id: str
    zipped_chunks_path: str
    options: NotRequired[RequestOptions]


class Timestamp(TypedDict):
    start: float
    stop: float


class ProcessedFiles(TypedDict):
    user_id: str
    user_request_uid: str
    video_name: str
    plugin_name: str
    timestamps: list[Timestamp]


def processed_files(
    user_id: str, request_uid: str, video_name: str, plugin_name: str, segments: list[Segment]
) -> ProcessedFiles:
    return {
        "user_id": user_id,
        "user_request_uid": request_uid,
        "video_name": video_name,
        "plugin_name": plugin_name,
        "timestamps": [{"start": round(s.start, 3), "stop": round(s.stop, 3)} for s in segments],
    }
