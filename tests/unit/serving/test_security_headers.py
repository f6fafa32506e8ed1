"""Web security over HTTP (serving/security.py, docs/security.md "Web security"): the headers and the
strict CSP on every kind of answer, cross-site changes refused, the CSRF check on every
cookie-authenticated change, body limits on every route, paths confined to their folders, and no
secret in any log line.

Keys are required here (``serving.require_api_key``), as on a server bound off loopback.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from starlette.routing import compile_path

from keeneye.domain import InvalidInput, Role
from keeneye.pipelines import PipelineCatalog
from keeneye.serving.app import create_app
from keeneye.serving.routes.deps import CSRF_COOKIE, CSRF_HEADER, KEY_COOKIE
from keeneye.serving.security import UPLOAD_ROUTES, UPLOAD_SLACK, confine, content_security_policy
from keeneye.settings import Settings, mask_secrets, mask_secrets_in_logs, mask_url
from keeneye.store import ResultsDB, open_results_db
from keeneye.video.studio import StudioRecord, save_record
from tests.serving_support import fast_registry_store, jpeg

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

KiB = 1024
BODY_CAP = 64 * KiB  # serving.max_body_bytes here
UPLOAD_CAP = 256 * KiB  # serving.max_upload_bytes here
SPECIES_UPLOAD_CAP = 512 * KiB  # the species-id spec's own input.max_upload_bytes here
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass
class World:
    settings: Settings
    client: TestClient
    db: ResultsDB
    keys: dict[Role, str]
    allowed: Path  # smartcut.allowed_roots[0]
    outside: Path  # a folder the server must not serve from


def _settings(tmp: Path) -> Settings:
    base = Settings(home=tmp / "home")
    spec = PipelineCatalog(base).get("species-id").model_dump(mode="json", exclude_none=True)
    spec["input"]["max_upload_bytes"] = SPECIES_UPLOAD_CAP
    folder = tmp / "pipelines"
    folder.mkdir()
    (folder / "species-id.yaml").write_text(yaml.safe_dump(spec))
    (tmp / "allowed").mkdir()
    (tmp / "outside").mkdir()
    serving = base.serving.model_copy(
        update={"require_api_key": True, "max_body_bytes": BODY_CAP, "max_upload_bytes": UPLOAD_CAP}
    )
    smartcut = base.smartcut.model_copy(update={"allowed_roots": [tmp / "allowed"]})
    pipelines = base.pipelines.model_copy(update={"dirs": [folder]})
    return base.model_copy(update={"serving": serving, "smartcut": smartcut, "pipelines": pipelines})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("security")
    settings = _settings(tmp)
    fast_registry_store(settings)
    db = open_results_db(settings)
    db.ensure_schema()
    keys = {role: db.create_api_key(f"{role.value}-key", role)[1] for role in Role}
    app = create_app(settings, poll_aliases=False)
    with TestClient(app, base_url="http://testserver", raise_server_exceptions=False) as client:
        yield World(settings, client, db, keys, tmp / "allowed", tmp / "outside")


@contextmanager
def _signed_in(world: World, key: str, csrf: str) -> Iterator[TestClient]:
    """The world's client with a browser's login cookies, dropped afterwards."""
    world.client.cookies.set(KEY_COOKIE, key)
    world.client.cookies.set(CSRF_COOKIE, csrf)
    try:
        yield world.client
    finally:
        world.client.cookies.clear()


# ---------------------------------------------------------------------------------------------------
# Headers and the Content-Security-Policy
# ---------------------------------------------------------------------------------------------------


def test_every_kind_of_answer_carries_the_headers_and_the_strict_policy(world: World) -> None:
    client, admin = world.client, {"x-api-key": world.keys[Role.admin]}
    answers = {
        "page": client.get("/alerts", headers=admin),
        "login page": client.get("/login"),
        "api": client.get("/v1/alerts", headers=admin),
        "probe": client.get("/health"),
        "static": client.get("/static/keeneye.css"),
        "api 404": client.get("/v1/no-such-thing"),
        "page 404": client.get("/no-such-page", headers={"accept": "text/html"}),
        "401": client.get("/v1/alerts"),
        "422": client.get("/v1/observations", params={"limit": "many"}, headers=admin),
    }
    strict = content_security_policy(world.settings)
    for what, answer in answers.items():
        assert answer.headers["content-security-policy"] == strict, what
        for name, value in HEADERS.items():
            assert answer.headers[name] == value, (what, name)
        assert "strict-transport-security" not in answer.headers, what  # plain http
    assert answers["page"].status_code == 200 and "text/html" in answers["page"].headers["content-type"]
    assert [answers[k].status_code for k in ("api 404", "page 404", "401")] == [404, 404, 401]
    directives = dict(d.split(" ", 1) for d in strict.split("; "))
    assert directives == {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data: blob:",
        "media-src": "'self' blob:",
        "font-src": "'self'",
        "connect-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }


def test_a_loopback_server_without_keys_refuses_other_sites_too(tmp_path: Path) -> None:
    """Without required keys every request is the local admin, so no cookie is needed to act: a page
    of another site in the same browser could post a form to 127.0.0.1. The browser's label stops it."""
    settings = Settings(home=tmp_path / "home")
    fast_registry_store(settings)
    with TestClient(create_app(settings, poll_aliases=False), base_url="http://127.0.0.1:8000") as local:
        form = {"pipeline": "species-id", "minutes": "60"}
        for site in ("cross-site", "same-site"):
            answer = local.post("/v1/alerts/silences", data=form, headers={"sec-fetch-site": site})
            assert answer.status_code == 403 and answer.json()["reason"] == "cross_site", site
        own = local.post("/v1/alerts/silences", json={}, headers={"sec-fetch-site": "same-origin"})
        assert own.status_code == 422  # reached the route


