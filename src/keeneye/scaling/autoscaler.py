"""The autoscaler: the Kubernetes HPA rule, run locally by ``keeneye up``. Pure logic, no I/O.

For each metric (worker utilisation = mean busy fraction; lag per replica = unacked ``.in``
messages / replicas) the recommendation is ``ceil(current × metric / target)``, or ``current``
while ``|metric / target − 1|`` is within the tolerance; the largest recommendation wins, clamped
to ``[min, max]`` so no flood can start more than ``max`` workers. Scale-up is immediate;
scale-down uses the highest recommendation seen over the stabilisation window (HPA's
``scaleDown.stabilizationWindowSeconds``), so a short lull never sheds replicas.

The clock is injected, so every behaviour is table-tested without sleeping.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from keeneye.domain import ConfigError, JsonObject
from keeneye.settings import ScalingSettings

log = logging.getLogger(__name__)

Direction = Literal["up", "down", "none"]


@dataclass(frozen=True)
class ScalingPolicy:
    """Bounds and targets for one pipeline's workers."""

    min_replicas: int
    max_replicas: int
    utilization_target: float = 0.7
    lag_per_replica_target: float = 100.0
    tolerance: float = 0.1
    scale_down_window_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise ValueError(
                f"replicas need 0 ≤ min ≤ max, max ≥ 1; got min={self.min_replicas} max={self.max_replicas}"
            )
        if self.utilization_target <= 0 or self.lag_per_replica_target <= 0:
            raise ValueError("utilisation and lag targets must be above 0")

    @classmethod
    def from_settings(cls, scaling: ScalingSettings, min_replicas: int, max_replicas: int) -> ScalingPolicy:
        return cls(
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            utilization_target=scaling.utilization_target,
            lag_per_replica_target=scaling.lag_per_replica_target,
            tolerance=scaling.tolerance,
            scale_down_window_seconds=scaling.scale_down_window_seconds,
        )


def replica_bounds(
    scaling: ScalingSettings,
    *,
    bus_url: str,
    spec_min: int,
    spec_max: int,
    min_override: int | None = None,
    max_override: int | None = None,
) -> tuple[int, int]:
    """A pipeline's worker ``(min, max)`` for ``keeneye up``.

    ``replica_profile`` ``spec`` uses the pipeline spec (the ops profile, 4–6 for the blueprints);
    ``embedded`` caps it at ``embedded_min/max_replicas`` (1–2) so a laptop is not flooded; ``auto``
    picks embedded on the SQLite bus and spec on Kafka. ``--min/--max-replicas`` override both.
    """
    profile = scaling.replica_profile
    if profile == "auto":
        profile = "spec" if bus_url.lower().startswith("kafka:") else "embedded"
    if profile == "spec":
        lo, hi = spec_min, spec_max
    else:
        hi = min(spec_max, scaling.embedded_max_replicas)
        lo = min(spec_min, scaling.embedded_min_replicas, hi)
    if max_override is not None:
        hi = max_override
    if min_override is not None:
        lo = min_override
    elif lo > hi:
        lo = hi  # only the maximum was lowered: the minimum follows it
    if hi < 1:
        raise ConfigError("--max-replicas", f"{hi} would run no worker at all", fix="use 1 or more")
    if lo < 0 or lo > hi:
        raise ConfigError(
            "--min-replicas",
            f"{lo} is outside 0..{hi} (the maximum)",
            fix="lower --min-replicas or raise --max",
        )
    return lo, hi


@dataclass(frozen=True)
class ScalingDecision:
    """One autoscaler evaluation: what it saw, what it wants, and why."""

    time: float  # the injected clock's reading
    pipeline: str
    current: int
    desired: int
    recommendation: int  # this evaluation's clamped recommendation, before stabilisation
    utilization: float | None
    lag: int | None
    reason: str

    @property
    def direction(self) -> Direction:
        if self.desired > self.current:
            return "up"
        return "down" if self.desired < self.current else "none"

    def as_dict(self) -> JsonObject:
        return {**asdict(self), "direction": self.direction}


