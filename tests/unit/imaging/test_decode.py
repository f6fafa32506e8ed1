"""Decode round trips per format / dtype / layout, GeoTIFF tags, and every refusal reason."""

from __future__ import annotations

import hashlib
import io
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from keeneye.domain import InvalidInput
from keeneye.imaging import GeoInfo, Image, content_hash, decode_image, probe_image, sniff_format

LIMIT = 100_000_000
RNG = np.random.default_rng(7)


# --------------------------------------------------------------------------------------------------
# Encoders (every test image is generated here)
# --------------------------------------------------------------------------------------------------


def _random(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    if np.dtype(dtype) == np.float32:
        return RNG.random(shape, dtype=np.float32)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def png(pixels_rgb_or_gray: np.ndarray) -> bytes:
    arr = pixels_rgb_or_gray
    if arr.ndim == 3 and arr.shape[2] >= 3:  # OpenCV writes BGR(A)
        arr = np.ascontiguousarray(arr[:, :, [2, 1, 0, *range(3, arr.shape[2])]])
    ok, enc = cv2.imencode(".png", arr)
    assert ok
    return enc.tobytes()


def jpeg(pixels_rgb_or_gray: np.ndarray, quality: int = 100) -> bytes:
    arr = pixels_rgb_or_gray
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[:, :, ::-1])
    ok, enc = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return enc.tobytes()


def tiff(data: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int) -> bytes:
    """A valid 8-bit gray PNG of side × side zeros, compressed while streaming (never in memory whole)."""
    compressor = zlib.compressobj(9)
    rows = b"\x00" * ((side + 1) * 1000)  # filter byte + pixels, 1000 rows at a time
    idat = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def tiff_by_hand(width: int, height: int, *, compression: int = 1, data: bytes = b"") -> bytes:
    """A minimal little-endian 8-bit gray TIFF whose header says what we want, whatever the data."""
    data_offset = 8 + 2 + 9 * 12 + 4
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, compression),
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, data_offset),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data


def geokeys(*keys: tuple[int, int]) -> tuple[int, ...]:
    """GeoKeyDirectory: version 1.1.0, then (key, location 0 = inline SHORT, count 1, value)."""
    flat: list[int] = [1, 1, 0, len(keys)]
    for key, value in keys:
        flat += [key, 0, 1, value]
    return tuple(flat)


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------

RGB8 = _random((24, 32, 3), np.uint8)
GRAY8 = _random((24, 32), np.uint8)
RGB16 = _random((24, 32, 3), np.uint16)
GRAY16 = _random((24, 32), np.uint16)


@pytest.mark.parametrize(
    ("data", "expected", "bands"),
    [
        pytest.param(png(RGB8), RGB8, ("red", "green", "blue"), id="png-rgb-uint8"),
        pytest.param(png(GRAY8), GRAY8[:, :, None], ("gray",), id="png-gray-uint8"),
        pytest.param(png(RGB16), RGB16, ("red", "green", "blue"), id="png-rgb-uint16"),
        pytest.param(png(GRAY16), GRAY16[:, :, None], ("gray",), id="png-gray-uint16"),
        pytest.param(
            png(np.dstack([RGB8, GRAY8])), RGB8, ("red", "green", "blue"), id="png-rgba-drops-alpha"
        ),
    ],
)
def test_png_round_trip_is_exact(data: bytes, expected: np.ndarray, bands: tuple[str, ...]) -> None:
    image = decode_image(data, max_pixels=LIMIT)
    assert image.format == "png"
    assert image.bands == bands
    assert image.dtype == expected.dtype
    np.testing.assert_array_equal(image.pixels, expected)