def test_hsts_only_over_https_and_only_when_configured(world: World, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    fast_registry_store(settings)
    with TestClient(create_app(settings, poll_aliases=False), base_url="https://testserver") as https:
        assert https.get("/health").headers["strict-transport-security"] == "max-age=31536000"
    settings.serving.hsts_max_age_seconds = 0
    with TestClient(create_app(settings, poll_aliases=False), base_url="https://testserver") as off:
        answer = off.get("/health")
        assert answer.headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in answer.headers


def test_a_basemap_server_is_the_one_other_image_origin(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    settings.serving.basemap_url = "https://tiles.example.org/osm/{z}/{x}/{y}.png"
    policy = content_security_policy(settings)
    assert "img-src 'self' data: blob: https://tiles.example.org;" in policy
    assert "connect-src 'self';" in policy  # tiles are images, nothing else may go there


def test_the_docs_pages_allow_their_own_inline_code_by_hash_only(world: World) -> None:
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
        answer = world.client.get(path)
        assert answer.status_code == 200, path
        directives = dict(d.split(" ", 1) for d in answer.headers["content-security-policy"].split("; "))
        assert "unsafe" not in directives["script-src"], path
        assert directives["default-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
        assert answer.headers["x-frame-options"] == "DENY"
    swagger = world.client.get("/docs")
    (inline,) = re.findall(r"<script>(.*?)</script>", swagger.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}'" in swagger.headers["content-security-policy"]
    # ReDoc's styled-components write <style> elements at run time (routes/shell.py says why)
    assert "style-src 'self' 'unsafe-inline'" in world.client.get("/redoc").headers["content-security-policy"]
    assert "style-src 'self'" in swagger.headers["content-security-policy"]
    assert "unsafe-inline" not in swagger.headers["content-security-policy"]


def test_no_template_has_inline_code() -> None:
    """Inline handlers, <script> with code, <style> blocks and style attributes would be blocked."""
    folder = Path(__file__).parents[3] / "src" / "keeneye" / "web" / "templates"
    offending = []
    for template in sorted(folder.glob("*.html")):
        text = template.read_text()
        for pattern in (r"\son[a-z]+\s*=", r"\sstyle\s*=", r"<style", r"<script>", r"javascript:"):
            offending += [f"{template.name}: {m.group(0)!r}" for m in re.finditer(pattern, text)]
        for script in re.findall(r"<script([^>]*)>(.*?)</script>", text, re.DOTALL):
            attrs, body = script
            if body.strip() and 'type="application/json"' not in attrs:
                offending.append(f"{template.name}: inline script {body[:40]!r}")
    assert offending == []


# ---------------------------------------------------------------------------------------------------
# Cross-site changes and CSRF
# ---------------------------------------------------------------------------------------------------


def _mutating_routes(world: World) -> list[tuple[str, str]]:
    found = []
    for route in iter_route_contexts(world.client.app.routes):  # type: ignore[attr-defined]
        if isinstance(route.original_route, APIRoute):
            found += [(m, route.path) for m in sorted(route.methods & MUTATING)]
    return found


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "species-id" if m.group(1) == "name" else "1", path)


def test_every_cookie_signed_change_needs_the_csrf_header(world: World) -> None:
    """Each state-changing route, signed in by the login cookie: 403 without the header (or with a
    wrong one), passed on to the route with it. Login and logout take no cookie (next test)."""
    routes = [(m, p) for m, p in _mutating_routes(world) if p not in ("/login", "/logout")]
    assert len(routes) >= 16  # predict, ingest, feedback, alerts, rollout, models, fields, smartcut, studio
    token = "csrf-token-of-this-browser"
    refused = f"a request signed in by cookie must send the {CSRF_HEADER} header"
    with _signed_in(world, world.keys[Role.admin], token) as browser:
        for method, path in routes:
            url = _concrete(path)
            for header in ({}, {CSRF_HEADER: "a guess"}):
                answer = browser.request(method, url, json={}, headers=header)
                assert answer.status_code == 403, (method, path, header, answer.text)
                assert answer.json()["detail"].startswith(refused), (method, path)
            passed = browser.request(method, url, json={}, headers={CSRF_HEADER: token})
            assert not (passed.status_code == 403 and refused in passed.text), (method, path)


def test_a_cross_site_change_is_refused_before_any_route(world: World) -> None:
    """What a browser labels cross-site or same-site (another port of this host) may not change
    anything, the login and logout forms included; an API client sends no such label."""
    operator = {"x-api-key": world.keys[Role.operator]}
    for method, path in [*_mutating_routes(world)]:
        for site in ("cross-site", "same-site"):
            answer = world.client.request(
                method, _concrete(path), json={}, headers={**operator, "sec-fetch-site": site}
            )
            assert answer.status_code == 403, (method, path, site)
            assert answer.json()["reason"] == "cross_site"
    login = {"key": world.keys[Role.viewer], "next": "/alerts"}
    browser = world.client
    try:
        refused = browser.post("/login", data=login, headers={"sec-fetch-site": "cross-site"})
        assert refused.status_code == 403 and refused.json()["reason"] == "cross_site"
        assert KEY_COOKIE not in browser.cookies  # nobody was logged in by another site
        done = browser.post(
            "/login", data=login, headers={"sec-fetch-site": "same-origin"}, follow_redirects=False
        )
        assert done.status_code == 303 and done.headers["location"] == "/alerts"
        cookies = {c.split("=", 1)[0]: c.lower() for c in done.headers.get_list("set-cookie")}
        assert "httponly" in cookies[KEY_COOKIE] and "samesite=strict" in cookies[KEY_COOKIE]
        assert "httponly" not in cookies[CSRF_COOKIE] and "samesite=strict" in cookies[CSRF_COOKIE]
        out = browser.post("/logout", headers={"sec-fetch-site": "cross-site"}, follow_redirects=False)
        assert out.status_code == 403
        assert browser.get("/alerts", headers={"sec-fetch-site": "cross-site"}).status_code == 200  # reads
        out = browser.post("/logout", headers={"sec-fetch-site": "same-origin"}, follow_redirects=False)
        assert out.status_code == 303
    finally:
        browser.cookies.clear()


# ---------------------------------------------------------------------------------------------------
# Body limits
# ---------------------------------------------------------------------------------------------------


def _chunks(total: int, size: int = 16 * KiB) -> Iterator[bytes]:
    while total > 0:
        yield b"x" * min(size, total)
        total -= size


def test_every_upload_route_of_the_table_exists(world: World) -> None:
    served = {(m, p) for m, p in _mutating_routes(world)}
    assert set(UPLOAD_ROUTES) <= served
    assert compile_path("/v1/pipelines/{name}/predict")[0].match("/v1/pipelines/species-id/predict")


def test_a_body_over_the_cap_is_refused_with_the_setting_to_raise(world: World) -> None:
    client = world.client
    operator = {"x-api-key": world.keys[Role.operator], "content-type": "application/json"}
    over = b"[" + b" " * BODY_CAP + b"]"
    for headers in (operator, {"content-type": "application/json"}):  # before the key is even read
        declared = client.post("/v1/alerts/silences", content=over, headers=headers)
        assert declared.status_code == 413
        assert declared.json() == {
            "reason": "too_large",
            "detail": f"the request body is {len(over)} bytes, over the limit of {BODY_CAP} bytes",
            "fix": "send less, or raise KEENEYE_SERVING__MAX_BODY_BYTES",
        }
    streamed = client.post("/v1/alerts/silences", content=_chunks(BODY_CAP + 1), headers=operator)
    assert streamed.status_code == 413 and streamed.json()["reason"] == "too_large"
    assert streamed.json()["detail"] == "the request body is over the limit of 65536 bytes"
    # a route that takes no body at all is bounded too
    probe = client.request("GET", "/health", content=b"x" * (BODY_CAP + 1))
    assert probe.status_code == 413
    # and one just under the cap reaches the route
    under = client.post("/v1/alerts/silences", content=b"{}", headers=operator)
    assert under.status_code == 422


def test_upload_routes_have_their_own_larger_caps(world: World) -> None:
    client = world.client
    operator = {"x-api-key": world.keys[Role.operator], "content-type": "image/jpeg"}
    big_image = jpeg(size=256)
    big_image += b"\0" * (BODY_CAP + 1 - len(big_image))  # over the JSON cap, under the upload caps
    for path in ("/v1/pipelines/species-id/predict", "/v1/pipelines/species-id/observations"):
        answer = client.post(path, content=big_image, headers=operator)
        assert answer.status_code != 413, (path, answer.text)  # no model here: 503 model_not_ready
    # species-id's spec allows 512 KiB, line-inspection the server's 256 KiB: the outer cap follows
    # (plus the form framing); a body between the two passes the one and not the other
    between = b"x" * (300 * KiB)
    assert (
        client.post("/v1/pipelines/species-id/observations", content=between, headers=operator).status_code
        != 413
    )
    line = client.post("/v1/pipelines/line-inspection/predict", content=between, headers=operator)
    assert line.status_code == 413 and line.json()["reason"] == "too_large"  # the route's own check
    for name, cap in (("species-id", SPECIES_UPLOAD_CAP), ("line-inspection", UPLOAD_CAP)):
        over = b"x" * (cap + UPLOAD_SLACK + 1)
        answer = client.post(f"/v1/pipelines/{name}/predict", content=over, headers=operator)
        assert answer.status_code == 413
        assert answer.json() == {
            "reason": "too_large",
            "detail": f"the request body is {len(over)} bytes, over the limit of {cap} bytes",
            "fix": "send less, or raise KEENEYE_SERVING__MAX_UPLOAD_BYTES",
        }
    # a video may be as large as smartcut.max_video_bytes: refused from its Content-Length alone
    video_cap = world.settings.smartcut.max_video_bytes + UPLOAD_SLACK
    answer = client.post(
        "/v1/smartcut/requests",
        content=b"--x--",
        headers={
            **operator,
            "content-type": "multipart/form-data; boundary=x",
            "content-length": str(video_cap + 1),
        },
    )
    assert answer.status_code == 413
    assert answer.json()["reason"] == "video_too_large"  # the route's own reason
    assert answer.json()["fix"] == "send less, or raise KEENEYE_SMARTCUT__MAX_VIDEO_BYTES"
    # a chunk holds 50 frames of 8 MiB at most
    chunk_cap = 50 * 8 * 1024 * KiB + UPLOAD_SLACK
    chunk = client.post(
        "/v1/smartcut/requests/1/chunks",
        content=b"--x--",
        headers={
            **operator,
            "content-type": "multipart/form-data; boundary=x",
            "content-length": str(chunk_cap + 1),
        },
    )
    assert chunk.status_code == 413 and chunk.json()["reason"] == "bad_chunk"
    assert (
        chunk.json()["detail"]
        == f"the request body is {chunk_cap + 1} bytes, over the limit of {50 * 8 * 1024 * KiB} bytes"
    )


# ---------------------------------------------------------------------------------------------------
# Paths confined to their folders
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "inside"),
    [
        ("clip.mp4", True),
        ("sub/../clip.mp4", True),
        ("../outside/secret.mp4", False),
        ("%2e%2e/outside/secret.mp4", True),  # a literal name inside: no such file, never a climb
        ("link-out.mp4", False),  # a symlink to a file outside
        ("link-in.mp4", True),  # a symlink to a file inside
        ("/etc/passwd", False),
        ("clip.mp4\x00.txt", False),
    ],
)
def test_confine_follows_dots_and_symlinks(tmp_path: Path, name: str, inside: bool) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "clip.mp4").write_bytes(b"in")
    (outside / "secret.mp4").write_bytes(b"out")
    (root / "link-out.mp4").symlink_to(outside / "secret.mp4")
    (root / "link-in.mp4").symlink_to(root / "clip.mp4")
    raw = name if name.startswith("/") else f"{root}/{name}"
    if inside:
        found = confine(raw, [root], setting="KEENEYE_X")
        assert found.is_relative_to(root.resolve())
        if name.startswith("%2e"):
            assert not found.exists()
        else:
            assert found.read_bytes() == b"in"
    else:
        with pytest.raises(InvalidInput) as refused:
            confine(raw, [root], setting="KEENEYE_X")
        assert (refused.value.reason, refused.value.status) == ("path_not_allowed", 403)
        assert refused.value.fix == "ask the admin to add its folder to KEENEYE_X"


