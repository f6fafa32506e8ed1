"""Crop health on any camera and any size: a GeoTIFF → reflectance → per-tile disease model → geo part.

A pipeline whose spec sets ``input.geo: true`` (the built-in ``crop-health``) reads its uploads with
:func:`keeneye.geo.read_raster` instead of the photo decoder, so

* the bands are named per request: ``metadata.band_map`` (a preset such as ``micasense-rededge-mx``
  or ``blue,green,red,nir``), else ``metadata.camera`` (the spec's ``band_map_by_camera`` or a preset
  of that name), else the spec's ``band_map``; a raster with another number of data bands is refused
  (``wrong_band_count``, naming the map and both counts);
* nodata, internal masks and alpha are masked out of every statistic and zone (``valid``);
* the model runs at its native resolution on overlapping tiles (:func:`keeneye.geo.tile_windows`,
  tile = the model's input size) and the per-tile logits are stitched back (cores only) before the
  disease zones are cut — a 2048² raster is never shrunk to the model's 128 px;
* a model that needs a band the raster lacks is not run: the answer says which band is missing and
  still carries the index statistics and vigour zones (``geo.model``);
* the size limit is checked on the header before any pixel is read (413 ``image_too_large``);
* a zip of one TIFF per band (a DJI / MicaSense capture, or several files of one request packed by
  the API) is checked and stacked in band order first (:mod:`keeneye.geo.capture`).

``metadata.crs`` (``wgs84``, the default, or ``native``; the API's ``?crs=native`` and the CLI's
``--crs native`` set it) chooses the zones' coordinates. docs/crop-health.md describes all of it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.io import DatasetReader, MemoryFile
from rasterio.windows import Window

from keeneye.domain import GeoModelJson, GeoPart, Instances, InvalidInput, JsonObject
from keeneye.geo import (
    PRESETS,
    BandMap,
    Reflectance,
    Stitcher,
    Tile,
    analyse_reflectance,
    class_map_of,
    disease_zones,
    open_raster,
    read_dataset,
    resolve_band_map,
    tile_windows,
)
from keeneye.geo.analysis import VIGOUR_SOURCES
from keeneye.geo.capture import stack_zip
from keeneye.geo.indices import DEFAULT_INDICES, index_maps
from keeneye.geo.raster import data_band_indexes
from keeneye.geo.zones import OutputCrs
from keeneye.imaging import SPECTRAL_INDICES, Image, canonical_band_name, prepare_input
from keeneye.imaging.archive import is_zip
from keeneye.models import MicroBatcher, RunFn
from keeneye.models.manifest import ModelManifest
from keeneye.models.postprocess import seg_logits_to_instances
from keeneye.pipelines.spec import PipelineSpec

FloatArray = npt.NDArray[np.float32]
CRS_CHOICES: Final = ("wgs84", "native")
# glibc mallopt: arrays up to HEAP_ALLOCATION_MAX come from the heap, and up to KEEP_FREED_MAX of
# freed memory stays with the process (retain_freed_memory). Both are C ints: at most 2**31 - 1 (ctypes
# masks a larger Python int silently; 4 GiB became 0, "trim everything").
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
HEAP_ALLOCATION_MAX: Final = 1 << 30
KEEP_FREED_MAX: Final = 1 << 30
# Tiles per model call where no micro-batcher sets it (stream workers, shadow runs, mosaics).
TILE_WAVE: Final = 16


@dataclass(frozen=True)
class GeoRequest:
    """How one request reads its raster: the band map, where it came from, the zones' CRS."""

    band_map: BandMap
    source: str  # "preset micasense-rededge-mx", "camera keeneye", "band map nir,red", …
    crs: OutputCrs = "wgs84"


