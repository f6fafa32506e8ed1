"""Decode and validate image bytes: JPEG, PNG, TIFF / GeoTIFF, multispectral band maps.

Every refusal is an :class:`~keeneye.domain.InvalidInput` with a stable ``reason`` (see
``docs/imaging.md``). The format is sniffed from magic bytes, never from a file name or a declared
content type, and the pixel count is read from the header *before* any pixels are decoded, so a
decompression bomb costs a few microseconds and no memory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import cv2
import numpy as np
import numpy.typing as npt
import tifffile

from keeneye.domain import InvalidInput

logger = logging.getLogger(__name__)

FileFormat = Literal["jpeg", "png", "tiff"]
ImageFormat = Literal["jpeg", "png", "tiff", "array"]  # "array": wrapped in memory (video frame, synthetic)
PixelArray = npt.NDArray[Any]  # uint8 | uint16 | float32, shape (H, W, C)

SUPPORTED_DTYPES: Final = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_PALETTE_INDEX_DTYPES: Final = (np.dtype(np.uint8), np.dtype(np.uint16))
RGB: Final = ("red", "green", "blue")
GRAY: Final = ("gray",)
# More bands than this is not a camera we serve (multispectral rigs have <= 10); refusing early keeps a
# TIFF with a huge sample count from allocating H*W*bands values.
MAX_BANDS: Final = 64

_PIXEL_FIX: Final = "downscale or tile the image, or raise KEENEYE_IMAGING__MAX_PIXELS"
_BAND_FIX: Final = "set the camera's band_map in the pipeline spec to match the file, or send those bands"

# Common spellings of band names, so a spec saying "RedEdge" and a band map saying "red_edge" agree.
_BAND_ALIASES: Final[Mapping[str, str]] = {
    "r": "red",
    "g": "green",
    "b": "blue",
    "n": "nir",
    "re": "red_edge",
    "rededge": "red_edge",
    "near_infrared": "nir",
    "grey": "gray",
}

# JPEG start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE: Final = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # markers without a length

# IMREAD_COLOR_RGB (OpenCV >= 4.11) decodes straight to RGB, saving a BGR→RGB pass.
_IMREAD_RGB: Final[int | None] = getattr(cv2, "IMREAD_COLOR_RGB", None)
# OpenCV's IMREAD_REDUCED_{COLOR,GRAYSCALE}_k flags are the plain flag plus these bits.
_REDUCED_BITS: Final = {2: 16, 4: 32, 8: 48}
# A shrunk JPEG keeps at least this longest side: the quality features and drift statistics are
# computed on a copy of at most 256 px (imaging.features.FEATURE_MAX_SIDE), which must not change.
MIN_SHRUNK_SIDE: Final = 256

# GeoTIFF tags and keys (OGC GeoTIFF 1.1).
_TAG_PIXEL_SCALE: Final = 33550
_TAG_TIEPOINT: Final = 33922
_TAG_TRANSFORMATION: Final = 34264
_TAG_GEOKEYS: Final = 34735
_KEY_RASTER_TYPE: Final = 1025
_KEY_GEOGRAPHIC_CRS: Final = 2048
_KEY_PROJECTED_CRS: Final = 3072
_USER_DEFINED: Final = 32767
_PIXEL_IS_POINT: Final = 2


# --------------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeoInfo:
    """Where a GeoTIFF lies on Earth: an affine geotransform plus the CRS.

    Follows GDAL's geotransform convention: ``(origin_x, origin_y)`` is the outer corner of pixel
    (0, 0); ``pixel_size_y`` is negative for the usual north-up raster. A ``PixelIsPoint`` raster is
    shifted by half a pixel so the origin is always a corner, as GDAL does.
    """

    origin_x: float
    origin_y: float
    pixel_size_x: float
    pixel_size_y: float
    rotation_x: float = 0.0  # GDAL gt[2]: x change per row
    rotation_y: float = 0.0  # GDAL gt[4]: y change per column
    epsg: int | None = None

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL order: origin_x, pixel_size_x, rotation_x, origin_y, rotation_y, pixel_size_y."""
        return (
            self.origin_x,
            self.pixel_size_x,
            self.rotation_x,
            self.origin_y,
            self.rotation_y,
            self.pixel_size_y,
        )

    def pixel_to_world(self, col: float, row: float) -> tuple[float, float]:
        """World coordinates of a point given in pixel coordinates (col, row; corners at integers)."""
        x = self.origin_x + col * self.pixel_size_x + row * self.rotation_x
        y = self.origin_y + col * self.rotation_y + row * self.pixel_size_y
        return x, y

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in CRS units squared (m² for a metric projected CRS)."""
        return abs(self.pixel_size_x * self.pixel_size_y - self.rotation_x * self.rotation_y)


@dataclass(frozen=True, eq=False)  # eq=False: comparing pixel arrays with == is ambiguous
class Image:
    """A decoded image: ``pixels`` (H, W, C) with one name per band, plus where it came from.

    ``pixels`` is read-only so stages can share it without defensive copies. For a planar TIFF it is
    a non-contiguous view of the (C, H, W) buffer — each band stays contiguous, which is what the
    per-band consumers (spectral indices, resize) want.
    """

    pixels: PixelArray
    bands: tuple[str, ...]
    format: ImageFormat
    content_hash: str
    geo: GeoInfo | None = None
    # (width, height) of the image as stored when the decoder shrank it (JPEG DCT scaling, see
    # decode_image's ``shrink_to``); None when ``pixels`` are full size. Geometry that answers refer
    # to (boxes, masks, ImageFacts) is in full-size coordinates.
    full_size: tuple[int, int] | None = None
    _band_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3:
            raise ValueError(f"pixels must be (H, W, C), got shape {self.pixels.shape}")
        if self.pixels.shape[2] != len(self.bands):
            raise ValueError(f"pixels have {self.pixels.shape[2]} bands, names given for {len(self.bands)}")
        if self.pixels.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"pixels dtype {self.pixels.dtype} is not one of uint8, uint16, float32")
        bands = tuple(canonical_band_name(b) for b in self.bands)
        if len(set(bands)) != len(bands):
            raise ValueError(f"band names must be unique, got {bands}")
        view = self.pixels.view()
        view.flags.writeable = False
        object.__setattr__(self, "pixels", view)
        object.__setattr__(self, "bands", bands)
        object.__setattr__(self, "_band_index", {name: i for i, name in enumerate(bands)})

    @classmethod
    def from_array(
        cls, pixels: PixelArray, bands: Sequence[str] | None = None, *, geo: GeoInfo | None = None
    ) -> Image:
        """Wrap an in-memory array (video frame, synthetic image); (H, W) is one ``gray`` band.

        The content hash covers shape, dtype and pixel bytes (one pass over the array).
        """
        arr = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
        if bands is None:
            bands = RGB if arr.shape[2] == 3 else GRAY if arr.shape[2] == 1 else _numbered(arr.shape[2])
        digest = hashlib.sha256(f"{arr.shape}{arr.dtype.str}".encode())
        digest.update(np.ascontiguousarray(arr).data)
        return cls(pixels=arr, bands=tuple(bands), format="array", content_hash=digest.hexdigest(), geo=geo)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def full_width(self) -> int:
        """The stored image's width (``width`` unless the decoder shrank it)."""
        return self.full_size[0] if self.full_size is not None else self.width

    @property
    def full_height(self) -> int:
        """The stored image's height (``height`` unless the decoder shrank it)."""
        return self.full_size[1] if self.full_size is not None else self.height

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.pixels.dtype

    def has_band(self, name: str) -> bool:
        return canonical_band_name(name) in self._band_index

    def band_position(self, name: str) -> int:
        """Index of a band in ``pixels``; ``KeyError`` naming the bands there are when absent."""
        key = canonical_band_name(name)
        try:
            return self._band_index[key]
        except KeyError:
            raise KeyError(f"no band {name!r}; the image has {', '.join(self.bands)}") from None

    def band(self, name: str) -> PixelArray:
        """One band as a 2-D read-only view (no copy)."""
        return self.pixels[:, :, self.band_position(name)]


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, read without decoding pixels."""

    format: ImageFormat
    width: int
    height: int
    bands: int
    dtype: np.dtype[Any]

    @property
    def pixels(self) -> int:
        return self.width * self.height


def canonical_band_name(name: str) -> str:
    """Lower-case, ``_``-separated, with common aliases resolved (``RedEdge`` → ``red_edge``)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _BAND_ALIASES.get(key, key)


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of the input bytes: the identity of an input for caching and tracing."""
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# Sniffing and headers
# --------------------------------------------------------------------------------------------------


def sniff_format(data: bytes) -> FileFormat:
    """The format by magic bytes; ``InvalidInput`` (``empty`` / ``unsupported_format``) otherwise."""
    if not data:
        raise InvalidInput("empty", "the image is empty (0 bytes)", fix="send the image file's bytes")
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "tiff"
    raise InvalidInput(
        "unsupported_format",
        f"not a JPEG, PNG or TIFF image ({_describe_start(data)})",
        fix="send a JPEG, PNG or (Geo)TIFF file",
    )


def _describe_start(data: bytes) -> str:
    """How a file that is no image begins, for people: ``it looks like a text file`` or its first
    bytes in hex (``first bytes 00 01 02 03``) — never a Python bytes repr."""
    head = data[:64]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None  # may also be UTF-8 cut mid-character at byte 64: hex says enough then
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "it looks like a text file"
    return "first bytes " + data[:8].hex(" ")


@dataclass(frozen=True)
class _JpegHeader:
    width: int
    height: int
    components: int
    scan_start: int  # offset of the first SOS segment; the EOI must come after it


@dataclass(frozen=True)
class _PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int


def _corrupt(fmt: str, what: str) -> InvalidInput:
    return InvalidInput(
        "corrupt_image",
        f"{fmt} is corrupt or truncated: {what}",
        fix="re-export or re-upload the complete file",
    )


def _jpeg_header(data: bytes) -> _JpegHeader:
    """Walk the marker segments up to the first scan (SOS), reading the frame (SOF) on the way."""
    n = len(data)
    i = 2
    sof: tuple[int, int, int] | None = None
    while i < n:
        if data[i] != 0xFF:
            raise _corrupt("JPEG", f"no marker at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:
            raise _corrupt("JPEG", "end of image before any scan")
        if i + 2 > n:
            break
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2:
            raise _corrupt("JPEG", f"segment length {length} at byte {i}")
        if marker in _JPEG_SOF:
            if i + 8 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3 : i + 7])
            sof = (width, height, data[i + 7])
        elif marker == 0xDA:
            if sof is None:
                raise _corrupt("JPEG", "scan before frame header")
            width, height, components = sof
            if width == 0 or height == 0:
                raise InvalidInput(
                    "unsupported_format",
                    f"JPEG frame header gives size {width}×{height} (DNL-sized JPEGs are not supported)",
                    fix="re-encode the image with a standard encoder",
                )
            return _JpegHeader(width, height, components, i)
        i += length
    raise _corrupt("JPEG", "header ends before the first scan")


def _png_header(data: bytes) -> _PngHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise _corrupt("PNG", "no IHDR chunk")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", data[16:26])
    if width == 0 or height == 0:
        raise _corrupt("PNG", f"size {width}×{height}")
    return _PngHeader(width, height, bit_depth, color_type)


def _check_png_chunks(data: bytes) -> None:
    """Every chunk up to IEND must lie inside the bytes. OpenCV's PNG reader allocates a chunk's declared
    length before it reads it: a 100-byte file declaring a 4 GB chunk would cost 4 GB and seconds."""
    n = len(data)
    i = 8  # after the signature
    while i + 12 <= n:  # length, type, CRC
        length = int.from_bytes(data[i : i + 4], "big")
        if length > 0x7FFFFFFF or i + 12 + length > n:  # the spec's limit is 2^31 - 1
            raise _corrupt("PNG", f"a chunk at byte {i} declares {length} bytes, past the end of the file")
        if data[i + 4 : i + 8] == b"IEND":
            return
        i += 12 + length
    raise _corrupt("PNG", "no IEND chunk")


def _check_pixels(fmt: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise InvalidInput(
            "too_many_pixels",
            f"{fmt} is {width}×{height} = {width * height} pixels, limit {max_pixels}",
            fix=_PIXEL_FIX,
        )


def _numbered(count: int) -> tuple[str, ...]:
    return tuple(f"b{i}" for i in range(count))


def _name_bands(
    fmt: str, count: int, default: tuple[str, ...], band_map: Sequence[str] | None, expected_bands: int | None
) -> tuple[str, ...]:
    """Band names for ``count`` decoded bands; refuses a count the band map or the model disagrees with."""
    names = tuple(canonical_band_name(b) for b in band_map) if band_map is not None else None
    if names is not None and len(set(names)) != len(names):
        raise ValueError(f"band_map names a band twice: {list(band_map or ())}")
    plural = "band" if count == 1 else "bands"
    if names is not None and len(names) != count:
        raise InvalidInput(
            "wrong_band_count",
            f"{fmt} has {count} {plural}, the band map names {len(names)} ({', '.join(names)})",
            fix=_BAND_FIX,
        )
    if expected_bands is not None and count != expected_bands:
        listed = f" ({', '.join(names)})" if names is not None else ""
        raise InvalidInput(
            "wrong_band_count",
            f"{fmt} has {count} {plural}, the model needs {expected_bands}{listed}",
            fix=_BAND_FIX,
        )
    return names if names is not None else default


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def probe_image(data: bytes) -> ImageHeader:
    """Format, size, band count and dtype from the header alone (no pixel decode)."""
    fmt = sniff_format(data)
    if fmt == "jpeg":
        jh = _jpeg_header(data)
        return ImageHeader("jpeg", jh.width, jh.height, 1 if jh.components == 1 else 3, np.dtype(np.uint8))
    if fmt == "png":
        ph = _png_header(data)
        dtype = np.dtype(np.uint16 if ph.bit_depth == 16 else np.uint8)
        return ImageHeader("png", ph.width, ph.height, 1 if ph.color_type in (0, 4) else 3, dtype)
    with _open_tiff(data) as tif:
        layout = _tiff_layout(tif)
        return ImageHeader("tiff", layout.width, layout.height, layout.bands, layout.dtype)


def decode_image(
    data: bytes,
    *,
    band_map: Sequence[str] | None = None,
    max_pixels: int,
    expected_bands: int | None = None,
    shrink_to: tuple[int, int] | None = None,
) -> Image:
    """Decode JPEG / PNG / (Geo)TIFF bytes into an :class:`Image`, or refuse with ``InvalidInput``.

    ``band_map`` names the decoded bands in file order (JPEG/PNG file order is red, green, blue);
    without it JPEG/PNG bands are ``red, green, blue`` (or ``gray``), a 3-band TIFF is RGB and other
    TIFFs get ``b0, b1, …``. ``max_pixels`` bounds width × height and is checked from the header.

    ``shrink_to=(width, height)`` lets a JPEG decode at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT
    scaling: fewer coefficients decoded, no full-size buffer) while both sides stay at least that
    large and the longest at least :data:`MIN_SHRUNK_SIDE` — for a model that resizes the image to
    ``width × height`` anyway. The image keeps its ``full_size``; other formats decode in full.
    """
    started = time.perf_counter()
    fmt = sniff_format(data)
    if fmt == "tiff":
        image = _decode_tiff(data, band_map=band_map, max_pixels=max_pixels, expected_bands=expected_bands)
    else:
        image = _decode_raster(
            data,
            fmt,
            band_map=band_map,
            max_pixels=max_pixels,
            expected_bands=expected_bands,
            shrink_to=shrink_to,
        )
    logger.debug(
        "decoded image",
        extra={
            "format": fmt,
            "width": image.width,
            "height": image.height,
            "bands": image.bands,
            "dtype": str(image.dtype),
            "ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )
    return image


def jpeg_shrink(width: int, height: int, target: tuple[int, int]) -> int:
    """The largest DCT scale factor (1, 2, 4 or 8) keeping a ``width × height`` JPEG at least
    ``target`` on both sides and at least :data:`MIN_SHRUNK_SIDE` on its longest (libjpeg rounds the
    scaled size up)."""
    for factor in (8, 4, 2):
        w, h = -(-width // factor), -(-height // factor)
        if w >= target[0] and h >= target[1] and max(w, h) >= MIN_SHRUNK_SIDE:
            return factor
    return 1


def _decode_raster(
    data: bytes,
    fmt: Literal["jpeg", "png"],
    *,
    band_map: Sequence[str] | None,
    max_pixels: int,
    expected_bands: int | None,
    shrink_to: tuple[int, int] | None = None,
) -> Image:
    """JPEG and PNG through OpenCV; the decode flags are chosen from the header so no conversion pass runs."""
    label = fmt.upper()
    if fmt == "jpeg":
        jh = _jpeg_header(data)
        _check_pixels(label, jh.width, jh.height, max_pixels)
        # An EOI marker cannot occur inside entropy-coded data (0xFF is stuffed), so one after the first
        # scan means the file is complete; trailing bytes after it (camera trailers) are tolerated.
        if data.rfind(b"\xff\xd9", jh.scan_start) == -1:
            raise _corrupt(label, "no end-of-image marker")
        gray = jh.components == 1
        factor = 1 if shrink_to is None else jpeg_shrink(jh.width, jh.height, shrink_to)
    else:
        ph = _png_header(data)
        _check_pixels(label, ph.width, ph.height, max_pixels)
        _check_png_chunks(data)
        gray = ph.color_type in (0, 4)  # gray, gray + alpha
        factor = 1

    default = GRAY if gray else RGB
    bands = _name_bands(label, len(default), default, band_map, expected_bands)

    # Colour JPEG/PNG: decoded as RGB (alpha dropped, EXIF orientation applied — the photo as people see
    # it); ANYDEPTH keeps 16-bit PNGs at 16 bits.
    if gray:
        flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH
    else:
        flags = (_IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR) | cv2.IMREAD_ANYDEPTH
    if factor > 1:  # IMREAD_REDUCED_*_k: the plain flags plus the scale bits (16, 32, 48)
        flags = (flags & ~cv2.IMREAD_ANYDEPTH) | _REDUCED_BITS[factor]
    buf = np.frombuffer(data, dtype=np.uint8)  # zero-copy view of the bytes
    try:
        pixels = cv2.imdecode(buf, flags)
    except cv2.error as exc:  # OpenCV raises for some malformed streams instead of returning None
        raise _corrupt(label, "the decoder failed") from exc
    if pixels is None or pixels.size == 0:
        raise _corrupt(label, "the decoder failed")
    if not gray and _IMREAD_RGB is None:
        cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels)  # in place: no second buffer
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    full_size = None
    if factor > 1:
        # EXIF orientation may have turned the picture: the full size follows the decoded shape.
        turned = (pixels.shape[1] < pixels.shape[0]) != (jh.width < jh.height)
        full_size = (jh.height, jh.width) if turned else (jh.width, jh.height)
    return Image(pixels=pixels, bands=bands, format=fmt, content_hash=content_hash(data), full_size=full_size)


@dataclass(frozen=True)
class _TiffLayout:
    series: Any  # tifffile.TiffPageSeries
    width: int
    height: int
    bands: int
    bands_first: bool  # (C, H, W) in the file: planar samples or one page per band
    dtype: np.dtype[Any]
    colormap: PixelArray | None = None  # (3, 2**bits) uint16: a palette image, decoded through it


def _open_tiff(data: bytes) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(io.BytesIO(data))
    except Exception as exc:  # any parser failure on untrusted bytes is a corrupt file, not a crash
        raise _corrupt("TIFF", f"{type(exc).__name__}: {exc}") from exc


def _tiff_layout(tif: tifffile.TiffFile) -> _TiffLayout:
    """Shape and band axis of the first series, from tags only."""
    try:
        series = tif.series
        if not series:
            raise _corrupt("TIFF", "no image in the file")
        s = series[0]
        shape, axes = tuple(int(d) for d in s.shape), str(s.axes)
        dtype = np.dtype(s.dtype).newbyteorder("=")
        colormap = s.keyframe.colormap if s.keyframe.photometric == tifffile.PHOTOMETRIC.PALETTE else None
    except InvalidInput:
        raise
    except Exception as exc:
        raise _corrupt("TIFF", f"{type(exc).__name__}: {exc}") from exc
    if len(shape) == 2 and axes == "YX" and colormap is not None and dtype in _PALETTE_INDEX_DTYPES:
        # Colour-mapped: the samples are palette indices, the colours are RGB in the 16-bit map.
        return _TiffLayout(s, shape[1], shape[0], 3, False, np.dtype(np.uint16), np.asarray(colormap))
    if len(shape) == 2 and axes == "YX":
        return _TiffLayout(s, shape[1], shape[0], 1, False, dtype)
    if len(shape) == 3 and axes[1:] == "YX":  # planar (SYX) or a page per band (QYX, IYX, CYX)
        return _TiffLayout(s, shape[2], shape[1], shape[0], True, dtype)
    if len(shape) == 3 and axes[:2] == "YX":  # interleaved samples (YXS)
        return _TiffLayout(s, shape[1], shape[0], shape[2], False, dtype)
    raise InvalidInput(
        "unsupported_format",
        f"TIFF image has shape {shape} with axes {axes}; expected one (bands ×) height × width image",
        fix="save one image per file, bands as samples or pages",
    )


def _decode_tiff(
    data: bytes, *, band_map: Sequence[str] | None, max_pixels: int, expected_bands: int | None
) -> Image:
    with _open_tiff(data) as tif:
        layout = _tiff_layout(tif)
        _check_pixels("TIFF", layout.width, layout.height, max_pixels)
        if layout.bands > MAX_BANDS:
            raise InvalidInput(
                "too_many_bands",
                f"TIFF has {layout.bands} bands, limit {MAX_BANDS}",
                fix="send only the bands the model uses",
            )
        if layout.dtype not in SUPPORTED_DTYPES:
            raise InvalidInput(
                "unsupported_dtype",
                f"TIFF samples are {layout.dtype}, supported are uint8, uint16 and float32",
                fix="convert the raster to uint16 or float32 reflectance",
            )
        default = RGB if layout.bands == 3 else _numbered(layout.bands)
        bands = _name_bands("TIFF", layout.bands, default, band_map, expected_bands)
        pages = list(layout.series.pages)
        _check_tiff_codecs(pages[0])
        _check_tiff_complete(pages, len(data))
        try:
            arr = layout.series.asarray()
        except Exception as exc:
            raise _corrupt("TIFF", f"{type(exc).__name__}: {exc}") from exc
        if layout.colormap is not None:
            arr = _apply_palette(arr, layout.colormap)
        geo = _read_geo(pages[0])
    if layout.bands_first:
        arr = np.moveaxis(arr.reshape(layout.bands, layout.height, layout.width), 0, -1)  # view, no copy
    else:
        arr = arr.reshape(layout.height, layout.width, layout.bands)  # view, no copy
    return Image(pixels=arr, bands=bands, format="tiff", content_hash=content_hash(data), geo=geo)


def _apply_palette(indices: PixelArray, colormap: PixelArray) -> PixelArray:
    """(H, W) palette indices → (H, W, 3) uint16 RGB; an index past the map's end is corrupt."""
    if colormap.ndim != 2 or colormap.shape[0] != 3 or int(indices.max(initial=0)) >= colormap.shape[1]:
        raise _corrupt("TIFF", f"palette indices reach past its {colormap.shape[-1]}-entry colour map")
    return np.ascontiguousarray(colormap.astype(np.uint16, copy=False).T[indices])


