"""The predict page for every pipeline in headless Chromium: per-pipeline title and served version,
the answer drawn over the image (outlines, labels, scores), a GeoTIFF shown through the server's PNG
rendering (colour infrared and NDVI), and a refusal as one readable line.

Screenshots (1280 px and 390 px) go to ``$KEENEYE_TEST_SHOTS`` (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from keeneye.models import ModelBundle
from keeneye.models.testing import tiny_segmenter
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.e2e.test_web import ARGS, CHROMIUM, wait_until
from tests.services import unavailable
from tests.serving_support import LiveServer, jpeg, live_server, png, register_species_model, tiff
from tests.unit.lifecycle.support import SIZE, crop_manifest, line_manifest

pytestmark = pytest.mark.e2e

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def register_line_and_crop(settings: Settings, tmp: Path, *, line_versions: int = 1) -> None:
    """Tiny segmenters for line-inspection (RGB) and crop-health (nir, red_edge, red, green): class k
    lights up where input channel k-1 is bright."""
    db = open_results_db(settings)
    registry = ModelRegistry(settings, events=db)
    for v in range(line_versions):
        line = ModelBundle.write(tmp / f"line-{v}", tiny_segmenter(3, size=SIZE), line_manifest())
        registry.register("line-inspection", line, alias="champion", gates_passed=True)
    crop = ModelBundle.write(tmp / "crop", tiny_segmenter(3, channels=4, size=SIZE), crop_manifest())
    registry.register("crop-health", crop, alias="champion", gates_passed=True)


def line_frame() -> bytes:
    """A grey frame with a bright red scratch (class 1) and a bright green dent (class 2)."""
    bgr = np.full((SIZE, SIZE, 3), 60, np.uint8)
    cv2.ellipse(bgr, (20, 16), (12, 6), 0, 0, 360, (40, 40, 250), -1)
    cv2.ellipse(bgr, (44, 46), (9, 9), 0, 0, 360, (40, 250, 40), -1)
    return png(bgr)


def crop_tile(seed: int = 0) -> bytes:
    """A 4-band uint16 tile (nir, red_edge, red, green): soil everywhere, a rust patch of high nir
    (class 1; ``seed`` moves it), a nodata strip (all bands 0) on the left."""
    bands = np.zeros((4, SIZE, SIZE), np.uint16)
    bands[:, :, 6:] = np.asarray([9000, 7000, 8000, 7500], np.uint16)[:, None, None]
    patch = np.zeros((SIZE, SIZE), np.uint8)
    cv2.ellipse(patch, (38 - 8 * seed, 30 + 10 * seed), (14, 10), 0, 0, 360, 1, -1)
    bands[0][patch == 1] = 60000
    bands[2][patch == 1] = 6000
    return tiff(bands, photometric="minisblack")


def shots_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("KEENEYE_TEST_SHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    register_species_model(settings, tmp_path)
    register_line_and_crop(settings, tmp_path, line_versions=2)  # line-inspection serves v2
    with live_server(settings) as server:
        yield server


def test_every_pipeline_draws_its_answer_over_the_image(served: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import Page, sync_playwright

    shots = shots_dir(tmp_path)
    files = {
        "species-id": ("fish.jpg", jpeg((220, 120, 20), seed=4)),
        "line-inspection": ("frame.png", line_frame()),
    }
    files["crop-health"] = ("tile.tif", crop_tile())
    for filename, data in files.values():
        (tmp_path / filename).write_bytes(data)
    requested: list[str] = []
    errors: list[str] = []

    def upload(page: Page, pipeline: str) -> None:
        page.select_option("#pipeline", pipeline)
        page.set_input_files("#file", str(tmp_path / files[pipeline][0]))
        page.wait_for_selector("#result:not([hidden])", timeout=15_000)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
                page = browser.new_page(viewport=size)
                page.on("request", lambda req: requested.append(req.url))
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(served.url + "/predict")
                assert page.locator("#title").inner_text() == "Species identification"
                assert "top 3" in page.locator("#description").inner_text()
                assert page.locator("#served-version").inner_text() == "1"

                upload(page, "species-id")
                assert page.locator("#top3 li.prediction").count() == 3
                assert page.locator("#frame svg").count() == 0  # a class for the whole photo: no shapes
                page.screenshot(path=str(shots / f"predict-species-id-{size_name}.png"), full_page=True)

                # switching: the title, the description and the served version follow the pipeline
                page.select_option("#pipeline", "line-inspection")
                assert page.locator("#title").inner_text() == "Line inspection"
                assert "OK/DEFECT" in page.locator("#description").inner_text()
                wait_until(page, "document.getElementById('served-version').textContent === '2'")
                assert page.locator("#result").is_hidden()
                upload(page, "line-inspection")
                frame = page.locator("#frame")
                assert frame.locator("svg polygon.instance").count() == 2
                assert sorted(
                    frame.locator("svg polygon").evaluate_all("ps => ps.map(p => p.dataset.class)")
                ) == [
                    "dent",
                    "scratch",
                ]
                labels = frame.locator("svg text.label").all_text_contents()
                assert len(labels) == 2 and all(
                    t.split()[0] in ("scratch", "dent") and t.endswith("%") for t in labels
                )
                assert page.locator("#answer .badge").inner_text() == "DEFECT"
                answer = page.locator("#answer").inner_text()
                assert answer in ("DEFECT 2 regions: scratch, dent", "DEFECT 2 regions: dent, scratch"), (
                    answer
                )
                assert page.locator("#instances tbody tr").count() == 2
                assert page.locator("#model-version").inner_text() == "2"
                page.screenshot(path=str(shots / f"predict-line-inspection-{size_name}.png"), full_page=True)

                # a GeoTIFF: the server renders it; the rust patch is outlined over it
                page.select_option("#pipeline", "crop-health")
                assert page.locator("#title").inner_text() == "Crop health"
                upload(page, "crop-health")
                img = page.locator("#preview")
                wait_until(page, "document.getElementById('preview').naturalWidth > 0")
                assert "/image.png?view=auto" in (img.get_attribute("src") or "")
                assert img.evaluate("i => i.naturalWidth") == SIZE
                assert page.locator("#frame svg polygon.instance").count() == 1
                assert page.locator("#frame svg polygon").get_attribute("data-class") == "rust"
                assert (page.locator("#frame svg text.label").text_content() or "").startswith("rust ")
                page.screenshot(path=str(shots / f"predict-crop-health-{size_name}.png"), full_page=True)
                page.click("#views button[data-view='ndvi']")
                wait_until(page, "document.getElementById('preview').src.includes('view=ndvi')")
                wait_until(page, "document.getElementById('preview').complete")
                assert img.evaluate("i => i.naturalWidth") == SIZE
                assert page.locator("#ndvi-legend").is_visible()
                page.screenshot(path=str(shots / f"predict-crop-health-ndvi-{size_name}.png"), full_page=True)

                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= size["width"], f"the predict page is {width} px wide at {size['width']} px"
                page.close()
        finally:
            browser.close()
    assert not errors, errors
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in requested if not u.startswith("blob:"))


def test_a_refusal_is_one_readable_line(served: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"hello\n")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP)
            page.goto(served.url + "/predict?pipeline=species-id")
            page.set_input_files("#file", str(not_an_image))
            page.wait_for_selector("#status.error", timeout=15_000)
            status = page.locator("#status")
            assert status.inner_text() == (
                "Not accepted: not a JPEG, PNG or TIFF image (it looks like a text file)"
                " — send a JPEG, PNG or (Geo)TIFF file (unsupported_format)"
            )
            assert status.get_attribute("data-reason") == "unsupported_format"
            page.screenshot(path=str(shots_dir(tmp_path) / "predict-refused-desktop.png"))
            # an unknown pipeline in the link: the 404 page names the way on
            response = page.goto(served.url + "/predict?pipeline=nope")
            assert response is not None and response.status == 404
        finally:
            browser.close()
