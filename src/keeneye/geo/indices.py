"""Vegetation and water indices over reflectance, and their statistics over valid pixels.

Each index names the bands it needs; :func:`available` lists those a band map allows. Normalised
differences (NDVI, NDRE, GNDVI, NDWI, NDMI, NBR) do not depend on the bands' scale; SAVI, OSAVI and
EVI have constants that assume reflectance 0–1, which is why rasters are scaled by their preset first.
A pixel where the formula is undefined (zero denominator) is left out like a no-data pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from keeneye.domain import IndexStatsJson, InvalidInput
from keeneye.geo.raster import BoolArray, FloatArray, Reflectance

DEFAULT_INDICES: Final = ("ndvi", "ndre", "gndvi")


@dataclass(frozen=True)
class IndexFormula:
    """An index: the bands it reads (in the order ``compute`` takes them) and a one-line formula."""

    bands: tuple[str, ...]
    formula: str
    compute: Callable[..., FloatArray]


def _nd(a: FloatArray, b: FloatArray) -> FloatArray:
    out = np.subtract(a, b, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(out, np.add(a, b, dtype=np.float32), out=out)  # in place: one array less per index
    return out


def _savi(n: FloatArray, r: FloatArray, soil: float = 0.5) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((1 + soil) * (n - r) / (n + r + soil)).astype(np.float32, copy=False)


def _osavi(n: FloatArray, r: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((n - r) / (n + r + 0.16)).astype(np.float32, copy=False)


def _evi(n: FloatArray, r: FloatArray, b: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = (2.5 * (n - r) / (n + 6 * r - 7.5 * b + 1)).astype(np.float32, copy=False)
    return out


INDICES: Final[Mapping[str, IndexFormula]] = {
    "ndvi": IndexFormula(("nir", "red"), "(NIR − Red) / (NIR + Red)", _nd),
    "ndre": IndexFormula(("nir", "red_edge"), "(NIR − RedEdge) / (NIR + RedEdge)", _nd),
    "gndvi": IndexFormula(("nir", "green"), "(NIR − Green) / (NIR + Green)", _nd),
    "savi": IndexFormula(("nir", "red"), "1.5 (NIR − Red) / (NIR + Red + 0.5)", _savi),
    "osavi": IndexFormula(("nir", "red"), "(NIR − Red) / (NIR + Red + 0.16)", _osavi),
    "evi": IndexFormula(("nir", "red", "blue"), "2.5 (NIR − Red) / (NIR + 6 Red − 7.5 Blue + 1)", _evi),
    "ndwi": IndexFormula(("green", "nir"), "(Green − NIR) / (Green + NIR)", _nd),
    "ndmi": IndexFormula(("nir", "swir1"), "(NIR − SWIR1) / (NIR + SWIR1)", _nd),
    "nbr": IndexFormula(("nir", "swir2"), "(NIR − SWIR2) / (NIR + SWIR2)", _nd),
}


def available(bands: tuple[str, ...], wanted: tuple[str, ...] = DEFAULT_INDICES) -> list[str]:
    """The ``wanted`` indices the bands allow, in the order asked."""
    return [n for n in wanted if n in INDICES and all(b in bands for b in INDICES[n].bands)]


def compute_index(raster: Reflectance, name: str) -> tuple[FloatArray, BoolArray]:
    """The index map and where it is valid (raster valid, formula defined and finite).

    Raises ``InvalidInput("unknown_index")`` or ``InvalidInput("missing_band")``.
    """
    key = name.strip().lower()
    if key not in INDICES:
        raise InvalidInput(
            "unknown_index", f"no index named {name!r}", fix=f"use one of {', '.join(INDICES)}"
        )
    formula = INDICES[key]
    missing = [b for b in formula.bands if b not in raster.bands]
    if missing:
        raise InvalidInput(
            "missing_band",
            f"{key} needs the {', '.join(missing)} band(s); the raster has {', '.join(raster.bands)}",
            fix="pick the camera's band-map preset or name its bands with --band-map",
        )
    values = formula.compute(*(raster.band(b) for b in formula.bands))  # a new array: set in place
    ok = np.isfinite(values)
    ok &= raster.valid
    values[~ok] = np.float32(np.nan)
    return values, ok


def index_maps(raster: Reflectance, names: Sequence[str]) -> dict[str, tuple[FloatArray, BoolArray]]:
    """:func:`compute_index` of each of ``names`` the raster's bands allow (others left out), each
    computed once however often it is named — one pass for the statistics, zones and severity."""
    wanted = dict.fromkeys(n.strip().lower() for n in names)
    return {n: compute_index(raster, n) for n in available(raster.bands, tuple(wanted))}


def index_stats(values: npt.NDArray[np.float32], valid: BoolArray) -> IndexStatsJson:
    """Mean and 10th/50th/90th percentiles over ``valid`` pixels only."""
    picked = values[valid].astype(np.float64)
    if picked.size == 0:
        return IndexStatsJson(mean=None, p10=None, p50=None, p90=None, valid_px=0)
    p10, p50, p90 = np.percentile(picked, [10, 50, 90])
    return IndexStatsJson(
        mean=float(picked.mean()), p10=float(p10), p50=float(p50), p90=float(p90), valid_px=int(picked.size)
    )
