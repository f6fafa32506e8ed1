"""Prescriptions: severe zones buffered in UTM, merged, clipped to the field, rated — the geometry
checked against areas worked out by hand, the Shapefile read back with pyshp."""

from __future__ import annotations

import io
import math
import zipfile
from typing import Any

import numpy as np
import pyproj
import pytest
import shapefile
import shapely

from keeneye.domain import InvalidInput, JsonObject
from keeneye.fields import RATE_RULE, parse_boundary, prescribe, utm_crs_of

from .support import utm_box

X0, Y0 = 500_000.0, 5_500_000.0  # the field: a 200 m square in UTM 33N, south-west corner here
TO_WGS84 = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
TO_UTM = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
BOUNDARY = parse_boundary(utm_box(X0, Y0, X0 + 200, Y0 + 200)).to_geojson()


def lonlat(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda xy: np.column_stack(TO_WGS84.transform(xy[:, 0], xy[:, 1])))


def utm(geom: shapely.Geometry) -> shapely.Geometry:
    return shapely.transform(geom, lambda xy: np.column_stack(TO_UTM.transform(xy[:, 0], xy[:, 1])))


def zone(
    x: float, y: float, severity: float, cls: str = "blight", kind: str = "disease", side: float = 10
) -> Any:
    square = shapely.box(X0 + x, Y0 + y, X0 + x + side, Y0 + y + side)
    return {
        "type": "Feature",
        "geometry": shapely.geometry.mapping(lonlat(square)),
        "properties": {"kind": kind, "class": cls, "severity": severity, "confidence": 0.9, "area_ha": 0.01},
    }


ZONES: JsonObject = {
    "type": "FeatureCollection",
    "features": [
        zone(50, 50, 0.8),  # A and B: 6 m apart, so their 5 m buffers meet and merge
        zone(66, 50, 0.6, cls="rust"),
        zone(0, 0, 0.55),  # C: in the field's south-west corner; its buffer is clipped by two edges
        zone(150, 150, 0.3),  # under the threshold: not treated
        zone(100, 150, 0.9, kind="vigour", cls="low"),  # vigour zones are never prescribed
    ],
}

# A 10 m square buffered by 5 m: 10² + 4·10·5 + π·5² (rounded corners)
BUFFERED_SQUARE = 100 + 200 + math.pi * 25
# C clipped to the quadrant x ≥ 0, y ≥ 0: a 15 m square less the corner the round end does not fill
CORNER_ZONE = 15 * 15 - (25 - math.pi * 25 / 4)


def test_the_prescription_buffers_merges_clips_and_rates() -> None:
    rx = prescribe("a7", "2026-06-12", BOUNDARY, ZONES)
    assert utm_crs_of(parse_boundary(BOUNDARY).geometry) == pyproj.CRS.from_epsg(32633)
    assert rx.utm_crs == "EPSG:32633"
    assert [z.number for z in rx.zones] == [1, 2]
    merged, corner = rx.zones
    # zone 1: A ∪ B merged, the higher severity, both classes
    assert merged.classes == ("blight", "rust") and merged.severity == 0.8
    assert merged.rate == 130.0  # round(100 × (0.5 + 0.8), 1)
    a_b = shapely.union(shapely.box(0, 0, 10, 10).buffer(5), shapely.box(16, 0, 26, 10).buffer(5))
    assert 2 * BUFFERED_SQUARE > a_b.area > BUFFERED_SQUARE  # they overlap, so less than twice
    assert merged.area_ha * 10_000 == pytest.approx(a_b.area, rel=2e-3)  # geodesic vs UTM grid: k²
    # zone 2: C, clipped to the boundary
    assert corner.classes == ("blight",) and corner.severity == 0.55 and corner.rate == 105.0
    assert corner.area_ha * 10_000 == pytest.approx(CORNER_ZONE, rel=2e-3)
    c_utm = utm(corner.geometry)
    x0, y0, x1, y1 = shapely.bounds(c_utm)
    assert (x0 - X0, y0 - Y0) == pytest.approx((0, 0), abs=1e-3)  # clipped at the field's edges
    assert (x1 - X0, y1 - Y0) == pytest.approx((15, 15), abs=1e-3)
    # every zone lies inside the field
    field = parse_boundary(BOUNDARY).geometry
    assert all(shapely.area(shapely.difference(z.geometry, field)) < 1e-14 for z in rx.zones)


