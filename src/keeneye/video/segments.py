"""Per-frame scores → relevant segments: the one post-processing every recommender shares.

Steps, in order (:func:`to_segments`):

1. **hysteresis** — a run of consecutive samples scoring at least ``low`` becomes a segment when one
   of its samples scores at least ``high``: a strong peak opens a segment, weaker neighbours extend it,
   lone weak blips do not. A run covers from its first sample to the next sample after it (the
   activity was seen until then), or one step past the last sample of the video;
2. **merge** — segments separated by a gap shorter than ``merge_gap`` become one;
3. **pad** — ``pad_before`` / ``pad_after`` seconds are added around each segment (an event starts
   before the first frame that shows it, between two samples);
4. **minimum length** — a segment shorter than ``min_length`` (the seed: 15 s) grows around its
   centre to that length, shifted to stay inside the video; a video shorter than that is one segment;
5. **clip and merge again** — everything is clipped to ``[0, duration]`` and overlaps are joined.

All times are seconds from the start of the video.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keeneye.video.errors import BAD_SEGMENTS, VideoRejected

SEED_MIN_SEGMENT_SECONDS = 15.0


@dataclass(frozen=True, order=True)
class Segment:
    """A relevant stretch of video, ``start`` ≤ ``stop``, seconds."""

    start: float
    stop: float

    @property
    def length(self) -> float:
        return self.stop - self.start

    def to_json(self) -> dict[str, float]:
        """The seed's timestamp shape ``{"start", "stop"}`` (seconds, millisecond precision)."""
        return {"start": round(self.start, 3), "stop": round(self.stop, 3)}


@dataclass(frozen=True)
class SegmentPolicy:
    """Thresholds and timings of :func:`to_segments`; each recommender brings its own thresholds."""

    high: float
    low: float
    merge_gap: float = 10.0
    pad_before: float = 2.0
    pad_after: float = 2.0
    min_length: float = SEED_MIN_SEGMENT_SECONDS

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"hysteresis needs low ≤ high, got low={self.low} high={self.high}")
        if min(self.merge_gap, self.pad_before, self.pad_after, self.min_length) < 0:
            raise ValueError("merge_gap, pads and min_length must not be negative")


def hysteresis(
    times: Sequence[float], scores: Sequence[float], high: float, low: float, end: float
) -> list[Segment]:
    """Step 1 of the module docstring; ``end`` closes a run that lasts to the last sample."""
    if len(times) != len(scores):
        raise ValueError(f"{len(times)} times but {len(scores)} scores")
    out: list[Segment] = []
    run_start: int | None = None
    strong = False
    for i, score in enumerate(scores):
        if score >= low:
            if run_start is None:
                run_start, strong = i, False
            strong = strong or score >= high
            continue
        if run_start is not None and strong:
            out.append(Segment(times[run_start], times[i]))
        run_start = None
    if run_start is not None and strong:
        out.append(Segment(times[run_start], max(end, times[-1])))
    return out


def merge(segments: Sequence[Segment], gap: float = 0.0) -> list[Segment]:
    """Join segments that overlap or lie less than ``gap`` seconds apart (sorted result)."""
    out: list[Segment] = []
    for seg in sorted(segments):
        if (out and seg.start - out[-1].stop < gap) or (out and seg.start <= out[-1].stop):
            out[-1] = Segment(out[-1].start, max(out[-1].stop, seg.stop))
        else:
            out.append(seg)
    return out


def pad(segments: Sequence[Segment], before: float, after: float, duration: float) -> list[Segment]:
    return [Segment(max(0.0, s.start - before), min(duration, s.stop + after)) for s in segments]


def enforce_min_length(segments: Sequence[Segment], min_length: float, duration: float) -> list[Segment]:
    """Grow short segments around their centre to ``min_length``, shifted to stay in ``[0, duration]``."""
    if duration <= min_length:
        return [Segment(0.0, duration)] if segments else []
    out = []
    for s in segments:
        if s.length >= min_length:
            out.append(s)
            continue
        centre = (s.start + s.stop) / 2
        start = min(max(0.0, centre - min_length / 2), duration - min_length)
        out.append(Segment(start, start + min_length))
    return out


def to_segments(
    times: Sequence[float], scores: Sequence[float], duration: float, policy: SegmentPolicy, step: float
) -> list[Segment]:
    """Steps 1–5 of the module docstring; ``step`` is the sampling step (seconds between samples)."""
    if not times:
        return []
    runs = hysteresis(times, scores, policy.high, policy.low, end=min(duration, times[-1] + step))
    joined = merge(runs, policy.merge_gap)
    padded = pad(joined, policy.pad_before, policy.pad_after, duration)
    grown = enforce_min_length(padded, policy.min_length, duration)
    return merge([Segment(max(0.0, s.start), min(duration, s.stop)) for s in grown])


def parse_segments(raw: object, duration: float | None = None) -> list[Segment]:
    """Segments from JSON: the processed-files message, its ``timestamps`` list, or a list of pairs.

    Refuses (``bad_segments``) anything else, negative or reversed times, and times past ``duration``.
    """
    items = raw.get("timestamps") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise VideoRejected(
            BAD_SEGMENTS,
            "segments must be a list of {start, stop} or the processed-files message",
            fix='pass e.g. {"timestamps": [{"start": 10, "stop": 30}]}',
        )
    out = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, dict):
                start, stop = float(item["start"]), float(item["stop"])
            else:
                start, stop = (float(v) for v in item)
        except (KeyError, TypeError, ValueError) as exc:
            raise VideoRejected(
                BAD_SEGMENTS,
                f"segment {i}: {item!r} is not {{start, stop}} in seconds",
                fix='write segments as {"start": 10, "stop": 30}',
            ) from exc
        if not (0 <= start < stop) or (duration is not None and start >= duration):
            raise VideoRejected(
                BAD_SEGMENTS,
                f"segment {i}: start {start} / stop {stop} is not a stretch of the video"
                + (f" (0…{duration:.3f} s)" if duration is not None else ""),
                fix="use 0 ≤ start < stop ≤ the video's duration",
            )
        out.append(Segment(start, stop if duration is None else min(stop, duration)))
    return out
