"""An observation's index map, for GIS and for the agronomist page (docs/crop-health.md, "The fields page").

* ``GET /v1/observations/{id}/index/{name}.tif`` — the index map (``ndvi``, ``ndre``, ``gndvi``, …) of
  a stored crop-health image as a Cloud-Optimized GeoTIFF (float32, NaN = no data, the raster's own
  CRS; :func:`keeneye.geo.write_index_cog`), to open in QGIS.
* ``GET /v1/observations/{id}/index/{name}.png`` — the same map in false colour (red: bare soil,
  green: vigour; invalid pixels transparent), warped to Web Mercator so a Leaflet image overlay lies
  exactly on the field; the header ``X-Keeneye-Bounds`` gives ``south,west,north,east`` in degrees.

The stored bytes are read again with the band map the observation was answered with (its
``metadata.band_map`` / ``metadata.camera``, else the pipeline's), so the map is the one its
statistics came from. An orthomosaic is never read again: its maps were stored as COGs when it was
answered (:func:`keeneye.pipelines.mosaic_jobs.index_map_key`); the ``.tif`` streams that COG, the
``.png`` reads it at the size asked for (its overviews) before warping. Viewer role.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

from keeneye.domain import InvalidInput, NotFound
from keeneye.geo import INDICES, Georef, available, compute_index, read_raster, write_index_cog
from keeneye.geo.capture import stack_zip
from keeneye.imaging import encode_png
from keeneye.imaging.archive import is_zip
from keeneye.imaging.render import ndvi_colours
from keeneye.pipelines.crophealth import geo_request
from keeneye.pipelines.mosaic_jobs import (
    COG_CONTENT_TYPE,
    PREVIEW_MAX_SIDE,
    index_map_key,
    local_object,
    read_index_map,
    upload_limit_of,
)
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.routes.images import IMMUTABLE, image_gone, stored_observation
from keeneye.serving.routes.params import ObservationId
from keeneye.serving.schemas import API_ERRORS, ErrorResponse
from keeneye.serving.state import AppState
from keeneye.store import ObservationRecord

router = APIRouter(tags=["observations"], dependencies=[VIEWER], responses=API_ERRORS)

WEB_MERCATOR = CRS.from_epsg(3857)
IndexName = Annotated[str, PathParam(description="an index name: " + ", ".join(INDICES))]


def geo_observation(state: AppState, observation_id: str, name: str) -> tuple[ObservationRecord, str]:
    """The crop-health observation whose map ``name`` is asked for, and the index's canonical name."""
    key = name.strip().lower()
    if key not in INDICES:
        raise NotFound(f"no index named {name[:32]!r}", fix=f"use one of {', '.join(INDICES)}")
    obs = stored_observation(state, observation_id)
    if obs.pipeline not in state.catalog.names() or not state.catalog.get(obs.pipeline).input.geo:
        raise InvalidInput(
            "not_a_geo_observation",
            f"observation {observation_id} was answered by {obs.pipeline!r}, which reads no rasters",
            status=400,
            fix="index maps exist for crop-health (input.geo) pipelines only",
        )
    return obs, key


def stored_map_key(
    state: AppState, obs: ObservationRecord, name: str, *, preview: bool = False
) -> str | None:
    """Where the COG of a mosaic's map ``name`` is stored (``preview``: its ≤ 2048 px copy first, for
    a view that small); None for an image small enough to read again. A mosaic without that map (bands
    missing, or over the store's limit) is a 404."""
    keys = [index_map_key(obs.pipeline, obs.id, name)]
    if preview:
        keys.insert(0, index_map_key(obs.pipeline, obs.id, name, preview=True))
    for key in keys:
        if state.objects.exists(key):
            return key
    if obs.size_bytes > upload_limit_of(state.catalog.get(obs.pipeline), state.settings):
        raise NotFound(
            f"observation {obs.id} is a mosaic without a stored {name} map",
            fix="its answer's geo.notes say why (bands missing, or the map was over "
            "KEENEYE_OBJECTS__MAX_OBJECT_BYTES); ask for another index",
        )
    return None


def index_map(
    state: AppState, observation_id: str, name: str, *, max_side: int | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_], Georef]:
    """The index map of a stored crop-health observation: values, where valid, its georeference.

    A mosaic's stored map is read at most ``max_side`` px a side (None: whole)."""
    obs, key = geo_observation(state, observation_id, name)
    assert obs.object_key is not None  # stored_observation refuses an observation without one
    stored = stored_map_key(state, obs, key, preview=max_side is not None and max_side <= PREVIEW_MAX_SIDE)
    if stored is not None:
        with local_object(state.objects, stored) as path:
            return read_index_map(path, max_side)
    spec = state.catalog.get(obs.pipeline)
    try:
        data = state.objects.get(obs.object_key)
    except NotFound:
        raise image_gone(observation_id) from None
    request = geo_request(spec, obs.metadata)
    max_pixels = spec.input.max_pixels or state.settings.imaging.max_pixels
    if is_zip(data):
        data = stack_zip(data, request.band_map, max_pixels=max_pixels)
    raster = read_raster(data, request.band_map)
    if key not in available(raster.bands, (key,)):
        raise InvalidInput(
            "missing_band",
            f"{key} needs bands {', '.join(INDICES[key].bands)}; this image has {', '.join(raster.bands)}",
            fix=f"ask for one of {', '.join(available(raster.bands, tuple(INDICES))) or 'no index'}",
        )
    values, valid = compute_index(raster, key)
    return values, valid, raster.georef


