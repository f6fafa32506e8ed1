"""What the smartcut studio (the ``/smartcut`` page, docs/smartcut.md → "Studio") needs beside the engine.

* A **studio record** per request, ``{root}/.studio/{request_uid}.json`` on the smartcut volume (so
  every API process sees it): where the video is when the server holds it (a ``path`` request), its
  duration and keyframe times (for snapping edits), and the **activity curve** — the request's own
  recommender run in this process over the frames, ``times`` / ``scores``. For a server-held video the
  curve is computed once in a thread at a step of ``max(sensitivity, duration / 2000)`` (at most 2000
  points: all a chart can show); for a browser-sampled video every chunk the browser sends is scored
  as it arrives (:class:`ChunkActivity`). A plugin that is not a built-in in this process gets no
  curve (the bus protocol carries segments only).
* **Exports** of a segment list: the ``processed-files`` JSON that ``keeneye smartcut cut`` reads, a
  CSV, and a CMX 3600 EDL for video editors.
* **Cut to a zip**: the engine's lossless cut (:func:`keeneye.video.cut.cut`) of a server-held video,
  packed with a ``clips.json`` manifest; or **frames as a dataset** (:func:`frames_to_zip`): N frames
  per segment as a COCO folder without annotations (``annotations.json`` + ``images/``), ready for
  labelling (docs/labelling.md) and ``keeneye train`` once labelled.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from keeneye.domain import JsonValue
from keeneye.video.chunks import ChunkFrame
from keeneye.video.cut import Clip, cut, keyframe_before
from keeneye.video.errors import BAD_SEGMENTS, VideoLimits, VideoRejected
from keeneye.video.probe import VideoInfo, probe
from keeneye.video.recommender import FrameScorer, make_recommender
from keeneye.video.sampling import sample_frames
from keeneye.video.segments import Segment, parse_segments

log = logging.getLogger(__name__)

STUDIO_FOLDER = ".studio"
MAX_CURVE_POINTS = 2000
MAX_EDITED_SEGMENTS = 10_000
EXPORT_FORMATS = ("json", "csv", "edl")
NOT_SERVER_HELD = "not_server_held"
MAX_FRAMES_PER_SEGMENT = 100


@dataclass
class StudioRecord:
    """The studio's facts about one request (all optional: a browser-held video has no path)."""

    source: str  # "server" (a path the server reads) or "browser" (sampled by the client)
    path: str | None = None
    duration: float | None = None
    fps: float | None = None
    keyframes: list[float] = field(default_factory=list)
    activity_label: str | None = None
    times: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    activity_done: bool = False

    def public(self, brief: bool = False) -> dict[str, Any]:
        """What the page gets (the server path stays on the server); ``brief``: no keyframes, no curve
        (what a progress poll needs). The curve is max-pooled to at most :data:`MAX_CURVE_POINTS`."""
        times, scores = ([], []) if brief else pooled(self.times, self.scores, MAX_CURVE_POINTS)
        return {
            "source": self.source,
            "duration": self.duration,
            "fps": self.fps,
            "keyframes": [] if brief else self.keyframes,
            "activity": {
                "label": self.activity_label,
                "times": times,
                "scores": scores,
                "complete": self.activity_done,
            },
        }