def test_the_studio_serves_a_video_only_from_an_allowed_folder(world: World) -> None:
    """The studio record lives in the smartcut root shared with the plugins: a path in it that is
    (or became) outside the allowed folders, directly or through a symlink, is refused when served."""
    assert world.settings.smartcut.root is not None
    (world.allowed / "cam.mp4").write_bytes(b"video bytes")
    (world.outside / "private.mp4").write_bytes(b"not for you")
    (world.allowed / "escape.mp4").symlink_to(world.outside / "private.mp4")
    viewer = {"x-api-key": world.keys[Role.viewer]}
    cases = {
        str(world.allowed / "cam.mp4"): 200,
        str(world.outside / "private.mp4"): 403,
        str(world.allowed / ".." / "outside" / "private.mp4"): 403,
        str(world.allowed / "escape.mp4"): 403,
    }
    for path, status in cases.items():
        uid = str(uuid.uuid4())
        user = "viewer-key"  # the key's name: a key reads its own user's requests
        world.db.create_smartcut_request(uid, user_id=user, plugin="motion", video_name="v", sensitivity=1.0)
        save_record(world.settings.smartcut.root, uid, StudioRecord("server", path))
        answer = world.client.get(
            f"/v1/smartcut/requests/{uid}/video", params={"user_id": user}, headers=viewer
        )
        assert answer.status_code == status, (path, answer.text)
        if status == 200:
            assert answer.content == b"video bytes"
        else:
            assert answer.json()["reason"] == "path_not_allowed" and b"not for you" not in answer.content