@dataclass(frozen=True, eq=False)
class GeoInput:
    """A raster read for the crop-health model: reflectance, the tiles that run, their input.

    The model's input channels are computed **once** for the whole raster (``planes``: bands scaled,
    indices, ``mean``/``std``, in the model's layout and dtype); a tile's tensor is its read window of
    ``planes`` with ``fill`` (what an empty pixel becomes) where the window is smaller than the tile —
    exactly what :func:`~keeneye.imaging.prepare_input` makes of the zero-padded tile, without a
    per-tile pass. :meth:`batch` builds tiles ``[start, stop)`` as one ``(n, …)`` array, so the model
    runs once per batch and no per-tile tensor is ever kept. Only tiles with valid pixels run;
    ``tiles`` is empty, with a ``reason``, when the model cannot run on these bands.
    ``pixels``: the raster as (H, W, bands) with invalid pixels 0 (the image facts and drift features).
    """

    raster: Reflectance
    request: GeoRequest
    tile_size: int
    tiles: tuple[Tile, ...]
    pixels: npt.NDArray[np.float32]
    planes: npt.NDArray[np.generic] | None = None
    fill: npt.NDArray[np.generic] | None = None
    channels_first: bool = True
    reason: str | None = None
    missing_bands: tuple[str, ...] = ()

    def batch(self, start: int = 0, stop: int | None = None) -> npt.NDArray[np.generic]:
        """The model input of ``tiles[start:stop]`` as one ``(n, C, S, S)`` (or NHWC) array."""
        if self.planes is None or self.fill is None:
            raise ValueError(f"the model does not run on this raster: {self.reason}")
        tiles = self.tiles[start:stop]
        size = self.tile_size
        channels = self.fill.shape[0]
        shape = (size, size)
        out = np.empty(
            (len(tiles), channels, *shape) if self.channels_first else (len(tiles), *shape, channels),
            dtype=self.planes.dtype,
        )
        fill = self.fill[:, None, None] if self.channels_first else self.fill
        for k, tile in enumerate(tiles):
            rows, cols = _slices(tile)
            h, w = rows.stop - rows.start, cols.stop - cols.start
            if self.channels_first:
                out[k, :, :h, :w] = self.planes[:, rows, cols]
                if (h, w) != shape:
                    out[k, :, h:, :] = fill
                    out[k, :, :h, w:] = fill
            else:
                out[k, :h, :w] = self.planes[rows, cols]
                if (h, w) != shape:
                    out[k, h:, :] = fill
                    out[k, :h, w:] = fill
        return out


# --------------------------------------------------------------------------------------------------
# The request: band map and CRS
# --------------------------------------------------------------------------------------------------


def geo_request(spec: PipelineSpec, metadata: JsonObject | None) -> GeoRequest:
    """The band map and CRS ``metadata`` asks for (see the module docstring); bad values are 400/422."""
    meta = metadata or {}
    crs = meta.get("crs", "wgs84")
    if crs not in CRS_CHOICES:
        raise InvalidInput(
            "bad_crs", f"crs {crs!r} is not one of {', '.join(CRS_CHOICES)}", status=400,
            fix="ask for crs=wgs84 (GeoJSON lon/lat, the default) or crs=native (the raster's own CRS)",
        )  # fmt: skip
    output_crs: OutputCrs = "native" if crs == "native" else "wgs84"
    band_map = meta.get("band_map")
    if band_map is not None:
        if isinstance(band_map, str) or (
            isinstance(band_map, list) and all(isinstance(b, str) for b in band_map)
        ):
            resolved = resolve_band_map(band_map if isinstance(band_map, str) else [str(b) for b in band_map])
            return GeoRequest(resolved, _source_of(resolved), output_crs)
        raise InvalidInput(
            "bad_band_map", "metadata.band_map must be a preset name or a list of band names",
            fix="e.g. \"micasense-rededge-mx\" or \"blue,green,red,nir\"",
        )  # fmt: skip
    camera = meta.get("camera")
    if camera is not None:
        key = str(camera).strip().lower()
        bands = spec.input.band_map_by_camera.get(key)
        if bands is not None:
            return GeoRequest(resolve_band_map(bands), f"camera {key} ({','.join(bands)})", output_crs)
        if key in PRESETS:
            resolved = resolve_band_map(key)
            return GeoRequest(resolved, _source_of(resolved), output_crs)
        known = sorted({*spec.input.band_map_by_camera, *PRESETS})
        raise InvalidInput(
            "unknown_camera",
            f"camera {camera!r} has no band map in pipeline {spec.name!r}",
            fix=f"use one of {', '.join(known)}, or send metadata.band_map",
        )
    if spec.input.band_map is None:
        raise InvalidInput(
            "bad_band_map", f"pipeline {spec.name!r} names no bands and the request names none",
            fix="send metadata.band_map (a preset or b1,b2,…) or metadata.camera",
        )  # fmt: skip
    resolved = resolve_band_map(spec.input.band_map)
    return GeoRequest(resolved, f"pipeline band map {','.join(resolved.bands)}", output_crs)


