"""Sample a video at a sensitivity (seconds between frames), downscaled for a recommender.

Targets are ``0, step, 2·step, …`` before the end of the video; each gives the first frame at or after
it. Two ways to get there, chosen from the probe's keyframe index:

- **keyframe-only** when no GOP is longer than the step: only keyframe packets are decoded (every other
  packet is skipped unread by the decoder), the first keyframe at or after each target is kept. At 1 s
  sensitivity on a camera with 1 s GOPs this decodes one frame in 25.
- **seek + decode** otherwise: frames are decoded in order, and when a keyframe lies between the
  current position and the next target (more than a few frames ahead) the demuxer seeks to it, so
  long steps skip whole GOPs.

Each kept frame is converted to RGB and scaled (area interpolation, never up) so that its longest
side is the recommender's ``img_size``, in one libswscale call. A damaged packet is skipped and
counted; more than :data:`MAX_BAD_PACKETS` of them refuse the video as ``corrupt_video``, and so does
a demuxer, seek or conversion error (a damaged file), naming the frames sampled before it.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
import cv2
import numpy as np

from keeneye.video.errors import BAD_SENSITIVITY, CORRUPT_VIDEO, VideoRejected
from keeneye.video.probe import VideoInfo, open_video

log = logging.getLogger(__name__)

MAX_BAD_PACKETS = 50
SEEK_MIN_FRAMES = 8  # skipping fewer frames than this is cheaper by decoding than by seeking
MIN_SENSITIVITY = 0.04  # 25 frames a second: finer steps than a frame say nothing new
MAX_SENSITIVITY = 3600.0


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: ``index`` in the sampling order, ``timestamp`` its presentation time (s)."""

    index: int
    timestamp: float
    image: np.ndarray  # H×W×3 uint8 RGB


def check_sensitivity(sensitivity: float) -> float:
    if not (math.isfinite(sensitivity) and MIN_SENSITIVITY <= sensitivity <= MAX_SENSITIVITY):
        raise VideoRejected(
            BAD_SENSITIVITY,
            f"sensitivity {sensitivity} s is outside {MIN_SENSITIVITY}…{MAX_SENSITIVITY:.0f} s",
            fix="pass the seconds between sampled frames, e.g. --sensitivity 1",
        )
    return sensitivity


def scaled_size(width: int, height: int, img_size: int) -> tuple[int, int]:
    """``(width, height)`` with the longest side at most ``img_size``, aspect kept, never upscaled."""
    longest = max(width, height)
    if longest <= img_size:
        return width, height
    ratio = img_size / longest
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def shrink(image: np.ndarray, longest: int) -> np.ndarray:
    """``image`` with its longest side at most ``longest`` (area interpolation): scorers' work copies."""
    h, w = image.shape[:2]
    size = scaled_size(w, h, longest)
    return image if size == (w, h) else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def uses_keyframes(info: VideoInfo, step: float) -> bool:
    """Whether keyframe-only decoding reaches every target: no GOP is longer than the step."""
    return bool(info.keyframes) and info.keyframes[0] <= 1e-3 and info.max_gop_seconds <= step + 1e-6


class _Decoder:
    """Packets → frames for one stream, skipping damaged packets (bounded), optionally keyframes only."""

    def __init__(
        self, info: VideoInfo, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> None:
        self.info = info
        self.container = container
        self.stream = stream
        self.time_base = stream.time_base or Fraction(1, 90_000)
        self.start = stream.start_time or 0
        self.bad_packets = 0

    def time_of(self, frame: av.VideoFrame) -> float:
        return float(((frame.pts or 0) - self.start) * self.time_base)

    def frames(self, keyframes_only: bool) -> Iterator[av.VideoFrame]:
        for packet in self.container.demux(self.stream):
            if keyframes_only and packet.size and not packet.is_keyframe:
                continue
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                self.bad_packets += 1
                log.warning(
                    "skipped a damaged packet", extra={"video": self.info.path.name, "error": str(exc)}
                )
                if self.bad_packets > MAX_BAD_PACKETS:
                    raise VideoRejected(
                        CORRUPT_VIDEO,
                        f"{self.info.path.name}: more than {MAX_BAD_PACKETS} damaged packets",
                        fix="re-export or re-download the file",
                    ) from exc
                continue
            yield from decoded

    def seek(self, seconds: float) -> None:
        self.container.seek(int(seconds / self.time_base) + self.start, stream=self.stream, backward=True)


def sample_frames(info: VideoInfo, sensitivity: float, img_size: int) -> Iterator[SampledFrame]:
    """Yield the sampled frames of the module docstring, in time order."""
    step = check_sensitivity(sensitivity)
    width, height = scaled_size(info.width, info.height, img_size)
    keyframes_only = uses_keyframes(info, step)
    log.info(
        "sampling",
        extra={
            "video": info.path.name,
            "step": step,
            "keyframes_only": keyframes_only,
            "size": (width, height),
        },
    )
    try:
        container = open_video(info.path)
    except av.error.FFmpegError as exc:
        raise VideoRejected(CORRUPT_VIDEO, f"{info.path.name}: cannot be reopened ({exc})") from exc
    with container:
        stream = container.streams.video[0]
        # Frame threads: several keyframes (or frames) decode at once on the cores, without the GIL.
        stream.thread_type = "AUTO"
        decoder = _Decoder(info, container, stream)
        selected = _keyframe_walk(decoder, step) if keyframes_only else _seek_walk(decoder, step)
        sampled = 0
        try:
            for index, (t, frame) in enumerate(selected):
                image = frame.reformat(
                    width=width, height=height, format="rgb24", interpolation="AREA"
                ).to_ndarray()
                yield SampledFrame(index=index, timestamp=round(t, 6), image=image)
                sampled += 1
        except av.error.FFmpegError as exc:  # demuxing, seeking or converting a damaged file
            raise VideoRejected(
                CORRUPT_VIDEO,
                f"{info.path.name}: the video is damaged after {sampled} sampled frames "
                f"({exc.strerror or exc})",
                fix="re-export or re-download the file",
            ) from exc


def _slack(info: VideoInfo) -> float:
    return 0.25 / info.fps if info.fps > 0 else 1e-3  # float slack, well below a frame


def _keyframe_walk(decoder: _Decoder, step: float) -> Iterator[tuple[float, av.VideoFrame]]:
    tolerance = _slack(decoder.info)
    target = 0.0
    for frame in decoder.frames(keyframes_only=True):
        t = decoder.time_of(frame)
        if t < target - tolerance or t >= decoder.info.duration:
            continue
        yield t, frame
        target = (math.floor((t + tolerance) / step) + 1) * step


def _seek_walk(decoder: _Decoder, step: float) -> Iterator[tuple[float, av.VideoFrame]]:
    info = decoder.info
    tolerance = _slack(info)
    position = -math.inf  # time of the last decoded frame
    frames = decoder.frames(keyframes_only=False)
    n_targets = max(1, math.ceil((info.duration - tolerance) / step))
    for k in range(n_targets):
        target = k * step
        if position >= target - tolerance:
            continue  # the frame already kept lies past this target (a gap in the stream)
        i = bisect.bisect_right(info.keyframes, target + tolerance) - 1
        keyframe = info.keyframes[i] if i >= 0 else 0.0
        if keyframe > position + tolerance and (keyframe - position) * max(info.fps, 1.0) >= SEEK_MIN_FRAMES:
            decoder.seek(keyframe)
            frames = decoder.frames(keyframes_only=False)
        for frame in frames:
            position = decoder.time_of(frame)
            if position >= target - tolerance:
                yield position, frame
                break
        else:
            return  # the stream ended before this target
