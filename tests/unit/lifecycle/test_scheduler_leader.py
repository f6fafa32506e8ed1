"""Two scheduler replicas on one database (docs/deploy.md): only the holder of the leader lock runs
rounds — so two replicas never both trigger a retrain — and the stand-by takes over once the
leader stops. (The lock itself is tested on SQLite and PostgreSQL in tests/unit/store/test_leader.py.)"""

from __future__ import annotations

from keeneye.lifecycle.scheduler import Scheduler
from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.source import RegistrySource
from keeneye.settings import Settings


def _replica(settings: Settings, ran: list[str], name: str) -> Scheduler:
    metrics = Metrics()
    scheduler = Scheduler(settings, source=RegistrySource(metrics.registry), metrics=metrics)
    scheduler.setup()
    scheduler.engine = scheduler.quality = scheduler.rollouts = scheduler.retention = None
    scheduler.retrain = lambda _windows: ran.append(name)  # the job two leaders would both start
    return scheduler


def test_only_the_leader_runs_rounds_and_the_standby_takes_over(settings: Settings) -> None:
    ran: list[str] = []
    a, b = _replica(settings, ran, "a"), _replica(settings, ran, "b")
    try:
        for _ in range(3):
            for replica in (a, b):
                replica._next_round = 0.0  # due now (the loop waits an interval between rounds)
                replica.step()
        assert ran == ["a", "a", "a"]
        assert (a.status()["leader"], b.status()["leader"]) == (True, False)
        a.teardown()  # the leader stops (SIGTERM, a rollout): it lets go of the lock
        b._next_round = 0.0
        b.step()
        assert ran[-1] == "b" and b.status()["leader"] is True
    finally:
        a.teardown()
        b.teardown()
