"""Fuzzing the decoders: mutated JPEG / PNG / TIFF / GeoTIFF bytes and zips end in an image or a stable
refusal reason, never another exception, and in bounded memory.

Hypothesis runs with a fixed seed and a bounded number of examples (``tests.fuzz_support``), so a
run is the same run every time; each seed file below is mutated by up to four edits. The table
tests cover the odd-but-valid inputs (1×1, 1-band, 1/4/12/16-bit, float, palettes, CMYK) and the
absurd headers (a huge width × height in an otherwise valid file), whose refusal must cost no pixel
buffer.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import rasterio
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from keeneye.domain import InvalidInput
from keeneye.geo import resolve_band_map
from keeneye.geo.capture import stack_zip
from keeneye.imaging import Image, decode_image, probe_image
from keeneye.imaging.archive import open_safe_zip, pack_files
from keeneye.pipelines import PipelineCatalog
from keeneye.pipelines.crophealth import geo_request, read_geo_input
from keeneye.settings import Settings
from tests.fuzz_support import FUZZ, examples, fuzzed
from tests.unit.geo.rasters import UTM33, UTM_TRANSFORM
from tests.unit.pipelines.crop_support import crop_manifest

MAX_PIXELS = 1 << 16  # the seeds are tiny: anything decoded past this came from a header nobody checked
IMAGE_REASONS = frozenset(
    {
        "empty",
        "unsupported_format",
        "corrupt_image",
        "too_many_pixels",
        "too_many_bands",
        "wrong_band_count",
        "unsupported_dtype",
    }
)
ZIP_REASONS = frozenset(
    {"corrupt_zip", "zip_too_many_members", "zip_unsafe_path", "zip_symlink", "zip_too_large", "zip_bomb"}
)
RASTER_REASONS = ZIP_REASONS | {
    "corrupt_raster",
    "unsupported_format",
    "image_too_large",
    "wrong_band_count",
    "band_map_mismatch",
    "raster_too_large",
    "empty_capture",
    "ambiguous_band_order",
    "capture_mismatch",
}
RNG = np.random.default_rng(18)


# --------------------------------------------------------------------------------------------------
# Seed files (all generated here)
# --------------------------------------------------------------------------------------------------


def _cv(ext: str, pixels: np.ndarray, *params: int) -> bytes:
    ok, enc = cv2.imencode(ext, pixels, list(params))
    assert ok
    return enc.tobytes()


def _pil(image: PILImage.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _tiff(data: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def _rgb(h: int = 17, w: int = 23) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _exif_jpeg() -> bytes:
    pil = PILImage.fromarray(_rgb())
    exif = pil.getexif()
    exif[0x0112] = 6  # rotated: the decoder turns it
    return _pil(pil, "JPEG", exif=exif.tobytes())


def _geotiff(bands: int = 5, dtype: str = "uint16", h: int = 24, w: int = 32) -> bytes:
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": bands,
        "dtype": dtype,
        "crs": UTM33,
        "transform": UTM_TRANSFORM,
    }
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(RNG.integers(1000, 20000, (bands, h, w)).astype(dtype))
        return bytes(mem.read())


JPEGS = {
    "rgb": _cv(".jpg", _rgb()),
    "gray": _cv(".jpg", _rgb()[:, :, 0]),
    "cmyk": _pil(PILImage.new("CMYK", (23, 17), (10, 200, 30, 40)), "JPEG"),
    "progressive": _pil(PILImage.fromarray(_rgb()), "JPEG", progressive=True),
    "exif": _exif_jpeg(),
    "1x1": _cv(".jpg", _rgb(1, 1)),
    # Large enough for DCT scaling (decode_image's shrink_to, what serving and the workers use).
    "large": _cv(".jpg", cv2.resize(_rgb(), (600, 400), interpolation=cv2.INTER_LINEAR)),
}
PNGS = {
    "rgb": _cv(".png", _rgb()),
    "gray": _cv(".png", _rgb()[:, :, 0]),
    "rgba": _cv(".png", np.dstack([_rgb(), _rgb()[:, :, :1]])),
    "rgb16": _cv(".png", RNG.integers(0, 65536, (17, 23, 3), dtype=np.uint16)),
    "palette": _pil(PILImage.fromarray(_rgb()).convert("P"), "PNG"),
    "palette-4bit-trns": _pil(PILImage.new("P", (23, 17), 3), "PNG", bits=4, transparency=0),
    "1bit": _pil(PILImage.new("1", (23, 17), 1), "PNG"),
    "gray-alpha": _pil(PILImage.new("LA", (23, 17), (90, 128)), "PNG"),
    "1x1": _cv(".png", _rgb(1, 1)[:, :, 0]),
}
TIFFS = {
    "u8": _tiff(_rgb()[:, :, 0]),
    "rgb": _tiff(_rgb(), photometric="rgb"),
    "u16-planar-5": _tiff(
        RNG.integers(0, 65536, (5, 17, 23), dtype=np.uint16),
        photometric="minisblack",
        planarconfig="separate",
    ),
    "f32": _tiff(RNG.random((17, 23), dtype=np.float32)),
    "pages": _tiff(RNG.integers(0, 256, (3, 17, 23), dtype=np.uint8), photometric="minisblack"),
    "deflate": _tiff(_rgb(), photometric="rgb", compression="zlib"),
    "tiled": _tiff(RNG.integers(0, 256, (32, 32), dtype=np.uint8), tile=(16, 16)),
    "bigtiff": _tiff(_rgb(), photometric="rgb", bigtiff=True),
    "big-endian": _tiff(RNG.integers(0, 65536, (17, 23), dtype=np.uint16), byteorder=">"),
    "palette": _tiff(
        RNG.integers(0, 256, (17, 23), dtype=np.uint8),
        photometric="palette",
        colormap=RNG.integers(0, 65536, (3, 256), dtype=np.uint16),
    ),
    "1bit": _pil(PILImage.new("1", (23, 17), 1), "TIFF"),
    "geotiff": _geotiff(),
    "1x1": _tiff(np.zeros((1, 1), np.uint8)),
}
SEEDS = (
    {f"jpeg-{k}": v for k, v in JPEGS.items()}
    | {f"png-{k}": v for k, v in PNGS.items()}
    | {f"tiff-{k}": v for k, v in TIFFS.items()}
)


# --------------------------------------------------------------------------------------------------
# The properties
# --------------------------------------------------------------------------------------------------


def _refusal(exc: InvalidInput, allowed: frozenset[str]) -> str:
    assert exc.reason in allowed, f"unexpected reason {exc.reason!r}: {exc.message}"
    assert exc.message and exc.fix, exc.reason
    assert 400 <= exc.status < 500
    return exc.reason


def decode_or_refuse(data: bytes, **kwargs: Any) -> Image | str:
    """The decoded image (checked for consistency) or the refusal's reason; anything else fails."""
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS, **kwargs)
    except InvalidInput as exc:
        return _refusal(exc, IMAGE_REASONS)
    assert image.width * image.height <= MAX_PIXELS
    assert image.pixels.shape == (image.height, image.width, len(image.bands))
    assert image.dtype in (np.uint8, np.uint16, np.float32)
    return image


