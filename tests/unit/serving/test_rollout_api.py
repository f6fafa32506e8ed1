"""``/v1/pipelines/{name}/rollout`` and the predict path during a rollout, on a real port.

Shadow: every answer comes from the champion, the challenger's predictions are stored beside them and
never returned. Canary: over 1,000 distinct images the challenger answers its share (by content hash),
and the same image keeps its variant.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from keeneye.domain import Variant
from keeneye.serving.routes import rollout as rollout_routes
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.serving_support import LiveServer, jpeg, register_species_model, with_species_limits
from tests.unit.lifecycle.rollout_support import PIPELINE, register_version

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

ROLLOUT = f"/v1/pipelines/{PIPELINE}/rollout"


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """v1 champion, v2 registered; fast alias polls and no rate limit (the tests send many images)."""
    settings = with_species_limits(settings, tmp_path, rate_per_second=1e6, burst=10**6)
    settings = settings.model_copy(
        update={"inference": settings.inference.model_copy(update={"alias_poll_seconds": 0.3})}
    )
    register_species_model(settings, tmp_path, seed=0)
    assert register_version(settings, tmp_path, seed=1) == "2"
    live = LiveServer(settings)
    if not any(getattr(r, "path", "") == ROLLOUT.replace(PIPELINE, "{name}") for r in live.app.routes):
        live.app.include_router(rollout_routes.router)  # until create_app includes it
    live.start()
    try:
        yield live
    finally:
        live.stop()


def _image(i: int) -> bytes:
    return jpeg(((37 * i) % 255, (91 * i) % 255, (53 * i) % 255), seed=i)


def _predict(client: httpx.Client, server: LiveServer, data: bytes) -> dict[str, Any]:
    r = client.post(
        f"{server.url}/v1/pipelines/{PIPELINE}/predict", content=data, headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _wait_for(server: LiveServer, check: Any, what: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        report: dict[str, Any] = httpx.get(server.url + ROLLOUT).json()
        if check(report):
            return report
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s: {report}")
        time.sleep(0.1)


def test_rollout_moves_are_checked_and_reported(server: LiveServer) -> None:
    report = httpx.get(server.url + ROLLOUT).json()
    assert (report["state"], report["registry"]["champion"], report["evaluation"]) == ("stable", "1", None)

    refused = httpx.post(server.url + ROLLOUT, json={"action": "promote"})
    assert refused.status_code == 409
    assert (
        refused.json()["reason"] == "wrong_state" and "start a rollout with --shadow" in refused.json()["fix"]
    )
    assert httpx.post(server.url + ROLLOUT, json={"action": "canary", "share": 10}).status_code == 422
    assert httpx.post(server.url + ROLLOUT, json={"action": "launch"}).status_code == 422
    assert httpx.post(server.url + "/v1/pipelines/nope/rollout", json={"action": "abort"}).status_code == 404

    moved = httpx.post(server.url + ROLLOUT, json={"action": "shadow", "version": "2", "reason": "try v2"})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["state"], moved.json()["challenger_version"]) == ("shadow", "2")
    report = _wait_for(server, lambda r: r["serving"]["challenger"] == "2", "loading the challenger")
    assert report["next"]["action"] == "wait" and report["evaluation"]["agreement"]["n"] == 0
    assert report["events"][0]["event"] == "rollout_shadow" and report["events"][0]["actor"] == "local"

    aborted = httpx.post(server.url + ROLLOUT, json={"action": "abort", "reason": "changed my mind"})
    assert aborted.json()["state"] == "stable"
    _wait_for(server, lambda r: r["serving"]["challenger"] is None, "unloading the challenger")


def test_shadow_predictions_are_stored_but_never_returned(server: LiveServer) -> None:
    assert httpx.post(server.url + ROLLOUT, json={"action": "shadow", "version": "2"}).status_code == 200
    _wait_for(server, lambda r: r["serving"]["challenger"] == "2", "loading the challenger")
    with httpx.Client() as client:
        answers = [_predict(client, server, _image(i)) for i in range(30)]
    assert {a["model_version"] for a in answers} == {"1"}
    report = _wait_for(server, lambda r: r["evaluation"]["agreement"]["n"] == 30, "30 shadow predictions")
    assert report["serving"]["shadow_skipped"] == 0
    variants = {v["variant"]: v for v in report["evaluation"]["variants"]}
    assert (variants["champion"]["predictions"], variants["shadow"]["predictions"]) == (30, 30)

    db = open_results_db(server.settings)
    for a in answers:
        stored = {(p.variant, p.model_version) for p in db.predictions_for(a["observation_id"])}
        assert stored == {(Variant.champion, "1"), (Variant.shadow, "2")}
        observation = httpx.get(f"{server.url}/v1/observations/{a['observation_id']}").json()
        assert (observation["model_version"], observation["result"]["predicted_class"]) == (
            "1", a["predicted_class"],
        )  # fmt: skip


@pytest.mark.slow
def test_canary_answers_its_share_of_1000_images_and_each_image_keeps_its_variant(server: LiveServer) -> None:
    httpx.post(server.url + ROLLOUT, json={"action": "shadow", "version": "2"}).raise_for_status()
    moved = httpx.post(server.url + ROLLOUT, json={"action": "canary", "share": 0.1, "reason": "agrees"})
    assert moved.json()["canary_share"] == 0.1
    _wait_for(server, lambda r: r["serving"]["challenger"] == "2", "loading the challenger")

    def send(i: int) -> dict[str, Any]:
        with httpx.Client() as client:
            return _predict(client, server, _image(i))

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(1000)))
    share = sum(a["model_version"] == "2" for a in answers) / len(answers)
    assert 0.07 <= share <= 0.13

    db = open_results_db(server.settings)
    for a in answers[:100]:
        (stored,) = db.predictions_for(a["observation_id"])
        expected = Variant.canary if a["model_version"] == "2" else Variant.champion
        assert (stored.variant, stored.model_version) == (expected, a["model_version"])
        shown = httpx.get(f"{server.url}/v1/observations/{a['observation_id']}").json()
        assert shown["model_version"] == a["model_version"]  # the answer the client got, either variant
    with httpx.Client() as client:  # the same image again: the same variant (and the cache answers)
        again = [_predict(client, server, _image(i)) for i in range(50)]
    assert [a["model_version"] for a in again] == [a["model_version"] for a in answers[:50]]
    report = httpx.get(server.url + ROLLOUT).json()
    variants = {v["variant"]: v for v in report["evaluation"]["variants"]}
    assert variants["canary"]["predictions"] == sum(a["model_version"] == "2" for a in [*answers, *again])
    assert variants["canary"]["latency_p95_ms"] > 0