def pooled(times: list[float], scores: list[float], limit: int) -> tuple[list[float], list[float]]:
    """At most ``limit`` points: each bucket of consecutive samples keeps its highest score (a peak
    stays visible however far the chart is zoomed out) at the bucket's first time."""
    if len(times) <= limit:
        return times, scores
    size = -(-len(times) // limit)
    return times[::size], [max(scores[i : i + size]) for i in range(0, len(scores), size)]


def _record_path(root: Path, uid: str) -> Path:
    return root / STUDIO_FOLDER / f"{uuid.UUID(uid)}.json"


def save_record(root: Path, uid: str, record: StudioRecord) -> None:
    path = _record_path(root, uid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.part")
    tmp.write_text(json.dumps(record.__dict__))
    tmp.replace(path)  # readers never see half a record


def load_record(root: Path, uid: str) -> StudioRecord | None:
    try:
        path = _record_path(root, uid)
    except ValueError:
        return None
    try:
        return StudioRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _scorer(plugin: str) -> tuple[FrameScorer, str, int] | None:
    try:
        recommender = make_recommender(plugin)
    except VideoRejected:  # not a recommender of this process: no curve
        return None
    return recommender.scorer(), f"{recommender.label} score", recommender.img_size


def remember_server_video(
    root: Path, uid: str, path: Path, plugin: str, sensitivity: float, limits: VideoLimits | None = None
) -> threading.Thread:
    """Record a server-held video now; probe it and compute its activity curve in a daemon thread."""
    record = StudioRecord("server", str(path))
    save_record(root, uid, record)

    def work() -> None:
        try:
            info = probe(path, limits)
            record.duration, record.fps, record.keyframes = info.duration, info.fps, list(info.keyframes)
            save_record(root, uid, record)
            made = _scorer(plugin)
            if made is not None:
                score, record.activity_label, img_size = made
                step = max(sensitivity, info.duration / MAX_CURVE_POINTS)
                for frame in sample_frames(info, step, img_size):
                    record.times.append(round(frame.timestamp, 3))
                    record.scores.append(float(score(frame.image)))
            record.activity_done = True
            save_record(root, uid, record)
        except VideoRejected:  # the backend's own probe fails the request with the reason
            record.activity_done = True
            save_record(root, uid, record)
        except Exception:
            log.exception("smartcut studio: activity curve failed", extra={"request_uid": uid})
            record.activity_done = True
            save_record(root, uid, record)

    thread = threading.Thread(target=work, name=f"smartcut-studio-{uid[:8]}", daemon=True)
    thread.start()
    return thread


class ChunkActivity:
    """Scores the frames of browser-sampled chunks as they arrive, per request, with its recommender.

    The record is kept in memory while chunks arrive and written every :attr:`SAVE_EVERY` chunks and at
    the end (a day at 1 s is 1700 chunks: rewriting the whole curve for each would be quadratic)."""

    SAVE_EVERY = 10

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, tuple[FrameScorer | None, StudioRecord, int]] = {}
        self._lock = threading.Lock()

    def add(self, uid: str, plugin: str, frames: list[ChunkFrame], step: float) -> None:
        """Score a chunk; the duration becomes its last frame + ``step`` (sampling stops before the end:
        the video ends within one step after its last sample)."""
        with self._lock:
            if uid not in self._open:
                made = _scorer(plugin)
                record = StudioRecord("browser", activity_label=None if made is None else made[1])
                self._open[uid] = (None if made is None else made[0], record, 0)
            score, record, n = self._open[uid]
            if score is not None:
                for frame in frames:
                    record.times.append(round(frame.timestamp, 3))
                    record.scores.append(float(score(frame.image)))
            if frames:
                record.duration = max(record.duration or 0.0, round(frames[-1].timestamp + step, 3))
            self._open[uid] = (score, record, n + 1)
            if n % self.SAVE_EVERY == 0:
                save_record(self.root, uid, record)

    def complete(self, uid: str) -> None:
        with self._lock:
            opened = self._open.pop(uid, None)
            if opened is not None:
                opened[1].activity_done = True
                save_record(self.root, uid, opened[1])


def check_edits(raw: object, duration: float | None) -> list[Segment]:
    """A user's edited segments: sorted, each inside the video (stops past the end are clipped)."""
    if isinstance(raw, list) and len(raw) > MAX_EDITED_SEGMENTS:
        raise VideoRejected(BAD_SEGMENTS, f"{len(raw)} segments, at most {MAX_EDITED_SEGMENTS}")
    segments = parse_segments(raw, duration)
    if duration is not None:
        segments = [Segment(s.start, min(s.stop, duration)) for s in segments]
    return sorted(segments)


def as_timestamps(segments: list[Segment]) -> list[JsonValue]:
    return [{"start": round(s.start, 3), "stop": round(s.stop, 3)} for s in segments]


def _timecode(seconds: float, fps: int) -> str:
    frames = int(seconds * fps + 0.5)  # half a frame rounds up, as editors do
    f = frames % fps
    s = frames // fps
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}:{f:02d}"


def export(
    segments: list[Segment], fmt: str, *, video_name: str, fps: float | None, meta: dict[str, str]
) -> str:
    """``json`` (the processed-files shape ``keeneye smartcut cut`` reads), ``csv`` or ``edl``."""
    if fmt == "json":
        return json.dumps({**meta, "video_name": video_name, "timestamps": as_timestamps(segments)}, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["n", "start", "stop", "duration"])
        for n, s in enumerate(segments, 1):
            writer.writerow([n, f"{s.start:.3f}", f"{s.stop:.3f}", f"{s.stop - s.start:.3f}"])
        return out.getvalue()
    if fmt == "edl":  # CMX 3600, non-drop frame; the record side plays the clips back to back
        rate = round(fps) if fps and fps >= 1 else 25
        lines = [f"TITLE: {video_name} smartcut", "FCM: NON-DROP FRAME", ""]
        at = 0.0
        for n, s in enumerate(segments, 1):
            length = s.stop - s.start
            lines.append(
                f"{n:03d}  AX       V     C        {_timecode(s.start, rate)} {_timecode(s.stop, rate)} "
                f"{_timecode(at, rate)} {_timecode(at + length, rate)}"
            )
            lines.append(f"* FROM CLIP NAME: {video_name}")
            at += length
        return "\n".join(lines) + "\n"
    raise VideoRejected(
        BAD_SEGMENTS, f"unknown export format {fmt!r}", fix=f"use one of {', '.join(EXPORT_FORMATS)}"
    )