def check_image_bytes(data: bytes, shrink_to: tuple[int, int] | None = None) -> None:
    decoded = decode_or_refuse(data, shrink_to=shrink_to)
    try:
        header = probe_image(data)
    except InvalidInput as exc:
        _refusal(exc, IMAGE_REASONS)
        assert not isinstance(decoded, Image), f"decoded, but the probe refuses: {exc.reason}"
        return
    if isinstance(decoded, Image):
        # The pixel limit is checked on the header: the decoder must have seen the same size (EXIF
        # orientation may turn a JPEG), else the check protects nothing.
        size = (decoded.full_width, decoded.full_height)
        assert sorted((header.width, header.height)) == sorted(size)
        assert header.bands == len(decoded.bands)


def check_zip_bytes(data: bytes) -> None:
    try:
        with open_safe_zip(data, name="fuzz.zip") as zf:
            for member in zf.members:
                assert len(zf.read(member)) == member.file_size
    except InvalidInput as exc:
        _refusal(exc, ZIP_REASONS)


@settings(FUZZ, max_examples=examples(400))
@given(fuzzed({k: v for k, v in SEEDS.items() if k.startswith("jpeg")}))
def test_mutated_jpeg_decodes_or_is_refused(data: bytes) -> None:
    check_image_bytes(data)
    check_image_bytes(data, shrink_to=(64, 64))  # 1/2 scale for the large seed


@settings(FUZZ, max_examples=examples(400))
@given(fuzzed({k: v for k, v in SEEDS.items() if k.startswith("png")}))
def test_mutated_png_decodes_or_is_refused(data: bytes) -> None:
    check_image_bytes(data)


@settings(FUZZ, max_examples=examples(500))
@given(fuzzed({k: v for k, v in SEEDS.items() if k.startswith("tiff")}))
def test_mutated_tiff_decodes_or_is_refused(data: bytes) -> None:
    check_image_bytes(data)


