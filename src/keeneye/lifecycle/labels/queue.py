"""The review queue: which stored answers a person should check, and reading the open items back.

:func:`review_reasons` decides, for one answer, whether it belongs in the queue — the model was unsure
(low top-1 confidence, a small top-1/top-2 margin, an OK/DEFECT score close to the decision
threshold) or the observation fell into the random audit sample (a fixed share chosen by a hash of its
id, so the estimate of online quality is not biased towards hard cases). :func:`enqueue` stores the
reasons (drift and shadow disagreement enqueue through it too); :func:`queue_answers` does both for a
batch of answers and never fails the answer path. :func:`review_queue` lists the open items, most
urgent first, with the champion's answer; :func:`latest_answers` the newest answers instead.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeGuard

from keeneye.domain import Answer, JsonObject, Task
from keeneye.pipelines import PipelineSpec
from keeneye.store import NewReviewItem, ResultsDB, ReviewItemRecord

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Review reasons
# --------------------------------------------------------------------------------------------------

REASONS = ("low_confidence", "drift", "disagreement", "audit")
DEFAULT_MIN_CONFIDENCE = 0.6
DEFAULT_MIN_MARGIN = 0.1
DEFAULT_DECISION_BAND = 0.1
DEFAULT_AUDIT_SHARE = 0.02
DEFAULT_DECISION_THRESHOLD = 0.5
AUDIT_PRIORITY = 0.0  # audit items come after every uncertain one; they are a sample, not a worry

ReviewReason = tuple[str, float, JsonObject]


def audit_draw(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: the same observation is in the audit sample everywhere."""
    digest = hashlib.sha256(f"keeneye-audit:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def decision_threshold(spec: PipelineSpec) -> float:
    """The instance score at which an OK/DEFECT pipeline says DEFECT (the spec's, else 0.5)."""
    th = spec.thresholds
    if th.defect_score is not None:
        return th.defect_score
    return th.score if th.score is not None else DEFAULT_DECISION_THRESHOLD


def review_reasons(
    spec: PipelineSpec,
    answer: Answer | None,
    *,
    audit_share: float = DEFAULT_AUDIT_SHARE,
    rng_key: str,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    min_margin: float = DEFAULT_MIN_MARGIN,
    decision_band: float = DEFAULT_DECISION_BAND,
) -> list[ReviewReason]:
    """Why a person should look at this answer: ``[(reason, priority, details)]``, possibly empty.

    ``answer`` is the champion's answer (:func:`keeneye.pipelines.finish`, or read back with
    ``Answer.from_stored``), its scores as the answer shows them (6 decimals). Priority is
    the model's uncertainty in [0, 1] (higher = reviewed first):

    * classify: ``low_confidence`` when the top-1 probability is below ``min_confidence`` (priority
      ``1 − confidence``) or the top-1/top-2 margin is below ``min_margin`` (priority ``1 − margin``);
    * OK/DEFECT pipelines: ``low_confidence`` when the highest instance score lies within
      ``decision_band`` of the decision threshold (priority ``1 − distance / band``);
    * other segmentation/detection: ``low_confidence`` when an instance scores below ``min_confidence``;
    * every task: ``audit`` for the share ``audit_share`` of observations chosen by a hash of
      ``rng_key`` (the observation id), priority 0.
    """
    if not 0 <= audit_share <= 1:
        raise ValueError(f"audit_share must be within [0, 1], got {audit_share}")
    out: list[ReviewReason] = []
    if answer is not None:
        uncertain = _uncertainty(spec, answer, min_confidence, min_margin, decision_band)
        if uncertain is not None:
            out.append(("low_confidence", *uncertain))
    if audit_share > 0 and audit_draw(rng_key) < audit_share:
        out.append(("audit", AUDIT_PRIORITY, {"share": audit_share}))
    return out


def _uncertainty(
    spec: PipelineSpec, answer: Answer, min_confidence: float, min_margin: float, band: float
) -> tuple[float, JsonObject] | None:
    if answer.task is Task.classify:
        return _classify_uncertainty(answer, min_confidence, min_margin)
    scores = [round(float(s), 6) for s in answer.instances.scores]
    if spec.decision.kind == "ok-defect":
        threshold = decision_threshold(spec)
        top = max(scores, default=None)
        if top is None or abs(top - threshold) >= band:
            return None
        distance = abs(top - threshold)
        decision = answer.decision.value if answer.decision is not None else None
        details: JsonObject = {"score": top, "threshold": threshold, "band": band, "decision": decision}
        return round(1.0 - distance / band, 6), details
    low = [s for s in scores if s < min_confidence]
    if not low:
        return None
    return round(1.0 - min(low), 6), {"min_score": min(low), "threshold": min_confidence, "n_low": len(low)}


def _classify_uncertainty(
    answer: Answer, min_confidence: float, min_margin: float
) -> tuple[float, JsonObject] | None:
    top = [round(float(p), 6) for p in answer.instances.scores[:3]]
    confidence = answer.confidence if answer.confidence is not None else 1.0
    margin = top[0] - top[1] if len(top) >= 2 else None
    priorities: list[float] = []
    details: JsonObject = {"confidence": confidence}
    if confidence < min_confidence:
        priorities.append(1.0 - confidence)
        details["threshold"] = min_confidence
    if margin is not None:
        details["margin"] = round(margin, 6)
        if margin < min_margin:
            priorities.append(1.0 - margin)
            details["min_margin"] = min_margin
    if not priorities:
        return None
    return round(max(priorities), 6), details


def is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def enqueue(db: ResultsDB, observation_id: str, pipeline: str, items: Iterable[ReviewReason]) -> int:
    """Put an observation in the review queue for each reason; returns how many items are new.

    Idempotent: (observation, reason) is unique, a repeated reason is ignored (``ON CONFLICT DO
    NOTHING`` on SQLite and PostgreSQL). An observation that already has feedback is not queued again —
    a person answered it. Raises :class:`NotFound` for an unknown observation.
    """
    return db.enqueue_review(
        observation_id,
        [NewReviewItem(observation_id, pipeline, str(r), float(p), dict(d)) for r, p, d in items],
    )


def queue_answers(
    db: ResultsDB,
    spec: PipelineSpec,
    answers: Iterable[tuple[str, Answer | None]],
    *,
    audit_share: float = DEFAULT_AUDIT_SHARE,
) -> int:
    """:func:`review_reasons` for freshly stored answers ``(observation id, answer)`` and one
    ``INSERT … ON CONFLICT DO NOTHING`` for all their items; returns how many were queued.

    What the API and the stream workers call right after storing predictions. It never raises: the
    queue helps people choose what to label, and an answer already stored must not fail because of it
    (a failure is logged). Fresh answers have no feedback yet, so unlike :func:`enqueue` it does not
    look for any.
    """
    items = [
        NewReviewItem(obs_id, spec.name, reason, priority, details)
        for obs_id, result in answers
        for reason, priority, details in review_reasons(spec, result, audit_share=audit_share, rng_key=obs_id)
    ]
    if not items:
        return 0
    try:
        return db.queue_reviews(items)
    except Exception:  # never fail an answer because of the review queue
        log.warning("could not queue %d answer(s) of %s for review", len(items), spec.name, exc_info=True)
        return 0


# --------------------------------------------------------------------------------------------------
# The queue
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewEntry:
    """One observation in the review queue, with every reason it is there and the champion's answer."""

    observation_id: str
    pipeline: str
    priority: float
    reasons: tuple[str, ...]
    details: JsonObject  # reason → details
    queued_at: datetime | None  # first reason; None for an answer listed without a queue item
    resolved_at: datetime | None  # None while any of its items is open
    object_key: str | None
    content_type: str
    content_hash: str
    observed_at: datetime
    prediction: JsonObject | None  # the champion's result
    model_version: str | None
    metadata: JsonObject = field(default_factory=dict)

    def to_dict(self) -> JsonObject:
        return {
            "observation_id": self.observation_id,
            "pipeline": self.pipeline,
            "priority": self.priority,
            "reasons": list(self.reasons),
            "details": self.details,
            "queued_at": self.queued_at.isoformat() if self.queued_at else None,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "object_key": self.object_key,
            "content_type": self.content_type,
            "content_hash": self.content_hash,
            "observed_at": self.observed_at.isoformat(),
            "model_version": self.model_version,
            "prediction": self.prediction,
            "metadata": self.metadata,
        }


def review_queue(
    db: ResultsDB, pipeline: str, *, limit: int = 50, include_resolved: bool = False
) -> list[ReviewEntry]:
    """The pipeline's open review queue, highest priority first (oldest first on ties), one entry per
    observation (its reasons merged), each with the champion's latest answer and the image key.
    ``include_resolved`` appends the most recently answered ones after the open items.

    Reads pages of the ``(pipeline, resolved_at, priority)`` index until ``limit`` observations are
    found, so a long queue or a long history costs no more than the page it shows.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    # An observation has at most one item per reason: a page this long always finds ``limit`` of them.
    grouped = db.review_items(
        pipeline, limit=limit, page=limit * len(REASONS), include_resolved=include_resolved
    )
    return _entries(db, grouped, list(grouped))


def latest_answers(db: ResultsDB, pipeline: str, *, limit: int = 50) -> list[ReviewEntry]:
    """The newest finished observations of a pipeline (queued or not), newest first."""
    ids = db.latest_done_observation_ids(pipeline, limit)
    items = db.review_items_of(ids)
    return _entries(db, {i: items.get(i, []) for i in ids}, ids)


def _entries(
    db: ResultsDB, grouped: Mapping[str, list[ReviewItemRecord]], order: Sequence[str]
) -> list[ReviewEntry]:
    if not order:
        return []
    observations = db.get_observations(order)
    champion = db.champion_predictions(order)
    out: list[ReviewEntry] = []
    for obs_id in order:
        obs = observations.get(obs_id)
        if obs is None:
            continue
        items = grouped.get(obs_id, [])
        pred = champion.get(obs_id)
        open_items = [i for i in items if i.resolved_at is None]
        resolved = [i.resolved_at for i in items if i.resolved_at is not None]
        out.append(
            ReviewEntry(
                observation_id=obs_id,
                pipeline=obs.pipeline,
                priority=max((i.priority for i in items), default=0.0),
                reasons=tuple(sorted({i.reason for i in items}, key=_reason_order)),
                details={i.reason: i.details for i in items},
                queued_at=min((i.created_at for i in items), default=None),
                resolved_at=max(resolved) if resolved and not open_items else None,
                object_key=obs.object_key,
                content_type=obs.content_type,
                content_hash=obs.content_hash,
                observed_at=obs.created_at,
                prediction=dict(pred.result) if pred is not None else None,
                model_version=pred.model_version if pred is not None else None,
                metadata=dict(obs.metadata or {}),
            )
        )
    return out


def _reason_order(reason: str) -> tuple[int, str]:
    return (REASONS.index(reason) if reason in REASONS else len(REASONS), reason)
