"""The models page's evaluation report in headless Chromium, against reports logged the way
``keeneye train`` logs them (``tests/unit/serving/evaluation_support.py``: known numbers).

A species-id version (classify): the gates with their thresholds, metrics per class with AP, the PR
curve drawn by uPlot (one series per class, pixels on its canvas), the confusion matrix cells with
their counts, the data version and splits. A line-inspection version (segment, OK/DEFECT): the
image-level matrix and pixel IoU. A version without a report says so. At 390 px the report fits the
phone. Screenshots at 1280 and 390 px go to ``$KEENEYE_TEST_SHOTS`` (default: the tmp dir).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keeneye.settings import Settings
from tests.e2e.test_shell import DESKTOP, PHONE, _chromium, _shots
from tests.e2e.test_web import ARGS, CHROMIUM
from tests.serving_support import LiveServer, live_server, register_species_model
from tests.unit.serving.evaluation_support import register_evaluated

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
]


@dataclass
class Site:
    server: LiveServer
    species: str
    bare: str
    line: str


@pytest.fixture
def site(settings: Settings, tmp_path: Path) -> Iterator[Site]:
    species = register_evaluated(settings, tmp_path, "species-id", data_version="d-species").version
    bare = register_species_model(settings, tmp_path, seed=3, alias="champion")
    line = register_evaluated(settings, tmp_path, "line-inspection").version
    with live_server(settings) as server:
        yield Site(server, species, bare, line)


def _open_report(page: Any, pipeline: str, version: str, times: int) -> Any:
    page.locator(f"button.report-open[data-pipeline='{pipeline}'][data-report='{version}']").click()
    page.wait_for_selector(f"#report-{pipeline}[data-loaded='{times}']")
    return page.locator(f"#report-{pipeline}")


def _inked_pixels(page: Any, selector: str) -> int:
    """Pixels of the chart's canvas that are neither blank nor grey (the coloured curves)."""
    return int(
        page.evaluate(
            """(sel) => {
              const c = document.querySelector(sel);
              const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 0; i < px.length; i += 4) {
                const [r, g, b, a] = [px[i], px[i + 1], px[i + 2], px[i + 3]];
                if (a > 200 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
              }
              return n;
            }""",
            selector,
        )
    )


def test_a_versions_report_draws_gates_classes_curve_and_matrix(site: Site, tmp_path: Path) -> None:
    _chromium()
    from playwright.sync_api import sync_playwright

    shots = _shots(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport=DESKTOP)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(site.server.url + "/models")
            report = _open_report(page, "species-id", site.species, 1)
            assert report.locator("h3").first.inner_text() == f"Evaluation report of v{site.species}"
            data = report.locator(".report-data").inner_text()
            assert "Test split: 10 images" in data and "data version d-species" in data
            assert "train 70 / val 15 / test 10" in data

            gates = report.locator(".gates-table tbody tr")
            assert gates.count() == 2
            accuracy = report.locator(".gates-table tr[data-metric='accuracy']").inner_text().split("\t")
            assert accuracy == ["accuracy", "floor", "0.700", "0.800", "fail"]
            assert report.locator(".report-gates .badge.gates").inner_text() == "failed"

            trout = report.locator(".classes-table tr[data-class='salmo_trutta']").inner_text().split("\t")
            assert trout == ["salmo_trutta", "0.667", "0.667", "0.667", "0.917", "3"]
            bream = report.locator(".classes-table tr[data-class='abramis_brama'] td.average_precision")
            assert bream.inner_text() == "0.100"
            assert report.locator(".classes-table thead th").all_inner_texts() == [
                "Class", "Precision", "Recall", "F1", "AP", "Images",
            ]  # fmt: skip

            # The PR curve: a uPlot canvas with one series per class, and ink on it.
            canvas = "#report-species-id .pr-chart canvas"
            assert page.locator(canvas).count() == 1
            legend = report.locator(".pr-chart .u-legend .u-series").all_inner_texts()
            assert [t.strip() for t in legend] == [
                "salmo_trutta (AP 0.92)",
                "esox_lucius (AP 0.56)",
                "perca_fluviatilis (AP 1.00)",
                "sander_lucioperca (AP 1.00)",
                "abramis_brama (AP 0.10)",
            ]
            assert _inked_pixels(page, canvas) > 500

            def cell(truth: str, predicted: str) -> str:
                sel = f"table.confusion td[data-truth='{truth}'][data-predicted='{predicted}']"
                return str(report.locator(sel).inner_text())

            assert cell("salmo_trutta", "salmo_trutta") == "2"
            assert cell("salmo_trutta", "esox_lucius") == "1"
            assert cell("abramis_brama", "sander_lucioperca") == "1"
            assert cell("abramis_brama", "abramis_brama") == "0"
            assert report.locator("table.confusion td.cell").count() == 25
            report.screenshot(path=str(shots / "models-report-species-desktop.png"))

            # A version registered without training has no report; the page says why.
            report = _open_report(page, "species-id", site.bare, 2)
            assert "has no evaluation report" in report.locator(".report-error").inner_text()

            # line-inspection: frames counted OK / DEFECT; the defect's pixel IoU.
            report = _open_report(page, "line-inspection", site.line, 1)
            assert (
                report.locator("table.confusion td[data-truth='DEFECT'][data-predicted='OK']").inner_text()
                == "2"
            )
            assert (
                report.locator("table.confusion td[data-truth='OK'][data-predicted='OK']").inner_text() == "4"
            )
            defect = report.locator(".classes-table tr[data-class='defect']").inner_text().split("\t")
            assert defect[0] == "defect" and defect[-1] == "128"  # pixels of eight 4×4 squares
            assert "IoU" in report.locator(".classes-table thead").inner_text()
            assert _inked_pixels(page, "#report-line-inspection .pr-chart canvas") > 200
            # The seed's quality targets are reported beside the gates, met or missed, never "fail".
            targets = report.locator(".gates-table tr[data-kind='target']")
            rows = {r.split("\t")[0]: r.split("\t")[1:] for r in targets.all_inner_texts()}
            assert rows["recall"][0] == "target (reported, not blocking)" and rows["recall"][2:] == [
                "0.965",
                "missed",
            ]
            assert rows["precision"][2:] == ["0.982", "met"]  # 6 of 6 frames called DEFECT were
            page.screenshot(path=str(shots / "models-report-desktop.png"), full_page=True)
            report.locator("button.report-close").click()
            assert report.is_hidden()

            phone = browser.new_page(viewport=PHONE)
            phone.on("pageerror", lambda exc: errors.append(str(exc)))
            phone.goto(f"{site.server.url}/models?report=species-id:{site.species}")
            phone.wait_for_selector("#report-species-id[data-loaded='1']")
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"the models page is {width} px wide on a phone"
            box = phone.locator("#report-species-id .pr-chart canvas").bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
            phone.locator("#report-species-id").screenshot(path=str(shots / "models-report-phone.png"))
            assert not errors, errors
        finally:
            browser.close()
