"""Observations: accepted inputs and where each is in its life (``queued`` → ``done`` …).

Invariant 1 (ARCHITECTURE.md): ``create_observation`` is durable when it returns; ``set_status(…,
expect=…)`` is the claim that moves an observation between states, and ``claim_stale`` lets a
reconciler find lost claims.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict

from sqlalchemy import ColumnElement, and_, delete, exists, or_, select, update

from keeneye.domain import Decision, ObservationStatus, Variant
from keeneye.store.buckets import bucket_counts
from keeneye.store.engine import Database, insert_ignoring_conflicts, rowcount, utcnow
from keeneye.store.records import ObservationRecord, PredictionRecord
from keeneye.store.schema import ObservationRow, PredictionRow

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({ObservationStatus.done, ObservationStatus.rejected, ObservationStatus.failed})
ID_CHUNK = 500  # ids per IN (…): below SQLite's bound-parameter limit
# The variants whose answer a client got (a shadow's never leaves the process).
ANSWERING_VARIANTS = (Variant.champion.value, Variant.canary.value)


class _StatusValues(TypedDict):
    """What :meth:`ObservationRepository.set_status` writes (``attempts`` as ``attempts + 1`` in SQL)."""

    status: str
    reason: str | None
    updated_at: datetime
    claimed_at: NotRequired[datetime]
    attempts: NotRequired[ColumnElement[int]]
    completed_at: NotRequired[datetime | None]


@dataclass(frozen=True)
class ObservationFilter:
    """What :meth:`ObservationRepository.find_observations` keeps; every field optional, all combined.

    Times bound ``updated_at`` (when the observation last changed: for a finished one, when it
    finished), ``since`` inclusive, ``until`` exclusive. ``predicted_class`` (classification) and
    ``decision`` (OK/DEFECT) match the answer the client got — or, with ``variant``, that variant's
    answer; ``variant`` alone keeps observations that variant answered (e.g. ``shadow``).
    """

    pipeline: str | None = None
    status: ObservationStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    predicted_class: str | None = None
    decision: Decision | None = None
    variant: Variant | None = None


@dataclass(frozen=True)
class ObservationPage:
    """One page of observations, newest first, with the answer each shows (see :class:`ObservationFilter`).

    ``next_after`` is the keyset position to pass as ``after`` for the next page; None on the last.
    """

    observations: list[ObservationRecord]
    answers: dict[str, PredictionRecord]
    next_after: tuple[datetime, str] | None


class ObservationRepository(Database):
    """Observation reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def create_observation(
        self,
        pipeline: str,
        content_hash: str,
        object_key: str | None,
        content_type: str,
        size_bytes: int,
        metadata: Mapping[str, Any] | None,
        source: str,
        status: ObservationStatus = ObservationStatus.queued,
        id: str | None = None,
        reason: str | None = None,
    ) -> str:
        """Record an accepted input; durable when this returns. Returns its id.

        Re-creating an existing id (a re-delivered bus message) is a no-op, never a second row.
        """
        obs_id = id or uuid.uuid4().hex
        now = utcnow()
        row = {
            "id": obs_id,
            "pipeline": pipeline,
            "status": ObservationStatus(status).value,
            "reason": reason,
            "content_hash": content_hash,
            "object_key": object_key,
            "content_type": content_type,
            "size_bytes": size_bytes,
            "metadata_": dict(metadata or {}),
            "source": source,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        with self.session() as s:
            inserted = insert_ignoring_conflicts(s, ObservationRow, [row], ["id"]) == 1
        if not inserted:
            log.info("observation already recorded", extra={"observation_id": obs_id})
        return obs_id

    def get_observation(self, observation_id: str) -> ObservationRecord | None:
        with self.session() as s:
            row = s.get(ObservationRow, observation_id)
            return None if row is None else ObservationRecord.from_row(row)

    def set_status(
        self,
        observation_id: str,
        status: ObservationStatus,
        reason: str | None = None,
        *,
        expect: Collection[ObservationStatus] | None = None,
    ) -> bool:
        """Move an observation to ``status``; returns whether it changed.

        With ``expect`` the move happens only from one of those statuses, atomically — the way a
        worker claims work (``queued → processing``): of two claimers exactly one gets ``True``.
        Moving to ``processing`` counts an attempt; a terminal status sets ``completed_at``.
        """
        status = ObservationStatus(status)
        now = utcnow()
        values: _StatusValues = {"status": status.value, "reason": reason, "updated_at": now}
        if status is ObservationStatus.processing:
            values["claimed_at"] = now
            values["attempts"] = ObservationRow.attempts + 1
            values["completed_at"] = None
        elif status in TERMINAL_STATUSES:
            values["completed_at"] = now
        stmt = update(ObservationRow).where(ObservationRow.id == observation_id).values(**values)
        if expect is not None:
            stmt = stmt.where(ObservationRow.status.in_([ObservationStatus(e).value for e in expect]))
        with self.session() as s:
            return rowcount(s.execute(stmt)) == 1

    def keep_claimed(self, observation_ids: Collection[str]) -> int:
        """Touch ``updated_at`` of those still ``processing`` (one statement): a worker busy with them
        for longer than the reconciler's ``stale_after_seconds`` says so, and they are not
        re-published under it. Returns how many were touched."""
        if not observation_ids:
            return 0
        stmt = (
            update(ObservationRow)
            .where(
                ObservationRow.id.in_(list(observation_ids)),
                ObservationRow.status == ObservationStatus.processing.value,
            )
            .values(updated_at=utcnow())
        )
        with self.session() as s:
            return rowcount(s.execute(stmt))

    def find_observations(
        self, where: ObservationFilter, *, limit: int = 50, after: tuple[datetime, str] | None = None
    ) -> ObservationPage:
        """Observations matching ``where``, newest ``updated_at`` first (ties by id), at most ``limit``.

        Keyset paging: ``after`` is the ``(updated_at, id)`` of the last row already shown, so a page
        costs the same however deep it is. A pipeline with or without a status is read through
        ``ix_observations_pipeline_status_updated_at``; the answer filters are ``EXISTS`` lookups on
        ``predictions`` by its ``observation_id`` index.
        """
        conditions: list[ColumnElement[bool]] = []
        if where.pipeline is not None:
            conditions.append(ObservationRow.pipeline == where.pipeline)
        if where.status is not None:
            conditions.append(ObservationRow.status == ObservationStatus(where.status).value)
        if where.since is not None:
            conditions.append(ObservationRow.updated_at >= where.since)
        if where.until is not None:
            conditions.append(ObservationRow.updated_at < where.until)
        answer = _answer_condition(where)
        if answer is not None:
            conditions.append(exists().where(PredictionRow.observation_id == ObservationRow.id, *answer))
        if after is not None:
            at, last_id = after
            conditions.append(
                or_(
                    ObservationRow.updated_at < at,
                    and_(ObservationRow.updated_at == at, ObservationRow.id < last_id),
                )
            )
        stmt = (
            select(ObservationRow)
            .where(*conditions)
            .order_by(ObservationRow.updated_at.desc(), ObservationRow.id.desc())
            .limit(limit + 1)
        )
        with self.session() as s:
            rows = [ObservationRecord.from_row(r) for r in s.scalars(stmt)]
            more = len(rows) > limit
            rows = rows[:limit]
            variants = [where.variant.value] if where.variant is not None else list(ANSWERING_VARIANTS)
            answers: dict[str, PredictionRecord] = {}
            if rows:
                shown = (
                    select(PredictionRow)
                    .where(
                        PredictionRow.observation_id.in_([r.id for r in rows]),
                        PredictionRow.variant.in_(variants),
                    )
                    .order_by(PredictionRow.id)
                )
                for p in s.scalars(shown):
                    answers[p.observation_id] = PredictionRecord.from_row(p)  # the latest wins
        next_after = (rows[-1].updated_at, rows[-1].id) if more and rows else None
        return ObservationPage(observations=rows, answers=answers, next_after=next_after)

    def get_observations(self, observation_ids: Collection[str]) -> dict[str, ObservationRecord]:
        """The observations that exist among ``observation_ids``, by id (one read)."""
        ids = sorted(set(observation_ids))
        if not ids:
            return {}
        with self.session() as s:
            rows = s.scalars(select(ObservationRow).where(ObservationRow.id.in_(ids)))
            return {row.id: ObservationRecord.from_row(row) for row in rows}

    def claim_many(
        self,
        observation_ids: Collection[str],
        *,
        expect: Collection[ObservationStatus] = (ObservationStatus.queued, ObservationStatus.processing),
    ) -> dict[str, ObservationRecord]:
        """Claim a batch: :meth:`set_status` ``→ processing`` with ``expect``, in one transaction.

        One conditional ``UPDATE`` moves every listed observation that is in ``expect`` to
        ``processing`` (counting an attempt); the claimed rows are returned as they are after the
        claim, by id. Ids that were not claimed (finished already, or unknown) are left out — the
        caller reads those with :meth:`get_observations` when it needs to know why.
        """
        ids = sorted(set(observation_ids))
        if not ids:
            return {}
        now = utcnow()
        claim = (
            update(ObservationRow)
            .where(
                ObservationRow.id.in_(ids),
                ObservationRow.status.in_([ObservationStatus(e).value for e in expect]),
            )
            .values(
                status=ObservationStatus.processing.value,
                reason=None,
                updated_at=now,
                claimed_at=now,
                attempts=ObservationRow.attempts + 1,
                completed_at=None,
            )
            .returning(ObservationRow.id)
        )
        with self.session() as s:
            claimed = list(s.execute(claim).scalars())
            if not claimed:
                return {}
            rows = s.scalars(select(ObservationRow).where(ObservationRow.id.in_(claimed)))
            return {row.id: ObservationRecord.from_row(row) for row in rows}

    def claim_stale(
        self,
        pipeline: str | None,
        older_than_seconds: float,
        statuses: Collection[ObservationStatus],
        *,
        limit: int = 100,
    ) -> list[str]:
        """Ids in ``statuses`` not updated for ``older_than_seconds`` (oldest first, at most ``limit``).

        The rows are claimed by touching ``updated_at``, so a second reconciler running at the same
        time gets other rows, and these come back only after another ``older_than_seconds``.
        The caller decides what to do with them (re-publish, re-queue, dead-letter).
        """
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_seconds)
        wanted = [ObservationStatus(s).value for s in statuses]
        candidates = (
            select(ObservationRow.id)
            .where(ObservationRow.status.in_(wanted), ObservationRow.updated_at < cutoff)
            .order_by(ObservationRow.updated_at)
            .limit(limit)
            # PostgreSQL: concurrent reconcilers skip each other's rows (SQLite ignores this).
            .with_for_update(skip_locked=True)
        )
        if pipeline is not None:
            candidates = candidates.where(ObservationRow.pipeline == pipeline)
        with self.session() as s:
            ids = list(s.execute(candidates).scalars())
            if not ids:
                return []
            # The update repeats the conditions: on SQLite another writer may have moved a row
            # between the read and this write; only rows this call really touched are returned.
            claim = (
                update(ObservationRow)
                .where(
                    ObservationRow.id.in_(ids),
                    ObservationRow.status.in_(wanted),
                    ObservationRow.updated_at < cutoff,
                )
                .values(updated_at=now)
                .returning(ObservationRow.id)
            )
            claimed = set(s.execute(claim).scalars())
        return [i for i in ids if i in claimed]

    def delete_observation(self, observation_id: str) -> bool:
        """Remove an observation with its predictions and feedback (a half-accepted request)."""
        with self.session() as s:
            stmt = delete(ObservationRow).where(ObservationRow.id == observation_id)
            return rowcount(s.execute(stmt)) == 1

    # ------------------------------------------------------------------ predictions

    def observations_with_status(
        self, pipeline: str, status: ObservationStatus | str, *, limit: int = 100
    ) -> list[ObservationRecord]:
        """The newest observations of a pipeline in one status (uses the reconciler's index)."""
        stmt = (
            select(ObservationRow)
            .where(
                ObservationRow.pipeline == pipeline, ObservationRow.status == ObservationStatus(status).value
            )
            .order_by(ObservationRow.updated_at.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [ObservationRecord.from_row(r) for r in s.scalars(stmt)]

    def observation_ids_of_pipeline(self, observation_ids: Sequence[str], pipeline: str) -> set[str]:
        """Which of these ids are observations of ``pipeline``."""
        ids = sorted(set(observation_ids))
        known: set[str] = set()
        with self.session() as s:
            for i in range(0, len(ids), ID_CHUNK):
                stmt = select(ObservationRow.id).where(
                    ObservationRow.id.in_(ids[i : i + ID_CHUNK]), ObservationRow.pipeline == pipeline
                )
                known.update(s.scalars(stmt))
        return known

    def newest_observation_by_hash(self, content_hashes: Sequence[str], pipeline: str) -> dict[str, str]:
        """Content hash → id of the pipeline's newest observation with those bytes."""
        hashes = sorted(set(content_hashes))
        by_hash: dict[str, str] = {}
        with self.session() as s:
            for i in range(0, len(hashes), ID_CHUNK):
                # Ordered oldest first, so the newest one wins.
                stmt = (
                    select(ObservationRow.content_hash, ObservationRow.id)
                    .where(
                        ObservationRow.content_hash.in_(hashes[i : i + ID_CHUNK]),
                        ObservationRow.pipeline == pipeline,
                    )
                    .order_by(ObservationRow.created_at, ObservationRow.id)
                )
                for content_hash, obs_id in s.execute(stmt):
                    by_hash[content_hash] = obs_id
        return by_hash

    def latest_done_observation_ids(self, pipeline: str, limit: int) -> list[str]:
        """The newest finished observations of a pipeline, newest first."""
        stmt = (
            select(ObservationRow.id)
            .where(ObservationRow.pipeline == pipeline, ObservationRow.status == ObservationStatus.done.value)
            .order_by(ObservationRow.updated_at.desc(), ObservationRow.id)
            .limit(limit)
        )
        with self.session() as s:
            return list(s.scalars(stmt))

    def observation_counts(
        self, pipeline: str, statuses: Collection[str], edges: Sequence[datetime]
    ) -> dict[str, list[int]]:
        """Observations per status that reached one of ``statuses`` in each bucket between ``edges``
        (by ``updated_at``); a status without any is absent."""
        where = (ObservationRow.pipeline == pipeline, ObservationRow.status.in_(list(statuses)))
        with self.session() as s:
            return bucket_counts(s, ObservationRow.updated_at, where, edges, by=ObservationRow.status)

    def failed_observation_ids(self, pipeline: str, since: datetime, limit: int) -> list[str]:
        """Observations of the pipeline that ended ``failed`` since ``since`` (the reconciler's index)."""
        stmt = (
            select(ObservationRow.id)
            .where(
                ObservationRow.pipeline == pipeline,
                ObservationRow.status == ObservationStatus.failed.value,
                ObservationRow.updated_at >= since,
            )
            .limit(limit)
        )
        with self.session() as s:
            return list(s.scalars(stmt))


def _answer_condition(where: ObservationFilter) -> list[ColumnElement[bool]] | None:
    """The conditions on one prediction of the observation, or None when nothing is asked of it."""
    if where.predicted_class is None and where.decision is None and where.variant is None:
        return None
    out: list[ColumnElement[bool]] = []
    if where.variant is not None:
        out.append(PredictionRow.variant == Variant(where.variant).value)
    else:
        out.append(PredictionRow.variant.in_(ANSWERING_VARIANTS))
    if where.predicted_class is not None:
        out.append(PredictionRow.result["predicted_class"].as_string() == where.predicted_class)
    if where.decision is not None:
        out.append(PredictionRow.decision == Decision(where.decision).value)
    return out
