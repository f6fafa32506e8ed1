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

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from keeneye.video.chunks import ChunkFrame, read_chunk, video_folder, write_chunks
from keeneye.video.errors import VideoLimits
from keeneye.video.messages import ProcessedFiles, RequestOptions, processed_files
from keeneye.video.probe import VideoInfo, probe
from keeneye.video.recommender import Recommendation, Recommender, make_recommender
from keeneye.video.sampling import check_sensitivity, sample_frames, uses_keyframes
from keeneye.video.segments import SegmentPolicy


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

    def frames_from_chunks() -> Iterator[ChunkFrame]:
        nonlocal n_chunks
        sampled = sample_frames(info, step, recommender.img_size)
        for relative in write_chunks(sampled, root, folder):
            n_chunks += 1
            chunk = read_chunk(root / relative)
            yield from chunk
            if progress is not None and chunk:
                progress(min(1.0, chunk[-1].timestamp / info.duration))

    try:
        recommendation = recommender.recommend(frames_from_chunks(), info.duration, step, request.options)
    finally:
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
