"""The flood guard (serving/limits.py) and the API's utilisation (serving/load.py).

Pure parts with a stepped clock: the concurrency caps, the in-flight bound's utilisation window, the
combination over API processes. Then the app (its lifespan, a real SQLite home, a registered model):
each refusal's status, ``reason``, ``Retry-After`` and fix, per client address and per API key, and
the ``kind="api"`` utilisation on /metrics. The flood over real HTTP is
tests/integration/test_flood_guard.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from keeneye.metrics import Metrics
from keeneye.serving.app import create_app
from keeneye.serving.limits import ConcurrencyCap, InflightLimiter, Refused
from keeneye.serving.load import STALE_SECONDS, ApiLoad, PipelineLoad, combine, load_dir
from keeneye.serving.routes.deps import Client, admitted
from keeneye.serving.state import AppState
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.serving_support import jpeg, register_species_model


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# --------------------------------------------------------------------------------------------------
# Concurrency caps
# --------------------------------------------------------------------------------------------------


def test_a_cap_refuses_past_its_limit_per_key_and_forgets_idle_keys() -> None:
    cap = ConcurrencyCap(2)
    assert [cap.try_enter("a"), cap.try_enter("a"), cap.try_enter("a")] == [True, True, False]
    assert cap.try_enter("b")  # another key is not affected
    assert (cap.in_flight("a"), cap.in_flight("b"), len(cap)) == (2, 1, 2)
    cap.leave("a")
    assert cap.try_enter("a") and not cap.try_enter("a")
    for key in ("a", "a", "b"):
        cap.leave(key)
    assert len(cap) == 0  # nothing kept for a client with nothing in flight: memory is bounded
    cap.leave("c")  # a stray leave never goes negative nor adds a key
    assert (cap.in_flight("c"), len(cap)) == (0, 0)


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConcurrencyCap(0)


# --------------------------------------------------------------------------------------------------
# The in-flight bound's utilisation: slot-seconds over the window
# --------------------------------------------------------------------------------------------------

# (steps of (seconds to wait, requests entering (+) or leaving (-)), expected utilisation after)
WINDOW_CASES = [
    pytest.param([(0, +2), (30, 0)], 0.5, id="half the slots for the whole window"),
    pytest.param([(0, +4), (30, 0)], 1.0, id="every slot: saturated"),
    pytest.param([(0, +2), (15, +2), (15, 0)], 0.75, id="2 then 4 of 4"),
    pytest.param([(0, +4), (30, -4), (15, 0)], 0.5, id="4 leave: the last 15 s count 0"),
    pytest.param([(0, +4), (30, -4), (30, 0)], 0.0, id="idle for a whole window"),
    pytest.param([(0, +1), (100, 0)], 0.25, id="long quiet stretch, one in flight"),
    pytest.param([(0, +4), (10, 0)], 1.0, id="young limiter: since creation"),
    pytest.param([(5, +2), (5, 0)], 0.25, id="young limiter, half of its life at 2"),
]


@pytest.mark.parametrize(("steps", "expected"), WINDOW_CASES)
def test_utilization_is_slot_seconds_over_the_window(steps: list[tuple[float, int]], expected: float) -> None:
    clock = Clock()
    limiter = InflightLimiter(4, window_seconds=30, clock=clock)
    for wait, change in steps:
        clock.advance(wait)
        for _ in range(abs(change)):
            if change > 0:
                assert limiter.try_enter()
            else:
                limiter.leave()
    assert limiter.utilization() == pytest.approx(expected, abs=1e-9)


def test_utilization_follows_many_short_requests_and_keeps_a_bounded_history() -> None:
    """A request of 0.1 s every 0.2 s on a bound of 2: one slot half busy → 0.25, however long it runs."""
    clock = Clock()
    limiter = InflightLimiter(2, window_seconds=30, clock=clock)
    for _ in range(3000):  # 10 minutes
        assert limiter.try_enter()
        clock.advance(0.1)
        limiter.leave()
        clock.advance(0.1)
    assert limiter.utilization() == pytest.approx(0.25, abs=0.01)
    assert len(limiter._marks) <= 32  # about one mark a second of the window, not one per request


def test_a_full_bound_refuses_and_reads_saturated() -> None:
    clock = Clock()
    limiter = InflightLimiter(3, clock=clock)
    assert [limiter.try_enter() for _ in range(4)] == [True, True, True, False]
    clock.advance(60)
    assert limiter.utilization() == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------------
# Several API processes
# --------------------------------------------------------------------------------------------------


def test_combine_takes_the_mean_and_the_busiest_per_pipeline() -> None:
    assert combine([{"a": 0.2, "b": 0.9}, {"a": 0.6}]) == {
        "a": PipelineLoad(mean=pytest.approx(0.4), max=0.6, processes=2),  # type: ignore[arg-type]
        "b": PipelineLoad(mean=0.9, max=0.9, processes=1),
    }
    assert combine([]) == {}


def _gauge(metrics: Metrics, pipeline: str, stat: str) -> float:
    value = metrics.registry.get_sample_value(
        "keeneye_worker_utilization", {"pipeline": pipeline, "kind": "api", "stat": stat}
    )
    assert value is not None
    return value


def test_api_processes_share_their_load_and_forget_a_silent_one(tmp_path: Path) -> None:
    clock = Clock()
    folder = load_dir(tmp_path)
    busy, idle = InflightLimiter(4, clock=clock), InflightLimiter(4, clock=clock)
    one, two = Metrics(), Metrics()
    first = ApiLoad(folder, {"p": busy}, one, clock=clock, name="host-1")
    second = ApiLoad(folder, {"p": idle}, two, clock=clock, name="host-2")
    for _ in range(3):
        assert busy.try_enter()
    clock.advance(30)
    second.tick()  # not yet aware of the first: its own numbers only
    assert (_gauge(two, "p", "mean"), _gauge(two, "p", "max")) == (0.0, 0.0)
    assert first.tick() == {"p": PipelineLoad(mean=0.375, max=0.75, processes=2)}
    assert second.tick() == {"p": PipelineLoad(mean=0.375, max=0.75, processes=2)}
    assert (_gauge(two, "p", "mean"), _gauge(two, "p", "max")) == (0.375, 0.75)  # the same numbers
    assert json.loads((folder / "host-1.json").read_text())["pipelines"] == {"p": 0.75}

    clock.advance(STALE_SECONDS + 1)  # the first went silent (killed): no longer counted
    assert second.tick() == {"p": PipelineLoad(mean=0.0, max=0.0, processes=1)}
    clock.advance(10 * STALE_SECONDS)
    second.tick()
    assert not (folder / "host-1.json").exists()  # long gone: its file is removed

    second.close()
    assert not (folder / "host-2.json").exists()
    assert (_gauge(two, "p", "mean"), _gauge(two, "p", "max")) == (0.0, 0.0)


def test_an_unreadable_neighbour_file_is_skipped(tmp_path: Path) -> None:
    folder = load_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "garbage.json").write_text("{not json")
    (folder / "other.json").write_text(json.dumps({"updated_at": 1000.0, "pipelines": ["p"]}))
    clock = Clock()
    limiter = InflightLimiter(2, clock=clock)
    assert limiter.try_enter()
    clock.advance(30)
    assert ApiLoad(folder, {"p": limiter}, Metrics(), clock=clock).tick() == {
        "p": PipelineLoad(mean=0.5, max=0.5, processes=1)
    }


# --------------------------------------------------------------------------------------------------
# The app: refusals with their reasons
# --------------------------------------------------------------------------------------------------


@dataclass
class App:
    client: TestClient
    state: AppState


def _app(settings: Settings, tmp_path: Path, **serving: object) -> Iterator[App]:
    settings = settings.model_copy(update={"serving": settings.serving.model_copy(update=serving)})
    register_species_model(settings, tmp_path)
    with TestClient(create_app(settings, poll_aliases=False)) as client:
        state: AppState = client.app.state.keeneye  # type: ignore[attr-defined]
        yield App(client, state)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """One app for the tests without API keys; each gives back every slot it takes."""
    tmp = tmp_path_factory.mktemp("flood")
    yield from _app(Settings(home=tmp / "home"), tmp, max_inflight_per_client=3, max_inflight=8)


def _predict(client: TestClient, **headers: str) -> httpx.Response:
    return client.post(
        "/v1/pipelines/species-id/predict",
        files={"file": ("p.jpg", jpeg(), "image/jpeg")},
        headers=headers,
    )


def _refusals(app: App) -> float:
    value = app.state.metrics.registry.get_sample_value(
        "keeneye_requests_total", {"pipeline": "species-id", "status": "429"}
    )
    return value or 0.0


def test_a_client_with_all_its_slots_taken_gets_429_too_many_in_flight(app: App) -> None:
    refused_before = _refusals(app)
    for _ in range(3):  # three requests of this address are in flight
        assert app.state.per_client.try_enter("addr:testclient")
    r = _predict(app.client)
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] == "1"
    body = r.json()
    assert body["reason"] == "too_many_in_flight"
    assert body["detail"] == "client testclient already has 3 requests in flight, the most allowed"
    assert "KEENEYE_SERVING__MAX_INFLIGHT_PER_CLIENT" in body["fix"]
    assert app.state.inflight["species-id"].current == 0  # the refusal took no slot

    with admitted(app.state, "species-id", Client("10.1.2.3", None, "addr:10.1.2.3")):
        assert app.state.per_client.in_flight("addr:10.1.2.3") == 1  # another address is let in

    app.state.per_client.leave("addr:testclient")  # one answered: room for one more
    assert _predict(app.client).status_code == 200
    assert app.state.per_client.in_flight("addr:testclient") == 2  # its own slot was given back
    assert _refusals(app) == refused_before + 1
    for _ in range(2):
        app.state.per_client.leave("addr:testclient")


def test_a_full_server_answers_503_busy_and_the_rate_limit_429_rate_limited(app: App) -> None:
    inflight = app.state.inflight["species-id"]
    for _ in range(inflight.limit):
        assert inflight.try_enter()
    r = _predict(app.client)
    assert (r.status_code, r.headers["retry-after"], r.json()["reason"]) == (503, "1", "busy")
    assert app.state.per_client.in_flight("addr:testclient") == 0  # the caps gave their slots back
    for _ in range(inflight.limit):
        inflight.leave()

    rate = app.state.rate["species-id"]
    while rate.acquire("addr:10.7.7.7") == 0:  # empty that client's bucket
        pass
    r = _predict(TestClient(app.client.app, client=("10.7.7.7", 4000)))
    assert r.status_code == 429 and r.json()["reason"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1


def test_an_api_key_is_capped_from_every_address(settings: Settings, tmp_path: Path) -> None:
    db = open_results_db(settings)
    db.ensure_schema()
    (first_id, first), (_, second) = db.create_api_key("camera-a"), db.create_api_key("camera-b")
    for app in _app(settings, tmp_path, require_api_key=True, max_inflight_per_key=2):
        for _ in range(2):
            assert app.state.per_key.try_enter(f"key:{first_id}")
        elsewhere = TestClient(app.client.app, client=("10.9.9.9", 5000))
        r = _predict(elsewhere, **{"x-api-key": first})  # same key, another address: still capped
        assert r.status_code == 429, r.text
        assert r.json()["reason"] == "too_many_in_flight"
        assert r.json()["detail"] == f"API key #{first_id} already has 2 requests in flight, the most allowed"
        assert "KEENEYE_SERVING__MAX_INFLIGHT_PER_KEY" in r.json()["fix"]
        assert app.state.per_client.in_flight("addr:10.9.9.9") == 0  # the address slot was given back
        assert _predict(app.client, **{"x-api-key": second}).status_code == 200


def test_api_utilization_is_on_metrics_with_kind_api(app: App) -> None:
    inflight = app.state.inflight["species-id"]
    for _ in range(inflight.limit):
        assert inflight.try_enter()
    try:
        app.state.load.tick()  # what the app's background task does every 2 s
    finally:
        for _ in range(inflight.limit):
            inflight.leave()
    metrics = app.client.get("/metrics").text
    line = next(
        row
        for row in metrics.splitlines()
        if row.startswith("keeneye_worker_utilization{")
        and 'kind="api"' in row
        and 'pipeline="species-id"' in row
        and 'stat="max"' in row
    )
    assert 0.0 < float(line.rsplit(" ", 1)[1]) <= 1.0  # every slot taken since the app started


def test_refused_carries_its_header_value() -> None:
    refused = Refused(429, "rate_limited", "slow down", retry_after=0.2, fix="wait")
    assert (refused.status, refused.reason, refused.retry_after_header, refused.fix) == (
        429,
        "rate_limited",
        "1",
        "wait",
    )
