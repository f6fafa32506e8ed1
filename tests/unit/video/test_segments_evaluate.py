"""The shared segment post-processing and the TPR/FPR arithmetic, as tables."""

from __future__ import annotations

import pytest

from keeneye.video import Segment, SegmentPolicy, VideoRejected, evaluate, parse_segments, to_segments
from keeneye.video.segments import enforce_min_length, hysteresis, merge, pad

S = Segment


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([0, 0, 0, 0, 0], []),
        ([0, 0.5, 0, 0, 0], []),  # a weak blip never opens a segment
        ([0, 1, 0, 0, 0], [S(1, 2)]),  # covers until the next sample
        ([0, 0.5, 1, 0.5, 0], [S(1, 4)]),  # weak neighbours extend a strong peak both ways
        ([1, 0, 0, 0.6, 1], [S(0, 1), S(3, 5)]),  # a run to the end closes one step after the last sample
        ([0.5, 0.5, 0.5, 0.5, 0.5], []),
    ],
)
def test_hysteresis(scores: list[float], expected: list[Segment]) -> None:
    assert hysteresis([0, 1, 2, 3, 4], scores, high=1.0, low=0.5, end=5) == expected


@pytest.mark.parametrize(
    ("segments", "gap", "expected"),
    [
        ([S(0, 10), S(15, 20)], 5.0, [S(0, 10), S(15, 20)]),  # a gap of exactly G stays
        ([S(0, 10), S(14.9, 20)], 5.0, [S(0, 20)]),
        ([S(15, 20), S(0, 10), S(5, 12)], 0.0, [S(0, 12), S(15, 20)]),  # unsorted, overlapping
        ([S(0, 30), S(5, 10)], 0.0, [S(0, 30)]),  # contained
    ],
)
def test_merge(segments: list[Segment], gap: float, expected: list[Segment]) -> None:
    assert merge(segments, gap) == expected


def test_pad_is_clipped_to_the_video() -> None:
    assert pad([S(1, 10), S(50, 99)], before=2, after=3, duration=100) == [S(0, 13), S(48, 100)]


@pytest.mark.parametrize(
    ("segment", "duration", "expected"),
    [
        (S(50, 54), 100, S(44.5, 59.5)),  # grows around its centre
        (S(1, 3), 100, S(0, 15)),  # shifted right at the start
        (S(97, 99), 100, S(85, 100)),  # shifted left at the end
        (S(10, 40), 100, S(10, 40)),  # long enough already
        (S(2, 3), 12, S(0, 12)),  # a video shorter than the minimum is one segment
    ],
)
def test_minimum_length_of_fifteen_seconds(segment: Segment, duration: float, expected: Segment) -> None:
    assert enforce_min_length([segment], 15.0, duration) == [expected]


def test_to_segments_chains_every_step() -> None:
    times = [float(t) for t in range(100)]
    scores = [0.0] * 100
    scores[20] = scores[21] = 1.0  # 20…22 → pad → 18…24 → 15 s around the centre → 13.5…28.5
    scores[30] = 1.0  # 30…31, within the merge gap of the first → 18…33 after padding
    scores[97] = 1.0  # 97…98 → 95…100 → 90…105 around the centre → shifted into the video: 85…100
    policy = SegmentPolicy(high=1.0, low=0.5, merge_gap=10, pad_before=2, pad_after=2, min_length=15)
    assert to_segments(times, scores, 100.0, policy, step=1.0) == [S(18, 33), S(85, 100)]


def test_policy_refuses_inverted_thresholds() -> None:
    with pytest.raises(ValueError, match="low ≤ high"):
        SegmentPolicy(high=0.1, low=0.2)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"timestamps": [{"start": 10, "stop": 30}]}, [S(10, 30)]),
        ([{"start": 1.5, "stop": 2}], [S(1.5, 2)]),
        ([[0, 200]], [S(0, 100)]),  # clipped to the video
    ],
)
def test_parse_segments(raw: object, expected: list[Segment]) -> None:
    assert parse_segments(raw, duration=100.0) == expected


@pytest.mark.parametrize(
    "raw",
    [{"x": 1}, "nope", [{"start": 5}], [{"start": 30, "stop": 10}], [[-1, 5]], [[150, 160]], [["a", "b"]]],
)
def test_parse_segments_refuses_what_is_not_a_stretch_of_the_video(raw: object) -> None:
    with pytest.raises(VideoRejected) as err:
        parse_segments(raw, duration=100.0)
    assert err.value.reason == "bad_segments"


def test_evaluate_by_seconds() -> None:
    events = [S(10, 20), S(50, 60), S(80, 90)]  # 30 event seconds, 70 others
    found = [S(5, 18), S(52, 70)]  # covers 8 + 8 event seconds, 5 + 10 others
    ev = evaluate(found, events, duration=100.0)
    assert ev.tpr == pytest.approx(16 / 30)
    assert ev.fpr == pytest.approx(15 / 70)
    assert (ev.n_events_found, ev.event_recall) == (2, pytest.approx(2 / 3))
    assert not ev.meets_seed


def test_evaluate_counts_overlapping_segments_once() -> None:
    ev = evaluate([S(0, 12), S(8, 20), S(10, 20)], [S(10, 20)], duration=40.0)
    assert (ev.tpr, ev.fpr, ev.n_segments) == (1.0, pytest.approx(10 / 30), 1)


def test_perfect_segments_meet_the_seed() -> None:
    ev = evaluate([S(10, 20)], [S(10, 20)], duration=100.0)
    assert (ev.tpr, ev.fpr, ev.event_recall, ev.meets_seed) == (1.0, 0.0, 1.0, True)