@pytest.mark.parametrize(
    ("pixels", "bands"),
    [
        pytest.param(np.full((24, 32, 3), (200, 40, 90), np.uint8), ("red", "green", "blue"), id="jpeg-rgb"),
        pytest.param(np.full((24, 32), 77, np.uint8), ("gray",), id="jpeg-gray"),
    ],
)
def test_jpeg_round_trip_keeps_rgb_order(pixels: np.ndarray, bands: tuple[str, ...]) -> None:
    image = decode_image(jpeg(pixels), max_pixels=LIMIT)
    assert (image.format, image.bands, image.dtype) == ("jpeg", bands, np.dtype(np.uint8))
    assert image.pixels.shape == (24, 32, len(bands))
    expected = pixels.reshape(image.pixels.shape).astype(int)
    assert np.abs(image.pixels.astype(int) - expected).max() <= 3  # lossy, but channels in RGB order


def test_jpeg_exif_orientation_is_applied() -> None:
    pil = PILImage.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    pil.save(buf, "JPEG", exif=exif.tobytes())
    image = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert (image.height, image.width) == (40, 20)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(
    ("layout", "kwargs"),
    [
        ("hwc", {"photometric": "rgb"}),  # interleaved samples (YXS)
        ("chw", {"photometric": "minisblack", "planarconfig": "separate"}),  # planar samples (SYX)
        ("pages", {"photometric": "minisblack"}),  # one page per band (QYX)
        ("hw", {}),  # single band
    ],
)
def test_tiff_round_trip(dtype: Any, layout: str, kwargs: dict[str, Any]) -> None:
    hwc = _random((16, 20, 3), dtype)
    if layout == "hwc":
        data, expected = tiff(hwc, **kwargs), hwc
    elif layout == "hw":
        data, expected = tiff(hwc[:, :, 0], **kwargs), hwc[:, :, :1]
    else:
        data, expected = tiff(np.ascontiguousarray(hwc.transpose(2, 0, 1)), **kwargs), hwc
    image = decode_image(data, max_pixels=LIMIT)
    assert image.format == "tiff"
    assert image.dtype == np.dtype(dtype)
    assert image.bands == (("red", "green", "blue") if expected.shape[2] == 3 else ("b0",))
    np.testing.assert_array_equal(image.pixels, expected)
    assert image.geo is None


def test_multispectral_tiff_with_band_map() -> None:
    planes = RNG.random((4, 18, 22), dtype=np.float32)
    data = tiff(planes, photometric="minisblack", planarconfig="separate")
    image = decode_image(
        data, band_map=["NIR", "RedEdge", "red", "green"], max_pixels=LIMIT, expected_bands=4
    )
    assert image.bands == ("nir", "red_edge", "red", "green")  # names canonicalised
    assert (image.height, image.width, image.dtype) == (18, 22, np.dtype(np.float32))
    for k, name in enumerate(image.bands):
        np.testing.assert_array_equal(image.band(name), planes[k])
    assert not image.pixels.flags.writeable


def test_tiff_without_band_map_and_five_bands_gets_numbered_names() -> None:
    image = decode_image(tiff(_random((5, 8, 8), np.uint16), photometric="minisblack"), max_pixels=LIMIT)
    assert image.bands == ("b0", "b1", "b2", "b3", "b4")


@pytest.mark.parametrize(
    "kwargs",
    [{"byteorder": ">"}, {"compression": "zlib"}, {"tile": (16, 16)}],
    ids=["big-endian", "deflate", "tiled"],
)
def test_tiff_variants_decode(kwargs: dict[str, Any]) -> None:
    pixels = _random((32, 48), np.uint16)
    image = decode_image(tiff(pixels, **kwargs), max_pixels=LIMIT)
    np.testing.assert_array_equal(image.pixels[:, :, 0], pixels)


def test_band_map_renames_png_bands() -> None:
    image = decode_image(png(RGB8), band_map=["nir", "red", "green"], max_pixels=LIMIT)  # a CIR camera
    assert image.bands == ("nir", "red", "green")
    np.testing.assert_array_equal(image.band("nir"), RGB8[:, :, 0])


