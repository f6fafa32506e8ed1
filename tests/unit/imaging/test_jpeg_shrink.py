"""JPEG DCT-scaled decoding (``decode_image(shrink_to=…)``): what is decoded smaller, what stays in
full-size coordinates, and that the model input barely changes."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from keeneye.imaging import decode_image, prepare_input
from keeneye.imaging.decode import MIN_SHRUNK_SIDE, jpeg_shrink
from keeneye.models.manifest import InputSpec
from keeneye.pipelines import PipelineCatalog, prepare
from keeneye.settings import ImagingSettings, Settings
from tests.serving_support import species_manifest

LIMIT = 10**8


def photo(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A textured photo-like JPEG (smooth noise at several scales plus sensor noise)."""
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), np.float32)
    for cells in (4, 16, 64):
        grid = rng.random((max(2, cells * height // width), cells, 3), dtype=np.float32)
        base += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) * 80
    base += rng.normal(0, 6, base.shape).astype(np.float32)
    ok, buf = cv2.imencode(".jpg", np.clip(base, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf)


@pytest.mark.parametrize(
    ("width", "height", "target", "factor"),
    [
        (640, 480, (224, 224), 2),  # 320×240
        (4000, 3000, (224, 224), 8),  # 500×375
        (1024, 768, (128, 128), 4),  # 256×192: the longest side still 256
        (2048, 2048, (128, 128), 8),  # 256×256
        (300, 200, (224, 224), 1),  # 150×100 would be smaller than the model's input
        (1024, 300, (224, 224), 1),  # 512×150: too short
        (600, 400, (64, 64), 2),  # 300×200, not 150×100: features need a 256 px side
        (641, 481, (224, 224), 2),  # libjpeg rounds up: 321×241
    ],
)
def test_the_largest_factor_that_keeps_the_model_input_and_the_feature_side(
    width: int, height: int, target: tuple[int, int], factor: int
) -> None:
    assert jpeg_shrink(width, height, target) == factor
    if factor > 1:
        w, h = -(-width // factor), -(-height // factor)
        assert w >= target[0] and h >= target[1] and max(w, h) >= MIN_SHRUNK_SIDE


def test_a_photo_decodes_at_half_size_and_keeps_its_full_size() -> None:
    data = photo(640, 480)
    full = decode_image(data, max_pixels=LIMIT)
    small = decode_image(data, max_pixels=LIMIT, shrink_to=(224, 224))
    assert small.pixels.shape == (240, 320, 3) and small.full_size == (640, 480)
    assert (small.full_width, small.full_height) == (640, 480) == (full.full_width, full.full_height)
    assert full.full_size is None and small.content_hash == full.content_hash
    # the same picture: within JPEG noise of an area-averaged full decode
    area = cv2.resize(np.asarray(full.pixels), (320, 240), interpolation=cv2.INTER_AREA).astype(np.int16)
    assert np.abs(small.pixels.astype(np.int16) - area).mean() < 2.0


def test_the_model_input_is_nearly_the_same_and_maps_to_full_size() -> None:
    data = photo(640, 480, seed=3)
    spec = InputSpec(width=224, height=224, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    t_full, tr_full = prepare_input(decode_image(data, max_pixels=LIMIT), spec)
    t_small, tr_small = prepare_input(decode_image(data, max_pixels=LIMIT, shrink_to=(224, 224)), spec)
    assert tr_small == tr_full  # outputs map back to the stored 640×480 image either way
    assert (tr_small.original_width, tr_small.original_height) == (640, 480)
    assert t_small.shape == t_full.shape
    # normalised units (1/std ≈ 4.4 per unit of 0..1): a mean difference of a fraction of a grey level
    assert float(np.abs(t_small - t_full).mean()) < 0.05


def test_exif_orientation_turns_the_full_size_too() -> None:
    base = np.asarray(PILImage.open(io.BytesIO(photo(640, 480))))
    pil = PILImage.fromarray(base)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    pil.save(buf, "JPEG", exif=exif.tobytes(), quality=90)
    image = decode_image(buf.getvalue(), max_pixels=LIMIT, shrink_to=(224, 224))
    assert image.pixels.shape[:2] == (320, 240) and image.full_size == (480, 640)


def test_png_and_small_jpegs_decode_in_full() -> None:
    ok, png = cv2.imencode(".png", np.zeros((480, 640, 3), np.uint8))
    assert ok
    assert decode_image(bytes(png), max_pixels=LIMIT, shrink_to=(224, 224)).full_size is None
    small = decode_image(photo(300, 200), max_pixels=LIMIT, shrink_to=(224, 224))
    assert small.pixels.shape == (200, 300, 3) and small.full_size is None


def test_the_pipeline_decodes_shrunk_unless_switched_off(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    spec = PipelineCatalog(settings).get("species-id")
    manifest = species_manifest()  # 224 px input
    data = photo(1280, 960)
    shrunk = prepare(spec, manifest, data, settings)
    assert shrunk.image.pixels.shape[:2] == (240, 320) and shrunk.image.full_size == (1280, 960)
    assert (shrunk.transform.original_width, shrunk.transform.original_height) == (1280, 960)
    off = settings.model_copy(update={"imaging": ImagingSettings(jpeg_shrink=False)})
    full = prepare(spec, manifest, data, off)
    assert full.image.pixels.shape[:2] == (960, 1280) and full.image.full_size is None
