"""crop-health: synthetic multispectral drone tiles (GeoTIFF) with disease-zone instance masks.

File format (what :mod:`keeneye.imaging` reads back):

* float32 reflectance 0..1, 4 bands in file order ``nir, red_edge, red, green``, **planar**
  (``PlanarConfiguration=2``, tifffile reads shape ``(4, H, W)``), deflate-compressed;
* GeoTIFF tags: ModelPixelScaleTag 33550 (``gsd``, 0.05 m/pixel), ModelTiepointTag 33922 (pixel
  (0, 0) → UTM easting/northing), GeoKeyDirectoryTag 34735 (projected, ProjectedCSTypeGeoKey 3072 =
  EPSG:32637 UTM 37N, metres); band names in GDAL_METADATA (42112) and the ImageDescription JSON.

A tile shows crop rows (periodic canopy stripes: high NIR, low red) over soil, and zero to three
disease zones (irregular blobs). Each disease has its own spectral signature so NDVI and NDRE tell
them apart: ``rust`` drops NDVI strongly (red up), ``blight`` shifts the red edge (NDRE drops more
than NDVI), ``water_stress`` lowers NIR overall (mild NDVI drop).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.training.coco import CocoCategory
from keeneye.training.synth.common import (
    F32,
    CropTileMeta,
    Drift,
    Progress,
    SynthResult,
    SynthWriter,
    blob_mask,
    check_params,
    child_rngs,
    epoch_plus,
    parse_drift,
    prepare_out_dir,
    smooth_noise,
)

GENERATOR = "crop-health"
BANDS: tuple[str, ...] = ("nir", "red_edge", "red", "green")
DISEASES: tuple[str, ...] = ("rust", "blight", "water_stress")
NOVEL_DISEASE = "nitrogen_deficiency"  # only with drift "new-class"
EPSG = 32637  # WGS 84 / UTM zone 37N
GSD_M = 0.05
HEALTHY_TILE_SHARE = 0.25

# Full-canopy reflectance per band (nir, red_edge, red, green). NDVI / NDRE of each:
#   healthy 0.82 / 0.32 · rust 0.39 / 0.15 · blight 0.72 / 0.12 · water_stress 0.67 / 0.26
SIGNATURES: dict[str, tuple[float, float, float, float]] = {
    "healthy": (0.50, 0.26, 0.05, 0.10),
    "rust": (0.34, 0.25, 0.15, 0.11),
    "blight": (0.43, 0.34, 0.07, 0.10),
    "water_stress": (0.36, 0.21, 0.07, 0.09),
    NOVEL_DISEASE: (0.44, 0.28, 0.10, 0.16),  # yellowing: green and red up
}
SOIL_DRY = (0.28, 0.25, 0.21, 0.16)
CROPS: tuple[str, ...] = ("maize", "wheat", "sunflower", "soybean")
REGIONS: tuple[str, ...] = ("krasnodar", "rostov", "stavropol")

# GeoTIFF tag codes
MODEL_PIXEL_SCALE = 33550
MODEL_TIEPOINT = 33922
GEO_KEY_DIRECTORY = 34735
GDAL_METADATA = 42112


def categories(include_novel: bool = False) -> list[CocoCategory]:
    cats: list[CocoCategory] = [
        {"id": i + 1, "name": name, "supercategory": "disease"} for i, name in enumerate(DISEASES)
    ]
    if include_novel:
        cats.append(
            {"id": len(DISEASES) + 1, "name": NOVEL_DISEASE, "supercategory": "disease", "novel": True}
        )
    return cats


@dataclass
class CropTile:
    """A rendered tile: ``bands`` (4, H, W) float32; ``zones`` [(class, mask)]; ``canopy`` (H, W) 0..1
    vegetation cover (for tests and evaluation: which pixels are crop rows)."""

    bands: F32
    zones: list[tuple[str, npt.NDArray[np.bool_]]] = field(default_factory=list)
    canopy: F32 = field(default_factory=lambda: np.zeros((0, 0), np.float32))


def ndvi(bands: npt.NDArray[Any]) -> F32:
    nir, red = bands[0].astype(np.float32), bands[2].astype(np.float32)
    out: F32 = ((nir - red) / np.maximum(nir + red, 1e-6)).astype(np.float32)
    return out


def ndre(bands: npt.NDArray[Any]) -> F32:
    nir, re = bands[0].astype(np.float32), bands[1].astype(np.float32)
    out: F32 = ((nir - re) / np.maximum(nir + re, 1e-6)).astype(np.float32)
    return out


def render_crop_tile(
    rng: np.random.Generator,
    diseases: list[str],
    size: int = 128,
    drift: Drift | None = None,
    row_angle: float | None = None,
    soil_moisture: float | None = None,
) -> CropTile:
    """Rows of canopy over soil, then one zone per entry of ``diseases``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = float(rng.uniform(0, np.pi)) if row_angle is None else row_angle
    period = rng.uniform(10.0, 14.0) * size / 128  # 0.5-0.7 m rows at 5 cm/px
    cover = rng.uniform(0.45, 0.7)
    u = xx * np.cos(angle) + yy * np.sin(angle) + 2.0 * smooth_noise(rng, (size, size), size / 8)
    phase = rng.uniform(0, 2 * np.pi)
    canopy = np.clip(0.5 + 3.0 * (np.cos(2 * np.pi * u / period + phase) - np.cos(np.pi * cover)), 0, 1)
    canopy *= np.clip(1.0 + 0.08 * smooth_noise(rng, (size, size), size / 10), 0.6, 1.2)
    canopy = np.clip(canopy, 0, 1).astype(np.float32)

    moisture = float(rng.uniform(0.0, 0.3)) if soil_moisture is None else soil_moisture
    if drift is Drift.lighting:
        moisture = min(1.0, moisture + 0.5)  # wet season: darker soil
    soil = np.asarray(SOIL_DRY, np.float32) * (1.0 - 0.4 * moisture)
    soil_tex = 1.0 + 0.06 * smooth_noise(rng, (size, size), 2.0)

    veg = np.broadcast_to(
        np.asarray(SIGNATURES["healthy"], np.float32)[:, None, None], (4, size, size)
    ).copy()
    veg *= 1.0 + 0.04 * smooth_noise(rng, (size, size), size / 12)[None]
    zones: list[tuple[str, npt.NDArray[np.bool_]]] = []
    for disease in diseases:
        centre = (float(rng.uniform(0.15, 0.85) * size), float(rng.uniform(0.15, 0.85) * size))
        mask = blob_mask(rng, (size, size), centre, rng.uniform(10, 26) * size / 128)
        if not mask.any():
            continue
        # Severity grows toward the zone's core (blurred mask), never below 0.5 inside the zone.
        core = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 3.0 * size / 128)
        w = np.where(mask, np.clip(0.5 + core, 0.0, 1.0) * rng.uniform(0.8, 1.0), 0.0).astype(np.float32)
        sig = np.asarray(SIGNATURES[disease], np.float32)[:, None, None]
        veg = veg * (1 - w[None]) + sig * w[None] * (
            veg / np.asarray(SIGNATURES["healthy"], np.float32)[:, None, None]
        )
        zones = [(k, m & ~mask) for k, m in zones]
        zones.append((disease, mask))

    bands = canopy[None] * veg + (1.0 - canopy[None]) * soil[:, None, None] * soil_tex[None]
    noise = 0.004
    if drift is Drift.lighting:  # lower sun / haze: everything darker
        bands = bands * 0.8
    elif drift is Drift.sensor:  # another multispectral camera: band gains, noise, softer optics
        bands = bands * np.asarray([1.08, 0.92, 1.12, 0.95], np.float32)[:, None, None]
        noise = 0.015
        small = [cv2.resize(b, (size // 2, size // 2), interpolation=cv2.INTER_AREA) for b in bands]
        bands = np.stack([cv2.GaussianBlur(cv2.resize(b, (size, size)), (0, 0), 0.8) for b in small])
    bands = bands + rng.normal(0.0, noise, bands.shape).astype(np.float32)
    bands = np.clip(bands, 0.0, 1.0).astype(np.float32)
    return CropTile(bands=bands, zones=[(k, m) for k, m in zones if m.any()], canopy=canopy)


def geotiff_bytes(
    bands: npt.NDArray[np.float32], x0: float, y0: float, gsd: float = GSD_M, epsg: int = EPSG
) -> bytes:
    """Planar float32 GeoTIFF (deflate) with pixel scale, tiepoint, EPSG and band names."""
    import tifffile

    geokeys = [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, epsg, 3076, 0, 1, 9001]
    gdal_meta = "<GDALMetadata>" + "".join(
        f'<Item name="DESCRIPTION" sample="{i}" role="description">{b}</Item>' for i, b in enumerate(BANDS)
    ) + "</GDALMetadata>"  # fmt: skip
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        bands,
        photometric="minisblack",
        planarconfig="separate",
        compression="zlib",
        metadata=None,
        description=json.dumps({"bands": list(BANDS), "units": "reflectance"}),
        software="keeneye",
        extratags=[
            (MODEL_PIXEL_SCALE, "d", 3, (gsd, gsd, 0.0), True),
            (MODEL_TIEPOINT, "d", 6, (0.0, 0.0, 0.0, x0, y0, 0.0), True),
            (GEO_KEY_DIRECTORY, "H", len(geokeys), tuple(geokeys), True),
            (GDAL_METADATA, "s", 0, gdal_meta, True),
        ],
    )
    return buf.getvalue()


@dataclass(frozen=True)
class _Field:
    """What the tiles of one field (one flight) share."""

    field_id: str
    crop: str
    region: str
    row_angle: float
    soil_moisture: float
    x0: float
    y0: float
    flight_s: float


def generate_crop(
    out_dir: str | Path,
    n: int = 200,
    *,
    seed: int = 0,
    drift: str | Drift | None = None,
    size: int = 128,
    tiles_per_field: int = 16,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SynthResult:
    """Write ``n`` GeoTIFF tiles + COCO zone masks to ``out_dir``; fields of ``tiles_per_field``
    tiles share a crop, a region, a row direction and one flight."""
    kind = parse_drift(drift)
    check_params(n, size)
    out = prepare_out_dir(out_dir, overwrite)
    novel = kind is Drift.new_class
    writer = SynthWriter(out, categories(include_novel=novel))
    master = np.random.default_rng(seed)
    grid = int(np.ceil(np.sqrt(tiles_per_field)))
    n_fields = (n + tiles_per_field - 1) // tiles_per_field
    fields = [
        _Field(
            field_id=f"F{f + 1:03d}",
            crop=CROPS[int(master.integers(len(CROPS)))],
            region=REGIONS[int(master.integers(len(REGIONS)))],
            row_angle=float(master.uniform(0, np.pi)),
            soil_moisture=float(master.uniform(0.0, 0.3)),
            # UTM 37N origin of the field; fields a kilometre apart so tiles never overlap.
            x0=400_000.0 + 1000.0 * f,
            y0=5_000_000.0 + 500.0 * (f % 7),
            flight_s=f * 86_400.0 + float(master.uniform(0, 3600)),
        )
        for f in range(n_fields)
    ]
    pool = [*DISEASES, NOVEL_DISEASE] if novel else list(DISEASES)
    for i, rng in enumerate(child_rngs(seed, n)):
        fld = fields[i // tiles_per_field]
        t = i % tiles_per_field
        row, col = divmod(t, grid)
        n_zones = 0 if rng.random() < HEALTHY_TILE_SHARE else int(rng.integers(1, 4))
        diseases = [str(rng.choice(pool)) for _ in range(n_zones)]
        tile = render_crop_tile(rng, diseases, size, kind, fld.row_angle, fld.soil_moisture)
        x0 = fld.x0 + col * size * GSD_M
        y0 = fld.y0 - row * size * GSD_M
        meta: CropTileMeta = {
            "field_id": fld.field_id,
            "crop": fld.crop,
            "region": fld.region,
            "flight_time": epoch_plus(fld.flight_s),
            "captured_at": epoch_plus(fld.flight_s + 2.0 * t),
            "tile_row": row,
            "tile_col": col,
            "epsg": EPSG,
            "gsd_m": GSD_M,
            "geotransform": [x0, GSD_M, 0.0, y0, 0.0, -GSD_M],  # GDAL order
            "band_order": list(BANDS),
            "diseases": sorted({k for k, _ in tile.zones}),
            "source": "synthetic",
            "drift": kind.value if kind else None,
            "novel": any(k == NOVEL_DISEASE for k, _ in tile.zones),
        }
        image_id = writer.add_image(
            f"images/tile_{i:05d}.tif", geotiff_bytes(tile.bands, x0, y0), size, size, meta
        )
        for k, m in tile.zones:
            writer.add_instance(image_id, k, m)
        if progress is not None:
            progress(i + 1)
    return writer.finish(
        {
            "generator": GENERATOR,
            "task": "segment",
            "seed": seed,
            "drift": kind.value if kind else None,
            "size": size,
            "classes": list(DISEASES),
            "novel_classes": [NOVEL_DISEASE] if novel else [],
            "bands": list(BANDS),
            "epsg": EPSG,
            "gsd_m": GSD_M,
            "format": "COCO instance masks; images/*.tif planar float32 GeoTIFF (nir, red_edge, red, green)",
        }
    )
