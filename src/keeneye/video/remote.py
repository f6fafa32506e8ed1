"""Videos named by an ``s3://bucket/key`` URL (``POST /v1/smartcut/requests`` with ``path``).

Decoding needs random access (the probe reads every packet header, sampling seeks), so the object is
copied to a local file beside the chunks first, in 1 MB blocks (never held in memory), then sampled
like an upload and deleted. Before that, when the request is made:

* the URL must lie under one of ``KEENEYE_SMARTCUT__ALLOWED_S3`` (``s3://bucket`` or
  ``s3://bucket/prefix``), else ``403 path_not_allowed`` — the server's S3 credentials are not the
  caller's to use on any bucket;
* one ``HEAD`` answers ``404 video_not_found`` for a missing object and ``413 video_too_large`` over
  ``KEENEYE_SMARTCUT__MAX_VIDEO_BYTES``; an unreachable S3 (or refused credentials) is
  ``503 s3_unavailable`` naming the ``KEENEYE_S3__*`` settings.

The connection is keeneye's S3 adapter (:class:`keeneye.store.s3_objects.S3ObjectStore`, boto3) with
the ``KEENEYE_S3__*`` settings (endpoint, region, keys), whatever ``KEENEYE_OBJECTS_URL`` is.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from keeneye.domain import BackendUnavailable, ConfigError, InvalidInput, NotFound
from keeneye.settings import S3Settings
from keeneye.video.errors import VIDEO_NOT_FOUND, VIDEO_TOO_LARGE, VideoRejected

PATH_NOT_ALLOWED = "path_not_allowed"
BAD_URL = "bad_video_url"
S3_UNAVAILABLE = "s3_unavailable"
_BLOCK = 1024 * 1024

if TYPE_CHECKING:  # boto3 is an optional extra: the module is imported when an s3:// URL is used
    from keeneye.store.s3_objects import S3ObjectStore


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key.mp4`` → (bucket, key); ``bad_video_url`` (422) otherwise."""
    parts = urlsplit(url)
    key = unquote(parts.path).lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(BAD_URL, f"{url!r} is not an s3://bucket/key URL", status=422)
    if not key or key.endswith("/") or ".." in PurePosixPath(key).parts:
        raise InvalidInput(
            BAD_URL,
            f"{url!r} names no object",
            status=422,
            fix="give the video's key: s3://bucket/path/video.mp4",
        )
    return parts.netloc, key


def check_allowed(url: str, allowed: list[str]) -> tuple[str, str]:
    """(bucket, key) of ``url`` when it lies under an allowed ``s3://bucket[/prefix]``, else 403."""
    bucket, key = split_s3_url(url)
    for entry in allowed:
        a = urlsplit(entry)
        prefix = a.path.strip("/")
        if a.scheme == "s3" and a.netloc == bucket and (not prefix or key.startswith(prefix + "/")):
            return bucket, key
    raise InvalidInput(
        PATH_NOT_ALLOWED,
        f"{url!r} is outside the S3 locations the server may read",
        status=403,
        fix="upload the file as `video`, or ask the admin to add its bucket or prefix to "
        "KEENEYE_SMARTCUT__ALLOWED_S3",
    )


@dataclass(frozen=True)
class RemoteVideo:
    """An S3 object checked at request time; :meth:`fetch` copies it to a local file."""

    url: str
    key: str
    size: int
    store: S3ObjectStore

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    def fetch(self, folder: Path, max_bytes: int) -> Path:
        """Copy the object into ``folder`` (a new file; the caller deletes it) and return its path."""
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{uuid.uuid4()}-{self.name}"
        size = 0
        try:
            with dest.open("wb") as out:
                for block in self.store.stream(self.key, _BLOCK):
                    size += len(block)
                    if size > max_bytes:  # the object grew since the HEAD
                        raise VideoRejected(
                            VIDEO_TOO_LARGE, f"{self.url} is over {max_bytes} bytes", status=413
                        )
                    out.write(block)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return dest


def open_s3_video(url: str, *, allowed: list[str], s3: S3Settings, max_bytes: int) -> RemoteVideo:
    """Check ``url`` (allowed location, object exists, size within ``max_bytes``) with one HEAD."""
    bucket, key = check_allowed(url, allowed)
    try:
        from keeneye.store.s3_objects import S3ObjectStore  # the optional extra, see above
    except ImportError as exc:
        raise ConfigError(
            "KEENEYE_SMARTCUT__ALLOWED_S3", f"s3:// URLs need boto3 ({exc})", fix="pip install 'keeneye[s3]'"
        ) from exc
    s3 = s3.model_copy(update={"create_bucket": False})  # reading a video never creates a bucket
    store = S3ObjectStore(bucket, "", s3=s3, max_object_bytes=max_bytes, url=f"s3://{bucket}")
    try:
        size = store.info(key).size
    except NotFound as exc:
        raise VideoRejected(VIDEO_NOT_FOUND, f"no object at {url}", status=404) from exc
    except ConfigError as exc:  # e.g. S3 says the bucket name is invalid
        raise InvalidInput(BAD_URL, exc.message, status=422) from exc
    except BackendUnavailable as exc:  # unreachable, refused credentials: the server's to fix
        raise InvalidInput(S3_UNAVAILABLE, exc.message, status=503, fix=exc.fix) from exc
    if size > max_bytes:
        raise VideoRejected(
            VIDEO_TOO_LARGE,
            f"{url} is {size} bytes, over {max_bytes}",
            status=413,
            fix="split the video, or raise KEENEYE_SMARTCUT__MAX_VIDEO_BYTES",
        )
    return RemoteVideo(url=url, key=key, size=size, store=store)