def _source_of(band_map: BandMap) -> str:
    if band_map.preset is not None:
        return f"preset {band_map.preset} ({','.join(band_map.bands)})"
    return f"band map {','.join(band_map.bands)}"


def answer_key(spec: PipelineSpec, digest: str, metadata: JsonObject | None) -> str:
    """The cache key of an answer: the content hash, plus the band map and CRS for a geo pipeline
    (the same bytes read with another band map or asked in another CRS is another answer)."""
    if not spec.input.geo:
        return digest
    meta = metadata or {}
    extra = [f"{k}={meta[k]!r}" for k in ("band_map", "camera", "crs") if k in meta]
    return digest if not extra else f"{digest}|{'|'.join(extra)}"


# --------------------------------------------------------------------------------------------------
# Reading and tiling
# --------------------------------------------------------------------------------------------------


def read_geo_input(
    spec: PipelineSpec,
    manifest: ModelManifest,
    data: bytes,
    request: GeoRequest,
    *,
    max_pixels: int,
) -> GeoInput:
    """Read ``data`` with ``request``'s band map (size and band count checked on the header first)
    and cut the model's tiles; raises InvalidInput with a precise reason.

    ``data`` may be a zipped multi-file capture (one TIFF per band, :mod:`keeneye.geo.capture`):
    it is checked, stacked in band order and read like a stacked GeoTIFF."""
    if is_zip(data):
        data = stack_zip(data, request.band_map, max_pixels=max_pixels)
    with open_raster(data) as ds:
        if ds.driver == "GTiff" and ds.count == 1 and len(ds.subdatasets) > 1:
            _check_count(len(ds.subdatasets), request, "page")
            return read_geo_input(
                spec, manifest, _stack_pages(ds, max_pixels), request, max_pixels=max_pixels
            )
        require_geotiff(ds.driver, spec, fix="send a GeoTIFF (or a plain multi-band TIFF)")
        if ds.width * ds.height > max_pixels:
            raise InvalidInput(
                "image_too_large",
                f"{ds.width}×{ds.height} px is over the {max_pixels:,} pixels one request may hold",
                status=413,
                fix="stream a mosaic from its file: keeneye predict -p crop-health PATH (any size), "
                "or raise the pipeline's input.max_pixels",
            )
        _check_count(len(data_band_indexes(ds)), request, "data band")
        raster = read_dataset(ds, request.band_map)
    return tile_input(raster, manifest, request)


def require_geotiff(driver: str, spec: PipelineSpec, *, fix: str) -> None:
    """Refuse (415) a raster GDAL read with another driver than GeoTIFF's."""
    if driver != "GTiff":
        raise InvalidInput(
            "unsupported_format", f"{driver} is not accepted by pipeline {spec.name!r}", status=415, fix=fix
        )


def _check_count(count: int, request: GeoRequest, what: str) -> None:
    """``wrong_band_count`` unless the band map names ``count`` bands; checked before any pixel is
    read, so a TIFF of thousands of one-band pages is refused without reading them."""
    names = request.band_map.bands
    if count != len(names):
        raise InvalidInput(
            "wrong_band_count",
            f"the image has {count} {what}{'s' if count != 1 else ''}; {request.source} names {len(names)}",
            fix="pick the preset of the camera that took it (metadata.band_map or --band-map), "
            "or list its bands in file order",
        )


