"""Orthomosaic-sized GeoTIFFs for the streaming tests, written strip by strip (never whole in memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from tests.unit.geo.rasters import UTM33, UTM_TRANSFORM

from .crop_support import MICASENSE_SCALE

STRIP = 512


def write_mosaic(
    path: Path,
    width: int,
    height: int,
    *,
    blight: tuple[int, int, int, int] | None = None,
    nodata_cols: int = 0,
) -> Path:
    """A 5-band MicaSense uint16 mosaic (the field of ``crop_support.micasense_field``: NDVI rising
    west → east, a ``blight`` rectangle (row, col, h, w) with red 0.8), tiled and deflated, written in
    strips; the first ``nodata_cols`` columns are 0 = nodata."""
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 5, "dtype": "uint16",
        "crs": UTM33, "transform": UTM_TRANSFORM, "tiled": True, "blockxsize": 512, "blockysize": 512,
        "compress": "deflate", "zlevel": 1, "nodata": 0, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, height, STRIP):
            h = min(STRIP, height - row)
            refl = np.empty((5, h, width), dtype=np.float32)
            refl[0], refl[1], refl[4] = 0.04, 0.08, 0.2
            refl[2] = 0.15 - 0.1 * cols
            refl[3] = 0.3 + 0.3 * cols
            if blight is not None:
                r, c, bh, bw = blight
                rows = slice(max(r, row) - row, min(r + bh, row + h) - row)
                if rows.start < rows.stop:
                    refl[2, rows, c : c + bw] = 0.8
            dn = np.round(refl * MICASENSE_SCALE).astype(np.uint16)
            dn[:, :, :nodata_cols] = 0
            ds.write(dn, window=Window(0, row, width, h))
    return path
