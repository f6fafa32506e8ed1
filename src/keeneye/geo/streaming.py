"""Statistics and zone grids of a raster read block by block, never whole (orthomosaics of 10k–40k px).

* :class:`IndexHistogram`: an index's mean (exact: running sum and count) and its p10/p50/p90 from a
  fixed histogram of :data:`HIST_BINS` bins over [:data:`HIST_LOW`, :data:`HIST_HIGH`] (bin width
  0.0005, so a percentile is within 0.00025 of the exact one; values outside the range are counted
  in the first or last bin). Memory: a few kB, whatever the raster's size.
* :class:`ZoneGrid`: the zone grid of a mosaic, one cell per ``factor`` × ``factor`` pixels (factor =
  the smallest integer that brings the longest side to at most ``zone_max_side`` cells): per cell the
  count of valid pixels, the sum of the vigour index, the count of pixels per disease class and the
  sum of their probability. Zones are cut from the grid exactly as :mod:`keeneye.geo.zones` cuts them
  from a small raster — a management zone is tens of metres, a cell of an orthomosaic a few
  decimetres — and their polygons are in full-resolution coordinates (the grid's transform is the
  raster's scaled by ``factor``). A cell is valid when at least half its pixels are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from affine import Affine

from keeneye.domain import IndexStatsJson
from keeneye.geo.georef import Georef

HIST_LOW: Final = -2.0
HIST_HIGH: Final = 2.0
HIST_BINS: Final = 8000  # 0.0005 per bin


@dataclass
class IndexHistogram:
    """Running mean and histogram of one index over the valid pixels of every block added."""

    counts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    total: float = 0.0
    n: int = 0

    def add(self, values: npt.NDArray[np.floating], valid: npt.NDArray[np.bool_]) -> None:
        picked = values[valid]
        if picked.size == 0:
            return
        self.total += float(picked.sum(dtype=np.float64))
        self.n += int(picked.size)
        scaled = (picked - HIST_LOW) * (HIST_BINS / (HIST_HIGH - HIST_LOW))
        bins = np.clip(scaled.astype(np.int64), 0, HIST_BINS - 1)
        self.counts += np.bincount(bins, minlength=HIST_BINS)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0–100), linear within its bin."""
        if self.n == 0:
            return None
        cum = np.cumsum(self.counts)
        target = q / 100 * self.n
        k = int(np.searchsorted(cum, target, side="left"))
        k = min(k, HIST_BINS - 1)
        before = float(cum[k - 1]) if k > 0 else 0.0
        inside = float(self.counts[k]) or 1.0
        width = (HIST_HIGH - HIST_LOW) / HIST_BINS
        return HIST_LOW + width * (k + min(1.0, max(0.0, (target - before) / inside)))

    def stats(self) -> IndexStatsJson:
        if self.n == 0:
            return IndexStatsJson(mean=None, p10=None, p50=None, p90=None, valid_px=0)
        p10, p50, p90 = (self.percentile(q) for q in (10, 50, 90))
        return IndexStatsJson(mean=self.total / self.n, p10=p10, p50=p50, p90=p90, valid_px=self.n)


def zone_factor(width: int, height: int, zone_max_side: int) -> int:
    """Pixels per zone-grid cell side: 1 when the raster fits ``zone_max_side``."""
    return max(1, math.ceil(max(width, height) / zone_max_side))


def cell_sums(values: npt.NDArray[np.floating], factor: int) -> npt.NDArray[np.float64]:
    """Sum of ``values`` (H, W; H and W multiples of ``factor``) over each factor × factor cell."""
    h, w = values.shape
    out: npt.NDArray[np.float64] = values.reshape(h // factor, factor, w // factor, factor).sum(
        axis=(1, 3), dtype=np.float64
    )
    return out


