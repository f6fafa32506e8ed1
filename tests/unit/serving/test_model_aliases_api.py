"""``POST /v1/pipelines/{name}/models/{version}/promote`` and ``…/models/rollback``, on a real port.

The gate invariant holds through the API (a failed-gates version is refused unless forced with a
reason), a reason is always required, only an admin moves the champion, and every move is audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keeneye.domain import Role
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.serving_support import LiveServer, live_server, register_species_model
from tests.unit.lifecycle.rollout_support import PIPELINE, register_version

BASE = f"/v1/pipelines/{PIPELINE}/models"


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """v1 champion, v2 passed its gates, v3 did not."""
    register_species_model(settings, tmp_path, seed=0)
    assert register_version(settings, tmp_path, seed=1) == "2"
    assert register_version(settings, tmp_path, seed=2, gates_passed=False) == "3"
    with live_server(settings) as live:
        yield live


def _champion(server: LiveServer) -> str:
    versions = httpx.get(f"{server.url}/v1/models").json()[PIPELINE]
    (champion,) = [v["version"] for v in versions if "champion" in v["aliases"]]
    return str(champion)


def test_promote_and_roll_back_are_audited(server: LiveServer) -> None:
    moved = httpx.post(f"{server.url}{BASE}/2/promote", json={"reason": "better on night shots", "by": "ana"})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["version"], moved.json()["aliases"]) == ("2", ["champion"])
    assert _champion(server) == "2"
    back = httpx.post(f"{server.url}{BASE}/rollback", json={"reason": "misreads pike"})
    assert back.status_code == 200 and back.json()["version"] == "1"
    events = httpx.get(f"{server.url}{BASE}/events", params={"limit": 2}).json()["events"]
    assert [(e["event"], e["model_version"], e["from_version"], e["actor"], e["reason"]) for e in events] == [
        ("rolled_back", "1", "2", "local", "misreads pike"),
        ("promoted", "2", "1", "ana", "better on night shots"),
    ]


def test_a_failed_gates_version_is_refused_unless_forced_with_a_reason(server: LiveServer) -> None:
    refused = httpx.post(f"{server.url}{BASE}/3/promote", json={"reason": "try it"})
    assert refused.status_code == 409
    assert refused.json()["reason"] == "gates_failed"
    assert refused.json()["detail"] == "species-id v3 failed its quality gates and cannot become champion"
    assert _champion(server) == "1"
    forced = httpx.post(
        f"{server.url}{BASE}/3/promote", json={"reason": "the gate set is stale", "force": True}
    )
    assert forced.status_code == 200 and _champion(server) == "3"
    event = httpx.get(f"{server.url}{BASE}/events", params={"limit": 1}).json()["events"][0]
    assert (event["event"], event["details"]["forced"], event["reason"]) == (
        "promoted",
        True,
        "the gate set is stale",
    )


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/2/promote", {}, 422),  # no reason
        ("/2/promote", {"reason": ""}, 422),
        ("/9/promote", {"reason": "x"}, 404),  # no such version
        ("/rollback", {"reason": "x"}, 404),  # no previous champion yet
    ],
)
def test_bad_moves_are_refused_and_change_nothing(
    server: LiveServer, path: str, body: dict[str, str], status: int
) -> None:
    assert httpx.post(f"{server.url}{BASE}{path}", json=body).status_code == status
    assert _champion(server) == "1"
    assert (
        httpx.post(f"{server.url}/v1/pipelines/nope/models/2/promote", json={"reason": "x"}).status_code
        == 404
    )


def test_only_an_admin_moves_the_champion(settings: Settings, tmp_path: Path) -> None:
    register_species_model(settings, tmp_path, seed=0)
    register_version(settings, tmp_path, seed=1)
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"require_api_key": True})}
    )
    db = open_results_db(settings)
    keys = {role: db.create_api_key(f"{role.value}-key", role)[1] for role in (Role.operator, Role.admin)}
    with live_server(settings) as live:
        url = f"{live.url}{BASE}/2/promote"
        operator = httpx.post(url, json={"reason": "x"}, headers={"X-API-Key": keys[Role.operator]})
        assert operator.status_code == 403 and "admin role" in operator.json()["detail"]
        admin = httpx.post(url, json={"reason": "ok", "by": "ana"}, headers={"X-API-Key": keys[Role.admin]})
        assert admin.status_code == 200
        assert db.model_events(PIPELINE, 1)[0].actor == "ana (key admin-key)"
