"""Every page of the app in headless Chromium, on what ``keeneye demo`` really made — no seeded rows.

The module runs ``keeneye demo --no-serve`` as a newcomer does (a smaller training set and fewer epochs,
through the demo's own options, so it fits in the test suite), registers a second version of the
demo's model with ``keeneye models register`` as a user would, serves the API over that home and then
lets traffic, people and the rules engine do the rest:

* photos from ``keeneye synth species-id --drift lighting`` make the drift window alarm, and the
  rules engine — reading the API's ``/metrics`` like ``keeneye up``'s scheduler — fires
  ``DriftDetected``;
* a person's wrong-answer labels (``POST …/feedback``) push online quality below the model's test
  value; the scheduler's quality job publishes ``keeneye_quality_drop`` and ``QualityDrop`` fires.

Then one story walks every entry of the navigation (Overview, Predict, Review, Monitoring, Models,
Runs, Alerts, Observations, one observation, System, /docs, /redoc, a 404), clicks every action —
predict an uploaded photo, review with a hotkey and undo it, promote with the confirmation and roll
back, acknowledge one alert and silence another, filter the observations and open one — and checks each
result through the API or the database. It is one test on purpose: one demo run (a minute of training)
serves the whole walk, also under ``pytest -n 2``. Screenshots of every page at 1280 and 390 px go to
``$KEENEYE_TEST_SHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.engine import RulesEngine
from keeneye.monitoring.alerts.source import RegistrySource, Sample, ScrapeSource
from keeneye.monitoring.quality import evaluate_quality
from keeneye.pipelines import PipelineCatalog
from keeneye.registry import ModelRegistry
from keeneye.settings import MonitoringSettings, Settings
from keeneye.store import ResultsDB, open_results_db
from tests.e2e.test_browse import _shown
from tests.e2e.test_shell import DESKTOP, PHONE, _chromium, _shots
from tests.e2e.test_web import ARGS, CHROMIUM
from tests.services import free_port
from tests.serving_support import LiveServer, live_server

pytestmark = pytest.mark.e2e

PIPELINE = "species-id"
WHO = "ana"
# The demo's own options, smaller than its newcomer defaults (600 photos, 15 epochs): the model still
# passes its gates (accuracy ≥ 0.80, macro-F1 ≥ 0.75) and training takes well under a minute.
DEMO_OPTIONS = ["--images", "400", "--epochs", "8", "--requests", "8"]
DRIFTED = 20  # photos of the drifted set; one drift window (monitoring.drift_window_size)
WRONG_LABELS = 12  # people's labels that disagree with the model: more than quality_min_feedback


@dataclass
class Demo:
    """What ``keeneye demo`` left in its home, and the API now serving it."""

    server: LiveServer
    settings: Settings
    db: ResultsDB
    champion: str  # the version the demo registered and promoted
    second: str  # the version registered afterwards with ``keeneye models register``
    fresh: list[Path]  # the demo's unseen photos


def keeneye(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``keeneye ARGS`` in a shell whose KEENEYE_HOME is ``home``; fails the test on a non-zero exit."""
    env = {**os.environ, "KEENEYE_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "keeneye", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=home.parent,
        check=False,
    )
    assert done.returncode == 0, f"keeneye {' '.join(args)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    _chromium()
    home = tmp_path_factory.mktemp("demo-walk") / "home"
    home.mkdir()
    ran = keeneye(home, "demo", "--no-serve", "--port", str(free_port()), *DEMO_OPTIONS, timeout=600)
    assert "species-id version 1 is the champion" in ran.stdout, ran.stdout[-3000:]

    # A second version of the same pipeline, registered from the demo's own exported bundle.
    (bundle,) = (home / "runs" / PIPELINE).glob("*/bundle")
    registered = keeneye(
        home, "models", "register", "--pipeline", PIPELINE,
        "--onnx", str(bundle / "model.onnx"), "--manifest", str(bundle / "keeneye.json"), "--json",
    )  # fmt: skip
    second = str(json.loads(registered.stdout)["version"])

    # Small windows, so a test's worth of traffic and labels close them (keeneye.yaml can say the same).
    settings = Settings(
        home=home,
        monitoring=MonitoringSettings(
            drift_window_size=DRIFTED, drift_min_samples=10, quality_min_feedback=WRONG_LABELS - 2
        ),
    )
    fresh = sorted((home / "demo" / "species-fresh" / "images").glob("*.jpg"))
    with live_server(settings) as server:
        yield Demo(server, settings, open_results_db(settings), "1", second, fresh)


