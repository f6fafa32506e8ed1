"""Crop health on an orthomosaic of any size (WebODM / Pix4D / Metashape, 10k–40k px a side), streamed.

A mosaic over the synchronous limit (``input.max_pixels``) is read from its path block by block
(rasterio windows of ``block`` px plus the model's overlap), never whole:

1. each block is read as reflectance with its valid mask (:func:`keeneye.geo.read_dataset`);
2. its indices feed one :class:`~keeneye.geo.streaming.IndexHistogram` each (exact mean, p10/p50/p90
   within 0.00025) and, when ``index_dir`` is given, one full-resolution tiled GeoTIFF per index
   (float32, NaN = nodata; written window by window);
3. the disease model runs on the block's tiles at its native resolution, exactly as for a
   synchronous request (:func:`keeneye.pipelines.crophealth.tile_input`: tiles of the model's input
   size with 1/8 overlap; the block itself is read with that overlap so tiles on a block edge see
   their neighbours); the stitched logits become a class mask (:func:`class_map_of`) of the block;
4. the block's core (cores tile the mosaic exactly once) is added to a
   :class:`~keeneye.geo.streaming.ZoneGrid`: per cell of ``factor`` × ``factor`` px the valid pixels,
   the vigour index sum, the pixels per disease class, their probability;
5. at the end, vigour and disease zones are cut from the grid by the same code as for a small raster
   (:func:`keeneye.geo.vigour_zones`, :func:`keeneye.geo.disease_zones`), polygons in the mosaic's
   coordinates. ``area_px`` of a zone is its cells × factor².

Memory is one block (a 1024² block of 5 bands: ~40 MB of reflectance and ~50 MB of model tiles) plus
the grid (≤ 4096² cells: ~64 MB per accumulator) — a 20,000² 5-band uint16 mosaic (4 GB of pixels)
stays under 1.5 GB RSS (benchmarks/crop_health.py measures it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np
import rasterio
from rasterio.windows import Window

from keeneye.domain import GeoModelJson, GeoPart, InvalidInput
from keeneye.geo import (
    INDICES,
    Zone,
    available,
    compute_index,
    disease_zones,
    open_raster,
    read_dataset,
    vigour_zones,
    zones_to_geojson,
)
from keeneye.geo.analysis import VIGOUR_SOURCES
from keeneye.geo.raster import data_band_indexes, georef_of
from keeneye.geo.streaming import IndexHistogram, ZoneGrid, zone_factor
from keeneye.geo.zones import DEFAULT_MIN_AREA_PX, VIGOUR_MIN_AREA_FRACTION
from keeneye.models import RunFn
from keeneye.models.manifest import ModelManifest
from keeneye.pipelines.crophealth import (
    GeoRequest,
    logits_to_classes,
    missing_channels,
    run_tiles_sync,
    tile_input,
)
from keeneye.pipelines.spec import PipelineSpec

DEFAULT_BLOCK: Final = 1024
GDAL_CACHE_MB: Final = 64
ZONE_MAX_SIDE: Final = 2048  # the synchronous limit: zones of a mosaic cost what a 2048² request does
Progress = Callable[[int, int], None]  # (blocks done, blocks in all)


@dataclass(frozen=True)
class MosaicAnswer:
    """A mosaic's geo part and how it was computed."""

    geo: GeoPart
    width: int
    height: int
    blocks: int
    zone_factor: int
    seconds: float
    index_maps: dict[str, Path]

    @property
    def megapixels_per_second(self) -> float:
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)


def is_mosaic(path: Path, max_pixels: int) -> bool:
    """Whether the raster at ``path`` is over the synchronous limit (read from its header only)."""
    with open_raster(path) as ds:
        return bool(ds.width * ds.height > max_pixels)


def _blocks(width: int, height: int, core: int) -> list[tuple[int, int, int, int]]:
    return [
        (row, col, min(core, height - row), min(core, width - col))
        for row in range(0, height, core)
        for col in range(0, width, core)
    ]