# --------------------------------------------------------------------------------------------------
# GeoTIFF
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extratags", "expected"),
    [
        pytest.param(
            [
                (33550, "d", 3, (0.05, 0.05, 0.0)),
                (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4100000.0, 0.0)),
                (34735, "H", 16, geokeys((1024, 1), (1025, 1), (3072, 32633))),
            ],
            GeoInfo(500000.0, 4100000.0, 0.05, -0.05, epsg=32633),
            id="scale-tiepoint-utm",
        ),
        pytest.param(
            [
                (33550, "d", 3, (2.0, 3.0, 0.0)),
                (33922, "d", 6, (10.0, 20.0, 0.0, 1000.0, 2000.0, 0.0)),  # tiepoint at pixel (10, 20)
                (34735, "H", 12, geokeys((1024, 1), (3072, 25832))),
            ],
            GeoInfo(980.0, 2060.0, 2.0, -3.0, epsg=25832),
            id="tiepoint-off-origin",
        ),
        pytest.param(
            [
                (34264, "d", 16, (1e-5, 0.5e-5, 0, 13.4, 0.2e-5, -1e-5, 0, 52.5, 0, 0, 0, 0, 0, 0, 0, 1)),
                (34735, "H", 12, geokeys((1024, 2), (2048, 4326))),
            ],
            GeoInfo(13.4, 52.5, 1e-5, -1e-5, rotation_x=0.5e-5, rotation_y=0.2e-5, epsg=4326),
            id="transformation-matrix-wgs84",
        ),
        pytest.param(
            [
                (33550, "d", 3, (1.0, 1.0, 0.0)),
                (33922, "d", 6, (0.0, 0.0, 0.0, 100.0, 200.0, 0.0)),
                (34735, "H", 16, geokeys((1024, 1), (1025, 2), (3072, 32767))),
            ],
            GeoInfo(99.5, 200.5, 1.0, -1.0, epsg=None),  # PixelIsPoint → corner; user-defined CRS
            id="pixel-is-point-user-crs",
        ),
    ],
)
def test_geotiff_tags(extratags: list[tuple[Any, ...]], expected: GeoInfo) -> None:
    data = tiff(_random((3, 10, 12), np.float32), photometric="minisblack", extratags=extratags)
    image = decode_image(data, band_map=["nir", "red_edge", "red"], max_pixels=LIMIT)
    assert image.geo is not None
    assert image.geo.epsg == expected.epsg
    np.testing.assert_allclose(image.geo.geotransform, expected.geotransform, rtol=0, atol=1e-9)


def test_geoinfo_pixel_to_world_and_area() -> None:
    geo = GeoInfo(500000.0, 4100000.0, 0.05, -0.05, epsg=32633)
    assert geo.pixel_to_world(10, 20) == pytest.approx((500000.5, 4099999.0))
    assert geo.pixel_area == pytest.approx(0.0025)


# --------------------------------------------------------------------------------------------------
# Refusals: every case asserts the exact reason
# --------------------------------------------------------------------------------------------------


def _corrupt_jpeg() -> bytes:
    return b"\xff\xd8\xff" + np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8).tobytes()


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(jpeg(RGB8))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_bad_crc() -> bytes:
    data = bytearray(png(RGB8))
    data[data.find(b"IDAT") + 20] ^= 0xFF
    return bytes(data)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


