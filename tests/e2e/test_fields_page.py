"""The agronomist's pages in headless Chromium against a live server with a real (tiny) crop-health
model and two flights through the predict API: the fields list, the field map (boundary, NDVI
overlay, zone polygons), a zone's popup showing the API's hectares, the flight picker, the trend chart
and the three downloads (GeoJSON parses, the Shapefile zip holds .shp/.shx/.dbf/.prj, the COG opens).
Screenshots go to ``$KEENEYE_TEST_SHOTS`` (default: the test's tmp dir)."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import rasterio

from keeneye.settings import Settings
from tests.e2e.test_web import ARGS, CHROMIUM, wait_until
from tests.services import unavailable
from tests.serving_support import live_server
from tests.unit.pipelines.crop_support import register_crop_model
from tests.unit.serving.test_index_maps import seed

pytestmark = pytest.mark.e2e


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("KEENEYE_TEST_SHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_the_fields_pages_show_map_zones_trend_and_downloads(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("Debian chromium is not installed (make browser)")
    from playwright.sync_api import sync_playwright

    settings = Settings(home=tmp_path / "home")
    register_crop_model(settings, tmp_path)
    shots = _shots(tmp_path)
    with live_server(settings) as server, sync_playwright() as p:
        seeded = seed(server)
        history = httpx.get(f"{server.url}/v1/fields/a/history").json()["flights"]
        listed = {f["id"]: f for f in httpx.get(f"{server.url}/v1/fields").json()["fields"]}
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
            requested: list[str] = []
            errors: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # the list: both fields, their area, flights and the latest NDVI mean
            page.goto(server.url + "/fields")
            assert (
                page.locator("header.shell nav a[aria-current='page']").get_attribute("data-nav") == "fields"
            )
            row = page.locator("tr[data-field='a']")
            assert row.locator("td").nth(2).inner_text() == f"{listed['a']['area_ha']:.2f}"
            assert row.locator("td").nth(3).inner_text() == "2"
            assert row.locator("td").nth(4).inner_text() == "f2"
            assert row.locator("[data-ndvi]").inner_text() == f"{history[-1]['indices']['ndvi']['mean']:.3f}"
            assert page.locator("tr[data-field='b'] td").nth(3).inner_text() == "0"
            page.screenshot(path=str(shots / "fields-list.png"), full_page=True)

            # the field: map with boundary, NDVI overlay and zones of the latest flight
            page.locator("tr[data-field='a'] a").click()
            page.wait_for_selector("#field[data-loaded]", timeout=20_000)
            assert page.locator("#field").get_attribute("data-flight") == "f2"
            assert page.locator("#map.leaflet-container").count() == 1
            assert page.locator("#map path").count() >= 3  # boundary + vigour + disease
            overlay = page.locator("img.ndvi-overlay")
            overlay.wait_for(timeout=10_000)
            overlay.evaluate("img => img.decode()")  # loaded (slowly on a busy machine) and decoded
            assert page.evaluate("document.querySelector('img.ndvi-overlay').naturalWidth") > 0
            assert page.locator("#trend canvas").count() >= 1
            assert page.locator("#trend").get_attribute("data-points") == "2"
            assert page.locator("#flight option").count() == 2
            # the layers control lists the three overlays, each with its checkbox, all shown
            entries = page.locator("#map .leaflet-control-layers-overlays label")
            assert [t.strip() for t in entries.all_inner_texts()] == ["Vigour zones", "Disease zones", "NDVI"]
            assert page.locator("#map .leaflet-control-layers-selector:checked").count() == 3

            # click the disease zone: its popup shows the API's hectares
            disease = [z for z in history[-1]["zones"]["features"] if z["properties"]["kind"] == "disease"]
            assert len(disease) == 1
            page.locator("#map path[data-kind='disease']").click()
            popup = page.locator(".leaflet-popup .zone-popup")
            popup.wait_for(timeout=5_000)
            assert (
                popup.locator("dd[data-key='hectares']").inner_text()
                == f"{disease[0]['properties']['area_ha']:.4f}"
            )
            assert "blight" in popup.inner_text()
            page.screenshot(path=str(shots / "field-map-f2.png"), full_page=True)

            # downloads
            with page.expect_download() as dl:
                page.locator("#dl-geojson").click()
            rx = json.loads(Path(dl.value.path()).read_text())
            assert rx["type"] == "FeatureCollection" and len(rx["features"]) == 1
            assert rx["features"][0]["properties"]["class"] == "blight"
            with page.expect_download() as dl:
                page.locator("#dl-shapefile").click()
            with zipfile.ZipFile(dl.value.path()) as zf:
                assert {Path(n).suffix for n in zf.namelist()} >= {".shp", ".shx", ".dbf", ".prj"}
            with page.expect_download() as dl:
                page.locator("#dl-cog").click()
            assert dl.value.suggested_filename == f"{seeded.observations['f2']}-ndvi.tif"
            with rasterio.open(io.BytesIO(Path(dl.value.path()).read_bytes())) as ds:
                assert ds.crs.to_epsg() == 32633 and ds.count == 1

            # the first flight: a smaller disease zone
            page.select_option("#flight", "f1")
            wait_until(page, "document.querySelector('#field').dataset.flight === 'f1'")
            first = [z for z in history[0]["zones"]["features"] if z["properties"]["kind"] == "disease"]
            assert page.locator("#map path[data-kind='disease']").get_attribute("data-ha") == str(
                first[0]["properties"]["area_ha"]
            )
            assert "flight=f1" in (page.locator("#dl-geojson").get_attribute("href") or "")
            page.screenshot(path=str(shots / "field-map-f1.png"), full_page=True)

            # a field without flights: nothing to switch, so no layers control (no empty white box)
            page.goto(server.url + "/fields/b")
            page.wait_for_selector("#field[data-loaded]", timeout=20_000)
            assert page.locator("#map path").count() == 1  # its boundary
            page.screenshot(path=str(shots / "field-no-flight.png"), full_page=True)
            assert page.locator("#map .leaflet-control-layers").count() == 0
            # … its panels say so instead of an empty table and a blank chart area
            assert page.locator("#flight-table td.empty").inner_text() == "no flight yet"
            assert page.locator("#trend").is_hidden() and page.locator("#trend-empty").is_visible()

            # an unknown field: the shell's 404 page
            missing = page.goto(server.url + "/fields/nope")
            assert missing is not None and missing.status == 404
            page.wait_for_selector("#not-found")

            # a phone: nothing wider than the screen
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.goto(server.url + "/fields/a")
            phone.wait_for_selector("#field[data-loaded]", timeout=20_000)
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390
            phone.screenshot(path=str(shots / "field-phone.png"), full_page=True)
            assert not errors, errors
            assert all(
                urlsplit(u).hostname in ("127.0.0.1", None) for u in requested if not u.startswith("blob:")
            ), requested
        finally:
            browser.close()
