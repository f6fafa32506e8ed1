"""The stream message formats, defined once: what travels on ``keeneye.<pipeline>.in|out|dlq``.

Input (``keeneye.<pipeline>.in``), key = observation id, headers:

* ``observation_id``, ``pipeline``, ``content_hash``, ``content_type`` — required;
* ``metadata`` — a JSON object (optional, default ``{}``); ``source`` — where it came from;
* ``object_key`` — where the object store keeps the image. When the value is empty the image
  travels by reference; otherwise the value is the image bytes (inline) and the key is informative.

Images go inline when the whole message fits ``settings.bus.max_message_bytes``; bigger ones travel by
object-store reference (they are in the object store anyway: accepting stores them first).

Output (``keeneye.<pipeline>.out``): JSON ``{id, pipeline, model_name, model_version, result}``.
Dead letters (``keeneye.<pipeline>.dlq``): the original value and headers plus ``reason`` and
``original_topic``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keeneye.domain import InvalidInput, JsonObject, KeeneyeError
from keeneye.store.objects import validate_key
from keeneye.stream.bus import Bus, Message, encode_headers

REQUIRED_HEADERS = ("observation_id", "pipeline", "content_hash", "content_type")
# Observation ids are DB primary keys (String(32)); hex uuid4 from keeneye, anything id-like from others.
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_PIPELINE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")
_MAX_REASON = 1000
# The longest value each header may carry: the width of the observations column it is stored in
# (store/schema.py), so a message is refused here rather than failing its insert on every delivery.
_MAX_CHARS = {"content_hash": 64, "content_type": 128, "source": 32, "object_key": 1024}


def input_topic(pipeline: str) -> str:
    return f"keeneye.{pipeline}.in"


def output_topic(pipeline: str) -> str:
    return f"keeneye.{pipeline}.out"


def dlq_topic(pipeline: str) -> str:
    return f"keeneye.{pipeline}.dlq"


class MalformedMessage(KeeneyeError):
    """A message on an input topic cannot be read; it goes to the dead-letter topic with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, fix="publish messages built by keeneye.stream.messages.encode_observation")
        self.reason = reason


@dataclass(frozen=True)
class ObservationMessage:
    """One accepted observation on its way to a worker."""

    observation_id: str
    pipeline: str
    content_hash: str
    content_type: str
    metadata: JsonObject = field(default_factory=dict)
    data: bytes | None = None  # inline image bytes; None = by reference
    object_key: str | None = None  # where the object store keeps it (required by reference)
    source: str = "bus"

    @property
    def inline(self) -> bool:
        return self.data is not None

    def headers(self) -> dict[str, str]:
        headers = {
            "observation_id": self.observation_id,
            "pipeline": self.pipeline,
            "content_hash": self.content_hash,
            "content_type": self.content_type,
            "metadata": json.dumps(self.metadata, separators=(",", ":"), default=str),
            "source": self.source,
        }
        if self.object_key is not None:
            headers["object_key"] = self.object_key
        return headers

    def value(self) -> bytes:
        return self.data if self.data is not None else b""


def message_size(msg: ObservationMessage) -> int:
    """Bytes the bus counts against its limit (value + key + header names and values)."""
    headers = encode_headers(msg.headers())
    return len(msg.value()) + len(msg.observation_id) + sum(len(k) + len(v) for k, v in headers.items())


def fits_inline(msg: ObservationMessage, limit: int) -> bool:
    """Whether ``msg`` with its bytes inline stays within the bus limit ``limit``."""
    return message_size(msg) <= limit


def publish_observation(bus: Bus, msg: ObservationMessage) -> None:
    """Queue ``msg`` on its pipeline's input topic (call ``bus.flush()`` to make it durable)."""
    bus.publish(input_topic(msg.pipeline), msg.value(), key=msg.observation_id, headers=msg.headers())


def parse_observation(message: Message) -> ObservationMessage:
    """Read an input message; raises :class:`MalformedMessage` for anything a worker cannot use."""
    missing = [h for h in REQUIRED_HEADERS if not message.headers.get(h)]
    if missing:
        raise MalformedMessage("missing_headers", f"message lacks header(s): {', '.join(missing)}")
    try:
        values = {h: message.headers[h].decode("utf-8") for h in REQUIRED_HEADERS}
    except UnicodeDecodeError as exc:
        raise MalformedMessage("bad_header", f"a header is not UTF-8: {exc}") from exc
    if not _ID.match(values["observation_id"]):
        raise MalformedMessage("bad_header", f"observation_id {values['observation_id'][:40]!r} is not an id")
    if not _PIPELINE.match(values["pipeline"]):
        raise MalformedMessage("bad_header", f"pipeline {values['pipeline'][:40]!r} is not a pipeline name")
    metadata: Any = {}
    raw_meta = message.headers.get("metadata")
    if raw_meta:
        try:
            metadata = json.loads(raw_meta)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # nesting past the stack
            raise MalformedMessage("bad_metadata", f"metadata header is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise MalformedMessage("bad_metadata", "metadata header must be a JSON object")
    object_key = message.header("object_key") or None
    source = message.header("source") or "bus"
    _check_lengths({**values, "source": source, "object_key": object_key or ""})
    if object_key is not None:
        try:
            validate_key(object_key)
        except InvalidInput as exc:
            raise MalformedMessage("bad_header", exc.message) from exc
    if not message.value and object_key is None:
        raise MalformedMessage("no_image", "message carries neither image bytes nor an object_key header")
    return ObservationMessage(
        observation_id=values["observation_id"],
        pipeline=values["pipeline"],
        content_hash=values["content_hash"],
        content_type=values["content_type"],
        metadata=metadata,
        data=message.value if message.value else None,
        object_key=object_key,
        source=source,
    )


def _check_lengths(values: Mapping[str, str]) -> None:
    for name, limit in _MAX_CHARS.items():
        if len(values[name]) > limit:
            raise MalformedMessage("bad_header", f"{name} is {len(values[name])} characters, at most {limit}")


def result_payload(
    observation_id: str, pipeline: str, model_name: str, model_version: str, result: Mapping[str, Any]
) -> bytes:
    """The ``.out`` message value."""
    return json.dumps(
        {
            "id": observation_id,
            "pipeline": pipeline,
            "model_name": model_name,
            "model_version": model_version,
            "result": dict(result),
        },
        separators=(",", ":"),
        default=str,
    ).encode("utf-8")


def dead_letter(bus: Bus, pipeline: str, message: Message, reason: str) -> None:
    """Queue ``message`` on the pipeline's DLQ with a one-line ``reason`` (``bus.flush()`` after)."""
    headers: dict[str, str | bytes] = dict(message.headers)
    headers["reason"] = " ".join(reason.split())[:_MAX_REASON]
    headers["original_topic"] = message.topic
    value = message.value
    limit = getattr(getattr(bus, "settings", None), "max_message_bytes", None)
    size = (
        len(value)
        + len(message.key or b"")
        + sum(len(k) + len(v) for k, v in encode_headers(headers).items())
    )
    if isinstance(limit, int) and size > limit:
        # The added headers pushed it over: keep the reason, drop the bytes (the object store has them).
        value = b""
        headers["value_dropped"] = "true"
    bus.publish(dlq_topic(pipeline), value, key=message.key, headers=headers)
