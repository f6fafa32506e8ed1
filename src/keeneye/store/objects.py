"""Object store contract: images, clips, model files. Local directory or S3, chosen by URL.

Keys are relative POSIX paths (``observations/2026/11/23/<id>.jpg``); a key that is absolute, empty,
or climbs out with ``..`` raises :class:`~keeneye.domain.InvalidInput` (reason ``bad_key``).
Objects above ``settings.objects.max_object_bytes`` raise :class:`~keeneye.domain.MessageTooLarge`.
A missing key raises :class:`~keeneye.domain.NotFound`. Writes are atomic: a reader sees the whole
object or nothing.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, BinaryIO, Protocol, runtime_checkable

from keeneye.domain import BackendHealth, ConfigError, InvalidInput, MessageTooLarge
from keeneye.settings import Settings, mask_url, split_url


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    etag: str = ""


@dataclass(frozen=True)
class NewObject:
    """One object of a :meth:`ObjectStore.put_many` group."""

    key: str
    data: bytes
    content_type: str = "application/octet-stream"


@runtime_checkable
class ObjectStore(Protocol):
    url: str

    def put(
        self, key: str, data: bytes | BinaryIO, *, content_type: str = "application/octet-stream"
    ) -> ObjectInfo:
        """Store ``data`` (bytes or a binary stream read to its end) under ``key``, replacing any old one."""
        ...

    def put_many(self, objects: Sequence[NewObject]) -> list[ObjectInfo]:
        """Store several objects at once, each atomically, all durable when this returns.

        The group commit of the serving path: one flush for the group instead of one per object
        (file store: the files' data synced together and each directory once; S3: concurrent
        requests). Raises on the first failure; objects written before it stay written (each is
        whole), so a retry of the group is safe.
        """
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

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove several objects (retention's batches); missing keys are not an error.

        S3: one ``DeleteObjects`` request per 1000 keys. Every key is validated before anything is
        deleted; on a failure some keys may be gone and others not, so a retry of the whole list is
        safe (deleting is idempotent).
        """
        ...

    def uri(self, key: str) -> str:
        """Where the object lives, as ``file:///…`` or ``s3://bucket/…``."""
        ...

    def check(self) -> BackendHealth: ...


# --------------------------------------------------------------------------------------------------
# Rules every backend shares, so a key accepted by one is accepted by all
# --------------------------------------------------------------------------------------------------

OBJECTS_SETTING = "KEENEYE_OBJECTS_URL"
MAX_BYTES_SETTING = "KEENEYE_OBJECTS__MAX_OBJECT_BYTES"
RESERVED_PREFIX = ".keeneye"  # file store bookkeeping (temp files, content-type sidecars)
MAX_KEY_BYTES = 1024  # S3's limit
MAX_SEGMENT_BYTES = 240  # a file name is 255 bytes at most; the file store's sidecar adds 14

_COPY_CHUNK = 1024 * 1024

_SCHEMES = {"file": "a local directory, file:///abs/dir", "s3": "an S3 bucket, s3://bucket/prefix"}


def _refuse(key: str, why: str) -> InvalidInput:
    return InvalidInput("bad_key", f"object key {key!r} refused: {why}", status=400)


def _check_segments(key: str, *, allow_trailing_slash: bool) -> None:
    if "\\" in key:
        raise _refuse(key, "backslashes are not allowed, use '/'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise _refuse(key, "control characters (NUL, newline …) are not allowed")
    if key.startswith("/"):
        raise _refuse(key, "keys are relative, not absolute paths")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise _refuse(key, f"longer than {MAX_KEY_BYTES} bytes")
    segments = key.split("/")
    if allow_trailing_slash and segments[-1] == "":
        segments = segments[:-1]
    for segment in segments:
        if segment in ("", ".", ".."):
            raise _refuse(key, "empty, '.' and '..' path segments are not allowed")
        if segment.startswith(RESERVED_PREFIX):
            raise _refuse(key, f"names starting with {RESERVED_PREFIX!r} are reserved")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise _refuse(key, f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative POSIX path, else raise ``InvalidInput("bad_key")``."""
    if not key:
        raise _refuse(key, "the key is empty")
    _check_segments(key, allow_trailing_slash=False)
    return key


def validate_prefix(prefix: str) -> str:
    """Like :func:`validate_key`, but empty and ``dir/``-style prefixes are fine."""
    if prefix:
        _check_segments(prefix, allow_trailing_slash=True)
    return prefix


def too_large(key: str, size: int, limit: int) -> MessageTooLarge:
    return MessageTooLarge(f"object {key}", size, limit, setting=MAX_BYTES_SETTING)


def _stream_size(stream: IO[bytes]) -> int | None:
    """Bytes left in a seekable stream (so an oversized upload is refused before reading it), else None."""
    try:
        if not stream.seekable():
            return None
        here = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
        return end - here
    except (OSError, ValueError, AttributeError):
        return None


def copy_limited(src: IO[bytes], dst: IO[bytes], *, key: str, limit: int) -> tuple[int, str]:
    """Copy ``src`` to ``dst``; returns (size, md5 hex). Reads at most ``limit + 1`` bytes.

    Raises :class:`MessageTooLarge` as soon as the limit is passed; the caller discards ``dst``.
    """
    known = _stream_size(src)
    if known is not None and known > limit:
        raise too_large(key, known, limit)
    digest = hashlib.md5(usedforsecurity=False)  # the etag, as S3 computes it for a single PUT
    size = 0
    while True:
        chunk = src.read(min(_COPY_CHUNK, limit + 1 - size))
        if not chunk:
            return size, digest.hexdigest()
        size += len(chunk)
        if size > limit:
            raise too_large(key, size, limit)
        digest.update(chunk)
        dst.write(chunk)


def open_object_store(settings: Settings) -> ObjectStore:
    """The object store ``settings.objects_url`` names: ``file:///abs/dir`` or ``s3://bucket/prefix``.

    Opening does no network I/O (``check()`` does), so ``doctor`` can report an unreachable S3.
    """
    url = settings.objects_url
    scheme, parts = split_url(OBJECTS_SETTING, url, _SCHEMES)
    limit = settings.objects.max_object_bytes
    if scheme == "file":
        from keeneye.store.file_objects import FileObjectStore, root_from_url

        return FileObjectStore(root_from_url(url, parts), max_object_bytes=limit)
    try:
        from keeneye.store.s3_objects import S3ObjectStore
    except ImportError as exc:  # boto3 is an optional extra
        raise ConfigError(
            OBJECTS_SETTING,
            f"s3:// needs boto3, which is not installed ({exc})",
            fix="pip install 'keeneye[s3]'",
        ) from exc
    return S3ObjectStore(
        parts.netloc, parts.path.strip("/"), s3=settings.s3, max_object_bytes=limit, url=mask_url(url)
    )
