"""Object store contract: images, clips, model files. Local directory or S3, chosen by URL.

Keys are relative POSIX paths (``observations/2026/11/23/<id>.jpg``); a key that is absolute, empty,
or climbs out with ``..`` raises :class:`~keeneye.domain.InvalidInput` (reason ``bad_key``).
Objects above ``settings.objects.max_object_bytes`` raise :class:`~keeneye.domain.MessageTooLarge`.
A missing key raises :class:`~keeneye.domain.NotFound`. Writes are atomic: a reader sees the whole
object or nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from keeneye.domain import BackendHealth


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    etag: str = ""


@runtime_checkable
class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes | BinaryIO, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store ``data`` (bytes or a binary stream read to its end) under ``key``, replacing any old one."""
        ...

    def get(self, key: str) -> bytes: ...

    def stream(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The object's bytes in chunks, without holding it all in memory."""
        ...

    def info(self, key: str) -> ObjectInfo: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""
        ...

    def uri(self, key: str) -> str:
        """Where the object lives, as ``file:///…`` or ``s3://bucket/…``."""
        ...

    def check(self) -> BackendHealth: ...
