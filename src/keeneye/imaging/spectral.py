"""Spectral vegetation indices: NDVI, NDRE, GNDVI as float32 normalised differences.

All three are ``(a - b) / (a + b)`` of two bands, so they do not depend on the bands' scale (raw
uint16 counts and reflectance give the same index). Where the denominator is 0 — typically the
no-data border of an orthomosaic — the index is 0 and the pixel is left out of the statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from keeneye.domain import InvalidInput
from keeneye.imaging.decode import Image, canonical_band_name

FloatArray = npt.NDArray[np.float32]

# index name → (band a, band b) of (a - b) / (a + b)
SPECTRAL_INDICES: Final[Mapping[str, tuple[str, str]]] = {
    "ndvi": ("nir", "red"),
    "ndre": ("nir", "red_edge"),
    "gndvi": ("nir", "green"),
}
STAT_NAMES: Final = ("mean", "std", "p10", "p50", "p90")


def _normalized_difference(
    a: npt.NDArray[Any], b: npt.NDArray[Any], out: FloatArray | None
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """The index and the mask of pixels where it is defined (non-zero denominator)."""
    # float32 before subtracting: unsigned bands would wrap around.
    a32 = np.asarray(a, dtype=np.float32)
    b32 = np.asarray(b, dtype=np.float32)
    den = a32 + b32
    if out is None:
        out = np.empty(den.shape, dtype=np.float32)
    np.subtract(a32, b32, out=out)
    defined = den != 0
    np.divide(out, den, out=out, where=defined)
    out[~defined] = 0.0
    return out, defined


def normalized_difference(
    a: npt.NDArray[Any], b: npt.NDArray[Any], *, out: FloatArray | None = None
) -> FloatArray:
    """``(a - b) / (a + b)`` as float32, 0 where ``a + b == 0``; writes into ``out`` when given."""
    return _normalized_difference(a, b, out)[0]


def ndvi(nir: npt.NDArray[Any], red: npt.NDArray[Any], *, out: FloatArray | None = None) -> FloatArray:
    """Normalised difference vegetation index (N − R) / (N + R)."""
    return normalized_difference(nir, red, out=out)


def ndre(nir: npt.NDArray[Any], red_edge: npt.NDArray[Any], *, out: FloatArray | None = None) -> FloatArray:
    """Normalised difference red-edge index (N − Re) / (N + Re); sensitive to chlorophyll in dense canopy."""
    return normalized_difference(nir, red_edge, out=out)


def gndvi(nir: npt.NDArray[Any], green: npt.NDArray[Any], *, out: FloatArray | None = None) -> FloatArray:
    """Green NDVI (N − G) / (N + G)."""
    return normalized_difference(nir, green, out=out)


def available_indices(bands: Iterable[str]) -> list[str]:
    """The spectral indices computable from these band names, in ``SPECTRAL_INDICES`` order."""
    have = {canonical_band_name(b) for b in bands}
    return [name for name, (a, b) in SPECTRAL_INDICES.items() if a in have and b in have]


def _require(image: Image, name: str) -> tuple[str, str]:
    key = canonical_band_name(name)
    if key not in SPECTRAL_INDICES:
        raise ValueError(f"unknown spectral index {name!r}; known: {', '.join(SPECTRAL_INDICES)}")
    a, b = SPECTRAL_INDICES[key]
    missing = [band for band in (a, b) if not image.has_band(band)]
    if missing:
        raise InvalidInput(
            "wrong_band_count",
            f"{key} needs bands {a} and {b}; the image has {', '.join(image.bands)}",
            fix="set the camera's band_map in the pipeline spec so the bands are named, or send those bands",
        )
    return a, b


def spectral_index(image: Image, name: str, *, out: FloatArray | None = None) -> FloatArray:
    """A named index (``ndvi``, ``ndre``, ``gndvi``) of the image as an (H, W) float32 array."""
    a, b = _require(image, name)
    return normalized_difference(image.band(a), image.band(b), out=out)


def index_stats(image: Image) -> dict[str, float]:
    """``{index}_{mean,std,p10,p50,p90}`` for each index the bands allow; ``{}`` for an RGB photo.

    Statistics cover the pixels where the index is defined and finite; all 0.0 when there is none.
    Full resolution (percentiles cost ~0.4 s on 2048² × 3 indices): for drift use
    :func:`~keeneye.imaging.features.quality_features`, which runs this on a downscaled copy.
    """
    stats: dict[str, float] = {}
    for name in available_indices(image.bands):
        a, b = SPECTRAL_INDICES[name]
        values, defined = _normalized_difference(image.band(a), image.band(b), None)
        valid = values[defined & np.isfinite(values)]
        if valid.size == 0:
            stats.update({f"{name}_{stat}": 0.0 for stat in STAT_NAMES})
            continue
        p10, p50, p90 = np.percentile(valid, [10, 50, 90])
        stats[f"{name}_mean"] = float(valid.mean(dtype=np.float64))
        stats[f"{name}_std"] = float(valid.std(dtype=np.float64))
        stats[f"{name}_p10"] = float(p10)
        stats[f"{name}_p50"] = float(p50)
        stats[f"{name}_p90"] = float(p90)
    return stats