def _check_tiff_codecs(page: Any) -> None:
    """Refuse up front a compression this install cannot decode (LZW and JPEG need ``imagecodecs``)."""
    compression = page.compression
    try:
        tifffile.TIFF.DECOMPRESSORS[compression]
    except KeyError:
        name = getattr(compression, "name", str(compression))
        raise InvalidInput(
            "unsupported_format",
            f"TIFF compression {name} cannot be decoded here (it needs the imagecodecs package)",
            fix="save the TIFF uncompressed or with deflate/zlib compression, or install imagecodecs",
        ) from None


def _check_tiff_complete(pages: Sequence[Any], size: int) -> None:
    """Every strip / tile must lie inside the bytes: a truncated upload is refused, not zero-filled."""
    for page in pages:
        offsets = page.dataoffsets
        counts = page.databytecounts
        if not offsets or not counts:
            raise _corrupt("TIFF", "no image data")
        end = max(int(o) + int(c) for o, c in zip(offsets, counts, strict=False))
        if end > size:
            raise _corrupt("TIFF", f"image data ends at byte {end}, the file has {size}")


def _tag(page: Any, code: int) -> tuple[Any, ...] | None:
    tag = page.tags.get(code)
    if tag is None:
        return None
    value = tag.value
    return tuple(value) if isinstance(value, tuple | list | np.ndarray) else (value,)


