"""The seed's smartcut protocol on a bus (seed 004, docs/smartcut.md → "Protocol"): plain JSON values,
no keeneye envelope, no required headers, so a plugin written from the seed alone with a bare Kafka
client interoperates.

This module parses and writes those values and names the bus it needs structurally
(:class:`RawBus`): :class:`keeneye.stream.bus.Bus` (SQLite or Kafka) satisfies it as it is —
``publish(topic, value)`` sends the bytes unchanged — while ``video`` stays below ``stream`` in the
layers. Parsing is strict and bounded (messages come from other processes): a value that is not a
JSON object of the seed's keys and types, or a path that leaves the smartcut root, is
:class:`MalformedMessage` and goes to :data:`DLQ_TOPIC` with the reason in its headers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Protocol

from keeneye.domain import InvalidInput, MessageTooLarge
from keeneye.video.messages import (
    ChunkInProgress,
    ProcessedFiles,
    RequestOptions,
    StartedPlugin,
    StoppedPlugin,
    Timestamp,
    UploadComplete,
)

DLQ_TOPIC = "smartcut.dlq"
MAX_VALUE_BYTES = 1024 * 1024  # a seed message is tens of bytes; timestamps of a day fit easily
MALFORMED = "malformed_message"
MAX_CLASSES = 1000  # an announcement's or a request's class list
MAX_CLASS_CHARS = 100
PLUGIN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class MalformedMessage(InvalidInput):
    """A bus value that is not the seed's message for its topic (goes to the DLQ, never retried)."""

    def __init__(self, message: str) -> None:
        super().__init__(MALFORMED, message, status=400, fix="send the seed's JSON, see docs/smartcut.md")


class BusMessage(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def value(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, bytes]: ...


class BusConsumer(Protocol):
    def poll(self, max_messages: int = 1, timeout: float = 1.0) -> Sequence[BusMessage]: ...

    def ack(self, message: Any) -> None: ...  # Any: each backend acks its own message type

    def close(self) -> None: ...


class RawBus(Protocol):
    """What smartcut needs of a bus; :class:`keeneye.stream.bus.Bus` is one."""

    def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | bytes | None = None,
        headers: Mapping[str, str | bytes] | None = None,
    ) -> None: ...

    def flush(self, timeout: float = 10.0) -> None: ...

    def subscribe(self, topics: Sequence[str], group: str) -> BusConsumer: ...

    def ensure_topics(self, topics: Sequence[str]) -> None: ...


