"""keeneye.geo.zones + georef: polygons that land where the pixels are, with the right areas.

The round-trip test is issue 13's done-when: masks written in a UTM GeoTIFF → WGS84 GeoJSON →
reprojected back and rasterised on the same grid overlap the masks with IoU ≥ 0.98, and each zone's
area is within 1% of pixel count × pixel area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from rasterio import features
from rasterio.crs import CRS

from keeneye.domain import Instances, InvalidInput
from keeneye.geo import (
    Georef,
    class_map_of,
    disease_zones,
    read_raster,
    resolve_band_map,
    smooth_valid,
    vigour_zones,
    zones_to_geojson,
)

from .rasters import UTM33, UTM_TRANSFORM, write_tif

H, W = 400, 400


def _masks() -> np.ndarray:
    """Class 1: a ring (disk r=90 px with a hole r=35 px) and an L shape; class 2: a rectangle and
    a diagonal band; a 3×3 speck of class 2 (under the 16 px minimum) that must be dropped."""
    rows, cols = np.mgrid[0:H, 0:W]
    out = np.zeros((H, W), dtype=np.int32)
    r2 = (rows - 120) ** 2 + (cols - 130) ** 2
    out[(r2 <= 90**2) & (r2 > 35**2)] = 1
    out[260:380, 20:60] = 1
    out[340:380, 20:160] = 1
    out[40:110, 260:380] = 2
    out[(np.abs(rows - cols - 60) < 12) & (rows > 250) & (cols < 390)] = 2
    out[200:203, 300:303] = 2
    return out


def _probability(mask: np.ndarray) -> np.ndarray:
    return np.where(mask > 0, 0.9, 0.1).astype(np.float32)


def _rasterise(collection: dict, to_native: pyproj.Transformer | None, cls: str) -> np.ndarray:
    geoms = []
    for feat in collection["features"]:
        if feat["properties"]["class"] != cls:
            continue
        geom = shapely.geometry.shape(feat["geometry"])
        if to_native is not None:
            geom = shapely.transform(
                geom, lambda xy: np.column_stack(to_native.transform(xy[:, 0], xy[:, 1]))
            )
        geoms.append(geom)
    return features.rasterize(geoms, out_shape=(H, W), transform=UTM_TRANSFORM, fill=0, default_value=1) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_utm_masks_round_trip_through_wgs84(tmp_path: Path) -> None:
    mask = _masks()
    # The zones are computed from a raster read back from disk, so the georef is what GDAL reports.
    path = write_tif(tmp_path / "utm.tif", np.stack([np.full((H, W), 1000, np.uint16)] * 2))
    georef = read_raster(path, resolve_band_map("red,nir")).georef
    zones = disease_zones(mask, _probability(mask), georef, ["rust", "blight"])
    collection = zones_to_geojson(zones, georef, "wgs84")
    assert "crs" not in collection  # RFC 7946: WGS84 is implied
    lon, lat = collection["features"][0]["geometry"]["coordinates"][0][0]
    assert 14.9 < lon < 15.1 and 49.6 < lat < 49.7  # UTM 33N, E 500 km, N 5500 km
    back = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    for cls, value in (("rust", 1), ("blight", 2)):
        expected = mask == value
        if cls == "blight":
            expected[200:203, 300:303] = False  # the speck is dropped
        assert _iou(_rasterise(collection, back, cls), expected) >= 0.98
    assert {f["properties"]["class"] for f in collection["features"]} == {"rust", "blight"}
    assert len(collection["features"]) == 4  # ring, L, rectangle, band: the speck is gone
    for feat in collection["features"]:
        props = feat["properties"]
        expected_m2 = props["area_px"] * 0.05 * 0.05
        assert props["area_m2"] == pytest.approx(expected_m2, rel=0.01)
        assert props["area_ha"] == pytest.approx(props["area_m2"] / 10_000)
        assert props["kind"] == "disease"
        # RFC 7946: exterior rings counter-clockwise, holes clockwise
        rings = feat["geometry"]["coordinates"]
        assert shapely.LinearRing(rings[0]).is_ccw
        assert all(not shapely.LinearRing(r).is_ccw for r in rings[1:])
    ring = max((f for f in collection["features"] if f["properties"]["class"] == "rust"), key=_area_px)
    assert len(ring["geometry"]["coordinates"]) == 2  # the hole is kept


def _area_px(feature: dict) -> int:
    return int(feature["properties"]["area_px"])


def test_native_crs_output_names_the_crs() -> None:
    mask = _masks()
    georef = Georef(UTM_TRANSFORM, UTM33)
    collection = zones_to_geojson(
        disease_zones(mask, _probability(mask), georef, ["a", "b"]), georef, "native"
    )
    assert collection["crs"] == {"type": "name", "properties": {"name": "EPSG:32633"}}
    assert _iou(_rasterise(collection, None, "a"), mask == 1) >= 0.98
    x, y = collection["features"][0]["geometry"]["coordinates"][0][0]
    assert 500_000 <= x <= 500_020 and 5_499_980 <= y <= 5_500_000


def test_geographic_crs_areas_are_geodesic() -> None:
    # 1e-6° pixels at 50° N: ~0.111 m north-south × ~0.0716 m east-west, not 1e-12 "square degrees"
    transform = Affine(1e-6, 0, 10.0, 0, -1e-6, 50.0)
    georef = Georef(transform, CRS.from_epsg(4326))
    mask = np.zeros((300, 300), dtype=np.int32)
    mask[50:250, 20:280] = 1
    mask[100:150, 100:150] = 0  # a hole
    zones = disease_zones(mask, _probability(mask), georef, ["rust"])
    props = zones_to_geojson(zones, georef)["features"][0]["properties"]
    assert georef.area_basis == "geodesic"
    # Independent: the same polygon in a Lambert equal-area projection centred on the field.
    laea = pyproj.Transformer.from_crs(
        "EPSG:4326", "+proj=laea +lat_0=50 +lon_0=10 +ellps=WGS84", always_xy=True
    )
    planar = shapely.transform(
        zones[0].geometry, lambda xy: np.column_stack(laea.transform(xy[:, 0], xy[:, 1]))
    )
    assert props["area_m2"] == pytest.approx(planar.area, rel=1e-4)
    pixel_m2 = 0.1113 * 0.0716  # ≈ one 1e-6° pixel at 50° N (to 0.2%)
    assert props["area_m2"] == pytest.approx((200 * 260 - 2500) * pixel_m2, rel=0.01)


@pytest.mark.parametrize(("gsd", "area_m2", "basis"), [(0.1, 2.0, "gsd"), (None, None, "pixels")])
def test_no_georef_answers_in_pixels(gsd: float | None, area_m2: float | None, basis: str) -> None:
    georef = Georef.pixels(gsd)
    mask = np.zeros((30, 40), dtype=np.int32)
    mask[5:15, 10:30] = 1
    zones = disease_zones(mask, _probability(mask), georef, ["rust"])
    collection = zones_to_geojson(zones, georef, "wgs84")  # no CRS: pixels whatever is asked
    assert "crs" not in collection
    assert georef.crs_name is None and georef.area_basis == basis
    geom = shapely.geometry.shape(collection["features"][0]["geometry"])
    assert geom.bounds == (10.0, 5.0, 30.0, 15.0)  # x = column, y = row
    props = collection["features"][0]["properties"]
    assert props["area_px"] == 200
    if area_m2 is None:
        assert props["area_m2"] is None and props["area_ha"] is None
    else:
        assert props["area_m2"] == pytest.approx(area_m2)


def test_disease_severity_is_the_ndvi_deficit() -> None:
    mask = np.zeros((40, 40), dtype=np.int32)
    mask[10:20, 10:20] = 1  # NDVI 0.4 against healthy 0.8 → severity 0.5
    mask[25:35, 25:35] = 2  # NDVI 0.8, as healthy → severity 0
    ndvi = np.full((40, 40), 0.8, dtype=np.float32)
    ndvi[10:20, 10:20] = 0.4
    prob = np.where(mask == 1, 0.9, 0.6).astype(np.float32)
    zones = disease_zones(mask, prob, Georef.pixels(), ["rust", "mildew"], ndvi=ndvi)
    by_class = {z.class_name: z for z in zones}
    assert by_class["rust"].severity == pytest.approx(0.5, abs=1e-6)
    assert by_class["rust"].confidence == pytest.approx(0.9, abs=1e-6)
    assert by_class["mildew"].severity == pytest.approx(0.0, abs=1e-6)
    assert by_class["rust"].severity_basis == "ndvi_deficit"
    without = disease_zones(mask, prob, Georef.pixels(), ["rust", "mildew"])
    assert {z.class_name: z.severity for z in without} == pytest.approx({"rust": 0.9, "mildew": 0.6})
    assert {z.severity_basis for z in without} == {"probability"}


def test_disease_zones_refuse_mismatched_inputs() -> None:
    with pytest.raises(InvalidInput) as err:
        disease_zones(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.float32), Georef.pixels(), ["a"])
    assert err.value.reason == "shape_mismatch"
    with pytest.raises(InvalidInput) as err:
        disease_zones(np.full((4, 4), 3, np.int32), np.zeros((4, 4), np.float32), Georef.pixels(), ["a"])
    assert err.value.reason == "unknown_class"


def test_vigour_zones_cover_the_valid_pixels_once() -> None:
    cols = np.mgrid[0:120, 0:150][1]
    ndvi = (0.2 + 0.6 * cols / 149).astype(np.float32)  # west → east: low → high
    valid = np.ones((120, 150), dtype=bool)
    valid[:20, :] = False  # a no-data strip: no zone may cover it
    ndvi[:20, :] = 5.0  # and its values must not shift the breaks
    georef = Georef(UTM_TRANSFORM, UTM33)
    zones = vigour_zones(ndvi, valid, georef, n_zones=3)
    assert [z.class_name for z in sorted(zones, key=lambda z: z.geometry.centroid.x)] == [
        "low",
        "medium",
        "high",
    ]
    assert sum(z.area_px for z in zones) == 100 * 150
    union = shapely.union_all([z.geometry for z in zones])
    assert union.area == pytest.approx(sum(z.geometry.area for z in zones), rel=1e-9)  # no overlap
    assert union.area == pytest.approx(100 * 150 * 0.0025, rel=1e-3)
    assert union.bounds[3] <= UTM_TRANSFORM.f - 20 * 0.05 + 1e-6  # nothing in the no-data strip
    means = {z.class_name: z.index_mean for z in zones}
    assert means["low"] < means["medium"] < means["high"]
    assert means["high"] == pytest.approx(0.2 + 0.6 * (124.5 / 149), abs=0.01)


def test_vigour_zone_count_is_checked() -> None:
    with pytest.raises(InvalidInput) as err:
        vigour_zones(np.zeros((4, 4), np.float32), np.ones((4, 4), bool), Georef.pixels(), n_zones=1)
    assert err.value.reason == "bad_zone_count"


def test_class_map_of_instances_lets_the_best_score_win() -> None:
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 0:6, 0:6] = True  # class 0, score 0.6
    masks[1, 4:10, 4:10] = True  # class 1, score 0.9: wins the 2×2 overlap
    masks[2, 8:10, 0:2] = True  # class 0, score 0.3
    inst = Instances(
        boxes=np.zeros((3, 4), np.float32),
        scores=np.array([0.6, 0.9, 0.3], np.float32),
        class_ids=np.array([0, 1, 0]),
        masks=masks,
    )
    class_mask, prob = class_map_of(inst, (10, 10))
    assert class_mask[5, 5] == 2 and prob[5, 5] == pytest.approx(0.9)
    assert class_mask[0, 0] == 1 and prob[0, 0] == pytest.approx(0.6)
    assert class_mask[9, 0] == 1 and prob[9, 0] == pytest.approx(0.3)
    assert int((class_mask == 0).sum()) == 100 - 36 - 36 + 4 - 4
    boxes_only = Instances(
        boxes=np.array([[2, 3, 5, 7]], np.float32),
        scores=np.array([0.8], np.float32),
        class_ids=np.array([0]),
    )
    class_mask, _ = class_map_of(boxes_only, (10, 10))
    assert int(class_mask.sum()) == 3 * 4 and class_mask[3, 2] == 1 and class_mask[7, 5] == 0


def test_noisy_field_gives_few_zones_no_smaller_than_the_default_minimum() -> None:
    rng = np.random.default_rng(3)
    cols = np.mgrid[0:300, 0:300][1]
    ndvi = (0.3 + 0.5 * cols / 299 + rng.normal(0, 0.08, (300, 300))).astype(np.float32)
    valid = np.ones((300, 300), dtype=bool)
    zones = vigour_zones(ndvi, valid, Georef.pixels())
    assert 3 <= len(zones) <= 12  # per-pixel classes of this noise would give thousands of specks
    assert min(z.area_px for z in zones) >= 300 * 300 // 1000
    assert sum(z.area_px for z in zones) == 300 * 300


def test_smoothing_ignores_invalid_pixels() -> None:
    values = np.full((50, 50), 0.5, dtype=np.float32)
    valid = np.ones((50, 50), dtype=bool)
    values[20:30, 20:30] = 100.0  # no-data garbage
    valid[20:30, 20:30] = False
    smoothed = smooth_valid(values, valid, sigma=3.0)
    assert np.allclose(smoothed[valid], 0.5, atol=1e-5)


def test_vigour_classes_are_quantile_bins_ties_going_up() -> None:
    """Class = 1 + the number of quantile breaks ≤ the value (np.digitize), ties at a break included."""
    from keeneye.geo.zones import vigour_classes

    rng = np.random.default_rng(4)
    values = rng.normal(0.5, 0.2, (120, 90)).astype(np.float32)
    values[rng.random(values.shape) < 0.4] = 0.5  # 40 % exactly at the median: ties on a break
    valid = rng.random(values.shape) > 0.1
    for n in (2, 3, 5):
        classes = vigour_classes(values, valid, n)
        breaks = np.quantile(values[valid], np.linspace(0, 1, n + 1)[1:-1])
        expected = np.zeros(values.shape, dtype=np.int32)
        expected[valid] = np.digitize(values[valid], breaks) + 1
        assert np.array_equal(classes, expected), n
        assert set(np.unique(classes[~valid])) == {0}
