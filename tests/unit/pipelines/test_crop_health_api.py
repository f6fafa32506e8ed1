"""Crop health through the HTTP API and ``keeneye predict``: the geo part, ?crs=native, --geojson,
--band-map, and the refusals (wrong band count, a header too large) with their status codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keeneye.settings import Settings
from tests.serving_support import LiveServer, live_server

from .crop_support import geotiff_bytes, huge_header_geotiff, micasense_field, register_crop_model

URL = "/v1/pipelines/crop-health/predict"
FIELD = micasense_field(256, 320, blight=(40, 60, 50, 70))
BLIGHT_HA = 50 * 70 * 0.05 * 0.05 / 10_000  # 3,500 px of 0.05 m


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("crop")
    settings = Settings(home=tmp / "home")
    register_crop_model(settings, tmp)
    with live_server(settings) as server:
        yield server


def _post(server: LiveServer, data: bytes, metadata: dict[str, object], **params: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}{URL}",
        params=params,
        files={"file": ("field.tif", data, "image/tiff")},
        data={"metadata": json.dumps(metadata)},
        timeout=60,
    )


def _disease(geo: dict[str, object]) -> list[dict[str, object]]:
    zones = geo["zones"]
    assert isinstance(zones, dict)
    return [f for f in zones["features"] if f["properties"]["kind"] == "disease"]


def test_the_api_answers_the_geo_part_in_wgs84_and_native_on_request(served: LiveServer) -> None:
    data = geotiff_bytes(FIELD)
    r = _post(served, data, {"band_map": "micasense-rededge-mx", "field": "A7"})
    assert r.status_code == 200, r.text
    body = r.json()
    geo = body["geo"]
    assert geo["crs"] == "EPSG:32633" and geo["zones_crs"] == "EPSG:4326" and geo["georeferenced"]
    assert geo["model"] == {"ran": True, "reason": None, "missing_bands": [], "tiles": 12, "tile_size": 128}
    assert set(geo["indices"]) == {"ndvi", "ndre", "gndvi"}
    (blight,) = _disease(geo)
    assert blight["properties"]["class"] == "blight"
    assert blight["properties"]["area_ha"] == pytest.approx(BLIGHT_HA, rel=1e-3)
    lon, lat = blight["geometry"]["coordinates"][0][0]
    assert 14.99 < lon < 15.01 and 49.6 < lat < 49.7
    assert body["count"] == 1 and body["instances"][0]["area_px"] == 3500.0

    native = _post(served, data, {"band_map": "micasense-rededge-mx", "field": "A7"}, crs="native")
    assert native.status_code == 200, native.text
    n = native.json()
    assert n["cached"] is False  # another CRS is another answer, not the WGS84 one from the cache
    assert n["geo"]["zones_crs"] == "EPSG:32633"
    x, y = _disease(n["geo"])[0]["geometry"]["coordinates"][0][0]
    assert 500_000 < x < 500_020 and 5_499_980 < y < 5_500_000
    again = _post(served, data, {"band_map": "micasense-rededge-mx", "field": "A7"}, crs="native")
    assert again.json()["cached"] is True and again.json()["geo"] == n["geo"]

    stored = httpx.get(f"{served.url}/v1/observations/{n['observation_id']}").json()
    assert stored["metadata"] == {"band_map": "micasense-rededge-mx", "field": "A7", "crs": "native"}
    assert stored["result"]["geo"]["zones_crs"] == "EPSG:32633"


def test_the_api_refuses_with_the_reason(served: LiveServer) -> None:
    four = _post(
        served, geotiff_bytes(micasense_field(32, 32, bands=4)), {"band_map": "micasense-rededge-mx"}
    )
    assert four.status_code == 422
    assert four.json()["reason"] == "wrong_band_count"
    assert four.json()["detail"] == (
        "the image has 4 data bands; preset micasense-rededge-mx (blue,green,red,nir,red_edge) names 5"
    )
    huge = _post(served, huge_header_geotiff(), {"band_map": "micasense-rededge-mx"})
    assert huge.status_code == 413
    assert huge.json()["reason"] == "image_too_large"
    bad_crs = _post(served, geotiff_bytes(FIELD), {"band_map": "micasense-rededge-mx"}, crs="mercator")
    assert bad_crs.status_code == 400 and bad_crs.json()["reason"] == "bad_crs"


def test_predict_cli_writes_the_zones_geojson(tmp_path: Path) -> None:
    home = tmp_path / "home"
    register_crop_model(Settings(home=home), tmp_path)
    image = tmp_path / "field.tif"
    image.write_bytes(geotiff_bytes(FIELD))
    zones = tmp_path / "zones.geojson"
    env = {**os.environ, "KEENEYE_HOME": str(home), "COLUMNS": "200"}
    base = [sys.executable, "-m", "keeneye", "predict", "-p", "crop-health", "--json", str(image)]
    out = subprocess.run(
        [*base, "--band-map", "micasense-rededge-mx", "--geojson", str(zones)],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (result,) = json.loads(out.stdout)
    assert result["geo"]["crs"] == "EPSG:32633" and result["geo"]["zones_crs"] == "EPSG:4326"
    written = json.loads(zones.read_text())
    assert written == result["geo"]["zones"] and written["type"] == "FeatureCollection"
    (blight,) = [f for f in written["features"] if f["properties"]["kind"] == "disease"]
    assert blight["properties"]["area_ha"] == pytest.approx(BLIGHT_HA, rel=1e-3)

    native = subprocess.run(
        [*base, "--band-map", "blue,green,red,nir,red_edge", "--crs", "native", "--geojson", str(zones)],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert native.returncode == 0, native.stderr
    written = json.loads(zones.read_text())
    assert written["crs"] == {"type": "name", "properties": {"name": "EPSG:32633"}}