class ZoneGrid:
    """Per-cell accumulators of a ``width`` × ``height`` raster (module docstring)."""

    def __init__(self, width: int, height: int, factor: int, n_classes: int = 0) -> None:
        self.factor = factor
        self.width, self.height = width, height
        self.shape = (math.ceil(height / factor), math.ceil(width / factor))
        self.valid_px = np.zeros(self.shape, dtype=np.int32)
        self.index_sum = np.zeros(self.shape, dtype=np.float32)
        self.class_px = np.zeros((n_classes, *self.shape), dtype=np.int32)  # class k+1 per cell
        self.prob_sum = np.zeros(self.shape, dtype=np.float32)

    def _padded(self, arr: npt.NDArray[np.float32], fill: float) -> npt.NDArray[np.float32]:
        f = self.factor
        h, w = arr.shape[-2:]
        ph, pw = -h % f, -w % f
        if not ph and not pw:
            return arr
        pad = [(0, 0)] * (arr.ndim - 2) + [(0, ph), (0, pw)]
        return np.pad(arr, pad, constant_values=fill)

    def _cells(self, row: int, col: int, h: int, w: int) -> tuple[slice, slice]:
        f = self.factor
        assert row % f == 0 and col % f == 0, "blocks start on cell boundaries"
        return slice(row // f, row // f + math.ceil(h / f)), slice(col // f, col // f + math.ceil(w / f))

    def add_index(
        self, row: int, col: int, values: npt.NDArray[np.floating], valid: npt.NDArray[np.bool_]
    ) -> None:
        """A block's vigour index and valid mask (the block's core, at ``row``, ``col``)."""
        rs, cs = self._cells(row, col, *valid.shape)
        filled = np.where(valid, values, 0).astype(np.float32)
        self.valid_px[rs, cs] += cell_sums(self._padded(valid.astype(np.float32), 0), self.factor).astype(
            np.int32
        )
        self.index_sum[rs, cs] += cell_sums(self._padded(filled, 0), self.factor).astype(np.float32)

    def add_classes(
        self, row: int, col: int, class_mask: npt.NDArray[np.integer], probability: npt.NDArray[np.floating]
    ) -> None:
        """A block's disease class mask (0 = healthy, k ≥ 1 a class) and the probability of its class."""
        rs, cs = self._cells(row, col, *class_mask.shape)
        fg = class_mask > 0
        self.prob_sum[rs, cs] += cell_sums(
            self._padded(np.where(fg, probability, 0).astype(np.float32), 0), self.factor
        ).astype(np.float32)
        for k in range(self.class_px.shape[0]):
            hit = (class_mask == k + 1).astype(np.float32)
            self.class_px[k, rs, cs] += cell_sums(self._padded(hit, 0), self.factor).astype(np.int32)

    def valid(self) -> npt.NDArray[np.bool_]:
        """Cells with at least half their pixels valid (edge cells: half of the pixels they hold)."""
        f = self.factor
        rows = np.minimum(f, self.height - np.arange(self.shape[0]) * f)
        cols = np.minimum(f, self.width - np.arange(self.shape[1]) * f)
        capacity = rows[:, None] * cols[None, :]
        out: npt.NDArray[np.bool_] = (self.valid_px * 2 >= capacity) & (self.valid_px > 0)
        return out

    def index_mean(self) -> npt.NDArray[np.float32]:
        with np.errstate(divide="ignore", invalid="ignore"):
            out: npt.NDArray[np.float32] = np.where(
                self.valid_px > 0, self.index_sum / self.valid_px, np.nan
            ).astype(np.float32)
        return out

    def class_map(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """Per cell the majority class (healthy included: a cell is diseased when most of its valid
        pixels are) and the mean probability of its diseased pixels."""
        healthy = self.valid_px - self.class_px.sum(axis=0)
        stacked = np.concatenate([healthy[None], self.class_px])
        classes = stacked.argmax(axis=0).astype(np.int32)
        fg = self.class_px.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            prob = np.where(fg > 0, self.prob_sum / np.maximum(fg, 1), 0).astype(np.float32)
        return classes, prob

    def georef(self, georef: Georef) -> Georef:
        """The grid's georeference: the raster's transform scaled by ``factor`` (a GSD scaled too)."""
        f = self.factor
        gsd = georef.gsd_m * f if georef.gsd_m else None
        return Georef(georef.transform @ Affine.scale(f), georef.crs, gsd)