class _SchedulerSource:
    """What ``keeneye up``'s rules engine reads: the API's ``/metrics`` and the scheduler's own gauges
    (one ``PROMETHEUS_MULTIPROC_DIR`` there; two sources in this one process)."""

    def __init__(self, api: ScrapeSource, scheduler: Metrics) -> None:
        self.api, self.own = api, RegistrySource(scheduler.registry)

    def samples(self) -> list[Sample]:
        return self.api.samples() + self.own.samples()


def _fire_alerts(demo: Demo, tmp: Path) -> dict[str, int]:
    """Drifted traffic and wrong labels; the engine fires DriftDetected and QualityDrop. Returns their
    alert ids."""
    from keeneye.training import generate

    url = demo.server.url
    drifted = tmp / "drifted"
    generate(PIPELINE, drifted, DRIFTED, seed=3, size=96, drift="lighting")  # `keeneye synth --drift`
    answered: list[tuple[str, str]] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for photo in sorted((drifted / "images").glob("*.jpg")):
            r = client.post(
                f"/v1/pipelines/{PIPELINE}/predict", files={"file": (photo.name, photo.read_bytes())}
            )
            assert r.status_code == 200, r.text
            answered.append((r.json()["observation_id"], r.json()["predicted_class"]))
        reports = client.get(f"/v1/pipelines/{PIPELINE}/drift").json()["reports"]
        assert reports and reports[0]["n"] == DRIFTED and reports[0]["alarm"] is True, reports[:1]

        # People say the model is wrong on these: another class than its answer.
        classes = [c["name"] for c in client.get(f"/v1/pipelines/{PIPELINE}/review").json()["classes"]]
        assert len(classes) == 5
        for obs_id, said in answered[:WRONG_LABELS]:
            truth = next(c for c in classes if c != said)
            r = client.post(f"/v1/observations/{obs_id}/feedback", json={"class": truth, "author": "ben"})
            assert r.status_code == 201, r.text

    scheduler = Metrics()
    engine = RulesEngine.from_settings(
        demo.settings, source=_SchedulerSource(ScrapeSource([f"{url}/metrics"]), scheduler)
    )
    registry = ModelRegistry(demo.settings, events=demo.db)
    windows = evaluate_quality(demo.settings, demo.db, registry, PipelineCatalog(demo.settings), scheduler)
    (window,) = [w for w in windows[PIPELINE] if w.model_version == demo.champion]
    assert window.n >= WRONG_LABELS and window.drop, window
    firing = {a.rule: a for a in engine.evaluate() if a.state == "firing"}
    assert set(firing) == {"DriftDetected", "QualityDrop"}, firing
    return {rule: a.id for rule, a in firing.items()}


def _page(browser: Any, size: dict[str, int], errors: list[str], requested: list[str]) -> Any:
    page = browser.new_page(viewport=size)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # answered requests: ReDoc's CDN logo is refused by the page's CSP before it leaves the browser
    page.on("response", lambda response: requested.append(response.url))
    page.set_default_timeout(15_000)
    return page


