"""What the rollout controller measures over an active rollout's window, read from the store.

:func:`measure` gives the :class:`~keeneye.lifecycle.rollout.judging.Evaluation` the judges take: per
variant the answer count, p95 latency, failed observations (canary: routed by the same hash as
serving) and online quality from feedback since the rollout started; in shadow, the agreement of the
challenger's answers with the champion's on the same observations. Every read is bounded: at most
``max(policy.window_limit, min_samples)`` challenger answers (the window shrinks to the time they
cover, and the champion is measured over the same time), counts capped, ids in chunks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from keeneye.domain import Answer, Decision, Variant
from keeneye.lifecycle.rollout.judging import (
    Agreement,
    Evaluation,
    RolloutPolicy,
    VariantStats,
    answers_agree,
)
from keeneye.monitoring.quality import online_quality, quality_kind
from keeneye.pipelines.routing import choose_variant
from keeneye.pipelines.spec import PipelineSpec
from keeneye.settings import Settings
from keeneye.store import ResultsDB, RolloutRecord, RolloutState

PREDICTION_CHUNK = 500  # observation ids per IN (...) query


def measure(
    db: ResultsDB,
    settings: Settings,
    policy: RolloutPolicy,
    record: RolloutRecord,
    spec: PipelineSpec,
    *,
    now: datetime,
) -> Evaluation:
    """Measure an active rollout over its window (bounded: see :class:`RolloutPolicy`)."""
    since = record.started_at or now
    limit = max(policy.window_limit, spec.rollout.min_samples)
    model = spec.model_name
    chal_variant = record.challenger_variant
    chal_lat = db.variant_latencies(spec.name, model, record.challenger_version, chal_variant, since, limit)
    # With more than `limit` challenger answers, the window shrinks to the time they cover, and the
    # champion is measured over the same time.
    window_start = chal_lat[-1][1] if len(chal_lat) >= limit else since
    champ_lat = db.variant_latencies(
        spec.name, model, record.champion_version, Variant.champion, window_start, limit
    )
    champ_count = db.count_variant_predictions(
        spec.name, model, record.champion_version, Variant.champion, window_start, limit * 50
    )
    failed = {Variant.champion: 0, Variant.canary: 0}
    if record.state is RolloutState.canary:
        # Observations that ended ``failed`` in the window (the reconciler's index).
        for obs_id in db.failed_observation_ids(spec.name, window_start, limit * 50):
            failed[choose_variant(record, obs_id)] += 1
    quality = _quality(db, settings, policy, spec, since, now)
    champion = VariantStats(
        Variant.champion.value,
        record.champion_version,
        champ_count,
        _p95(v for v, _ in champ_lat),
        failed[Variant.champion],
        *quality.get((record.champion_version, Variant.champion.value), (None, 0)),
    )
    challenger = VariantStats(
        chal_variant.value,
        record.challenger_version,
        len(chal_lat),
        _p95(v for v, _ in chal_lat),
        failed[Variant.canary] if chal_variant is Variant.canary else 0,
        *quality.get((record.challenger_version, chal_variant.value), (None, 0)),
    )
    agreement = _agreement(db, spec, record, since, limit) if chal_variant is Variant.shadow else None
    return Evaluation(
        state=record.state,
        window_start=window_start,
        elapsed_seconds=max(0.0, (now - since).total_seconds()),
        champion=champion,
        challenger=challenger,
        agreement=agreement,
        quality_metric=policy.quality_metric,
        quality_min_feedback=settings.monitoring.quality_min_feedback,
    )


def _quality(
    db: ResultsDB,
    settings: Settings,
    policy: RolloutPolicy,
    spec: PipelineSpec,
    since: datetime,
    now: datetime,
) -> dict[tuple[str | None, str], tuple[float | None, int]]:
    """``(version, variant) → (metric, labels)`` from feedback since the rollout started; the
    metric is None below ``quality_min_feedback`` labels."""

    monitoring = settings.monitoring
    windows = online_quality(
        db,
        spec.name,
        spec=spec,
        window_seconds=max(1.0, (now - since).total_seconds()),
        reference_for=lambda _version: {},
        min_feedback=monitoring.quality_min_feedback,
        drop=monitoring.quality_drop,
        now=now,
    )
    out: dict[tuple[str | None, str], tuple[float | None, int]] = {}
    for w in windows:
        value = w.metrics.get(policy.quality_metric)
        enough = w.n >= monitoring.quality_min_feedback and value is not None
        out[(w.model_version, w.variant)] = (float(value) if enough and value is not None else None, w.n)
    return out


def _agreement(
    db: ResultsDB, spec: PipelineSpec, record: RolloutRecord, since: datetime, limit: int
) -> Agreement:
    """Shadow answers compared with the champion's answers to the same observations."""

    kind = quality_kind(spec)
    shadow = {
        p.observation_id: _stored_answer(p.result, p.decision)
        for p in db.variant_predictions(
            spec.name, spec.model_name, record.challenger_version, Variant.shadow, since, limit
        )
    }
    ids = list(shadow)
    n = agreeing = 0
    for i in range(0, len(ids), PREDICTION_CHUNK):
        chunk = ids[i : i + PREDICTION_CHUNK]
        rows = db.predictions_of_version(chunk, spec.model_name, record.champion_version, Variant.champion)
        for row in rows:
            n += 1
            champion = _stored_answer(row.result, row.decision)
            agreeing += answers_agree(kind, champion, shadow[row.observation_id])
    return Agreement(n, agreeing)


def _p95(values: Iterable[float]) -> float | None:
    data = list(values)
    return float(np.percentile(np.asarray(data, dtype=np.float64), 95)) if data else None


def _stored_answer(result: Mapping[str, Any] | None, decision: Decision | None) -> Answer:
    """A stored answer; its ``decision`` column fills in a result stored without one."""
    doc = dict(result or {})
    if decision is not None:
        doc.setdefault("decision", decision.value)
    return Answer.from_stored(doc)


__all__ = ["PREDICTION_CHUNK", "measure"]
