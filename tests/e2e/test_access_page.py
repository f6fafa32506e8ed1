"""Logging in with a key in headless Chromium, on a server that requires keys (as off loopback).

A viewer sees the alerts page and is refused, with the reason on the page, when acknowledging; an
operator then acknowledges, and the alert names the operator's key. Screenshots of the login page at
1280 and 390 px go to ``$KEENEYE_TEST_SHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from keeneye.domain import Role
from keeneye.monitoring.alerts.store import AlertStore
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.e2e.test_shell import DESKTOP, PHONE, _chromium, _shots
from tests.e2e.test_web import ARGS, CHROMIUM
from tests.serving_support import LiveServer, fast_registry_store, live_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[LiveServer, dict[Role, str], int]]:
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"require_api_key": True})}
    )
    fast_registry_store(settings)
    db = open_results_db(settings)
    db.ensure_schema()
    keys = {role: db.create_api_key(f"{role.value}-key", role)[1] for role in (Role.viewer, Role.operator)}
    alert = AlertStore(db).create(
        rule="QualityDrop", fingerprint="fp-access", severity="critical", state="firing",
        labels={"pipeline": "species-id"}, annotations={"summary": "quality dropped"}, value=0.3,
        now=datetime.now(UTC) - timedelta(minutes=5),
    )  # fmt: skip
    with live_server(settings, poll_aliases=False) as server:
        yield server, keys, alert.id


def test_a_viewer_is_refused_an_operator_action_and_an_operator_does_it(
    served: tuple[LiveServer, dict[Role, str], int], tmp_path: Path
) -> None:
    _chromium()
    from playwright.sync_api import expect, sync_playwright

    server, keys, alert_id = served
    store = AlertStore(open_results_db(server.settings))
    shots = _shots(tmp_path)
    errors: list[str] = []
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for name, size in (("desktop", DESKTOP), ("phone", PHONE)):
                page = browser.new_page(viewport=size)
                page.goto(server.url + "/alerts")  # no key: sent to log in, the page remembered
                assert urlsplit(page.url).path == "/login" and "next=%2Falerts" in page.url
                expect(page.locator("#login h1")).to_have_text("Log in")
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= size["width"], f"the login page is {width} px wide at {size['width']} px"
                page.screenshot(path=str(shots / f"login-{name}.png"), full_page=True)
                page.close()

            page = browser.new_page(viewport=DESKTOP)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda req: requested.append(req.url))
            page.goto(server.url + "/alerts")
            page.fill("#key", "ke_not-a-key")
            page.click("#login button[type=submit]")
            expect(page.locator("#login-error")).to_have_text("That key is unknown or revoked.")

            page.fill("#key", keys[Role.viewer])
            page.click("#login button[type=submit]")
            page.wait_for_selector("#alerts[data-loaded]", timeout=15_000)
            assert urlsplit(page.url).path == "/alerts"
            expect(page.locator("#who")).to_contain_text("viewer-key · viewer")
            row = page.locator(f"#firing-table tr[data-alert='{alert_id}']")
            row.locator("button.ack").click()
            expect(page.locator("#status")).to_contain_text(
                "Could not acknowledge: this needs the operator role; "
                "the key 'viewer-key' has the viewer role"
            )
            assert store.get(alert_id).acked_by is None
            page.screenshot(path=str(shots / "alerts-viewer-refused-desktop.png"), full_page=True)

            page.locator("#who button", has_text="Log out").click()
            page.wait_for_url("**/login")
            page.goto(server.url + "/login?next=%2Falerts")
            page.fill("#key", keys[Role.operator])
            page.click("#login button[type=submit]")
            page.wait_for_selector("#alerts[data-loaded]", timeout=15_000)
            expect(page.locator("#who")).to_contain_text("operator-key · operator")
            page.locator(f"#firing-table tr[data-alert='{alert_id}'] button.ack").click()
            expect(page.locator("#status")).to_have_text("acknowledged QualityDrop")
            expect(page.locator(f"#firing-table tr[data-alert='{alert_id}']")).to_contain_text(
                "acked by operator-key"
            )
            assert store.get(alert_id).acked_by == "operator-key"
            assert not errors, errors
            assert all(urlsplit(u).hostname == "127.0.0.1" for u in requested), requested
        finally:
            browser.close()
