"""Steady load through the API, the ledger of what was acknowledged, and the exactly-once audit.

Every chaos test drives the same load while it takes a dependency away: one client thread posts
distinct images to ``POST /v1/pipelines/{name}/observations`` (asynchronous: 202 once durable) and
another to ``POST /v1/pipelines/{name}/predict`` (synchronous: 200 once stored). Each answer is
recorded with its timing, so a test can say what the API answered while the dependency was down,
that no request hung, and how soon it recovered. :func:`audit` then proves invariant 1: every
acknowledged observation is in the database, and every observation ends ``done`` with exactly one
prediction — none lost, none doubled.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from keeneye.domain import KeeneyeError
from keeneye.imaging import content_hash
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_results_db
from keeneye.store.schema import ObservationRow, PredictionRow
from keeneye.stream import ObservationMessage, open_bus
from keeneye.stream.messages import publish_observation
from tests.integration.test_stream_reliability import Workers
from tests.serving_support import jpeg, live_server, register_species_model

ASYNC, SYNC = "observations", "predict"
ACCEPTED = {ASYNC: 202, SYNC: 200}
REQUEST_BOUND_S = 10.0  # no answer may take longer, outage or not (the client's timeout is 30 s)
RECOVERY_BOUND_S = 10.0  # once the dependency is back, both routes accept again within this


def unlimited(settings: Settings, name: str) -> None:
    """No rate limit on the test's private pipeline: the load must meet the outage, not a 429."""
    spec_file = settings.pipelines.dirs[0] / f"{name}.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["limits"] = {"rate_per_second": 10_000, "burst": 10_000, "max_inflight": 1000}
    spec_file.write_text(yaml.safe_dump(spec))


@dataclass(frozen=True)
class Answer:
    route: str
    started: float  # time.monotonic()
    seconds: float
    status: int | str  # an HTTP status, or the transport error's type name
    observation_id: str | None = None
    retry_after: str | None = None
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED[self.route]


@dataclass
class Load:
    """Two client threads (asynchronous and synchronous route) posting distinct images until stopped."""

    base: str
    name: str
    pause: float = 0.05
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, route: str, seed0: int) -> None:
        url = f"{self.base}/v1/pipelines/{self.name}/{route}"
        seed = seed0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                seed += 1
                started = time.monotonic()
                try:
                    r = client.post(
                        url, content=jpeg(size=32, seed=seed), headers={"content-type": "image/jpeg"}
                    )
                except httpx.HTTPError as exc:
                    answer = Answer(route, started, time.monotonic() - started, type(exc).__name__)
                else:
                    body = (
                        r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    )
                    obs_id = body.get("id") if route == ASYNC else body.get("observation_id")
                    answer = Answer(
                        route,
                        started,
                        time.monotonic() - started,
                        r.status_code,
                        obs_id if r.status_code == ACCEPTED[route] else None,
                        r.headers.get("retry-after"),
                        body.get("reason") if isinstance(body, dict) else None,
                    )
                with self._lock:
                    self.answers.append(answer)
                time.sleep(self.pause)

    def accepted(self, route: str | None = None) -> set[str]:
        with self._lock:
            return {
                a.observation_id
                for a in self.answers
                if a.accepted and a.observation_id and (route is None or a.route == route)
            }

    def count_accepted(self, route: str) -> int:
        return len(self.accepted(route))

    def wait_accepted(self, n: int, timeout: float, logs: Callable[[], str]) -> None:
        """Until each route has ``n`` more acknowledgements than now (the load is really flowing)."""
        target = {r: self.count_accepted(r) + n for r in (ASYNC, SYNC)}
        deadline = time.monotonic() + timeout
        while any(self.count_accepted(r) < target[r] for r in target):
            if time.monotonic() > deadline:
                pytest.fail(f"load not accepted in {timeout:.0f}s: {self.summary()}\n{logs()}")
            time.sleep(0.05)

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.started < end]

    def summary(self) -> str:
        with self._lock:
            answers = list(self.answers)
        codes: dict[str, int] = {}
        for a in answers:
            key = f"{a.route}:{a.status}" + (f":{a.reason}" if a.reason else "")
            codes[key] = codes.get(key, 0) + 1
        slowest = max((a.seconds for a in answers), default=0.0)
        return f"answers={len(answers)} codes={dict(sorted(codes.items()))} slowest_s={slowest:.2f}"


@contextlib.contextmanager
def steady_load(base: str, name: str, *, pause: float = 0.05) -> Iterator[Load]:
    load = Load(base, name, pause)
    threads = [
        threading.Thread(target=load._run, args=(route, 100_000 * k), daemon=True, name=f"load-{route}")
        for k, route in enumerate((ASYNC, SYNC), 1)
    ]
    for t in threads:
        t.start()
    try:
        yield load
    finally:
        load.stop.set()
        for t in threads:
            t.join(40)


