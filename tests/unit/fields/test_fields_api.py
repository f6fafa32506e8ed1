"""``/v1/fields`` on a live server with a real crop-health model: register, predict (the answer joins
its field as it is stored), history, prescription as GeoJSON and Shapefile, the exact JSON shapes and
the refusals."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import httpx
import pytest
import shapefile

from keeneye.settings import Settings
from tests.serving_support import LiveServer, live_server
from tests.unit.pipelines.crop_support import geotiff_bytes, micasense_field, register_crop_model

from .support import FIELD_A, FIELD_B, HEIGHT, TRANSFORM_1M, WIDTH

FIELD_KEYS = {"id", "name", "crop", "sowing_date", "area_ha", "boundary", "flights", "last_flight"}
FLIGHT_KEYS = {"flight", "observed_at", "observation_id", "indices", "disease_ha", "vigour_ha", "zones"}
MICA = "micasense-rededge-mx"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("fields")
    settings = Settings(home=tmp / "home")
    register_crop_model(settings, tmp)
    with live_server(settings) as server:
        yield server


def _predict(server: LiveServer, data: bytes, metadata: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/pipelines/crop-health/predict",
        files={"file": ("flight.tif", data, "image/tiff")},
        data={"metadata": json.dumps(metadata)},
        timeout=60,
    )


def test_fields_over_http(served: LiveServer) -> None:
    base = f"{served.url}/v1/fields"
    created = httpx.post(
        base,
        json={
            "id": "a",
            "name": "Field A",
            "crop": "wheat",
            "sowing_date": "2025-10-05",
            "boundary": FIELD_A,
        },
    )
    assert created.status_code == 201, created.text
    assert set(created.json()) == FIELD_KEYS | {"bbox"}
    assert httpx.post(base, json={"id": "b", "name": "Field B", "boundary": FIELD_B}).status_code == 201
    taken = httpx.post(base, json={"id": "a", "name": "again", "boundary": FIELD_A})
    assert (taken.status_code, taken.json()["reason"]) == (409, "field_exists")

    # two flights of the raster; the blight (red 0.8, what the tiny model flags) lies in field A
    sick = geotiff_bytes(micasense_field(HEIGHT, WIDTH, blight=(40, 60, 50, 70)), transform=TRANSFORM_1M)
    healthy = geotiff_bytes(micasense_field(HEIGHT, WIDTH), transform=TRANSFORM_1M)
    r1 = _predict(served, healthy, {"band_map": MICA, "flight": "f1", "observed_at": "2026-06-01T08:00:00Z"})
    r2 = _predict(served, sick, {"band_map": MICA, "flight": "f2", "observed_at": "2026-06-15T08:00:00Z"})
    assert r1.status_code == 200 and r2.status_code == 200, r2.text

    listed = httpx.get(base).json()
    assert list(listed) == ["fields"]
    by_id = {f["id"]: f for f in listed["fields"]}
    assert set(by_id["a"]) == FIELD_KEYS
    assert (by_id["a"]["flights"], by_id["a"]["last_flight"], by_id["a"]["sowing_date"]) == (
        2,
        "f2",
        "2025-10-05",
    )
    assert (by_id["b"]["flights"], by_id["b"]["last_flight"]) == (0, None)  # A overlaps more of the image
    assert by_id["a"]["boundary"]["type"] == "Polygon"

    one = httpx.get(f"{base}/a").json()
    assert set(one) == FIELD_KEYS | {"bbox"}
    x0, y0, x1, y1 = one["bbox"]
    assert 14.99 < x0 < x1 < 15.01 and 49.6 < y0 < y1 < 49.7

    history = httpx.get(f"{base}/a/history").json()
    assert set(history) == {"field_id", "flights"} and history["field_id"] == "a"
    assert [f["flight"] for f in history["flights"]] == ["f1", "f2"]
    f1, f2 = history["flights"]
    assert set(f2) == FLIGHT_KEYS
    assert f2["observation_id"] == r2.json()["observation_id"]
    assert set(f2["indices"]) == {"ndvi", "ndre", "gndvi"}
    assert set(f2["indices"]["ndvi"]) == {"mean", "p10", "p50", "p90"}
    assert f1["disease_ha"] == {} and f2["disease_ha"]["blight"] == pytest.approx(0.35, rel=3e-3)
    assert f2["zones"]["type"] == "FeatureCollection"
    disease = [z for z in f2["zones"]["features"] if z["properties"]["kind"] == "disease"]
    assert len(disease) == 1
    assert set(disease[0]["properties"]) == {"kind", "class", "severity", "confidence", "area_ha"}
    assert disease[0]["properties"]["severity"] == 1.0  # red 0.8 > NIR: no vegetation signal left

    rx = httpx.get(f"{base}/a/prescription", params={"flight": "f2"})
    assert rx.status_code == 200 and rx.headers["content-type"] == "application/geo+json"
    (zone,) = rx.json()["features"]
    assert zone["properties"]["rate"] == 150.0  # round(100 × (0.5 + 1.0), 1)
    # 50 × 70 m buffered by 5 m: 3,500 + 2·(50 + 70)·5 + π·5² m² (geodesic: × 1/k0²)
    assert zone["properties"]["area_ha"] * 10_000 == pytest.approx(
        (3500 + 1200 + 78.54) / 0.9996**2, rel=3e-3
    )
    shp = httpx.get(f"{base}/a/prescription", params={"flight": "f2", "format": "shapefile"})
    assert shp.status_code == 200 and shp.headers["content-type"] == "application/zip"
    assert 'filename="a-f2-prescription.zip"' in shp.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(shp.content)) as zf:
        reader = shapefile.Reader(
            shp=io.BytesIO(zf.read("a-f2-prescription.shp")),
            shx=io.BytesIO(zf.read("a-f2-prescription.shx")),
            dbf=io.BytesIO(zf.read("a-f2-prescription.dbf")),
        )
        assert [list(r)[:4] for r in reader.records()] == [[1, "blight", 1.0, 150.0]]
        assert "a-f2-prescription.prj" in zf.namelist()

    healthy_rx = httpx.get(f"{base}/a/prescription", params={"flight": "f1"}).json()
    assert healthy_rx["features"] == []
    missing = httpx.get(f"{base}/a/prescription", params={"flight": "zz"})
    assert missing.status_code == 404 and "f1, f2" in missing.text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "reason"),
    [
        ("GET", "/v1/fields/nope", None, 404, None),
        ("GET", "/v1/fields/nope/history", None, 404, None),
        ("GET", "/v1/fields/nope/prescription", None, 404, None),
        ("GET", "/v1/fields/nope/prescription?format=kml", None, 400, "bad_format"),
        ("GET", "/v1/fields/nope/prescription?threshold=2", None, 422, "bad_threshold"),
        (
            "POST", "/v1/fields", {"name": "bow", "boundary": {"type": "Polygon", "coordinates": [
                [[15.0, 49.6], [15.01, 49.61], [15.01, 49.6], [15.0, 49.61], [15.0, 49.6]]]}},
            422, "boundary_invalid",
        ),
        ("POST", "/v1/fields", {"name": "pt", "boundary": {"type": "Point", "coordinates": [15, 49]}}, 422,
         "boundary_not_polygon"),
        ("POST", "/v1/fields", {"name": "crs", "boundary": FIELD_A, "crs": "EPSG:0"}, 422,
         "boundary_bad_crs"),
        ("POST", "/v1/fields", {"name": "x", "boundary": FIELD_A["geometry"], "crs": "EPSG:4326"}, 422,
         "boundary_out_of_range"),
    ],
)  # fmt: skip
def test_refusals_name_their_reason(
    served: LiveServer, method: str, path: str, body: object, status: int, reason: str | None
) -> None:
    r = httpx.request(method, f"{served.url}{path}", json=body)
    assert r.status_code == status, r.text
    if reason is not None:
        assert r.json()["reason"] == reason
        assert r.json().get("fix")
