"""The monitoring page in headless Chromium (Debian's, driven by Playwright) against a live server."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from keeneye.models.bundle import ModelBundle
from keeneye.models.testing import tiny_classifier
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.e2e.test_web import ARGS, CHROMIUM, wait_until
from tests.services import unavailable
from tests.serving_support import SPECIES, LiveServer, fast_registry_store, live_server, species_manifest
from tests.unit.serving.test_monitoring_api import (
    seed_alerts,
    seed_drift,
    seed_observations,
    seed_predictions,
)

pytestmark = pytest.mark.e2e


TEST_METRICS = {"accuracy": 0.95, "macro_precision": 0.9, "macro_recall": 0.9, "macro_f1": 0.9}


def register_with_test_metrics(settings: Settings, tmp: Path) -> str:
    """The tiny species classifier, registered as champion with test-split metrics in its manifest."""
    fast_registry_store(settings)
    manifest = species_manifest(metrics=TEST_METRICS)
    bundle = ModelBundle.write(tmp / "bundle", tiny_classifier(len(SPECIES), seed=0), manifest)
    registry = ModelRegistry(settings, events=open_results_db(settings))
    return str(registry.register("species-id", bundle, alias="champion", gates_passed=True).version)


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    version = register_with_test_metrics(settings, tmp_path)
    # The page hides quality below the minimum label count; this test shows it from its 4 labels
    # (and keeps the drop signal, which then applies, out of the way: 3 of 4 right is no alarm here).
    settings.monitoring.quality_min_feedback = 4
    settings.monitoring.quality_drop = 0.99
    db = open_results_db(settings)
    now = datetime.now(UTC)
    # 100 predictions, 1 … 100 ms: p95 (nearest rank) = 95 ms. Four of them get feedback, one wrong.
    results = [{"predicted_class": "salmo_trutta"}] * 100
    ids = seed_predictions(db, now - timedelta(seconds=90), range(1, 101), version=version, results=results)
    for obs_id, truth in zip(ids[:4], ["salmo_trutta"] * 3 + ["esox_lucius"], strict=True):
        db.add_feedback(obs_id, {"class": truth}, source="api")
    seed_observations(db, now - timedelta(seconds=150), "rejected", 2)
    seed_observations(db, now - timedelta(seconds=150), "failed", 1)
    seed_drift(db, now - timedelta(hours=1), alarm=False)
    seed_drift(db, now - timedelta(minutes=3), alarm=True)
    seed_alerts(db)
    with live_server(settings) as server:
        yield server


def test_monitoring_page_draws_the_seeded_numbers(served: LiveServer, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            requested: list[str] = []
            errors: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(served.url + "/monitoring")  # redirects to the default pipeline
            assert page.url == f"{served.url}/pipelines/species-id/monitoring"
            page.wait_for_selector("#monitoring[data-loaded]", timeout=15_000)

            assert page.locator("#p95").inner_text() == "95.0 ms"
            assert page.locator("#card-p95").get_attribute("class") == "stat ok"  # 95 ms is within 500 ms
            assert page.locator("#model-version").inner_text() == "1"
            assert page.locator("#error-share").inner_text() == "2.91%"  # 3 of 103
            assert page.locator("#drift-status").inner_text() == "alarm"
            # Charts are real SVG: a throughput line, a latency line plus the SLO line, error bars, PSI bars.
            assert page.locator("#chart-throughput path.series").count() == 1
            assert page.locator("#chart-latency path.series").count() == 1
            assert page.locator("#chart-latency line.ref").count() == 1
            assert page.locator("#chart-errors rect.bar.rejected").count() >= 1
            assert page.locator("#chart-errors rect.bar.failed").count() >= 1
            assert page.locator("#chart-drift rect.bar").count() == 3
            assert page.locator("#chart-drift rect.bar.alarm").count() == 1
            assert page.locator("#drift-history span").count() == 2
            alarming = page.locator("#drift-table tr.alarm")
            assert alarming.count() == 1 and alarming.get_attribute("data-feature") == "brightness"
            alert = page.locator("#alerts-table tbody tr")
            assert alert.count() == 1 and alert.get_attribute("data-rule") == "LatencyHigh"
            assert "species-id: p95 above the SLO" in alert.inner_text()
            # Online quality of v1 on its 4 labelled observations, each metric next to its test value.
            assert page.locator("#quality-detail").inner_text().endswith("4 labelled · v1")
            assert page.locator("#chart-quality rect.bar.reference").count() == 4
            assert page.locator("#chart-quality rect.bar:not(.reference)").count() == 4
            page.screenshot(path=str(tmp_path / "monitoring.png"), full_page=True)

            # The window selector re-reads the API with the new window and keeps it in the URL.
            with page.expect_response(lambda r: "/monitoring?window=900" in r.url):
                page.select_option("#window", "900")
            wait_until(page, "document.getElementById('rate-detail').textContent.includes('15 minutes')")
            assert (
                page.locator("#rate-detail").inner_text() == "over the last 60 s · 100 in the last 15 minutes"
            )
            assert page.url.endswith("/pipelines/species-id/monitoring?window=900")

            # Another pipeline with no data: clear empty states, no broken charts.
            page.select_option("#pipeline", "line-inspection")
            page.wait_for_url(f"{served.url}/pipelines/line-inspection/monitoring?window=900")
            page.wait_for_selector("#monitoring[data-loaded]", timeout=15_000)
            assert page.locator("#window").input_value() == "900"
            assert page.locator("#throughput-empty").inner_text() == "no traffic in the last 15 minutes"
            assert page.locator("#drift-empty").inner_text() == "no drift window yet"
            assert page.locator("#chart-throughput").is_hidden()
            assert page.locator("#p95").inner_text() == "–"
            assert page.locator("#alerts-table tbody tr").count() == 1  # LatencyHigh for line-inspection
            page.select_option("#window", "3600")
            wait_until(
                page,
                "document.getElementById('throughput-empty').textContent === 'no traffic in the last hour'",
            )
            page.screenshot(path=str(tmp_path / "monitoring-empty.png"), full_page=True)
        finally:
            browser.close()

    assert not errors, errors
    assert requested and all(urlsplit(u).hostname == "127.0.0.1" for u in requested), requested
