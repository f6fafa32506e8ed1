"""Results database: observations, predictions, feedback, reviews, runs, rollouts, alerts and more.

One class, :class:`ResultsDB`, is the entry point: it serves both deployments — SQLite (embedded
default) and PostgreSQL (scaled) — chosen by ``KEENEYE_DATABASE_URL``
(:class:`~keeneye.store.engine.Database`), and gathers one repository per aggregate, each in its own
module of ``keeneye.store``. The schema is owned by Alembic migrations packaged in
``keeneye/store/migrations``; the rows of :mod:`keeneye.store.schema` must match them exactly.

Repository methods return frozen records (:mod:`keeneye.store.records`), never ORM rows or sessions,
so callers cannot hold a transaction open by accident; nothing outside ``keeneye.store`` writes SQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from keeneye.settings import Settings
from keeneye.store.alerts import AlertRepository
from keeneye.store.drift_partials import DriftPartialRepository
from keeneye.store.drift_reports import DriftReportRepository
from keeneye.store.feedback import FeedbackRepository
from keeneye.store.fields import FieldRepository
from keeneye.store.keys import ApiKeyRepository
from keeneye.store.lines import LineRepository
from keeneye.store.model_events import ModelEventRepository
from keeneye.store.observations import ObservationRepository
from keeneye.store.predictions import PredictionRepository
from keeneye.store.reviews import ReviewRepository
from keeneye.store.rollouts import RolloutRepository
from keeneye.store.runs import TrainingRunRepository
from keeneye.store.smartcut import SmartcutRepository


class ResultsDB(
    ObservationRepository,
    PredictionRepository,
    FeedbackRepository,
    ReviewRepository,
    ModelEventRepository,
    AlertRepository,
    DriftReportRepository,
    DriftPartialRepository,
    TrainingRunRepository,
    RolloutRepository,
    ApiKeyRepository,
    SmartcutRepository,
    FieldRepository,
    LineRepository,
):
    """The results database on SQLite or PostgreSQL; thread-safe, one per process is enough."""

    def with_lock_timeout(self, seconds: float) -> ResultsDB:
        """This database, or for SQLite a second handle on the same file whose writes wait at most
        ``seconds`` for a lock (the shared handle waits 30 s: right for workers, not for a request)."""
        if self.backend != "sqlite":
            return self
        other = ResultsDB(self.url)
        other.set_busy_timeout(seconds)
        return other


_OPEN: dict[str, ResultsDB] = {}
_OPEN_LOCK = threading.Lock()


def open_results_db(settings: Settings, *, migrate: bool = True) -> ResultsDB:
    """The results database named by ``KEENEYE_DATABASE_URL``, one shared instance per URL and process.

    With ``migrate`` (the default) the schema is brought to head first, so no caller ever meets a
    missing table; ``keeneye doctor`` passes ``migrate=False`` to report the revision as it is.
    """
    with _OPEN_LOCK:
        db = _OPEN.get(settings.database_url)
        if db is None:
            db = _OPEN[settings.database_url] = ResultsDB(settings.database_url)
    if migrate:
        db.ensure_schema()
    return db


def opened_results_dbs() -> set[str]:
    """The URLs of the shared results databases this process holds open (:func:`open_results_db`)."""
    with _OPEN_LOCK:
        return set(_OPEN)


def close_results_dbs(urls: Iterable[str]) -> None:
    """Close the pooled connections of the shared results databases at ``urls`` and forget them: the
    next :func:`open_results_db` of such a URL opens it afresh (a handle still held elsewhere stays
    usable: it reconnects on its next use).

    For a process that opens many databases one after another — a test session, where a SQLite
    handle left open holds three file descriptors (database, WAL, shared memory) until the process
    ends, and a few thousand of them push descriptor numbers past the 1,024 that ``select()`` (used
    by pymodbus' client) can watch."""
    with _OPEN_LOCK:
        closing = [db for url in urls if (db := _OPEN.pop(url, None)) is not None]
    for db in closing:
        db.close()


__all__ = ["ResultsDB", "close_results_dbs", "open_results_db", "opened_results_dbs"]
