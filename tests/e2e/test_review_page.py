"""The review page in headless Chromium (Debian's, driven by Playwright): a person answers a queued
item with one click; the answer is stored as feedback and the item leaves the list."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from keeneye.lifecycle import enqueue, review_queue, review_reasons
from keeneye.models import ModelBundle
from keeneye.models.testing import tiny_segmenter
from keeneye.pipelines import PipelineCatalog
from keeneye.registry import ModelRegistry
from keeneye.serving.routes import review
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_object_store, open_results_db
from tests.services import unavailable
from tests.serving_support import LiveServer, register_species_model
from tests.unit.lifecycle.support import (
    SPECIES,
    Stored,
    line_manifest,
    png_bytes,
    segment_result,
    species_jpeg,
    species_result,
    store_answer,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
def queued(settings: Settings, tmp_path: Path) -> dict[str, list[Stored]]:
    """species-id and line-inspection models registered; two uncertain answers of each queued."""
    register_species_model(settings, tmp_path)
    db, objects = open_results_db(settings), open_object_store(settings)
    bundle = ModelBundle.write(tmp_path / "line", tiny_segmenter(3, size=64), line_manifest())
    ModelRegistry(settings, events=db).register(
        "line-inspection", bundle, alias="champion", gates_passed=True
    )
    catalog = PipelineCatalog(settings)
    species, line = catalog.get("species-id"), catalog.get("line-inspection")
    out: dict[str, list[Stored]] = {"species-id": [], "line-inspection": []}
    for seed, probabilities in enumerate([[0.5, 0.3, 0.1, 0.05, 0.05], [0.3, 0.25, 0.2, 0.15, 0.1]]):
        s = store_answer(
            db, objects, species.name, species_result(probabilities), species_jpeg(seed), fmt="jpeg"
        )
        out["species-id"].append(s)
    for seed, regions in enumerate([[(1, (8, 8, 30, 24), 0.55)], [(2, (10, 40, 40, 60), 0.58)]]):
        result = segment_result(line, line_manifest(), regions)
        out["line-inspection"].append(store_answer(db, objects, line.name, result, png_bytes(seed)))
    for spec in (species, line):
        for s in out[spec.name]:
            enqueue(
                db, s.observation_id, spec.name, review_reasons(spec, s.result, audit_share=0, rng_key="k")
            )
    return out


@pytest.fixture
def served(settings: Settings, queued: dict[str, list[Stored]]) -> Iterator[LiveServer]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    server = LiveServer(settings, poll_aliases=False)
    if not any(getattr(r, "path", "") == "/pipelines/{name}/review" for r in server.app.routes):
        server.app.include_router(review.router)  # until app.py includes it
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _labels(db: ResultsDB, s: Stored) -> list[tuple[dict[str, object], str]]:
    return [(f.label, f.source) for f in db.feedback_for(s.observation_id)]


def test_one_click_answers_leave_the_queue(
    served: LiveServer, queued: dict[str, list[Stored]], settings: Settings, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    db = open_results_db(settings)
    first, second = queued["species-id"][1], queued["species-id"][0]  # priority 0.95, then 0.5
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            failed: list[str] = []
            page.on("requestfailed", lambda req: failed.append(req.url))
            page.goto(f"{served.url}/pipelines/species-id/review")
            page.wait_for_selector("li.review-item", timeout=15_000)
            items = page.locator("li.review-item")
            assert items.count() == 2
            assert items.nth(0).get_attribute("data-observation") == first.observation_id
            assert page.locator("#count").inner_text() == "2 item(s) to review"
            row = page.locator(f'li[data-observation="{first.observation_id}"]')
            assert row.locator("img").evaluate("img => img.complete && img.naturalWidth") == 48
            choices = row.locator("button.choice")
            assert [choices.nth(i).get_attribute("data-class") for i in range(3)] == [
                t["class"] for t in first.result["top_3_predictions"]
            ]
            # the second-ranked class is right: one click
            pick = first.result["top_3_predictions"][1]["class"]
            row.locator(f'button.choice[data-class="{pick}"]').click()
            row.wait_for(state="detached", timeout=15_000)
            assert _labels(db, first) == [({"class": pick}, "review")]
            # a class outside the top 3, from the select
            other = page.locator(f'li[data-observation="{second.observation_id}"]')
            other.locator("select.other").select_option(SPECIES[3][0])
            other.locator("button.save").click()
            other.wait_for(state="detached", timeout=15_000)
            assert _labels(db, second) == [({"class": SPECIES[3][0]}, "review")]
            assert page.locator("#empty").is_visible()
            assert review_queue(db, "species-id") == []
            page.screenshot(path=str(tmp_path / "review-species.png"))

            line = queued["line-inspection"][0]
            page.goto(f"{served.url}/pipelines/line-inspection/review")
            page.wait_for_selector("li.review-item", timeout=15_000)
            row = page.locator(f'li[data-observation="{line.observation_id}"]')
            assert row.locator("svg polygon").count() == 1  # the model's outline over the image
            row.locator('button[data-decision="DEFECT"]').click()
            row.wait_for(state="detached", timeout=15_000)
            assert _labels(db, line) == [({"decision": "DEFECT"}, "review")]
            # "the model is right": its instances become the label, in the feedback API's geometry
            confirmed = queued["line-inspection"][1]
            row = page.locator(f'li[data-observation="{confirmed.observation_id}"]')
            row.locator("button.confirm").click()
            row.wait_for(state="detached", timeout=15_000)
            [inst] = confirmed.result["instances"]
            x1, y1, x2, y2 = inst["box"]
            expected = {
                "instances": [
                    {
                        "class": inst["class"],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "segmentation": [[v + 0.5 for xy in inst["polygon"] for v in xy]],
                    }
                ],
                "decision": "DEFECT",
            }
            assert _labels(db, confirmed) == [(expected, "review")]
            assert page.locator("li.review-item").count() == 0
            assert not [u for u in failed if not u.startswith(served.url)]  # nothing fetched from outside
        finally:
            browser.close()
