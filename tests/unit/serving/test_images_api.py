"""Stored images rendered for a browser: a crop-health GeoTIFF as colour-infrared and NDVI PNGs."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import pytest

from keeneye.settings import Settings
from keeneye.store import open_object_store, open_results_db
from tests.serving_support import LiveServer, live_server, tiff
from tests.unit.imaging.test_render import ROW
from tests.unit.lifecycle.support import Stored, png_bytes, store_answer

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

# Rendering a picture can take seconds while other tests saturate the cores (httpx waits 5 s).
TIMEOUT = 30.0
RESULT = {"task": "segment", "instances": [], "count": 0, "confidence": None}


@pytest.fixture
def stored(settings: Settings) -> dict[str, Stored]:
    db, objects = open_results_db(settings), open_object_store(settings)
    # crop-health's band map is nir, red_edge, red, green: a planar 4-band uint16 TIFF
    planar = np.ascontiguousarray(np.moveaxis(np.asarray([ROW], dtype=np.uint16), -1, 0))
    four = tiff(planar, photometric="minisblack")
    five = tiff(np.full((5, 2, 2), 7, np.uint16), photometric="minisblack")
    return {
        "crop": store_answer(db, objects, "crop-health", RESULT, four, fmt="tiff"),
        "line": store_answer(db, objects, "line-inspection", RESULT, png_bytes(3)),
        # five bands where the spec names four: shown anyway, the bands numbered
        "odd": store_answer(db, objects, "crop-health", RESULT, five, fmt="tiff"),
    }


@pytest.fixture
def server(settings: Settings, stored: dict[str, Stored]) -> Iterator[LiveServer]:
    with live_server(settings, poll_aliases=False) as live:
        yield live


def _rgba(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    bgra = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)


def test_a_geotiff_renders_as_colour_infrared_and_ndvi(server: LiveServer, stored: dict[str, Stored]) -> None:
    url = f"{server.url}/v1/observations/{stored['crop'].observation_id}/image.png"
    auto = httpx.get(url, timeout=TIMEOUT)
    assert auto.headers["x-keeneye-view"] == "cir"
    assert auto.headers["cache-control"] == "private, max-age=86400, immutable"
    rgba = _rgba(auto)
    assert rgba.shape == (1, 7, 4)
    assert rgba[0, :, 3].tolist() == [0, 255, 255, 255, 255, 255, 255]  # all-zero pixel: no data
    ndvi = _rgba(httpx.get(url, params={"view": "ndvi"}, timeout=TIMEOUT))
    assert [tuple(int(v) for v in px) for px in ndvi[0]][1:3] == [(166, 217, 106, 255), (244, 109, 67, 255)]
    assert ndvi[0, 6, 3] == 0  # NDVI undefined where nir + red = 0
    refused = httpx.get(url, params={"view": "rgb"}, timeout=TIMEOUT)
    assert refused.status_code == 422
    assert refused.json() == {
        "reason": "wrong_band_count",
        "detail": "the rgb view needs bands red, green, blue; the image has nir, red_edge, red, green",
        "fix": "ask for view=auto, or name the bands in the pipeline's band_map",
    }
    assert httpx.get(url, params={"view": "infrared"}, timeout=TIMEOUT).status_code == 422  # not a view


def test_photos_other_cameras_and_missing_observations(server: LiveServer, stored: dict[str, Stored]) -> None:
    line = httpx.get(
        f"{server.url}/v1/observations/{stored['line'].observation_id}/image.png", timeout=TIMEOUT
    )
    assert line.headers["x-keeneye-view"] == "rgb"
    expected = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(png_bytes(3), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    rgba = _rgba(line)
    np.testing.assert_array_equal(rgba[:, :, :3], expected)  # an 8-bit photo keeps its pixels
    assert (rgba[:, :, 3] == 255).all()
    small = _rgba(
        httpx.get(
            f"{server.url}/v1/observations/{stored['line'].observation_id}/image.png?size=16", timeout=TIMEOUT
        )
    )
    assert small.shape == (16, 16, 4)
    odd = httpx.get(f"{server.url}/v1/observations/{stored['odd'].observation_id}/image.png", timeout=TIMEOUT)
    assert odd.headers["x-keeneye-view"] == "gray"
    missing = httpx.get(f"{server.url}/v1/observations/{'0' * 32}/image.png", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["reason"] == "not_found"
