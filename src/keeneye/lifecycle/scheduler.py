"""The scheduler process that ``keeneye up`` starts: periodic monitoring and lifecycle work in one loop.

Every ``alerting.interval_seconds`` it

* runs the alert rules engine once (:class:`~keeneye.monitoring.alerts.engine.RulesEngine`),
* evaluates online quality (``keeneye.monitoring.quality.evaluate_quality``), which sets the
  ``keeneye_online_quality`` / ``keeneye_quality_drop`` gauges the ``QualityDrop`` rule reads,
* evaluates the retraining triggers (``keeneye.lifecycle.triggers.tick``), starting each new run as
  its own ``keeneye retrain --run-id`` process, and
* ticks the rollout controller (``keeneye.lifecycle.rollout``): shadow → canary → promotion or
  rollback, when the measurements say so, and
* every ``retention.interval_seconds`` (hourly), applies each pipeline's ``retention:``
  (:mod:`keeneye.store.retention`; off with ``retention.enabled: false``).

Each job is isolated: one that raises is logged and the loop goes on (an API that is restarting, a
broken rule, a quality query that times out never stop the others). It lives in ``lifecycle/``, the
highest floor it drives (monitoring sits below), so every job is a plain import. The loop is a
:class:`~keeneye.workers.WorkerBase`: SIGTERM or Ctrl-C finishes the round in hand and exits,
and a status file ``<home>/run/scheduler.json`` (rewritten every few seconds) is its heartbeat.
Replicas share a leader lock (:mod:`keeneye.store.leader`): only its holder runs rounds, the others
stand by and take over when it goes (docs/deploy.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keeneye.domain import JsonObject
from keeneye.lifecycle.rollout import RolloutController
from keeneye.lifecycle.triggers import tick
from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.engine import AlertState, RulesEngine
from keeneye.monitoring.alerts.source import MetricSource, MetricsUnavailable
from keeneye.monitoring.quality import evaluate_quality
from keeneye.pipelines import PipelineCatalog
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_object_store, open_results_db, utcnow
from keeneye.store.leader import LeaderLock
from keeneye.store.retention import RetentionPolicy, run_retention_all
from keeneye.workers import WorkerBase

log = logging.getLogger(__name__)

QualityJob = Callable[[], Any]
RetrainJob = Callable[[Any], Any]


def status_path(settings: Settings) -> Path:
    """Where the scheduler writes its heartbeat (outside the workers' folder: it is no worker)."""
    return settings.home / "run" / "scheduler.json"


class Scheduler(WorkerBase):
    """Runs the rules engine and the online-quality job every ``alerting.interval_seconds``."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: MetricSource | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            "scheduler",
            status_path=status_path(settings),
            status_interval=settings.stream.status_interval_seconds,
        )
        self.settings = settings
        self.interval = settings.alerting.interval_seconds
        self.metrics = metrics or Metrics()
        self._source = source
        self._clock = clock
        self._next_round = 0.0  # monotonic; 0 = run at once
        self.engine: RulesEngine | None = None
        self.quality: QualityJob | None = None
        self.retrain: RetrainJob | None = None
        self.rollouts: QualityJob | None = None
        self.retention: QualityJob | None = None
        self._next_retention = 0.0  # on self._clock; 0 = the first round runs it
        self.rounds = 0
        self.last_states: list[AlertState] = []
        self.last_error: str | None = None
        self._metrics_down = False
        self.leader: LeaderLock | None = None  # set in setup(): one scheduler per database runs rounds
        self.standby = False

    # -- lifecycle --------------------------------------------------------------------------------

    def setup(self) -> None:
        s = self.settings
        self.leader = LeaderLock(s.database_url, "scheduler")
        db = open_results_db(s)
        catalog = PipelineCatalog(s)
        self.engine = RulesEngine.from_settings(
            s, db=db, catalog=catalog, metrics=self.metrics, source=self._source, clock=self._clock
        )
        self.quality = self._quality_job(db, catalog)
        self.retrain = self._retrain_job(db, catalog)
        self.rollouts = self._rollout_job(db, catalog)
        if s.retention.enabled:
            self.retention = self._retention_job(db, catalog)
        log.info(
            "scheduler started",
            extra={"rules": len(self.engine.rules), "interval_seconds": self.interval},
        )

    def _quality_job(self, db: ResultsDB, catalog: PipelineCatalog) -> QualityJob:
        registry = ModelRegistry(self.settings, events=db)
        settings, metrics = self.settings, self.metrics

        def job() -> Any:
            return evaluate_quality(settings, db, registry, catalog, metrics)

        return job

    def _retrain_job(self, db: ResultsDB, catalog: PipelineCatalog) -> RetrainJob:
        """Retraining triggers (schedule, new labels, drift, quality drop): each new run is started as
        its own ``keeneye retrain --run-id`` process, so training never delays the alert rules."""
        registry = ModelRegistry(self.settings, events=db)
        settings, metrics = self.settings, self.metrics

        def job(quality: Any) -> Any:
            return tick(settings, db, registry, catalog, metrics, utcnow(), quality=quality)

        return job

    def _rollout_job(self, db: ResultsDB, catalog: PipelineCatalog) -> QualityJob:
        """The rollout controller: shadow → canary → promotion or rollback, when the measurements say so."""
        controller = RolloutController(
            self.settings, db, ModelRegistry(self.settings, events=db), catalog, self.metrics
        )
        return controller.tick

    def _retention_job(self, db: ResultsDB, catalog: PipelineCatalog) -> QualityJob:
        """Each pipeline's ``retention:`` as of the scheduler's clock, in batches of retention.batch_size,
        for at most retention.max_run_seconds (the alert rules wait while it runs)."""
        objects = open_object_store(self.settings)
        settings, metrics, clock = self.settings, self.metrics, self._clock

        def job() -> Any:
            policies = {spec.name: RetentionPolicy.from_spec(spec.retention) for spec in catalog.specs()}
            now = datetime.fromtimestamp(clock(), UTC)
            r = settings.retention
            deadline = time.monotonic() + r.max_run_seconds
            return run_retention_all(
                db, objects, policies, now=now, batch_size=r.batch_size, metrics=metrics, deadline=deadline
            )

        return job

    def step(self) -> None:
        wait = self._next_round - time.monotonic()
        if wait > 0:
            self.stop_event.wait(min(wait, 0.5))  # short waits: a stop request is honoured at once
            return
        self._next_round = time.monotonic() + self.interval
        if self.leader is not None and not self.leader.try_acquire():
            # another replica leads (docs/deploy.md): stand by, ask again within 5 s
            if not self.standby:
                log.info("another scheduler holds the leader lock; standing by")
            self.standby = True
            self._next_round = time.monotonic() + min(self.interval, 5.0)
            return
        if self.standby:
            log.info("took the leader lock; running the rounds")
        self.standby = False
        with self.busy():
            self.run_round()

    def teardown(self) -> None:
        if self.leader is not None:
            self.leader.close()  # the stand-by takes over at its next check
        super().teardown()

    # -- one round --------------------------------------------------------------------------------

    def run_round(self) -> list[AlertState]:
        """The alert rules, online quality, then the retraining triggers; a failure in one is logged and
        the others still run; then the rollout controller, and retention when it is due."""
        self.rounds += 1
        self.processed = self.rounds
        self.last_error = None
        if self.engine is not None:
            try:
                self.last_states = self.engine.evaluate()
                if self._metrics_down:
                    log.info("metrics readable again; alert rules evaluated")
                self._metrics_down = False
            except MetricsUnavailable as exc:
                self.last_error = exc.one_line()
                # Once per outage, not every round: the API may simply be starting.
                (log.debug if self._metrics_down else log.warning)("alert rules skipped: %s", self.last_error)
                self._metrics_down = True
            except Exception as exc:
                self.last_error = f"alert rules: {exc}"
                log.exception("alert rules failed")
        windows: Any = {}  # none this round: the quality-drop trigger waits for the next
        if self.quality is not None:
            try:
                windows = self.quality()
            except Exception as exc:
                self.last_error = f"online quality: {exc}"
                log.exception("online quality evaluation failed")
        if self.retrain is not None:
            try:
                self.retrain(windows if isinstance(windows, dict) else {})
            except Exception as exc:
                self.last_error = f"retraining triggers: {exc}"
                log.exception("retraining triggers failed")
        if self.rollouts is not None:
            try:
                self.rollouts()
            except Exception as exc:
                self.last_error = f"rollouts: {exc}"
                log.exception("rollout evaluation failed")
        if self.retention is not None and self._clock() >= self._next_retention:
            self._next_retention = self._clock() + self.settings.retention.interval_seconds
            try:
                reports = self.retention()
                if any(not r.complete for r in reports or ()):
                    self._next_retention = self._clock()  # out of time: go on at the next round
            except Exception as exc:
                self.last_error = f"retention: {exc}"
                log.exception("retention failed")
        return self.last_states

    def status(self) -> JsonObject:
        firing = sum(1 for a in self.last_states if a.state == "firing")
        pending = sum(1 for a in self.last_states if a.state == "pending")
        return {
            **super().status(),
            "role": "scheduler",
            "rounds": self.rounds,
            "interval_seconds": self.interval,
            "alerts_firing": firing,
            "alerts_pending": pending,
            "leader": not self.standby,
            "last_error": self.last_error,
        }


__all__ = ["Scheduler", "status_path"]