@settings(FUZZ, max_examples=examples(200))
@given(st.binary(max_size=64).map(lambda tail: b"\xff\xd8\xff" + tail) | st.binary(max_size=300))
def test_random_bytes_are_refused(data: bytes) -> None:
    assert isinstance(decode_or_refuse(data), str)


@settings(FUZZ, max_examples=examples(100))
@given(fuzzed(TIFFS), st.lists(st.sampled_from(["red", "green", "blue", "nir", "red_edge"]), unique=True))
def test_mutated_tiff_with_a_band_map(data: bytes, band_map: list[str]) -> None:
    decoded = decode_or_refuse(data, band_map=band_map)
    if isinstance(decoded, Image):
        assert decoded.bands == tuple(band_map)


# --------------------------------------------------------------------------------------------------
# Odd but valid inputs, and absurd headers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(JPEGS["1x1"], ((1, 1, 3), "uint8"), id="jpeg-1x1"),
        pytest.param(JPEGS["cmyk"], ((17, 23, 3), "uint8"), id="jpeg-cmyk"),
        pytest.param(JPEGS["progressive"], ((17, 23, 3), "uint8"), id="jpeg-progressive"),
        pytest.param(JPEGS["exif"], ((23, 17, 3), "uint8"), id="jpeg-exif-rotated"),
        pytest.param(PNGS["1x1"], ((1, 1, 1), "uint8"), id="png-1x1-gray"),
        pytest.param(PNGS["1bit"], ((17, 23, 1), "uint8"), id="png-1bit"),
        pytest.param(PNGS["palette"], ((17, 23, 3), "uint8"), id="png-palette"),
        pytest.param(PNGS["palette-4bit-trns"], ((17, 23, 3), "uint8"), id="png-4bit-palette-trns"),
        pytest.param(PNGS["gray-alpha"], ((17, 23, 1), "uint8"), id="png-gray-alpha"),
        pytest.param(PNGS["rgb16"], ((17, 23, 3), "uint16"), id="png-16bit"),
        pytest.param(TIFFS["1x1"], ((1, 1, 1), "uint8"), id="tiff-1x1-1band"),
        pytest.param(TIFFS["f32"], ((17, 23, 1), "float32"), id="tiff-float32"),
        pytest.param(TIFFS["big-endian"], ((17, 23, 1), "uint16"), id="tiff-16bit-big-endian"),
        pytest.param(
            _tiff(np.zeros((5, 9), np.uint16), bitspersample=12), ((5, 9, 1), "uint16"), id="tiff-12bit"
        ),
        pytest.param(TIFFS["u16-planar-5"], ((17, 23, 5), "uint16"), id="tiff-5band-planar"),
        pytest.param(TIFFS["palette"], ((17, 23, 3), "uint16"), id="tiff-palette-as-rgb"),
        pytest.param(TIFFS["1bit"], "unsupported_dtype", id="tiff-1bit"),
        pytest.param(_tiff(np.zeros((5, 9), np.float16)), "unsupported_dtype", id="tiff-float16"),
        pytest.param(_tiff(np.zeros((5, 9), np.float64)), "unsupported_dtype", id="tiff-float64"),
        pytest.param(_tiff(np.zeros((5, 9), np.int16)), "unsupported_dtype", id="tiff-int16"),
        pytest.param(
            _tiff(np.zeros((2, 5, 9, 3), np.uint8), photometric="rgb"), "unsupported_format", id="tiff-4d"
        ),
        pytest.param(
            _tiff(np.zeros((65, 2, 2), np.uint8), photometric="minisblack", planarconfig="separate"),
            "too_many_bands",
            id="tiff-65-bands",
        ),
    ],
)
def test_odd_images_decode_or_give_their_reason(
    data: bytes, expected: tuple[tuple[int, ...], str] | str
) -> None:
    decoded = decode_or_refuse(data)
    if isinstance(expected, str):
        assert decoded == expected
    else:
        assert isinstance(decoded, Image), decoded
        assert (decoded.pixels.shape, str(decoded.dtype)) == expected


def _jpeg_sized(width: int, height: int) -> bytes:
    data = bytearray(JPEGS["rgb"])
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_sized(width: int, height: int) -> bytes:
    data = bytearray(PNGS["rgb"])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # a valid IHDR CRC
    return bytes(data)


def _png_chunk_bomb(length: int) -> bytes:
    """A small PNG whose IDAT chunk declares ``length`` bytes (found by the fuzzer: OpenCV allocated
    the declared length, 2–4 GB and seconds, before reading a 100-byte file)."""
    data = bytearray(PNGS["rgb"])
    idat = data.index(b"IDAT") - 4
    data[idat : idat + 4] = struct.pack(">I", length)
    return bytes(data)


