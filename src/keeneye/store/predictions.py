"""Predictions: what each model version (in each variant) said about each observation.

Invariant 2 (ARCHITECTURE.md): predictions are unique on (observation, model name, model version,
variant); ``save_prediction``, ``complete_observation`` and ``complete_many`` are idempotent
(``INSERT … ON CONFLICT DO NOTHING``). Invariant 5: a prediction row records the model
name+version+variant and the latency breakdown; its observation holds the input hash. Every write
that must be atomic (a prediction plus the ``done`` status) happens in one method, in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.exc import IntegrityError

from keeneye.domain import Decision, JsonObject, NotFound, ObservationStatus, Variant
from keeneye.store.buckets import bucket_counts
from keeneye.store.engine import Database, insert_ignoring_conflicts, rowcount, utcnow
from keeneye.store.records import Completion, NewObservation, NewPrediction, PredictionRecord
from keeneye.store.schema import ObservationRow, PredictionRow

# Invariant 2: the unique key of a prediction.
PREDICTION_KEY = ("observation_id", "model_name", "model_version", "variant")
# What complete_many may mark done: a claimed observation (or one re-queued for a retry), never one
# that is finished already.
_FINISHABLE = (ObservationStatus.queued.value, ObservationStatus.processing.value)
ID_CHUNK = 500  # ids per IN (…): below SQLite's bound-parameter limit


class PredictionRowValues(TypedDict):
    """The column values of one ``predictions`` row to insert (:class:`PredictionRow` attributes)."""

    observation_id: str
    pipeline: str
    model_name: str
    model_version: str
    variant: str
    task: str
    result: JsonObject
    decision: str | None
    confidence: float | None
    latency_ms: float
    timings: JsonObject
    created_at: datetime


def prediction_row(observation_id: str, pipeline: str, p: NewPrediction) -> PredictionRowValues:
    """The ``predictions`` row of one answer (attribute names, normalised types)."""
    return {
        "observation_id": observation_id,
        "pipeline": pipeline,
        "model_name": p.model_name,
        "model_version": str(p.model_version),
        "variant": Variant(p.variant).value,
        "task": str(p.task),
        "result": dict(p.result),
        "decision": None if p.decision is None else Decision(p.decision).value,
        "confidence": None if p.confidence is None else float(p.confidence),
        "latency_ms": float(p.latency_ms),
        "timings": dict(p.timings or {}),
        "created_at": utcnow(),
    }


class PredictionRepository(Database):
    """Prediction reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def save_prediction(
        self,
        observation_id: str,
        pipeline: str,
        model_name: str,
        model_version: str,
        variant: Variant,
        task: str,
        result: Mapping[str, Any],
        decision: Decision | None,
        confidence: float | None,
        latency_ms: float,
        timings: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store a prediction; ``False`` (and no second row) when this model+variant already answered.

        Raises :class:`NotFound` when the observation does not exist.
        """
        row = prediction_row(
            observation_id,
            pipeline,
            NewPrediction(
                model_name, model_version, variant, task, result, decision, confidence, latency_ms, timings
            ),
        )
        try:
            with self.session() as s:
                return insert_ignoring_conflicts(s, PredictionRow, [row], PREDICTION_KEY) == 1
        except IntegrityError as exc:  # the foreign key: no such observation
            raise NotFound(f"observation {observation_id} does not exist") from exc

    def save_predictions(self, pipeline: str, predictions: Sequence[tuple[str, NewPrediction]]) -> int:
        """Many ``(observation id, prediction)`` in one transaction; one already stored (a redelivery)
        is left as it is. Returns how many went in."""
        rows = [prediction_row(obs_id, pipeline, p) for obs_id, p in predictions]
        with self.session() as s:
            return insert_ignoring_conflicts(s, PredictionRow, rows, PREDICTION_KEY)

    def complete_observation(
        self,
        observation_id: str,
        *,
        pipeline: str,
        model_name: str,
        model_version: str,
        variant: Variant,
        task: str,
        result: Mapping[str, Any],
        decision: Decision | None,
        confidence: float | None,
        latency_ms: float,
        timings: Mapping[str, Any] | None = None,
    ) -> bool:
        """Save the prediction and mark the observation ``done`` in one transaction.

        A crash leaves either both or neither. Returns whether the prediction was new (``False`` on a
        re-delivery). Raises :class:`NotFound` for an unknown observation.
        """
        now = utcnow()
        mark_done = (
            update(ObservationRow)
            .where(ObservationRow.id == observation_id)
            .values(status=ObservationStatus.done.value, reason=None, updated_at=now, completed_at=now)
        )
        row = prediction_row(
            observation_id,
            pipeline,
            NewPrediction(
                model_name, model_version, variant, task, result, decision, confidence, latency_ms, timings
            ),
        )
        with self.session() as s:
            # Status first: it locks the observation row, and a failing insert rolls it back.
            if rowcount(s.execute(mark_done)) != 1:
                raise NotFound(f"observation {observation_id} does not exist")
            return insert_ignoring_conflicts(s, PredictionRow, [row], PREDICTION_KEY) == 1

    def complete_many(self, completions: Sequence[Completion]) -> dict[str, bool]:
        """:meth:`complete_observation` for a batch, in one transaction (one commit, one fsync).

        Every prediction goes in (``ON CONFLICT DO NOTHING``) and every observation is marked ``done``,
        or — when the transaction fails — none. Returns ``{observation_id: prediction was new}``; an
        observation that does not exist (deleted under the worker) is left out and nothing is stored
        for it. A second completion of the same observation in one call is ignored.

        Only a ``queued`` or ``processing`` observation is completed. One finished meanwhile — two
        workers held the same message when a Kafka rebalance moved its partition, and the first one
        stored its answer — maps to ``False``: nothing is added and its ``completed_at`` stays, even
        when the second answer came from another model version (the alias moved in between).
        """
        unique: dict[str, Completion] = {}
        for c in completions:
            unique.setdefault(c.observation_id, c)
        if not unique:
            return {}
        now = utcnow()
        ids = sorted(unique)  # a fixed lock order: concurrent batches on PostgreSQL cannot deadlock
        mark_done = (
            update(ObservationRow)
            .where(ObservationRow.id.in_(ids), ObservationRow.status.in_(_FINISHABLE))
            .values(status=ObservationStatus.done.value, reason=None, updated_at=now, completed_at=now)
            .returning(ObservationRow.id)
        )
        with self.session() as s:
            # Status first: it locks the observation rows, and a failing insert rolls it back. A
            # concurrent completion of the same row waits here and then finds it no longer finishable.
            present = set(s.execute(mark_done).scalars())
            rest = [i for i in ids if i not in present]
            finished = (
                set(s.execute(select(ObservationRow.id).where(ObservationRow.id.in_(rest))).scalars())
                if rest
                else set()
            )
            if not present:
                return dict.fromkeys(sorted(finished), False)
            todo = [unique[i] for i in ids if i in present]
            # Which already have this prediction (a redelivery): the observation rows are locked by
            # the update above, so a concurrent completion of the same ids waits for this commit.
            existing: set[str] = set()
            by_model: dict[tuple[str, str, str], list[str]] = {}
            for c in todo:
                by_model.setdefault(
                    (
                        c.prediction.model_name,
                        str(c.prediction.model_version),
                        Variant(c.prediction.variant).value,
                    ),
                    [],
                ).append(c.observation_id)
            for (model_name, model_version, variant), group in by_model.items():
                existing.update(
                    s.execute(
                        select(PredictionRow.observation_id).where(
                            PredictionRow.observation_id.in_(group),
                            PredictionRow.model_name == model_name,
                            PredictionRow.model_version == model_version,
                            PredictionRow.variant == variant,
                        )
                    ).scalars()
                )
            rows = [
                prediction_row(c.observation_id, c.pipeline, c.prediction)
                for c in todo
                if c.observation_id not in existing
            ]
            # ON CONFLICT DO NOTHING still guards against any writer outside the row locks.
            insert_ignoring_conflicts(s, PredictionRow, rows, PREDICTION_KEY)
            new = {c.observation_id for c in todo if c.observation_id not in existing}
        return {i: i in new for i in ids if i in present or i in finished}

    def record_prediction(self, observation: NewObservation, prediction: NewPrediction) -> str:
        """A synchronous answer: the observation (``done``) and its prediction in one transaction.

        Used by ``POST /predict``, where the answer exists before anything is stored; either both rows
        are written or neither. Returns the new observation id.
        """
        return self.record_predictions([(observation, prediction)])[0]

    def record_predictions(self, answers: Sequence[tuple[NewObservation, NewPrediction]]) -> list[str]:
        """Many synchronous answers in ONE transaction (the serving path's group commit): every
        observation with its prediction, or none of them. Returns the observation ids, in order."""
        now = utcnow()
        ids = [uuid.uuid4().hex for _ in answers]
        rows = [
            ObservationRow(
                id=obs_id,
                pipeline=observation.pipeline,
                status=ObservationStatus.done.value,
                content_hash=observation.content_hash,
                object_key=observation.object_key,
                content_type=observation.content_type,
                size_bytes=observation.size_bytes,
                metadata_=dict(observation.metadata or {}),
                source=observation.source,
                attempts=1,
                created_at=now,
                updated_at=now,
                completed_at=now,
            )
            for obs_id, (observation, _) in zip(ids, answers, strict=True)
        ]
        predictions = [
            prediction_row(obs_id, observation.pipeline, prediction)
            for obs_id, (observation, prediction) in zip(ids, answers, strict=True)
        ]
        with self.session() as s:
            s.add_all(rows)
            s.flush()
            insert_ignoring_conflicts(s, PredictionRow, predictions, PREDICTION_KEY)
        return ids

    # ------------------------------------------------------------------ reads

    def predictions_for(self, observation_id: str) -> list[PredictionRecord]:
        with self.session() as s:
            rows = s.scalars(
                select(PredictionRow)
                .where(PredictionRow.observation_id == observation_id)
                .order_by(PredictionRow.id)
            )
            return [PredictionRecord.from_row(r) for r in rows]

    def count_predictions(self, pipeline: str | None = None) -> int:
        stmt = select(func.count()).select_from(PredictionRow)
        if pipeline is not None:
            stmt = stmt.where(PredictionRow.pipeline == pipeline)
        with self.session() as s:
            return int(s.execute(stmt).scalar_one())

    def champion_predictions(self, observation_ids: Sequence[str]) -> dict[str, PredictionRecord]:
        """The latest champion prediction of each of these observations that has one."""
        ids = sorted(set(observation_ids))
        out: dict[str, PredictionRecord] = {}
        with self.session() as s:
            for i in range(0, len(ids), ID_CHUNK):
                stmt = (
                    select(PredictionRow)
                    .where(
                        PredictionRow.observation_id.in_(ids[i : i + ID_CHUNK]),
                        PredictionRow.variant == Variant.champion.value,
                    )
                    .order_by(PredictionRow.id)
                )
                for row in s.scalars(stmt):
                    out[row.observation_id] = PredictionRecord.from_row(row)  # the latest wins
        return out

    def predictions_of_model(self, observation_ids: Sequence[str], model_name: str) -> list[PredictionRecord]:
        """Every prediction of ``model_name`` (any version, any variant) about these observations."""
        stmt = select(PredictionRow).where(
            PredictionRow.observation_id.in_(list(observation_ids)), PredictionRow.model_name == model_name
        )
        with self.session() as s:
            return [PredictionRecord.from_row(r) for r in s.scalars(stmt)]

    def confident_predictions(
        self,
        pipeline: str,
        model_name: str,
        model_version: str,
        variant: Variant,
        *,
        min_confidence: float,
        scan: int,
    ) -> list[PredictionRecord]:
        """Predictions of one model version and variant with confidence ≥ ``min_confidence`` among the
        pipeline's newest ``scan`` predictions (the ``(pipeline, created_at)`` index, then a LIMIT),
        newest first."""
        newest = (
            select(PredictionRow.id)
            .where(PredictionRow.pipeline == pipeline)
            .order_by(PredictionRow.created_at.desc())
            .limit(scan)
            .subquery()
        )
        stmt = (
            select(PredictionRow)
            .where(
                PredictionRow.id.in_(select(newest.c.id)),
                PredictionRow.model_name == model_name,
                PredictionRow.model_version == model_version,
                PredictionRow.variant == Variant(variant).value,
                PredictionRow.confidence >= min_confidence,
            )
            .order_by(PredictionRow.created_at.desc())
        )
        with self.session() as s:
            return [PredictionRecord.from_row(r) for r in s.scalars(stmt)]

    # ------------------------------------------------------------------ traffic (monitoring page)

    def prediction_counts(
        self, pipeline: str, variants: Collection[str], edges: Sequence[datetime]
    ) -> list[int]:
        """The pipeline's predictions in ``variants`` per bucket between ``edges``."""
        where = (PredictionRow.pipeline == pipeline, PredictionRow.variant.in_(list(variants)))
        with self.session() as s:
            counts = bucket_counts(s, PredictionRow.created_at, where, edges)
        return counts.get("", [0] * (len(edges) - 1))

    def count_predictions_between(
        self, pipeline: str, variants: Collection[str], start: datetime, end: datetime
    ) -> int:
        """The pipeline's predictions in ``variants`` created in ``[start, end)``."""
        stmt = (
            select(func.count())
            .select_from(PredictionRow)
            .where(
                PredictionRow.pipeline == pipeline,
                PredictionRow.variant.in_(list(variants)),
                PredictionRow.created_at >= start,
                PredictionRow.created_at < end,
            )
        )
        with self.session() as s:
            return int(s.execute(stmt).scalar_one())

    def prediction_latencies(
        self,
        pipeline: str,
        variants: Collection[str],
        start: datetime,
        end: datetime,
        *,
        limit: int,
        newest_first: bool = False,
    ) -> list[tuple[datetime, float]]:
        """``(created_at, latency_ms)`` of at most ``limit`` predictions in ``variants`` created in
        ``[start, end)`` (the newest ones with ``newest_first``, else in no particular order)."""
        stmt = (
            select(PredictionRow.created_at, PredictionRow.latency_ms)
            .where(
                PredictionRow.pipeline == pipeline,
                PredictionRow.variant.in_(list(variants)),
                PredictionRow.created_at >= start,
                PredictionRow.created_at < end,
            )
            .limit(limit)
        )
        if newest_first:
            stmt = stmt.order_by(PredictionRow.created_at.desc())
        with self.session() as s:
            return [(created_at, float(latency_ms)) for created_at, latency_ms in s.execute(stmt)]

    # ------------------------------------------------------------------ one variant (rollout judging)

    @staticmethod
    def _of_variant(
        pipeline: str, model_name: str, version: str | None, variant: Variant, since: datetime
    ) -> list[ColumnElement[bool]]:
        return [
            PredictionRow.pipeline == pipeline,
            PredictionRow.created_at >= since,
            PredictionRow.model_name == model_name,
            PredictionRow.model_version == (version or ""),
            PredictionRow.variant == Variant(variant).value,
        ]

    def variant_latencies(
        self,
        pipeline: str,
        model_name: str,
        version: str | None,
        variant: Variant,
        since: datetime,
        limit: int,
    ) -> list[tuple[float, datetime]]:
        """``(latency_ms, created_at)`` of one version's newest ``limit`` predictions in ``variant``
        since ``since``, newest first."""
        stmt = (
            select(PredictionRow.latency_ms, PredictionRow.created_at)
            .where(*self._of_variant(pipeline, model_name, version, variant, since))
            .order_by(PredictionRow.created_at.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [(float(r.latency_ms), r.created_at) for r in s.execute(stmt)]

    def count_variant_predictions(
        self, pipeline: str, model_name: str, version: str | None, variant: Variant, since: datetime, cap: int
    ) -> int:
        """How many predictions one version made in ``variant`` since ``since``, counted up to ``cap``."""
        inner = (
            select(PredictionRow.id)
            .where(*self._of_variant(pipeline, model_name, version, variant, since))
            .limit(cap)
        ).subquery()
        with self.session() as s:
            return int(s.execute(select(func.count()).select_from(inner)).scalar_one())

    def variant_predictions(
        self,
        pipeline: str,
        model_name: str,
        version: str | None,
        variant: Variant,
        since: datetime,
        limit: int,
    ) -> list[PredictionRecord]:
        """One version's newest ``limit`` predictions in ``variant`` since ``since``, newest first."""
        stmt = (
            select(PredictionRow)
            .where(*self._of_variant(pipeline, model_name, version, variant, since))
            .order_by(PredictionRow.created_at.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [PredictionRecord.from_row(r) for r in s.scalars(stmt)]

    def predictions_of_version(
        self, observation_ids: Sequence[str], model_name: str, version: str | None, variant: Variant
    ) -> list[PredictionRecord]:
        """One version's predictions in ``variant`` about these observations."""
        stmt = select(PredictionRow).where(
            PredictionRow.observation_id.in_(list(observation_ids)),
            PredictionRow.model_name == model_name,
            PredictionRow.model_version == (version or ""),
            PredictionRow.variant == Variant(variant).value,
        )
        with self.session() as s:
            return [PredictionRecord.from_row(r) for r in s.scalars(stmt)]
