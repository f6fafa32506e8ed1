"""Field boundaries: what is accepted (WGS84, a named CRS, Feature/FeatureCollection), what is refused
and why, and the geodesic area checked against an independent pyproj computation."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyproj
import pytest
import shapely

from keeneye.domain import InvalidInput
from keeneye.fields import field_id_of, geodesic_area_m2, parse_boundary

from .support import TO_UTM, utm_box

SQUARE_LONLAT = [[15.0, 49.6], [15.01, 49.6], [15.01, 49.61], [15.0, 49.61], [15.0, 49.6]]


def polygon(ring: list[Any]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [ring]}


def test_a_wgs84_polygon_keeps_its_coordinates_and_has_its_geodesic_area() -> None:
    b = parse_boundary(polygon(SQUARE_LONLAT))
    # independent: pyproj's Geod on the same lon/lat ring (WGS84 ellipsoid)
    lons, lats = zip(*SQUARE_LONLAT, strict=True)
    area, _ = pyproj.Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    assert b.area_ha == pytest.approx(abs(area) / 10_000, rel=1e-9)
    assert b.area_ha == pytest.approx(80.39, abs=0.01)  # 0.01° × 0.01° at 49.6° N: 1,112 m × 723 m
    assert b.bbox == pytest.approx((15.0, 49.6, 15.01, 49.61))
    doc = b.to_geojson()
    assert doc["type"] == "Polygon"
    ring = np.asarray(doc["coordinates"][0])  # type: ignore[index]
    assert shapely.LinearRing(ring).is_ccw  # RFC 7946: exterior counter-clockwise


def test_a_utm_boundary_is_stored_in_wgs84_with_the_area_it_has_on_the_ground() -> None:
    # a 400 m × 250 m rectangle in UTM 33N = 10 ha on the grid; geodesic area differs by the scale
    # factor² (k ≈ 0.9996 near the central meridian), i.e. well under 0.1 %
    feature = utm_box(500_000, 5_500_000, 500_400, 5_500_250)
    b = parse_boundary(feature)
    assert b.area_ha == pytest.approx(10.0, rel=1e-3)
    x0, y0, x1, y1 = b.bbox
    assert 14.99 < x0 < x1 < 15.02 and 49.6 < y0 < y1 < 49.7
    back = shapely.transform(b.geometry, lambda xy: np.column_stack(TO_UTM.transform(xy[:, 0], xy[:, 1])))
    assert shapely.area(back) == pytest.approx(100_000, rel=1e-6)  # the same rectangle, reprojected back
    # the caller's --crs wins over the document's member
    same = parse_boundary(feature["geometry"], crs="EPSG:32633")
    assert same.area_ha == pytest.approx(b.area_ha, rel=1e-12)


def test_a_feature_collection_becomes_one_multipolygon_and_json_text_is_accepted() -> None:
    east = [[x + 0.02, y] for x, y in SQUARE_LONLAT]
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": polygon(SQUARE_LONLAT)},
            {"type": "Feature", "properties": {}, "geometry": polygon(east)},
        ],
    }
    b = parse_boundary(json.dumps(doc))
    assert b.geometry.geom_type == "MultiPolygon"
    assert b.area_ha == pytest.approx(2 * parse_boundary(polygon(SQUARE_LONLAT)).area_ha, rel=1e-3)


BOWTIE = [[15.0, 49.6], [15.01, 49.61], [15.01, 49.6], [15.0, 49.61], [15.0, 49.6]]


@pytest.mark.parametrize(
    ("doc", "crs", "reason", "words"),
    [
        (polygon(BOWTIE), None, "boundary_invalid", "Self-intersection"),
        ({"type": "Point", "coordinates": [15.0, 49.6]}, None, "boundary_not_polygon", "a Point is not"),
        ({"type": "LineString", "coordinates": SQUARE_LONLAT}, None, "boundary_not_polygon", "LineString"),
        (
            {"type": "Polygon", "coordinates": [[[15.0, 49.6], [15.01]]]},
            None,
            "boundary_not_polygon",
            "malformed",
        ),
        ("{not json", None, "boundary_not_polygon", "not JSON"),
        ({"type": "FeatureCollection", "features": []}, None, "boundary_not_polygon", "no feature"),
        (polygon(SQUARE_LONLAT), "EPSG:999999", "boundary_bad_crs", "unknown CRS"),
        (polygon(SQUARE_LONLAT), "not-a-crs", "boundary_bad_crs", "unknown CRS"),
        # UTM metres sent as if they were lon/lat: named as such, with the fix to name the CRS
        (
            utm_box(500_000, 5_500_000, 500_400, 5_500_250)["geometry"],
            None,
            "boundary_out_of_range",
            "look projected",
        ),
        (
            polygon([[200.0, 49.6], [201.0, 49.6], [201.0, 50.0], [200.0, 49.6]]),
            None,
            "boundary_out_of_range",
            "outside",
        ),
        # lon/lat sent while claiming UTM: a few metres from the false origin, off the globe's lon/lat range
        (polygon(SQUARE_LONLAT), "EPSG:32633", "boundary_out_of_range", "outside"),
        (polygon([[15.0, 49.6], [15.01, 49.6], [15.02, 49.6], [15.0, 49.6]]), None, "boundary_invalid", ""),
    ],
)
def test_bad_boundaries_are_refused_with_their_reason(
    doc: Any, crs: str | None, reason: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_boundary(doc, crs)
    assert caught.value.reason == reason
    assert caught.value.status == 422
    assert words in f"{caught.value.message} — {caught.value.fix}"
    assert caught.value.fix


def test_geodesic_area_of_nothing_is_zero() -> None:
    assert geodesic_area_m2(shapely.Polygon()) == 0.0


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [("North 12", None, "north-12"), ("Pole Žitná", None, "pole-zitna"), ("x", "a7", "a7")],
)
def test_field_ids(name: str, given: str | None, expected: str) -> None:
    assert field_id_of(name, given) == expected


@pytest.mark.parametrize(("name", "given"), [("x", "A7"), ("x", "-a"), ("!!!", None)])
def test_bad_field_ids_are_refused(name: str, given: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        field_id_of(name, given)
    assert caught.value.reason == "bad_field_id"