def analyse_mosaic(
    path: Path,
    spec: PipelineSpec,
    manifest: ModelManifest | None,
    run: RunFn | None,
    request: GeoRequest,
    *,
    block: int = DEFAULT_BLOCK,
    zone_max_side: int = ZONE_MAX_SIDE,
    n_zones: int = 3,
    index_dir: Path | None = None,
    progress: Progress | None = None,
    gsd_m: float | None = None,
) -> MosaicAnswer:
    """The crop-health geo part of the raster at ``path`` (module docstring); raises InvalidInput.

    ``manifest``/``run`` None: indices and vigour zones only (no model)."""
    started = time.perf_counter()
    indices = tuple(str(i) for i in spec.input.indices) or ("ndvi", "ndre", "gndvi")
    unknown = [n for n in indices if n not in INDICES]
    if unknown:
        raise InvalidInput(
            "unknown_index", f"no index named {', '.join(unknown)}", fix=f"use {', '.join(INDICES)}"
        )
    bands = request.band_map.bands
    # GDAL's block cache defaults to 5% of the machine's memory and would grow with every block read.
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_raster(path) as ds:
        count = len(data_band_indexes(ds))
        if count != len(bands):
            raise InvalidInput(
                "wrong_band_count",
                f"the image has {count} data band{'s' if count != 1 else ''}; {request.source} "
                f"names {len(bands)}",
                fix="pick the preset of the camera that took it (--band-map), or list its bands in "
                "file order",
            )
        width, height = ds.width, ds.height
        georef = georef_of(ds, None, gsd_m)
        # What the model can run on (same rules as a synchronous request).
        reason: str | None = None
        missing: list[str] = []
        if manifest is None or run is None:
            reason = "no model"
        else:
            missing = missing_channels(bands, manifest.input.channels)
            if missing:
                reason = (
                    f"the model needs band{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                    f"the image has {', '.join(bands)} ({request.source})"
                )
            elif manifest.output_format != "seg-logits":
                reason = f"a {manifest.output_format} model cannot be run tile by tile (seg-logits only)"
        tile_size = min(manifest.input.width, manifest.input.height) if manifest is not None else 0
        overlap = tile_size // 8 if reason is None else 0
        factor = zone_factor(width, height, zone_max_side)
        core = factor * max(1, round(block / factor))
        wanted = [n for n in indices if n in available(bands, (n,))]
        notes = [f"{n}: needs bands {', '.join(INDICES[n].bands)}" for n in indices if n not in wanted]
        vigour_index = next((n for n in VIGOUR_SOURCES if n in available(bands, (n,))), None)
        class_names = [c.name for c in manifest.classes] if manifest is not None else []
        grid = ZoneGrid(width, height, factor, n_classes=len(class_names))
        ndvi_grid = (
            ZoneGrid(width, height, factor)
            if vigour_index not in (None, "ndvi") and "ndvi" in wanted
            else None
        )
        hists = {n: IndexHistogram() for n in wanted}
        maps = _open_index_maps(index_dir, path, wanted, ds.profile, georef) if index_dir else {}
        blocks = _blocks(width, height, core)
        n_tiles = 0
        try:
            for done, (row, col, h, w) in enumerate(blocks, 1):
                r0, c0 = max(0, row - overlap), max(0, col - overlap)
                r1, c1 = min(height, row + h + overlap), min(width, col + w + overlap)
                raster = read_dataset(
                    ds, request.band_map, window=Window(c0, r0, c1 - c0, r1 - r0), gsd_m=gsd_m
                )
                inner = (slice(row - r0, row - r0 + h), slice(col - c0, col - c0 + w))
                for name in wanted:
                    values, ok = compute_index(raster, name)
                    v, o = values[inner], ok[inner]
                    hists[name].add(v, o)
                    if name == vigour_index:
                        grid.add_index(row, col, v, o)
                    if ndvi_grid is not None and name == "ndvi":
                        ndvi_grid.add_index(row, col, v, o)
                    if name in maps:
                        maps[name].write(
                            np.where(o, v, np.nan).astype(np.float32), 1, window=Window(col, row, w, h)
                        )
                if reason is None and manifest is not None and run is not None:
                    geo = tile_input(raster, manifest, request)
                    n_tiles += len(geo.tiles)
                    if geo.tiles:
                        logits = run_tiles_sync(run, geo)[0]
                        _, class_mask, probability = logits_to_classes(manifest, logits)
                        class_mask = np.where(raster.valid, class_mask, 0)
                        grid.add_classes(row, col, class_mask[inner], probability[inner])
                if progress is not None:
                    progress(done, len(blocks))
        finally:
            for dst in maps.values():
                dst.close()
    grid_georef = grid.georef(georef)
    valid = grid.valid()
    zones: list[Zone] = []
    cell_px = factor * factor
    if vigour_index is not None and valid.any():
        min_cells = max(DEFAULT_MIN_AREA_PX, int(valid.sum()) // VIGOUR_MIN_AREA_FRACTION)
        zones += vigour_zones(grid.index_mean(), valid, grid_georef, n_zones=n_zones, min_area_px=min_cells)
    elif vigour_index is None:
        notes.append("vigour zones: need NIR with Red, Red edge or Green")
    if reason is None and class_names:
        class_mask, probability = grid.class_map()
        ndvi_src = ndvi_grid if ndvi_grid is not None else grid if vigour_index == "ndvi" else None
        ndvi = ndvi_src.index_mean() if ndvi_src is not None else None
        zones += disease_zones(
            class_mask,
            probability,
            grid_georef,
            class_names,  # mask value k + 1 is class id k, as class_map_of paints it
            valid=valid,
            ndvi=ndvi,
            min_area_px=max(1, math.ceil(DEFAULT_MIN_AREA_PX / cell_px)),
        )
    zones = [replace(z, area_px=z.area_px * cell_px) for z in zones]
    if reason is not None and reason != "no model":
        notes.append(f"disease model not run: {reason}")
    if factor > 1:
        notes.append(
            f"mosaic: zones cut on a grid of {factor}×{factor} px cells ({grid.shape[1]}×{grid.shape[0]})"
        )
    if not georef.georeferenced:
        notes.append(
            "not georeferenced: zones in pixel coordinates"
            + ("" if georef.gsd_m else "; areas in pixels only (give the GSD for m²)")
        )
    crs = request.crs
    zones_crs = None if not georef.georeferenced else "EPSG:4326" if crs == "wgs84" else georef.crs_name
    model: GeoModelJson = {
        "ran": reason is None,
        "reason": None if reason is None else reason,
        "missing_bands": missing,
        "tiles": n_tiles,
        "tile_size": tile_size,
    }
    part = GeoPart(
        indices={n: h.stats() for n, h in hists.items()},
        crs=georef.crs_name,
        area_basis=grid_georef.area_basis,
        zones_crs=zones_crs,
        zones=zones_to_geojson(zones, grid_georef, crs),
        bands=bands,
        vigour_index=vigour_index,
        notes=notes,
        model=model,
    )
    return MosaicAnswer(
        geo=part,
        width=width,
        height=height,
        blocks=len(blocks),
        zone_factor=factor,
        seconds=time.perf_counter() - started,
        index_maps={n: Path(str(m.name)) for n, m in maps.items()},
    )


def _open_index_maps(
    folder: Path, source: Path, names: list[str], profile: dict[str, object], georef: object
) -> dict[str, rasterio.io.DatasetWriter]:
    """One tiled float32 GeoTIFF per index, written window by window (never held whole)."""
    folder.mkdir(parents=True, exist_ok=True)
    out_profile = {
        "driver": "GTiff",
        "width": profile["width"],
        "height": profile["height"],
        "count": 1,
        "dtype": "float32",
        "nodata": float("nan"),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
        "crs": profile.get("crs"),
        "transform": profile.get("transform"),
    }
    return {n: rasterio.open(folder / f"{source.stem}.{n}.tif", "w", **out_profile) for n in names}
