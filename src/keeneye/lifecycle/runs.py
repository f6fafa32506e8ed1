"""Training-run records: why a (re)training run was asked for, and what became of it.

A run is one row of ``training_runs`` and moves ``queued`` → ``running`` → ``succeeded`` (a model was
registered and passed its gates) | ``refused`` (registered, but the gates said no, so it got no alias)
| ``failed`` (an error; the text is kept). Triggers *request* runs; whoever executes one (``keeneye
retrain P --run-id N``, the scheduler's child process, an Airflow task) *starts* and *finishes* it.

Requests are de-duplicated so that one cause starts one run, however often a trigger is evaluated and
however many schedulers evaluate it:

* a request whose ``dedup_key`` was requested before (drift report 17, the 500-label mark of champion
  v3, the 1st-of-May slot of a monthly schedule) is dropped;
* while a run of the pipeline is queued or running no other is queued (two trainings of one model at
  once would only race each other to the registry);
* within ``cooldown`` of the pipeline's last request no automatic run is queued (a manual request
  passes ``cooldown=timedelta(0)``).

The checks and the insert run in one exclusive transaction (``BEGIN IMMEDIATE`` on SQLite, a
transaction-scoped advisory lock per pipeline on PostgreSQL), so two processes cannot both pass them.
A run whose executor died is not allowed to block its pipeline forever: a queued run that never
started within ``STALE_QUEUED``, or a running one whose process is gone (same host) or that has run
longer than ``STALE_RUNNING``, is marked failed by the next request.

Every query is bounded: one pipeline, a ``requested_at`` range on the ``(pipeline, requested_at)``
index, and a LIMIT.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from keeneye.domain import InvalidInput, NotFound
from keeneye.store.db import ResultsDB, TrainingRun, utcnow

if TYPE_CHECKING:
    from keeneye.monitoring.metrics import Metrics

log = logging.getLogger(__name__)

Cause = Literal["schedule", "new_labels", "drift", "quality_drop", "manual"]
RunStatus = Literal["queued", "running", "succeeded", "refused", "failed"]
CAUSES: Final[tuple[str, ...]] = ("schedule", "new_labels", "drift", "quality_drop", "manual")
STATUSES: Final[tuple[str, ...]] = ("queued", "running", "succeeded", "refused", "failed")
ACTIVE: Final[tuple[str, ...]] = ("queued", "running")
FINAL: Final[tuple[str, ...]] = ("succeeded", "refused", "failed")

DEFAULT_COOLDOWN: Final = timedelta(hours=6)
# How far back a dedup key is remembered. Keys carry their own time or version (a report id, a slot,
# a champion version), so an older repeat cannot happen in practice; the bound keeps the query an
# index range instead of the pipeline's whole history.
DEDUP_HORIZON: Final = timedelta(days=400)
STALE_QUEUED: Final = timedelta(hours=1)
STALE_RUNNING: Final = timedelta(hours=24)
MAX_RUNS: Final = 500  # the most runs one listing returns
MAX_DEDUP_KEY: Final = 256  # the column's width
MAX_ACTIVE_SCAN: Final = 20  # active rows looked at per request (there is at most one, normally)


@dataclass(frozen=True)
class TrainingRunRecord:
    """One training run as stored."""

    id: int
    pipeline: str
    cause: str
    reason: str
    dedup_key: str
    status: str
    inputs: dict[str, Any]
    outcome: dict[str, Any]
    error: str | None
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def seconds(self) -> float | None:
        """How long it ran (so far, for a running one: None)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """JSON view (``keeneye runs --json``, ``GET /v1/pipelines/{name}/runs``)."""
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "cause": self.cause,
            "reason": self.reason,
            "dedup_key": self.dedup_key,
            "status": self.status,
            "inputs": self.inputs,
            "outcome": self.outcome,
            "error": self.error,
            "requested_at": self.requested_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "seconds": None if self.seconds is None else round(self.seconds, 1),
        }

    @classmethod
    def of(cls, row: TrainingRun) -> TrainingRunRecord:
        return cls(
            id=int(row.id),
            pipeline=row.pipeline,
            cause=row.cause,
            reason=row.reason,
            dedup_key=row.dedup_key,
            status=row.status,
            inputs=dict(row.inputs or {}),
            outcome=dict(row.outcome or {}),
            error=row.error,
            requested_at=row.requested_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


# --------------------------------------------------------------------------------------------------
# Exclusive section per pipeline
# --------------------------------------------------------------------------------------------------


def _lock_key(pipeline: str) -> int:
    """A signed 64-bit advisory-lock key for the pipeline, the same in every process."""
    digest = hashlib.sha256(f"keeneye-training-runs:{pipeline}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _exclusive(db: ResultsDB, pipeline: str) -> Iterator[Session]:
    """A transaction no other request for ``pipeline`` runs beside (commits when the block succeeds)."""
    with db.session() as s:
        if db.backend == "sqlite":
            # Take the write lock before reading: a deferred transaction would let two processes
            # both read "nothing queued" and both insert.
            s.execute(text("BEGIN IMMEDIATE"))
        else:
            s.execute(select(func.pg_advisory_xact_lock(_lock_key(pipeline))))
        yield s


# --------------------------------------------------------------------------------------------------
# Requesting
# --------------------------------------------------------------------------------------------------


def _check_cause(cause: str) -> None:
    if cause not in CAUSES:
        raise InvalidInput(
            "bad_cause", f"unknown run cause {cause!r}", fix="use one of: " + ", ".join(CAUSES)
        )


def request_run(
    db: ResultsDB,
    pipeline: str,
    cause: str,
    reason: str,
    dedup_key: str,
    inputs: Mapping[str, Any],
    *,
    now: datetime | None = None,
    cooldown: timedelta = DEFAULT_COOLDOWN,
    metrics: Metrics | None = None,
) -> TrainingRunRecord | None:
    """Queue a run, or ``None`` when it is a duplicate (see the module docstring for the rules).

    ``inputs`` records what triggered it (report id, counts, versions) and what the run should use
    (``data_dir``, ``epochs``, ``pseudo_labels`` …).
    """
    _check_cause(cause)
    if not dedup_key or len(dedup_key) > MAX_DEDUP_KEY:
        raise InvalidInput("bad_dedup_key", f"a dedup key needs 1 to {MAX_DEDUP_KEY} characters")
    now = now or utcnow()
    with _exclusive(db, pipeline) as s:
        _reap_stale(s, pipeline, now, metrics)
        since = now - DEDUP_HORIZON
        recent = (TrainingRun.pipeline == pipeline, TrainingRun.requested_at >= since)
        seen = s.execute(
            select(TrainingRun.id).where(*recent, TrainingRun.dedup_key == dedup_key).limit(1)
        ).first()
        if seen is not None:
            log.debug("%s: run for %s already requested (run %s)", pipeline, dedup_key, seen[0])
            return None
        busy = s.execute(
            select(TrainingRun.id, TrainingRun.status).where(*recent, TrainingRun.status.in_(ACTIVE)).limit(1)
        ).first()
        if busy is not None:
            log.info("%s: %s not queued, run %s is %s", pipeline, dedup_key, busy[0], busy[1])
            return None
        if cooldown > timedelta(0):
            last = s.execute(
                select(TrainingRun.requested_at)
                .where(TrainingRun.pipeline == pipeline, TrainingRun.requested_at > now - cooldown)
                .order_by(TrainingRun.requested_at.desc())
                .limit(1)
            ).first()
            if last is not None:
                log.info("%s: %s not queued, cooling down since %s", pipeline, dedup_key, last[0])
                return None
        row = TrainingRun(
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
        record = TrainingRunRecord.of(row)
    log.info("queued training run %d of %s (%s: %s)", record.id, pipeline, cause, reason)
    return record


def active_run(db: ResultsDB, pipeline: str, *, now: datetime | None = None) -> TrainingRunRecord | None:
    """The pipeline's queued or running run, if any."""
    now = now or utcnow()
    stmt = (
        select(TrainingRun)
        .where(
            TrainingRun.pipeline == pipeline,
            TrainingRun.requested_at >= now - DEDUP_HORIZON,
            TrainingRun.status.in_(ACTIVE),
        )
        .order_by(TrainingRun.requested_at.desc())
        .limit(1)
    )
    with db.session() as s:
        row = s.scalars(stmt).first()
        return None if row is None else TrainingRunRecord.of(row)


def _reap_stale(s: Session, pipeline: str, now: datetime, metrics: Metrics | None) -> None:
    """Fail the pipeline's queued/running runs whose executor is evidently gone."""
    rows = s.scalars(
        select(TrainingRun)
        .where(
            TrainingRun.pipeline == pipeline,
            TrainingRun.requested_at >= now - DEDUP_HORIZON,
            TrainingRun.status.in_(ACTIVE),
        )
        .order_by(TrainingRun.requested_at)
        .limit(MAX_ACTIVE_SCAN)
    ).all()
    for row in rows:
        why = _stale_reason(TrainingRunRecord.of(row), now)
        if why is None:
            continue
        log.warning("training run %d of %s marked failed: %s", row.id, pipeline, why)
        row.status, row.error, row.finished_at = "failed", why, now
        if metrics is not None:
            metrics.training_runs.labels(pipeline, row.cause, "failed").inc()


def _stale_reason(run: TrainingRunRecord, now: datetime) -> str | None:
    if run.status == "queued":
        if run.requested_at < now - STALE_QUEUED:
            return (
                f"abandoned: queued at {run.requested_at:%Y-%m-%d %H:%M} UTC and never started "
                f"(start it with `keeneye retrain {run.pipeline} --run-id {run.id}` next time)"
            )
        return None
    process = run.outcome.get("process") or {}
    pid, host = process.get("pid"), process.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
        return f"abandoned: the process running it (pid {pid} on {host}) exited without finishing it"
    started = run.started_at or run.requested_at
    if started < now - STALE_RUNNING:
        hours = STALE_RUNNING.total_seconds() / 3600
        return f"abandoned: still running {hours:g} h after it started; its process is presumed lost"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that id: alive
        return True
    return True


# --------------------------------------------------------------------------------------------------
# Executing
# --------------------------------------------------------------------------------------------------


def get_run(db: ResultsDB, run_id: int) -> TrainingRunRecord:
    """One run; :class:`NotFound` (404) when there is no such id."""
    with db.session() as s:
        row = s.get(TrainingRun, run_id)
        if row is None:
            raise NotFound(f"no training run {run_id}", fix="list them with `keeneye runs PIPELINE`")
        return TrainingRunRecord.of(row)


def _not_in(run: TrainingRunRecord, wanted: str) -> InvalidInput:
    return InvalidInput(
        "run_state",
        f"training run {run.id} of {run.pipeline} is {run.status}, not {wanted}",
        status=409,
        fix=f"request a new run: keeneye retrain {run.pipeline} --reason TEXT",
    )


def start(db: ResultsDB, run_id: int, *, now: datetime | None = None) -> TrainingRunRecord:
    """``queued`` → ``running``, recording which process runs it; 409 when it is not queued.

    The update is conditional on ``queued``, so of two executors started for one run only one wins.
    """
    now = now or utcnow()
    process = {"host": socket.gethostname(), "pid": os.getpid()}
    stmt = (
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
        .values(status="running", started_at=now, outcome={"process": process})
    )
    with db.session() as s:
        won = cast(CursorResult[Any], s.execute(stmt)).rowcount == 1
    run = get_run(db, run_id)
    if not won:
        raise _not_in(run, "queued")
    return run


def finish(
    db: ResultsDB,
    run_id: int,
    status: str,
    outcome: Mapping[str, Any],
    error: str | None = None,
    *,
    metrics: Metrics | None = None,
    now: datetime | None = None,
) -> TrainingRunRecord:
    """``queued``/``running`` → ``succeeded`` | ``refused`` | ``failed`` with its outcome (and error);
    counts ``keeneye_training_runs{pipeline,cause,status}``. 409 when the run has already finished."""
    if status not in FINAL:
        raise ValueError(f"a run finishes as one of {FINAL}, not {status!r}")
    now = now or utcnow()
    with db.session() as s:
        row = s.get(TrainingRun, run_id)
        if row is None:
            raise NotFound(f"no training run {run_id}")
        if row.status not in ACTIVE:
            raise _not_in(TrainingRunRecord.of(row), "queued or running")
        row.status = status
        row.outcome = {**(row.outcome or {}), **dict(outcome)}
        row.error = error
        row.finished_at = now
        s.flush()
        record = TrainingRunRecord.of(row)
    if metrics is not None:
        metrics.training_runs.labels(record.pipeline, record.cause, status).inc()
    log.info("training run %d of %s %s", run_id, record.pipeline, status)
    return record


def list_runs(db: ResultsDB, pipeline: str, *, limit: int = 20) -> list[TrainingRunRecord]:
    """The pipeline's newest runs first, at most ``min(limit, MAX_RUNS)`` (the index, then a LIMIT)."""
    limit = max(1, min(int(limit), MAX_RUNS))
    stmt = (
        select(TrainingRun)
        .where(TrainingRun.pipeline == pipeline)
        .order_by(TrainingRun.requested_at.desc(), TrainingRun.id.desc())
        .limit(limit)
    )
    with db.session() as s:
        return [TrainingRunRecord.of(r) for r in s.scalars(stmt)]


__all__ = [
    "ACTIVE",
    "CAUSES",
    "DEFAULT_COOLDOWN",
    "FINAL",
    "MAX_RUNS",
    "STATUSES",
    "Cause",
    "RunStatus",
    "TrainingRunRecord",
    "active_run",
    "finish",
    "get_run",
    "list_runs",
    "request_run",
    "start",
]
