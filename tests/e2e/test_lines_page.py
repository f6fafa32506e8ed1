"""The line dashboard in headless Chromium (Debian's, via Playwright) against a live server, on events
the edge recorder stored: tiles, SKU table, latency chart with the deadline, defects with outlines,
the live refresh, and the empty state."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from keeneye.settings import Settings
from keeneye.sinks import SinkState
from keeneye.store import open_results_db
from tests.e2e.test_web import ARGS, CHROMIUM
from tests.services import unavailable
from tests.serving_support import live_server
from tests.unit.serving.test_lines_api import CAM1, CAM9, Part, record

pytestmark = pytest.mark.e2e


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("KEENEYE_TEST_SHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_the_line_dashboard_shows_what_the_runners_stored_and_refreshes(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    settings = Settings(home=tmp_path / "home")
    db = open_results_db(settings)
    start = time.time() - 50
    down = SinkState("modbus", "modbus://plc", False, start + 2.61, 3, 27, 3, 0, 40, "connection refused")
    record(settings, db, "L1", "cam-1", CAM1, start=start, step=0.1, link=down)
    up = SinkState("modbus", "modbus://plc2", True, start + 12.0, 0, 5, 0, 0, 12, "")
    record(settings, db, "L2", "cam-9", CAM9, start=start + 10, step=0.5, link=up)
    shots = _shots(tmp_path)
    with live_server(settings) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requested: list[str] = []
            errors: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/lines")
            page.wait_for_selector("#lines[data-loaded]", timeout=15_000)
            assert (
                page.locator("header.shell nav a[aria-current='page']").get_attribute("data-nav") == "lines"
            )
            assert page.locator("#total-parts").inner_text() == "35"
            assert page.locator("#total-failsafe").inner_text() == "1"
            cam1 = page.locator("[data-camera='L1/cam-1']")
            assert cam1.locator("[data-tile='ok'] .v").inner_text() == "26"
            assert cam1.locator("[data-tile='defect'] .v").inner_text() == "3"
            assert "13.3%" in cam1.locator("[data-tile='defect'] .d").inner_text()
            assert cam1.locator("[data-tile='throughput'] .v").inner_text() == "10.0/s"
            assert cam1.locator("[data-tile='latency'] .v").inner_text() == "34.5 ms / 48.5 ms"
            assert cam1.locator("[data-tile='plc'] .v").inner_text() == "down"
            assert "connection refused" in cam1.locator("[data-tile='plc'] .d").inner_text()
            assert page.locator("[data-camera='L2/cam-9'] [data-tile='plc'] .v").inner_text() == "connected"
            assert cam1.locator("tr[data-sku='B-7'] td").all_inner_texts() == ["10", "9", "1", "0", "10.0%"]
            assert cam1.locator(".latency-chart canvas").count() == 1  # uPlot drew the chart
            assert "deadline 348 ms" in cam1.locator(".u-legend").inner_text()
            figures = page.locator("#defects figure")
            assert figures.count() == 4
            first = figures.nth(0)
            first.locator("img").evaluate("img => img.decode()")
            assert first.locator("img").evaluate("img => img.naturalWidth") == 64
            assert first.locator("svg.overlay polygon").count() == 1  # the outline over the image
            assert "scratch 91.0%" in first.locator("figcaption").inner_text()
            assert "fail-safe · deadline_missed" in figures.nth(1).locator("figcaption").inner_text()
            page.screenshot(path=str(shots / "lines-desktop.png"), full_page=True)

            # live: a third camera starts reporting; the page shows it within a few refreshes (2 s each)
            record(
                settings,
                db,
                "L1",
                "cam-2",
                [Part(1, "A-100", 15.0)] * 4,
                start=time.time() - 2,
                step=0.25,
                link=up,
            )
            page.wait_for_selector("[data-camera='L1/cam-2']", timeout=8_000)
            assert page.locator("#total-parts").inner_text() == "39"

            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.on("pageerror", lambda exc: errors.append(str(exc)))
            phone.goto(server.url + "/lines")
            phone.wait_for_selector("#lines[data-loaded]", timeout=15_000)
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"/lines is {width} px wide on a phone"
            phone.screenshot(path=str(shots / "lines-phone.png"), full_page=True)
            assert not errors, errors
            assert all(urlsplit(u).hostname == "127.0.0.1" for u in requested), requested
        finally:
            browser.close()


def test_the_empty_dashboard_says_how_to_start_a_runner(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    settings = Settings(home=tmp_path / "home")
    with live_server(settings) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(server.url + "/lines")
            page.wait_for_selector("#lines[data-loaded]", timeout=15_000)
            empty = page.locator("#empty")
            assert empty.is_visible()
            assert "keeneye inspect --pipeline line-inspection" in empty.inner_text()
            assert "keeneye demo line-inspection" in empty.inner_text()
            assert page.locator("#defects-card").is_hidden()
            page.screenshot(path=str(_shots(tmp_path) / "lines-empty.png"), full_page=True)
        finally:
            browser.close()
