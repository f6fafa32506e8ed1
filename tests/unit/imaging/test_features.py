"""Spectral indices (hand-computed values) and drift features: quality features, projection embedding."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest

from keeneye.domain import InvalidInput
from keeneye.imaging import (
    Image,
    available_indices,
    embedding_projection,
    gndvi,
    index_stats,
    ndre,
    ndvi,
    quality_features,
    spectral_index,
)

RNG = np.random.default_rng(5)

# --------------------------------------------------------------------------------------------------
# Spectral indices
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [ndvi, ndre, gndvi], ids=["ndvi", "ndre", "gndvi"])
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (0.8, 0.2, 0.6),
        (0.5, 0.5, 0.0),
        (0.1, 0.3, -0.5),
        (0.0, 0.0, 0.0),  # zero denominator → 0, no warning, no NaN
        (0.4, -0.4, 0.0),  # zero denominator from noisy reflectance
        (1.0, 0.0, 1.0),
    ],
)
def test_normalised_difference_values(
    fn: Callable[..., np.ndarray], a: float, b: float, expected: float
) -> None:
    out = fn(np.array([[a]], np.float32), np.array([[b]], np.float32))
    assert out.dtype == np.float32
    assert out[0, 0] == pytest.approx(expected, abs=1e-6)


def test_unsigned_bands_do_not_wrap() -> None:
    nir = np.array([60000, 100, 0], np.uint16)
    red = np.array([50000, 300, 0], np.uint16)
    np.testing.assert_allclose(ndvi(nir, red), [10000 / 110000, -0.5, 0.0], rtol=1e-6)


def test_index_writes_into_out() -> None:
    out = np.full((2, 2), 9.0, np.float32)
    result = ndvi(np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32), out=out)
    assert result is out
    np.testing.assert_array_equal(out, 1.0)


def _ms(nir: list[float], red: list[float], red_edge: list[float], green: list[float]) -> Image:
    pixels = np.stack([np.array([v], np.float32) for v in (nir, red, red_edge, green)], axis=-1)
    return Image.from_array(pixels, bands=("nir", "red", "red_edge", "green"))


def test_spectral_index_by_name() -> None:
    image = _ms([0.8, 0.6], [0.2, 0.2], [0.4, 0.6], [0.1, 0.0])
    np.testing.assert_allclose(spectral_index(image, "NDVI"), [[0.6, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(spectral_index(image, "ndre"), [[1 / 3, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(spectral_index(image, "gndvi"), [[7 / 9, 1.0]], rtol=1e-6)


def test_spectral_index_missing_band_is_refused() -> None:
    image = Image.from_array(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InvalidInput) as caught:
        spectral_index(image, "ndvi")
    assert caught.value.reason == "wrong_band_count"
    assert caught.value.message == "ndvi needs bands nir and red; the image has red, green, blue"


def test_unknown_index_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown spectral index"):
        spectral_index(Image.from_array(np.zeros((2, 2, 3), np.uint8)), "evi")


@pytest.mark.parametrize(
    ("bands", "expected"),
    [
        (("red", "green", "blue"), []),
        (("nir", "red"), ["ndvi"]),
        (("blue", "green", "red", "nir", "red_edge"), ["ndvi", "ndre", "gndvi"]),
        (("nir", "red_edge"), ["ndre"]),
    ],
)
def test_available_indices(bands: tuple[str, ...], expected: list[str]) -> None:
    assert available_indices(bands) == expected


def test_index_stats_hand_computed_and_skips_no_data() -> None:
    # NDVI values 0.6, 0.5, 0.0, -0.5, and one no-data pixel (0 / 0) left out of the statistics.
    image = _ms([0.8, 0.6, 0.3, 0.1, 0.0], [0.2, 0.2, 0.3, 0.3, 0.0], [0.8] * 5, [0.8] * 5)
    stats = index_stats(image)
    values = np.array([0.6, 0.5, 0.0, -0.5])
    assert stats["ndvi_mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert stats["ndvi_std"] == pytest.approx(values.std(), abs=1e-6)
    for p in (10, 50, 90):
        assert stats[f"ndvi_p{p}"] == pytest.approx(np.percentile(values, p), abs=1e-6)
    assert set(stats) == {
        f"{i}_{s}" for i in ("ndvi", "ndre", "gndvi") for s in ("mean", "std", "p10", "p50", "p90")
    }


def test_index_stats_empty_for_rgb_and_zero_for_all_no_data() -> None:
    assert index_stats(Image.from_array(np.zeros((4, 4, 3), np.uint8))) == {}
    stats = index_stats(Image.from_array(np.zeros((4, 4, 2), np.uint16), bands=("nir", "red")))
    assert stats == {"ndvi_mean": 0.0, "ndvi_std": 0.0, "ndvi_p10": 0.0, "ndvi_p50": 0.0, "ndvi_p90": 0.0}


# --------------------------------------------------------------------------------------------------
# Quality features
# --------------------------------------------------------------------------------------------------


def _constant(value: float, dtype: Any, bands: tuple[str, ...] = ("red", "green", "blue")) -> Image:
    return Image.from_array(np.full((40, 60, len(bands)), value, dtype), bands=bands)


@pytest.mark.parametrize(
    ("white", "black"),
    [
        (_constant(255, np.uint8), _constant(0, np.uint8)),
        (_constant(65535, np.uint16), _constant(0, np.uint16)),
        (
            _constant(1.0, np.float32, ("nir", "red", "red_edge")),
            _constant(0.0, np.float32, ("nir", "red", "red_edge")),
        ),
        (_constant(255, np.uint8, ("gray",)), _constant(0, np.uint8, ("gray",))),
    ],
    ids=["rgb8", "rgb16", "multispectral-float", "gray"],
)
def test_brightness_white_and_black(white: Image, black: Image) -> None:
    assert quality_features(white)["brightness"] == pytest.approx(1.0, abs=1e-6)
    assert quality_features(black)["brightness"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_constant_image_has_no_contrast_or_sharpness(dtype: Any) -> None:
    value = 0.3 if dtype == np.float32 else 100
    features = quality_features(_constant(value, dtype))
    assert features["contrast"] == pytest.approx(0.0, abs=1e-6)
    assert features["sharpness"] == pytest.approx(0.0, abs=1e-9)


def _checkerboard(side: int = 200, cell: int = 8) -> np.ndarray:
    yy, xx = np.indices((side, side))
    return (((yy // cell + xx // cell) % 2) * 255).astype(np.uint8)


def test_sharpness_higher_for_checkerboard_than_blurred() -> None:
    sharp = _checkerboard()
    blurred = cv2.GaussianBlur(sharp, (0, 0), sigmaX=4)
    s_sharp = quality_features(Image.from_array(sharp))["sharpness"]
    s_blur = quality_features(Image.from_array(blurred))["sharpness"]
    assert s_sharp > 10 * s_blur > 0


def test_rms_contrast_of_checkerboard() -> None:
    features = quality_features(Image.from_array(_checkerboard()))
    assert features["contrast"] == pytest.approx(0.5, abs=1e-3)  # half 0, half 1
    assert features["brightness"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    "shape", [(60, 80, 3), (300, 500, 3), (300, 500, 5)], ids=["small", "downscaled", "5-band"]
)
def test_uint8_and_uint16_give_the_same_features(shape: tuple[int, int, int]) -> None:
    u8 = RNG.integers(0, 256, size=shape).astype(np.uint8)
    bands = ("red", "green", "blue") if shape[2] == 3 else ("blue", "green", "red", "nir", "red_edge")
    f8 = quality_features(Image.from_array(u8, bands=bands))
    f16 = quality_features(Image.from_array(u8.astype(np.uint16) * 257, bands=bands))
    f32 = quality_features(Image.from_array(u8.astype(np.float32) / 255, bands=bands))
    assert f8.keys() == f16.keys() == f32.keys()
    for key in f8:
        assert f16[key] == pytest.approx(f8[key], abs=2e-3), key
        assert f32[key] == pytest.approx(f8[key], abs=2e-3), key


def test_feature_keys_rgb_and_multispectral() -> None:
    rgb = quality_features(_constant(10, np.uint8))
    assert set(rgb) == {
        *(f"{s}_{b}" for s in ("mean", "std") for b in ("red", "green", "blue")),
        "brightness",
        "contrast",
        "sharpness",
    }
    ms = quality_features(_constant(0.5, np.float32, ("nir", "red")))
    assert {"mean_nir", "std_red", "ndvi_mean", "ndvi_p90"} <= set(ms)
    assert "gndvi_mean" not in ms


def _reference_features(image: Image) -> dict[str, float]:
    """quality_features the slow, obvious way: float64 numpy on the 0..1 image (no downscale needed:
    the test images are ≤ 256 px)."""
    unit = (
        image.pixels.astype(np.float64)
        / {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}[image.dtype.name]
    )
    unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    out: dict[str, float] = {}
    for c, band in enumerate(image.bands):
        out[f"mean_{band}"] = float(unit[:, :, c].mean())
        out[f"std_{band}"] = float(unit[:, :, c].std())
    if set(image.bands) >= {"red", "green", "blue"}:
        weights = {"red": 0.299, "green": 0.587, "blue": 0.114}
        gray = sum(w * unit[:, :, image.band_position(b)] for b, w in weights.items())
    else:
        gray = unit.mean(axis=2)
    out["brightness"] = float(gray.mean())
    out["contrast"] = float(gray.std())
    # Laplacian (kernel 0 1 0 / 1 -4 1 / 0 1 0) with OpenCV's default border, reflect-101.
    g = np.pad(gray, 1, mode="reflect")
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    out["sharpness"] = float(lap.var())
    return out


@pytest.mark.parametrize(
    ("pixels", "bands"),
    [
        (RNG.integers(0, 256, size=(120, 90, 3)).astype(np.uint8), ("red", "green", "blue")),
        (RNG.integers(0, 256, size=(64, 64, 3)).astype(np.uint8), ("blue", "green", "red")),
        (RNG.integers(0, 65536, size=(70, 100, 3)).astype(np.uint16), ("red", "green", "blue")),
        (cv2.GaussianBlur(RNG.integers(0, 256, (96, 96)).astype(np.uint8), (0, 0), 3)[..., None], ("gray",)),
        (RNG.random((50, 40, 2), dtype=np.float32), ("nir", "red")),
        (
            RNG.integers(0, 65536, size=(40, 50, 5)).astype(np.uint16),
            ("blue", "green", "red", "nir", "red_edge"),
        ),
        # Planar (band-first) layout, as a planar TIFF decodes: a non-contiguous view.
        (
            np.moveaxis(RNG.integers(0, 256, size=(3, 30, 40)).astype(np.uint8), 0, 2),
            ("red", "green", "blue"),
        ),
    ],
    ids=["rgb8", "bgr-order", "rgb16", "gray-smooth", "float-2band", "5-band-16", "planar"],
)
def test_quality_features_match_a_float64_reference(pixels: np.ndarray, bands: tuple[str, ...]) -> None:
    """The fast path (source dtype, OpenCV reductions, float32 intensity) gives the float64 values to
    float32 rounding: 1e-6 relative on means/stds, 1e-5 relative on the variance of the Laplacian."""
    image = Image.from_array(pixels, bands=bands)
    got = quality_features(image)
    for key, expected in _reference_features(image).items():
        tolerance = 1e-5 if key == "sharpness" else 1e-6
        assert got[key] == pytest.approx(expected, rel=tolerance, abs=1e-9), key


def test_quality_features_hand_computed() -> None:
    # Left half black, right half pure red: red is 0 or 1 (mean 0.5, std 0.5), green and blue 0;
    # luma is 0 or 0.299.
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:, 4:, 0] = 255
    features = quality_features(Image.from_array(pixels))
    assert features["mean_red"] == pytest.approx(0.5, abs=1e-9)
    assert features["std_red"] == pytest.approx(0.5, abs=1e-9)
    assert features["mean_green"] == features["std_blue"] == 0.0
    assert features["brightness"] == pytest.approx(0.299 / 2, abs=1e-7)
    assert features["contrast"] == pytest.approx(0.299 / 2, abs=1e-7)
    # The Laplacian is ±0.299 on the two columns beside the edge (16 of 64 pixels), 0 elsewhere:
    # mean 0, variance 0.299² · 16 / 64.
    assert features["sharpness"] == pytest.approx(0.299**2 / 4, rel=1e-6)


def test_features_are_finite_floats_even_with_nan_no_data() -> None:
    pixels = RNG.random((50, 50, 2), dtype=np.float32)
    pixels[:10] = np.nan
    pixels[10:12] = np.inf
    features = quality_features(Image.from_array(pixels, bands=("nir", "red")))
    assert all(isinstance(v, float) and math.isfinite(v) for v in features.values())


# --------------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 64, 128])
def test_embedding_deterministic_and_sized(dim: int) -> None:
    image = Image.from_array(RNG.integers(0, 256, size=(100, 120, 3)).astype(np.uint8))
    first = embedding_projection(image, dim=dim)
    second = embedding_projection(image, dim=dim)
    assert first.shape == (dim,) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all()


def test_embedding_depends_on_seed_and_content_not_bit_depth() -> None:
    u8 = RNG.integers(0, 256, size=(64, 64, 3)).astype(np.uint8)
    base = embedding_projection(Image.from_array(u8))
    assert not np.allclose(base, embedding_projection(Image.from_array(u8), seed=1))
    assert not np.allclose(base, embedding_projection(Image.from_array(u8[::-1].copy())))
    # Same up to the rounding of the uint8 downscale (the embedding is in standard-deviation units).
    np.testing.assert_allclose(
        embedding_projection(Image.from_array(u8.astype(np.uint16) * 257)), base, atol=0.05
    )


def test_embedding_of_flat_image_is_zero() -> None:
    np.testing.assert_array_equal(embedding_projection(_constant(0.7, np.float32), dim=16), np.zeros(16))


def test_embedding_rejects_bad_dim() -> None:
    with pytest.raises(ValueError, match="dim"):
        embedding_projection(_constant(1, np.uint8), dim=0)
