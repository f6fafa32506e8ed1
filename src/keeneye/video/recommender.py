"""The recommender base class: what a smartcut plugin is, and how built-in and third-party ones are found.

A recommender turns sampled frames into relevant segments in two halves:

- :meth:`Recommender.scorer` returns a fresh, stateful :class:`FrameScorer` per video, called once per
  sampled frame in time order with the RGB image (longest side at most ``img_size``) → a score, higher
  meaning more relevant. Frames may come straight from the sampler or back from chunks, one chunk at a
  time, so a plugin process can score each chunk as its ``in-progress`` message arrives;
- the shared post-processing (:func:`keeneye.video.segments.to_segments`) with the recommender's
  :class:`~keeneye.video.segments.SegmentPolicy` turns (time, score) pairs into segments.

``name``, ``label`` and ``img_size`` are the seed's ``started-plugins`` message. The plugin SDK wraps
a recommender into a process speaking the seed's bus protocol; this module stays free of the bus.

Registry: the built-ins plus entry points of group :data:`ENTRY_POINT_GROUP` (a class deriving from
:class:`Recommender`); a duplicate name is refused, a plugin that fails to import is logged and skipped.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import ClassVar, Protocol

import numpy as np

from keeneye.video.errors import UNKNOWN_PLUGIN, VideoRejected
from keeneye.video.messages import RequestOptions, StartedPlugin
from keeneye.video.segments import Segment, SegmentPolicy, to_segments

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "keeneye.smartcut"


class TimedImage(Protocol):
    """A sampled frame as a scorer sees it (a :class:`SampledFrame` or a frame read from a chunk)."""

    @property
    def timestamp(self) -> float: ...

    @property
    def image(self) -> np.ndarray: ...


class FrameScorer(Protocol):
    """Per-video state: call with each frame's RGB image in time order, get its relevance score."""

    def __call__(self, image: np.ndarray) -> float: ...


@dataclass
class Recommendation:
    """Scores per sampled frame and the segments made from them."""

    times: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


class Recommender(ABC):
    """Base of every smartcut recommender. Subclasses set the class attributes and :meth:`scorer`."""

    name: ClassVar[str]  # the seed's plugin_name: unique, [a-z0-9-]
    label: ClassVar[str]  # shown in the UI
    img_size: ClassVar[int] = 320  # longest side of the frames it wants
    default_policy: ClassVar[SegmentPolicy]

    def __init__(self, policy: SegmentPolicy | None = None) -> None:
        self.policy = policy or self.default_policy

    @abstractmethod
    def scorer(self) -> FrameScorer:
        """A fresh scorer for one video."""

    def scorer_for(self, options: Mapping[str, object] | RequestOptions | None) -> FrameScorer:
        """A fresh scorer for one request's ``options`` (e.g. ``{"classes": ["person"]}``, see
        docs/smartcut.md → "Request options"). The default ignores them: a plugin that takes none
        behaves as the seed's. Raise :class:`VideoRejected` to refuse options it cannot honour."""
        return self.scorer()

    def announcement(self) -> StartedPlugin:
        """The seed's ``started-plugins`` message for this recommender."""
        return {"plugin_name": self.name, "label": self.label, "img_size": self.img_size}

    def recommend(
        self,
        frames: Iterable[TimedImage],
        duration: float,
        step: float,
        options: Mapping[str, object] | RequestOptions | None = None,
    ) -> Recommendation:
        """Score ``frames`` (in time order), then post-process the scores into segments."""
        score = self.scorer_for(options) if options else self.scorer()
        out = Recommendation()
        for frame in frames:
            out.times.append(frame.timestamp)
            out.scores.append(float(score(frame.image)))
        out.segments = to_segments(out.times, out.scores, duration, self.policy, step)
        return out


_REGISTRY: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Add a recommender class under its ``name``; a second class with the same name is refused."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(
            f"smartcut recommender {cls.name!r} is already registered by {_REGISTRY[cls.name].__module__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


_loaded_entry_points = False


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Recommender)):
                raise TypeError(f"{ep.value} is not a Recommender subclass")
            register(cls)
        except Exception:  # a broken third-party plugin must not take the others down
            log.exception("skipped smartcut plugin", extra={"entry_point": ep.name})


def recommenders() -> dict[str, type[Recommender]]:
    """Name → class of every recommender available in this process."""
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def make_recommender(name: str, policy: SegmentPolicy | None = None) -> Recommender:
    available = recommenders()
    if name not in available:
        raise VideoRejected(
            UNKNOWN_PLUGIN,
            f"no smartcut plugin named {name!r}",
            status=404,
            fix=f"use one of: {', '.join(available) or 'none installed'}",
        )
    return available[name](policy)