REFUSALS: list[Any] = [
    pytest.param(lambda: b"", {}, "empty", id="empty"),
    pytest.param(lambda: b"hello", {}, "unsupported_format", id="text-named-jpg"),
    pytest.param(lambda: b"GIF89a" + bytes(100), {}, "unsupported_format", id="gif"),
    pytest.param(_corrupt_jpeg, {}, "corrupt_image", id="jpeg-random-after-soi"),
    pytest.param(lambda: _half(jpeg(RGB8)), {}, "corrupt_image", id="jpeg-truncated"),
    pytest.param(lambda: b"\xff\xd8\xff", {}, "corrupt_image", id="jpeg-soi-only"),
    pytest.param(lambda: _half(png(RGB8)), {}, "corrupt_image", id="png-truncated"),
    pytest.param(lambda: png(RGB8)[:40], {}, "corrupt_image", id="png-header-only"),
    pytest.param(_png_bad_crc, {}, "corrupt_image", id="png-bad-idat"),
    pytest.param(
        lambda: b"II*\x00" + bytes(RNG.integers(0, 256, 300, dtype=np.uint8)),
        {},
        "corrupt_image",
        id="tiff-garbage",
    ),
    pytest.param(lambda: tiff(GRAY16)[:-300], {}, "corrupt_image", id="tiff-truncated"),
    pytest.param(lambda: _jpeg_claiming(30000, 30000), {}, "too_many_pixels", id="jpeg-sof-bomb"),
    pytest.param(lambda: tiff_by_hand(30000, 30000), {}, "too_many_pixels", id="tiff-header-bomb"),
    pytest.param(lambda: png(RGB8), {"max_pixels": 24 * 32 - 1}, "too_many_pixels", id="png-one-over-limit"),
    pytest.param(
        lambda: tiff(_random((2, 8, 8), np.uint16), photometric="minisblack", planarconfig="separate"),
        {"expected_bands": 3},
        "wrong_band_count",
        id="tiff-2-bands-model-needs-3",
    ),
    pytest.param(
        lambda: tiff(_random((2, 8, 8), np.uint16), photometric="minisblack", planarconfig="separate"),
        {"band_map": ["nir", "red_edge", "red"]},
        "wrong_band_count",
        id="tiff-2-bands-band-map-3",
    ),
    pytest.param(
        lambda: png(RGB8), {"band_map": ["b", "g", "r", "nir"]}, "wrong_band_count", id="png-band-map-4"
    ),
    pytest.param(
        lambda: jpeg(GRAY8), {"expected_bands": 3}, "wrong_band_count", id="jpeg-gray-model-needs-3"
    ),
    pytest.param(lambda: tiff(_random((8, 8), np.uint32)), {}, "unsupported_dtype", id="tiff-uint32"),
    pytest.param(lambda: tiff(np.zeros((8, 8), np.complex64)), {}, "unsupported_dtype", id="tiff-complex64"),
    pytest.param(lambda: tiff(np.zeros((8, 8), np.int16)), {}, "unsupported_dtype", id="tiff-int16"),
    pytest.param(lambda: tiff(np.zeros((8, 8), np.float64)), {}, "unsupported_dtype", id="tiff-float64"),
    pytest.param(
        lambda: tiff_by_hand(4, 4, compression=5, data=bytes(16)),
        {},
        "corrupt_image",
        id="tiff-lzw-garbage",
    ),
    pytest.param(
        lambda: tiff(np.zeros((2, 3, 8, 8), np.uint8), photometric="minisblack"),
        {},
        "unsupported_format",
        id="tiff-4d",
    ),
    pytest.param(
        lambda: tiff(np.zeros((65, 4, 4), np.uint8), photometric="minisblack"),
        {},
        "too_many_bands",
        id="tiff-65-bands",
    ),
]


@pytest.mark.parametrize(("make", "kwargs", "reason"), REFUSALS)
def test_refusals(make: Callable[[], bytes], kwargs: dict[str, Any], reason: str) -> None:
    kwargs = {"max_pixels": LIMIT, **kwargs}
    with pytest.raises(InvalidInput) as caught:
        decode_image(make(), **kwargs)
    err = caught.value
    assert err.reason == reason
    assert err.status == 422
    assert "\n" not in err.message and err.fix


def test_wrong_band_count_message_names_the_bands() -> None:
    data = tiff(_random((2, 8, 8), np.uint16), photometric="minisblack", planarconfig="separate")
    with pytest.raises(InvalidInput) as caught:
        decode_image(data, max_pixels=LIMIT, expected_bands=3, band_map=None)
    assert caught.value.message == "TIFF has 2 bands, the model needs 3"
    with pytest.raises(InvalidInput) as caught:
        decode_image(data, max_pixels=LIMIT, band_map=["nir", "red_edge", "red"])
    assert caught.value.message == "TIFF has 2 bands, the band map names 3 (nir, red_edge, red)"


