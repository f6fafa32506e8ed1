"""Object store in an S3 bucket (``s3://bucket/prefix``): AWS, MinIO, Ceph, moto.

Connection details come from ``settings.s3`` (endpoint, region, keys; without keys boto3's usual chain
of environment, profile and instance role applies). Short connect timeouts and few retries make an
unreachable endpoint fail in seconds instead of minutes. The bucket is created on the first write
when missing and ``KEENEYE_S3__CREATE_BUCKET`` is true; until then the store simply reads as empty.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, NotRequired, TypedDict
from urllib.parse import unquote

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from keeneye.domain import (
    BackendHealth,
    BackendUnavailable,
    ConfigError,
    InvalidInput,
    KeeneyeError,
    NotFound,
)
from keeneye.settings import S3Settings
from keeneye.store.objects import (
    OBJECTS_SETTING,
    NewObject,
    ObjectInfo,
    copy_limited,
    too_large,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

DEFAULT_CONTENT_TYPE = "application/octet-stream"
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024  # larger uploads spool to a temporary file, not RAM
_PUT_MANY_THREADS = 8  # below botocore's default pool of 10 connections
DELETE_BATCH = 1000  # keys per DeleteObjects request, S3's limit

# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")

_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AllAccessDisabled",
    }
)
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})  # HEAD answers a bare 404
_CREATE_BUCKET_FIX = "create it, or set KEENEYE_S3__CREATE_BUCKET=true to let keeneye create it"
_CREDENTIALS_FIX = (
    "set KEENEYE_S3__ACCESS_KEY_ID and KEENEYE_S3__SECRET_ACCESS_KEY to a key pair that may use the bucket"
)


def validate_bucket(bucket: str) -> str:
    """Refuse a bucket name S3 would reject, naming the setting (S3 itself answers cryptically)."""
    problem = ""
    if not _BUCKET_RE.match(bucket):
        problem = "must be 3–63 characters of lowercase letters, digits, '.' and '-', starting and ending "
        problem += "with a letter or digit"
    elif ".." in bucket or _IP_RE.match(bucket):
        problem = "must not contain '..' or look like an IP address"
    if problem:
        raise ConfigError(
            OBJECTS_SETTING,
            f"bucket name {bucket!r} {problem}",
            fix="use s3://<bucket>/<optional/prefix> with a valid bucket name",
        )
    return bucket


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def diagnose(exc: Exception) -> tuple[str, str]:
    """What went wrong talking to S3 and how to fix it, as (detail, fix)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _AUTH_CODES:
            return f"S3 refused the credentials ({code})", _CREDENTIALS_FIX
        if code in _MISSING_BUCKET_CODES:
            return "the bucket does not exist", _CREATE_BUCKET_FIX
        message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
        return f"S3 error {code}: {message}", ""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return f"no S3 credentials ({exc})", _CREDENTIALS_FIX
    return (
        f"S3 endpoint not reachable ({exc})",
        "start the S3 server, or correct KEENEYE_S3__ENDPOINT_URL / KEENEYE_S3__REGION",
    )


def map_s3_error(exc: Exception, *, url: str, key: str | None = None) -> KeeneyeError:
    """Translate a boto3/botocore exception into the keeneye error a caller can act on."""
    if key is not None and isinstance(exc, ClientError) and error_code(exc) in _MISSING_KEY_CODES:
        return NotFound(f"object {key!r} not found in {url}")
    detail, fix = diagnose(exc)
    return BackendUnavailable(OBJECTS_SETTING, url, detail, fix=fix or None)


class _ClientArgs(TypedDict):
    """The keyword arguments keeneye gives ``Session.client("s3", …)``."""

    region_name: str
    config: Config
    endpoint_url: NotRequired[str]
    aws_access_key_id: NotRequired[str]
    aws_secret_access_key: NotRequired[str]


class _CreateBucketArgs(TypedDict):
    Bucket: str
    CreateBucketConfiguration: NotRequired[dict[str, str]]


