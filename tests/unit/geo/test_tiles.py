"""keeneye.geo.tiles: tiles with overlap cover a raster exactly once and stitch back seamlessly.

The big-raster test runs a neighbourhood operation (NDVI then a 5×5 mean) per tile of a
2300 × 2100 GeoTIFF and checks the stitched result equals the whole-raster computation bit for bit,
with no read window larger than one tile.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio

from keeneye.geo import Stitcher, compute_index, open_raster, read_dataset, resolve_band_map, tile_windows

from .rasters import write_tif


@pytest.mark.parametrize(
    ("width", "height", "size", "overlap"),
    [(100, 80, 32, 4), (1, 1, 16, 0), (1000, 7, 256, 64), (257, 513, 256, 0), (50, 50, 100, 10)],
)
def test_cores_cover_every_pixel_once(width: int, height: int, size: int, overlap: int) -> None:
    hits = np.zeros((height, width), dtype=np.int32)
    for tile in tile_windows(width, height, size=size, overlap=overlap):
        assert tile.read.width <= size and tile.read.height <= size
        r0, c0 = int(tile.core.row_off), int(tile.core.col_off)
        hits[r0 : r0 + int(tile.core.height), c0 : c0 + int(tile.core.width)] += 1
        # the core sits inside the read window with `overlap` context where the raster allows
        rows, cols = tile.inner
        assert rows.start == min(overlap, r0) and cols.start == min(overlap, c0)
    assert (hits == 1).all()


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (64, -1), (64, 32), (64, 40)])
def test_bad_tiling_is_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match=r"tile size|overlap"):
        next(tile_windows(10, 10, size=size, overlap=overlap))


def _smoothed_ndvi(raster_values: np.ndarray) -> np.ndarray:
    return cv2.blur(raster_values, (5, 5), borderType=cv2.BORDER_REFLECT)


def test_big_raster_tiled_equals_whole(tmp_path: Path) -> None:
    h, w = 2100, 2300  # > 2048 in one side, 4.8 Mpx
    rng = np.random.default_rng(7)
    red = rng.integers(500, 3000, size=(h, w), dtype=np.uint16)
    nir = rng.integers(2000, 9000, size=(h, w), dtype=np.uint16)
    path = write_tif(tmp_path / "big.tif", np.stack([red, nir]))
    band_map = resolve_band_map("red,nir")

    with open_raster(path) as ds:
        whole = _smoothed_ndvi(np.nan_to_num(compute_index(read_dataset(ds, band_map), "ndvi")[0]))
        out_path = tmp_path / "out.tif"
        profile = {**ds.profile, "count": 1, "dtype": "float32", "nodata": None}
        stitched = np.full((h, w), np.nan, dtype=np.float32)
        in_memory = Stitcher(stitched)
        largest = 0
        with rasterio.open(out_path, "w", **profile) as dst:
            on_disk = Stitcher(dst)
            for tile in tile_windows(w, h, size=1024, overlap=32):
                part = read_dataset(ds, band_map, window=tile.read)
                largest = max(largest, part.data.shape[1] * part.data.shape[2])
                result = _smoothed_ndvi(np.nan_to_num(compute_index(part, "ndvi")[0]))
                in_memory.add(tile, result)
                on_disk.add(tile, result[np.newaxis])
    assert largest <= 1024 * 1024
    assert in_memory.written_px == h * w
    assert np.array_equal(stitched, whole)
    with rasterio.open(out_path) as back:
        assert np.array_equal(back.read(1), whole)
    # and the overlap matters: without context the tile seams differ
    seams = np.zeros((h, w), dtype=np.float32)
    plain = Stitcher(seams)
    with open_raster(path) as ds:
        for tile in tile_windows(w, h, size=1024, overlap=0):
            part = read_dataset(ds, band_map, window=tile.read)
            plain.add(tile, _smoothed_ndvi(np.nan_to_num(compute_index(part, "ndvi")[0])))
    assert not np.array_equal(seams, whole)
