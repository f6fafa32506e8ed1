"""Renderings for a browser: exact pixels of a tiny 4-band raster (crop-health's band order)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from keeneye.domain import InvalidInput
from keeneye.imaging import Image, encode_png, fit_within, render_image
from keeneye.imaging.render import choose_view, stretch, valid_pixels

BANDS = ("nir", "red_edge", "red", "green")
# one row of 7 pixels: (nir, red_edge, red, green); NDVI in the comment
ROW = [
    (0, 0, 0, 0),  # nodata: every band 0
    (300, 50, 100, 200),  # 0.5
    (500, 60, 500, 400),  # 0.0
    (0, 70, 400, 600),  # -1.0
    (1000, 80, 0, 800),  # 1.0
    (1300, 90, 300, 1000),  # 0.625
    (0, 100, 0, 1200),  # undefined: nir + red = 0
]


def raster() -> Image:
    return Image.from_array(np.asarray([ROW], dtype=np.uint16), BANDS)


def test_colour_infrared_stretches_each_band_between_its_percentiles_and_hides_nodata() -> None:
    rendered = render_image(raster(), nodata=0, low=0, high=100)
    assert rendered.view == "cir"  # no blue band: auto picks nir, red, green
    # nir 0..1300, red 0..500, green 200..1200 over the six valid pixels, ×255 / span, half up
    expected = [
        (0, 0, 0, 0),
        (59, 51, 0, 255),
        (98, 255, 51, 255),
        (0, 204, 102, 255),
        (196, 0, 153, 255),
        (255, 153, 204, 255),
        (0, 0, 255, 255),
    ]
    assert rendered.pixels.dtype == np.uint8 and rendered.pixels.shape == (1, 7, 4)
    assert [tuple(int(v) for v in px) for px in rendered.pixels[0]] == expected


def test_default_percentiles_clip_the_extremes() -> None:
    image = raster()
    valid = valid_pixels(image, nodata=0)
    assert valid.tolist() == [[False, True, True, True, True, True, True]]
    # green 200..1200: p2 = 220, p98 = 1180 (linear interpolation), so 255 / 960 per count
    assert stretch(image.band("green"), valid).tolist() == [[0, 0, 48, 101, 154, 207, 255]]


def test_ndvi_false_colour_follows_the_colormap_and_leaves_undefined_pixels_transparent() -> None:
    rendered = render_image(raster(), "ndvi", nodata=0)
    assert rendered.view == "ndvi"
    expected = [
        (0, 0, 0, 0),  # nodata
        (166, 217, 106, 255),  # 0.5: a stop
        (244, 109, 67, 255),  # 0.0: a stop
        (165, 0, 38, 255),  # -1.0
        (0, 104, 55, 255),  # 1.0
        (96, 185, 93, 255),  # 0.625: halfway between the 0.5 and 0.75 stops, 184.5 rounds up
        (0, 0, 0, 0),  # undefined index
    ]
    assert [tuple(int(v) for v in px) for px in rendered.pixels[0]] == expected


def test_eight_bit_photos_keep_their_values_and_float_nan_is_invalid() -> None:
    photo = Image.from_array(np.asarray([[[10, 20, 30], [0, 0, 0]]], dtype=np.uint8))
    rendered = render_image(photo)
    assert rendered.view == "rgb"
    assert rendered.pixels.tolist() == [[[10, 20, 30, 255], [0, 0, 0, 255]]]  # no nodata unless asked
    floats = Image.from_array(np.asarray([[[0.1, 0.2], [np.nan, 0.3]]], dtype=np.float32), ("b0", "b1"))
    gray = render_image(floats, low=0, high=100)
    assert gray.view == "gray"
    assert gray.pixels[0, :, 3].tolist() == [255, 0]


@pytest.mark.parametrize(
    ("view", "message"),
    [
        ("rgb", "the rgb view needs bands red, green, blue; the image has nir, red_edge, red, green"),
        ("ndvi", None),
        ("cir", None),
        ("gray", None),
    ],
)
def test_a_view_the_bands_cannot_give_is_refused_by_name(view: str, message: str | None) -> None:
    if message is None:
        assert choose_view(raster(), view) == view  # type: ignore[arg-type]
        return
    with pytest.raises(InvalidInput) as err:
        choose_view(raster(), view)  # type: ignore[arg-type]
    assert err.value.reason == "wrong_band_count"
    assert str(err.value) == message


def test_png_round_trip_and_downscale() -> None:
    rgba = np.zeros((40, 100, 4), np.uint8)
    rgba[:, :, 0] = 200
    rgba[:, :, 3] = 255
    small = fit_within(rgba, 50)
    assert small.shape == (20, 50, 4)
    assert fit_within(rgba, 500) is rgba
    back = cv2.imdecode(np.frombuffer(encode_png(small), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.shape == (20, 50, 4)
    assert back[0, 0].tolist() == [0, 0, 200, 255]  # BGRA on disk: red stays red
