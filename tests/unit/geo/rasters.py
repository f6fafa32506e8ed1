"""GeoTIFF writers for the geo tests: rasterio writes, so what is read back is what GDAL sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from affine import Affine
from rasterio.crs import CRS

# A 0.05 m grid in UTM 33N (central Europe), origin at a round easting/northing.
UTM33 = CRS.from_epsg(32633)
UTM_TRANSFORM = Affine(0.05, 0.0, 500_000.0, 0.0, -0.05, 5_500_000.0)


def write_tif(
    path: Path,
    bands: npt.NDArray[Any],
    *,
    crs: CRS | None = UTM33,
    transform: Affine | None = UTM_TRANSFORM,
    nodata: float | None = None,
    alpha: npt.NDArray[np.uint8] | None = None,
) -> Path:
    """Write (bands, H, W) as a GeoTIFF; ``alpha`` (H, W) becomes an extra band marked alpha."""
    count = bands.shape[0] + (1 if alpha is not None else 0)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": bands.shape[1],
        "width": bands.shape[2],
        "count": count,
        "dtype": bands.dtype.name,
        "compress": "deflate",
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    if alpha is not None:
        profile["photometric"] = "MINISBLACK"
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(bands, list(range(1, bands.shape[0] + 1)))
        if alpha is not None:
            ds.write(alpha.astype(bands.dtype), count)
            interp = list(ds.colorinterp)
            interp[-1] = rasterio.enums.ColorInterp.alpha
            ds.colorinterp = interp
    return path