@dataclass(frozen=True)
class Outage:
    """When the dependency went away and when it was back (``time.monotonic()``)."""

    down: float
    up: float


def check_answers(load: Load, outage: Outage, *, reasons: set[str], must_refuse: bool) -> None:
    """What the API answered: accepted or 503 + Retry-After + a reason (never a 500, a transport
    error or a hang); at least one 503 during the outage when ``must_refuse``; and both routes
    accepting again within :data:`RECOVERY_BOUND_S` of the dependency coming back."""
    with load._lock:
        answers = list(load.answers)
    wrong = [a for a in answers if not a.accepted and a.status != 503]
    assert not wrong, f"answers other than accepted / 503: {wrong[:5]} ({load.summary()})"
    refused = [a for a in answers if a.status == 503]
    for a in refused:
        assert a.retry_after is not None and int(a.retry_after) > 0, a
        assert a.reason in reasons, a
    slowest = max(answers, key=lambda a: a.seconds)
    assert slowest.seconds < REQUEST_BOUND_S, f"a request hung: {slowest}"
    if must_refuse:
        during = [a for a in refused if outage.down <= a.started <= outage.up + 1]
        assert during, f"no 503 while the dependency was down: {load.summary()}"
    for route in (ASYNC, SYNC):
        back = [a.started for a in answers if a.route == route and a.accepted and a.started >= outage.up]
        assert back, f"{route} never accepted again after the outage: {load.summary()}"
        assert back[0] - outage.up < RECOVERY_BOUND_S, f"{route} recovered after {back[0] - outage.up:.1f}s"
        last = [a for a in answers if a.route == route][-3:]
        assert all(a.accepted for a in last), f"{route} still refusing at the end: {last}"


def outcome(db: ResultsDB, name: str) -> dict[str, tuple[str, int]]:
    """Every observation of ``name``: its status and how many predictions it has."""
    with db.session() as s:
        rows = s.execute(
            select(ObservationRow.id, ObservationRow.status, func.count(PredictionRow.id))
            .outerjoin(PredictionRow, PredictionRow.observation_id == ObservationRow.id)
            .where(ObservationRow.pipeline == name)
            .group_by(ObservationRow.id, ObservationRow.status)
        ).all()
    return {str(i): (str(status), int(n)) for i, status, n in rows}


