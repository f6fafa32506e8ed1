"""A multi-file capture through the API: several ``file`` fields or one zip, stacked in band order;
unsafe zips and mismatched bands refused with their reasons."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio

from keeneye.settings import Settings
from tests.serving_support import LiveServer, live_server
from tests.unit.geo.rasters import UTM33, UTM_TRANSFORM

from .crop_support import micasense_field, register_crop_model

URL = "/v1/pipelines/crop-health/predict"
FIELD = micasense_field(256, 320, blight=(40, 60, 50, 70))
META = {"metadata": json.dumps({"band_map": "micasense-rededge-mx"})}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("capture")
    settings = Settings(home=tmp / "home")
    register_crop_model(settings, tmp)
    with live_server(settings) as server:
        yield server


def _band_tif(band: np.ndarray[Any, Any]) -> bytes:
    with rasterio.MemoryFile() as mem:
        with mem.open(
            driver="GTiff", height=band.shape[0], width=band.shape[1], count=1, dtype=band.dtype.name,
            crs=UTM33, transform=UTM_TRANSFORM,
        ) as ds:  # fmt: skip
            ds.write(band, 1)
        return bytes(mem.read())


BANDS = {f"IMG_0007_{k + 1}.tif": _band_tif(FIELD[k]) for k in range(5)}


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def _post_files(server: LiveServer, files: list[tuple[str, bytes]]) -> httpx.Response:
    parts = [("file", (name, data, "image/tiff")) for name, data in files]
    return httpx.post(f"{server.url}{URL}", files=parts, data=META, timeout=60)


def test_five_band_files_in_one_request_or_one_zip_answer_as_the_stack(served: LiveServer) -> None:
    shuffled = [
        (n, BANDS[n])
        for n in ("IMG_0007_4.tif", "IMG_0007_1.tif", "IMG_0007_5.tif", "IMG_0007_3.tif", "IMG_0007_2.tif")
    ]
    r = _post_files(served, shuffled)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"]["bands"] == ["blue", "green", "red", "nir", "red_edge"]
    assert (body["image"]["width"], body["image"]["height"]) == (320, 256)
    (blight,) = [
        f["properties"] for f in body["geo"]["zones"]["features"] if f["properties"]["kind"] == "disease"
    ]
    assert blight["area_px"] == 3500 and body["geo"]["crs"] == "EPSG:32633"
    # the same files in another order are the same bytes once packed: answered from the cache
    again = _post_files(served, sorted(shuffled))
    assert again.json()["cached"] is True
    capture = _zip({f"IMG_0007/{n}": d for n, d in BANDS.items()})
    zipped = httpx.post(
        f"{served.url}{URL}",
        files={"file": ("capture.zip", capture, "application/zip")},
        data=META,
        timeout=60,
    )
    assert zipped.status_code == 200, zipped.text
    assert zipped.json()["geo"]["indices"] == body["geo"]["indices"]


def test_unsafe_zips_and_mismatched_bands_are_refused_with_the_reason(served: LiveServer) -> None:
    def post_zip(data: bytes) -> httpx.Response:
        return httpx.post(
            f"{served.url}{URL}", files={"file": ("c.zip", data, "application/zip")}, data=META, timeout=60
        )

    slip = post_zip(_zip({**BANDS, "../../evil.tif": b"x"}))
    assert slip.status_code == 422 and slip.json()["reason"] == "zip_unsafe_path"
    assert "'../../evil.tif' would be written outside" in slip.json()["detail"]
    bomb = post_zip(_zip({"IMG_0007_1.tif": b"\0" * (20 * 1024 * 1024)}, zipfile.ZIP_DEFLATED))
    assert bomb.status_code == 413 and bomb.json()["reason"] == "zip_bomb"
    many = post_zip(_zip({f"IMG_{i}_1.tif": b"x" for i in range(40)}))
    assert many.status_code == 422 and many.json()["reason"] == "zip_too_many_members"
    odd = {**BANDS, "IMG_0007_5.tif": _band_tif(FIELD[4, :128, :160])}
    mismatch = _post_files(served, list(odd.items()))
    assert mismatch.status_code == 422 and mismatch.json()["reason"] == "capture_mismatch"
    assert mismatch.json()["detail"].startswith(
        "IMG_0007_5.tif is 160×128 px uint16; IMG_0007_1.tif is 320×256"
    )
    four = _post_files(served, list(BANDS.items())[:4])
    assert four.status_code == 422 and four.json()["reason"] == "wrong_band_count"
    other = httpx.post(
        f"{served.url}/v1/pipelines/species-id/predict",
        files=[
            ("file", ("a.jpg", b"\xff\xd8\xff", "image/jpeg")),
            ("file", ("b.jpg", b"\xff\xd8\xff", "image/jpeg")),
        ],
        timeout=60,
    )
    assert other.status_code == 400 and other.json()["reason"] == "bad_request"
