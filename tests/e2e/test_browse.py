"""The browse pages in headless Chromium, with real data: every action clicked, every result asserted.

Models: promote with the confirmation (the alias moved, a ``model_events`` row holds the reason and
who), a failed-gates version refused, roll back. Alerts: acknowledge and silence (checked through the
API). Observations: filter (the rows shown are exactly the API's, and match the filter), page, open
one (image with its outline drawn, every answer, latency breakdown, feedback). Runs: the log tail and
the error. Screenshots at 1280 and 390 px go to ``$KEENEYE_TEST_SHOTS`` (default: the tmp dir).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from keeneye.domain import Decision, Variant
from keeneye.lifecycle.triggers import retrain_log_path
from keeneye.models.bundle import ModelBundle
from keeneye.models.testing import tiny_classifier
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import NewObservation, NewPrediction, ResultsDB, open_object_store, open_results_db
from keeneye.store.schema import TrainingRunRow
from tests.e2e.test_monitoring_page import register_with_test_metrics
from tests.e2e.test_shell import DESKTOP, PHONE, _chromium, _shots
from tests.e2e.test_web import ARGS, CHROMIUM
from tests.serving_support import SPECIES, LiveServer, live_server, species_manifest
from tests.unit.serving.test_monitoring_api import seed_alerts, seed_observations, seed_predictions

pytestmark = pytest.mark.e2e

WHO = "ana"
# The outline of the one defect drawn on the line-inspection frame (x, y in image pixels).
DEFECT = [[60.0, 40.0], [140.0, 40.0], [140.0, 90.0], [60.0, 90.0]]


@dataclass
class Browsed:
    server: LiveServer
    db: ResultsDB
    defect_id: str
    trout: list[str]


def _line_frame(settings: Settings, db: ResultsDB) -> str:
    """A stored 240×160 frame with one segmented defect, answered DEFECT (as a worker stores it)."""
    frame = np.full((160, 240, 3), 180, np.uint8)
    cv2.rectangle(frame, (60, 40), (140, 90), (40, 40, 40), -1)
    data = cv2.imencode(".png", frame)[1].tobytes()
    digest = hashlib.sha256(data).hexdigest()
    key = f"observations/line-inspection/{digest}.png"
    open_object_store(settings).put(key, data, content_type="image/png")
    result = {
        "task": "segment",
        "instances": [
            {
                "class": "defect",
                "label": "Defect",
                "score": 0.91,
                "box": [60.0, 40.0, 140.0, 90.0],
                "area_px": 4000.0,
                "polygon": DEFECT,
            }
        ],
        "count": 1,
        "confidence": 0.91,
        "decision": "DEFECT",
        "image": {"width": 240, "height": 160, "bands": ["gray"], "format": "png", "quality": {}},
    }
    timings = {"decode_ms": 1.2, "preprocess_ms": 0.8, "infer_ms": 6.5, "post_ms": 0.9}
    return db.record_prediction(
        NewObservation("line-inspection", digest, key, "image/png", len(data), {"line": "L1"}, "edge"),
        NewPrediction(
            "line-inspection", "4", Variant.champion, "segment", result, Decision.defect, 0.91, 9.4, timings
        ),
    )


def _runs(settings: Settings, db: ResultsDB) -> None:
    """Two finished runs of species-id: one refused by its gates (started by the scheduler, with a
    log), one failed without a log."""
    now = datetime.now(UTC)
    with db.session() as s:
        refused = TrainingRunRow(
            pipeline="species-id",
            cause="new_labels",
            reason="120 new labels",
            dedup_key="k1",
            status="refused",
            inputs={},
            error=None,
            requested_at=now - timedelta(hours=2),
            started_at=now - timedelta(hours=2),
            finished_at=now - timedelta(hours=2) + timedelta(seconds=95),
            outcome={
                "version": "3",
                "gates": {"passed": False, "reasons": ["macro_f1 0.41 < 0.60"], "notes": []},
                "metrics": {"macro_f1": 0.41},
                "champion": {"version": "1", "metrics": {"macro_f1": 0.82}},
                "data_version": "d-7",
            },
        )
        failed = TrainingRunRow(
            pipeline="species-id",
            cause="drift",
            reason="PSI 0.4",
            dedup_key="k2",
            status="failed",
            inputs={},
            outcome={},
            error="dataset is empty: no labelled images since 2026-01-01",
            requested_at=now - timedelta(hours=1),
            started_at=now - timedelta(hours=1),
            finished_at=now - timedelta(hours=1) + timedelta(seconds=3),
        )
        s.add_all([refused, failed])
        s.flush()
        refused_id = refused.id
    log = retrain_log_path(settings, "species-id", refused_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        "".join(f"epoch {i}/60 loss {1 / (i + 1):.3f}\n" for i in range(1, 61)) + "gates refused: macro_f1\n"
    )


@pytest.fixture
def browsed(settings: Settings, tmp_path: Path) -> Iterator[Browsed]:
    v1 = register_with_test_metrics(settings, tmp_path)
    db = open_results_db(settings)
    registry = ModelRegistry(settings, events=db)
    for seed, passed in ((1, True), (2, False)):  # v2 passed its gates, v3 did not
        bundle = ModelBundle.write(
            tmp_path / f"bundle{seed}",
            tiny_classifier(len(SPECIES), seed=seed),
            species_manifest(metrics={"macro_f1": 0.7}),
        )
        registry.register("species-id", bundle, gates_passed=passed, tags={"data_version": f"d-{seed}"})
    now = datetime.now(UTC)
    classes = ["salmo_trutta"] * 6 + ["esox_lucius"] * 4
    ids = seed_predictions(
        db,
        now - timedelta(minutes=10),
        [20 + i for i in range(10)],
        version=v1,
        results=[{"task": "classify", "predicted_class": c, "predicted_label": c} for c in classes],
    )
    db.add_feedback(ids[6], {"class": "esox_lucius"}, source="review", author="ben")
    seed_observations(db, now - timedelta(minutes=5), "rejected", 2)
    defect_id = _line_frame(settings, db)
    seed_alerts(db)  # LatencyHigh firing on both pipelines (not a packaged rule), a resolved DriftAlarm
    slow = {"pipeline": "line-inspection"}
    db.upsert_alert(
        "ApiLatencyAboveSlo", "fp-slo", severity="warning", state="firing", labels=slow, value=0.75
    )
    db.upsert_alert(
        "ApiErrorRateHigh", "fp-err", severity="warning", state="pending", labels={"pipeline": "species-id"}
    )
    _runs(settings, db)
    with live_server(settings) as server:
        yield Browsed(server, db, defect_id, ids[6:])


def _browser(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def _fits(page: Any, width: int, name: str) -> None:
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{name} is {scroll} px wide at {width} px"


def test_promote_with_confirmation_refuse_failed_gates_and_roll_back(
    browsed: Browsed, tmp_path: Path
) -> None:
    _chromium()
    from playwright.sync_api import expect, sync_playwright

    shots, url = _shots(tmp_path), browsed.server.url
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport=DESKTOP)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/models")
            section = page.locator("section[data-pipeline='species-id']")
            assert section.locator("tr[data-version='1'] .aliases").inner_text().strip() == "champion"
            assert section.locator("tr[data-version='2'] td").nth(4).inner_text() == "d-1"
            assert "macro_f1" in section.locator("tr[data-version='1'] .metrics").inner_text()
            page.fill("#by-name", WHO)
            page.dispatch_event("#by-name", "change")

            # Promote v2: the dialog asks; without a reason nothing happens.
            section.locator("tr[data-version='2'] button.promote").click()
            dialog = page.locator("#move-dialog")
            expect(dialog).to_be_visible()
            assert page.locator("#move-title").inner_text() == "Promote v2 of species-id"
            page.screenshot(path=str(shots / "models-confirm-desktop.png"))
            page.click("#move-confirm")
            expect(dialog).to_be_visible()  # the required reason stops it
            assert browsed.db.model_events("species-id", 5)[0].event != "promoted"
            page.fill("#move-reason", "v2 wins on the new camera")
            page.click("#move-confirm")
            page.wait_for_load_state("load")
            expect(page.locator("#status")).to_have_text("v2 of species-id is the champion")
            section = page.locator("section[data-pipeline='species-id']")
            assert "champion" in section.locator("tr[data-version='2'] .aliases").inner_text()
            assert section.locator("tr[data-version='1'] .aliases").inner_text().strip() == "previous"
            models = httpx.get(f"{url}/v1/models").json()["species-id"]
            assert {m["version"]: m["aliases"] for m in models}["2"] == ["champion"]
            event = browsed.db.model_events("species-id", 1)[0]
            assert (event.event, event.model_version, event.from_version) == ("promoted", "2", "1")
            assert event.reason == "v2 wins on the new camera"
            assert event.actor == WHO  # loopback without keys: the name given (else "local")
            section.locator("details.events summary").click()  # the audit log, folded
            assert "v2 wins on the new camera" in section.locator(".events-list li").first.inner_text()

            # v3 failed its gates: refused, the dialog says why, the champion stays.
            section.locator("tr[data-version='3'] button.promote").click()
            page.fill("#move-reason", "try it anyway")
            page.click("#move-confirm")
            expect(page.locator("#move-error")).to_contain_text("failed its quality gates")
            page.click("#move-dialog button[value='cancel']")
            assert browsed.db.model_events("species-id", 1)[0].id == event.id

            # Roll back: v1 is the champion again, audited.
            page.locator("section[data-pipeline='species-id'] button.rollback").click()
            page.fill("#move-reason", "v2 misreads pike at night")
            page.click("#move-confirm")
            page.wait_for_load_state("load")
            expect(page.locator("#status")).to_have_text("species-id rolled back: v1 is the champion")
            back = browsed.db.model_events("species-id", 1)[0]
            assert (back.event, back.model_version, back.reason) == (
                "rolled_back",
                "1",
                "v2 misreads pike at night",
            )

            # Start a shadow rollout of v2, then abort it: both audited, the page shows the state.
            page.locator("section[data-pipeline='species-id'] tr[data-version='2'] button.rollout").click()
            expect(page.locator("#rollout-fields")).to_be_visible()
            page.check("input[name=mode][value=shadow]")
            page.fill("#move-reason", "try v2 on live traffic")
            page.click("#move-confirm")
            page.wait_for_load_state("load")
            expect(page.locator("#status")).to_have_text("species-id: v2 in shadow")
            state = page.locator("section[data-pipeline='species-id'] .rollout-state")
            assert state.inner_text() == "shadow"
            rollout = httpx.get(f"{url}/v1/pipelines/species-id/rollout").json()
            assert (rollout["state"], rollout["challenger_version"]) == ("shadow", "2")
            page.locator("section[data-pipeline='species-id'] button.rollout-abort").click()
            expect(page.locator("#rollout-fields")).to_be_hidden()
            page.fill("#move-reason", "enough for today")
            page.click("#move-confirm")
            page.wait_for_load_state("load")
            expect(page.locator("#status")).to_have_text("species-id: rollout aborted")
            assert page.locator("section[data-pipeline='species-id'] .rollout-state").count() == 0
            reasons = [e.reason for e in browsed.db.model_events("species-id", 10)]
            assert "try v2 on live traffic" in reasons and "enough for today" in reasons
            assert not errors, errors
        finally:
            browser.close()


def test_ack_and_silence_an_alert(browsed: Browsed, tmp_path: Path) -> None:
    _chromium()
    from playwright.sync_api import expect, sync_playwright

    url = browsed.server.url
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(url + "/alerts")
            page.wait_for_selector("#alerts[data-loaded]")
            page.fill("#by-name", WHO)
            assert page.locator("#pending-table tr[data-rule='ApiErrorRateHigh']").count() == 1
            assert page.locator("#history-table tr[data-rule='DriftAlarm']").count() == 1
            firing = page.locator("#firing-table tr[data-rule='LatencyHigh']").filter(has_text="species-id")
            alert_id = firing.get_attribute("data-alert")
            firing.locator("button.ack").click()
            expect(page.locator("#status")).to_have_text("acknowledged LatencyHigh")
            expect(page.locator(f"#firing-table tr[data-alert='{alert_id}']")).to_contain_text(
                f"acked by {WHO}"
            )
            assert httpx.get(f"{url}/v1/alerts/{alert_id}").json()["acked_by"] == WHO

            other = page.locator("#firing-table tr[data-rule='ApiLatencyAboveSlo']")
            assert other.locator("td.value").inner_text() == "750 ms"  # the rule's unit
            other.locator("button.silence").click()
            expect(page.locator("#silence-dialog")).to_be_visible()
            page.select_option("#duration", "4h")
            page.fill("#reason", "camera 2 is being cleaned")
            page.click("#silence-form button.primary")
            expect(page.locator("#status")).to_have_text("silenced ApiLatencyAboveSlo for 4h")
            expect(page.locator("#silences li")).to_contain_text("camera 2 is being cleaned")
            silences = httpx.get(f"{url}/v1/alerts/silences").json()["silences"]
            (silence,) = silences
            assert (silence["rule"], silence["matchers"]) == (
                "ApiLatencyAboveSlo",
                {"pipeline": "line-inspection"},
            )
            assert silence["reason"] == "camera 2 is being cleaned" and silence["created_by"] == WHO
            expect(other).to_contain_text("silenced")
            page.screenshot(path=str(_shots(tmp_path) / "browse-alerts-acted-desktop.png"), full_page=True)
            length = datetime.fromisoformat(silence["ends_at"]) - datetime.fromisoformat(silence["starts_at"])
            assert length == timedelta(hours=4)
        finally:
            browser.close()


def _shown(page: Any) -> list[dict[str, str | None]]:
    return page.eval_on_selector_all(
        "#obs-table tbody tr",
        "rows => rows.map(r => ({id: r.dataset.observation, pipeline: r.dataset.pipeline,"
        " status: r.dataset.status, cls: r.dataset.class || null, decision: r.dataset.decision || null}))",
    )


def test_filter_observations_and_open_one(browsed: Browsed) -> None:
    _chromium()
    from playwright.sync_api import expect, sync_playwright

    url = browsed.server.url
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport=DESKTOP)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/observations")
            page.wait_for_selector("#observations[data-loaded='1']")
            assert len(_shown(page)) == 13  # 10 answered + 2 rejected + the line frame

            # Filter by pipeline and class: exactly the 4 pike, the same rows as the API.
            page.select_option("#f-pipeline", "species-id")
            page.fill("#f-class", "esox_lucius")
            page.click("#apply")
            page.wait_for_selector("#observations[data-loaded='2']")
            rows = _shown(page)
            assert {r["id"] for r in rows} == set(browsed.trout)
            assert all(r["pipeline"] == "species-id" and r["cls"] == "esox_lucius" for r in rows)
            api = httpx.get(
                f"{url}/v1/observations", params={"pipeline": "species-id", "class": "esox_lucius"}
            ).json()
            assert [r["id"] for r in rows] == [o["id"] for o in api["observations"]]
            assert "class=esox_lucius" in page.url  # the view can be shared

            # Status: only the rejected ones, with their reason.
            page.fill("#f-class", "")
            page.select_option("#f-status", "rejected")
            page.click("#apply")
            page.wait_for_selector("#observations[data-loaded='3']")
            rows = _shown(page)
            assert len(rows) == 2 and all(r["status"] == "rejected" for r in rows)
            assert "undecodable image" in page.locator("#obs-table tbody tr").first.inner_text()

            # A time range that ends before anything happened: nothing.
            page.select_option("#f-status", "")
            page.fill("#f-until", (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"))
            page.click("#apply")
            page.wait_for_selector("#observations[data-loaded='4']")
            expect(page.locator("#obs-empty")).to_be_visible()

            # Decision DEFECT over every pipeline: the line frame; open it.
            page.click("#clear")
            page.wait_for_selector("#observations[data-loaded='5']")
            page.select_option("#f-decision", "DEFECT")
            page.click("#apply")
            page.wait_for_selector("#observations[data-loaded='6']")
            rows = _shown(page)
            assert [(r["id"], r["decision"]) for r in rows] == [(browsed.defect_id, "DEFECT")]
            page.locator(f"#obs-table tr[data-observation='{browsed.defect_id}'] a.open").click()
            expect(page.locator("#observation")).to_be_visible()
            expect(page.locator("#obs-caption")).to_have_text("1 shape drawn")
            points = page.locator("#obs-overlay polygon").get_attribute("points")
            # The shared overlay (overlay.js) puts outlines on pixel edges: +0.5.
            assert points == " ".join(",".join(f"{v + 0.5:g}" for v in xy) for xy in DEFECT)
            assert page.locator("#obs-overlay").get_attribute("viewBox") == "0 0 240 160"
            assert page.evaluate("document.getElementById('obs-img').naturalWidth") == 240
            assert page.locator("#obs-answer").inner_text() == "DEFECT · 1 instance"
            timing_rows = page.locator("#obs-timings tr").all_inner_texts()
            assert timing_rows[0].split("\t") == ["decode", "1.2 ms"] and timing_rows[-1].split("\t") == [
                "total",
                "9.4 ms",
            ]
            assert '"decision": "DEFECT"' in page.locator("#obs-result").inner_text()
            assert f"id={browsed.defect_id}" in page.url

            # One with feedback, opened by id from the URL.
            page.goto(f"{url}/observations?id={browsed.trout[0]}")
            expect(page.locator("#obs-feedback li")).to_contain_text("class: esox_lucius")
            expect(page.locator("#obs-feedback li")).to_contain_text("review (ben)")
            assert page.locator("#obs-predictions tbody tr").count() == 1
            assert not errors, errors
        finally:
            browser.close()


def test_observations_are_paged_newest_first(browsed: Browsed) -> None:
    _chromium()
    from playwright.sync_api import sync_playwright

    url = browsed.server.url
    first = httpx.get(f"{url}/v1/observations", params={"limit": 5}).json()
    second = httpx.get(f"{url}/v1/observations", params={"limit": 5, "cursor": first["next_cursor"]}).json()
    every = httpx.get(f"{url}/v1/observations", params={"limit": 50}).json()["observations"]
    assert [o["id"] for o in first["observations"] + second["observations"]] == [o["id"] for o in every[:10]]
    assert httpx.get(f"{url}/v1/observations", params={"cursor": "nonsense!"}).status_code == 400
    assert httpx.get(f"{url}/v1/observations", params={"pipeline": "nope"}).status_code == 404
    assert httpx.get(f"{url}/v1/observations", params={"status": "lost"}).status_code == 422
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(url + "/observations")
            page.wait_for_selector("#observations[data-loaded='1']")
            assert page.locator("#more").is_hidden()  # 13 rows: one page of 50
            page.goto(url + "/observations?limit=5")
            page.wait_for_selector("#observations[data-loaded='1']")
            assert [r["id"] for r in _shown(page)] == [o["id"] for o in every[:5]]
            page.click("#more")
            page.wait_for_selector("#observations[data-loaded='2']")
            assert [r["id"] for r in _shown(page)] == [o["id"] for o in every[:10]]
            page.click("#more")
            page.wait_for_selector("#observations[data-loaded='3']")
            assert [r["id"] for r in _shown(page)] == [o["id"] for o in every]
            assert page.locator("#more").is_hidden()  # the last page
        finally:
            browser.close()


def test_runs_show_the_log_tail_gates_and_error(browsed: Browsed) -> None:
    _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(browsed.server.url + "/runs?pipeline=species-id")
            details = page.locator("section[data-pipeline='species-id'] tr.run-details")
            assert details.count() == 2
            failed, refused = details.nth(0), details.nth(1)  # newest first
            # the newest run failed: shown unfolded
            assert failed.locator("details").get_attribute("open") == ""
            assert refused.locator("details").get_attribute("open") is None
            assert failed.locator("pre.log").get_attribute("data-source") == "error"
            assert "dataset is empty" in failed.locator("pre.log").inner_text()
            refused.locator("summary").click()
            log = refused.locator("pre.log")
            assert log.get_attribute("data-source") == "log"
            lines = log.inner_text().splitlines()
            assert len(lines) == 40 and lines[-1] == "gates refused: macro_f1"  # the tail, not the head
            assert lines[0].startswith("epoch 22/60 ")
            assert "macro_f1 0.41 < 0.60" in refused.locator(".gate-reasons").inner_text()
            assert "champion v1: macro_f1 0.82" in refused.inner_text()
        finally:
            browser.close()


@pytest.mark.parametrize(("size_name", "size"), [("desktop", DESKTOP), ("phone", PHONE)])
def test_screenshots_of_the_browse_pages(
    browsed: Browsed, tmp_path: Path, size_name: str, size: dict[str, int]
) -> None:
    _chromium()
    from playwright.sync_api import sync_playwright

    shots, url = _shots(tmp_path), browsed.server.url
    pages = [
        ("models", "/models", "section[data-pipeline='species-id'] tr[data-version='3']"),
        ("runs", "/runs", "tr.run-details"),
        ("alerts", "/alerts", "#alerts[data-loaded]"),
        ("observations", "/observations", "#observations[data-loaded]"),
        ("observation", f"/observations?id={browsed.defect_id}", "#obs-caption:has-text('drawn')"),
    ]
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport=size)
            for name, path, proof in pages:
                page.goto(url + path)
                page.wait_for_selector(proof, timeout=15_000)
                if name == "runs":
                    page.locator("tr.run-details summary").last.click()
                _fits(page, size["width"], path)
                page.screenshot(path=str(shots / f"browse-{name}-{size_name}.png"), full_page=True)
        finally:
            browser.close()
