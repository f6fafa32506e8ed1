"""Probe a video without decoding it: duration, frame rate, codec, size and the keyframe index.

The keyframe index comes from the demuxer's packet flags alone (no decoding), so probing a 24 h file
costs one read of the container, not one decode. Sampling uses it to choose between keyframe-only
decoding and seek + decode (:mod:`keeneye.video.sampling`).

Every refusal is a :class:`~keeneye.video.errors.VideoRejected` with a stable reason: the file is
missing, over the size limit, not a video, a damaged container (or a video codec no decoder here
knows), without a video stream, empty or longer than the duration limit. Metadata that is not UTF-8
is read with replacement characters (:func:`open_video`), never a reason to fail.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error

from keeneye.video.errors import (
    CORRUPT_VIDEO,
    EMPTY_VIDEO,
    NO_VIDEO_STREAM,
    NOT_A_VIDEO,
    VIDEO_NOT_FOUND,
    VIDEO_TOO_LARGE,
    VIDEO_TOO_LONG,
    VideoLimits,
    VideoRejected,
)

log = logging.getLogger(__name__)

# Demuxers that read a still picture as a one-frame "video": a photo is not a video to cut.
_STILL_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif")


@dataclass(frozen=True)
class VideoInfo:
    """What sampling and cutting need to know about one video.

    ``keyframes`` are presentation times in seconds, ascending, from packet flags; ``max_gop_seconds``
    is the longest distance between two keyframes (or from the last keyframe to the end).
    """

    path: Path
    size_bytes: int
    container: str
    codec: str
    width: int
    height: int
    fps: float
    duration: float
    n_packets: int
    keyframes: tuple[float, ...]

    @property
    def max_gop_seconds(self) -> float:
        marks = (*self.keyframes, self.duration)
        return max((b - a for a, b in itertools.pairwise(marks)), default=self.duration)

    @property
    def basename(self) -> str:
        """The file name without its extension: the seed's ``{video_basename}`` folder and ``video_name``."""
        return self.path.stem


def _looks_like_container(head: bytes) -> bool:
    """Whether the first bytes carry a video container's signature (then a failure means damage)."""
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")  # MP4 / MOV
        or head.startswith(b"\x1a\x45\xdf\xa3")  # Matroska / WebM
        or (head.startswith(b"RIFF") and head[8:12] == b"AVI ")
        or head.startswith(b"FLV")
        or head.startswith(b"\x00\x00\x01\xba")  # MPEG-PS
        or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)  # MPEG-TS
    )


def open_video(path: Path) -> av.container.InputContainer:
    """Open a container for reading; metadata that is not UTF-8 (a damaged file's) is read with
    replacement characters instead of failing the open."""
    return av.open(str(path), mode="r", metadata_errors="replace")


def _open(path: Path) -> av.container.InputContainer:
    try:
        return open_video(path)
    except av.error.FFmpegError as exc:
        with path.open("rb") as fh:
            head = fh.read(512)
        if isinstance(exc, av.error.EOFError) and _looks_like_container(head):
            raise VideoRejected(
                EMPTY_VIDEO,
                f"{path.name}: the file ends before its first frame",
                fix="pass a video with frames",
            ) from exc
        if _looks_like_container(head):
            raise VideoRejected(
                CORRUPT_VIDEO,
                f"{path.name}: the container is damaged ({exc.__class__.__name__}: {exc.strerror or exc})",
                fix="re-export or re-download the file; a cut-off MP4 lacks its index (moov atom)",
            ) from exc
        raise VideoRejected(
            NOT_A_VIDEO,
            f"{path.name}: not a video file (no known container could read it)",
            status=415,
            fix="pass a video file (MP4, MKV, AVI, MOV, TS …)",
        ) from exc


def probe(path: Path | str, limits: VideoLimits | None = None) -> VideoInfo:
    """Read the container's packets (not its frames) and check the video against ``limits``."""
    limits = limits or VideoLimits()
    path = Path(path)
    if not path.is_file():
        raise VideoRejected(VIDEO_NOT_FOUND, f"{path}: no such file", status=404, fix="check the path")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise VideoRejected(
            VIDEO_TOO_LARGE,
            f"{path.name} is {size} bytes, over the limit of {limits.max_bytes} bytes",
            status=413,
            fix="split the video, or raise KEENEYE_SMARTCUT__MAX_VIDEO_BYTES",
        )
    if size == 0:
        raise VideoRejected(EMPTY_VIDEO, f"{path.name} is an empty file", fix="pass a video with frames")
    with _open(path) as container:
        fmt = container.format.name
        if any(part in _STILL_IMAGE_FORMATS for part in fmt.split(",")):
            raise VideoRejected(
                NOT_A_VIDEO,
                f"{path.name}: a still image ({fmt}), not a video",
                status=415,
                fix="pass a video file; images go to the image pipelines",
            )
        if not container.streams.video:
            raise VideoRejected(
                NO_VIDEO_STREAM,
                f"{path.name}: the container holds no video stream (only "
                f"{', '.join(s.type for s in container.streams) or 'nothing'})",
                fix="pass a file with a video track",
            )
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a codec id no decoder here knows (a damaged header)
            raise VideoRejected(
                CORRUPT_VIDEO,
                f"{path.name}: the video stream's codec cannot be decoded here",
                fix="re-export the video as H.264, H.265, VP9 or AV1",
            )
        info = _scan_packets(path, size, container, stream)
    if info.n_packets == 0 or info.duration <= 0:
        raise VideoRejected(
            EMPTY_VIDEO, f"{path.name}: the video stream holds no frames", fix="pass a video with frames"
        )
    if info.duration > limits.max_duration_seconds:
        raise VideoRejected(
            VIDEO_TOO_LONG,
            f"{path.name} lasts {info.duration:.0f} s, over the limit of {limits.max_duration_seconds:.0f} s",
            status=413,
            fix="split the video, or raise KEENEYE_SMARTCUT__MAX_DURATION_SECONDS",
        )
    return info


def _scan_packets(
    path: Path, size: int, container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> VideoInfo:
    time_base = stream.time_base or Fraction(1, 90_000)
    start = stream.start_time or 0
    keyframes: list[float] = []
    n_packets = 0
    last_end = 0.0
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:  # the demuxer's final flush packet
                continue
            n_packets += 1
            t = float((packet.pts - start) * time_base)
            last_end = max(last_end, t + float((packet.duration or 0) * time_base))
            if packet.is_keyframe:
                keyframes.append(t)
    except av.error.FFmpegError as exc:
        raise VideoRejected(
            CORRUPT_VIDEO,
            f"{path.name}: the container is damaged after {n_packets} packets ({exc.strerror or exc})",
            fix="re-export or re-download the file",
        ) from exc
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    header_duration = float(stream.duration * time_base) if stream.duration else 0.0
    if not header_duration and container.duration:
        header_duration = container.duration / av.time_base
    # The packets are the truth (a header can lie or be missing, e.g. a cut-off recording).
    duration = last_end if last_end > 0 else header_duration
    keyframes.sort()
    return VideoInfo(
        path=path,
        size_bytes=size,
        container=container.format.name,
        codec=stream.codec_context.name,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        fps=fps,
        duration=duration,
        n_packets=n_packets,
        keyframes=tuple(keyframes),
    )