def test_walk_every_page_on_the_demo_data(demo: Demo, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    alert_ids = _fire_alerts(demo, tmp_path)
    errors: list[str] = []
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = _page(browser, DESKTOP, errors, requested)
            _overview(page, demo)
            _predict(page, demo)
            reviewed = _review(page, demo)
            _monitoring(page, demo)
            _models(page, demo)
            _runs(page, demo)
            _alerts(page, demo, alert_ids)
            _observations(page, demo, reviewed)
            _system_docs_404(page, demo)
            page.close()
            _screenshots(browser, demo, reviewed, _shots(tmp_path), errors, requested)
        finally:
            browser.close()
    assert not errors, errors
    # nothing fetched from elsewhere (ReDoc's worker is a blob: of this origin)
    outside = {u for u in requested if urlsplit(u.removeprefix("blob:")).hostname != "127.0.0.1"}
    assert not outside, sorted(outside)[:5]


def _overview(page: Any, demo: Demo) -> None:
    page.goto(demo.server.url + "/")
    card = page.locator(f".pipeline-card[data-pipeline='{PIPELINE}']")
    assert card.locator(".champion").inner_text() == f"{PIPELINE} v{demo.champion}"
    answered = demo.db.count_predictions(PIPELINE)  # the demo's photos and the drifted ones
    traffic = card.locator(".traffic").inner_text()
    assert traffic.startswith(f"{answered} in the last hour"), traffic
    assert traffic.endswith("1 rejected or failed"), traffic  # the demo's text file sent as a photo
    alerts = card.locator(".alerts").inner_text()
    assert "DriftDetected" in alerts and "QualityDrop" in alerts
    assert page.locator("#firing-total").inner_text() == "2 alerts firing"


def _predict(page: Any, demo: Demo) -> None:
    """Upload one of the demo's unseen photos: the page shows the API's top-3 for those bytes."""
    photo = demo.fresh[0]
    expected = httpx.post(
        f"{demo.server.url}/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    ).json()
    page.goto(demo.server.url + "/predict")
    assert page.locator("#served-version").inner_text() == demo.champion
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#top3 li.prediction")
    rows = page.locator("#top3 li.prediction")
    assert [rows.nth(i).get_attribute("data-class") for i in range(3)] == [
        t["class"] for t in expected["top_3_predictions"]
    ]
    top = expected["top_3_predictions"][0]["probability"]
    assert rows.nth(0).locator(".probability").inner_text() == f"{top * 100:.1f}%"
    assert page.locator("#model-version").inner_text() == demo.champion
    assert page.locator("#cached").inner_text() == "from cache"  # the same bytes the API just answered


def _review(page: Any, demo: Demo) -> str:
    """Answer the highlighted item with the key of a class, undo with Z, answer again with Enter."""
    from playwright.sync_api import expect

    queue = httpx.get(f"{demo.server.url}/v1/pipelines/{PIPELINE}/review").json()
    assert queue["items"], "the drifted photos left no uncertain answer to review"
    page.goto(demo.server.url + f"/pipelines/{PIPELINE}/review")
    page.wait_for_selector("#review[data-loaded]")
    page.fill("#author", WHO)
    first = page.locator("li.review-item").first
    obs_id = first.get_attribute("data-observation")
    assert first.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") == 96
    assert obs_id == queue["items"][0]["observation_id"]  # most urgent first
    before = page.locator("li.review-item").count()
    page.locator("#review h1").click()  # focus away from the name field: keys act on the list
    second_class = queue["classes"][1]
    page.keyboard.press("2")
    expect(page.locator(f"li.review-item[data-observation='{obs_id}']")).to_have_count(0)
    expect(page.locator("#saved")).to_contain_text(f"Saved “{second_class['label']}”")
    assert [(f.label, f.source, f.author) for f in demo.db.feedback_for(obs_id)] == [
        ({"class": second_class["name"]}, "review", WHO)
    ]
    page.keyboard.press("z")
    expect(page.locator(f"li.review-item[data-observation='{obs_id}']")).to_have_count(1)
    expect(page.locator("#saved")).to_contain_text("Undone")
    assert demo.db.feedback_for(obs_id) == []
    assert page.locator("li.review-item").count() == before

    said = queue["items"][0]["prediction"]["predicted_class"]
    # Select the item by its corner: its middle may hold one of its answer buttons, which would answer.
    page.locator(f"li.review-item[data-observation='{obs_id}']").click(position={"x": 4, "y": 4})
    page.keyboard.press("Enter")  # the model is right
    expect(page.locator(f"li.review-item[data-observation='{obs_id}']")).to_have_count(0)
    assert [(f.label, f.source) for f in demo.db.feedback_for(obs_id)] == [({"class": said}, "review")]
    return str(obs_id)


def _monitoring(page: Any, demo: Demo) -> None:
    """The drifted window's alarm, the dropped quality and both alerts, from the same traffic."""
    page.goto(demo.server.url + "/monitoring")
    page.wait_for_selector("#monitoring[data-loaded]")
    assert page.locator("#model-version").inner_text() == demo.champion
    assert page.locator("#drift-status").inner_text() == "alarm"
    assert "brightness" in page.locator("#drift-detail").inner_text()  # `--drift lighting`
    quality = page.locator("#quality-detail").inner_text()
    labelled = WRONG_LABELS + 1  # and the reviewer's answer
    assert f"{labelled} labelled · v{demo.champion} · dropped" in quality, quality
    assert page.locator("#error-detail").inner_text().startswith("1 rejected")  # the demo's text file
    rules = page.locator("#alerts-table tbody tr").all_inner_texts()
    assert [r.split("\t")[:3] for r in rules] == [
        ["DriftDetected", "warning", "firing"],
        ["QualityDrop", "critical", "firing"],
    ], rules


def _models(page: Any, demo: Demo) -> None:
    """Promote the second version with the confirmation, then roll back: both audited."""
    from playwright.sync_api import expect

    url, v1, v2 = demo.server.url, demo.champion, demo.second
    page.goto(url + "/models")
    section = page.locator(f"section[data-pipeline='{PIPELINE}']")
    assert section.locator(f"tr[data-version='{v1}'] .aliases").inner_text().strip() == "champion"
    assert "accuracy" in section.locator(f"tr[data-version='{v1}'] .metrics").inner_text()
    page.fill("#by-name", WHO)
    page.dispatch_event("#by-name", "change")
    newest = demo.db.model_events(PIPELINE, 1)[0].id  # the demo's own promotion
    section.locator(f"tr[data-version='{v2}'] button.promote").click()
    expect(page.locator("#move-dialog")).to_be_visible()
    assert page.locator("#move-title").inner_text() == f"Promote v{v2} of {PIPELINE}"
    page.click("#move-confirm")
    expect(page.locator("#move-dialog")).to_be_visible()  # no reason: nothing moves
    assert demo.db.model_events(PIPELINE, 1)[0].id == newest
    page.fill("#move-reason", "same weights, registered by hand")
    page.click("#move-confirm")
    expect(page.locator("#status")).to_have_text(f"v{v2} of {PIPELINE} is the champion")
    aliases = {m["version"]: m["aliases"] for m in httpx.get(f"{url}/v1/models").json()[PIPELINE]}
    assert aliases[v2] == ["champion"] and aliases[v1] == ["previous"]
    event = demo.db.model_events(PIPELINE, 1)[0]
    assert (event.event, event.model_version, event.from_version, event.actor) == ("promoted", v2, v1, WHO)

    page.locator(f"section[data-pipeline='{PIPELINE}'] button.rollback").click()
    page.fill("#move-reason", "back to the demo's own")
    page.click("#move-confirm")
    expect(page.locator("#status")).to_have_text(f"{PIPELINE} rolled back: v{v1} is the champion")
    aliases = {m["version"]: m["aliases"] for m in httpx.get(f"{url}/v1/models").json()[PIPELINE]}
    assert aliases[v1] == ["champion"]
    back = demo.db.model_events(PIPELINE, 1)[0]
    assert (back.event, back.model_version, back.reason) == ("rolled_back", v1, "back to the demo's own")


def _runs(page: Any, demo: Demo) -> None:
    """The demo's training is a finished manual run that produced the champion."""
    page.goto(demo.server.url + "/runs")
    rows = page.locator(f"section[data-pipeline='{PIPELINE}'] tbody tr[data-run]:not(.run-details)")
    assert rows.count() == 1
    text = rows.first.inner_text()
    assert "manual" in text and "keeneye demo" in text, text
    assert f"v{demo.champion}" in rows.first.locator(".outcome").inner_text()
    assert "passed" in rows.first.locator(".outcome").inner_text()
    details = page.locator(f"section[data-pipeline='{PIPELINE}'] tr.run-details")
    details.locator("summary").click()
    assert "accuracy" in details.locator(".metrics").inner_text()


def _alerts(page: Any, demo: Demo, ids: dict[str, int]) -> None:
    """Acknowledge DriftDetected; silence QualityDrop for 4 hours."""
    from playwright.sync_api import expect

    url = demo.server.url
    page.goto(url + "/alerts")
    page.wait_for_selector("#alerts[data-loaded]")
    page.fill("#by-name", WHO)
    drift = page.locator(f"#firing-table tr[data-alert='{ids['DriftDetected']}']")
    assert PIPELINE in drift.inner_text()
    drift.locator("button.ack").click()
    expect(page.locator("#status")).to_have_text("acknowledged DriftDetected")
    expect(drift).to_contain_text(f"acked by {WHO}")
    assert httpx.get(f"{url}/v1/alerts/{ids['DriftDetected']}").json()["acked_by"] == WHO

    quality = page.locator(f"#firing-table tr[data-alert='{ids['QualityDrop']}']")
    quality.locator("button.silence").click()
    expect(page.locator("#silence-dialog")).to_be_visible()
    page.select_option("#duration", "4h")
    page.fill("#reason", "relabelling the night photos")
    page.click("#silence-form button.primary")
    expect(page.locator("#status")).to_have_text("silenced QualityDrop for 4h")
    expect(page.locator("#silences li")).to_contain_text("relabelling the night photos")
    (silence,) = httpx.get(f"{url}/v1/alerts/silences").json()["silences"]
    assert silence["rule"] == "QualityDrop" and silence["matchers"]["pipeline"] == PIPELINE
    assert silence["created_by"] == WHO
    expect(quality).to_contain_text("silenced")


def _observations(page: Any, demo: Demo, reviewed: str) -> None:
    """Filter by class and by status (the same rows as the API), then open the reviewed one."""
    from playwright.sync_api import expect

    url = demo.server.url
    every = httpx.get(f"{url}/v1/observations", params={"limit": 200}).json()["observations"]
    page.goto(url + "/observations")
    page.wait_for_selector("#observations[data-loaded='1']")
    assert [r["id"] for r in _shown(page)] == [o["id"] for o in every[:50]]

    oldest = next(o for o in reversed(every) if o["answer"])  # the demo's first unseen photo
    cls = oldest["answer"]["predicted_class"]
    page.select_option("#f-pipeline", PIPELINE)
    page.fill("#f-class", cls)
    page.click("#apply")
    page.wait_for_selector("#observations[data-loaded='2']")
    rows = _shown(page)
    api = httpx.get(f"{url}/v1/observations", params={"pipeline": PIPELINE, "class": cls}).json()
    assert oldest["id"] in [r["id"] for r in rows]
    assert [r["id"] for r in rows] == [o["id"] for o in api["observations"]]
    assert all(r["cls"] == cls for r in rows)

    page.fill("#f-class", "")
    page.select_option("#f-status", "rejected")
    page.click("#apply")
    page.wait_for_selector("#observations[data-loaded='3']")
    rows = _shown(page)  # the demo's text file sent as a photo
    assert len(rows) == 1 and rows[0]["status"] == "rejected"

    page.goto(f"{url}/observations?id={reviewed}")
    expect(page.locator("#observation")).to_be_visible()
    expect(page.locator("#obs-feedback li")).to_contain_text(f"review ({WHO})")
    img = page.locator("#obs-img")
    assert img.evaluate("img => img.decode().then(() => img.naturalWidth)") == 96  # the stored photo
    assert page.locator("#obs-predictions tbody tr").count() == 1


def _system_docs_404(page: Any, demo: Demo) -> None:
    url = demo.server.url
    page.goto(url + "/system")  # the demo serves the API only: no supervisor, and the page says how
    assert page.locator("#system-state").inner_text() == "supervisor not running (no system view yet)"
    assert "start the whole system with keeneye up" in page.locator("#system").inner_text()
    assert httpx.get(f"{url}/v1/system").json()["running"] is False
    page.goto(url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    page.goto(url + "/redoc")
    page.wait_for_selector(".api-content h1", timeout=20_000)
    missing = page.goto(url + "/no-such-page")
    assert missing is not None and missing.status == 404
    assert "There is no page at /no-such-page." in page.locator("main").inner_text()


def _screenshots(
    browser: Any, demo: Demo, reviewed: str, shots: Path, errors: list[str], requested: list[str]
) -> None:
    """Every page at 1280 and 390 px, after the walk: nothing wider than the window."""
    pages = [
        ("overview", "/", f".pipeline-card[data-pipeline='{PIPELINE}']"),
        ("predict", "/predict", "#drop"),
        ("review", f"/pipelines/{PIPELINE}/review", "#review[data-loaded]"),
        ("monitoring", "/monitoring", "#monitoring[data-loaded]"),
        ("models", "/models", f"section[data-pipeline='{PIPELINE}'] tr[data-version='{demo.second}']"),
        ("runs", "/runs", "tr.run-details"),
        ("alerts", "/alerts", "#alerts[data-loaded]"),
        ("observations", "/observations", "#observations[data-loaded]"),
        ("observation", f"/observations?id={reviewed}", "#obs-feedback li"),
        ("system", "/system", "#system-state"),
        ("docs", "/docs", ".opblock-summary-path"),
        ("redoc", "/redoc", ".api-content h1"),
        ("404", "/no-such-page", "#not-found"),
    ]
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page = _page(browser, size, errors, requested)
        for name, path, proof in pages:
            page.goto(demo.server.url + path)
            page.wait_for_selector(proof, timeout=20_000)
            if name == "predict":  # the page with an answer on it
                page.set_input_files("#file", str(demo.fresh[1]))
                page.wait_for_selector("#top3 li.prediction")
            elif name == "runs":
                page.locator("tr.run-details summary").first.click()
            # A full-page shot shows what is below the fold, which lazy images have not loaded yet.
            page.evaluate(
                "Promise.all([...document.images].map(i => { i.loading = 'eager';"
                " return i.decode().catch(() => null); }))"
            )
            if name not in ("docs", "redoc"):  # vendored pages: their own layout
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= size["width"], f"{path} is {width} px wide at {size['width']} px"
            page.screenshot(path=str(shots / f"walk-{name}-{size_name}.png"), full_page=True)
        page.close()
