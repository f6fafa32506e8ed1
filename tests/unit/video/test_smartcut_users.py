"""smartcut requests belong to the API key's user (docs/smartcut.md → "Users and API keys"): a key acts
for the user it names, sees only that user's requests, and the per-user limits count that user; an
admin key acts for and reads anyone; without keys ``user_id`` is taken as given, as before.

Real keys (``ResultsDB.create_api_key``) through the real app; the plugin is one announced on the
embedded bus that never answers, so requests stay open and count against the limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from keeneye.domain import Role
from keeneye.serving.app import create_app
from keeneye.settings import Settings
from keeneye.store import open_results_db
from keeneye.stream.bus import open_bus
from keeneye.video.messages import STARTED_PLUGINS
from keeneye.video.protocol import encode

URL = "/v1/smartcut/requests"
NAMES = {"alice": Role.operator, "bob": Role.operator, "carol": Role.viewer, "root": Role.admin}


def _announce(settings: Settings) -> None:
    bus = open_bus(settings)
    try:
        bus.publish(STARTED_PLUGINS, encode({"plugin_name": "silent", "label": "Silent", "img_size": 64}))
        bus.flush()
    finally:
        bus.close()


def _settings(settings: Settings, *, require: bool) -> Settings:
    serving = settings.serving.model_copy(update={"require_api_key": require})
    smartcut = settings.smartcut.model_copy(
        update={"max_inflight_per_user": 2, "max_active_users": 3, "plugin_timeout_seconds": 600.0}
    )
    return settings.model_copy(update={"serving": serving, "smartcut": smartcut})


@pytest.fixture
def keyed(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    """The app with keys required; ``headers[name]`` signs a request with that name's key."""
    settings = _settings(settings, require=True)
    _announce(settings)
    db = open_results_db(settings)
    headers = {name: {"X-API-Key": db.create_api_key(name, role)[1]} for name, role in NAMES.items()}
    with TestClient(create_app(settings, poll_aliases=False), base_url="http://testserver") as client:
        yield client, headers


def _start(client: TestClient, headers: dict[str, str], **fields: str) -> Any:
    """A client-sampled request (``video_name``): open until its chunks come, nothing to sample."""
    return client.post(
        URL, data={"plugin": "silent", "sensitivity": "5", "video_name": "cam.mp4", **fields}, headers=headers
    )


