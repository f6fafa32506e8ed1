"""Cheap image-quality features and a fallback embedding, the inputs of drift monitoring.

Everything is computed on a small downscaled copy (longest side ≤ 256 px, or 32 × 32 for the
embedding) with intensities normalised to 0..1 by dtype — uint8 / 255, uint16 / 65535, float32 as is
(reflectance) — so the same scene gives the same features whatever the camera's bit depth.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.imaging.decode import Image
from keeneye.imaging.preprocess import resize_pixels
from keeneye.imaging.spectral import index_stats

FloatArray = npt.NDArray[np.float32]

FEATURE_MAX_SIDE: Final = 256
EMBEDDING_SIDE: Final = 32
_FLAT_STD: Final = np.float32(1e-4)  # in 0..1 units: below 1/40 of a uint8 step
_RANGE: Final[dict[str, float]] = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}
# Rec. 601 luma weights, the usual "brightness" of an RGB photo.
_LUMA: Final = (("red", 0.299), ("green", 0.587), ("blue", 0.114))


def _downscaled_unit(image: Image, max_side: int) -> FloatArray:
    """(h, w, C) float32 in 0..1 units, longest side ≤ ``max_side`` (resized in the source dtype first:
    the float32 conversion then touches only the small copy)."""
    pixels = image.pixels
    longest = max(image.height, image.width)
    if longest > max_side:
        ratio = max_side / longest
        w = max(1, round(image.width * ratio))
        h = max(1, round(image.height * ratio))
        pixels = resize_pixels(pixels, w, h, interpolation=cv2.INTER_AREA)
    small = pixels.astype(np.float32)  # the one copy (it is small, or the image already was)
    small *= np.float32(1.0 / _RANGE[image.dtype.name])
    np.nan_to_num(small, copy=False, nan=0.0, posinf=1.0, neginf=0.0)  # no-data NaNs must not poison means
    return small


def _intensity(image: Image, small: FloatArray) -> FloatArray:
    """Luma for images with red, green and blue; otherwise the mean of all bands."""
    if all(image.has_band(name) for name, _ in _LUMA):
        gray = np.zeros(small.shape[:2], dtype=np.float32)
        for name, weight in _LUMA:
            gray += np.float32(weight) * small[:, :, image.band_position(name)]
        return gray
    mean: FloatArray = small.mean(axis=2, dtype=np.float32)
    return mean


def _finite(value: Any) -> float:
    out = float(value)
    return out if np.isfinite(out) else 0.0


def quality_features(image: Image) -> dict[str, float]:
    """Per-band ``mean_<band>`` / ``std_<band>``, ``brightness``, ``contrast`` (RMS), ``sharpness``
    (variance of the Laplacian) and, when the bands allow, ``ndvi_mean`` … — all finite floats."""
    small = _downscaled_unit(image, FEATURE_MAX_SIDE)
    features: dict[str, float] = {}
    for c, name in enumerate(image.bands):
        band = small[:, :, c]
        features[f"mean_{name}"] = _finite(band.mean(dtype=np.float64))
        features[f"std_{name}"] = _finite(band.std(dtype=np.float64))
    gray = _intensity(image, small)
    features["brightness"] = _finite(gray.mean(dtype=np.float64))
    features["contrast"] = _finite(gray.std(dtype=np.float64))
    features["sharpness"] = _finite(cv2.Laplacian(gray, cv2.CV_32F).var(dtype=np.float64))
    # Indices are scale-free, so the downscaled copy gives the same distribution at a fraction of the cost.
    small_image = Image(pixels=small, bands=image.bands, format=image.format, content_hash=image.content_hash)
    features.update({k: _finite(v) for k, v in index_stats(small_image).items()})
    return features


@functools.lru_cache(maxsize=32)
def _projection(n_inputs: int, dim: int, seed: int) -> FloatArray:
    """A fixed Gaussian matrix (n_inputs, dim) with variance 1/n_inputs, so outputs are ~N(0, 1)."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n_inputs, dim), dtype=np.float32)
    matrix *= np.float32(1.0 / np.sqrt(n_inputs))
    matrix.flags.writeable = False  # shared by every caller through the cache
    return matrix


def embedding_projection(image: Image, dim: int = 64, seed: int = 0) -> FloatArray:
    """A ``dim``-vector describing image content, for drift when the model exposes no pooled features.

    The image is reduced to 32 × 32, each band standardised (zero mean, unit variance — brightness and
    contrast are tracked by :func:`quality_features`; this captures structure), flattened and
    multiplied by a fixed seeded Gaussian matrix (a Johnson–Lindenstrauss projection: distances between
    images are roughly preserved). Deterministic for a given (band count, ``dim``, ``seed``).
    """
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    small = image.pixels
    if (image.height, image.width) != (EMBEDDING_SIDE, EMBEDDING_SIDE):
        small = resize_pixels(small, EMBEDDING_SIDE, EMBEDDING_SIDE, interpolation=cv2.INTER_AREA)
    x = small.astype(np.float32)
    x *= np.float32(1.0 / _RANGE[image.dtype.name])
    np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    x -= x.mean(axis=(0, 1), keepdims=True)
    std = x.std(axis=(0, 1), keepdims=True)
    # A flat band (std ~ float32 rounding noise) becomes all zeros instead of amplified noise.
    x /= np.where(std > _FLAT_STD, std, np.float32(np.inf))
    flat = x.reshape(-1)
    embedding: FloatArray = flat @ _projection(flat.size, dim, seed)
    return embedding