def index_cog(state: AppState, observation_id: str, name: str) -> bytes:
    values, valid, georef = index_map(state, observation_id, name)
    with tempfile.TemporaryDirectory(prefix="keeneye-cog-") as tmp:
        path = write_index_cog(values, valid, georef, Path(tmp) / "index.tif", name=name)
        return path.read_bytes()


def index_png(
    state: AppState, observation_id: str, name: str, max_side: int
) -> tuple[bytes, tuple[float, float, float, float]]:
    """False-colour PNG of the index warped to Web Mercator, and its (south, west, north, east)."""
    values, valid, georef = index_map(state, observation_id, name, max_side=max_side)
    if georef.crs is None:
        raise InvalidInput(
            "not_georeferenced",
            f"observation {observation_id} has no CRS, so its map cannot be laid on a field",
            fix="send a GeoTIFF with its CRS and transform",
        )
    height, width = values.shape
    left, top = georef.transform @ (0, 0)
    right, bottom = georef.transform @ (width, height)
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    transform, out_w, out_h = calculate_default_transform(georef.crs, WEB_MERCATOR, width, height, *bounds)
    scale = max(1.0, max(out_w, out_h) / max_side)
    out_w, out_h = max(1, round(out_w / scale)), max(1, round(out_h / scale))
    transform, out_w, out_h = calculate_default_transform(
        georef.crs, WEB_MERCATOR, width, height, *bounds, dst_width=out_w, dst_height=out_h
    )
    src = np.where(valid, values, np.nan).astype(np.float32)
    warped = np.full((out_h, out_w), np.nan, dtype=np.float32)
    reproject(
        src,
        warped,
        src_transform=georef.transform,
        src_crs=georef.crs,
        src_nodata=np.nan,
        dst_transform=transform,
        dst_crs=WEB_MERCATOR,
        dst_nodata=np.nan,
        resampling=Resampling.bilinear if scale == 1.0 else Resampling.average,
    )
    ok = np.isfinite(warped)
    rgb = ndvi_colours(np.where(ok, warped, 0.0))
    rgba = np.dstack([rgb, np.where(ok, 255, 0).astype(np.uint8)])
    west, north = transform @ (0, 0)
    east, south = transform @ (out_w, out_h)
    w, s, e, n = transform_bounds(WEB_MERCATOR, "EPSG:4326", west, south, east, north)
    return encode_png(rgba), (s, w, n, e)


@router.get(
    "/v1/observations/{observation_id}/index/{name}.tif",
    response_class=Response,
    responses={
        200: {"content": {"image/tiff": {}}},
        404: {"model": ErrorResponse, "description": "no such observation, or its image is no longer stored"},
        422: {"model": ErrorResponse, "description": "bands missing"},
    },
    summary="An index map (NDVI, NDRE, …) of a crop-health observation as a Cloud-Optimized GeoTIFF",
)
async def observation_index_cog(observation_id: ObservationId, name: IndexName, state: StateDep) -> Response:
    headers = {
        "Cache-Control": IMMUTABLE,
        "Content-Disposition": f'attachment; filename="{observation_id}-{name}.tif"',
    }
    obs, key = await asyncio.to_thread(geo_observation, state, observation_id, name)
    stored = await asyncio.to_thread(stored_map_key, state, obs, key)
    if stored is not None:  # a mosaic's map: streamed as stored, never held whole
        info = await asyncio.to_thread(state.objects.info, stored)
        return StreamingResponse(
            state.objects.stream(stored),
            media_type=COG_CONTENT_TYPE,
            headers={**headers, "Content-Length": str(info.size)},
        )
    data = await asyncio.to_thread(index_cog, state, observation_id, name)
    return Response(data, media_type=COG_CONTENT_TYPE, headers=headers)


@router.get(
    "/v1/observations/{observation_id}/index/{name}.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        404: {"model": ErrorResponse, "description": "no such observation, or its image is no longer stored"},
        422: {"model": ErrorResponse, "description": "bands or CRS missing"},
    },
    summary="An index map in false colour, warped to Web Mercator; X-Keeneye-Bounds: south,west,north,east",
)
async def observation_index_png(
    observation_id: ObservationId,
    name: IndexName,
    state: StateDep,
    size: Annotated[int, Query(ge=16, le=4096, description="at most this many pixels a side")] = 1024,
) -> Response:
    png, (s, w, n, e) = await asyncio.to_thread(index_png, state, observation_id, name, size)
    return Response(
        png,
        media_type="image/png",
        headers={
            "Cache-Control": IMMUTABLE,
            "X-Keeneye-Bounds": f"{s:.8f},{w:.8f},{n:.8f},{e:.8f}",
            "X-Content-Type-Options": "nosniff",
        },
    )
