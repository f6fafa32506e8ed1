"""Fields test helpers: a 1 m UTM 33N GeoTIFF written with rasterio, its crop-health geo part (vigour
zones from the bands, disease zones from a known mask — no model needed), and boundaries in UTM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyproj
from affine import Affine

from keeneye.domain import GeoPart, JsonObject
from keeneye.geo import analyse_reflectance, compute_index, disease_zones, read_raster, resolve_band_map
from tests.unit.geo.rasters import UTM33, write_tif
from tests.unit.pipelines.crop_support import micasense_field

# 1 m pixels from (500000 E, 5500000 N) in UTM 33N: column c is easting 500000 + c, row r is
# northing 5500000 − r. The raster is 320 m east–west × 256 m north–south (8.192 ha).
X0, Y0 = 500_000.0, 5_500_000.0
TRANSFORM_1M = Affine(1.0, 0.0, X0, 0.0, -1.0, Y0)
HEIGHT, WIDTH = 256, 320
BLIGHT = (40, 60, 50, 70)  # row, col, h, w: 3,500 m² = 0.35 ha, inside field A
TO_UTM = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)


def utm_box(x0: float, y0: float, x1: float, y1: float) -> JsonObject:
    """A UTM 33N rectangle (easting/northing in metres) as a GeoJSON Feature naming its CRS."""
    ring: list[Any] = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


# Field A covers the raster's west 200 m (and beyond); field B its east 120 m (and beyond).
FIELD_A = utm_box(X0 - 50, Y0 - 300, X0 + 200, Y0 + 20)
FIELD_B = utm_box(X0 + 200, Y0 - 300, X0 + 400, Y0 + 20)


def write_flight(path: Path, blight: tuple[int, int, int, int] | None = BLIGHT) -> Path:
    return write_tif(path, micasense_field(HEIGHT, WIDTH, blight=blight), crs=UTM33, transform=TRANSFORM_1M)


def flight_geo(path: Path, blight: tuple[int, int, int, int] | None = BLIGHT, crs: str = "wgs84") -> GeoPart:
    """What the crop-health pipeline answers for the raster: indices, vigour zones, and a disease
    zone exactly where ``blight`` is (probability 0.9)."""
    raster = read_raster(path, resolve_band_map("micasense-rededge-mx"))
    mask = np.zeros(raster.shape, dtype=np.int32)
    if blight is not None:
        r, c, h, w = blight
        mask[r : r + h, c : c + w] = 1
    values, ok = compute_index(raster, "ndvi")
    zones = disease_zones(
        mask,
        np.where(mask > 0, 0.9, 0.0).astype(np.float32),
        raster.georef,
        ["blight"],
        valid=raster.valid,
        ndvi=np.where(ok, values, np.nan).astype(np.float32),
    )
    return analyse_reflectance(raster, crs="native" if crs == "native" else "wgs84", extra_zones=zones)
