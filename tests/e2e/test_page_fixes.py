"""Small page fixes in headless Chromium: the overview's p95 is visible with one time bucket and its
SLO is set apart ("no traffic · SLO 490 ms"); the runs table reflows inside its card on a 390 px phone.
Screenshots go to ``$KEENEYE_TEST_SHOTS`` (default: the tmp dir).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.e2e.test_browse import _runs
from tests.e2e.test_shell import DESKTOP, PHONE, _chromium, _shots
from tests.e2e.test_web import ARGS, CHROMIUM
from tests.serving_support import LiveServer, live_server, register_species_model
from tests.unit.serving.test_monitoring_api import seed_predictions

pytestmark = pytest.mark.e2e

P95 = (0xC2, 0x7C, 0x0E)  # the overview's p95 colour


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    version = register_species_model(settings, tmp_path)
    db = open_results_db(settings)
    # Every prediction in one 2-minute bucket: a line needs two points, so only a point shows p95.
    seed_predictions(db, datetime.now(UTC) - timedelta(seconds=20), [40.0, 42.0, 44.0], version=version)
    _runs(settings, db)
    with live_server(settings) as server:
        yield server


def test_overview_draws_a_lone_p95_bucket_and_separates_the_slo(served: LiveServer, tmp_path: Path) -> None:
    _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(served.url + "/")
            card = page.locator(".pipeline-card[data-pipeline='species-id']")
            page.wait_for_selector(".pipeline-card[data-pipeline='species-id'] .spark canvas")
            inked = page.evaluate(
                """([r, g, b]) => {
                  const c = document.querySelector("[data-spark='species-id'] canvas");
                  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0;
                  for (let i = 0; i < px.length; i += 4)
                    if (Math.abs(px[i] - r) + Math.abs(px[i + 1] - g) + Math.abs(px[i + 2] - b) < 40) n++;
                  return n;
                }""",
                list(P95),
            )
            assert inked >= 10, f"the lone p95 bucket left {inked} pixels of its colour"
            assert " ".join(card.locator(".p95").inner_text().split()) == "44.0 ms · SLO 500 ms"
            idle = page.locator(".pipeline-card[data-pipeline='crop-health'] .p95").inner_text()
            assert " ".join(idle.split()) == "no traffic · SLO 490 ms"
            card.screenshot(path=str(_shots(tmp_path) / "overview-one-bucket.png"))
        finally:
            browser.close()


def test_runs_reflow_inside_their_card_on_a_phone(served: LiveServer, tmp_path: Path) -> None:
    _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport=PHONE)
            page.goto(served.url + "/runs?pipeline=species-id")
            section = page.locator("section[data-pipeline='species-id']")
            page.locator("tr.run-details summary").last.click()
            card = section.bounding_box()
            assert card is not None
            for row in section.locator("tbody tr").all():
                box = row.bounding_box()
                assert box is not None and box["x"] + box["width"] <= card["x"] + card["width"] + 0.5
            scroll = section.evaluate("s => s.scrollWidth - s.clientWidth")
            assert scroll == 0, f"the runs card scrolls {scroll} px sideways"
            status = section.locator("tr[data-run] td[data-label='Status']").first
            assert status.inner_text() == "failed"
            label = status.evaluate("td => getComputedStyle(td, '::before').content")
            assert label == '"Status"'  # each value names what it is
            page.screenshot(path=str(_shots(tmp_path) / "runs-phone.png"), full_page=True)
        finally:
            browser.close()
