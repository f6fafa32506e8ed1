"""The smartcut backend (seed 004 §2.2, docs/smartcut.md): the plugin registry, admission with the
seed's limits, server-side sampling into chunks announced on the bus, and the answers stored.

* :class:`PluginDirectory` rebuilds the live plugins from ``started-plugins`` / ``stopped-plugins``
  (its own consumer group per process, so it reads the whole history) every ``refresh_seconds``.
* :class:`SmartcutBackend` admits a request (known plugin; ≤ ``max_inflight_per_user`` open requests
  per user, ≤ ``max_active_users`` users with open requests → :class:`SmartcutBusy`, a 429), samples
  the video in a thread into ``{uid}/{basename}/chunk_*.zip`` and publishes ``in-progress`` for every
  chunk but the last, then ``uploaded``. A collector thread stores ``processed-files`` answers, takes
  the request uid of DLQ'd messages to fail that request with the plugin's reason, counts processed
  chunks (a plugin deletes what it has processed), and fails a request whose plugin made no progress
  for ``plugin_timeout_seconds`` — which frees the user's slot.

The state is the results DB (``smartcut_requests``), so any API process can answer a GET.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from keeneye.domain import InvalidInput, JsonObject, NotFound
from keeneye.store import ResultsDB
from keeneye.store.smartcut import SmartcutRequestRecord
from keeneye.video.chunks import CHUNK_NAME, read_chunk, video_folder, write_chunks
from keeneye.video.errors import (
    BAD_CHUNK,
    BAD_OPTIONS,
    UNKNOWN_CLASS,
    UNKNOWN_PLUGIN,
    VideoLimits,
    VideoRejected,
)
from keeneye.video.messages import (
    PROCESSED_FILES,
    STARTED_PLUGINS,
    STOPPED_PLUGINS,
    RequestOptions,
    StartedPlugin,
    new_files_topic,
)
from keeneye.video.probe import probe
from keeneye.video.protocol import (
    DLQ_TOPIC,
    BusMessage,
    MalformedMessage,
    RawBus,
    encode,
    parse_processed,
    parse_started,
    parse_stopped,
    to_dlq,
)
from keeneye.video.remote import RemoteVideo
from keeneye.video.sampling import SampledFrame, check_sensitivity, sample_frames

log = logging.getLogger(__name__)

PLUGIN_TIMEOUT = "plugin_timeout"
UPLOAD_TIMEOUT = "upload_timeout"
UPLOAD_CLOSED = "upload_closed"
TOO_MANY_REQUESTS = "too_many_requests"
TOO_MANY_USERS = "too_many_users"


@dataclass(frozen=True)
class BackendLimits:
    """The seed's pilot limits and the backend's timings."""

    max_inflight_per_user: int = 3
    max_active_users: int = 10
    plugin_timeout_seconds: float = 600.0
    refresh_seconds: float = 5.0
    retry_after_seconds: int = 30


class SmartcutBusy(InvalidInput):
    """Admission refused by a limit: HTTP 429 with ``Retry-After``."""

    def __init__(self, reason: str, message: str, retry_after: int) -> None:
        super().__init__(reason, message, status=429, fix=f"retry in {retry_after} s, once a request ends")
        self.retry_after = retry_after


class PluginDirectory:
    """The live plugins, from the start/stop topics (latest message per plugin wins)."""

    def __init__(self, bus: RawBus) -> None:
        self._bus = bus
        self._consumer = bus.subscribe(
            [STARTED_PLUGINS, STOPPED_PLUGINS], f"smartcut-backend-{uuid.uuid4().hex}"
        )
        self._plugins: dict[str, StartedPlugin] = {}
        self._lock = threading.Lock()

    def refresh(self, timeout: float = 0.2) -> None:
        """Read everything published since the last refresh."""
        while True:
            batch = self._consumer.poll(max_messages=100, timeout=timeout)
            if not batch:
                return
            for message in batch:
                try:
                    if message.topic == STARTED_PLUGINS:
                        started = parse_started(message.value)
                        # a plugin that only subscribes (the seed's) needs its topic to exist
                        self._bus.ensure_topics([new_files_topic(started["plugin_name"])])
                        with self._lock:
                            self._plugins[started["plugin_name"]] = started
                    else:
                        with self._lock:
                            self._plugins.pop(parse_stopped(message.value)["plugin_name"], None)
                except MalformedMessage as exc:
                    log.warning("ignored plugin announcement", extra={"reason": exc.message})
                self._consumer.ack(message)
            timeout = 0.0

    def plugins(self) -> dict[str, StartedPlugin]:
        with self._lock:
            return dict(sorted(self._plugins.items()))

    def close(self) -> None:
        self._consumer.close()


class SmartcutBackend:
    """Admission, sampling and answers; :meth:`start` runs the refresher and collector threads."""

    def __init__(
        self,
        bus: RawBus,
        db: ResultsDB,
        root: Path,
        limits: BackendLimits | None = None,
        video_limits: VideoLimits | None = None,
    ) -> None:
        self.bus = bus
        self.db = db
        self.root = root
        self.limits = limits or BackendLimits()
        self.video_limits = video_limits or VideoLimits()
        self.directory = PluginDirectory(bus)
        self._admit = threading.Lock()
        self._chunks = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: dict[str, threading.Thread] = {}
        bus.ensure_topics([STARTED_PLUGINS, STOPPED_PLUGINS, PROCESSED_FILES, DLQ_TOPIC])
        self._answers = bus.subscribe([PROCESSED_FILES, DLQ_TOPIC], "smartcut-backend")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.directory.refresh()
        for target, name in ((self._refresher, "smartcut-plugins"), (self._collector, "smartcut-answers")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for thread in [*self._threads, *self._workers.values()]:
            thread.join(timeout=10)
        self._answers.close()
        self.directory.close()

    def _refresher(self) -> None:
        while not self._stop.wait(self.limits.refresh_seconds):
            try:
                self.directory.refresh()
            except Exception:  # a broker hiccup must not end the registry
                log.exception("smartcut plugin refresh failed")

    def _collector(self) -> None:
        while not self._stop.is_set():
            try:
                self.collect(timeout=0.5)
                self.check_progress()
            except Exception:
                log.exception("smartcut collector failed; retrying")
                self._stop.wait(1.0)

    # ------------------------------------------------------------------ admission

    def plugins(self) -> dict[str, StartedPlugin]:
        return self.directory.plugins()

    def admit(
        self, user_id: str, plugin: str, sensitivity: float, options: RequestOptions | None = None
    ) -> None:
        """Refuse before any byte is stored: unknown plugin (404), bad sensitivity or options (422),
        busy (429)."""
        check_sensitivity(sensitivity)
        known = self.plugins()
        if plugin not in known:
            raise VideoRejected(
                UNKNOWN_PLUGIN,
                f"no smartcut plugin named {plugin!r} is running",
                status=404,
                fix=f"use one of: {', '.join(known) or 'none running (start: keeneye plugin run motion)'}",
            )
        check_options(known[plugin], options)
        if not user_id or len(user_id) > 128:
            raise InvalidInput("bad_user_id", "user_id must be 1…128 characters", status=422)
        open_by_user = self.db.count_open_smartcut_requests()
        retry = self.limits.retry_after_seconds
        if open_by_user.get(user_id, 0) >= self.limits.max_inflight_per_user:
            raise SmartcutBusy(
                TOO_MANY_REQUESTS,
                f"user {user_id!r} has {open_by_user[user_id]} requests in flight, "
                f"at most {self.limits.max_inflight_per_user}",
                retry,
            )
        if user_id not in open_by_user and len(open_by_user) >= self.limits.max_active_users:
            raise SmartcutBusy(
                TOO_MANY_USERS,
                f"{len(open_by_user)} users have requests in flight, at most {self.limits.max_active_users}",
                retry,
            )

    def submit_video(
        self,
        video: Path | RemoteVideo,
        *,
        user_id: str,
        plugin: str,
        sensitivity: float,
        video_name: str | None = None,
        delete_video: bool = False,
        options: RequestOptions | None = None,
    ) -> str:
        """Admit, record and start sampling ``video``; the request uid. ``delete_video``: an upload.
        A :class:`RemoteVideo` (``s3://``) is copied beside the chunks by the sampling thread first."""
        with self._admit:  # admission and the row that counts against it, atomically per process
            self.admit(user_id, plugin, sensitivity, options)
            uid = str(uuid.uuid4())
            img_size = self.plugins()[plugin]["img_size"]
            worker = threading.Thread(
                target=self._sample,
                args=(uid, video, user_id, plugin, sensitivity, img_size, delete_video, options),
                name=f"smartcut-sample-{uid[:8]}",
                daemon=True,
            )
            self._workers[uid] = worker  # before the row exists: never mistaken for a client upload
            self.db.create_smartcut_request(
                uid,
                user_id=user_id,
                plugin=plugin,
                video_name=video_name or video.name,
                sensitivity=sensitivity,
                options=_json_options(options),
            )
        worker.start()
        return uid

    # ------------------------------------------------------------------ chunks from the client

    def create_upload(
        self,
        *,
        user_id: str,
        plugin: str,
        sensitivity: float,
        video_name: str,
        options: RequestOptions | None = None,
    ) -> str:
        """Admit and record a request whose frames the client samples and sends as chunks."""
        with self._admit:
            self.admit(user_id, plugin, sensitivity, options)
            uid = str(uuid.uuid4())
            self.db.create_smartcut_request(
                uid,
                user_id=user_id,
                plugin=plugin,
                video_name=video_name,
                sensitivity=sensitivity,
                options=_json_options(options),
            )
        return uid

    def _client_upload(self, uid: str) -> SmartcutRequestRecord:
        record = self.db.smartcut_request(uid)  # NotFound → 404
        if record.status != "sampling" or uid in self._workers:
            raise InvalidInput(
                UPLOAD_CLOSED,
                f"request {uid} is {record.status}"
                + (" and sampled by the server" if uid in self._workers else ""),
                status=409,
                fix="send chunks only to a request created without a video, before …/complete",
            )
        return record

    def add_chunk(self, uid: str, chunk: Path) -> int:
        """Check a client's chunk (:func:`read_chunk`), file it as the request's next chunk and announce
        the previous one (``in-progress`` for every chunk except the last); the frames it held."""
        with self._chunks:  # one chunk at a time: numbering and announcements stay in order
            record = self._client_upload(uid)
            frames = read_chunk(chunk)
            if not frames:
                raise VideoRejected(BAD_CHUNK, "the chunk holds no frames", status=422)
            folder = video_folder(uid, Path(record.video_name).stem)
            n = record.chunks_sent
            (self.root / folder).mkdir(parents=True, exist_ok=True)
            chunk.replace(self.root / folder / CHUNK_NAME.format(n))
            if n > 0:
                self._announce_chunk(
                    record.plugin, record.user_id, folder / CHUNK_NAME.format(n - 1), _options(record)
                )
            self.db.update_smartcut_progress(
                uid, frames_sampled=record.frames_sampled + len(frames), chunks_sent=n + 1
            )
            return len(frames)

    def complete_upload(self, uid: str) -> None:
        """The client sent its last chunk: announce ``uploaded``."""
        with self._chunks:
            record = self._client_upload(uid)
            if record.chunks_sent == 0:
                raise VideoRejected(BAD_CHUNK, "no chunk was sent", status=422, fix="POST …/chunks first")
            folder = video_folder(uid, Path(record.video_name).stem)
            self.db.update_smartcut_progress(uid, status="processing")
            self._announce_uploaded(record.plugin, record.user_id, folder, _options(record))

    def _announce_chunk(
        self, plugin: str, user_id: str, chunk: Path, options: RequestOptions | None = None
    ) -> None:
        message: dict[str, object] = {
            "status": "in-progress",
            "user_id": user_id,
            "last_zipped_chunk_path": chunk.as_posix(),
        }
        if options:  # keeneye's extension; without options the value is the seed's, key for key
            message["options"] = dict(options)
        self._publish_new_files(plugin, chunk.parts[0], message)

    def _announce_uploaded(
        self, plugin: str, user_id: str, folder: Path, options: RequestOptions | None = None
    ) -> None:
        message: dict[str, object] = {
            "status": "uploaded",
            "user_id": user_id,
            "zipped_chunks_path": folder.as_posix(),
        }
        if options:
            message["options"] = dict(options)
        self._publish_new_files(plugin, folder.parts[0], message)

    def _publish_new_files(self, plugin: str, request_uid: str, message: dict[str, object]) -> None:
        # Keyed by the request: on a topic of several partitions (Kafka) one request's chunks stay
        # in order on one partition. Nothing has to read the key; the value is the seed's message.
        self.bus.publish(new_files_topic(plugin), encode(message), key=request_uid)
        self.bus.flush()

    # ------------------------------------------------------------------ sampling (server side)

    def _sample(
        self,
        uid: str,
        source: Path | RemoteVideo,
        user_id: str,
        plugin: str,
        step: float,
        img_size: int,
        delete: bool,
        options: RequestOptions | None = None,
    ) -> None:
        video: Path | None = source if isinstance(source, Path) else None
        try:
            if isinstance(source, RemoteVideo):
                video, delete = source.fetch(self.root / ".uploads", self.video_limits.max_bytes), True
            assert video is not None
            info = probe(video, self.video_limits)
            folder = video_folder(uid, info.basename)
            frames = 0
            sent = 0
            pending: Path | None = None

            def counted() -> Iterator[SampledFrame]:
                nonlocal frames
                for frame in sample_frames(info, step, img_size):
                    frames += 1
                    yield frame

            for chunk in write_chunks(counted(), self.root, folder):
                if self._stop.is_set():
                    raise VideoRejected("backend_stopped", "the backend stopped while sampling", status=503)
                if pending is not None:  # every chunk except the last: in-progress
                    self._announce_chunk(plugin, user_id, pending, options)
                pending = chunk
                sent += 1
                self.db.update_smartcut_progress(uid, frames_sampled=frames, chunks_sent=sent)
            self.db.update_smartcut_progress(
                uid, status="processing", frames_sampled=frames, chunks_sent=sent
            )
            self._announce_uploaded(plugin, user_id, folder, options)
        except InvalidInput as exc:
            self.db.finish_smartcut_request(uid, reason=f"{exc.reason}: {exc.message}")
            shutil.rmtree(self.root / uid, ignore_errors=True)
        except Exception as exc:  # the request must end, whatever broke
            log.exception("smartcut sampling failed", extra={"request_uid": uid})
            self.db.finish_smartcut_request(uid, reason=f"error: {exc}")
            shutil.rmtree(self.root / uid, ignore_errors=True)
        finally:
            if delete and video is not None:
                video.unlink(missing_ok=True)
            self._workers.pop(uid, None)

    # ------------------------------------------------------------------ answers

    def collect(self, timeout: float = 0.5) -> int:
        """Store every answer and DLQ notice available now; how many requests it closed."""
        closed = 0
        for message in self._answers.poll(max_messages=50, timeout=timeout):
            if message.topic == PROCESSED_FILES:
                closed += self._store_answer(message)
            else:
                closed += self._fail_from_dlq(message)
            self._answers.ack(message)
        return closed

    def _store_answer(self, message: BusMessage) -> int:
        try:
            answer = parse_processed(message.value)
        except MalformedMessage as exc:
            log.warning("refused processed-files value", extra={"reason": exc.message})
            to_dlq(self.bus, message, f"{exc.reason}: {exc.message}")
            return 0
        uid = answer["user_request_uid"]
        segments: JsonObject = {
            "timestamps": [{"start": t["start"], "stop": t["stop"]} for t in answer["timestamps"]]
        }
        try:
            record = self.db.smartcut_request(uid)
        except NotFound:
            log.warning("answer for an unknown smartcut request", extra={"request_uid": uid})
            return 0
        done = self.db.finish_smartcut_request(uid, segments=segments, chunks_processed=record.chunks_sent)
        if _is_uuid(uid):
            shutil.rmtree(self.root / uid, ignore_errors=True)
        return int(done)

    def _fail_from_dlq(self, message: BusMessage) -> int:
        headers = message.headers
        uid_raw = headers.get("request_uid")
        if uid_raw is None or not headers.get("topic", b"").endswith(b"-new-files"):
            return 0  # not a request's chunk (a bad announcement or answer): nothing to fail
        uid = uid_raw.decode("utf-8", "replace")
        reason = headers.get("reason", b"refused by the plugin").decode("utf-8", "replace")
        return int(self.db.finish_smartcut_request(uid, reason=f"plugin refused the request: {reason}"))

    def check_progress(self, now: float | None = None) -> int:
        """Count processed chunks of open requests and fail those whose plugin went silent."""
        failed = 0
        now = time.time() if now is None else now
        for record in self.db.open_smartcut_requests():
            if record.uid in self._workers:
                continue  # still sampling here
            left = len(list((self.root / record.uid).glob("*/*.zip"))) if _is_uuid(record.uid) else 0
            processed = max(0, record.chunks_sent - left)
            if processed != record.chunks_processed:
                self.db.update_smartcut_progress(record.uid, chunks_processed=processed)
                continue
            if now - record.updated_at.timestamp() > self.limits.plugin_timeout_seconds:
                limit = f"{self.limits.plugin_timeout_seconds:g} s"
                reason = (
                    f"{UPLOAD_TIMEOUT}: no chunk and no …/complete from the client within {limit}"
                    if record.status == "sampling"
                    else f"{PLUGIN_TIMEOUT}: plugin {record.plugin!r} did not answer within {limit}"
                )
                failed += int(self.db.finish_smartcut_request(record.uid, reason=reason))
                shutil.rmtree(self.root / record.uid, ignore_errors=True)
        return failed


def check_options(plugin: StartedPlugin, options: RequestOptions | None) -> None:
    """Classes only for a plugin that announced ``classes``, and only those it announced (422)."""
    wanted = (options or {}).get("classes") or []
    if not wanted:
        return
    name = plugin["plugin_name"]
    offered = plugin.get("classes")
    if offered is None:
        raise VideoRejected(
            BAD_OPTIONS,
            f"plugin {name!r} takes no classes",
            fix="leave `classes` out, or choose a plugin that announces classes (objects)",
        )
    unknown = [c for c in wanted if c not in offered]
    if unknown:
        raise VideoRejected(
            UNKNOWN_CLASS,
            f"plugin {name!r} does not detect {', '.join(map(repr, unknown))}",
            fix=f"choose among: {', '.join(offered) or '(none announced)'}",
        )


def _json_options(options: RequestOptions | None) -> JsonObject | None:
    classes = (options or {}).get("classes")
    return {"classes": list(classes)} if classes else None


def _options(record: SmartcutRequestRecord) -> RequestOptions | None:
    raw = record.options or {}
    classes = raw.get("classes")
    return {"classes": [str(c) for c in classes]} if isinstance(classes, list) and classes else None


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