def wait_settled(db: ResultsDB, name: str, expected: set[str], timeout: float) -> dict[str, tuple[str, int]]:
    """Until every ``expected`` id has its row and every row is finished (done, rejected or failed),
    or ``timeout``; the outcome then (the audit says what is missing)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, tuple[str, int]] = {}
    while time.monotonic() < deadline:
        try:
            seen = outcome(db, name)
        except Exception:  # the database itself may still be coming back
            time.sleep(0.25)
            continue
        finished = all(status in ("done", "rejected", "failed") for status, _ in seen.values())
        if finished and expected <= set(seen):
            break
        time.sleep(0.25)
    return seen


def audit(
    db: ResultsDB,
    name: str,
    acknowledged: Mapping[str, set[str]],
    timeout: float,
    logs: Callable[[], str],
    *,
    gone_upstream: Callable[[str, set[str]], set[str]] | None = None,
) -> dict[str, float]:
    """Invariant 1 after the storm: every acknowledged id (per way in: ``{"api": …, "bus": …}``) is
    there, every observation ``done`` with exactly one prediction. Returns the figures for the
    test's report line.

    ``gone_upstream(way, missing)``: of the ids still missing, those keeneye never had a chance to
    see (a broker lost them); they are counted (``gone_upstream``), not failed."""
    started = time.monotonic()
    seen = wait_settled(db, name, set().union(*acknowledged.values()), timeout)
    settle_s = time.monotonic() - started
    missing = {way: ids - set(seen) for way, ids in acknowledged.items() if ids - set(seen)}
    gone = 0
    if gone_upstream is not None:
        for way, ids in missing.items():
            upstream = gone_upstream(way, ids)
            gone += len(upstream)
            missing[way] = ids - upstream
    lost = {way: sorted(ids) for way, ids in missing.items() if ids}
    assert not lost, f"{logs()}\nacknowledged observations lost (after {settle_s:.0f}s): " + "; ".join(
        f"{way}: {len(ids)} of {len(acknowledged[way])}, e.g. {ids[:3]}" for way, ids in lost.items()
    )
    not_done = {k: v for k, v in seen.items() if v[0] != "done"}
    assert not not_done, f"{len(not_done)} observation(s) not done: {list(not_done.items())[:3]}\n{logs()}"
    doubled = {k: n for k, (_, n) in seen.items() if n != 1}
    assert not doubled, f"observations without exactly one prediction: {list(doubled.items())[:5]}"
    assert db.count_predictions(name) == len(seen)
    figures: dict[str, float] = {f"acknowledged_{way}": len(ids) for way, ids in acknowledged.items()}
    return {**figures, "rows": len(seen), "settle_s": round(settle_s, 1), "gone_upstream": gone}


def report(case: str, load: Load, outage: Outage, figures: dict[str, float]) -> None:
    """One line per case for the note (``pytest -s`` shows it)."""
    during = load.between(outage.down, outage.up)
    refused = sum(1 for a in during if a.status == 503)
    after = [a for a in load.between(outage.up, float("inf")) if a.accepted]
    back = {
        r: min((a.started + a.seconds - outage.up for a in after if a.route == r), default=-1.0)
        for r in ACCEPTED
    }
    print(
        f"\nchaos {case}: outage_s={outage.up - outage.down:.1f} answers_during={len(during)} "
        f"refused_503={refused} back_s={ {r: round(v, 2) for r, v in back.items()} } {load.summary()} "
        + " ".join(f"{k}={v}" for k, v in figures.items())
    )


def prepare(
    settings: Settings, name: str, tmp_path: Path, workers: Callable[[Settings, str], Workers], **env: str
) -> tuple[ResultsDB, Workers]:
    """Every chaos case's set-up: the pipeline unlimited, a species model registered, the results DB,
    and one running worker with ``env`` (where the case moved a backend)."""
    unlimited(settings, name)
    register_species_model(settings, tmp_path)
    db = open_results_db(settings)
    pool = workers(settings, name)
    start_workers(pool, **env)
    return db, pool


def object_keys(db: ResultsDB, name: str) -> set[str | None]:
    """The object key of every observation of pipeline ``name``."""
    with db.session() as s:
        return set(s.scalars(select(ObservationRow.object_key).where(ObservationRow.pipeline == name)))


def start_workers(pool: Workers, **env: str) -> None:
    """One worker that reconciles often (stale claims re-queued after 3 s) with ``env`` on top; returns
    once it is set up (its status file is written), so the outage meets a running worker — a worker
    that cannot reach its backends while it starts exits, for ``keeneye up`` to restart it."""
    proc = pool.start(
        KEENEYE_STREAM__STALE_AFTER_SECONDS="3", KEENEYE_STREAM__RECONCILE_INTERVAL_SECONDS="1", **env
    )
    status = pool.settings.home / "run" / "workers" / f"{pool.name}-{proc.pid}.json"
    deadline = time.monotonic() + 60
    while not status.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the worker did not start (exit {proc.poll()}):\n{pool.logs()}")
        time.sleep(0.1)


def storm(
    settings: Settings,
    name: str,
    *,
    take_away: Callable[[], None],
    give_back: Callable[[], None],
    outage_s: float,
    logs: Callable[[], str],
    after_s: float = 0.5,
) -> tuple[Load, Outage]:
    """Serve ``settings``, put the steady load on, take the dependency away for ``outage_s`` once
    the load flows, give it back, and go on until both routes have accepted again (then ``after_s``
    more)."""
    t0 = time.monotonic()
    with live_server(settings) as server, steady_load(server.url, name) as load:
        load.wait_accepted(5, 60, logs)
        down = time.monotonic()
        take_away()
        time.sleep(outage_s)
        give_back()
        up = time.monotonic()
        load.wait_accepted(5, 30, logs)
        time.sleep(after_s)
    took = (
        f"flowing after {down - t0:.1f}s, outage {up - down:.1f}s, recovered in {time.monotonic() - up:.1f}s"
    )
    print(f"\nstorm: {took}")
    return load, Outage(down, up)


@contextlib.contextmanager
def bus_producer(settings: Settings, name: str) -> Iterator[set[str]]:
    """Load straight through the bus, as an external producer: publishes an observation (inline
    image) to ``keeneye.<name>.in`` every 50 ms; yields the ids whose flush succeeded. One that was
    not acknowledged may still arrive (the producer's queue keeps it), which the audit allows."""
    acked: set[str] = set()
    stop = threading.Event()

    def run() -> None:
        bus = open_bus(settings)
        i = 0
        try:
            while not stop.is_set():
                i += 1
                data = jpeg(size=32, seed=500_000 + i)
                msg = ObservationMessage(
                    observation_id=uuid.uuid4().hex,
                    pipeline=name,
                    content_hash=content_hash(data),
                    content_type="image/jpeg",
                    metadata={"i": i},
                    data=data,
                    object_key=None,
                    source="bus",
                )
                try:
                    publish_observation(bus, msg)
                    bus.flush(3.0)
                except KeeneyeError:
                    time.sleep(0.2)  # not acknowledged; it may still arrive, which is allowed
                else:
                    acked.add(msg.observation_id)
                time.sleep(0.05)
        finally:
            with contextlib.suppress(Exception):
                bus.close()

    thread = threading.Thread(target=run, daemon=True, name="bus-producer")
    thread.start()
    try:
        yield acked
    finally:
        stop.set()
        thread.join(30)


def tail(path: Path, n: int = 2000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""