def _tiff_sized(width: int, height: int, samples: int = 1) -> bytes:
    """A little-endian 8-bit TIFF whose tags say ``width × height × samples`` over 64 bytes of data."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 8 * 12 + 4),
        (277, 3, 1, samples),
        (279, 4, 1, 64),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(64)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(_jpeg_sized(65535, 65535), "too_many_pixels", id="jpeg-65535x65535"),
        pytest.param(_jpeg_sized(65535, 2), "too_many_pixels", id="jpeg-65535x2"),
        pytest.param(_jpeg_sized(0, 17), "unsupported_format", id="jpeg-width-0"),
        pytest.param(_png_sized(2**31 - 1, 2**31 - 1), "too_many_pixels", id="png-2^31-square"),
        pytest.param(_png_sized(1, 2**31 - 1), "too_many_pixels", id="png-1-wide"),
        pytest.param(_png_sized(0, 5), "corrupt_image", id="png-width-0"),
        pytest.param(_png_chunk_bomb(0x7FFFFF00), "corrupt_image", id="png-2GB-chunk"),
        pytest.param(_png_chunk_bomb(0xFFFF8000), "corrupt_image", id="png-4GB-chunk"),
        pytest.param(_tiff_sized(2**32 - 1, 2**32 - 1), "too_many_pixels", id="tiff-2^32-square"),
        pytest.param(_tiff_sized(255, 255), "corrupt_image", id="tiff-data-missing"),
        pytest.param(_tiff_sized(1, 1, samples=65535), "too_many_bands", id="tiff-65535-samples"),
    ],
)
def test_absurd_headers_are_refused_without_a_pixel_buffer(data: bytes, reason: str) -> None:
    tracemalloc.start()
    try:
        assert decode_or_refuse(data) == reason
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"{peak:,} bytes allocated to refuse it"


# --------------------------------------------------------------------------------------------------
# Zips: mutated, and crafted (traversal, links, bombs)
# --------------------------------------------------------------------------------------------------


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


ZIPS = {
    "stored": pack_files([("IMG_1.tif", TIFFS["u8"]), ("IMG_2.tif", TIFFS["f32"])]),
    "deflated": _zip({"bands/a.tif": TIFFS["u8"], "bands/b.tif": b"x" * 5000, "notes.txt": b"hello"}),
    "bzip2": _zip({"a.bin": bytes(range(256)) * 20}, zipfile.ZIP_BZIP2),
    "lzma": _zip({"a.bin": bytes(range(256)) * 20}, zipfile.ZIP_LZMA),
    "with-dir": _zip({"d/": b"", "d/x.jpg": JPEGS["rgb"]}),
    "empty": _zip({}),
}


@settings(FUZZ, max_examples=examples(500))
@given(fuzzed(ZIPS))
def test_mutated_zip_is_read_or_refused(data: bytes) -> None:
    check_zip_bytes(data)


def _entry(name: str, data: bytes = b"x", **attrs: Any) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _crafted(*entries: tuple[zipfile.ZipInfo, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for info, data in entries:
            info.compress_type = compression
            zf.writestr(info, data)
    return out.getvalue()


def _lying(declared: int) -> bytes:
    """A member whose central directory says ``declared`` bytes but inflates to 64 KiB."""
    data = bytearray(_crafted(_entry("a.bin", bytes(65536))))
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = struct.pack("<I", declared)
    return bytes(data)


def _encrypted() -> bytes:
    """A member flagged as encrypted (zipfile writes no such flag itself)."""
    data = bytearray(_crafted(_entry("a.bin", b"abc")))
    cd = data.rindex(b"PK\x01\x02")
    struct.pack_into("<H", data, cd + 8, 0x1)
    return bytes(data)


def _method(method: int) -> bytes:
    """A stored member whose compression method (local header and directory) is ``method``."""
    data = bytearray(_crafted(_entry("a.bin", b"abc"), compression=zipfile.ZIP_STORED))
    data[8:10] = struct.pack("<H", method)
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 10 : cd + 12] = struct.pack("<H", method)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(_crafted(_entry("../x.tif")), "zip_unsafe_path", id="dot-dot"),
        pytest.param(_crafted(_entry("/etc/x.tif")), "zip_unsafe_path", id="absolute"),
        pytest.param(_crafted(_entry("C:x.tif")), "zip_unsafe_path", id="drive"),
        pytest.param(_crafted(_entry("a\\..\\x.tif")), "zip_unsafe_path", id="backslash"),
        pytest.param(
            _crafted(_entry("link", b"/etc/passwd", create_system=3, external_attr=(0o120777 << 16))),
            "zip_symlink",
            id="symlink",
        ),
        pytest.param(_crafted(_entry("a", bytes(2 * 1024 * 1024))), "zip_bomb", id="ratio-bomb"),
        pytest.param(
            _crafted(*(_entry(f"{i}.tif") for i in range(65))), "zip_too_many_members", id="65-members"
        ),
        pytest.param(_lying(100), "corrupt_zip", id="lying-size"),
        pytest.param(_encrypted(), "corrupt_zip", id="encrypted-flag"),
        pytest.param(_method(99), "corrupt_zip", id="aes-method"),
        pytest.param(_method(7), "corrupt_zip", id="unknown-method"),
        pytest.param(b"PK\x03\x04" + bytes(30), "corrupt_zip", id="header-only"),
    ],
)
def test_crafted_zips_give_their_reason(data: bytes, reason: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as err, open_safe_zip(data, name="crafted.zip") as zf:
            for member in zf.members:
                zf.read(member)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == reason
    assert peak < 8 * 1024 * 1024, f"{peak:,} bytes"


def test_an_empty_archive_has_no_members() -> None:
    with open_safe_zip(b"PK\x05\x06" + bytes(18)) as zf:
        assert zf.members == ()


# --------------------------------------------------------------------------------------------------
# The rasterio path: crop-health's reader (GeoTIFF, multi-page TIFF, zipped multi-file captures)
# --------------------------------------------------------------------------------------------------


def _band_tif(value: int) -> bytes:
    profile = {"driver": "GTiff", "height": 24, "width": 32, "count": 1, "dtype": "uint16"}
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile, crs=UTM33, transform=UTM_TRANSFORM) as ds:
            ds.write(np.full((1, 24, 32), value, np.uint16))
        return bytes(mem.read())


GEO_SEEDS = {
    "geotiff-5": _geotiff(),
    "geotiff-float": _geotiff(dtype="float32"),
    "pages-5": _tiff(RNG.integers(0, 30000, (5, 24, 32), dtype=np.uint16), photometric="minisblack"),
    "capture-zip": pack_files([(f"IMG_0001_{i}.tif", _band_tif(1000 * i)) for i in range(1, 6)]),
}


def read_or_refuse(data: bytes, tmp: Path) -> None:
    spec = PipelineCatalog(Settings(home=tmp)).get("crop-health")
    request = geo_request(spec, {"band_map": "micasense-rededge-mx"})
    try:
        geo = read_geo_input(spec, crop_manifest(), data, request, max_pixels=MAX_PIXELS)
    except InvalidInput as exc:
        _refusal(exc, RASTER_REASONS)
        return
    height, width = geo.raster.shape
    assert height * width <= MAX_PIXELS
    assert geo.raster.data.shape == (5, height, width)


def test_mutated_geotiffs_and_captures_are_read_or_refused(tmp_path: Path) -> None:
    @settings(FUZZ, max_examples=examples(200))
    @given(fuzzed(GEO_SEEDS))
    def run(data: bytes) -> None:
        read_or_refuse(data, tmp_path)

    run()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(
            lambda: _tiff(np.zeros((300, 128, 128), np.uint16), photometric="minisblack", compression="zlib"),
            "wrong_band_count",
            id="300-pages",
        ),
        pytest.param(lambda: _geotiff(bands=3), "wrong_band_count", id="3-bands-for-5"),
        pytest.param(lambda: _tiff_sized(2**16, 2**16), "image_too_large", id="absurd-size"),
        pytest.param(lambda: pack_files([("a.txt", b"x")]), "empty_capture", id="zip-without-tiff"),
        pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + bytes(40), "corrupt_raster", id="not-a-raster"),
    ],
)
def test_geo_refusals_cost_no_pixel_buffer(make: Callable[[], bytes], reason: str, tmp_path: Path) -> None:
    data = make()
    spec = PipelineCatalog(Settings(home=tmp_path)).get("crop-health")
    request = geo_request(spec, {"band_map": "micasense-rededge-mx"})
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as err:
            read_geo_input(spec, crop_manifest(), data, request, max_pixels=MAX_PIXELS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == reason
    assert peak < 4 * 1024 * 1024, f"{peak:,} bytes allocated to refuse it"


def test_a_capture_zip_with_a_band_leaving_the_folder_is_refused() -> None:
    data = _crafted(_entry("../IMG_0001_1.tif", _band_tif(1)), _entry("IMG_0001_2.tif", _band_tif(2)))
    with pytest.raises(InvalidInput) as err:
        stack_zip(data, resolve_band_map("blue,green"), max_pixels=MAX_PIXELS)
    assert err.value.reason == "zip_unsafe_path"
