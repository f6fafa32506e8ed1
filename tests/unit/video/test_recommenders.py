"""Recommenders: the motion scorer's robustness, the registry, and the seed's bar on a synthetic video."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from keeneye.video import (
    GroundTruth,
    MotionRecommender,
    Recommender,
    SceneRecommender,
    SegmentPolicy,
    VideoRejected,
    evaluate,
    make_recommender,
    probe,
    recommenders,
    register,
    sample_frames,
)
from keeneye.video.motion import MotionScorer
from keeneye.video.recommender import FrameScorer
from keeneye.video.scene import ContentScorer

H, W = 90, 160


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Blocks with hard edges, dark enough that +40 % light does not saturate (clipping is not drift).
    base = np.kron(rng.uniform(40, 175, size=(9, 16, 3)), np.ones((10, 10, 1)))
    return base.astype(np.float32)


def _frames(
    n: int, seed: int = 0, gain: float = 0.0, shake: int = 0, box_from: int | None = None
) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    big = np.pad(_scene(seed), ((8, 8), (8, 8), (0, 0)), mode="reflect")
    for i in range(n):
        dy, dx = rng.integers(-shake, shake + 1, size=2) if shake else (0, 0)
        frame = big[8 + dy : 8 + dy + H, 8 + dx : 8 + dx + W].copy()
        if box_from is not None and i >= box_from:
            frame[30:70, 60 + 2 * (i - box_from) : 75 + 2 * (i - box_from)] = (250, 30, 30)
        frame *= 1.0 + gain * i / n
        frame += rng.normal(0, 5, size=frame.shape)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _scores(scorer: FrameScorer, frames: Iterator[np.ndarray]) -> list[float]:
    return [scorer(f) for f in frames]


LOW = MotionRecommender.default_policy.low
HIGH = MotionRecommender.default_policy.high


@pytest.mark.parametrize(
    ("what", "kwargs"),
    [
        ("sensor noise", {}),
        ("lighting drift of +40 %", {"gain": 0.4}),
        ("camera shake of ±4 px", {"shake": 4}),
    ],
)
def test_motion_ignores_what_is_not_an_event(what: str, kwargs: dict[str, float]) -> None:
    scores = _scores(MotionScorer(), _frames(40, **kwargs))  # type: ignore[arg-type]
    assert max(scores) < LOW, what


def test_motion_sees_an_object_entering() -> None:
    scores = _scores(MotionScorer(), _frames(40, box_from=20))
    assert max(scores[:20]) < LOW
    assert min(scores[20:30]) > HIGH  # a 40×15 box is ~4 % of the frame


def test_scene_scores_a_cut_far_above_a_still_scene() -> None:
    scorer = ContentScorer()
    still = [scorer(f) for f in _frames(10, seed=1)]
    cut = scorer(next(_frames(1, seed=2)))
    high = SceneRecommender.default_policy.high
    assert max(still) < high and cut > 5 * high


def test_registry_lists_the_built_ins_and_their_announcements() -> None:
    assert {"motion", "scene"} <= set(recommenders())
    assert make_recommender("motion").announcement() == {
        "plugin_name": "motion",
        "label": "Motion",
        "img_size": 320,
    }


def test_a_second_recommender_with_a_taken_name_is_refused() -> None:
    class Impostor(Recommender):
        name: ClassVar[str] = "motion"
        label: ClassVar[str] = "Not motion"
        default_policy: ClassVar[SegmentPolicy] = SegmentPolicy(high=1, low=1)

        def scorer(self) -> FrameScorer:
            return lambda image: 0.0

    with pytest.raises(ValueError, match="already registered"):
        register(Impostor)
    assert recommenders()["motion"] is MotionRecommender


def test_unknown_plugin_names_the_available_ones() -> None:
    with pytest.raises(VideoRejected) as err:
        make_recommender("yolo")
    assert (err.value.reason, err.value.status) == ("unknown_plugin", 404)
    assert err.value.fix is not None and "motion" in err.value.fix


def test_motion_meets_the_seed_on_a_synthetic_video(short_video: tuple[Path, GroundTruth]) -> None:
    video, truth = short_video
    info = probe(video)
    rec = make_recommender("motion")
    result = rec.recommend(sample_frames(info, 1.0, rec.img_size), info.duration, 1.0)
    ev = evaluate(result.segments, truth.events, info.duration)
    assert ev.tpr > 0.9 and ev.fpr < 0.2, ev
    assert ev.event_recall == 1.0
    assert all(s.length >= 15.0 for s in result.segments)
