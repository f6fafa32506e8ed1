"""Training runs: one row of ``training_runs`` per (re)training run, ``queued`` → ``running`` → final.

The rules (which requests are duplicates, when a run is stale) belong to ``keeneye.lifecycle.runs``;
this module makes them atomic. :meth:`TrainingRunRepository.request_training_run` does its checks
and its insert in one exclusive transaction (``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped
advisory lock per pipeline on PostgreSQL), so two processes cannot both pass them. Every query is
bounded: one pipeline, a ``requested_at`` range on the ``(pipeline, requested_at)`` index, a LIMIT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from keeneye.store.engine import Database, rowcount
from keeneye.store.records import TRAINING_RUN_ACTIVE, TrainingRunRecord
from keeneye.store.schema import TrainingRunRow


@dataclass(frozen=True)
class RunRequest:
    """What :meth:`TrainingRunRepository.request_training_run` did.

    ``run`` is the queued run, or None with ``skipped`` saying why; ``reaped`` are the stale runs it
    marked failed on the way (with the reason in their ``error``).
    """

    run: TrainingRunRecord | None
    skipped: str | None = None
    reaped: list[TrainingRunRecord] = field(default_factory=list)


def _lock_key(pipeline: str) -> int:
    """A signed 64-bit advisory-lock key for the pipeline, the same in every process."""
    digest = hashlib.sha256(f"keeneye-training-runs:{pipeline}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class TrainingRunRepository(Database):
    """Training run reads and writes of :class:`~keeneye.store.ResultsDB`."""

    @contextmanager
    def _exclusive(self, pipeline: str) -> Iterator[Session]:
        """A transaction no other request for ``pipeline`` runs beside (commits when the block succeeds)."""
        with self.session() as s:
            if self.backend == "sqlite":
                # Take the write lock before reading: a deferred transaction would let two processes
                # both read "nothing queued" and both insert.
                s.execute(text("BEGIN IMMEDIATE"))
            else:
                s.execute(select(func.pg_advisory_xact_lock(_lock_key(pipeline))))
            yield s

    def request_training_run(
        self,
        pipeline: str,
        cause: str,
        reason: str,
        dedup_key: str,
        inputs: Mapping[str, Any],
        *,
        now: datetime,
        cooldown: timedelta,
        horizon: timedelta,
        max_active_scan: int,
        stale_reason: Callable[[TrainingRunRecord], str | None],
    ) -> RunRequest:
        """Queue a run unless its ``dedup_key`` was requested within ``horizon``, a run of the pipeline
        is active, or one was requested within ``cooldown``. Active runs for which ``stale_reason``
        gives a reason are marked failed first (at most ``max_active_scan`` are looked at)."""
        since = now - horizon
        with self._exclusive(pipeline) as s:
            reaped = self._reap_stale(s, pipeline, since, now, max_active_scan, stale_reason)
            recent = (TrainingRunRow.pipeline == pipeline, TrainingRunRow.requested_at >= since)
            seen = s.execute(
                select(TrainingRunRow.id).where(*recent, TrainingRunRow.dedup_key == dedup_key).limit(1)
            ).first()
            if seen is not None:
                return RunRequest(None, f"run for {dedup_key} already requested (run {seen[0]})", reaped)
            busy = s.execute(
                select(TrainingRunRow.id, TrainingRunRow.status)
                .where(*recent, TrainingRunRow.status.in_(TRAINING_RUN_ACTIVE))
                .limit(1)
            ).first()
            if busy is not None:
                return RunRequest(None, f"{dedup_key} not queued, run {busy[0]} is {busy[1]}", reaped)
            if cooldown > timedelta(0):
                last = s.execute(
                    select(TrainingRunRow.requested_at)
                    .where(TrainingRunRow.pipeline == pipeline, TrainingRunRow.requested_at > now - cooldown)
                    .order_by(TrainingRunRow.requested_at.desc())
                    .limit(1)
                ).first()
                if last is not None:
                    return RunRequest(None, f"{dedup_key} not queued, cooling down since {last[0]}", reaped)
            row = TrainingRunRow(
                pipeline=pipeline,
                cause=cause,
                reason=reason,
                dedup_key=dedup_key,
                status="queued",
                inputs=dict(inputs),
                outcome={},
                error=None,
                requested_at=now,
                started_at=None,
                finished_at=None,
            )
            s.add(row)
            s.flush()
            return RunRequest(TrainingRunRecord.of(row), None, reaped)

    @staticmethod
    def _reap_stale(
        s: Session,
        pipeline: str,
        since: datetime,
        now: datetime,
        limit: int,
        stale_reason: Callable[[TrainingRunRecord], str | None],
    ) -> list[TrainingRunRecord]:
        """Fail the pipeline's queued/running runs whose executor is evidently gone."""
        rows = s.scalars(
            select(TrainingRunRow)
            .where(
                TrainingRunRow.pipeline == pipeline,
                TrainingRunRow.requested_at >= since,
                TrainingRunRow.status.in_(TRAINING_RUN_ACTIVE),
            )
            .order_by(TrainingRunRow.requested_at)
            .limit(limit)
        ).all()
        reaped = []
        for row in rows:
            why = stale_reason(TrainingRunRecord.of(row))
            if why is None:
                continue
            row.status, row.error, row.finished_at = "failed", why, now
            reaped.append(TrainingRunRecord.of(row))
        return reaped

    def active_training_run(self, pipeline: str, since: datetime) -> TrainingRunRecord | None:
        """The pipeline's newest queued or running run requested after ``since``, if any."""
        stmt = (
            select(TrainingRunRow)
            .where(
                TrainingRunRow.pipeline == pipeline,
                TrainingRunRow.requested_at >= since,
                TrainingRunRow.status.in_(TRAINING_RUN_ACTIVE),
            )
            .order_by(TrainingRunRow.requested_at.desc())
            .limit(1)
        )
        with self.session() as s:
            row = s.scalars(stmt).first()
            return None if row is None else TrainingRunRecord.of(row)

    def get_training_run(self, run_id: int) -> TrainingRunRecord | None:
        with self.session() as s:
            row = s.get(TrainingRunRow, run_id)
            return None if row is None else TrainingRunRecord.of(row)

    def start_training_run(self, run_id: int, now: datetime, process: Mapping[str, Any]) -> bool:
        """``queued`` → ``running`` (conditional: of two executors only one wins); whether it moved."""
        stmt = (
            update(TrainingRunRow)
            .where(TrainingRunRow.id == run_id, TrainingRunRow.status == "queued")
            .values(status="running", started_at=now, outcome={"process": dict(process)})
        )
        with self.session() as s:
            return rowcount(s.execute(stmt)) == 1

    def finish_training_run(
        self, run_id: int, status: str, outcome: Mapping[str, Any], error: str | None, now: datetime
    ) -> tuple[TrainingRunRecord | None, bool]:
        """An active run → ``status``, its outcome merged in. Returns the run as it is afterwards (None
        when there is no such run) and whether it finished now (False: it was not active)."""
        with self.session() as s:
            row = s.get(TrainingRunRow, run_id)
            if row is None:
                return None, False
            if row.status not in TRAINING_RUN_ACTIVE:
                return TrainingRunRecord.of(row), False
            row.status = status
            row.outcome = {**(row.outcome or {}), **dict(outcome)}
            row.error = error
            row.finished_at = now
            s.flush()
            return TrainingRunRecord.of(row), True

    def list_training_runs(self, pipeline: str, limit: int) -> list[TrainingRunRecord]:
        """The pipeline's newest runs first (the index, then a LIMIT)."""
        stmt = (
            select(TrainingRunRow)
            .where(TrainingRunRow.pipeline == pipeline)
            .order_by(TrainingRunRow.requested_at.desc(), TrainingRunRow.id.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [TrainingRunRecord.of(r) for r in s.scalars(stmt)]

    def last_run_requested_at(self, pipeline: str) -> datetime | None:
        """When the pipeline's newest run was requested (the index, one row)."""
        stmt = (
            select(TrainingRunRow.requested_at)
            .where(TrainingRunRow.pipeline == pipeline)
            .order_by(TrainingRunRow.requested_at.desc())
            .limit(1)
        )
        with self.session() as s:
            return s.execute(stmt).scalar_one_or_none()