def _stack_pages(ds: DatasetReader, max_pixels: int) -> bytes:
    """A multi-page TIFF with one band per page (what tifffile writes for a (bands, H, W) array
    unless told ``planarconfig="separate"``) as one multi-band GeoTIFF, georeference of page 1."""
    if ds.width * ds.height > max_pixels:
        raise InvalidInput(
            "image_too_large",
            f"{ds.width}×{ds.height} px is over the {max_pixels:,} pixels one request may hold",
            status=413,
            fix="stream a mosaic from its file: keeneye predict -p crop-health PATH (any size), "
            "or raise the pipeline's input.max_pixels",
        )
    pages = []
    for name in ds.subdatasets:
        with rasterio.open(name) as page:
            if page.count != 1 or page.shape != ds.shape or page.dtypes[0] != ds.dtypes[0]:
                raise InvalidInput(
                    "wrong_band_count",
                    "a multi-page TIFF is read as one band per page; its pages differ in size, type "
                    "or band count",
                    fix="send one page holding every band (a multi-band GeoTIFF)",
                )
            pages.append(page.read(1))
    profile = {**ds.profile, "count": len(pages), "tiled": False}
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with MemoryFile() as mem:
        with mem.open(**profile) as out:
            out.write(np.stack(pages))
        return bytes(mem.read())


def missing_channels(bands: Sequence[str], channels: Sequence[str]) -> list[str]:
    """The bands the model's ``channels`` need that ``bands`` lack (an index needs both of its bands)."""
    have = set(bands)
    missing: list[str] = []
    for requested in channels:
        name = canonical_band_name(requested)
        needs = SPECTRAL_INDICES.get(name, (name,)) if name not in have else ()
        missing.extend(b for b in needs if b not in have and b not in missing)
    return missing


@functools.cache
def retain_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing every big array back to the kernel.

    A 2048² request allocates and frees tens of full-size arrays (reflectance, indices, logits,
    masks, labels: 16-100 MB each). By default glibc maps each such array afresh (``mmap``) and
    unmaps it when freed, so every one pays a page fault per 4 KiB on first touch — on a VM, as much
    as the arithmetic itself (benchmarks/crop_health.py: post-processing 2.8 s → 1.1 s). With the
    thresholds raised, big arrays come from the heap and freed ones are reused: the process keeps up
    to ``KEEP_FREED_MAX`` (1 GiB, about a 2048² request's working set) instead of returning it.
    Called once, by the first raster a process tiles; a no-op without glibc. Returns whether it
    applied.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, HEAP_ALLOCATION_MAX) == 1
    return bool(ok and mallopt(M_TRIM_THRESHOLD, KEEP_FREED_MAX) == 1)


def masked_pixels(raster: Reflectance) -> npt.NDArray[np.float32]:
    """(H, W, bands) reflectance with invalid pixels 0 (a view of ``raster.data`` when all are valid)."""
    data = raster.data if raster.valid.all() else np.where(raster.valid, raster.data, np.float32(0))
    pixels: npt.NDArray[np.float32] = np.moveaxis(data, 0, -1)
    return pixels