def _geo_keys(page: Any) -> dict[int, int]:
    """Short-valued keys of the GeoKeyDirectory (the CRS codes live there)."""
    raw = _tag(page, _TAG_GEOKEYS)
    if raw is None or len(raw) < 4:
        return {}
    keys: dict[int, int] = {}
    count = int(raw[3])
    for k in range(count):
        entry = raw[4 + 4 * k : 8 + 4 * k]
        if len(entry) < 4:
            break
        key_id, location, _count, value = (int(v) for v in entry)
        if location == 0:  # value stored inline (a SHORT); doubles/ASCII live in other tags
            keys[key_id] = value
    return keys


def _read_geo(page: Any) -> GeoInfo | None:
    """The geotransform and EPSG code from the GeoTIFF tags; ``None`` for a plain TIFF."""
    try:
        scale = _tag(page, _TAG_PIXEL_SCALE)
        tiepoint = _tag(page, _TAG_TIEPOINT)
        matrix = _tag(page, _TAG_TRANSFORMATION)
        keys = _geo_keys(page)
        if matrix is not None and len(matrix) >= 16:
            a, b, _, d, e, f, _, h = (float(v) for v in matrix[:8])
            gt = [d, a, b, h, e, f]
        elif scale is not None and tiepoint is not None and len(scale) >= 2 and len(tiepoint) >= 6:
            i, j = float(tiepoint[0]), float(tiepoint[1])
            x, y = float(tiepoint[3]), float(tiepoint[4])
            sx, sy = float(scale[0]), float(scale[1])
            gt = [x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy]
        else:
            return None  # no tags, or ground control points only (no affine transform to report)
        if keys.get(_KEY_RASTER_TYPE) == _PIXEL_IS_POINT:
            gt[0] -= 0.5 * (gt[1] + gt[2])
            gt[3] -= 0.5 * (gt[4] + gt[5])
        epsg = keys.get(_KEY_PROJECTED_CRS) or keys.get(_KEY_GEOGRAPHIC_CRS)
        if epsg == _USER_DEFINED:
            epsg = None
    except (TypeError, ValueError, IndexError) as exc:
        logger.warning("ignoring malformed GeoTIFF tags: %s", exc)
        return None
    return GeoInfo(
        origin_x=gt[0],
        origin_y=gt[3],
        pixel_size_x=gt[1],
        pixel_size_y=gt[5],
        rotation_x=gt[2],
        rotation_y=gt[4],
        epsg=epsg,
    )
