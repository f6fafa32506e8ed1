"""prepare_input geometry, scaling, normalisation, layouts, channels; Transform inverse mapping; batch."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from keeneye.domain import InvalidInput
from keeneye.imaging import Image, InputSpec, Transform, batch, prepare_input

RNG = np.random.default_rng(11)


def rgb_image(height: int = 30, width: int = 40, dtype: Any = np.uint8) -> Image:
    hi = np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else 1.0
    pixels = (RNG.random((height, width, 3)) * hi).astype(dtype)
    return Image.from_array(pixels)


def multispectral(height: int = 12, width: int = 16) -> Image:
    pixels = RNG.random((height, width, 4), dtype=np.float32)
    pixels[0, 0] = 0.0  # a no-data pixel: zero denominators
    return Image.from_array(pixels, bands=("green", "red", "red_edge", "nir"))


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("original", "size", "resize", "expected"),
    [
        # (h, w), (spec h, spec w) → (resized h, resized w, pad top, pad left)
        ((30, 40), (64, 64), "letterbox", (48, 64, 8, 0)),
        ((40, 30), (64, 64), "letterbox", (64, 48, 0, 8)),
        ((100, 100), (32, 64), "letterbox", (32, 32, 0, 16)),
        ((10, 20), (10, 20), "letterbox", (10, 20, 0, 0)),
        ((31, 40), (64, 64), "letterbox", (50, 64, 7, 0)),  # odd padding: the extra row goes to the bottom
        ((30, 40), (48, 64), "stretch", (48, 64, 0, 0)),
        ((30, 40), (64, 64), "stretch", (64, 64, 0, 0)),
    ],
)
def test_fit_geometry(
    original: tuple[int, int], size: tuple[int, int], resize: str, expected: tuple[int, int, int, int]
) -> None:
    spec = InputSpec(height=size[0], width=size[1], resize=resize)
    t = Transform.fit(*original, spec)
    assert (t.resized_height, t.resized_width, t.pad_top, t.pad_left) == expected
    assert (t.input_height, t.input_width) == size


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_tensor_shapes(layout: str, resize: str) -> None:
    spec = InputSpec(height=48, width=64, layout=layout, resize=resize)
    tensor, _ = prepare_input(rgb_image(), spec)
    assert tensor.shape == ((3, 48, 64) if layout == "NCHW" else (48, 64, 3))
    assert tensor.dtype == np.float32
    assert tensor.flags.c_contiguous


def test_letterbox_pads_with_scaled_pad_value_and_keeps_content() -> None:
    image = Image.from_array(np.full((30, 40, 3), 255, np.uint8))
    spec = InputSpec(height=64, width=64, resize="letterbox", pad_value=114)
    tensor, t = prepare_input(image, spec)
    assert (t.pad_top, t.resized_height) == (8, 48)
    pad = np.float32(114 / 255)
    np.testing.assert_allclose(tensor[:, :8, :], pad)  # top border
    np.testing.assert_allclose(tensor[:, 56:, :], pad)  # bottom border
    np.testing.assert_allclose(tensor[:, 8:56, :], 1.0)  # white content


def test_stretch_matches_opencv_linear_resize() -> None:
    image = rgb_image()
    tensor, _ = prepare_input(image, InputSpec(height=20, width=25, layout="NHWC"))
    expected = cv2.resize(np.ascontiguousarray(image.pixels), (25, 20), interpolation=cv2.INTER_LINEAR) / 255
    np.testing.assert_allclose(tensor, expected, atol=1e-6)


def test_same_size_needs_no_resize_and_is_exact() -> None:
    image = rgb_image(dtype=np.uint16)
    tensor, t = prepare_input(image, InputSpec(height=30, width=40, layout="NHWC"))
    np.testing.assert_allclose(tensor, image.pixels / 65535, rtol=1e-6)
    assert (t.scale_x, t.scale_y, t.pad_top, t.pad_left) == (1.0, 1.0, 0, 0)


# --------------------------------------------------------------------------------------------------
# Values: scale, mean/std, layouts, dtypes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "raw", "scale", "expected"),
    [
        (np.uint8, 128, None, 128 / 255),
        (np.uint16, 30000, None, 30000 / 65535),
        (np.float32, 0.25, None, 0.25),
        (np.uint8, 128, 1.0, 128.0),
        (np.uint16, 4000, 1 / 4095, 4000 / 4095),  # 12-bit sensor in 16-bit words
    ],
)
def test_scale(dtype: Any, raw: float, scale: float | None, expected: float) -> None:
    image = Image.from_array(np.full((4, 4, 3), raw, dtype))
    tensor, _ = prepare_input(image, InputSpec(height=4, width=4, scale=scale))
    np.testing.assert_allclose(tensor, expected, rtol=1e-6)


def test_mean_std_normalisation() -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 255, 128, 0
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    tensor, _ = prepare_input(Image.from_array(pixels), InputSpec(height=4, width=4, mean=mean, std=std))
    for c, raw in enumerate((255, 128, 0)):
        np.testing.assert_allclose(tensor[c], (raw / 255 - mean[c]) / std[c], rtol=1e-5)


def test_mean_std_apply_to_letterbox_padding_too() -> None:
    spec = InputSpec(height=8, width=4, resize="letterbox", pad_value=0, mean=[0.5] * 3, std=[0.25] * 3)
    tensor, t = prepare_input(Image.from_array(np.full((4, 4, 3), 255, np.uint8)), spec)
    assert t.pad_top == 2
    np.testing.assert_allclose(tensor[:, 0, :], (0 - 0.5) / 0.25)
    np.testing.assert_allclose(tensor[:, 4, :], (1 - 0.5) / 0.25)


def test_nhwc_is_nchw_transposed() -> None:
    image = rgb_image()
    kwargs: dict[str, Any] = {"height": 32, "width": 32, "resize": "letterbox", "mean": [0.1, 0.2, 0.3]}
    chw, _ = prepare_input(image, InputSpec(layout="NCHW", **kwargs))
    hwc, _ = prepare_input(image, InputSpec(layout="NHWC", **kwargs))
    np.testing.assert_array_equal(chw.transpose(1, 2, 0), hwc)


@pytest.mark.parametrize(
    ("dtype", "expected_dtype", "expected_value"),
    [("float16", np.float16, 0.5), ("uint8", np.uint8, 128), ("float32", np.float32, 0.5)],
)
def test_output_dtype(dtype: str, expected_dtype: Any, expected_value: float) -> None:
    image = Image.from_array(np.full((4, 4, 3), 0.5, np.float32))
    tensor, _ = prepare_input(image, InputSpec(height=4, width=4, dtype=dtype))
    assert tensor.dtype == expected_dtype
    np.testing.assert_allclose(tensor.astype(np.float32), expected_value, atol=1e-3)


# --------------------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------------------


def test_channels_selected_by_name_in_model_order() -> None:
    image = multispectral()
    tensor, _ = prepare_input(image, InputSpec(height=12, width=16, channels=["nir", "RedEdge", "red"]))
    for c, name in enumerate(("nir", "red_edge", "red")):
        np.testing.assert_array_equal(tensor[c], image.band(name))


def test_ndvi_channel_is_computed_unscaled() -> None:
    pixels = np.zeros((2, 3, 2), np.uint16)
    pixels[..., 0] = [[40000, 30000, 0], [100, 65535, 1]]  # nir
    pixels[..., 1] = [[20000, 30000, 0], [300, 0, 1]]  # red
    image = Image.from_array(pixels, bands=("nir", "red"))
    spec = InputSpec(height=2, width=3, channels=["red", "ndvi"], layout="NHWC")
    tensor, _ = prepare_input(image, spec)
    np.testing.assert_allclose(tensor[..., 0], pixels[..., 1] / 65535, rtol=1e-6)
    np.testing.assert_allclose(tensor[..., 1], [[1 / 3, 0.0, 0.0], [-0.5, 1.0, 0.0]], rtol=1e-6)


def test_index_channel_letterbox_pads_with_zero() -> None:
    image = multispectral(height=8, width=16)
    spec = InputSpec(
        height=16, width=16, channels=["ndvi", "nir"], resize="letterbox", pad_value=100, scale=0.01
    )
    tensor, t = prepare_input(image, spec)
    assert t.pad_top == 4
    np.testing.assert_array_equal(tensor[0, :4], 0.0)  # index: neutral 0
    np.testing.assert_allclose(tensor[1, :4], 1.0)  # band: pad_value × scale


def test_subset_of_bands_resized_like_all_bands() -> None:
    image = Image.from_array(RNG.random((20, 30, 5), dtype=np.float32), bands=("b", "g", "r", "nir", "re"))
    spec_all = InputSpec(height=10, width=12, channels=["b", "g", "r", "nir", "re"])
    spec_sub = InputSpec(height=10, width=12, channels=["nir", "g"])
    all_bands, _ = prepare_input(image, spec_all)
    subset, _ = prepare_input(image, spec_sub)
    np.testing.assert_allclose(subset, all_bands[[3, 1]], atol=1e-6)


def test_planar_view_gives_the_same_tensor_as_contiguous() -> None:
    planes = RNG.random((3, 20, 30), dtype=np.float32)
    planar = Image.from_array(np.moveaxis(planes, 0, -1))  # non-contiguous (H, W, C) view, as a planar TIFF
    contiguous = Image.from_array(np.ascontiguousarray(np.moveaxis(planes, 0, -1)))
    spec = InputSpec(height=11, width=13, resize="letterbox")
    a, _ = prepare_input(planar, spec)
    b, _ = prepare_input(contiguous, spec)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_gray_image_feeds_rgb_model() -> None:
    image = Image.from_array(np.full((4, 4), 51, np.uint8))
    tensor, _ = prepare_input(image, InputSpec(height=4, width=4))
    np.testing.assert_allclose(tensor, 0.2)


@pytest.mark.parametrize(
    ("bands", "channels", "message"),
    [
        (
            ("red", "green", "blue"),
            ["nir", "red"],
            "the model needs band 'nir'; the image has red, green, blue",
        ),
        (
            ("nir", "red_edge"),
            ["ndvi"],
            "the model needs ndvi, computed from bands nir and red; the image has",
        ),
        (("gray",), ["nir"], "the model needs band 'nir'; the image has gray"),
    ],
)
def test_missing_band_is_refused(bands: tuple[str, ...], channels: list[str], message: str) -> None:
    image = Image.from_array(np.zeros((4, 4, len(bands)), np.uint8), bands=bands)
    with pytest.raises(InvalidInput) as caught:
        prepare_input(image, InputSpec(height=4, width=4, channels=channels))
    assert caught.value.reason == "wrong_band_count"
    assert caught.value.message.startswith(message)


# --------------------------------------------------------------------------------------------------
# Back to the original image
# --------------------------------------------------------------------------------------------------

LETTERBOX_30x40_IN_64 = Transform.fit(30, 40, InputSpec(height=64, width=64, resize="letterbox"))
STRETCH_30x40_TO_60x80 = Transform.fit(30, 40, InputSpec(height=60, width=80))
LETTERBOX_40x30_IN_64 = Transform.fit(40, 30, InputSpec(height=64, width=64, resize="letterbox"))


@pytest.mark.parametrize(
    ("transform", "boxes", "expected"),
    [
        (LETTERBOX_30x40_IN_64, [[0, 8, 64, 56]], [[0, 0, 40, 30]]),  # the whole content area
        (LETTERBOX_30x40_IN_64, [[16, 24, 32, 40]], [[10, 10, 20, 20]]),
        (LETTERBOX_30x40_IN_64, [[-5, 0, 70, 70]], [[0, 0, 40, 30]]),  # clipped to the image
        (LETTERBOX_40x30_IN_64, [[8, 0, 56, 64], [24, 16, 40, 32]], [[0, 0, 30, 40], [10, 10, 20, 20]]),
        (STRETCH_30x40_TO_60x80, [[10, 10, 20, 20]], [[5, 5, 10, 10]]),
        (STRETCH_30x40_TO_60x80, np.zeros((0, 4)), np.zeros((0, 4))),
    ],
)
def test_boxes_to_original(transform: Transform, boxes: Any, expected: Any) -> None:
    out = transform.boxes_to_original(boxes)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(expected, np.float32).reshape(-1, 4), atol=1e-5)


def test_boxes_round_trip_through_forward_mapping() -> None:
    t = Transform.fit(123, 457, InputSpec(height=320, width=320, resize="letterbox"))
    original = np.array([[10, 20, 100, 110], [0, 0, 457, 123]], np.float32)
    forward = original * [t.scale_x, t.scale_y, t.scale_x, t.scale_y] + [t.pad_left, t.pad_top] * 2
    np.testing.assert_allclose(t.boxes_to_original(forward), original, atol=1e-3)


def test_mask_to_original_removes_padding_and_resizes() -> None:
    t = LETTERBOX_30x40_IN_64
    mask = np.zeros((64, 64), bool)
    mask[8 + 16 : 8 + 32, 16:32] = True  # original rows/cols 10..20
    out = t.mask_to_original(mask)
    assert out.shape == (30, 40) and out.dtype == np.bool_
    expected = np.zeros((30, 40), bool)
    expected[10:20, 10:20] = True
    np.testing.assert_array_equal(out, expected)


def test_mask_to_original_from_coarse_probability_stack() -> None:
    t = LETTERBOX_30x40_IN_64
    probs = np.zeros((2, 16, 16), np.float32)  # 1/4 of the input, like YOLO prototype masks
    probs[0, 2 + 4 : 2 + 8, 4:8] = 0.9  # input rows 24..40, cols 16..32 → original 10..20
    probs[1] = 0.4  # below threshold everywhere
    out = t.mask_to_original(probs, threshold=0.5)
    assert out.shape == (2, 30, 40)
    expected = np.zeros((30, 40), bool)
    expected[10:20, 10:20] = True
    np.testing.assert_array_equal(out[0], expected)
    assert not out[1].any()


def test_mask_to_original_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="mask must be"):
        LETTERBOX_30x40_IN_64.mask_to_original(np.zeros(5))


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------


def test_batch_stacks() -> None:
    spec = InputSpec(height=16, width=16)
    tensors = [prepare_input(rgb_image(), spec)[0] for _ in range(3)]
    out = batch(tensors)
    assert out.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(out[1], tensors[1])


@pytest.mark.parametrize(
    "tensors",
    [
        [],
        [np.zeros((3, 4, 4), np.float32), np.zeros((3, 4, 5), np.float32)],
        [np.zeros((3, 4, 4), np.float32), np.zeros((3, 4, 4), np.float16)],
    ],
    ids=["empty", "shape", "dtype"],
)
def test_batch_refuses_mismatch(tensors: list[np.ndarray]) -> None:
    with pytest.raises(ValueError):
        batch(tensors)
