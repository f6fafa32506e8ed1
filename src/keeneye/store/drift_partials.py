"""Drift partials: each process's share of a pipeline's open drift window, so that windows close for
the pipeline as a whole rather than per process (:mod:`keeneye.monitoring.drift` owns what a share
holds; this module only makes the exchange atomic).

The protocol, on SQLite and PostgreSQL alike:

* a process *publishes* by updating its own row (:meth:`DriftPartialRepository.update_drift_partial`);
  when the row is gone — another process closed the window and consumed it — it inserts a fresh one
  holding only what it saw since (:meth:`~DriftPartialRepository.insert_drift_partial`). Nobody else
  ever writes a process's row, so nothing is counted twice and nothing is lost;
* a process *claims* the window (:meth:`~DriftPartialRepository.claim_drift_window`) in one exclusive
  transaction — ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock per pipeline and
  model version plus row locks on PostgreSQL — that re-checks the close rule on the rows it locked
  and deletes exactly those rows. Two processes closing at once: one gets the rows, the other finds
  them gone and closes nothing. A publish that races the claim either lands before it (and is
  consumed) or waits for it (and finds its row gone).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from keeneye.domain import JsonObject
from keeneye.store.engine import Database, rowcount
from keeneye.store.schema import DriftPartialRow


@dataclass(frozen=True)
class DriftShare:
    """What the open window of a pipeline and model version holds, all processes together."""

    n: int
    started_at: datetime | None
    sources: int  # rows: processes (monitors) that published into it


@dataclass(frozen=True)
class DriftPartialRecord:
    """One process's published share of an open window, as a claim hands it over."""

    token: str
    pipeline: str
    model_version: str
    source: str
    n: int
    started_at: datetime
    updated_at: datetime
    payload: JsonObject

    @classmethod
    def of(cls, row: DriftPartialRow) -> DriftPartialRecord:
        return cls(
            token=row.token,
            pipeline=row.pipeline,
            model_version=row.model_version,
            source=row.source,
            n=int(row.n),
            started_at=row.started_at,
            updated_at=row.updated_at,
            payload=dict(row.payload or {}),
        )


@dataclass(frozen=True)
class CloseRule:
    """When a pipeline-wide window closes: ``size`` observations, or ``min_samples`` once its earliest
    share started at or before ``started_before`` (None: no time rule)."""

    size: int
    min_samples: int
    started_before: datetime | None = None

    def holds(self, n: int, started_at: datetime | None) -> bool:
        if n >= self.size:
            return True
        return (
            self.started_before is not None
            and started_at is not None
            and started_at <= self.started_before
            and n >= self.min_samples
        )


def _lock_key(pipeline: str, model_version: str) -> int:
    """A signed 64-bit advisory-lock key for one pipeline and model version, the same in every process."""
    digest = hashlib.sha256(f"keeneye-drift:{pipeline}\x00{model_version}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class DriftPartialRepository(Database):
    """Drift partial reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def _drift_share(self, s: Session, pipeline: str, model_version: str) -> DriftShare:
        n, started, rows = s.execute(
            select(
                func.coalesce(func.sum(DriftPartialRow.n), 0),
                func.min(DriftPartialRow.started_at),
                func.count(),
            ).where(DriftPartialRow.pipeline == pipeline, DriftPartialRow.model_version == model_version)
        ).one()
        return DriftShare(int(n), started, int(rows))

    def drift_share(self, pipeline: str, model_version: str) -> DriftShare:
        """The open window's pipeline-wide count and start (read only)."""
        with self.session() as s:
            return self._drift_share(s, pipeline, model_version)

    def update_drift_partial(
        self,
        *,
        token: str,
        n: int,
        started_at: datetime,
        payload: JsonObject,
        now: datetime,
    ) -> DriftShare | None:
        """Replace this process's share; None when its row is gone (consumed by a close, or never
        written): then :meth:`insert_drift_partial` what was seen since."""
        with self.session() as s:
            done = s.execute(
                update(DriftPartialRow)
                .where(DriftPartialRow.token == token)
                .values(n=n, started_at=started_at, updated_at=now, payload=dict(payload))
            )
            if rowcount(done) == 0:
                return None
            row = s.get(DriftPartialRow, token)
            assert row is not None
            return self._drift_share(s, row.pipeline, row.model_version)

    def insert_drift_partial(
        self,
        *,
        token: str,
        pipeline: str,
        model_version: str,
        source: str,
        n: int,
        started_at: datetime,
        payload: JsonObject,
        now: datetime,
    ) -> DriftShare:
        """Start this process's share of the open window (its previous one was consumed)."""
        with self.session() as s:
            s.add(
                DriftPartialRow(
                    token=token,
                    pipeline=pipeline,
                    model_version=model_version,
                    source=source,
                    n=n,
                    started_at=started_at,
                    updated_at=now,
                    payload=dict(payload),
                )
            )
            s.flush()
            return self._drift_share(s, pipeline, model_version)

    @contextmanager
    def _drift_exclusive(self, pipeline: str, model_version: str) -> Iterator[Session]:
        """A transaction no other claim of this window runs beside (commits when the block succeeds)."""
        with self.session() as s:
            if self.backend == "sqlite":
                # The write lock before the first read: a deferred transaction would let two processes
                # both read the same rows and both close the window.
                s.execute(text("BEGIN IMMEDIATE"))
            else:
                s.execute(select(func.pg_advisory_xact_lock(_lock_key(pipeline, model_version))))
            yield s

    def claim_drift_window(
        self,
        *,
        pipeline: str,
        model_version: str,
        rule: CloseRule,
        extra_n: int = 0,
        extra_started: datetime | None = None,
        stale_before: datetime | None = None,
    ) -> list[DriftPartialRecord] | None:
        """Take every share of the open window when ``rule`` holds for them plus the caller's own
        unpublished ``extra_n`` observations (started at ``extra_started``); None when it does not.

        The shares taken are deleted in the same transaction: exactly one caller gets them. With
        ``stale_before``, shares of the pipeline's *other* model versions not updated since then
        (left by processes that stopped, or a version that was replaced) are deleted on the way.
        """
        with self._drift_exclusive(pipeline, model_version) as s:
            rows = list(
                s.scalars(
                    select(DriftPartialRow)
                    .where(
                        DriftPartialRow.pipeline == pipeline, DriftPartialRow.model_version == model_version
                    )
                    .order_by(DriftPartialRow.token)  # one lock order for every claimer
                    .with_for_update()
                )
            )
            n = sum(int(r.n) for r in rows) + extra_n
            starts = [r.started_at for r in rows] + ([extra_started] if extra_started is not None else [])
            if n == 0 or not rule.holds(n, min(starts) if starts else None):
                return None
            taken = [DriftPartialRecord.of(r) for r in rows]
            if taken:
                s.execute(delete(DriftPartialRow).where(DriftPartialRow.token.in_([r.token for r in taken])))
            if stale_before is not None:
                s.execute(
                    delete(DriftPartialRow).where(
                        DriftPartialRow.pipeline == pipeline,
                        DriftPartialRow.model_version != model_version,
                        DriftPartialRow.updated_at < stale_before,
                    )
                )
            return taken

    def drift_partials(self, pipeline: str, model_version: str) -> list[DriftPartialRecord]:
        """The open window's shares (for inspection and tests; bounded by the processes publishing)."""
        with self.session() as s:
            query = (
                select(DriftPartialRow)
                .where(DriftPartialRow.pipeline == pipeline, DriftPartialRow.model_version == model_version)
                .order_by(DriftPartialRow.token)
            )
            return [DriftPartialRecord.of(r) for r in s.scalars(query)]