def encode(message: Mapping[str, object]) -> bytes:
    """A seed message as the bytes on the bus: compact UTF-8 JSON, nothing else."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def publish_json(bus: RawBus, topic: str, message: Mapping[str, object]) -> None:
    bus.publish(topic, encode(message))


def to_dlq(bus: RawBus, message: BusMessage, reason: str, request_uid: str | None = None) -> None:
    """Park a value that cannot be processed, unchanged, with why in its headers.

    A value near the bus's size limit no longer fits once the headers are added: it is parked
    without its bytes (header ``value_dropped``), so the refusal itself can never fail."""
    headers: dict[str, str | bytes] = {"reason": reason[:500], "topic": message.topic[:255]}
    if request_uid:
        headers["request_uid"] = request_uid[:255]
    try:
        bus.publish(DLQ_TOPIC, bytes(message.value[:MAX_VALUE_BYTES]), headers=headers)
    except MessageTooLarge:
        bus.publish(DLQ_TOPIC, b"", headers={**headers, "value_dropped": "true"})


def _object(value: bytes) -> dict[str, object]:
    if len(value) > MAX_VALUE_BYTES:
        raise MalformedMessage(f"value of {len(value)} bytes, over {MAX_VALUE_BYTES}")
    try:
        data = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise MalformedMessage(f"not UTF-8 JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise MalformedMessage(f"a JSON object is expected, got {type(data).__name__}")
    return data


def _text(data: Mapping[str, object], key: str, max_len: int = 512) -> str:
    value = data.get(key)
    # isprintable: no control character, and no lone surrogate ("\ud800" in JSON), which no UTF-8
    # encoder accepts — the answer that repeats this value could not be sent.
    if not isinstance(value, str) or not value or len(value) > max_len or not value.isprintable():
        raise MalformedMessage(
            f"{key!r} must be a non-empty string of at most {max_len} printable characters"
        )
    return value


def plugin_name(value: str) -> str:
    if not set(value) <= PLUGIN_NAME_CHARS or len(value) > 100:
        raise MalformedMessage(f"plugin_name {value!r} must be [a-z0-9._-], at most 100 characters")
    return value


def relative_path(value: str, min_parts: int) -> str:
    """A chunk or folder path as sent: relative, no ``..``, ``{request_uid}/{video_basename}[/…zip]``."""
    path = PurePosixPath(value)
    if (
        path.is_absolute()
        or ".." in path.parts
        or "\\" in value
        or len(path.parts) < min_parts
        or not value.isprintable()  # a NUL or control character is no file name
    ):
        raise MalformedMessage(
            f"path {value!r} must be relative to the smartcut root, {{request_uid}}/{{video_basename}}…"
        )
    return str(path)


def class_names(value: object, what: str) -> list[str]:
    """A list of class names (keeneye's extension, see :class:`RequestOptions`), bounded."""
    if (
        not isinstance(value, list)
        or len(value) > MAX_CLASSES
        or not all(isinstance(c, str) and 0 < len(c) <= MAX_CLASS_CHARS for c in value)
    ):
        raise MalformedMessage(
            f"{what} must be a list of at most {MAX_CLASSES} class names of 1…{MAX_CLASS_CHARS} characters"
        )
    return list(dict.fromkeys(value))  # duplicates dropped, order kept


def parse_started(value: bytes) -> StartedPlugin:
    data = _object(value)
    size = data.get("img_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 8192:
        raise MalformedMessage("'img_size' must be an integer number of pixels, 16…8192")
    started: StartedPlugin = {
        "plugin_name": plugin_name(_text(data, "plugin_name")),
        "label": _text(data, "label", 200),
        "img_size": size,
    }
    if "classes" in data:  # keeneye's extension: what a plugin can be asked for
        started["classes"] = class_names(data["classes"], "'classes'")
    return started


def parse_options(data: Mapping[str, object]) -> RequestOptions | None:
    """The optional ``"options"`` of a ``new-files`` value (keeneye's extension); None when absent.
    Keys other than ``classes`` are ignored, so newer backends can add options older plugins skip."""
    raw = data.get("options")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise MalformedMessage("'options' must be a JSON object")
    options: RequestOptions = {}
    if "classes" in raw:
        options["classes"] = class_names(raw["classes"], "'options.classes'")
    return options or None


def parse_stopped(value: bytes) -> StoppedPlugin:
    return {"plugin_name": plugin_name(_text(_object(value), "plugin_name"))}


def parse_new_files(value: bytes) -> ChunkInProgress | UploadComplete:
    data = _object(value)
    status = data.get("status")
    user_id = _text(data, "user_id", 128)
    options = parse_options(data)
    if status == "in-progress":
        path = relative_path(_text(data, "last_zipped_chunk_path", 1024), 3)
        if not path.endswith(".zip"):
            raise MalformedMessage(f"last_zipped_chunk_path {path!r} must name a .zip")
        chunk: ChunkInProgress = {"status": "in-progress", "user_id": user_id, "last_zipped_chunk_path": path}
        if options:
            chunk["options"] = options
        return chunk
    if status == "uploaded":
        folder = relative_path(_text(data, "zipped_chunks_path", 1024), 2)
        done: UploadComplete = {"status": "uploaded", "user_id": user_id, "zipped_chunks_path": folder}
        if options:
            done["options"] = options
        return done
    raise MalformedMessage(f"'status' must be 'in-progress' or 'uploaded', not {status!r}")


def _seconds(item: Mapping[str, object], key: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise MalformedMessage(f"timestamp {key!r} must be a finite number of seconds ≥ 0")
    return float(value)


def parse_processed(value: bytes) -> ProcessedFiles:
    data = _object(value)
    raw = data.get("timestamps")
    if not isinstance(raw, list):
        raise MalformedMessage('\'timestamps\' must be a list of {"start", "stop"}')
    timestamps: list[Timestamp] = []
    for item in raw:
        if not isinstance(item, dict):
            raise MalformedMessage('each timestamp must be an object {"start", "stop"}')
        start, stop = _seconds(item, "start"), _seconds(item, "stop")
        if stop < start:
            raise MalformedMessage(f"timestamp stop {stop} is before start {start}")
        timestamps.append({"start": start, "stop": stop})
    return {
        "user_id": _text(data, "user_id", 128),
        "user_request_uid": _text(data, "user_request_uid", 64),
        "video_name": _text(data, "video_name", 255),
        "plugin_name": _text(data, "plugin_name", 100),
        "timestamps": timestamps,
    }
