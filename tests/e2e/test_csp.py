"""Every web page under the strict Content-Security-Policy, in headless Chromium (Debian's).

Each page is loaded with a listener for ``securitypolicyviolation`` events (installed before any page
script runs) and the browser console collected: not one violation may be reported, not one script
may fail, and the page must still work — its key element rendered. The API docs run under their own
documented policy (routes/shell.py) and are held to it the same way. Screenshots of the overview and
the field map go to ``$KEENEYE_TEST_SHOTS`` (default: the test's tmp dir) to be looked at.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.e2e.test_monitoring_page import register_with_test_metrics
from tests.e2e.test_shell import DESKTOP, PAGES, _chromium, _shots
from tests.e2e.test_web import ARGS, CHROMIUM
from tests.serving_support import LiveServer, live_server
from tests.unit.serving.test_monitoring_api import seed_alerts, seed_drift, seed_predictions

pytestmark = pytest.mark.e2e

FIELD = {
    "id": "csp-a",
    "name": "North paddock",
    "crop": "wheat",
    "boundary": {
        "type": "Polygon",
        "coordinates": [[[5.0, 52.0], [5.004, 52.0], [5.004, 52.003], [5.0, 52.003], [5.0, 52.0]]],
    },
}
# Beyond the shell's pages: the login page, the field map (Leaflet, uPlot), the smartcut studio
# (vis-timeline, uPlot, fflate) and the API docs (Swagger UI, ReDoc).
MORE_PAGES = [
    ("/login", "#login"),
    (f"/fields/{FIELD['id']}", "#map .leaflet-overlay-pane svg path"),
    ("/smartcut?user=alice", "#start"),
    ("/docs", ".opblock-summary-path"),
    ("/redoc", ".api-content h1"),
]
# ReDoc's bundle links its "powered by" logo on a CDN: refused before it leaves the machine, as meant.
REDOC_LOGO = "img-src blocked https://cdn.redoc.ly/redoc/logo-mini.svg at /redoc:0 ()"
REPORT = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.keeneyeCspViolation(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} `
    + `at ${e.sourceFile || document.location.pathname}:${e.lineNumber} (${(e.sample || "").slice(0, 60)})`);
});
"""


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    """The shell test's seeded server (a champion with traffic, drift, alerts) and one field."""
    version = register_with_test_metrics(settings, tmp_path)
    db = open_results_db(settings)
    now = datetime.now(UTC)
    ids = seed_predictions(
        db, now - timedelta(seconds=600), [30 + i % 14 for i in range(120)], version=version,
        results=[{"predicted_class": "salmo_trutta"}] * 120,
    )  # fmt: skip
    db.add_feedback(ids[0], {"class": "esox_lucius"}, source="api")
    seed_drift(db, now - timedelta(minutes=3), alarm=True)
    seed_alerts(db)
    with live_server(settings) as server:
        created = httpx.post(f"{server.url}/v1/fields", json=FIELD)
        assert created.status_code == 201, created.text
        yield server


def test_every_page_runs_under_the_strict_policy(served: LiveServer, tmp_path: Path) -> None:
    _chromium()
    from playwright.sync_api import sync_playwright

    shots = _shots(tmp_path)
    violations: list[str] = []
    console: list[str] = []
    errors: list[str] = []
    pages = [(path, proof) for path, _nav, proof in PAGES] + MORE_PAGES
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.expose_function("keeneyeCspViolation", lambda text: violations.append(text))
            page.add_init_script(REPORT)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            policies: dict[str, str] = {}
            for path, proof in pages:
                before = len(violations)
                response = page.goto(served.url + path)
                assert response is not None
                policies[path] = response.headers["content-security-policy"]
                page.wait_for_selector(proof, state="visible", timeout=20_000)
                page.wait_for_load_state("networkidle")
                found = violations[before:]
                if path == "/redoc":  # the one refusal that is the policy at work: no CDN logo
                    found = [v for v in found if v != REDOC_LOGO]
                assert found == [], path
                if path == "/":
                    page.screenshot(path=str(shots / "csp-overview.png"), full_page=True)
                if path.startswith("/fields/"):
                    page.screenshot(path=str(shots / "csp-field.png"), full_page=True)
            _interact(page, served)
        finally:
            browser.close()
    assert [v for v in violations if v != REDOC_LOGO] == []
    refused = [c for c in console if "Content Security Policy" in c or "Refused to" in c]
    assert [c for c in refused if "cdn.redoc.ly/redoc/logo-mini.svg" not in c] == []
    assert errors == []
    for path, _proof in pages:
        policy = policies[path]
        assert "unsafe-eval" not in policy, path
        if path not in ("/docs", "/redoc"):
            assert "unsafe-inline" not in policy and "script-src 'self';" in policy, path


def _interact(page: Any, served: LiveServer) -> None:
    """What the pages do after loading still works: the runs page's pipeline picker (an inline
    handler before the strict policy), and a change sent by a page script (fetch + CSRF helper)."""
    page.goto(served.url + "/runs")
    page.select_option("#pipeline", "species-id")
    page.wait_for_url("**/runs?pipeline=species-id")
    assert page.locator("section[data-pipeline='species-id']").count() == 1
    page.goto(served.url + "/alerts")
    page.wait_for_selector("#alerts[data-loaded]", timeout=15_000)
    status = page.evaluate(
        "async () => (await keeneyeFetch('/v1/alerts/silences', {method: 'POST', "
        "headers: {'content-type': 'application/json'}, body: JSON.stringify({})})).status"
    )
    assert status == 422  # reached the route (validation), not refused by the policy or CSRF
