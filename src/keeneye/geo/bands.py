"""Band maps: which band of a multispectral raster is which, and how its numbers become reflectance.

A :class:`BandMap` is resolved from a ``--band-map`` value: either a preset name (``micasense-rededge-mx``,
``sentinel2-l2a-10m``, …; see :data:`PRESETS` and docs/crop-health.md for the vendors' documents each
row comes from) or an explicit comma-separated list of band names in file order (``blue,green,red,nir``).

Reflectance = ``(DN - black_level) * scale + offset``, applied to integer rasters only: a float32
raster is taken to hold reflectance already (what Pix4D, Metashape and ODM write for reflectance
maps). Band names are canonical (``imaging.canonical_band_name``): ``RedEdge`` → ``red_edge``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from keeneye.domain import InvalidInput
from keeneye.imaging import canonical_band_name

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Scaling:
    """``reflectance = (DN - black_level) * scale + offset`` for integer rasters."""

    scale: float
    offset: float = 0.0
    black_level: float = 0.0

    def apply(self, dn: npt.NDArray[np.generic]) -> FloatArray:
        """Reflectance as float32; float input is returned as float32 unchanged (already reflectance)."""
        if np.issubdtype(dn.dtype, np.floating):
            return np.asarray(dn, dtype=np.float32)
        out = dn.astype(np.float32)  # a new array (never the caller's DN): the rest is in place
        if self.black_level:
            out -= np.float32(self.black_level)
        out *= np.float32(self.scale)
        if self.offset:
            out += np.float32(self.offset)
        return out


DN_UINT16: Final = Scaling(scale=1 / 65535)
DN_UINT8: Final = Scaling(scale=1 / 255)


@dataclass(frozen=True)
class BandPreset:
    """A camera's or a satellite product's band order, scaling and no-data value.

    ``nodata`` applies when the file declares none itself (Sentinel-2 and Landsat use 0 for "no data").
    ``source`` names the vendor document the order and scaling come from (shown in the docs table).
    """

    name: str
    title: str
    bands: tuple[str, ...]
    scaling: Scaling
    nodata: float | None
    source: str


PRESETS: Final[Mapping[str, BandPreset]] = {
    p.name: p
    for p in (
        BandPreset(
            "micasense-rededge-mx",
            "MicaSense RedEdge-MX (5-band stack)",
            ("blue", "green", "red", "nir", "red_edge"),
            Scaling(scale=1 / 32768),
            None,
            "MicaSense imageprocessing: band index 1–5 = Blue, Green, Red, NIR, Red edge; "
            "16-bit stacks store reflectance × 32768",
        ),
        BandPreset(
            "micasense-altum",
            "MicaSense Altum (5 bands + LWIR)",
            ("blue", "green", "red", "nir", "red_edge", "lwir"),
            Scaling(scale=1 / 32768),
            None,
            "MicaSense imageprocessing: Altum bands 1–6 = Blue, Green, Red, NIR, Red edge, LWIR",
        ),
        BandPreset(
            "dji-p4m",
            "DJI Phantom 4 Multispectral",
            ("blue", "green", "red", "red_edge", "nir"),
            Scaling(scale=1 / 65535, black_level=4096),
            None,
            "DJI P4 Multispectral user manual (files _1…_5 = Blue, Green, Red, RE, NIR) and Image "
            "Processing Guide (DN/65535, black level 4096)",
        ),
        BandPreset(
            "dji-mavic3m",
            "DJI Mavic 3 Multispectral",
            ("green", "red", "red_edge", "nir"),
            Scaling(scale=1 / 65535, black_level=3200),
            None,
            "DJI Mavic 3M user manual (SensorIndex Green 1, Red 2, RE 3, NIR 4; BlackCurrent 3200) and "
            "Image Processing Guide (16-bit, DN/65535)",
        ),
        BandPreset(
            "parrot-sequoia",
            "Parrot Sequoia",
            ("green", "red", "red_edge", "nir"),
            DN_UINT16,
            None,
            "Parrot Sequoia spec: Green 550 nm, Red 660 nm, Red edge 735 nm, NIR 790 nm; 16-bit DN/65535",
        ),
        BandPreset(
            "sentinel2-l2a-10m",
            "Sentinel-2 L2A, 10 m bands (B02, B03, B04, B08)",
            ("blue", "green", "red", "nir"),
            Scaling(scale=1 / 10000, offset=-0.1),
            0.0,
            "ESA Sentinel-2 L2A PSD: BOA = (DN + BOA_ADD_OFFSET) / 10000, BOA_ADD_OFFSET = -1000 since "
            "processing baseline 04.00; 0 = no data",
        ),
        BandPreset(
            "sentinel2-l2a-20m",
            "Sentinel-2 L2A, 20 m bands (B02–B07, B8A, B11, B12)",
            ("blue", "green", "red", "red_edge", "red_edge2", "red_edge3", "nir", "swir1", "swir2"),
            Scaling(scale=1 / 10000, offset=-0.1),
            0.0,
            "ESA Sentinel-2 L2A PSD (R20m set; B05 = red_edge, B8A = nir); scaling as for 10 m",
        ),
        BandPreset(
            "landsat89-oli",
            "Landsat 8/9 OLI Collection 2 Level-2 SR (SR_B1–SR_B7)",
            ("coastal", "blue", "green", "red", "nir", "swir1", "swir2"),
            Scaling(scale=0.0000275, offset=-0.2),
            0.0,
            "USGS Landsat 8-9 C2 L2 Science Product Guide: SR = DN × 0.0000275 − 0.2; fill 0",
        ),
        BandPreset(
            "landsat7-etm",
            "Landsat 7 ETM+ Collection 2 Level-2 SR (SR_B1–B5, SR_B7)",
            ("blue", "green", "red", "nir", "swir1", "swir2"),
            Scaling(scale=0.0000275, offset=-0.2),
            0.0,
            "USGS Landsat 7 C2 L2 Science Product Guide: SR = DN × 0.0000275 − 0.2; fill 0",
        ),
    )
}


@dataclass(frozen=True)
class BandMap:
    """The resolved band names (file order), the scaling and the fallback no-data value."""

    bands: tuple[str, ...]
    scaling: Scaling | None  # None: scale by dtype (uint8 /255, uint16 /65535, float as is)
    nodata: float | None = None
    preset: str | None = None

    def scaling_for(self, dtype: np.dtype[np.generic]) -> Scaling:
        """The scaling to use for a raster of this dtype."""
        if self.scaling is not None:
            return self.scaling
        return DN_UINT8 if dtype == np.uint8 else DN_UINT16 if dtype == np.uint16 else Scaling(scale=1.0)

    def index_of(self, band: str) -> int | None:
        """0-based position of a (canonical) band name, None when the map has no such band."""
        name = canonical_band_name(band)
        return self.bands.index(name) if name in self.bands else None


def resolve_band_map(value: str | Sequence[str]) -> BandMap:
    """A preset name or an explicit list (``"blue,green,red,nir"`` or a sequence) → :class:`BandMap`.

    Raises ``InvalidInput("unknown_band_map")`` for a single unknown name (a one-band map is never
    what a user means for a multispectral raster) and ``InvalidInput("bad_band_map")`` for an empty
    list or a repeated band.
    """
    if isinstance(value, str):
        key = value.strip().lower()
        if key in PRESETS:
            preset = PRESETS[key]
            return BandMap(preset.bands, preset.scaling, preset.nodata, preset=preset.name)
        names = [v for v in (s.strip() for s in value.split(",")) if v]
        if len(names) == 1:
            raise InvalidInput(
                "unknown_band_map",
                f"{value!r} is neither a band-map preset nor a list of bands",
                fix=f"use one of {', '.join(PRESETS)} or a list such as blue,green,red,nir",
            )
    else:
        names = [str(v) for v in value]
    bands = tuple(canonical_band_name(n) for n in names)
    if not bands:
        raise InvalidInput("bad_band_map", "the band map is empty", fix="name the bands, e.g. red,nir")
    if len(set(bands)) != len(bands):
        raise InvalidInput(
            "bad_band_map", f"the band map names a band twice: {','.join(bands)}", fix="name each band once"
        )
    return BandMap(bands, None)