def test_threshold_and_buffer_change_the_result() -> None:
    no_buffer = prescribe("a7", "f", BOUNDARY, ZONES, buffer_m=0)
    assert len(no_buffer.zones) == 3  # A and B stay apart without buffers
    # 100 m² on the UTM grid at its central meridian (k0 = 0.9996) is 100 / k0² m² on the ellipsoid
    assert [z.area_ha * 10_000 for z in no_buffer.zones] == pytest.approx([100 / 0.9996**2] * 3, rel=1e-4)
    strict = prescribe("a7", "f", BOUNDARY, ZONES, threshold=0.7, base_rate=50)
    assert [(z.classes, z.rate) for z in strict.zones] == [(("blight",), 65.0)]  # A alone, 50 × 1.3
    assert strict.zones[0].area_ha * 10_000 == pytest.approx(BUFFERED_SQUARE, rel=2e-3)
    nothing = prescribe("a7", "f", BOUNDARY, ZONES, threshold=0.95)
    assert nothing.zones == ()
    assert nothing.to_geojson()["features"] == []


def test_geojson_export_is_rfc7946_with_the_rule() -> None:
    doc = prescribe("a7", "2026-06-12", BOUNDARY, ZONES).to_geojson()
    assert doc["type"] == "FeatureCollection" and doc["rate_rule"] == RATE_RULE
    assert (doc["field"], doc["flight"], doc["threshold"], doc["buffer_m"]) == ("a7", "2026-06-12", 0.5, 5.0)
    first = doc["features"][0]  # type: ignore[index]
    assert first["properties"] == {
        "zone": 1, "class": "blight,rust", "severity": 0.8, "rate": 130.0, "unit": "l/ha",
        "area_ha": pytest.approx(first["properties"]["area_ha"]),
    }  # fmt: skip
    ring = first["geometry"]["coordinates"][0]
    assert shapely.LinearRing(ring).is_ccw and 14.9 < ring[0][0] < 15.1


def test_the_shapefile_zip_reads_back_with_pyshp() -> None:
    rx = prescribe("a7", "2026-06-12", BOUNDARY, ZONES)
    with zipfile.ZipFile(io.BytesIO(rx.to_shapefile_zip())) as zf:
        names = sorted(zf.namelist())
        assert names == [f"a7-2026-06-12-prescription.{ext}" for ext in ("cpg", "dbf", "prj", "shp", "shx")]
        base = "a7-2026-06-12-prescription"
        prj = zf.read(f"{base}.prj").decode()
        assert prj.startswith('GEOGCS["GCS_WGS_1984"') and "WGS_1984" in prj
        assert pyproj.CRS.from_wkt(prj).to_epsg() == 4326
        reader = shapefile.Reader(
            shp=io.BytesIO(zf.read(f"{base}.shp")),
            shx=io.BytesIO(zf.read(f"{base}.shx")),
            dbf=io.BytesIO(zf.read(f"{base}.dbf")),
        )
        assert reader.shapeType == shapefile.POLYGON
        assert [f[0] for f in reader.fields[1:]] == ["ZONE", "CLASS", "SEVERITY", "RATE", "UNIT", "AREA_HA"]
        records = [list(r) for r in reader.records()]
        assert [(r[0], r[1], r[2], r[3], r[4]) for r in records] == [
            (1, "blight,rust", 0.8, 130.0, "l/ha"),
            (2, "blight", 0.55, 105.0, "l/ha"),
        ]
        for shape, z in zip(reader.shapes(), rx.zones, strict=True):
            geom = shapely.geometry.shape(shape.__geo_interface__)
            assert shapely.equals_exact(
                shapely.normalize(geom), shapely.normalize(z.geometry), tolerance=1e-9
            )


@pytest.mark.parametrize(
    ("options", "reason"),
    [({"threshold": 1.5}, "bad_threshold"), ({"buffer_m": -1}, "bad_buffer"), ({"base_rate": 0}, "bad_rate")],
)
def test_bad_options_are_refused(options: dict[str, float], reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        prescribe("a7", "f", BOUNDARY, ZONES, **options)
    assert caught.value.reason == reason
