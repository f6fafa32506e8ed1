"""The autoscaler's HPA rule: tolerance, max-of-metrics, clamping, stabilisation, a synthetic ramp."""

from __future__ import annotations

import logging

import pytest

from keeneye.scaling import Autoscaler, ScalingPolicy, proposal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scaler(min_replicas: int = 1, max_replicas: int = 6, window: float = 300.0) -> tuple[Autoscaler, Clock]:
    clock = Clock()
    policy = ScalingPolicy(
        min_replicas,
        max_replicas,
        utilization_target=0.7,
        lag_per_replica_target=100,
        tolerance=0.1,
        scale_down_window_seconds=window,
    )
    return Autoscaler({"p": policy}, clock=clock), clock


@pytest.mark.parametrize(
    ("current", "metric", "target", "expected"),
    [
        (4, 0.7, 0.7, 4),  # on target
        (4, 0.77, 0.7, 4),  # +10%: inside the tolerance band
        (4, 0.63, 0.7, 4),  # −10%: inside the band
        (4, 0.78, 0.7, 5),  # just outside: ceil(4 × 1.114) = 5
        (4, 1.0, 0.7, 6),  # ceil(5.71)
        (4, 0.35, 0.7, 2),  # half the target: half the replicas
        (4, 0.0, 0.7, 0),  # idle (the caller clamps to min)
        (3, 0.7, 0.7, 3),  # no float drift: 3 × 0.7 / 0.7 stays 3
        (1, 250.0, 100.0, 3),  # lag 250 per replica vs 100
        (2, 0.9, 0.7, 3),  # ceil(2.571)
    ],
)
def test_proposal_table(current: int, metric: float, target: float, expected: int) -> None:
    assert proposal(current, metric, target, 0.1) == expected


@pytest.mark.parametrize(
    ("current", "utilization", "lag", "desired", "reason_start"),
    [
        (2, 0.7, 200, 2, "steady"),  # both on target
        (2, 0.95, 0, 3, "scale up"),  # utilisation wins
        (2, 0.1, 1000, 6, "scale up"),  # lag 500/replica → 10, clamped to max 6
        (2, None, None, 2, "steady: no metrics yet"),
        (0, None, None, 1, "scale up"),  # below the minimum
        (8, 0.7, 800, 6, "scale down"),  # above the maximum (max lowered): at once
        (1, 5.0, None, 6, "scale up"),  # absurd load: still never above max
    ],
)
def test_decision_table(
    current: int, utilization: float | None, lag: int | None, desired: int, reason_start: str
) -> None:
    auto, _ = scaler()
    d = auto.decide("p", current, utilization=utilization, lag=lag)
    assert d.desired == desired
    assert d.reason.startswith(reason_start), d.reason
    assert d.current == current


def test_clamp_is_named_in_the_reason() -> None:
    auto, _ = scaler(max_replicas=4)
    d = auto.decide("p", 2, utilization=None, lag=5000)
    assert d.desired == 4
    assert "50 clamped to the maximum 4" in d.reason


def test_min_zero_starts_nothing_without_work_and_one_with_work() -> None:
    auto, clock = scaler(min_replicas=0, window=0)
    assert auto.decide("p", 0, utilization=None, lag=0).desired == 0
    clock.now += 5
    assert auto.decide("p", 0, utilization=None, lag=30).desired == 1


def test_scale_down_waits_for_the_window_and_uses_its_highest_recommendation() -> None:
    auto, clock = scaler(window=300)
    assert auto.decide("p", 1, utilization=1.0, lag=None).desired == 2  # up at once
    clock.now += 10
    assert auto.decide("p", 2, utilization=1.0, lag=None).desired == 3
    clock.now += 10
    d = auto.decide("p", 3, utilization=0.1, lag=None)  # load gone
    assert d.desired == 3
    assert d.recommendation == 1
    assert d.reason.startswith("scale down held")
    clock.now += 285  # the recommendation of 3 (t=+10) is 295 s old: still in the window
    assert auto.decide("p", 3, utilization=0.1, lag=None).desired == 3
    clock.now += 10  # now only recommendations of 1 remain inside the window
    d = auto.decide("p", 3, utilization=0.1, lag=None)
    assert (d.desired, d.direction) == (1, "down")


def test_zero_window_scales_down_at_once() -> None:
    auto, _ = scaler(window=0)
    assert auto.decide("p", 4, utilization=0.2, lag=None).desired == 2


def test_synthetic_ramp_min_to_max_and_back_after_the_window_never_above_max() -> None:
    """A load ramp against a simulated pool: utilisation = offered work / replicas (capped at 1)."""
    auto, clock = scaler(min_replicas=1, max_replicas=4, window=300)
    replicas = 1
    capacity_per_replica = 10.0  # images/s one worker handles
    history: list[tuple[float, int]] = []
    # 0–600 s: load rises 2 → 80 images/s (a flood, 2× what max replicas can take);
    # 600–1500 s: back to 2 images/s.
    for t in range(0, 1500, 5):
        load = 2 + 78 * min(t, 600) / 600 if t < 600 else 2.0
        utilization = min(1.0, load / (replicas * capacity_per_replica))
        backlog = max(0.0, load - replicas * capacity_per_replica) * 30  # lag grows while overloaded
        d = auto.decide("p", replicas, utilization=utilization, lag=int(backlog))
        assert 1 <= d.desired <= 4, d
        replicas = d.desired
        history.append((t, replicas))
        clock.now += 5
    peak_at = next(t for t, r in history if r == 4)
    assert peak_at < 600, "reached max under load"
    assert max(r for _, r in history) == 4, "never above max"
    after = [(t, r) for t, r in history if t >= 600]
    # Load drops at 600 s; the last high recommendation is < 300 s before, so no drop until ~900 s.
    assert all(r == 4 for t, r in after if t < 600 + 295)
    assert history[-1][1] == 1, "back to min after the window"
    first_min = next(t for t, r in after if r == 1)
    assert 600 + 295 <= first_min <= 600 + 400


def test_decisions_are_recorded_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    auto, clock = scaler()
    with caplog.at_level(logging.INFO, logger="keeneye.scaling.autoscaler"):
        auto.decide("p", 1, utilization=1.0, lag=None)
        clock.now += 5
        auto.decide("p", 2, utilization=0.7, lag=None)
    recorded = auto.decisions("p")
    assert [(d.current, d.desired, d.direction) for d in recorded] == [(1, 2, "up"), (2, 2, "none")]
    assert recorded[0].time == 1000.0
    assert recorded[0].as_dict()["direction"] == "up"
    up = [r for r in caplog.records if "1 → 2" in r.getMessage()]
    assert len(up) == 1
    assert up[0].scaling["desired"] == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(("lo", "hi"), [(3, 2), (-1, 2), (0, 0)])
def test_policy_refuses_bad_bounds(lo: int, hi: int) -> None:
    with pytest.raises(ValueError, match="replicas need"):
        ScalingPolicy(lo, hi)
