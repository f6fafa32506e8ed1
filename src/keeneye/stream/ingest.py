"""Accepting observations for asynchronous processing: shared by the API (202) and ``keeneye ingest``.

:meth:`Ingestor.accept` makes an input durable before it answers (ARCHITECTURE invariant 1):

1. the bytes go to the object store at their content-addressed ``observation_key`` (skipped when there);
2. an ``observations`` row is committed with status ``queued``;
3. a message is published to ``keeneye.<pipeline>.in`` and flushed.

If step 3 fails (broker down) the input is still durable and queued — the database is the outbox and
the reconciler publishes it later — so it is accepted all the same. If step 1 or 2 fails the input is
refused with :class:`IngestUnavailable` (HTTP 503 + Retry-After) and nothing is left half-written.

Only cheap checks happen at the door (empty, size, unknown pipeline, format by magic bytes); decoding
and validation happen in the worker, which rejects a corrupt image with a reason. A geo pipeline
(crop-health) also takes a zip of one TIFF per band (a multi-file capture; the worker checks and
stacks it) and, given as a local file (:meth:`Ingestor.store_file`), a GeoTIFF orthomosaic over the
upload limit: hashed and stored from its file in chunks (never held in memory), answered by a worker
block by block (:mod:`keeneye.pipelines.mosaic_jobs`). Only the object store's own limit
(``objects.max_object_bytes``) bounds a mosaic.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from keeneye.domain import InvalidInput, JsonObject, KeeneyeError, MessageTooLarge, ObservationStatus
from keeneye.imaging import content_hash, sniff_format
from keeneye.imaging.archive import is_zip
from keeneye.pipelines import PipelineCatalog, PipelineSpec, content_type_of, observation_key
from keeneye.pipelines.mosaic_jobs import file_digest, upload_limit_of
from keeneye.settings import Settings
from keeneye.store import (
    RETRY_AFTER_SECONDS,
    ObjectStore,
    ResultsDB,
    open_object_store,
    open_results_db,
    outage_of,
    outage_reason,
    retry_after_seconds,
)
from keeneye.stream.bus import Bus, open_bus
from keeneye.stream.messages import ObservationMessage, fits_inline, publish_observation

log = logging.getLogger(__name__)

SOURCES = ("http", "bus", "folder", "s3", "cli")
# After a failed publish, skip the broker for this long: accepting stays fast during an outage (the
# reconciler publishes what was skipped), instead of every request waiting out the broker timeout.
_BUS_BACKOFF_SECONDS = 5.0
_FLUSH_TIMEOUT_SECONDS = 5.0


class IngestUnavailable(KeeneyeError):
    """The input could not be made durable (object store or database down/locked); retry later.

    ``reason`` is the outage's stable code (``database_unavailable``, ``object_store_unavailable``,
    ``storage_full``: :func:`keeneye.store.outage_reason`), which the API answers with its 503.
    """

    def __init__(self, message: str, *, retry_after: int = 5, reason: str = "backend_unavailable") -> None:
        super().__init__(message, fix=f"retry after {retry_after} s; if it persists, run `keeneye doctor`")
        self.retry_after = retry_after
        self.reason = reason

    @classmethod
    def caused_by(cls, exc: BaseException, doing: str, *, fallback: str) -> IngestUnavailable:
        """The refusal for ``exc`` met while ``doing``; ``fallback``: the reason when ``exc`` is not a
        recognised outage (an unexpected failure of that backend)."""
        outage = outage_of(exc)
        return cls(
            f"{doing}: {_one_line(exc)}",
            retry_after=retry_after_seconds(outage) if outage else RETRY_AFTER_SECONDS,
            reason=outage_reason(outage) if outage else fallback,
        )


@dataclass(frozen=True)
class Accepted:
    """What accepting one input did. ``published`` is False when the reconciler will publish it."""

    id: str
    pipeline: str
    content_hash: str
    object_key: str
    by_reference: bool
    published: bool
    status: str = ObservationStatus.queued.value


class Ingestor:
    """Accepts inputs for one process; thread-safe. Backends not given are opened from ``settings``."""

    def __init__(
        self,
        settings: Settings,
        *,
        catalog: PipelineCatalog | None = None,
        db: ResultsDB | None = None,
        objects: ObjectStore | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog or PipelineCatalog(settings)
        self.db = db or open_results_db(settings)
        self.objects = objects or open_object_store(settings)
        self._rows = _short_wait(self.db, settings.stream.ingest_lock_timeout_seconds)
        self._bus = bus
        self._bus_lock = threading.Lock()
        self._bus_down_until = 0.0

    # ------------------------------------------------------------------ the three steps

    def accept(
        self,
        pipeline: str,
        data: bytes | Path,
        metadata: JsonObject | None = None,
        *,
        source: str = "http",
        observation_id: str | None = None,
    ) -> Accepted:
        """Make one input durable and hand it to the workers; see the module docstring.

        ``data``: the bytes, or a local file (:meth:`store_file`: an orthomosaic over the upload limit
        is stored from the file, never read into memory). Raises :class:`~keeneye.domain.NotFound`
        (unknown pipeline), :class:`InvalidInput` (400 empty, 413 too large, 415 not an accepted
        format) and :class:`IngestUnavailable` (503).
        """
        if isinstance(data, Path):
            msg = self.store_file(pipeline, data, metadata, source=source, observation_id=observation_id)
        else:
            msg = self.store(pipeline, data, metadata, source=source, observation_id=observation_id)
        published = self.publish(msg)
        return Accepted(
            id=msg.observation_id,
            pipeline=pipeline,
            content_hash=msg.content_hash,
            object_key=msg.object_key or "",
            by_reference=not msg.inline,
            published=published,
        )

    def store_file(
        self,
        pipeline: str,
        path: Path,
        metadata: JsonObject | None = None,
        *,
        source: str = "folder",
        observation_id: str | None = None,
    ) -> ObservationMessage:
        """:meth:`store` for a local file: a geo pipeline's GeoTIFF over the upload limit (a mosaic) is
        hashed and stored from the file in chunks; any other file is read and stored as bytes, with
        the same checks and refusals."""
        spec = self.catalog.get(pipeline)
        size = path.stat().st_size
        limit = upload_limit_of(spec, self.settings)
        if size <= limit or not spec.input.geo:
            data = path.read_bytes()
            return self.store(pipeline, data, metadata, source=source, observation_id=observation_id)
        with path.open("rb") as f:
            fmt = self._format(spec, f.read(8))
        if fmt != "tiff":
            raise InvalidInput(
                "too_large",
                f"{fmt.upper()} of {size} bytes is over the limit of {limit} bytes",
                status=413,
                fix="only a GeoTIFF orthomosaic may be larger than one upload; send fewer or smaller "
                "files, or raise the pipeline's input.max_upload_bytes",
            )
        stored_limit = self.settings.objects.max_object_bytes
        if size > stored_limit:
            raise InvalidInput(
                "too_large",
                f"the mosaic of {size} bytes is over the object store's limit of {stored_limit} bytes",
                status=413,
                fix="raise KEENEYE_OBJECTS__MAX_OBJECT_BYTES (a mosaic is stored whole before a worker "
                "reads it block by block)",
            )
        digest = file_digest(path)
        return self._store(
            pipeline, digest, fmt, size, path, metadata, source=source, observation_id=observation_id
        )

    def store(
        self,
        pipeline: str,
        data: bytes,
        metadata: JsonObject | None = None,
        *,
        source: str = "http",
        observation_id: str | None = None,
    ) -> ObservationMessage:
        """Steps 1 and 2 (object + ``queued`` row); returns the message step 3 would publish.

        ``object_key`` is always set on the result; ``data`` only when it fits the bus inline.
        """
        fmt = self.check(pipeline, data)
        digest = content_hash(data)
        return self._store(
            pipeline, digest, fmt, len(data), data, metadata, source=source, observation_id=observation_id
        )

    def _store(
        self,
        pipeline: str,
        digest: str,
        fmt: str,
        size: int,
        body: bytes | Path,
        metadata: JsonObject | None,
        *,
        source: str,
        observation_id: str | None,
    ) -> ObservationMessage:
        """Object (``body``: the bytes, or a file streamed into the store) + ``queued`` row."""
        key = observation_key(pipeline, digest, fmt)
        ctype = content_type_of(fmt)
        obs_id = observation_id or uuid.uuid4().hex
        metadata = dict(metadata or {})
        created_object = False
        try:
            if not self.objects.exists(key):
                if isinstance(body, Path):
                    with body.open("rb") as f:
                        self.objects.put(key, f, content_type=ctype)
                else:
                    self.objects.put(key, body, content_type=ctype)
                created_object = True
        except (InvalidInput, MessageTooLarge):
            raise
        except Exception as exc:  # any backend failure: the object store could not take it
            log.warning("ingest: object store failed", extra={"pipeline": pipeline, "error": repr(exc)})
            raise IngestUnavailable.caused_by(
                exc, "the object store cannot store the image now", fallback="object_store_unavailable"
            ) from exc
        try:
            self._rows.create_observation(
                pipeline=pipeline,
                content_hash=digest,
                object_key=key,
                content_type=ctype,
                size_bytes=size,
                metadata=metadata,
                source=source,
                status=ObservationStatus.queued,
                id=obs_id,
            )
        except Exception as exc:  # database down, locked or refusing: nothing may stay half-written
            if created_object:
                # Only what this request wrote (a concurrent request for the same bytes that saw it
                # existing would lose it — a narrow race that leaves that request's worker a clear
                # missing-object failure rather than a lost input).
                try:
                    self.objects.delete(key)
                except Exception:
                    log.exception("ingest: could not remove the object of a refused input")
            log.warning("ingest: database failed", extra={"pipeline": pipeline, "error": repr(exc)})
            raise IngestUnavailable.caused_by(
                exc, "the results database cannot record the input now", fallback="database_unavailable"
            ) from exc
        msg = ObservationMessage(
            observation_id=obs_id,
            pipeline=pipeline,
            content_hash=digest,
            content_type=ctype,
            metadata=metadata,
            data=body if isinstance(body, bytes) else None,
            object_key=key,
            source=source,
        )
        if msg.data is not None and not fits_inline(msg, self.settings.bus.max_message_bytes):
            msg = replace(msg, data=None)  # by reference: the worker reads the object
        return msg

    def publish(self, msg: ObservationMessage) -> bool:
        """Step 3: publish and flush; ``False`` (logged) when the bus cannot take it now."""
        if time.monotonic() < self._bus_down_until:
            return False
        try:
            bus = self.bus
            publish_observation(bus, msg)
            bus.flush(_FLUSH_TIMEOUT_SECONDS)
        except Exception as exc:  # the row is queued: the reconciler publishes it once the bus is back
            self._bus_down_until = time.monotonic() + _BUS_BACKOFF_SECONDS
            log.warning(
                "ingest: bus unavailable; observation stays queued for the reconciler",
                extra={"observation_id": msg.observation_id, "error": _one_line(exc)},
            )
            return False
        return True

    # ------------------------------------------------------------------ door checks

    def check(self, pipeline: str, data: bytes) -> str:
        """Cheap refusals before anything is written; returns the sniffed format."""
        spec = self.catalog.get(pipeline)  # NotFound → 404
        if not data:
            raise InvalidInput(
                "empty", "the request carries no image bytes", status=400,
                fix="send the image as multipart field 'file' or as the raw body",
            )  # fmt: skip
        limit = spec.input.max_upload_bytes or self.settings.serving.max_upload_bytes
        if len(data) > limit:
            raise InvalidInput(
                "too_large",
                f"image of {len(data)} bytes is over the limit of {limit} bytes",
                status=413,
                fix="send a smaller image, or raise KEENEYE_SERVING__MAX_UPLOAD_BYTES",
            )
        return self._format(spec, data)

    @staticmethod
    def _format(spec: PipelineSpec, head: bytes) -> str:
        """The format by magic bytes (``head``: at least the first 8 bytes), or 415. A geo pipeline
        that reads TIFFs also takes a zip (a multi-file capture, one TIFF per band)."""
        if spec.input.geo and "tiff" in spec.input.formats and is_zip(head):
            return "zip"
        try:
            fmt = sniff_format(head)
        except InvalidInput as exc:
            raise InvalidInput(exc.reason, exc.message, status=415, fix=exc.fix) from exc
        if fmt not in spec.input.formats:
            raise InvalidInput(
                "unsupported_format",
                f"{fmt.upper()} is not accepted by pipeline {spec.name!r}",
                status=415,
                fix=f"send one of: {', '.join(spec.input.formats)}",
            )
        return fmt

    # ------------------------------------------------------------------ lifecycle

    @property
    def bus(self) -> Bus:
        """Opened on first use, so a misconfigured or absent broker never blocks accepting."""
        with self._bus_lock:
            if self._bus is None:
                self._bus = open_bus(self.settings)
            return self._bus

    def close(self) -> None:
        if self._rows is not self.db:
            self._rows.close()
        with self._bus_lock:
            bus, self._bus = self._bus, None
        if bus is not None:
            try:
                bus.close()
            except Exception:  # a Kafka flush at close may fail with the broker down; rows are queued
                log.warning("ingest: closing the bus failed", exc_info=True)


def _short_wait(db: ResultsDB, seconds: float) -> ResultsDB:
    """``db``, or for SQLite a second handle on the same file whose writes wait at most ``seconds``.

    The shared handle waits up to 30 s for a lock (right for workers); a request must not: with the
    database locked the door answers 503 + Retry-After after ``seconds`` instead.
    """
    if getattr(db, "backend", None) != "sqlite" or not isinstance(db, ResultsDB):
        return db
    return db.with_lock_timeout(seconds)


def _one_line(exc: BaseException) -> str:
    text = exc.one_line() if isinstance(exc, KeeneyeError) else str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]