@pytest.mark.parametrize(
    "path",
    [
        "/static/../serving/app.py",
        "/static/%2e%2e/serving/app.py",
        "/static/%2E%2E/%2e%2e/settings.py",
        "/static/..%2fserving%2fapp.py",
        "/static/vendor/%2e%2e/%2e%2e/__init__.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
    ],
)
def test_static_files_never_leave_their_folder(world: World, path: str) -> None:
    answer = world.client.get(path)
    assert answer.status_code == 404, path
    assert b"def create_app" not in answer.content and b"root:" not in answer.content


# ---------------------------------------------------------------------------------------------------
# No secrets in logs
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+psycopg://ana:s3cr3t@db:5432/keeneye", "postgresql+psycopg://ana:***@db:5432/keeneye"),
        (
            "cannot reach redis://:hunter2@cache:6379/0 (refused)",
            "cannot reach redis://:***@cache:6379/0 (refused)",
        ),
        ("url='kafka://u:p%40ss@broker:9092' failed", "url='kafka://u:***@broker:9092' failed"),
        (
            "s3://bucket/prefix?access_key=AKIA&secret_key=abc",
            "s3://bucket/prefix?access_key=***&secret_key=***",
        ),
        ("key ke_" + "A" * 43 + " refused", "key ke_*** refused"),
        ("http://mlflow:5000/api", "http://mlflow:5000/api"),  # nothing to hide
        ("no url at all", "no url at all"),
    ],
)
def test_mask_secrets(text: str, shown: str) -> None:
    assert mask_secrets(text) == shown