def _server_video(record: StudioRecord, segments: list[Segment], limits: VideoLimits | None) -> VideoInfo:
    if record.source != "server" or record.path is None:
        raise VideoRejected(
            NOT_SERVER_HELD,
            "the server does not hold this video (the browser sampled it, or it was uploaded)",
            status=409,
            fix="export the segments (JSON) and run `keeneye smartcut cut VIDEO SEGMENTS.json --out DIR`",
        )
    if not segments:
        raise VideoRejected(BAD_SEGMENTS, "there are no segments to cut", fix="add a segment first")
    return probe(Path(record.path), limits)


def cut_to_zip(
    record: StudioRecord, segments: list[Segment], work: Path, limits: VideoLimits | None = None
) -> tuple[Path, list[Clip]]:
    """Losslessly cut a server-held video into ``work/clips`` and zip the clips (stored, with
    ``clips.json``: each clip's file, asked start/stop and real start/stop)."""
    info = _server_video(record, segments, limits)
    clips = cut(info, segments, work / "clips")
    archive = work / f"{info.basename}_clips.zip"
    manifest = [
        {
            "file": c.path.name,
            "start": round(c.segment.start, 3),
            "stop": round(c.segment.stop, 3),
            "clip_start": round(c.start, 3),
            "clip_stop": round(c.stop, 3),
        }
        for c in clips
    ]
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for c in clips:
            zf.write(c.path, c.path.name)
        zf.writestr("clips.json", json.dumps({"video": info.path.name, "clips": manifest}, indent=1))
    return archive, clips


def frame_times(segments: list[Segment], per_segment: int) -> list[tuple[int, float]]:
    """(segment number, time): ``per_segment`` times evenly inside each segment (centres of equal parts)."""
    if not 1 <= per_segment <= MAX_FRAMES_PER_SEGMENT:
        raise VideoRejected(
            BAD_SEGMENTS,
            f"frames per segment must be 1…{MAX_FRAMES_PER_SEGMENT}, not {per_segment}",
            fix="ask for e.g. 10 frames per segment",
        )
    return [
        (n, s.start + (i + 0.5) * (s.stop - s.start) / per_segment)
        for n, s in enumerate(segments)
        for i in range(per_segment)
    ]


def _frames_at(info: VideoInfo, times: list[float]) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index into ``times``, frame time, RGB): the first frame at or after each time (the last one
    when the video ends first), decoded from the keyframe before it."""
    with av.open(str(info.path)) as src:
        stream = src.streams.video[0]
        tb = stream.time_base
        assert tb is not None
        origin = stream.start_time or 0
        for i, t in enumerate(times):
            src.seek(int(keyframe_before(info, t) / tb) + origin, stream=stream, backward=True)
            last: tuple[float, np.ndarray] | None = None
            for frame in src.decode(stream):
                ft = float(((frame.pts or 0) - origin) * tb)
                last = (ft, frame.to_ndarray(format="rgb24"))
                if ft >= t - 1e-6:
                    break
            if last is not None:
                yield i, *last


def frames_to_zip(
    record: StudioRecord,
    segments: list[Segment],
    work: Path,
    *,
    per_segment: int,
    request_uid: str,
    limits: VideoLimits | None = None,
) -> Path:
    """``per_segment`` full-resolution JPEG frames from each segment of a server-held video, as a
    zipped COCO folder without annotations: ``annotations.json`` (each image's ``metadata``: video,
    time, segment, request) and ``images/{basename}_{milliseconds:011d}.jpg``."""
    info = _server_video(record, segments, limits)
    wanted = sorted(frame_times(segments, per_segment), key=lambda p: p[1])
    archive = work / f"{info.basename}_frames.zip"
    images: list[dict[str, Any]] = []
    seen: set[str] = set()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, t, rgb in _frames_at(info, [t for _, t in wanted]):
            n = wanted[i][0]
            name = f"images/{info.basename}_{round(t * 1000):011d}.jpg"
            if name in seen:  # two asked times fell on one frame (a short segment, a low frame rate)
                continue
            seen.add(name)
            ok, jpeg = cv2.imencode(
                ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
            )
            if not ok:
                raise RuntimeError(f"JPEG encoding failed at {t:.3f} s")
            zf.writestr(name, jpeg.tobytes())
            images.append(
                {
                    "id": len(images) + 1,
                    "file_name": name,
                    "width": int(rgb.shape[1]),
                    "height": int(rgb.shape[0]),
                    "metadata": {
                        "video": info.path.name,
                        "time": round(t, 3),
                        "segment": n,
                        "request_uid": request_uid,
                    },
                }
            )
        coco = {"images": images, "annotations": [], "categories": []}
        zf.writestr("annotations.json", json.dumps(coco, indent=1))
    return archive