def _uids(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [r["request_uid"] for r in answer.json()["requests"]]


def test_a_key_acts_for_its_own_user_and_may_not_name_another(
    keyed: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, h = keyed
    made = _start(client, h["alice"])  # no user_id: the key's name
    assert made.status_code == 201, made.text
    uid = made.json()["request_uid"]
    assert client.get(f"{URL}/{uid}", headers=h["alice"]).json()["user_id"] == "alice"
    same = _start(client, h["alice"], user_id="alice")  # naming oneself is fine
    assert same.status_code == 201
    other = _start(client, h["alice"], user_id="bob")
    assert other.status_code == 403
    refusal = other.json()
    assert refusal["reason"] == "other_user"
    assert "'alice'" in refusal["detail"] and "'bob'" in refusal["detail"]
    assert "admin key" in refusal["fix"]
    # the refused request was never stored: bob has none
    assert _uids(client.get(URL, headers=h["bob"])) == []
    # a viewer key may read but not start one
    assert _start(client, h["carol"]).status_code == 403
    # the studio page shows the key's name as the user, read-only; an admin's stays free to change
    page = client.get("/smartcut", headers=h["alice"]).text
    assert 'data-default-user="alice" data-user-bound="true"' in page and "readonly" in page
    assert "data-user-bound" not in client.get("/smartcut", headers=h["root"]).text


def test_lists_and_reads_show_a_key_only_its_users_requests_and_an_admin_everyone(
    keyed: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, h = keyed
    a = _start(client, h["alice"]).json()["request_uid"]
    b = _start(client, h["bob"]).json()["request_uid"]
    for_carol = _start(client, h["root"], user_id="carol")  # an admin acts for anyone
    assert for_carol.status_code == 201
    c = for_carol.json()["request_uid"]

    assert _uids(client.get(URL, headers=h["alice"])) == [a]
    assert client.get(URL, headers=h["alice"]).json()["user_id"] == "alice"
    assert _uids(client.get(URL, headers=h["carol"])) == [c]
    assert _uids(client.get(URL, params={"user_id": "bob"}, headers=h["bob"])) == [b]
    spying = client.get(URL, params={"user_id": "alice"}, headers=h["bob"])
    assert spying.status_code == 403 and spying.json()["reason"] == "other_user"
    everyone = client.get(URL, headers=h["root"])
    assert set(_uids(everyone)) == {a, b, c} and everyone.json()["user_id"] is None
    assert _uids(client.get(URL, params={"user_id": "alice"}, headers=h["root"])) == [a]

    # by uid: another user's request answers 404 like an unknown one; the owner and an admin see it
    assert client.get(f"{URL}/{a}", headers=h["bob"]).status_code == 404
    assert client.get(f"{URL}/{a}", headers=h["alice"]).json()["request_uid"] == a
    assert client.get(f"{URL}/{a}", headers=h["root"]).json()["user_id"] == "alice"
    # the upload and the studio routes are scoped the same way
    assert client.post(f"{URL}/{a}/complete", headers=h["bob"]).status_code == 404
    chunk = {"chunk": ("c.zip", b"PK not a zip", "application/zip")}
    assert client.post(f"{URL}/{a}/chunks", files=chunk, headers=h["bob"]).status_code == 404
    assert client.get(f"{URL}/{a}/studio", headers=h["bob"]).status_code == 404
    assert client.get(f"{URL}/{a}/edits", params={"user_id": "alice"}, headers=h["bob"]).status_code == 403
    studio = client.get(f"{URL}/{a}/studio", params={"brief": "true"}, headers=h["alice"])
    assert studio.status_code == 200 and studio.json()["user_id"] == "alice"
    saved = client.put(f"{URL}/{a}/edits", json={"timestamps": []}, headers=h["alice"])
    assert saved.status_code == 200 and saved.json()["user_id"] == "alice"
    assert client.put(f"{URL}/{a}/edits", json={"timestamps": []}, headers=h["bob"]).status_code == 404


def test_the_per_user_limits_count_the_keys_user(
    keyed: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    client, h = keyed  # at most 2 in flight per user, 3 active users
    assert [_start(client, h["alice"]).status_code for _ in range(2)] == [201, 201]
    third = _start(client, h["alice"])
    assert third.status_code == 429 and third.json()["reason"] == "too_many_requests"
    assert third.headers["Retry-After"] == "30"
    # an admin acting for alice counts against alice too; bob still has room
    assert _start(client, h["root"], user_id="alice").status_code == 429
    assert _start(client, h["bob"]).status_code == 201
    assert _start(client, h["root"]).status_code == 201  # root's own requests: the third user
    fourth = _start(client, h["root"], user_id="dave")
    assert fourth.status_code == 429 and fourth.json()["reason"] == "too_many_users"


def test_without_keys_user_id_is_taken_as_given_and_a_sent_key_still_binds(settings: Settings) -> None:
    settings = _settings(settings, require=False)
    _announce(settings)
    _, key = open_results_db(settings).create_api_key("alice", Role.operator)
    with TestClient(create_app(settings, poll_aliases=False), base_url="http://testserver") as client:
        missing = _start(client, {})
        assert missing.status_code == 422 and "user_id" in missing.json()["detail"]
        bob = _start(client, {}, user_id="bob")
        assert bob.status_code == 201
        uid = bob.json()["request_uid"]
        assert client.get(f"{URL}/{uid}").json()["user_id"] == "bob"  # the person at the machine
        assert _uids(client.get(URL, params={"user_id": "bob"})) == [uid]
        assert _uids(client.get(URL)) == [uid]  # no user_id: every user's
        # a key sent to such a server is honoured: it is alice, and bob's request is not hers
        signed = {"X-API-Key": key}
        assert _start(client, signed, user_id="bob").status_code == 403
        assert client.get(f"{URL}/{uid}", headers=signed).status_code == 404
        assert _uids(client.get(URL, headers=signed)) == []