def test_mask_url_is_the_one_doctor_shows() -> None:
    url = "postgresql+psycopg://ana:s3cr3t@db/keeneye"
    assert mask_secrets(url) == mask_url(url) == "postgresql+psycopg://ana:***@db/keeneye"


@pytest.mark.integration
def test_no_password_or_key_reaches_a_log_line(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server on PostgreSQL whose URL carries a password (trust auth: it is sent, never needed):
    from startup through requests, failures and shutdown, every log record at DEBUG is captured and
    none holds the password or an API key."""
    password = f"secret-{uuid.uuid4().hex[:8]}"
    url = postgres_url.replace("://postgres@", f"://postgres:{password}@")
    assert password in url
    settings = Settings(home=tmp_path / "home", database_url=url)
    settings.serving.require_api_key = True
    fast_registry_store(settings)
    caplog.set_level(logging.DEBUG)
    mask_secrets_in_logs()
    db = open_results_db(settings)
    db.ensure_schema()
    _, key = db.create_api_key("ana", Role.operator)
    bodies = []
    with TestClient(create_app(settings, poll_aliases=False), raise_server_exceptions=False) as client:
        bodies.append(client.get("/v1/system", headers={"x-api-key": key}).text)
        bodies.append(client.get("/ready").text)
        bodies.append(client.get("/v1/alerts", headers={"x-api-key": key + "x"}).text)  # a wrong key
        bodies.append(client.post("/v1/alerts/1/ack", json={}, headers={"x-api-key": key}).text)
        logging.getLogger("some.library").warning("connecting to %s with key %s", url, key)
        try:
            raise ConnectionError(f"could not connect to {url}")
        except ConnectionError:
            logging.getLogger("some.library").exception("failed")
    failing = Settings(home=tmp_path / "other", database_url=url.replace(":5432/", ":1/"))
    with pytest.raises(OperationalError) as refused, TestClient(create_app(failing, poll_aliases=False)):
        pass  # startup against a closed port: its errors are logged and raised
    assert "port 1 failed" in str(refused.value) and password not in str(refused.value)
    assert len(caplog.records) > 5
    logged = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert password not in logged
    assert key not in logged
    assert "postgres:***@" in logged and "ke_***" in logged  # the masking ran, not silence
    assert not [b for b in bodies if password in b or key in b]
