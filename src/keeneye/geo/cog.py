"""Index maps as Cloud-Optimized GeoTIFF (rio-cogeo), ready for QGIS, web maps or a range-request viewer.

The map is float32 with NaN as nodata (invalid pixels stay out of any statistic a GIS computes), in
the raster's CRS and transform; overviews are averaged so a zoomed-out view shows the mean index, not
a sample. A raster without a CRS is written without one (pixel grid only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from keeneye.geo.georef import Georef


def write_index_cog(
    values: npt.NDArray[np.floating], valid: npt.NDArray[np.bool_], georef: Georef, path: Path, *, name: str
) -> Path:
    """Write one index map (H, W) as a deflate-compressed COG at ``path``; returns ``path``."""
    data = np.where(valid, values, np.nan).astype(np.float32)
    profile = {
        "driver": "GTiff",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": "float32",
        "nodata": float("nan"),
        "transform": georef.transform,
        "crs": georef.crs,
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(data, 1)
            ds.set_band_description(1, name)
        with mem.open() as src:
            cog_translate(
                src,
                str(path),
                dict(cog_profiles["deflate"]),
                overview_resampling="average",
                in_memory=True,
                quiet=True,
                forward_band_tags=True,
            )
    return path
