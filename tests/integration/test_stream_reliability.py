"""Invariant 1 end to end, on both buses: kill -9 a worker mid-run, or lose the publish after the
commit, and still every accepted observation ends ``done`` exactly once. Plus the SIGTERM drain.

Workers run as real processes (``python -m keeneye worker``) configured through the environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from keeneye.domain import ObservationStatus
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_results_db
from keeneye.stream import Ingestor
from tests.serving_support import jpeg, register_species_model
from tests.unit.stream.stream_support import bus_url, stream_settings

__all__ = ["bus_url"]

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STATUSES = [s.value for s in ObservationStatus]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEENEYE_")}
    env.update(
        {
            "KEENEYE_CONFIG": os.devnull,
            "KEENEYE_HOME": str(settings.home),
            "KEENEYE_BUS_URL": settings.bus_url,
            "KEENEYE_PIPELINES__DIRS": json.dumps([str(d) for d in settings.pipelines.dirs]),
            "KEENEYE_BUS__LEASE_SECONDS": "2",
            "KEENEYE_BUS__SESSION_TIMEOUT_MS": "6000",
            "KEENEYE_BUS__PARTITIONS": "2",
            "KEENEYE_INFERENCE__INTRA_OP_THREADS": "1",
            "KEENEYE_STREAM__STATUS_INTERVAL_SECONDS": "0.5",
            "PYTHONPATH": str(REPO / "src"),
            **extra,
        }
    )
    return env


class Workers:
    """Worker processes started by a test; whatever is left is killed at the end."""

    def __init__(self, settings: Settings, name: str, tmp: Path) -> None:
        self.settings, self.name, self.tmp = settings, name, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "keeneye", "worker", "--pipeline", self.name, "--batch", "16"],
            env=worker_env(self.settings, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[Settings, str], Workers]]:
    made: list[Workers] = []

    def make(settings: Settings, name: str) -> Workers:
        w = Workers(settings, name, tmp_path)
        made.append(w)
        return w

    yield make
    for w in made:
        w.kill_all()


def counts(db: ResultsDB, name: str) -> dict[str, int]:
    with db.session() as s:
        from sqlalchemy import func, select

        from keeneye.store.schema import ObservationRow

        rows = s.execute(
            select(ObservationRow.status, func.count())
            .where(ObservationRow.pipeline == name)
            .group_by(ObservationRow.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def wait_for(check: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached in {timeout:.0f}s\n{logs()}")
        time.sleep(0.2)


def accept_many(settings: Settings, name: str, n: int) -> list[str]:
    ingestor = Ingestor(settings)
    images = [jpeg(size=32, seed=i % 50) for i in range(50)]
    ids = [ingestor.accept(name, images[i % 50], {"i": i}).id for i in range(n)]
    ingestor.close()
    return ids


def test_kill_9_a_worker_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path, bus_url: str, workers: Callable[[Settings, str], Workers]
) -> None:
    n = 1000
    settings, name = stream_settings(tmp_path, bus_url)
    register_species_model(settings, tmp_path)
    ids = accept_many(settings, name, n)
    db = open_results_db(settings)
    pool = workers(settings, name)

    first = pool.start()
    wait_for(lambda: counts(db, name).get("done", 0) >= 100, 60, "first results", pool.logs)
    first.send_signal(signal.SIGKILL)  # mid-run: some messages polled, some claimed, none acked
    first.wait(10)
    killed_at = counts(db, name)
    assert killed_at.get("done", 0) < n, "the worker finished before it could be killed; raise n"

    pool.start()
    wait_for(lambda: counts(db, name).get("done", 0) == n, 80, "all done", pool.logs)
    assert counts(db, name) == {"done": n}
    assert db.count_predictions(name) == n  # exactly one prediction per observation: no duplicates
    assert {p.observation_id for i in ids[:50] for p in db.predictions_for(i)} == set(ids[:50])


def test_api_died_between_commit_and_publish_the_reconciler_delivers(
    tmp_path: Path, bus_url: str, workers: Callable[[Settings, str], Workers]
) -> None:
    n = 200
    settings, name = stream_settings(tmp_path, bus_url)
    register_species_model(settings, tmp_path)
    ingestor = Ingestor(settings)
    for i in range(n):  # object + queued row committed; the publish never happens
        ingestor.store(name, jpeg(size=32, seed=i), {"i": i})
    db = open_results_db(settings)
    assert counts(db, name) == {"queued": n}
    pool = workers(settings, name)
    pool.start(KEENEYE_STREAM__STALE_AFTER_SECONDS="2", KEENEYE_STREAM__RECONCILE_INTERVAL_SECONDS="1")
    wait_for(lambda: counts(db, name).get("done", 0) == n, 80, "all done", pool.logs)
    assert counts(db, name) == {"done": n}
    assert db.count_predictions(name) == n


def test_sigterm_drains_the_batch_and_exits_0(
    tmp_path: Path, workers: Callable[[Settings, str], Workers]
) -> None:
    settings, name = stream_settings(tmp_path)
    register_species_model(settings, tmp_path)
    accept_many(settings, name, 400)
    db = open_results_db(settings)
    pool = workers(settings, name)
    proc = pool.start()
    wait_for(lambda: counts(db, name).get("done", 0) >= 20, 60, "first results", pool.logs)
    status_files = list((settings.home / "run" / "workers").glob(f"{name}-{proc.pid}.json"))
    assert len(status_files) == 1
    status = json.loads(status_files[0].read_text())
    assert status["pid"] == proc.pid and status["pipeline"] == name
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, pool.logs()
    after = counts(db, name)
    assert "processing" not in after, after  # the batch in hand was finished, nothing left half-done
    assert after.get("done", 0) + after.get("queued", 0) == 400
    assert db.count_predictions(name) == after["done"]
    assert not status_files[0].exists()  # removed on a clean exit
