"""``/v1/observations/{id}/index/{name}.tif|.png`` on a live server with a real (tiny) crop-health
model: the COG holds exactly the NDVI numpy computes from the bands, in the raster's CRS and grid;
the PNG overlay is false colour warped to Web Mercator with bounds that match the raster's footprint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import httpx
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from keeneye.settings import Settings
from tests.serving_support import LiveServer, live_server
from tests.unit.fields.support import FIELD_A, FIELD_B, HEIGHT, TRANSFORM_1M, WIDTH
from tests.unit.pipelines.crop_support import (
    MICASENSE,
    MICASENSE_SCALE,
    geotiff_bytes,
    micasense_field,
    register_crop_model,
)

MICA = "micasense-rededge-mx"
# Two flights over field A: the blight (red 0.8, what the tiny model flags) grows from 0.35 to 0.96 ha.
FLIGHTS = (("f1", (40, 60, 50, 70)), ("f2", (40, 60, 80, 120)))


@dataclass
class Seeded:
    server: LiveServer
    observations: dict[str, str]  # flight → observation id


def seed(server: LiveServer) -> Seeded:
    """Fields A and B, and two flights over A through the predict API."""
    for fid, name, boundary in (("a", "Field A", FIELD_A), ("b", "Field B", FIELD_B)):
        r = httpx.post(
            f"{server.url}/v1/fields",
            json={"id": fid, "name": name, "crop": "wheat", "boundary": boundary},
        )
        assert r.status_code == 201, r.text
    observations = {}
    for i, (flight, blight) in enumerate(FLIGHTS):
        data = geotiff_bytes(micasense_field(HEIGHT, WIDTH, blight=blight), transform=TRANSFORM_1M)
        meta = {"band_map": MICA, "flight": flight, "observed_at": f"2026-06-{1 + 10 * i:02d}T08:00:00Z"}
        r = httpx.post(
            f"{server.url}/v1/pipelines/crop-health/predict",
            files={"file": ("flight.tif", data, "image/tiff")},
            data={"metadata": json.dumps(meta)},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        observations[flight] = r.json()["observation_id"]
    return Seeded(server, observations)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("index-maps")
    settings = Settings(home=tmp / "home")
    register_crop_model(settings, tmp)
    with live_server(settings) as server:
        yield seed(server)


def _ndvi() -> np.ndarray:
    stack = micasense_field(HEIGHT, WIDTH, blight=FLIGHTS[1][1]).astype(np.float64) / MICASENSE_SCALE
    nir, red = stack[MICASENSE.index("nir")], stack[MICASENSE.index("red")]
    return (nir - red) / (nir + red)


def test_the_cog_is_the_ndvi_numpy_computes_in_the_rasters_grid(seeded: Seeded) -> None:
    obs = seeded.observations["f2"]
    r = httpx.get(f"{seeded.server.url}/v1/observations/{obs}/index/ndvi.tif", timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/tiff")
    assert f'filename="{obs}-ndvi.tif"' in r.headers["content-disposition"]
    with rasterio.MemoryFile(r.content) as mem, mem.open() as ds:
        assert (ds.count, ds.height, ds.width, ds.dtypes[0]) == (1, HEIGHT, WIDTH, "float32")
        assert ds.crs.to_epsg() == 32633 and ds.transform == TRANSFORM_1M
        assert ds.descriptions[0] == "ndvi"
        values = ds.read(1)
    np.testing.assert_allclose(values, _ndvi(), atol=1e-5)
    path = seeded.server.settings.home / "ndvi-check.tif"
    path.write_bytes(r.content)
    valid, errors, _ = cog_validate(str(path), quiet=True)
    assert valid, errors


def test_the_png_overlay_lies_on_the_rasters_footprint_in_false_colour(seeded: Seeded) -> None:
    obs = seeded.observations["f1"]
    r = httpx.get(f"{seeded.server.url}/v1/observations/{obs}/index/ndvi.png", params={"size": 160})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    south, west, north, east = (float(v) for v in r.headers["x-keeneye-bounds"].split(","))
    left, top = TRANSFORM_1M @ (0, 0)
    right, bottom = TRANSFORM_1M @ (WIDTH, HEIGHT)
    w, s, e, n = transform_bounds("EPSG:32633", "EPSG:4326", left, bottom, right, top)
    deg = 3e-5  # about 2 m: a pixel of the warped grid
    assert (south, west, north, east) == pytest.approx((s, w, n, e), abs=deg)
    rgba = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA
    )
    assert max(rgba.shape[:2]) == 160
    assert (rgba[..., 3] == 255).mean() > 0.95  # every pixel of the raster is valid
    mid = rgba.shape[0] // 2
    west_px, east_px = rgba[mid, 2, :3].astype(int), rgba[mid, -3, :3].astype(int)
    # NDVI rises west (0.33) → east (0.85): yellow → green through the page's colour map
    assert west_px[0] >= west_px[1] - 5 and east_px[1] > east_px[0] + 60


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/v1/observations/nope/index/ndvi.tif", 404, None),
        ("/v1/observations/{obs}/index/nosuch.tif", 404, None),
        ("/v1/observations/{obs}/index/ndvi.png?size=4", 422, None),
    ],
)
def test_refusals(seeded: Seeded, path: str, status: int, reason: str | None) -> None:
    r = httpx.get(seeded.server.url + path.format(obs=seeded.observations["f1"]))
    assert r.status_code == status, r.text
    if reason is not None:
        assert r.json()["reason"] == reason
