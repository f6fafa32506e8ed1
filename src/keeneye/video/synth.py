"""Synthetic surveillance videos with ground-truth events, for ``keeneye smartcut evaluate``.

A static scene seen by a fixed camera, with what makes real recorders hard: per-frame sensor noise,
a slow lighting drift (a sine over half an hour, ±25 %), camera-shake episodes (the picture jumps by a
few pixels) and compression. Events are objects that walk into the scene, sometimes stop a while, and
walk out; an event lasts from the first to the last frame the object is visible. Shake episodes are not
events: a recommender that reports them pays in FPR.

Output: ``{name}.mp4`` (H.264 via PyAV's libx264, MPEG-4 part 2 when the wheel lacks it) and
``{name}.events.json`` (:class:`GroundTruth`). The same seed gives the same events and pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, cast

import av
import numpy as np

from keeneye.video.errors import BAD_GROUND_TRUTH, VideoRejected
from keeneye.video.messages import Timestamp
from keeneye.video.segments import Segment

NOISE_BANK = 16  # pre-drawn noise frames, rolled: noise for hours of video costs a few frames' draws


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. Small frames and a low frame rate keep hour-long videos fast to make and read."""

    hours: float = 1.0
    events: int = 20
    seed: int = 0
    fps: int = 5
    width: int = 320
    height: int = 180
    gop_seconds: float = 2.0
    noise_sigma: float = 4.0
    drift_amplitude: float = 0.25
    drift_period_seconds: float = 1800.0
    shake_episodes: int | None = None  # default: one per 10 minutes
    min_event_seconds: float = 15.0
    max_event_seconds: float = 60.0
    name: str = "smartcut"
    crf: int = 23  # libx264 quality (higher: smaller files, sensor noise smoothed away as cameras do)


class GroundTruthFile(TypedDict):
    """The JSON of an ``.events.json`` file."""

    video: str
    duration: float
    fps: int
    events: list[Timestamp]
    shake: list[Timestamp]
    seed: int


