"""Crop-health test helpers: a tiny per-pixel disease model, its registration, GeoTIFF bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from affine import Affine
from rasterio.crs import CRS

from keeneye.models.bundle import ModelBundle
from keeneye.models.manifest import ModelManifest
from keeneye.models.testing import tiny_segmenter, write_bundle
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.serving_support import fast_registry_store
from tests.unit.geo.rasters import UTM33, UTM_TRANSFORM

# MicaSense RedEdge-MX order; 16-bit stacks hold reflectance × 32768.
MICASENSE = ("blue", "green", "red", "nir", "red_edge")
MICASENSE_SCALE = 32768
SIZE = 128  # the tiny model's native input (the built-in crop-health trains at 128 px)


def crop_bundle(path: Path, channels: tuple[str, ...] = ("red", "nir"), size: int = SIZE) -> ModelBundle:
    """A 1×1-conv segmenter: ``blight`` wherever the first channel (red reflectance) is > 0.5."""
    return write_bundle(
        path,
        tiny_segmenter(2, channels=len(channels), size=size),
        name="crop-health",
        output_format="seg-logits",
        input={"width": size, "height": size, "channels": list(channels)},
        classes=["healthy", "blight"],
        background_class=0,
        thresholds={"score": 0.5, "mask": 0.5, "min_area": 16},
    )


def crop_manifest(channels: tuple[str, ...] = ("red", "nir"), size: int = SIZE) -> ModelManifest:
    return ModelManifest.parse(
        {
            "name": "crop-health",
            "task": "segment",
            "output_format": "seg-logits",
            "input": {"width": size, "height": size, "channels": list(channels)},
            "classes": ["healthy", "blight"],
            "background_class": 0,
            "thresholds": {"score": 0.5, "mask": 0.5, "min_area": 16},
        }
    )


def register_crop_model(settings: Settings, tmp: Path, channels: tuple[str, ...] = ("red", "nir")) -> str:
    fast_registry_store(settings)
    bundle = crop_bundle(tmp / "crop-bundle", channels)
    db = open_results_db(settings)
    db.ensure_schema()
    info = ModelRegistry(settings, events=db).register(
        "crop-health", bundle, alias="champion", gates_passed=True
    )
    return str(info.version)


def micasense_field(
    height: int, width: int, blight: tuple[int, int, int, int] | None = None, bands: int = 5
) -> npt.NDArray[np.uint16]:
    """A MicaSense stack (DN = reflectance × 32768): NDVI rising west → east, and a ``blight``
    rectangle ``(row, col, h, w)`` whose red reflectance is 0.8 (what the tiny model flags)."""
    cols = np.linspace(0.0, 1.0, width, dtype=np.float64)[np.newaxis, :].repeat(height, axis=0)
    refl = {
        "blue": np.full((height, width), 0.04),
        "green": np.full((height, width), 0.08),
        "red": 0.15 - 0.1 * cols,
        "nir": 0.3 + 0.3 * cols,
        "red_edge": np.full((height, width), 0.2),
    }
    if blight is not None:
        r, c, h, w = blight
        refl["red"][r : r + h, c : c + w] = 0.8
    stack = np.stack([np.round(refl[b] * MICASENSE_SCALE) for b in MICASENSE[:bands]])
    return stack.astype(np.uint16)


def geotiff_bytes(
    bands: npt.NDArray[Any], *, crs: CRS | None = UTM33, transform: Affine = UTM_TRANSFORM, **extra: Any
) -> bytes:
    """(bands, H, W) as GeoTIFF bytes, written by rasterio (tiled and deflated)."""
    out = io.BytesIO()
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": bands.shape[1],
        "width": bands.shape[2],
        "count": bands.shape[0],
        "dtype": bands.dtype.name,
        "compress": "deflate",
        "tiled": True,
        **extra,
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(bands)
        out.write(mem.read())
    return out.getvalue()


def huge_header_geotiff(side: int = 100_000) -> bytes:
    """A sparse GeoTIFF whose header claims ``side``² px × 5 bands but holds no pixel block."""
    with rasterio.MemoryFile() as mem:
        with mem.open(
            driver="GTiff", height=side, width=side, count=5, dtype="uint16", crs=UTM33,
            transform=UTM_TRANSFORM, tiled=True, compress="deflate", sparse_ok=True, BIGTIFF="YES",
        ):  # fmt: skip
            pass
        return bytes(mem.read())
