"""Images for people: any decoded image as 8-bit RGBA a browser can show, and PNG bytes.

Browsers show neither TIFF nor 16-bit or multispectral rasters, so pages ask the server for a
rendering (:func:`render_image`):

* ``rgb`` — true colour from the red, green and blue bands;
* ``cir`` — colour infrared (nir, red, green as R, G, B), the usual composite of a camera without blue;
* ``ndvi`` — NDVI false colour through :data:`NDVI_COLORMAP` (red for bare soil, green for vigour);
* ``gray`` — the first band; ``auto`` picks ``rgb``, else ``cir``, else ``gray``.

Composites keep 8-bit bands as they are (they are display values already) and stretch other bands
linearly between their ``low`` and ``high`` percentiles over the valid pixels, clipped to 0..255 and
rounded half up. A pixel is invalid — transparent, and left out of the percentiles — where any band
is not finite or every band equals ``nodata`` (the no-data border of an orthomosaic); in the NDVI
view also where the index is undefined (nir + red = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.domain import InvalidInput
from keeneye.imaging.decode import Image
from keeneye.imaging.spectral import spectral_index

View = Literal["auto", "rgb", "cir", "ndvi", "gray"]
VIEWS: Final[tuple[View, ...]] = ("auto", "rgb", "cir", "ndvi", "gray")
COMPOSITES: Final[dict[str, tuple[str, ...]]] = {
    "rgb": ("red", "green", "blue"),
    "cir": ("nir", "red", "green"),
}
# NDVI value → colour, linear in between (ColorBrewer RdYlGn stops, stretched over -1..1).
NDVI_COLORMAP: Final[tuple[tuple[float, tuple[int, int, int]], ...]] = (
    (-1.0, (165, 0, 38)),
    (0.0, (244, 109, 67)),
    (0.25, (254, 224, 139)),
    (0.5, (166, 217, 106)),
    (0.75, (26, 152, 80)),
    (1.0, (0, 104, 55)),
)

Rgba = npt.NDArray[np.uint8]


@dataclass(frozen=True, eq=False)
class Rendered:
    """An (H, W, 4) uint8 RGBA picture and the view it shows (``auto`` resolved)."""

    pixels: Rgba
    view: View


def choose_view(image: Image, view: View = "auto") -> View:
    """The view to draw; ``InvalidInput`` (``wrong_band_count``) naming the bands when it cannot be."""
    if view == "auto":
        for name, bands in COMPOSITES.items():
            if all(image.has_band(b) for b in bands):
                return "rgb" if name == "rgb" else "cir"
        return "gray"
    needs = {"ndvi": ("nir", "red"), "gray": (), **COMPOSITES}[view]
    missing = [b for b in needs if not image.has_band(b)]
    if missing:
        raise InvalidInput(
            "wrong_band_count",
            f"the {view} view needs bands {', '.join(needs)}; the image has {', '.join(image.bands)}",
            fix="ask for view=auto, or name the bands in the pipeline's band_map",
        )
    return view


def valid_pixels(image: Image, nodata: float | None = None) -> npt.NDArray[np.bool_]:
    """(H, W) True where the pixel holds data: every band finite, and not every band ``nodata``."""
    px = image.pixels
    valid = np.ones(px.shape[:2], dtype=bool)
    if px.dtype.kind == "f":
        valid &= np.isfinite(px).all(axis=2)
    if nodata is not None:
        valid &= ~(px == nodata).all(axis=2)
    return valid


def _round(values: npt.NDArray[Any]) -> Rgba:
    return np.asarray(np.floor(np.clip(values, 0.0, 255.0) + 0.5), dtype=np.uint8)


def stretch(
    band: npt.NDArray[Any], valid: npt.NDArray[np.bool_], *, low: float = 2.0, high: float = 98.0
) -> Rgba:
    """One band as 0..255: uint8 unchanged, other dtypes linear between its ``low`` and ``high``
    percentiles over ``valid`` (a constant band renders black). Invalid pixels come out 0."""
    if band.dtype == np.uint8:
        return np.where(valid, band, 0).astype(np.uint8)
    values = np.where(valid, band, 0).astype(np.float64)  # NaN would not cast to uint8
    if not valid.any():
        return np.zeros(band.shape, dtype=np.uint8)
    lo, hi = np.percentile(values[valid], [low, high])
    span = hi - lo if hi > lo else 1.0
    out = _round((values - lo) * (255.0 / span))
    out[~valid] = 0
    return out


def ndvi_colours(index: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """(H, W, 3) colours of NDVI values through :data:`NDVI_COLORMAP`."""
    stops = np.asarray([v for v, _ in NDVI_COLORMAP])
    colours = np.asarray([c for _, c in NDVI_COLORMAP], dtype=np.float64)
    flat = np.clip(index.astype(np.float64).ravel(), -1.0, 1.0)
    rgb = np.stack([np.interp(flat, stops, colours[:, k]) for k in range(3)], axis=1)
    return _round(rgb).reshape(*index.shape, 3)


def _composite(
    image: Image, bands: Sequence[str], valid: npt.NDArray[np.bool_], low: float, high: float
) -> Rgba:
    return np.stack([stretch(image.band(b), valid, low=low, high=high) for b in bands], axis=2)


def render_image(
    image: Image, view: View = "auto", *, nodata: float | None = None, low: float = 2.0, high: float = 98.0
) -> Rendered:
    """The image as RGBA for a browser in ``view`` (see the module docstring); invalid pixels have
    alpha 0. Raises ``InvalidInput`` when the view needs bands the image lacks."""
    drawn = choose_view(image, view)
    valid = valid_pixels(image, nodata)
    if drawn == "ndvi":
        index = spectral_index(image, "ndvi")
        nir = image.band("nir").astype(np.float32)
        valid &= (nir + image.band("red").astype(np.float32)) != 0
        rgb = ndvi_colours(index)
        rgb[~valid] = 0
    elif drawn == "gray":
        rgb = np.repeat(stretch(image.pixels[:, :, 0], valid, low=low, high=high)[:, :, None], 3, axis=2)
    else:
        rgb = _composite(image, COMPOSITES[drawn], valid, low, high)
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    return Rendered(np.dstack([rgb, alpha]), drawn)


def fit_within(rgba: Rgba, max_side: int) -> Rgba:
    """Shrunk (area averaging) so neither side exceeds ``max_side``; unchanged when it fits."""
    height, width = rgba.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return rgba
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(rgba, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def encode_png(rgba: Rgba) -> bytes:
    """PNG bytes of an (H, W, 4) RGBA uint8 picture."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGBA array
        raise RuntimeError("PNG encoding failed")
    return bytes(buf)


__all__ = [
    "COMPOSITES",
    "NDVI_COLORMAP",
    "VIEWS",
    "Rendered",
    "View",
    "choose_view",
    "encode_png",
    "fit_within",
    "ndvi_colours",
    "render_image",
    "stretch",
    "valid_pixels",
]
