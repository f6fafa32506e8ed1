"""Tiles of a big raster with overlap, and a stitcher that puts per-tile results back together.

A whole orthomosaic does not fit a model (or memory); :func:`tile_windows` cuts it into tiles of at
most ``size`` × ``size`` pixels, each read with ``overlap`` extra pixels of context on every side that
has a neighbour. A neighbourhood operation (a model's receptive field, a smoothing filter) computed on
the read window is exact in the tile's *core* as long as its reach is ≤ ``overlap``; the
:class:`Stitcher` keeps only the cores, which tile the raster exactly once. Memory is bounded by one
read window plus the output target — pass an open rasterio dataset as the target to keep the output
on disk too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from rasterio.windows import Window


@dataclass(frozen=True)
class Tile:
    """``read``: the window to read (core + overlap, clipped to the raster); ``core``: the window this
    tile answers for; ``inner``: the core's position inside the read window, as (row, col) slices."""

    read: Window
    core: Window

    @property
    def inner(self) -> tuple[slice, slice]:
        r0 = int(self.core.row_off - self.read.row_off)
        c0 = int(self.core.col_off - self.read.col_off)
        return slice(r0, r0 + int(self.core.height)), slice(c0, c0 + int(self.core.width))


def tile_windows(width: int, height: int, *, size: int = 1024, overlap: int = 64) -> Iterator[Tile]:
    """Tiles covering ``width`` × ``height`` row by row; cores never overlap and cover every pixel."""
    if size <= 0 or overlap < 0:
        raise ValueError(f"tile size must be > 0 and overlap >= 0, got {size}, {overlap}")
    if 2 * overlap >= size:
        raise ValueError(f"overlap {overlap} must be under half the tile size {size}")
    core = size - 2 * overlap
    for row in range(0, height, core):
        for col in range(0, width, core):
            h, w = min(core, height - row), min(core, width - col)
            r0, c0 = max(0, row - overlap), max(0, col - overlap)
            r1, c1 = min(height, row + h + overlap), min(width, col + w + overlap)
            yield Tile(read=Window(c0, r0, c1 - c0, r1 - r0), core=Window(col, row, w, h))


class WindowTarget(Protocol):
    """Where stitched cores go: anything with rasterio's ``write(array, window=…)`` (a dataset)."""

    def write(self, arr: npt.NDArray[np.generic], *, window: Window) -> None: ...


class Stitcher:
    """Writes each tile's core into a numpy array (H, W) / (bands, H, W) or a :class:`WindowTarget`."""

    def __init__(self, target: npt.NDArray[np.generic] | WindowTarget) -> None:
        self.target = target
        self.written_px = 0

    def add(self, tile: Tile, result: npt.NDArray[np.generic]) -> None:
        """``result`` covers the tile's read window (last two axes); only its core is kept."""
        rows, cols = tile.inner
        core = result[..., rows, cols]
        if isinstance(self.target, np.ndarray):
            r, c = int(tile.core.row_off), int(tile.core.col_off)
            self.target[..., r : r + core.shape[-2], c : c + core.shape[-1]] = core
        else:
            self.target.write(core, window=tile.core)
        self.written_px += int(core.shape[-2] * core.shape[-1])