def tile_input(raster: Reflectance, manifest: ModelManifest, request: GeoRequest) -> GeoInput:
    """The model's tiles of ``raster``: native input size, 1/8 overlap (one tile when the raster fits
    the model's input), only tiles with valid pixels; their input computed once for the raster."""
    retain_freed_memory()
    spec = manifest.input
    size = min(spec.width, spec.height)
    pixels = masked_pixels(raster)  # no-data values never reach the model
    missing = missing_channels(raster.bands, spec.channels)
    if missing:
        reason = (
            f"the model needs band{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"the image has {', '.join(raster.bands)} ({request.source})"
        )
        return GeoInput(raster, request, size, (), pixels, reason=reason, missing_bands=tuple(missing))
    if manifest.output_format != "seg-logits":
        reason = f"a {manifest.output_format} model cannot be run tile by tile (seg-logits only)"
        return GeoInput(raster, request, size, (), pixels, reason=reason)
    height, width = raster.shape
    whole = Window(0, 0, width, height)
    windows = (
        [Tile(read=whole, core=whole)]  # fits one tile: no overlap needed
        if width <= size and height <= size
        else list(tile_windows(width, height, size=size, overlap=size // 8))
    )
    if not raster.valid.all():
        windows = [t for t in windows if raster.valid[_slices(t)].any()]
    # prepare_input at the raster's own size is per pixel (no resize, no letterbox): the same
    # arithmetic as on each zero-padded tile, done once; ``fill`` is what it makes of a 0 pixel.
    whole_spec = spec.model_copy(update={"width": width, "height": height})
    planes, _ = prepare_input(Image(pixels, raster.bands, "tiff", ""), whole_spec)
    zero = Image(np.zeros((1, 1, len(raster.bands)), dtype=np.float32), raster.bands, "tiff", "")
    one_px, _ = prepare_input(zero, spec.model_copy(update={"width": 1, "height": 1}))
    channels_first = spec.layout == "NCHW"
    fill = one_px[:, 0, 0] if channels_first else one_px[0, 0, :]
    return GeoInput(raster, request, size, tuple(windows), pixels, planes, fill, channels_first)


def _slices(tile: Tile) -> tuple[slice, slice]:
    r, c = int(tile.read.row_off), int(tile.read.col_off)
    return slice(r, r + int(tile.read.height)), slice(c, c + int(tile.read.width))


async def run_tiles(batcher: MicroBatcher, geo: GeoInput) -> list[FloatArray]:
    """Every tile through the model, one model call per batch of ``batcher.max_batch`` tiles: the
    next batch is built in a worker thread and queued while the previous one runs, so the model
    never waits for Python. ``[(C, H, W) stitched logits]``, ``[]`` when nothing runs."""
    if not geo.tiles:
        return []
    stitch = TileStitch(geo)
    step = max(1, batcher.max_batch)
    queued: list[tuple[int, asyncio.Future[list[npt.NDArray[np.generic]]]]] = []
    try:
        for start in range(0, len(geo.tiles), step):
            batch = await asyncio.to_thread(geo.batch, start, start + step)
            queued.append((start, asyncio.ensure_future(batcher.submit_batch(batch))))
            if len(queued) == 2:
                first, outputs = queued.pop(0)
                stitch.add(first, (await outputs)[0])
        for first, outputs in queued:
            stitch.add(first, (await outputs)[0])
        queued.clear()
    finally:
        for _, outputs in queued:  # a batch failed: the one queued behind it is not wanted
            if outputs.done() and not outputs.cancelled():
                outputs.exception()  # retrieved: no "never retrieved" warning
            else:
                outputs.cancel()
    return [stitch.logits()]


def run_tiles_sync(run: RunFn, geo: GeoInput, *, max_batch: int = TILE_WAVE) -> list[FloatArray]:
    """:func:`run_tiles` without an event loop (stream workers, shadow runs, mosaics)."""
    if not geo.tiles:
        return []
    stitch = TileStitch(geo)
    for start in range(0, len(geo.tiles), max_batch):
        batch = geo.batch(start, start + max_batch)
        outputs = run(batch)
        stitch.add(start, np.asarray(outputs[0]))
    return [stitch.logits()]


# --------------------------------------------------------------------------------------------------
# The answer
# --------------------------------------------------------------------------------------------------


class TileStitch:
    """Per-tile ``(n, C, S, S)`` logits, batch by batch, → one ``(C, H, W)`` map (cores only; tiles
    that did not run stay 0, i.e. no class wins)."""

    def __init__(self, geo: GeoInput) -> None:
        self.geo = geo
        self._full: FloatArray | None = None
        self._stitcher: Stitcher | None = None
        self._done = 0

    def add(self, start: int, tile_logits: npt.NDArray[np.generic]) -> None:
        """The logits of ``geo.tiles[start : start + n]``."""
        tiles = self.geo.tiles[start : start + int(tile_logits.shape[0])] if tile_logits.ndim == 4 else ()
        if tile_logits.ndim != 4 or len(tiles) != tile_logits.shape[0]:
            raise InvalidInput(
                "bad_model_output",
                f"expected {len(self.geo.tiles)} tiles of (C, H, W) logits, got shape {tile_logits.shape} "
                f"at tile {start}",
                status=500,
            )
        if self._full is None:
            height, width = self.geo.raster.shape
            self._full = np.zeros((int(tile_logits.shape[1]), height, width), dtype=np.float32)
            self._stitcher = Stitcher(self._full)
        assert self._stitcher is not None
        for tile, logits in zip(tiles, tile_logits, strict=True):
            h, w = int(tile.read.height), int(tile.read.width)
            self._stitcher.add(tile, logits[:, :h, :w])
        self._done += len(tiles)

    def logits(self) -> FloatArray:
        if self._full is None or self._done != len(self.geo.tiles):
            raise InvalidInput(
                "bad_model_output",
                f"logits of {self._done} of {len(self.geo.tiles)} tiles were stitched",
                status=500,
            )
        return self._full


def logits_to_classes(
    manifest: ModelManifest, logits: FloatArray
) -> tuple[Instances, npt.NDArray[np.int32], FloatArray]:
    """Stitched ``(C, H, W)`` logits → the model's instances (full-resolution pixel coordinates) and
    the :func:`~keeneye.geo.disease_zones` input (class mask, probability)."""
    channels = logits.shape[0]
    foreground = [c.id for c in manifest.classes if c.id != manifest.background_class]
    instances = seg_logits_to_instances(
        logits,
        thresholds=manifest.thresholds,
        background_class=manifest.background_class,
        class_ids=list(range(channels)) if channels != 1 else foreground[:1] or [0],
    )
    class_mask, probability = class_map_of(instances, logits.shape[1:])
    return instances, class_mask, probability


def geo_answer(
    spec: PipelineSpec, manifest: ModelManifest, geo: GeoInput, outputs: Sequence[npt.NDArray[np.generic]]
) -> tuple[Instances, GeoPart]:
    """The model's instances (full-resolution pixel coordinates) and the geo part: index stats,
    vigour zones, and disease zones when the model ran. ``outputs``: ``[(C, H, W) stitched logits]``
    (:func:`run_tiles`), ``[]`` when the model did not run. Each index map is computed once."""
    raster = geo.raster
    shape = raster.shape
    model: GeoModelJson = {
        "ran": geo.reason is None,
        "reason": geo.reason,
        "missing_bands": list(geo.missing_bands),
        "tiles": len(geo.tiles),
        "tile_size": geo.tile_size,
    }
    indices = tuple(str(i) for i in spec.input.indices) or DEFAULT_INDICES
    maps = index_maps(raster, (*indices, *VIGOUR_SOURCES))
    instances = Instances.empty(shape)
    zones = []
    if geo.reason is None and outputs:
        logits = np.asarray(outputs[0], dtype=np.float32)
        if logits.shape[1:] != shape:
            raise InvalidInput(
                "bad_model_output",
                f"stitched logits of shape {logits.shape} for a {shape} raster",
                status=500,
            )
        instances, class_mask, probability = logits_to_classes(manifest, logits)
        ndvi = maps["ndvi"][0] if "ndvi" in maps else None  # NaN where not valid
        zones = disease_zones(
            class_mask,
            probability,
            raster.georef,
            [c.name for c in manifest.classes],
            valid=raster.valid,
            ndvi=ndvi,
        )
    part = analyse_reflectance(raster, indices=indices, crs=geo.request.crs, extra_zones=zones, maps=maps)
    if geo.reason is not None:
        part.notes.append(f"disease model not run: {geo.reason}")
    part.model = model
    return instances, part