@dataclass
class GroundTruth:
    """The ``.events.json`` file: when objects are visible (events) and when the camera shakes."""

    video: str
    duration: float
    fps: int
    events: list[Segment]
    shake: list[Segment] = field(default_factory=list)
    seed: int = 0

    def to_dict(self) -> GroundTruthFile:
        return {
            "video": self.video,
            "duration": self.duration,
            "fps": self.fps,
            "events": [{"start": e.start, "stop": e.stop} for e in self.events],
            "shake": [{"start": e.start, "stop": e.stop} for e in self.shake],
            "seed": self.seed,
        }

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        """Read an ``.events.json``; ``bad_ground_truth`` when it is missing or not of this shape."""
        try:
            return cls._from_json(cast(GroundTruthFile, json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VideoRejected(
                BAD_GROUND_TRUTH,
                f"{path}: not a ground-truth file ({exc.__class__.__name__}: {exc})",
                fix="pass the .events.json written by `keeneye synth smartcut`",
            ) from exc

    @classmethod
    def _from_json(cls, raw: GroundTruthFile) -> GroundTruth:
        return cls(
            video=str(raw["video"]),
            duration=float(raw["duration"]),
            fps=int(raw["fps"]),
            events=[Segment(float(e["start"]), float(e["stop"])) for e in raw["events"]],
            shake=[Segment(float(e["start"]), float(e["stop"])) for e in raw.get("shake", [])],
            seed=int(raw.get("seed", 0)),
        )


@dataclass(frozen=True)
class _Walker:
    """One event's object: enters from one side, maybe pauses mid-scene, leaves by the other side."""

    start: float
    stop: float
    pause: float  # seconds standing still in the middle of the event
    from_left: bool
    width: int
    height: int
    y: int
    colour: tuple[int, int, int]

    def x(self, t: float, frame_width: int) -> float:
        """Left edge at time ``t``: from just outside one side to just outside the other."""
        walk = (self.stop - self.start) - self.pause
        half = walk / 2
        elapsed = t - self.start
        if elapsed < half:
            u = 0.5 * elapsed / half
        elif elapsed < half + self.pause:
            u = 0.5
        else:
            u = 0.5 + 0.5 * (elapsed - half - self.pause) / half
        span = frame_width + self.width
        pos = -self.width + u * span
        return pos if self.from_left else frame_width - self.width - pos


def _place(
    rng: np.random.Generator, n: int, duration: float, lo: float, hi: float, gap: float
) -> list[Segment]:
    """``n`` non-overlapping intervals of ``lo``…``hi`` seconds, at least ``gap`` apart, inside the video."""
    room = duration - gap * (n + 1)
    hi = min(hi, room / n) if n else hi  # short videos get shorter events, never overlapping ones
    if n and hi < lo:
        raise ValueError(
            f"{n} events of at least {lo:.0f} s do not fit in {duration:.0f} s; use fewer events"
        )
    lengths = rng.uniform(lo, hi, size=n)
    free = room - float(lengths.sum())
    cuts = np.sort(rng.uniform(0, max(free, 0.0), size=n))
    out, t, prev = [], gap, 0.0
    for length, cut in zip(lengths, cuts, strict=True):
        t += float(cut - prev)
        prev = float(cut)
        out.append(Segment(round(t, 3), round(t + float(length), 3)))
        t += float(length) + gap
    return out


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static scene (sky, ground, a few buildings, fine texture), as float32 RGB."""
    yy = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), np.float32)
    img[...] = (90 + 60 * yy)[..., None] * np.array([0.9, 1.0, 1.05], np.float32)
    horizon = int(height * 0.45)
    img[horizon:] = np.array([95, 100, 80], np.float32)
    for _ in range(6):
        w, h = int(rng.integers(width // 12, width // 5)), int(rng.integers(height // 6, height // 3))
        x = int(rng.integers(0, width - w))
        img[horizon - h : horizon, x : x + w] = rng.uniform(60, 200, size=3)
    img += rng.normal(0, 6, size=(height, width, 1)).astype(np.float32)
    return img


def generate_video(
    out_dir: Path, spec: SynthSpec, progress: Callable[[float], None] | None = None
) -> tuple[Path, GroundTruth]:
    """Write the video and its ground truth into ``out_dir``; ``progress`` gets the fraction done."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    duration = spec.hours * 3600.0
    n_frames = round(duration * spec.fps)
    events = _place(rng, spec.events, duration, spec.min_event_seconds, spec.max_event_seconds, gap=20.0)
    n_shake = spec.shake_episodes if spec.shake_episodes is not None else max(1, int(duration // 600))
    shake = _place(rng, n_shake, duration, 3.0, 10.0, gap=5.0)
    margin = 4
    scene = _scene(rng, spec.height + 2 * margin, spec.width + 2 * margin)
    walkers = [
        _Walker(
            start=e.start,
            stop=e.stop,
            pause=float(rng.uniform(0, 0.4) * (e.stop - e.start)) if rng.random() < 0.5 else 0.0,
            from_left=bool(rng.random() < 0.5),
            width=int(rng.integers(spec.width // 16, spec.width // 8)),
            height=int(rng.integers(spec.height // 4, spec.height // 2)),
            y=int(rng.integers(spec.height // 3, spec.height * 3 // 4)),
            colour=(int(rng.integers(20, 235)), int(rng.integers(20, 235)), int(rng.integers(20, 235))),
        )
        for e in events
    ]
    noise = rng.normal(0, spec.noise_sigma, size=(NOISE_BANK, spec.height, spec.width, 3)).astype(np.float32)
    video_path = out_dir / f"{spec.name}.mp4"
    _encode(video_path, spec, n_frames, scene, margin, walkers, shake, noise, rng, progress)
    truth = GroundTruth(
        video=video_path.name,
        duration=n_frames / spec.fps,
        fps=spec.fps,
        events=events,
        shake=shake,
        seed=spec.seed,
    )
    (out_dir / f"{spec.name}.events.json").write_text(json.dumps(truth.to_dict(), indent=1))
    return video_path, truth


def _encoder_name() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _encode(
    path: Path,
    spec: SynthSpec,
    n_frames: int,
    scene: np.ndarray,
    margin: int,
    walkers: list[_Walker],
    shake: list[Segment],
    noise: np.ndarray,
    rng: np.random.Generator,
    progress: Callable[[float], None] | None,
) -> None:
    gop = max(1, round(spec.gop_seconds * spec.fps))
    codec = _encoder_name()
    options = {"g": str(gop), "bf": "0"}
    if codec == "libx264":
        options.update(
            {"preset": "ultrafast", "crf": str(spec.crf), "sc_threshold": "0", "keyint_min": str(gop)}
        )
    h, w = spec.height, spec.width
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=spec.fps, options=options)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        active = 0  # index of the first walker that may still be visible
        shake_i = 0
        for i in range(n_frames):
            t = i / spec.fps
            dx = dy = margin
            while shake_i < len(shake) and shake[shake_i].stop <= t:
                shake_i += 1
            if shake_i < len(shake) and shake[shake_i].start <= t:
                dx, dy = (int(v) for v in rng.integers(0, 2 * margin + 1, size=2))
            gain = 1.0 + spec.drift_amplitude * math.sin(2 * math.pi * t / spec.drift_period_seconds)
            frame = scene[dy : dy + h, dx : dx + w].copy()
            while active < len(walkers) and walkers[active].stop <= t:
                active += 1
            for walker in walkers[active : active + 1]:
                if walker.start <= t < walker.stop:
                    x0 = round(walker.x(t, w))
                    y0 = max(0, walker.y - walker.height // 2)
                    xs, xe = max(0, x0), min(w, x0 + walker.width)
                    if xe > xs:
                        frame[y0 : y0 + walker.height, xs:xe] = walker.colour
            frame *= gain
            frame += np.roll(noise[i % NOISE_BANK], shift=(i * 7) % h, axis=0)
            rgb = np.clip(frame, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
            if progress is not None and i % 500 == 0:
                progress(i / n_frames)
        for packet in stream.encode(None):
            container.mux(packet)
    if progress is not None:
        progress(1.0)