def _client(s3: S3Settings, *, attempts: int, read_timeout: float) -> Any:
    config = Config(
        connect_timeout=2,
        read_timeout=read_timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        # Self-hosted servers (MinIO, moto) rarely resolve bucket subdomains; AWS accepts both.
        s3={"addressing_style": "path" if s3.endpoint_url else "auto"},
    )
    kwargs: _ClientArgs = {"region_name": s3.region, "config": config}
    if s3.endpoint_url:
        kwargs["endpoint_url"] = s3.endpoint_url
    if s3.access_key_id is not None and s3.secret_access_key is not None:
        kwargs["aws_access_key_id"] = s3.access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = s3.secret_access_key.get_secret_value()
    return boto3.session.Session().client("s3", **kwargs)


class S3ObjectStore:
    """Objects under ``prefix`` in ``bucket``. The boto3 client is thread-safe; share one store."""

    def __init__(
        self, bucket: str, prefix: str = "", *, s3: S3Settings, max_object_bytes: int, url: str | None = None
    ) -> None:
        self.bucket = validate_bucket(bucket)
        prefix = unquote(prefix).strip("/")
        try:
            validate_prefix(prefix)
        except InvalidInput as exc:
            raise ConfigError(OBJECTS_SETTING, f"bad prefix in the S3 URL: {exc.message}") from exc
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = url or f"s3://{bucket}/{self.prefix}"
        self.max_object_bytes = max_object_bytes
        self.settings = s3
        self._client = _client(s3, attempts=s3.max_attempts, read_timeout=s3.read_timeout_seconds)
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # -- helpers ----------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _error(self, exc: Exception, key: str | None = None) -> KeeneyeError:
        missing_bucket = isinstance(exc, ClientError) and error_code(exc) == "NoSuchBucket"
        if key is not None and missing_bucket and self.settings.create_bucket:
            # Not created yet because nothing has been written: the object is simply not there.
            return NotFound(f"object {key!r} not found in {self.url} (the bucket does not exist yet)")
        return map_s3_error(exc, url=self.url, key=key)

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if error_code(exc) not in _MISSING_BUCKET_CODES or not self.settings.create_bucket:
                    raise map_s3_error(exc, url=self.url) from exc
                self._create_bucket()
            except BotoCoreError as exc:
                raise map_s3_error(exc, url=self.url) from exc
            self._bucket_ready = True

    def _create_bucket(self) -> None:
        kwargs: _CreateBucketArgs = {"Bucket": self.bucket}
        if self.settings.region != "us-east-1":  # us-east-1 refuses an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise map_s3_error(exc, url=self.url) from exc
        log.info("created S3 bucket", extra={"bucket": self.bucket, "url": self.url})

    # -- the ObjectStore protocol -----------------------------------------------------------------

    def put(
        self, key: str, data: bytes | BinaryIO, *, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> ObjectInfo:
        full = self._key(key)
        limit = self.max_object_bytes
        if isinstance(data, bytes | bytearray | memoryview):
            if len(data) > limit:
                raise too_large(key, len(data), limit)
            self._ensure_bucket()
            try:
                reply = self._client.put_object(
                    Bucket=self.bucket, Key=full, Body=bytes(data), ContentType=content_type
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc) from exc
            return ObjectInfo(key, len(data), content_type, str(reply.get("ETag", "")).strip('"'))
        # Spool first: the limit is enforced before anything reaches S3, so nothing partial is left,
        # and a large upload waits on disk rather than in memory.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            copy_limited(data, spool, key=key, limit=limit)
            spool.seek(0)
            self._ensure_bucket()
            try:
                self._client.upload_fileobj(
                    spool,
                    self.bucket,
                    full,
                    ExtraArgs={"ContentType": content_type},
                    Config=TransferConfig(use_threads=False),
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._error(exc) from exc
        # upload_fileobj does not return the etag (multipart uploads have their own form of it).
        return self.info(key)

    def put_many(self, objects: Sequence[NewObject]) -> list[ObjectInfo]:
        """Concurrent PUTs (the client's connection pool is 10): each object is durable once S3
        answers, so the group costs about its slowest request instead of the sum."""
        if len(objects) <= 1:
            return [self.put(o.key, o.data, content_type=o.content_type) for o in objects]
        with ThreadPoolExecutor(max_workers=min(len(objects), _PUT_MANY_THREADS)) as pool:
            futures = [pool.submit(self.put, o.key, o.data, content_type=o.content_type) for o in objects]
            return [f.result() for f in futures]

    def get(self, key: str) -> bytes:
        full = self._key(key)
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=full)
            with reply["Body"] as body:
                return bytes(body.read())
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc

    def stream(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        full = self._key(key)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
        except (ClientError, BotoCoreError) as exc:  # raised now, not at the first next()
            raise self._error(exc, key) from exc
        return self._chunks(body, chunk_size, key)

    def _chunks(self, body: Any, chunk_size: int, key: str) -> Iterator[bytes]:
        try:
            for chunk in body.iter_chunks(chunk_size):
                yield bytes(chunk)
        except BotoCoreError as exc:
            raise self._error(exc, key) from exc
        finally:
            body.close()

    def info(self, key: str) -> ObjectInfo:
        full = self._key(key)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, key) from exc
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            content_type=str(head.get("ContentType", DEFAULT_CONTENT_TYPE)),
            etag=str(head.get("ETag", "")).strip('"'),
        )

    def exists(self, key: str) -> bool:
        try:
            self.info(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects in key order (S3 lists in UTF-8 byte order). ``content_type`` is empty: listing does
        not return it, and a HEAD per object would be slow; ask ``info()`` for the one you need."""
        validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=str(item["Key"])[len(self.prefix) :],
                        size=int(item["Size"]),
                        content_type="",
                        etag=str(item.get("ETag", "")).strip('"'),
                    )
        except ClientError as exc:
            if error_code(exc) == "NoSuchBucket" and self.settings.create_bucket:
                return  # not created yet: empty
            raise self._error(exc) from exc
        except BotoCoreError as exc:
            raise self._error(exc) from exc

    def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchBucket", "NoSuchKey", "404"):
                return
            raise self._error(exc) from exc
        except BotoCoreError as exc:
            raise self._error(exc) from exc

    def delete_many(self, keys: Sequence[str]) -> None:
        """``DeleteObjects`` in quiet mode, :data:`DELETE_BATCH` keys per request (S3's limit); a key
        S3 could not delete raises, naming it and S3's reason."""
        full = [self._key(key) for key in dict.fromkeys(keys)]  # all refused before any is deleted
        for start in range(0, len(full), DELETE_BATCH):
            chunk = full[start : start + DELETE_BATCH]
            request = {"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            try:
                reply = self._client.delete_objects(Bucket=self.bucket, Delete=request)
            except ClientError as exc:
                if error_code(exc) == "NoSuchBucket":
                    return  # nothing was ever written: nothing to delete
                raise self._error(exc) from exc
            except BotoCoreError as exc:
                raise self._error(exc) from exc
            errors = [e for e in reply.get("Errors", []) if e.get("Code") not in ("NoSuchKey", "404")]
            if errors:
                first = errors[0]
                raise BackendUnavailable(
                    OBJECTS_SETTING,
                    self.url,
                    f"S3 did not delete {len(errors)} of {len(chunk)} object(s), e.g. {first.get('Key')!r}: "
                    f"{first.get('Code')} {first.get('Message', '')}".rstrip(),
                    fix="check the credentials may s3:DeleteObject in this bucket, then run again",
                )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def check(self) -> BackendHealth:
        """HEAD the bucket with one attempt and short timeouts: answers within seconds, never raises."""
        client = _client(self.settings, attempts=1, read_timeout=5)
        try:
            client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            missing = isinstance(exc, ClientError) and error_code(exc) in _MISSING_BUCKET_CODES
            if missing and self.settings.create_bucket:
                detail = "bucket will be created on first write"
                return BackendHealth(OBJECTS_SETTING, self.url, True, "s3", detail=detail)
            detail, fix = diagnose(exc)
            return BackendHealth(OBJECTS_SETTING, self.url, False, detail=detail, fix=fix)
        finally:
            client.close()
        return BackendHealth(OBJECTS_SETTING, self.url, True, "s3", detail=f"bucket {self.bucket}")