def proposal(current: int, metric: float, target: float, tolerance: float) -> int:
    """HPA's rule for one metric: ``ceil(current × metric / target)``, unchanged within tolerance."""
    ratio = metric / target
    if abs(ratio - 1.0) <= tolerance + 1e-9:  # exactly 10% off counts as inside, despite float error
        return current
    # The rounding guard keeps 3 × 0.7 / 0.7 from becoming ceil(3.0000000000000004) = 4.
    return math.ceil(round(current * ratio, 9))


class Autoscaler:
    """Evaluates pipelines against their policies; keeps the recommendation history per pipeline."""

    def __init__(
        self,
        policies: Mapping[str, ScalingPolicy],
        *,
        clock: Callable[[], float] = time.monotonic,
        keep_decisions: int = 50,
    ) -> None:
        self.policies = dict(policies)
        self._clock = clock
        self._history: dict[str, deque[tuple[float, int]]] = {p: deque() for p in self.policies}
        self._decisions: deque[ScalingDecision] = deque(maxlen=keep_decisions)

    def decide(
        self, pipeline: str, current: int, *, utilization: float | None, lag: int | None
    ) -> ScalingDecision:
        """Desired replicas for ``pipeline`` now. ``None`` metrics are unknown and ignored."""
        policy = self.policies[pipeline]
        now = self._clock()
        recommendation, why = self._recommend(policy, current, utilization, lag)

        # Stabilisation as in Kubernetes: up to the lowest recommendation of the (zero) up-window,
        # i.e. now; down only to the highest recommendation of the down-window.
        history = self._history[pipeline]
        history.append((now, recommendation))
        horizon = now - policy.scale_down_window_seconds
        while history and history[0][0] < horizon:
            history.popleft()
        down_to = max(r for _, r in history)
        if recommendation > current:
            desired = recommendation
            reason = f"scale up: {why}"
        elif down_to < current:
            desired = down_to
            reason = (
                f"scale down: {why}"
                if down_to == recommendation
                else (
                    f"scale down to {down_to}, the highest recommendation in the last "
                    f"{policy.scale_down_window_seconds:g} s ({why})"
                )
            )
        else:
            desired = current
            if recommendation < current:
                reason = (
                    f"scale down held: {recommendation} recommended but {down_to} was recommended within "
                    f"the last {policy.scale_down_window_seconds:g} s ({why})"
                )
            else:
                reason = f"steady: {why}"
        decision = ScalingDecision(now, pipeline, current, desired, recommendation, utilization, lag, reason)
        self._decisions.append(decision)
        level = logging.INFO if decision.direction != "none" else logging.DEBUG
        log.log(
            level,
            "autoscaler %s: %d → %d (%s)",
            pipeline,
            current,
            desired,
            reason,
            extra={"scaling": decision.as_dict()},
        )
        return decision

    def _recommend(
        self, policy: ScalingPolicy, current: int, utilization: float | None, lag: int | None
    ) -> tuple[int, str]:
        """The clamped recommendation of this evaluation and a one-line reason."""
        base = max(current, 1)  # from zero replicas the rule needs one to multiply
        candidates: list[tuple[int, str]] = []
        if utilization is not None:
            n = proposal(base, utilization, policy.utilization_target, policy.tolerance)
            candidates.append((n, f"utilisation {utilization:.2f} vs target {policy.utilization_target:.2f}"))
        if lag is not None:
            per_replica = lag / base
            n = proposal(base, per_replica, policy.lag_per_replica_target, policy.tolerance)
            if current == 0 and lag == 0:
                n = 0  # nothing to do and nobody running: no reason to start one
            candidates.append(
                (n, f"lag {per_replica:.1f}/replica vs target {policy.lag_per_replica_target:g}")
            )
        if not candidates:
            wanted, why = current, "no metrics yet"
        else:
            wanted, why = max(candidates, key=lambda c: c[0])
        clamped = min(max(wanted, policy.min_replicas), policy.max_replicas)
        if clamped != wanted:
            bound = "maximum" if clamped < wanted else "minimum"
            why += f"; {wanted} clamped to the {bound} {clamped}"
        return clamped, why

    def decisions(self, pipeline: str | None = None) -> list[ScalingDecision]:
        """The most recent decisions, oldest first (all pipelines, or one)."""
        return [d for d in self._decisions if pipeline is None or d.pipeline == pipeline]


__all__ = ["Autoscaler", "Direction", "ScalingDecision", "ScalingPolicy", "proposal", "replica_bounds"]
