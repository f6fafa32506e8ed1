"""keeneye.geo.raster: reading with rasterio, and every way a pixel is masked out of the statistics.

The nodata / alpha tests put values in the masked pixels that would move the mean and percentiles
far away if they were counted, so a mask that leaks fails the assertion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from keeneye.domain import InvalidInput
from keeneye.geo import compute_index, index_stats, read_raster, resolve_band_map

from .rasters import UTM_TRANSFORM, write_tif


def _red_nir(h: int = 20, w: int = 30) -> np.ndarray:
    """uint16 red = 1000, nir = 3000 → NDVI exactly 0.5 everywhere."""
    out = np.empty((2, h, w), dtype=np.uint16)
    out[0], out[1] = 1000, 3000
    return out


def test_reads_bands_scaled_and_georeferenced(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "a.tif", _red_nir())
    raster = read_raster(path, resolve_band_map("red,nir"))
    assert raster.bands == ("red", "nir")
    assert raster.shape == (20, 30)
    assert raster.band("nir")[0, 0] == pytest.approx(3000 / 65535)
    assert raster.valid.all()
    assert raster.georef.crs_name == "EPSG:32633"
    assert raster.georef.area_basis == "projected"
    assert raster.georef.pixel_area == pytest.approx(0.0025)


def test_bytes_and_windows(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "a.tif", _red_nir())
    raster = read_raster(path.read_bytes(), resolve_band_map("red,nir"), window=Window(10, 5, 4, 3))
    assert raster.shape == (3, 4)
    # the window's transform starts 10 columns east and 5 rows south of the raster's origin
    assert raster.georef.transform.c == pytest.approx(UTM_TRANSFORM.c + 10 * 0.05)
    assert raster.georef.transform.f == pytest.approx(UTM_TRANSFORM.f - 5 * 0.05)


def test_nodata_pixels_are_out_of_the_stats(tmp_path: Path) -> None:
    bands = _red_nir()
    bands[:, :10, :] = 0  # nodata: if counted, NDVI there is undefined (0/0) …
    bands[0, 10:12, :] = 9  # … and these valid-looking-but-nodata pixels would give NDVI ≈ 1
    bands[1, 10:12, :] = 9
    path = write_tif(tmp_path / "nd.tif", bands, nodata=9)
    raster = read_raster(path, resolve_band_map("red,nir"))
    assert int(raster.valid.sum()) == 18 * 30  # rows 10, 11 are nodata
    values, ok = compute_index(raster, "ndvi")
    assert int(ok.sum()) == 8 * 30  # rows 0..9 are valid DN 0, but NDVI 0/0 is undefined
    stats = index_stats(values, ok)
    assert stats["valid_px"] == 8 * 30
    assert stats["mean"] == pytest.approx(0.5, abs=1e-6)
    assert stats["p10"] == pytest.approx(0.5, abs=1e-6)


def test_alpha_band_is_a_mask_not_a_band(tmp_path: Path) -> None:
    bands = _red_nir()
    bands[0, :, :5] = 3000  # under alpha 0: NDVI would be 0 there
    alpha = np.full((20, 30), 255, dtype=np.uint8)
    alpha[:, :5] = 0
    path = write_tif(tmp_path / "alpha.tif", bands, alpha=alpha)
    raster = read_raster(path, resolve_band_map("red,nir"))  # 3 bands in the file, 2 data bands
    assert raster.bands == ("red", "nir")
    assert int(raster.valid.sum()) == 20 * 25
    stats = index_stats(*compute_index(raster, "ndvi"))
    assert stats["mean"] == pytest.approx(0.5, abs=1e-6)
    assert stats["p10"] == pytest.approx(0.5, abs=1e-6)


def test_preset_nodata_applies_when_the_file_declares_none(tmp_path: Path) -> None:
    dn = np.full((4, 6, 6), 6000, dtype=np.uint16)  # Sentinel-2 L2A: reflectance 0.5
    dn[3] = 9000  # nir 0.8 → NDVI (0.8 − 0.5) / 1.3
    dn[:, 0, :] = 0  # the L2A fill value
    raster = read_raster(write_tif(tmp_path / "s2.tif", dn), resolve_band_map("sentinel2-l2a-10m"))
    assert int(raster.valid.sum()) == 5 * 6
    stats = index_stats(*compute_index(raster, "ndvi"))
    assert stats["mean"] == pytest.approx(0.3 / 1.3, abs=1e-5)


def test_non_finite_float_pixels_are_invalid(tmp_path: Path) -> None:
    data = np.full((2, 4, 4), 0.2, dtype=np.float32)
    data[1] = 0.6
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    raster = read_raster(write_tif(tmp_path / "f.tif", data), resolve_band_map("red,nir"))
    assert int(raster.valid.sum()) == 14


def test_corrupt_raster_is_refused(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "a.tif", _red_nir())
    with pytest.raises(InvalidInput) as err:
        read_raster(path.read_bytes()[:300], resolve_band_map("red,nir"))
    assert err.value.reason == "corrupt_raster"
    with pytest.raises(InvalidInput) as err:
        read_raster(b"not a tiff at all", resolve_band_map("red,nir"))
    assert err.value.reason == "corrupt_raster"


def test_band_count_mismatch_is_refused(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "a.tif", _red_nir())
    with pytest.raises(InvalidInput) as err:
        read_raster(path, resolve_band_map("dji-p4m"))
    assert err.value.reason == "band_map_mismatch"
    assert "2 data bands" in err.value.message


def test_unknown_index_and_missing_band(tmp_path: Path) -> None:
    raster = read_raster(write_tif(tmp_path / "a.tif", _red_nir()), resolve_band_map("red,nir"))
    with pytest.raises(InvalidInput) as err:
        compute_index(raster, "ndxx")
    assert err.value.reason == "unknown_index"
    with pytest.raises(InvalidInput) as err:
        compute_index(raster, "ndre")
    assert err.value.reason == "missing_band"
    assert "red_edge" in err.value.message


def test_huge_raster_is_refused_before_reading_but_a_window_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    # 40000 × 40000 × 2 uint16 declared, written sparse: a few KB on disk, 6.4 GB if read whole
    profile = {"driver": "GTiff", "height": 40_000, "width": 40_000, "count": 2, "dtype": "uint16"}
    with rasterio.open(path, "w", tiled=True, sparse_ok=True, **profile):
        pass
    assert path.stat().st_size < 1_000_000
    with pytest.raises(InvalidInput) as err:
        read_raster(path, resolve_band_map("red,nir"))
    assert err.value.reason == "raster_too_large"
    assert err.value.status == 413
    part = read_raster(path, resolve_band_map("red,nir"), window=Window(39_000, 39_000, 256, 256))
    assert part.shape == (256, 256)
    assert part.georef.transform.c == 39_000  # pixel coordinates of the whole raster
