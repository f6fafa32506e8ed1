"""Cheap image-quality features and a fallback embedding, the inputs of drift monitoring.

Everything is computed on a small downscaled copy (longest side ≤ 256 px, or 32 × 32 for the
embedding) with intensities normalised to 0..1 by dtype — uint8 / 255, uint16 / 65535, float32 as is
(reflectance) — so the same scene gives the same features whatever the camera's bit depth.

:func:`quality_features` runs once per image on the serving and stream hot paths, so it stays in the
source dtype as long as it can: per-band mean / std come from one ``cv2.meanStdDev`` pass (double
accumulation) over the uint8 / uint16 copy and are scaled afterwards; only the one-band intensity
image is float32 (luma weights and the 0..1 scale folded into one ``cv2.transform``). The results
equal a float64 computation on the 0..1 copy to within float32 rounding (≈1e-6 relative; pinned by
tests/unit/imaging/test_features.py against such a reference).
"""

from __future__ import annotations

import functools
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.imaging.decode import Image, PixelArray
from keeneye.imaging.preprocess import resize_pixels
from keeneye.imaging.spectral import available_indices, index_stats

FloatArray = npt.NDArray[np.float32]

FEATURE_MAX_SIDE: Final = 256
EMBEDDING_SIDE: Final = 32
_FLAT_STD: Final = np.float32(1e-4)  # in 0..1 units: below 1/40 of a uint8 step
_RANGE: Final[dict[str, float]] = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}
# Rec. 601 luma weights, the usual "brightness" of an RGB photo.
_LUMA: Final = (("red", 0.299), ("green", 0.587), ("blue", 0.114))
_CV_MAX_CHANNELS: Final = 4  # cv2.transform takes at most 4 channels


def _downscaled(image: Image, max_side: int) -> PixelArray:
    """The pixels with the longest side ≤ ``max_side`` (INTER_AREA, in the source dtype); float32
    NaN / ±inf (no-data) become 0 / 1 / 0 in 0..1 units so they cannot poison a mean."""
    pixels = image.pixels
    longest = max(image.height, image.width)
    if longest > max_side:
        ratio = max_side / longest
        w = max(1, round(image.width * ratio))
        h = max(1, round(image.height * ratio))
        pixels = resize_pixels(pixels, w, h, interpolation=cv2.INTER_AREA)
    if pixels.dtype == np.float32 and not np.isfinite(pixels).all():
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)  # a copy: the image is read-only
    return pixels


@functools.lru_cache(maxsize=64)
def _intensity_weights(bands: tuple[str, ...], dtype: str) -> FloatArray:
    """Per-band weights of the intensity image, in 0..1 units: luma for images with red, green and
    blue, otherwise the mean of all bands. Cached: a pipeline sees one or two band layouts."""
    weights = np.full(len(bands), 1.0 / len(bands))
    if all(name in bands for name, _ in _LUMA):
        weights[:] = 0.0
        for name, weight in _LUMA:
            weights[bands.index(name)] = weight
    unit: FloatArray = (weights / _RANGE[dtype]).astype(np.float32)
    unit.flags.writeable = False  # shared by every caller through the cache
    return unit


def _intensity(small: PixelArray, weights: FloatArray) -> FloatArray:
    """The weighted sum of the bands as one float32 (h, w) image in 0..1 units."""
    if small.shape[2] <= _CV_MAX_CHANNELS:
        src = np.ascontiguousarray(small, dtype=np.float32)  # cv2.transform keeps the source depth
        gray = cv2.transform(src, weights.reshape(1, -1))
        return np.asarray(gray, dtype=np.float32).reshape(small.shape[:2])
    out = np.zeros(small.shape[:2], dtype=np.float32)
    for c, weight in enumerate(weights.tolist()):
        out += np.float32(weight) * small[:, :, c].astype(np.float32)
    return out


def _mean_std(pixels: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-channel mean and (population) standard deviation, accumulated in double by OpenCV."""
    mean, std = cv2.meanStdDev(np.ascontiguousarray(pixels))
    return np.asarray(mean, dtype=np.float64).ravel(), np.asarray(std, dtype=np.float64).ravel()


def _finite(value: Any) -> float:
    out = float(value)
    return out if np.isfinite(out) else 0.0


def quality_features(image: Image) -> dict[str, float]:
    """Per-band ``mean_<band>`` / ``std_<band>``, ``brightness``, ``contrast`` (RMS), ``sharpness``
    (variance of the Laplacian) and, when the bands allow, ``ndvi_mean`` … — all finite floats."""
    small = _downscaled(image, FEATURE_MAX_SIDE)
    unit = 1.0 / _RANGE[image.dtype.name]
    means, stds = _mean_std(small)
    features: dict[str, float] = {}
    for c, name in enumerate(image.bands):
        features[f"mean_{name}"] = _finite(means[c] * unit)
        features[f"std_{name}"] = _finite(stds[c] * unit)
    gray = _intensity(small, _intensity_weights(image.bands, image.dtype.name))
    (brightness,), (contrast,) = _mean_std(gray)
    features["brightness"] = _finite(brightness)
    features["contrast"] = _finite(contrast)
    _, (laplacian_std,) = _mean_std(cv2.Laplacian(gray, cv2.CV_32F))
    features["sharpness"] = _finite(laplacian_std**2)
    if available_indices(image.bands):
        # Indices are scale-free, so the downscaled copy gives the same distribution at a fraction of
        # the cost, and the source dtype the same values as 0..1 units.
        small_image = Image(
            pixels=small, bands=image.bands, format=image.format, content_hash=image.content_hash
        )
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
