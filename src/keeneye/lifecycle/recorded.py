"""A training started by hand (``keeneye train``, ``keeneye demo``) recorded as a training run.

``keeneye runs P`` and ``GET /v1/pipelines/P/runs`` list every training of a pipeline, not only the
retrainings a trigger asked for. :func:`recorded_training` requests a ``manual`` run through
:mod:`keeneye.lifecycle.runs` (no cooldown, a unique dedup key), starts it, and finishes it when the
block ends: ``succeeded`` (gates passed), ``refused`` (gates said no) or ``failed`` (an error, its one
line kept; Ctrl-C finishes it ``failed`` too, so no run is left ``running``). The outcome has the
fields of a retraining run's (version, alias, gates, metrics, data version, split sizes, run folder).

While another run of the pipeline is queued or running, the training still goes ahead unrecorded
(one active run per pipeline is the runs table's rule); :attr:`RecordedRun.note` says so.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from keeneye.domain import JsonObject, KeeneyeError
from keeneye.lifecycle.runs import active_run, finish, request_run, start
from keeneye.store import ResultsDB, TrainingRunRecord
from keeneye.training.run import TrainResult

log = logging.getLogger(__name__)


def training_outcome(result: TrainResult) -> JsonObject:
    """The JSON outcome of a finished training, as a training run stores it."""
    gates = result.gates
    return {
        "version": result.version,
        "alias": result.alias,
        "gates": {"passed": gates.passed, "reasons": list(gates.reasons), "notes": list(gates.notes)},
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "data_version": result.data_version,
        "split_sizes": list(result.split_sizes),
        "run_dir": str(result.run_dir),
        "mlflow_run_id": result.run_id,
        "timings_s": {k: round(float(v), 2) for k, v in result.timings.items()},
    }


@dataclass
class RecordedRun:
    """The run a hand-started training is recorded as (``run`` None when it could not be)."""

    db: ResultsDB
    run: TrainingRunRecord | None
    note: str | None = None
    started: float = 0.0

    def finish(self, result: TrainResult) -> TrainingRunRecord | None:
        """Finish the run with ``result``: ``succeeded`` when the gates passed, else ``refused``."""
        if self.run is None:
            return None
        outcome = training_outcome(result)
        timings = outcome["timings_s"]
        assert isinstance(timings, dict)  # training_outcome writes it
        timings["total"] = round(time.perf_counter() - self.started, 2)
        status = "succeeded" if result.gates.passed else "refused"
        self.run = finish(self.db, self.run.id, status, outcome)
        return self.run

    def fail(self, error: str) -> None:
        if self.run is not None and self.run.active:
            total = round(time.perf_counter() - self.started, 2)
            self.run = finish(self.db, self.run.id, "failed", {"timings_s": {"total": total}}, error[:4000])


@contextmanager
def recorded_training(
    db: ResultsDB, pipeline: str, *, reason: str, inputs: Mapping[str, Any]
) -> Iterator[RecordedRun]:
    """Record the training done in the block as a ``manual`` run; call :meth:`RecordedRun.finish`
    with its result. An error in the block finishes the run ``failed`` and propagates."""
    record = request_run(
        db, pipeline, "manual", reason, f"manual:{uuid.uuid4().hex}", inputs, cooldown=timedelta(0)
    )
    if record is None:
        busy = active_run(db, pipeline)
        which = f"run {busy.id} is {busy.status}" if busy is not None else "another run is active"
        recorded = RecordedRun(db, None, note=f"not recorded as a training run: {which}")
    else:
        recorded = RecordedRun(db, start(db, record.id), started=time.perf_counter())
    try:
        yield recorded
    except KeeneyeError as exc:
        recorded.fail(exc.one_line())
        raise
    except Exception as exc:
        recorded.fail(f"{type(exc).__name__}: {exc}")
        raise
    except BaseException:  # Ctrl-C, SystemExit: leave no run "running" behind
        recorded.fail("interrupted")
        raise
    if recorded.run is not None and recorded.run.active:  # the block ended without a result
        recorded.fail("ended without a result")


__all__ = ["RecordedRun", "recorded_training", "training_outcome"]
