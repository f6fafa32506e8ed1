"""One smartcut request end to end in this process: the path a plugin will take, without the bus.

probe → sample at the sensitivity (scaled to the plugin's ``img_size``) → chunks of ≤ 50 JPEGs under
``{root}/{request_uid}/{video_basename}/`` → the recommender reads each chunk as it is complete and
scores its frames → post-processing → the seed's ``processed-files`` message. As in the seed, the
chunks are deleted once processed (``keep_chunks`` keeps them for inspection).

The backend (:mod:`.backend`) and the plugin processes (:mod:`.plugins`) split this at the chunk
boundary: the producer writes chunks and announces them on ``{plugin}-new-files``, the plugin reads
them with the same :func:`~keeneye.video.chunks.read_chunk` and scores them with the same
:class:`Recommender`.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Full, Queue
from typing import TypeVar, cast

from keeneye.video.chunks import ChunkFrame, read_chunk, video_folder, write_chunks
from keeneye.video.errors import VideoLimits
from keeneye.video.messages import ProcessedFiles, RequestOptions, processed_files
from keeneye.video.probe import VideoInfo, probe
from keeneye.video.recommender import Recommendation, Recommender, make_recommender
from keeneye.video.sampling import check_sensitivity, sample_frames, uses_keyframes
from keeneye.video.segments import SegmentPolicy

CHUNKS_AHEAD = 2  # chunks written before the recommender reads them: ≤ 100 small JPEGs waiting
T = TypeVar("T")
_END = object()


def ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items``, produced by a thread of their own up to ``depth`` ahead of the consumer. An
    exception of the producer is raised here, at its place in the sequence; a consumer that stops
    early (or fails) stops the producer at its next item."""
    queue: Queue[object] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(_END)
        except BaseException as exc:  # handed to the consumer, raised where the item would be
            queue.put(exc)
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                close()  # a generator's finally runs in this thread

    thread = threading.Thread(target=produce, name="smartcut-ahead", daemon=True)
    thread.start()
    try:
        while True:
            got = queue.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            yield cast(T, got)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(Empty):
                queue.get(timeout=0.05)
        thread.join()


@dataclass(frozen=True)
class SmartcutRequest:
    video: Path
    plugin: str
    sensitivity: float
    user_id: str = "local"
    request_uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    options: RequestOptions | None = None  # e.g. {"classes": ["person"]} for objects


@dataclass
class SmartcutRun:
    """What a local run produced: the seed message, and figures for the user."""

    message: ProcessedFiles
    info: VideoInfo
    recommendation: Recommendation
    n_chunks: int
    keyframes_only: bool
    seconds: float
    chunk_folder: Path | None  # kept chunks, relative to the root; None once deleted

    @property
    def n_frames(self) -> int:
        return len(self.recommendation.times)


def run_local(
    request: SmartcutRequest,
    root: Path,
    limits: VideoLimits | None = None,
    policy: SegmentPolicy | None = None,
    keep_chunks: bool = False,
    progress: Callable[[float], None] | None = None,
    recommender: Recommender | None = None,
) -> SmartcutRun:
    """Run the request as the module docstring says; ``progress`` gets the share of the video done.
    ``recommender`` replaces the registered one named by the request (e.g. ``objects`` with a
    detector loaded from the registry)."""
    started = time.perf_counter()
    step = check_sensitivity(request.sensitivity)
    recommender = recommender or make_recommender(request.plugin, policy)
    if request.options:
        recommender.scorer_for(request.options)  # refuse bad options before decoding anything
    info = probe(request.video, limits)
    folder = video_folder(request.request_uid, info.basename)
    n_chunks = 0

    def frames_from_chunks() -> Generator[ChunkFrame, None, None]:
        nonlocal n_chunks
        sampled = sample_frames(info, step, recommender.img_size)
        # As the backend and a plugin process do, but in two threads: the next chunks are decoded
        # and written while this one is scored (decoding, scaling and JPEG coding release the GIL).
        for relative in ahead(write_chunks(sampled, root, folder), CHUNKS_AHEAD):
            n_chunks += 1
            chunk = read_chunk(root / relative)
            yield from chunk
            if progress is not None and chunk:
                progress(min(1.0, chunk[-1].timestamp / info.duration))

    frames = frames_from_chunks()
    try:
        recommendation = recommender.recommend(frames, info.duration, step, request.options)
    finally:
        frames.close()  # stops the thread writing chunks before they are deleted
        if not keep_chunks:
            shutil.rmtree(root / folder.parts[0], ignore_errors=True)
    message = processed_files(
        request.user_id, request.request_uid, info.basename, recommender.name, recommendation.segments
    )
    return SmartcutRun(
        message=message,
        info=info,
        recommendation=recommendation,
        n_chunks=n_chunks,
        keyframes_only=uses_keyframes(info, step),
        seconds=time.perf_counter() - started,
        chunk_folder=folder if keep_chunks else None,
    )
