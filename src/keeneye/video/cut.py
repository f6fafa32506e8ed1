"""Cut a video into clips at segments: lossless remux at keyframes by default, exact re-encode on request.

**Lossless** (default): packets are copied, never decoded. A clip starts at the last keyframe at or
before the segment's start (a clip must open on a keyframe to play), so it may begin up to one GOP
early, and ends with the last packet before the segment's stop. Video and audio streams are copied;
timestamps are shifted so the clip starts at 0. Fast (I/O bound) and bit-identical to the source.

**Re-encode** (``reencode=True``): frames from the segment's start to its stop are decoded and encoded
with H.264 (libx264, or MPEG-4 part 2 without it): exact boundaries, generation loss, CPU time. Audio
is dropped.

Clips are named ``{video_basename}_{n:03d}_{start_ms}-{stop_ms}{ext}`` in the output folder.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from keeneye.video.probe import VideoInfo
from keeneye.video.segments import Segment

_REMUX_SUFFIXES = {".mp4", ".mkv", ".mov"}


@dataclass(frozen=True)
class Clip:
    path: Path
    segment: Segment  # what was asked
    start: float  # where the clip really starts in the source (a keyframe when lossless)
    stop: float


def cut(info: VideoInfo, segments: Sequence[Segment], out_dir: Path, reencode: bool = False) -> list[Clip]:
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = info.path.suffix.lower() if info.path.suffix.lower() in _REMUX_SUFFIXES else ".mkv"
    clips = []
    for n, seg in enumerate(sorted(segments)):
        seg = Segment(max(0.0, seg.start), min(info.duration, seg.stop))
        name = f"{info.basename}_{n:03d}_{round(seg.start * 1000)}-{round(seg.stop * 1000)}"
        if reencode:
            clips.append(_reencode(info, seg, out_dir / f"{name}.mp4"))
        else:
            clips.append(_remux(info, seg, out_dir / f"{name}{suffix}"))
    return clips


def keyframe_before(info: VideoInfo, t: float) -> float:
    i = bisect.bisect_right(info.keyframes, t + 1e-6) - 1
    return info.keyframes[i] if i >= 0 else 0.0


def _remux(info: VideoInfo, seg: Segment, path: Path) -> Clip:
    start = keyframe_before(info, seg.start)
    with av.open(str(info.path)) as src, av.open(str(path), mode="w") as dst:
        video = src.streams.video[0]
        streams = [video, *src.streams.audio]
        out = {s.index: dst.add_stream_from_template(s) for s in streams}
        tb = video.time_base or Fraction(1, 90_000)
        origin = video.start_time or 0
        src.seek(int(start / tb) + origin, stream=video, backward=True)
        offsets: dict[int, int] = {}
        last = start
        for packet in src.demux(*streams):
            if packet.dts is None or packet.pts is None:
                continue
            s_tb = packet.stream.time_base or tb
            t = float(packet.pts * s_tb) - float(origin * tb)
            if packet.stream.index == video.index:
                if t < start - 1e-6:
                    continue
                if t >= seg.stop - 1e-6:
                    break
                last = max(last, t + float((packet.duration or 0) * s_tb))
            elif t < start - 1e-6 or t >= seg.stop:
                continue
            shift = offsets.setdefault(
                packet.stream.index, round(start / s_tb) + (packet.stream.start_time or 0)
            )
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out[packet.stream.index]
            dst.mux(packet)
    return Clip(path, seg, start, last)


def _reencode(info: VideoInfo, seg: Segment, path: Path) -> Clip:
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    fps = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
    first = last = None
    with av.open(str(info.path)) as src, av.open(str(path), mode="w") as dst:
        video = src.streams.video[0]
        tb = video.time_base or Fraction(1, 90_000)
        origin = video.start_time or 0
        enc = dst.add_stream(codec, rate=fps)
        assert isinstance(enc, av.VideoStream)
        enc.width, enc.height, enc.pix_fmt = (
            info.width - info.width % 2,
            info.height - info.height % 2,
            "yuv420p",
        )
        src.seek(int(keyframe_before(info, seg.start) / tb) + origin, stream=video, backward=True)
        n = 0
        for frame in src.decode(video):
            t = float(((frame.pts or 0) - origin) * tb)
            if t < seg.start - 1e-6:
                continue
            if t >= seg.stop - 1e-6:
                break
            first = t if first is None else first
            last = t
            out = frame.reformat(width=enc.width, height=enc.height, format="yuv420p")
            out.pts, out.time_base = n, Fraction(1) / fps
            n += 1
            for packet in enc.encode(out):
                dst.mux(packet)
        for packet in enc.encode(None):
            dst.mux(packet)
    return Clip(path, seg, first if first is not None else seg.start, (last or seg.start) + float(1 / fps))
