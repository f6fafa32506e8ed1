"""Reading what a retraining adds to the champion's data: the newest label of each labelled
observation, and the champion's confident answers (for pseudo-labels).

Both reads are bounded and use the indexes: feedback in keyset pages on
``ix_feedback_pipeline_created_at`` (at most ``2 × limit`` rows), predictions through the
``(pipeline, created_at)`` index with a LIMIT; observations are fetched by id in chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from keeneye.domain import JsonObject, Variant
from keeneye.lifecycle.retrain.annotations import PSEUDO_MIN_CONFIDENCE
from keeneye.pipelines import PipelineSpec
from keeneye.store import FeedbackRecord, ObservationRecord, ResultsDB

MAX_FEEDBACK: Final = 50_000  # labelled observations per run (the newest)
FEEDBACK_PAGE: Final = 500
ID_CHUNK: Final = 500  # ids per IN (...) query


@dataclass(frozen=True)
class LabelledObservation:
    """The newest label of one observation, with what is needed to fetch its image."""

    observation_id: str
    feedback_id: int
    label: JsonObject
    source: str
    labelled_at: datetime
    object_key: str | None
    content_hash: str
    content_type: str
    observed_at: datetime
    metadata: JsonObject


def _observations(db: ResultsDB, ids: Sequence[str]) -> dict[str, ObservationRecord]:
    out: dict[str, ObservationRecord] = {}
    for i in range(0, len(ids), ID_CHUNK):
        out.update(db.get_observations(ids[i : i + ID_CHUNK]))
    return out


def latest_labels(db: ResultsDB, pipeline: str, *, limit: int = MAX_FEEDBACK) -> list[LabelledObservation]:
    """The newest label of each of the ``limit`` most recently labelled observations, oldest first.

    Keyset pages, newest first, on ``ix_feedback_pipeline_created_at``; at most ``2 × limit`` rows are
    read, so a pipeline with millions of corrections costs no more than its newest labels.
    """
    newest: dict[str, FeedbackRecord] = {}
    cursor: tuple[datetime, int] | None = None
    read = 0
    while len(newest) < limit and read < 2 * limit:
        rows = db.feedback_page(pipeline, limit=FEEDBACK_PAGE, before=cursor)
        for row in rows:
            if row.observation_id not in newest and isinstance(row.label, dict) and len(newest) < limit:
                newest[row.observation_id] = row
        read += len(rows)
        if len(rows) < FEEDBACK_PAGE:
            break
        cursor = (rows[-1].created_at, rows[-1].id)
    observations = _observations(db, list(newest))
    out = []
    for obs_id, row in newest.items():
        obs = observations.get(obs_id)
        if obs is None:
            continue
        out.append(
            LabelledObservation(
                observation_id=obs_id,
                feedback_id=int(row.id),
                label=dict(row.label),
                source=str(row.source),
                labelled_at=row.created_at,
                object_key=obs.object_key,
                content_hash=obs.content_hash,
                content_type=obs.content_type,
                observed_at=obs.created_at,
                metadata=dict(obs.metadata or {}),
            )
        )
    return sorted(out, key=lambda o: (o.observed_at, o.observation_id))


@dataclass(frozen=True)
class ConfidentAnswer:
    observation_id: str
    result: JsonObject
    object_key: str | None
    content_hash: str
    content_type: str
    observed_at: datetime
    metadata: JsonObject


def confident_answers(
    db: ResultsDB, spec: PipelineSpec, champion_version: str, *, scan: int
) -> list[ConfidentAnswer]:
    """The champion's answers with confidence ≥ :data:`PSEUDO_MIN_CONFIDENCE` among the pipeline's
    newest ``scan`` predictions (the ``(pipeline, created_at)`` index, then a LIMIT), newest first."""
    rows = db.confident_predictions(
        spec.name,
        spec.model_name,
        champion_version,
        Variant.champion,
        min_confidence=PSEUDO_MIN_CONFIDENCE,
        scan=scan,
    )
    observations = _observations(db, [r.observation_id for r in rows])
    out = []
    for row in rows:
        obs = observations.get(row.observation_id)
        if obs is not None and isinstance(row.result, dict):
            out.append(
                ConfidentAnswer(
                    row.observation_id,
                    dict(row.result),
                    obs.object_key,
                    obs.content_hash,
                    obs.content_type,
                    obs.created_at,
                    dict(obs.metadata or {}),
                )
            )
    return out


__all__ = ["MAX_FEEDBACK", "ConfidentAnswer", "LabelledObservation", "confident_answers", "latest_labels"]
