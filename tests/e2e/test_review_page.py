"""The review page in headless Chromium (Debian's, driven by Playwright): a person answers a queued
item with one click; the answer is stored as feedback and the item leaves the list."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from keeneye.lifecycle import enqueue, review_queue, review_reasons
from keeneye.pipelines import PipelineCatalog
from keeneye.serving.routes import review
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_object_store, open_results_db
from tests.e2e.test_predict_page import DESKTOP, PHONE, crop_tile, register_line_and_crop, shots_dir
from tests.e2e.test_web import wait_until
from tests.services import unavailable
from tests.serving_support import LiveServer, register_species_model
from tests.unit.lifecycle.support import (
    SIZE,
    SPECIES,
    Stored,
    as_answer,
    crop_manifest,
    line_manifest,
    png_bytes,
    segment_result,
    species_jpeg,
    species_result,
    store_answer,
)

CROP_BANDS = ("nir", "red_edge", "red", "green")

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
    """species-id, line-inspection and crop-health models registered; two uncertain answers of each
    queued (crop-health's on 4-band TIFFs)."""
    register_species_model(settings, tmp_path)
    db, objects = open_results_db(settings), open_object_store(settings)
    register_line_and_crop(settings, tmp_path)
    catalog = PipelineCatalog(settings)
    species, line, crop = (
        catalog.get("species-id"),
        catalog.get("line-inspection"),
        catalog.get("crop-health"),
    )
    out: dict[str, list[Stored]] = {"species-id": [], "line-inspection": [], "crop-health": []}
    for seed, probabilities in enumerate([[0.5, 0.3, 0.1, 0.05, 0.05], [0.3, 0.25, 0.2, 0.15, 0.1]]):
        s = store_answer(
            db, objects, species.name, species_result(probabilities), species_jpeg(seed), fmt="jpeg"
        )
        out["species-id"].append(s)
    for seed, regions in enumerate([[(1, (8, 8, 30, 24), 0.55)], [(2, (10, 40, 40, 60), 0.58)]]):
        result = segment_result(line, line_manifest(), regions)
        out["line-inspection"].append(store_answer(db, objects, line.name, result, png_bytes(seed)))
    for seed, regions in enumerate([[(1, (24, 20, 52, 40), 0.52)], [(2, (16, 30, 44, 50), 0.55)]]):
        result = segment_result(crop, crop_manifest(), regions)
        result["image"] = {"width": SIZE, "height": SIZE, "format": "tiff", "bands": list(CROP_BANDS)}
        out["crop-health"].append(store_answer(db, objects, crop.name, result, crop_tile(seed), fmt="tiff"))
    for spec in (species, line, crop):
        for s in out[spec.name]:
            enqueue(
                db,
                s.observation_id,
                spec.name,
                review_reasons(spec, as_answer(s.result), audit_share=0, rng_key="k"),
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
            # the thumbnail loads after the list is drawn (slowly on a busy machine): wait for it
            thumb = row.locator("img").element_handle()
            wait_until(page, "img => img.complete && img.naturalWidth > 0", arg=thumb)
            assert row.locator("img").evaluate("img => img.naturalWidth") == 48
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


def _open(page, url: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(url)
    page.wait_for_selector("#review[data-loaded]", timeout=15_000)


def _review_api(served: LiveServer, pipeline: str) -> dict[str, object]:
    import httpx

    r = httpx.get(f"{served.url}/v1/pipelines/{pipeline}/review", params={"include_resolved": "true"})
    assert r.status_code == 200, r.text
    return {i["observation_id"]: i["resolved_at"] for i in r.json()["items"]}


def test_hotkeys_answer_and_z_undoes_for_every_pipeline(
    served: LiveServer, queued: dict[str, list[Stored]], settings: Settings, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    db = open_results_db(settings)
    shots = shots_dir(tmp_path)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # classification: every class of the model has a key; 3 = the third class
            _open(page, f"{served.url}/pipelines/species-id/review")
            keys = page.locator("#key-list li").all_inner_texts()
            assert keys[:5] == [f"{i + 1}{label}" for i, (_, label) in enumerate(SPECIES)], keys
            first, second = queued["species-id"][1], queued["species-id"][0]
            assert (
                page.locator("li.review-item.current").get_attribute("data-observation")
                == first.observation_id
            )
            page.screenshot(path=str(shots / "review-species-id-desktop.png"), full_page=True)
            page.keyboard.press("3")
            page.locator(f'li[data-observation="{first.observation_id}"]').wait_for(state="detached")
            assert (
                page.locator("#saved").inner_text()
                == f"Saved “{SPECIES[2][1]}” for observation {first.observation_id[:8]}."
            )
            assert _labels(db, first) == [({"class": SPECIES[2][0]}, "review")]
            assert _review_api(served, "species-id")[first.observation_id] is not None  # resolved
            page.screenshot(path=str(shots / "review-species-id-saved-desktop.png"), full_page=True)
            # Enter: the model's answer for the next item, which is now highlighted
            assert (
                page.locator("li.review-item.current").get_attribute("data-observation")
                == second.observation_id
            )
            page.keyboard.press("Enter")
            page.locator(f'li[data-observation="{second.observation_id}"]').wait_for(state="detached")
            assert _labels(db, second) == [({"class": second.result["predicted_class"]}, "review")]
            # Ctrl+Z, then Z: both answers withdrawn, both items back, newest first
            page.keyboard.press("Control+z")
            page.locator(f'li[data-observation="{second.observation_id}"]').wait_for()
            assert page.locator("#saved").inner_text().startswith("Undone: “the model's answer")
            assert _labels(db, second) == []
            page.keyboard.press("z")
            page.locator(f'li[data-observation="{first.observation_id}"]').wait_for()
            assert _labels(db, first) == []
            assert _review_api(served, "species-id") == {
                first.observation_id: None,
                second.observation_id: None,
            }
            assert [e.observation_id for e in review_queue(db, "species-id")] == [
                first.observation_id,
                second.observation_id,
            ]
            assert page.locator("li.review-item").count() == 2
            assert page.locator("#count").inner_text() == "2 item(s) to review"
            assert page.locator("#undo").is_hidden()  # nothing left to undo
            page.set_viewport_size(PHONE)
            page.screenshot(path=str(shots / "review-species-id-undone-phone.png"), full_page=True)
            page.set_viewport_size(DESKTOP)

            # crop-health: TIFF thumbnails through the PNG route, every class, 2 = "all regions are drought"
            _open(page, f"{served.url}/pipelines/crop-health/review")
            assert page.locator("li.review-item").count() == 2
            for img in page.locator("li.review-item img").all():
                assert "/image.png?view=auto" in (img.get_attribute("src") or "")
                img.scroll_into_view_if_needed()
                wait_until(page, "i => i.complete && i.naturalWidth > 0", arg=img.element_handle())
                assert img.evaluate("i => i.naturalWidth") == SIZE
            relabel = page.locator("li.review-item.current select.relabel option").all_inner_texts()
            assert relabel == ["all regions are…", "1 · rust", "2 · drought"]
            assert page.locator("li.review-item.current svg polygon").count() == 1
            page.screenshot(path=str(shots / "review-crop-health-desktop.png"), full_page=True)
            page.set_viewport_size(PHONE)
            page.screenshot(path=str(shots / "review-crop-health-phone.png"), full_page=True)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the review page is {width} px wide on a phone"
            page.set_viewport_size(DESKTOP)
            target = page.locator("li.review-item.current").get_attribute("data-observation")
            stored = next(s for s in queued["crop-health"] if s.observation_id == target)
            page.keyboard.press("2")
            page.locator(f'li[data-observation="{target}"]').wait_for(state="detached")
            [(label, source)] = _labels(db, stored)
            assert source == "review" and [i["class"] for i in label["instances"]] == ["drought"]
            assert _review_api(served, "crop-health")[target] is not None
            page.click("#undo")
            page.locator(f'li[data-observation="{target}"]').wait_for()
            assert _labels(db, stored) == []
            assert _review_api(served, "crop-health")[target] is None
            # 0: nothing here
            page.locator(f'li[data-observation="{target}"] .answer').click()
            page.keyboard.press("0")
            page.locator(f'li[data-observation="{target}"]').wait_for(state="detached")
            assert _labels(db, stored) == [({"instances": []}, "review")]

            # line-inspection: 1 / 2 are OK / DEFECT
            _open(page, f"{served.url}/pipelines/line-inspection/review")
            target = page.locator("li.review-item.current").get_attribute("data-observation")
            stored = next(s for s in queued["line-inspection"] if s.observation_id == target)
            page.keyboard.press("1")
            page.locator(f'li[data-observation="{target}"]').wait_for(state="detached")
            assert _labels(db, stored) == [({"decision": "OK"}, "review")]
            page.screenshot(path=str(shots / "review-line-inspection-desktop.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
