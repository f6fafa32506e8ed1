"""The plugin SDK: a :class:`~keeneye.video.recommender.Recommender` as its own process speaking the
seed's protocol (``keeneye plugin run NAME``, docs/plugins.md).

Life of a plugin process:

1. announce: ``{"plugin_name", "label", "img_size"}`` on ``started-plugins``;
2. consume ``{plugin_name}-new-files`` in the consumer group ``smartcut-plugin-{plugin_name}`` (run
   one process per plugin: a request's scores live in the process that read its chunks);
3. ``in-progress``: read that chunk, score its frames with the request's own scorer (made from the
   request's ``options`` when the message has them, :meth:`Recommender.scorer_for`), delete the chunk;
   ``uploaded``: score the chunks of the folder not seen yet (the last one is only announced this
   way), turn the scores into segments, answer ``processed-files``, delete the request's folder;
4. on stop (SIGTERM in the CLI): ``{"plugin_name"}`` on ``stopped-plugins``.

A message that is not the seed's (bad JSON, a path leaving the root) goes to :data:`DLQ_TOPIC` and is
acked; a bad chunk fails its request the same way, with the request uid in the DLQ headers so the
backend can say why, and the request's later messages are dropped. Scoring state lives in memory per
request: a plugin restarted mid-request lost it — the first chunk it then reads does not start at
frame 0 (frames are numbered without gaps across a request) — so it refuses the request
(``lost_frames``) instead of answering for part of the video, and the backend fails it at once.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import statistics
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from keeneye.video.chunks import read_chunk, resolve
from keeneye.video.errors import BAD_CHUNK, VideoRejected
from keeneye.video.messages import (
    PROCESSED_FILES,
    STARTED_PLUGINS,
    STOPPED_PLUGINS,
    ProcessedFiles,
    RequestOptions,
    new_files_topic,
)
from keeneye.video.protocol import (
    DLQ_TOPIC,
    BusMessage,
    MalformedMessage,
    RawBus,
    parse_new_files,
    publish_json,
    to_dlq,
)
from keeneye.video.recommender import FrameScorer, Recommender
from keeneye.video.segments import to_segments

log = logging.getLogger(__name__)


LOST_FRAMES = "lost_frames"
PLUGIN_ERROR = "plugin_error"
MAX_REFUSED = 10_000


def plugin_group(name: str) -> str:
    return f"smartcut-plugin-{name}"


@dataclass
class _Open:
    """One request being scored: its scorer, the (time, score) pairs so far, the chunks already read."""

    scorer: FrameScorer
    times: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    next_index: int = 0  # frames are numbered from 0 without gaps across a request's chunks


class PluginProcess:
    """Runs one recommender on the bus until :meth:`stop` is called (from another thread or a signal)."""

    def __init__(self, recommender: Recommender, bus: RawBus, root: Path) -> None:
        self.recommender = recommender
        self.bus = bus
        self.root = root
        self.name = recommender.name
        self.topic = new_files_topic(self.name)
        self._open: dict[str, _Open] = {}
        self._refused: dict[str, None] = {}  # request uids refused here: their later messages are dropped
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once announced and subscribed
        self.answered = 0

    def announce(self) -> None:
        self.bus.ensure_topics([STARTED_PLUGINS, STOPPED_PLUGINS, self.topic, PROCESSED_FILES, DLQ_TOPIC])
        publish_json(self.bus, STARTED_PLUGINS, self.recommender.announcement())
        self.bus.flush()

    def stop(self) -> None:
        self._stop.set()

    def run(self, poll_timeout: float = 0.5) -> None:
        """Announce, serve until stopped, then say so on ``stopped-plugins``."""
        self.announce()
        consumer = self.bus.subscribe([self.topic], plugin_group(self.name))
        self.ready.set()
        try:
            while not self._stop.is_set():
                for message in consumer.poll(max_messages=10, timeout=poll_timeout):
                    self.handle(message)
                    self.bus.flush()
                    consumer.ack(message)
        finally:
            consumer.close()
            publish_json(self.bus, STOPPED_PLUGINS, {"plugin_name": self.name})
            self.bus.flush()

    def handle(self, message: BusMessage) -> ProcessedFiles | None:
        """Process one ``new-files`` value; the answer when it completed a request."""
        request_uid: str | None = None
        try:
            parsed = parse_new_files(message.value)
            options = parsed.get("options")
            path = (
                parsed["last_zipped_chunk_path"]
                if parsed["status"] == "in-progress"
                else parsed["zipped_chunks_path"]
            )
            request_uid = PurePosixPath(path).parts[0]
            if request_uid in self._refused:
                return None  # already failed with a reason; nothing more to say about it
            if parsed["status"] == "in-progress":
                chunk = parsed["last_zipped_chunk_path"]
                self._score_chunk(str(PurePosixPath(chunk).parent), chunk, options)
                return None
            return self._finish(parsed["zipped_chunks_path"], parsed["user_id"], options)
        except (MalformedMessage, VideoRejected) as exc:
            log.warning("smartcut message refused", extra={"plugin": self.name, "reason": exc.message})
            self._refuse(message, f"{exc.reason}: {exc.message}", request_uid)
            return None
        except Exception as exc:  # a scorer's bug on one request must not crash-loop the plugin
            log.exception("smartcut plugin failed on a request", extra={"plugin": self.name})
            self._refuse(message, f"{PLUGIN_ERROR}: {type(exc).__name__}: {exc}", request_uid)
            return None

    def _refuse(self, message: BusMessage, reason: str, request_uid: str | None) -> None:
        """Park the value in the DLQ (the backend fails its request) and drop the request's rest."""
        if request_uid is not None:
            self._forget(request_uid)
            self._refused[request_uid] = None
            while len(self._refused) > MAX_REFUSED:
                del self._refused[next(iter(self._refused))]
        to_dlq(self.bus, message, reason, request_uid)

    def _state(self, folder: str, options: RequestOptions | None) -> _Open:
        state = self._open.get(folder)
        if state is None:  # the request's first chunk: its options make its scorer
            scorer = self.recommender.scorer_for(options) if options else self.recommender.scorer()
            state = self._open[folder] = _Open(scorer)
        return state

    def _score_chunk(self, folder: str, chunk: str, options: RequestOptions | None = None) -> None:
        state = self._state(folder, options)
        if chunk in state.seen:
            return  # redelivered: already scored and deleted
        path = resolve(self.root, chunk)
        if not path.exists():
            raise VideoRejected("bad_chunk", f"chunk {chunk!r} does not exist under the smartcut root")
        frames = read_chunk(path)
        if frames and frames[0].index != state.next_index:
            # This process never saw the frames before these: it restarted mid-request (the scores
            # of the earlier chunks died with the old process) or a chunk went missing. Answering
            # with the rest would silently leave out part of the video.
            raise VideoRejected(
                LOST_FRAMES,
                f"frames {state.next_index}–{frames[0].index - 1} of this request were not scored by this "
                f"plugin process (it restarted mid-request, or a chunk is missing)",
                fix="send the video again",
            )
        for frame in frames:
            state.times.append(frame.timestamp)
            state.scores.append(float(state.scorer(frame.image)))
        if frames:
            state.next_index = frames[-1].index + 1
        state.seen.add(chunk)
        path.unlink(missing_ok=True)  # the seed: processed files are deleted

    def _finish(self, folder: str, user_id: str, options: RequestOptions | None = None) -> ProcessedFiles:
        path = resolve(self.root, folder)
        state = self._state(folder, options)
        for zip_path in sorted(path.glob("*.zip")) if path.is_dir() else []:
            self._score_chunk(folder, str(PurePosixPath(folder) / zip_path.name), options)
        del self._open[folder]
        if not state.times:
            # Every request has at least one frame: an answer without any would say "nothing
            # relevant" about a video this process never saw (a wrong folder, or its chunks lost).
            raise VideoRejected(
                BAD_CHUNK,
                f"no frame of {folder!r} reached this plugin: the folder holds no chunk and none was "
                "announced before",
                fix="send the chunks before the uploaded message, or send the video again",
            )
        request_uid, video_name = PurePosixPath(folder).parts[:2]
        gaps = [b - a for a, b in zip(state.times, state.times[1:], strict=False)]
        step = statistics.median(gaps) if gaps else 1.0  # the sensitivity the frames were sampled at
        duration = (state.times[-1] + step) if state.times else 0.0
        segments = to_segments(state.times, state.scores, duration, self.recommender.policy, step)
        answer: ProcessedFiles = {
            "user_id": user_id,
            "user_request_uid": request_uid,
            "video_name": video_name,
            "plugin_name": self.name,
            "timestamps": [{"start": round(s.start, 3), "stop": round(s.stop, 3)} for s in segments],
        }
        publish_json(self.bus, PROCESSED_FILES, answer)
        self._remove(request_uid)
        self.answered += 1
        return answer

    def _forget(self, request_uid: str) -> None:
        for folder in [f for f in self._open if PurePosixPath(f).parts[0] == request_uid]:
            del self._open[folder]
        self._remove(request_uid)

    def _remove(self, request_uid: str) -> None:
        if not _is_request_uid(request_uid):
            return  # not a request's folder (a mutated path could name any folder under the root)
        with contextlib.suppress(VideoRejected):  # a uid that would leave the root: nothing to delete
            shutil.rmtree(resolve(self.root, request_uid), ignore_errors=True)


def _is_request_uid(value: str) -> bool:
    """Whether ``value`` is a request uid as the backend makes them (``str(uuid4())``)."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
