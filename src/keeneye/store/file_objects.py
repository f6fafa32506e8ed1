"""Object store in a local directory (``file:///abs/dir``), the embedded default.

Layout: the object ``a/b.jpg`` is the file ``<root>/a/b.jpg`` (so ``uri()`` points at real bytes), its
content type and etag live in the sidecar ``<root>/.keeneye-meta/a/.keeneye.b.jpg.json``. Writes go to a
``.keeneye-tmp-*`` file in the target directory, are fsynced and renamed into place, so a reader sees
the old object or the new one, never half of one. Names starting with ``.keeneye`` are reserved and
never listed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

from keeneye.domain import BackendHealth, ConfigError, InvalidInput, JsonObject, NotFound
from keeneye.store.objects import (
    OBJECTS_SETTING,
    RESERVED_PREFIX,
    NewObject,
    ObjectInfo,
    copy_limited,
    too_large,
    validate_key,
    validate_prefix,
)
from keeneye.store.outages import FULL_ERRNOS, storage_full

log = logging.getLogger(__name__)

DEFAULT_CONTENT_TYPE = "application/octet-stream"
META_DIR = f"{RESERVED_PREFIX}-meta"
TMP_PREFIX = f"{RESERVED_PREFIX}-tmp-"


def root_from_url(url: str, parts: Any) -> Path:
    """The directory a ``file://`` URL names; it must be absolute and local."""
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(
            OBJECTS_SETTING,
            f"{url!r} names host {parts.netloc!r}; file URLs name a local directory",
            fix="use file:///absolute/path (three slashes)",
        )
    path = Path(unquote(parts.path))
    if not path.is_absolute() or not parts.path:
        raise ConfigError(
            OBJECTS_SETTING, f"{url!r} is not an absolute path", fix="use file:///absolute/path"
        )
    return path


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileObjectStore:
    """Objects as files under ``root``. Safe for several processes writing different keys."""

    def __init__(self, root: Path, *, max_object_bytes: int, url: str | None = None) -> None:
        self.root = root
        self.url = url or root.as_uri()
        self.max_object_bytes = max_object_bytes
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                OBJECTS_SETTING,
                f"cannot create the object directory {root} ({exc.strerror or exc})",
                fix="point KEENEYE_OBJECTS_URL at a writable directory",
            ) from exc
        self._meta_root = root / META_DIR

    # -- paths ------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _meta_path(self, key: str) -> Path:
        # ".keeneye-meta/a/.keeneye.b.jpg.json" for "a/b.jpg": the reserved name can never be a folder
        # made for another key (as "a.json" could be for the key "a.json/x").
        folder, _, name = key.rpartition("/")
        return self._meta_root / folder / f"{RESERVED_PREFIX}.{name}.json"

    def _read_meta(self, key: str) -> JsonObject:
        try:
            meta = json.loads(self._meta_path(key).read_text("utf-8"))
        except (OSError, ValueError):
            return {}  # written before the sidecar, or by hand: plain bytes
        return meta if isinstance(meta, dict) else {}

    def _atomic_write(self, target: Path, key: str, data: bytes | BinaryIO) -> tuple[int, str]:
        """``data`` at ``target`` or not at all: written beside it, synced, renamed, directory synced."""
        tmp, size, etag = self._write_tmp(target, key, data, sync=True)
        try:
            self._replace(tmp, target, key)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return size, etag

    @staticmethod
    def _conflict(key: str) -> InvalidInput:
        return InvalidInput(
            "bad_key",
            f"object key {key!r} refused: it clashes with an existing key used as a folder (or a folder "
            "used as a key); the local object store cannot hold both 'a' and 'a/b'",
            status=409,
        )

    # -- the ObjectStore protocol -----------------------------------------------------------------

    def put(
        self, key: str, data: bytes | BinaryIO, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ObjectInfo:
        target = self._path(key)
        if isinstance(data, bytes | bytearray | memoryview) and len(data) > self.max_object_bytes:
            raise too_large(key, len(data), self.max_object_bytes)
        with self._full_disk_is_an_outage():
            size, etag = self._atomic_write(target, key, data)
            meta = json.dumps({"content_type": content_type, "etag": etag}).encode()
            # The sidecar follows the data: after a crash between the two, info() may show the old type.
            self._atomic_write(self._meta_path(key), key, meta)
        return ObjectInfo(key=key, size=size, content_type=content_type, etag=etag)

    @contextlib.contextmanager
    def _full_disk_is_an_outage(self) -> Iterator[None]:
        """A write that finds the disk full raises :class:`StorageFull` (the API answers 503
        ``storage_full``); the temporary file is gone already, so nothing partial is left."""
        try:
            yield
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise storage_full(OBJECTS_SETTING, self.url, str(self.root), exc) from exc
            raise

    def put_many(self, objects: Sequence[NewObject]) -> list[ObjectInfo]:
        """Every object written to a temporary file, then all synced, renamed into place, and each
        directory synced once: a group of N costs about one flush instead of 4 × N (a single
        :meth:`put` syncs the data, its directory, the sidecar and its directory). The sidecars are
        renamed into place without a sync of their own — they only matter once the data is there,
        and a sidecar lost in a crash reads as "no sidecar" (octet-stream, etag recomputed never)."""
        with self._full_disk_is_an_outage():
            return self._put_group(objects)

    def _put_group(self, objects: Sequence[NewObject]) -> list[ObjectInfo]:
        staged: list[tuple[Path, Path, NewObject, str]] = []
        try:
            for obj in objects:
                if len(obj.data) > self.max_object_bytes:
                    raise too_large(obj.key, len(obj.data), self.max_object_bytes)
                target = self._path(obj.key)
                tmp, _size, etag = self._write_tmp(target, obj.key, obj.data)
                staged.append((tmp, target, obj, etag))
            for tmp, _target, _obj, _etag in staged:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            dirs: set[Path] = set()
            infos = []
            for tmp, target, obj, etag in staged:
                self._replace(tmp, target, obj.key)
                meta = json.dumps({"content_type": obj.content_type, "etag": etag}).encode()
                meta_target = self._meta_path(obj.key)
                os.replace(self._write_tmp(meta_target, obj.key, meta)[0], meta_target)
                dirs.add(target.parent)
                infos.append(ObjectInfo(obj.key, len(obj.data), obj.content_type, etag))
        except BaseException:
            for tmp, *_ in staged:
                tmp.unlink(missing_ok=True)
            raise
        for folder in dirs:
            _fsync_dir(folder)
        return infos

    def _write_tmp(
        self, target: Path, key: str, data: bytes | BinaryIO, *, sync: bool = False
    ) -> tuple[Path, int, str]:
        """``data`` in a new temporary file beside ``target`` (synced only with ``sync``): its path,
        size and MD5. A stream is copied up to the store's object limit."""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise self._conflict(key) from exc
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, bytes | bytearray | memoryview):
                    out.write(data)
                    size, etag = len(data), hashlib.md5(data, usedforsecurity=False).hexdigest()
                else:
                    size, etag = copy_limited(data, out, key=key, limit=self.max_object_bytes)
                if sync:
                    out.flush()
                    os.fsync(out.fileno())
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return Path(tmp_name), size, etag

    def _replace(self, tmp: Path, target: Path, key: str) -> None:
        try:
            os.replace(tmp, target)
        except IsADirectoryError as exc:
            raise self._conflict(key) from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._not_found(key) from exc

    def stream(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")  # opened now, so a missing key raises here, not at first next()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._not_found(key) from exc
        return self._chunks(handle, chunk_size)

    @staticmethod
    def _chunks(handle: BinaryIO, chunk_size: int) -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def info(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise self._not_found(key) from exc
        if not path.is_file():
            raise self._not_found(key)
        return self._info(key, stat.st_size)

    def _info(self, key: str, size: int) -> ObjectInfo:
        meta = self._read_meta(key)
        return ObjectInfo(
            key=key,
            size=size,
            content_type=str(meta.get("content_type", DEFAULT_CONTENT_TYPE)),
            etag=str(meta.get("etag", "")),
        )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Walk only the folder the prefix is in: "obs/2026/11" walks <root>/obs/2026.
        start = self.root / prefix.rpartition("/")[0]
        found: list[tuple[str, int]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(RESERVED_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted while we walked
                    found.append((key, (Path(dirpath) / name).stat().st_size))
        for key, size in sorted(found):
            yield self._info(key, size)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return  # a folder of other keys, not an object
        self._meta_path(key).unlink(missing_ok=True)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Unlink each file and its sidecar, then sync each folder once (a rerun finishes a crashed one)."""
        paths = [(key, self._path(key)) for key in keys]  # every key refused before any is deleted
        folders: set[Path] = set()
        for key, path in paths:
            try:
                path.unlink(missing_ok=True)
            except IsADirectoryError:
                continue  # a folder of other keys, not an object
            self._meta_path(key).unlink(missing_ok=True)
            folders.add(path.parent)
        for folder in folders:
            _fsync_dir(folder)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def check(self) -> BackendHealth:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(prefix=TMP_PREFIX, dir=self.root) as probe:
                probe.write(b"ok")
                probe.flush()
                os.fsync(probe.fileno())
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            fix = "make the directory writable or point KEENEYE_OBJECTS_URL elsewhere"
            if exc.errno == errno.ENOSPC:
                fix = "free disk space or point KEENEYE_OBJECTS_URL at a larger disk"
            return BackendHealth(
                OBJECTS_SETTING,
                self.url,
                reachable=False,
                detail=f"cannot write to {self.root}: {exc}",
                fix=fix,
            )
        return BackendHealth(
            OBJECTS_SETTING, self.url, reachable=True, version="local", detail=f"{free / 2**30:.1f} GiB free"
        )

    def _not_found(self, key: str) -> NotFound:
        return NotFound(f"object {key!r} not found in {self.url}")
