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

import logging
import os
import socket
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from keeneye.domain import InvalidInput, NotFound
from keeneye.metrics import Metrics
from keeneye.store import TRAINING_RUN_ACTIVE, ResultsDB, TrainingRunRecord, utcnow

log = logging.getLogger(__name__)

Cause = Literal["schedule", "new_labels", "drift", "quality_drop", "manual"]
RunStatus = Literal["queued", "running", "succeeded", "refused", "failed"]
CAUSES: Final[tuple[str, ...]] = ("schedule", "new_labels", "drift", "quality_drop", "manual")
STATUSES: Final[tuple[str, ...]] = ("queued", "running", "succeeded", "refused", "failed")
ACTIVE: Final[tuple[str, ...]] = TRAINING_RUN_ACTIVE
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
    at = now
    outcome = db.request_training_run(
        pipeline,
        cause,
        reason,
        dedup_key,
        inputs,
        now=now,
        cooldown=cooldown,
        horizon=DEDUP_HORIZON,
        max_active_scan=MAX_ACTIVE_SCAN,
        stale_reason=lambda run: _stale_reason(run, at),
    )
    for run in outcome.reaped:
        log.warning("training run %d of %s marked failed: %s", run.id, pipeline, run.error)
        if metrics is not None:
            metrics.training_runs.labels(pipeline, run.cause, "failed").inc()
    record = outcome.run
    if record is None:
        log.info("%s: %s", pipeline, outcome.skipped)
        return None
    log.info("queued training run %d of %s (%s: %s)", record.id, pipeline, cause, reason)
    return record


def active_run(db: ResultsDB, pipeline: str, *, now: datetime | None = None) -> TrainingRunRecord | None:
    """The pipeline's queued or running run, if any."""
    now = now or utcnow()
    return db.active_training_run(pipeline, now - DEDUP_HORIZON)


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
    run = db.get_training_run(run_id)
    if run is None:
        raise NotFound(f"no training run {run_id}", fix="list them with `keeneye runs PIPELINE`")
    return run


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
    won = db.start_training_run(run_id, now, process)
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
    record, finished = db.finish_training_run(run_id, status, outcome, error, now)
    if record is None:
        raise NotFound(f"no training run {run_id}")
    if not finished:
        raise _not_in(record, "queued or running")
    if metrics is not None:
        metrics.training_runs.labels(record.pipeline, record.cause, status).inc()
    log.info("training run %d of %s %s", run_id, record.pipeline, status)
    return record


def list_runs(db: ResultsDB, pipeline: str, *, limit: int = 20) -> list[TrainingRunRecord]:
    """The pipeline's newest runs first, at most ``min(limit, MAX_RUNS)`` (the index, then a LIMIT)."""
    limit = max(1, min(int(limit), MAX_RUNS))
    return db.list_training_runs(pipeline, limit)


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
