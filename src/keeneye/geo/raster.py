"""Reading a multispectral GeoTIFF with rasterio: reflectance bands, a validity mask, the georeference.

:func:`read_raster` opens a path or in-memory bytes, names the bands by a :class:`BandMap`, scales
them to reflectance, and builds ``valid`` — the pixels every statistic and zone may use. A pixel is
invalid when any band is masked by the file (its nodata value, an internal mask, or an alpha band,
all as GDAL reports them through ``read_masks``), equals the preset's nodata when the file declares
none, or is not finite after scaling. Alpha bands are not data: they are dropped before the band map
is matched (GDAL itself masks by alpha only in gray+alpha and RGBA files, so the alpha band is
applied here for any band count). ``window`` reads one part of a big raster (see :mod:`keeneye.geo.tiles`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.windows import Window

from keeneye.domain import InvalidInput
from keeneye.geo.bands import BandMap
from keeneye.geo.georef import Georef

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
RasterSource = str | Path | bytes
# One read holds at most this many band values (400 MB as float32); bigger rasters are read in tiles.
MAX_READ_VALUES: Final = 100_000_000


@dataclass(frozen=True, eq=False)
class Reflectance:
    """Bands as float32 reflectance (``bands``, H, W) with their names, the valid mask, the georef."""

    data: FloatArray
    bands: tuple[str, ...]
    valid: BoolArray
    georef: Georef

    def band(self, name: str) -> FloatArray:
        """One band by canonical name (``KeyError`` when absent; callers check :attr:`bands`)."""
        band: FloatArray = self.data[self.bands.index(name)]
        return band

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])


@contextmanager
def open_raster(source: RasterSource) -> Iterator[DatasetReader]:
    """Open a path or bytes with rasterio; unreadable input is ``InvalidInput("corrupt_raster")``."""
    if isinstance(source, bytes) and not source:  # rasterio would take empty bytes as a file to write
        raise InvalidInput(
            "corrupt_raster", "the raster is empty (0 bytes)", fix="send a GeoTIFF with its bands"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            if isinstance(source, bytes):
                with MemoryFile(source) as mem, mem.open() as ds:
                    yield ds
            else:
                with rasterio.open(source) as ds:
                    yield ds
    except (RasterioError, CPLE_BaseError) as exc:  # rasterio's failures, and GDAL's raised as errors
        raise InvalidInput(
            "corrupt_raster",
            f"the raster cannot be read: {exc}",
            fix="send a GeoTIFF (or another GDAL-readable raster) with its bands",
        ) from exc


def data_band_indexes(ds: DatasetReader) -> list[int]:
    """1-based indexes of the bands that carry data (every band but alpha)."""
    return [i + 1 for i, ci in enumerate(ds.colorinterp) if ci != ColorInterp.alpha]


def georef_of(ds: DatasetReader, window: Window | None = None, gsd_m: float | None = None) -> Georef:
    """The dataset's (or a window's) georeference; identity and no CRS for a plain image."""
    if ds.crs is None:
        # Pixel coordinates of the whole raster, shifted to the window's origin.
        if window is None:
            return Georef.pixels(gsd_m)
        return Georef(Affine.translation(window.col_off, window.row_off), None, gsd_m)
    transform = ds.window_transform(window) if window is not None else ds.transform
    return Georef(transform, ds.crs, gsd_m)


def read_raster(
    source: RasterSource, band_map: BandMap, *, window: Window | None = None, gsd_m: float | None = None
) -> Reflectance:
    """The raster's data bands as reflectance, named by ``band_map``, with the valid mask.

    Raises ``InvalidInput("band_map_mismatch")`` when the map names another number of bands than
    the file has (alpha excluded), ``InvalidInput("raster_too_large")`` (413) when the read would
    hold over :data:`MAX_READ_VALUES` values — before any pixel is read.
    """
    with open_raster(source) as ds:
        return read_dataset(ds, band_map, window=window, gsd_m=gsd_m)


def read_dataset(
    ds: DatasetReader, band_map: BandMap, *, window: Window | None = None, gsd_m: float | None = None
) -> Reflectance:
    """:func:`read_raster` for an already open dataset (the tiled reader keeps one open)."""
    indexes = data_band_indexes(ds)
    if len(indexes) != len(band_map.bands):
        raise InvalidInput(
            "band_map_mismatch",
            f"the raster has {len(indexes)} data bands, the band map names {len(band_map.bands)} "
            f"({','.join(band_map.bands)})",
            fix="pick the preset of the camera that took it, or list its bands in file order",
        )
    height, width = (int(window.height), int(window.width)) if window is not None else ds.shape
    if height * width * len(indexes) > MAX_READ_VALUES:
        raise InvalidInput(
            "raster_too_large",
            f"{width}×{height} px × {len(indexes)} bands is over the {MAX_READ_VALUES:,} values one read "
            "may hold",
            status=413,
            fix="read it in tiles (keeneye.geo.tile_windows) or send a smaller extent",
        )
    dn = ds.read(indexes, window=window)
    flags = ds.mask_flag_enums
    if all(flags[i - 1] == [MaskFlags.all_valid] for i in indexes):
        valid = np.ones(dn.shape[1:], dtype=bool)  # no nodata, mask or alpha: GDAL's masks are all 255
    else:
        valid = np.all(ds.read_masks(indexes, window=window) > 0, axis=0)
    # GDAL applies an alpha band as the mask of gray+alpha and RGBA files only; a multispectral
    # stack with an alpha band (B, G, R, NIR, RE, alpha) needs it applied here.
    alphas = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci == ColorInterp.alpha]
    if alphas:
        valid &= np.all(ds.read(alphas, window=window) > 0, axis=0)
    if band_map.nodata is not None and all(v is None for v in ds.nodatavals):
        valid &= np.all(dn != band_map.nodata, axis=0)
    data = band_map.scaling_for(dn.dtype).apply(dn)
    if np.issubdtype(dn.dtype, np.floating):  # scaled integers are always finite
        valid &= np.all(np.isfinite(data), axis=0)
    return Reflectance(data, band_map.bands, valid, georef_of(ds, window, gsd_m))
