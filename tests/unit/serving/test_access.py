"""Access roles over HTTP: every route declares what it needs; keys get 401 / 403 / 200 by role;
the login cookie works for pages and needs the CSRF header for changes; every change names its actor.

Keys are required here (``serving.require_api_key``), as on a server bound off loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.testclient import TestClient

from keeneye.domain import Role
from keeneye.monitoring.alerts.store import AlertStore
from keeneye.pipelines import PipelineCatalog
from keeneye.serving.app import create_app
from keeneye.serving.routes.deps import CSRF_COOKIE, CSRF_HEADER, KEY_COOKIE, AccessRule, PublicRoute
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_object_store, open_results_db
from tests.serving_support import jpeg, register_species_model
from tests.unit.lifecycle.rollout_support import register_version
from tests.unit.lifecycle.support import species_jpeg, species_result, store_answer

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

# Routes anyone may call: probes and the Prometheus scrape (they send no key), the login page, the
# static API docs. Everything else needs a role.
PUBLIC_PATHS = {
    "/health",
    "/ready",
    "/metrics",
    "/login",
    "/logout",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}


@dataclass
class World:
    client: TestClient
    db: ResultsDB
    keys: dict[Role, str]
    alerts: AlertStore
    observation_id: str


def _settings(home: Path, *, require: bool) -> Settings:
    settings = Settings(home=home)
    return settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"require_api_key": require})}
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("access")
    settings = _settings(tmp / "home", require=True)
    register_species_model(settings, tmp, seed=0)
    assert register_version(settings, tmp, seed=1) == "2"
    db, objects = open_results_db(settings), open_object_store(settings)
    spec = PipelineCatalog(settings).get("species-id")
    stored = store_answer(
        db, objects, spec.name, species_result([0.4, 0.3, 0.1, 0.1, 0.1]), species_jpeg(1), fmt="jpeg"
    )
    keys = {role: db.create_api_key(f"{role.value}-key", role)[1] for role in Role}
    with TestClient(create_app(settings, poll_aliases=False), base_url="http://testserver") as client:
        yield World(client, db, keys, AlertStore(db), stored.observation_id)


def _alert(world: World) -> int:
    record = world.alerts.create(
        rule="QualityDrop", fingerprint=f"fp-{datetime.now(UTC).timestamp()}", severity="critical",
        state="firing", labels={"pipeline": "species-id"}, annotations={}, value=1.0, now=datetime.now(UTC),
    )  # fmt: skip
    return record.id


def _as(world: World, role: Role) -> dict[str, str]:
    return {"x-api-key": world.keys[role]}


def _api_routes(app: FastAPI) -> list[RouteContext]:
    """Every API route as served, with the dependencies its routers add (FastAPI includes routers
    lazily: ``app.routes`` holds the included routers, not their routes)."""
    return [r for r in iter_route_contexts(app.routes) if isinstance(r.original_route, APIRoute)]


def _rules(route: RouteContext) -> list[AccessRule]:
    found: list[AccessRule] = []
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if isinstance(dependant.call, AccessRule):
            found.append(dependant.call)
        pending.extend(dependant.dependencies)
    return found


def test_every_route_declares_its_access() -> None:
    """A new route that forgets its role fails here: exactly one rule per route, public only where
    listed above."""
    app = create_app(Settings(home=Path("/nonexistent")), poll_aliases=False)  # no I/O until lifespan
    routes = _api_routes(app)
    assert len(routes) > 30
    undeclared, doubled, public = [], [], set()
    for route in routes:
        rules = _rules(route)
        if not rules:
            undeclared.append(f"{sorted(route.methods)} {route.path}")
        elif len(rules) > 1:
            doubled.append(f"{sorted(route.methods)} {route.path}: {rules}")
        elif isinstance(rules[0], PublicRoute):
            public.add(route.path)
    assert undeclared == [], "routes without require(Role.…) or PUBLIC_ROUTE"
    assert doubled == [], "routes with more than one access rule"
    assert public == PUBLIC_PATHS
    # Changes need more than reading: no mutating route is open to a viewer.
    for route in routes:
        [rule] = _rules(route)
        if route.methods - {"GET", "HEAD"} and route.path not in PUBLIC_PATHS:
            assert rule.role in (Role.operator, Role.admin), route.path


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "/v1/alerts", Role.viewer),
        ("GET", "/v1/pipelines", Role.viewer),
        ("GET", "/v1/pipelines/species-id/rollout", Role.viewer),
        ("GET", "/v1/system", Role.viewer),
        ("GET", "/v1/lines", Role.viewer),
        ("GET", "/v1/fields", Role.viewer),
        ("POST", "/v1/fields", Role.operator),
        ("POST", "/v1/alerts/{alert}/ack", Role.operator),
        ("POST", "/v1/pipelines/species-id/predict", Role.operator),
        ("POST", "/v1/pipelines/species-id/rollout", Role.operator),
        ("POST", "/v1/pipelines/species-id/models/2/promote", Role.admin),
        ("POST", "/v1/pipelines/species-id/models/rollback", Role.admin),
    ],
)
def test_each_role_gets_401_403_or_through(world: World, method: str, path: str, needed: Role) -> None:
    bodies = {
        "/rollout": {"action": "abort", "reason": "access test"},
        "/promote": {"reason": "access test"},
        "/rollback": {"reason": "access test"},
    }
    url = path.replace("{alert}", str(_alert(world)))
    body = next((b for suffix, b in bodies.items() if url.endswith(suffix)), None)
    content = jpeg() if url.endswith("/predict") else None

    def call(headers: dict[str, str]) -> int:
        if content is not None:
            headers = {**headers, "content-type": "image/jpeg"}
        r = world.client.request(method, url, headers=headers, json=body, content=content)
        return r.status_code

    assert world.client.request(method, url, json=body).status_code == 401
    anonymous = world.client.request(method, url, json=body)
    assert "an API key is required" in anonymous.json()["detail"]
    unknown = world.client.request(method, url, json=body, headers={"x-api-key": "ke_nope"})
    assert (unknown.status_code, unknown.json()["detail"]) == (401, "unknown or revoked API key")
    for role in Role:
        if role.allows(needed):
            assert call(_as(world, role)) not in (401, 403), role
        else:
            r = world.client.request(method, url, json=body, content=content, headers=_as(world, role))
            assert r.status_code == 403, (role, r.text)
            assert r.json()["detail"].startswith(f"this needs the {needed.value} role; the key ")
            assert f"has the {role.value} role" in r.json()["detail"]


def test_promoting_the_challenger_is_an_admin_move(world: World) -> None:
    url = "/v1/pipelines/species-id/rollout"
    r = world.client.post(url, json={"action": "promote"}, headers=_as(world, Role.operator))
    assert r.status_code == 403
    assert r.json()["detail"].startswith("promoting the challenger needs the admin role")
    r = world.client.post(url, json={"action": "promote"}, headers=_as(world, Role.admin))
    assert r.status_code == 409  # allowed, refused by the rollout itself: nothing in shadow


def test_public_routes_need_no_key(world: World) -> None:
    assert world.client.get("/health").status_code == 200
    assert world.client.get("/metrics").status_code == 200
    assert world.client.get("/login").status_code == 200
    assert world.client.get("/openapi.json").status_code == 200


def test_a_browser_without_a_key_is_sent_to_login_and_api_clients_get_401(world: World) -> None:
    page = world.client.get("/alerts?state=all", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Falerts%3Fstate%3Dall"
    api = world.client.get("/alerts", headers={"accept": "application/json"}, follow_redirects=False)
    assert api.status_code == 401 and api.headers["content-type"] == "application/json"


def test_login_sets_strict_cookies_and_the_nav_names_the_user(world: World) -> None:
    client = TestClient(world.client.app, base_url="http://testserver")
    wrong = client.post("/login", data={"key": "ke_nope", "next": "/alerts"})
    assert wrong.status_code == 401 and "That key is unknown or revoked." in wrong.text
    r = client.post(
        "/login", data={"key": world.keys[Role.viewer], "next": "/alerts"}, follow_redirects=False
    )
    assert (r.status_code, r.headers["location"]) == (303, "/alerts")
    cookies = {c.split("=", 1)[0]: c for c in r.headers.get_list("set-cookie")}
    assert set(cookies) == {KEY_COOKIE, CSRF_COOKIE}
    assert "HttpOnly" in cookies[KEY_COOKIE] and "samesite=strict" in cookies[KEY_COOKIE].lower()
    assert "HttpOnly" not in cookies[CSRF_COOKIE] and "samesite=strict" in cookies[CSRF_COOKIE].lower()
    assert "Secure" not in cookies[KEY_COOKIE]  # plain http here; https gets Secure
    page = client.get("/alerts", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert "viewer-key · <strong>viewer</strong>" in page.text
    assert client.get("/v1/alerts").status_code == 200  # the pages' fetch() calls use the cookie
    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and client.get("/v1/alerts").status_code == 401


def test_login_over_https_marks_the_cookies_secure(world: World) -> None:
    client = TestClient(world.client.app, base_url="https://testserver")
    r = client.post("/login", data={"key": world.keys[Role.viewer]}, follow_redirects=False)
    assert all("Secure" in c for c in r.headers.get_list("set-cookie"))
    assert r.headers["location"] == "/"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example"])
def test_login_never_sends_the_browser_elsewhere(world: World, target: str) -> None:
    client = TestClient(world.client.app, base_url="http://testserver")
    r = client.post("/login", data={"key": world.keys[Role.viewer], "next": target}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_a_cookie_signed_change_needs_the_csrf_header(world: World) -> None:
    client = TestClient(world.client.app, base_url="http://testserver")
    client.post("/login", data={"key": world.keys[Role.operator]}, follow_redirects=False)
    alert = _alert(world)
    refused = client.post(f"/v1/alerts/{alert}/ack")
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        f"a request signed in by cookie must send the {CSRF_HEADER} header (the value of the "
        f"{CSRF_COOKIE} cookie)"
    )
    wrong = client.post(f"/v1/alerts/{alert}/ack", headers={CSRF_HEADER: "guess"})
    assert wrong.status_code == 403
    assert world.alerts.get(alert).acked_by is None
    ok = client.post(f"/v1/alerts/{alert}/ack", headers={CSRF_HEADER: client.cookies[CSRF_COOKIE]})
    assert ok.status_code == 200 and ok.json()["acked_by"] == "operator-key"


def test_changes_record_the_key_that_made_them(world: World) -> None:
    operator = _as(world, Role.operator)
    alert = _alert(world)
    acked = world.client.post(f"/v1/alerts/{alert}/ack", json={"by": "ana"}, headers=operator)
    assert acked.json()["acked_by"] == "ana (key operator-key)"  # a name given never hides the key
    assert world.alerts.get(alert).acked_by == "ana (key operator-key)"
    silence = world.client.post(
        "/v1/alerts/silences",
        json={"rule": "QualityDrop", "duration": "1h", "reason": "maintenance"},
        headers=operator,
    )
    assert silence.status_code == 201 and silence.json()["created_by"] == "operator-key"

    feedback = f"/v1/observations/{world.observation_id}/feedback"
    review = world.client.post(feedback, json={"class": "esox_lucius", "source": "review"}, headers=operator)
    assert review.status_code == 201, review.text
    assert review.json()["author"] == "operator-key"
    assert [f.author for f in world.db.feedback_for(world.observation_id)] == ["operator-key"]

    moved = world.client.post(
        "/v1/pipelines/species-id/rollout",
        json={"action": "shadow", "version": "2", "reason": "try v2"},
        headers=operator,
    )
    assert moved.status_code == 200, moved.text
    aborted = world.client.post(
        "/v1/pipelines/species-id/rollout", json={"action": "abort", "reason": "done"}, headers=operator
    )
    assert aborted.status_code == 200, aborted.text
    events = world.db.model_events("species-id", 10)
    shadow_at = [e.event for e in events].index("rollout_shadow")
    assert {e.actor for e in events[: shadow_at + 1]} == {"operator-key"}  # moves and their alias changes
    assert [(e.event, e.actor) for e in events if e.event.startswith("rollout_")][:2] == [
        ("rollout_aborted", "operator-key"),
        ("rollout_shadow", "operator-key"),
    ]


def test_loopback_without_required_keys_is_the_local_admin(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home", require=False)
    register_species_model(settings, tmp_path)
    db = open_results_db(settings)
    _, viewer = db.create_api_key("wall", Role.viewer)
    alerts = AlertStore(db)
    with TestClient(create_app(settings, poll_aliases=False)) as client:
        record = alerts.create(
            rule="QualityDrop", fingerprint="fp-local", severity="critical", state="firing",
            labels={}, annotations={}, value=1.0, now=datetime.now(UTC),
        )  # fmt: skip
        page = client.get("/alerts", headers={"accept": "text/html"})
        assert page.status_code == 200 and "local · <strong>admin</strong>" in page.text
        assert client.get("/v1/alerts", headers={"x-api-key": "ke_stale"}).status_code == 200
        r = client.post("/v1/pipelines/species-id/models/rollback", json={"reason": "x"})
        assert r.status_code == 404  # allowed (admin); no previous champion to return to
        # A key, when sent, still says who acts and what it may do.
        weak = client.post(f"/v1/alerts/{record.id}/ack", headers={"x-api-key": viewer})
        assert weak.status_code == 403
        assert client.post(f"/v1/alerts/{record.id}/ack").json()["acked_by"] == "local"
