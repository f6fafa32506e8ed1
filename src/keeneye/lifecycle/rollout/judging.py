"""Judging a rollout, without I/O: whether two answers agree, what the controller measured
(:class:`Evaluation`: per-variant counts, error rates, p95 latency, online quality, agreement) and the
verdict of a shadow or canary phase against a :class:`RolloutPolicy`.

:func:`judge_shadow` says ``promote`` (go on to canary), ``abort`` or ``wait`` from the agreement;
:func:`judge_canary` compares error rate, p95 latency and online quality of both variants. Each verdict
carries its reasons, which the audit event and ``docs/rollout.md`` repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from keeneye.domain import Answer, JsonObject
from keeneye.geometry import mean_pair_iou
from keeneye.store import RolloutRecord, RolloutState

# ==================================================================================================
# Agreement between two answers to the same input
# ==================================================================================================

AGREEMENT_IOU = 0.5


def answers_agree(kind: str, champion: Answer, challenger: Answer) -> bool:
    """``classify``: same class; ``ok-defect``: same decision; ``instances``: mean IoU ≥ 0.5."""
    if kind == "classify":
        return champion.predicted_class == challenger.predicted_class
    if kind == "ok-defect":
        return champion.decision == challenger.decision
    return mean_instance_iou(champion, challenger) >= AGREEMENT_IOU


def mean_instance_iou(a: Answer, b: Answer) -> float:
    """Greedy one-to-one pairing of same-class instances by IoU (mask when both have shapes, box
    otherwise); the mean over ``max(len(a), len(b))``, so a missing or extra instance counts 0.
    Two empty answers agree fully (1.0)."""
    vocabulary: list[str] = []
    return mean_pair_iou(a.instances_on(vocabulary), b.instances_on(vocabulary))


# ==================================================================================================
# Evaluation: what the controller measures, and its verdict
# ==================================================================================================


@dataclass(frozen=True)
class RolloutPolicy:
    """When the controller moves a rollout on its own (see docs/rollout.md for each comparison)."""

    agreement_threshold: float = 0.9  # shadow → canary at this share of agreeing answers
    min_canary_seconds: float = 600.0  # a canary runs at least this long before promotion
    auto_shadow: bool = True  # a new challenger alias starts a shadow run
    auto_canary: bool = True
    auto_promote: bool = True
    auto_rollback: bool = True
    latency_tolerance: float = 0.25  # challenger p95 may exceed the champion's by 25 % …
    latency_slack_ms: float = 5.0  # … plus this much (noise on very fast models)
    error_tolerance: float = 0.01  # absolute: challenger error rate ≤ champion's + 1 point
    quality_metric: str = "f1"  # online metric compared from feedback (both need min_feedback labels)
    quality_tolerance: float = 0.02  # absolute
    rollback_min_samples: int = 50  # challenger answers needed before a comparison can roll back
    min_answer_ratio: float = 0.5  # challenger answers below this × canary share → rollback
    window_limit: int = 2000  # newest challenger predictions an evaluation reads


@dataclass(frozen=True)
class VariantStats:
    variant: str
    version: str | None
    predictions: int  # in the evaluation window (capped: see window_limit)
    latency_p95_ms: float | None
    failed: int  # stream observations that ended failed, attributed by the routing hash (canary only)
    quality: float | None  # the policy's online metric from feedback, when there were enough labels
    quality_n: int

    @property
    def error_rate(self) -> float | None:
        attempts = self.predictions + self.failed
        return self.failed / attempts if attempts else None

    def to_dict(self) -> JsonObject:
        return {
            "variant": self.variant,
            "version": self.version,
            "predictions": self.predictions,
            "latency_p95_ms": round_finite(self.latency_p95_ms),
            "failed": self.failed,
            "error_rate": round_finite(self.error_rate, 6),
            "quality": round_finite(self.quality, 6),
            "quality_n": self.quality_n,
        }


@dataclass(frozen=True)
class Agreement:
    n: int
    agreeing: int

    @property
    def share(self) -> float | None:
        return self.agreeing / self.n if self.n else None

    def to_dict(self) -> JsonObject:
        return {"n": self.n, "agreeing": self.agreeing, "share": round_finite(self.share, 6)}


@dataclass(frozen=True)
class Evaluation:
    state: RolloutState
    window_start: datetime | None
    elapsed_seconds: float
    champion: VariantStats
    challenger: VariantStats | None
    agreement: Agreement | None
    quality_metric: str
    quality_min_feedback: int

    @property
    def challenger_share(self) -> float | None:
        if self.challenger is None:
            return None
        total = self.champion.predictions + self.challenger.predictions
        return self.challenger.predictions / total if total else None

    def to_dict(self) -> JsonObject:
        return {
            "state": self.state.value,
            "window_start": iso_or_none(self.window_start),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "variants": [v.to_dict() for v in (self.champion, self.challenger) if v is not None],
            "challenger_share": round_finite(self.challenger_share, 6),
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "quality_metric": self.quality_metric,
            "quality_min_feedback": self.quality_min_feedback,
        }


@dataclass(frozen=True)
class Verdict:
    """What the controller does next: ``wait``, ``shadow``, ``canary``, ``promote`` or ``rollback``,
    and why."""

    action: Literal["wait", "shadow", "canary", "promote", "rollback"]
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> JsonObject:
        return {"action": self.action, "reasons": list(self.reasons)}


def _quality_worse(ev: Evaluation, policy: RolloutPolicy) -> str | None:
    chal = ev.challenger
    if chal is None or chal.quality is None or ev.champion.quality is None:
        return None
    if chal.quality < ev.champion.quality - policy.quality_tolerance:
        return (
            f"online {policy.quality_metric} {chal.quality:.3f} on {chal.quality_n} labels is below the "
            f"champion's {ev.champion.quality:.3f} by more than {policy.quality_tolerance:g}"
        )
    return None


def judge_shadow(ev: Evaluation, policy: RolloutPolicy, min_samples: int) -> Verdict:
    """Canary once ``min_samples`` shadow answers agree with the champion at ≥ the threshold and the
    challenger is not worse on feedback. Disagreement alone never ends a shadow: the challenger may be
    the one that is right; a person decides (abort) or the feedback does (canary quality)."""
    agreement = ev.agreement or Agreement(0, 0)
    if agreement.n < min_samples:
        return Verdict("wait", (f"{agreement.n} of {min_samples} shadow answers compared",))
    worse = _quality_worse(ev, policy)
    share = agreement.share or 0.0
    if share < policy.agreement_threshold:
        return Verdict(
            "wait",
            (f"agreement {share:.3f} on {agreement.n} answers is below {policy.agreement_threshold:g}",),
        )
    if worse:
        return Verdict("wait", (worse,))
    return Verdict(
        "canary",
        (f"agreement {share:.3f} on {agreement.n} answers ≥ {policy.agreement_threshold:g}",),
    )


def judge_canary(ev: Evaluation, policy: RolloutPolicy, min_samples: int, canary_share: float) -> Verdict:
    """Rollback as soon as the challenger is measurably worse; promote after ``min_samples``
    challenger answers and ``min_canary_seconds`` when it is not."""
    chal, champ = ev.challenger, ev.champion
    assert chal is not None
    worse: list[str] = []
    if chal.predictions + chal.failed >= policy.rollback_min_samples:
        ce, he = chal.error_rate or 0.0, champ.error_rate or 0.0
        if ce > he + policy.error_tolerance:
            worse.append(
                f"error rate {ce:.3%} ({chal.failed} failed) above the champion's {he:.3%} "
                f"by more than {policy.error_tolerance:.1%}"
            )
    if (
        chal.predictions >= policy.rollback_min_samples
        and champ.predictions >= policy.rollback_min_samples
        and chal.latency_p95_ms is not None
        and champ.latency_p95_ms is not None
    ):
        limit = champ.latency_p95_ms * (1 + policy.latency_tolerance) + policy.latency_slack_ms
        if chal.latency_p95_ms > limit:
            worse.append(
                f"p95 latency {chal.latency_p95_ms:.1f} ms above {limit:.1f} ms "
                f"(champion {champ.latency_p95_ms:.1f} ms + {policy.latency_tolerance:.0%} + "
                f"{policy.latency_slack_ms:g} ms)"
            )
    quality = _quality_worse(ev, policy)
    if quality:
        worse.append(quality)
    total = chal.predictions + champ.predictions
    share = ev.challenger_share
    if total >= min_samples and share is not None and share < canary_share * policy.min_answer_ratio:
        worse.append(
            f"the challenger answered {share:.1%} of {total} inputs, expected about {canary_share:.1%}: "
            "its answers are failing"
        )
    if worse:
        return Verdict("rollback", tuple(worse))
    waiting = []
    if chal.predictions < min_samples:
        waiting.append(f"{chal.predictions} of {min_samples} challenger answers")
    if ev.elapsed_seconds < policy.min_canary_seconds:
        waiting.append(f"{ev.elapsed_seconds:.0f} of {policy.min_canary_seconds:.0f} s in canary")
    if waiting:
        return Verdict("wait", tuple(waiting))
    return Verdict(
        "promote",
        (
            f"{chal.predictions} challenger answers over {ev.elapsed_seconds:.0f} s, not worse than the "
            "champion on error rate, p95 latency and online quality",
        ),
    )


def iso_or_none(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def round_finite(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def canary_deadline(record: RolloutRecord, policy: RolloutPolicy) -> datetime | None:
    """When a canary may be promoted at the earliest (for display)."""
    if record.state is not RolloutState.canary or record.started_at is None:
        return None
    return record.started_at + timedelta(seconds=policy.min_canary_seconds)