def test_too_many_pixels_message() -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(tiff_by_hand(30000, 30000), max_pixels=LIMIT)
    assert caught.value.message == "TIFF is 30000×30000 = 900000000 pixels, limit 100000000"
    assert "KEENEYE_IMAGING__MAX_PIXELS" in (caught.value.fix or "")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb(30000)


def test_png_bomb_is_refused_fast_without_decoding(bomb: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(bomb) < 2_000_000  # ~0.9 MB of compressed zeros for 900 megapixels

    def _no_decode(*_: Any) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(cv2, "imdecode", _no_decode)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as caught:
        decode_image(bomb, max_pixels=LIMIT)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert caught.value.reason == "too_many_pixels"
    assert elapsed < 1.0
    assert peak < 1_000_000  # no copy of the input, let alone the 900 MB of pixels


def test_jpeg_trailing_bytes_after_eoi_are_tolerated() -> None:
    image = decode_image(jpeg(RGB8) + b"CAMERA-TRAILER\x00\x00", max_pixels=LIMIT)
    assert image.pixels.shape == (24, 32, 3)


# --------------------------------------------------------------------------------------------------
# Hash, sniffing, probing, Image
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"hello", png(RGB8)], ids=["empty", "text", "png"])
def test_content_hash_is_sha256(data: bytes) -> None:
    assert content_hash(data) == hashlib.sha256(data).hexdigest()


def test_image_carries_the_hash_of_its_bytes() -> None:
    data = png(RGB8)
    assert decode_image(data, max_pixels=LIMIT).content_hash == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("data", "fmt"),
    [(jpeg(RGB8), "jpeg"), (png(RGB8), "png"), (tiff(GRAY8), "tiff"), (tiff(GRAY8, byteorder=">"), "tiff")],
    ids=["jpeg", "png", "tiff-le", "tiff-be"],
)
def test_sniff_by_magic(data: bytes, fmt: str) -> None:
    assert sniff_format(data) == fmt


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg(RGB8), ("jpeg", 32, 24, 3, np.uint8)),
        (png(GRAY16), ("png", 32, 24, 1, np.uint16)),
        (tiff(_random((4, 24, 32), np.float32), photometric="minisblack"), ("tiff", 32, 24, 4, np.float32)),
    ],
    ids=["jpeg", "png16", "tiff"],
)
def test_probe_reads_header_only(data: bytes, expected: tuple[Any, ...]) -> None:
    header = probe_image(data)
    assert (header.format, header.width, header.height, header.bands, header.dtype) == expected


def test_image_band_lookup() -> None:
    image = Image.from_array(RGB8)
    assert image.bands == ("red", "green", "blue")
    np.testing.assert_array_equal(image.band("Green"), RGB8[:, :, 1])
    assert np.shares_memory(image.band("red"), RGB8)  # a view, not a copy
    with pytest.raises(KeyError, match="the image has red, green, blue"):
        image.band("nir")


@pytest.mark.parametrize(
    ("pixels", "bands", "message"),
    [
        (np.zeros((4, 4), np.uint8), ("gray",), "must be"),
        (np.zeros((4, 4, 2), np.uint8), ("a",), "names given"),
        (np.zeros((4, 4, 1), np.int32), ("a",), "dtype"),
        (np.zeros((4, 4, 2), np.uint8), ("red", "Red"), "unique"),
    ],
)
def test_image_rejects_inconsistent_construction(
    pixels: np.ndarray, bands: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Image(pixels=pixels, bands=bands, format="array", content_hash="")


@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd"])
def test_compressed_geotiff_round_trip(compression: str) -> None:
    """GDAL writes LZW often; imagecodecs (a dependency) decodes it."""
    arr = np.arange(4 * 16 * 16, dtype=np.float32).reshape(16, 16, 4) / 1024
    image = decode_image(
        tiff(arr, compression=compression), band_map=["nir", "red_edge", "red", "green"], max_pixels=LIMIT
    )
    np.testing.assert_array_equal(image.pixels, arr)
    assert image.bands == ("nir", "red_edge", "red", "green")
