"""The stored image of an observation: as received, and rendered as PNG for a browser.

``GET /v1/observations/{id}/image`` streams the stored bytes unchanged. ``GET
/v1/observations/{id}/image.png?view=auto|rgb|cir|ndvi|gray`` decodes them with the pipeline's band
map and renders them with :func:`keeneye.imaging.render_image` — how the pages show a GeoTIFF or a
16-bit raster, which browsers cannot. For a TIFF, pixels where every band is 0 are no-data
(transparent), as on an orthomosaic's border. The header ``X-Keeneye-View`` names the view drawn.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from keeneye.domain import InvalidInput, NotFound
from keeneye.imaging import View, decode_image, encode_png, fit_within, render_image
from keeneye.serving.routes.deps import VIEWER, ClientDep, StateDep
from keeneye.serving.routes.params import ObservationId
from keeneye.serving.schemas import API_ERRORS, ErrorResponse
from keeneye.serving.state import AppState
from keeneye.store import ObservationRecord

router = APIRouter(tags=["observations"], dependencies=[VIEWER], responses=API_ERRORS)

# The bytes (and so the rendering) of an observation never change.
IMMUTABLE = "private, max-age=86400, immutable"
TIFF_NODATA = 0.0


def stored_observation(state: AppState, observation_id: str) -> ObservationRecord:
    """The observation whose stored image (or a map derived from it) is asked for; 404 when there is
    none or it was accepted without keeping its image."""
    obs = state.db.get_observation(observation_id)
    if obs is None:
        raise NotFound(f"no observation {observation_id[:64]!r}")
    if obs.object_key is None:
        raise NotFound(
            f"observation {observation_id} has no stored image",
            fix="images are stored when the observation is accepted; this one was not kept, or the "
            "pipeline's retention policy removed it (docs/storage.md#retention)",
        )
    return obs


def image_gone(observation_id: str) -> NotFound:
    """The 404 for an observation whose image the object store no longer has (retention removed it)."""
    return NotFound(
        f"the image of observation {observation_id} is no longer stored",
        fix="the pipeline's retention policy removed it",
    )


@router.get(
    "/v1/observations/{observation_id}/image",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}, "image/tiff": {}}}, 404: {}},
    summary="The stored image of an observation",
)
async def observation_image(
    observation_id: ObservationId, state: StateDep, _client: ClientDep
) -> StreamingResponse:
    objects = state.objects
    obs = await asyncio.to_thread(stored_observation, state, observation_id)
    key = obs.object_key
    assert key is not None  # stored_observation refuses an observation without one
    try:
        info = await asyncio.to_thread(objects.info, key)
    except NotFound:
        raise image_gone(observation_id) from None
    return StreamingResponse(
        objects.stream(key),  # a sync iterator: Starlette reads it in a worker thread
        media_type=obs.content_type,
        headers={
            "Content-Length": str(info.size),
            "Cache-Control": IMMUTABLE,
            "X-Content-Type-Options": "nosniff",
        },
    )


def render_observation(state: AppState, observation_id: str, view: View, max_side: int) -> tuple[bytes, View]:
    """PNG bytes of the observation's image in ``view``, at most ``max_side`` pixels a side."""
    obs = stored_observation(state, observation_id)
    assert obs.object_key is not None
    try:
        data = state.objects.get(obs.object_key)
    except NotFound:
        raise image_gone(observation_id) from None
    band_map, max_pixels = None, state.settings.imaging.max_pixels
    if obs.pipeline in state.catalog.names():
        spec = state.catalog.get(obs.pipeline)
        band_map, max_pixels = spec.input.band_map, spec.input.max_pixels or max_pixels
    try:
        image = decode_image(data, band_map=band_map, max_pixels=max_pixels)
    except InvalidInput as exc:
        if exc.reason != "wrong_band_count":
            raise
        # another camera's band count: still show it, with the bands numbered
        image = decode_image(data, max_pixels=max_pixels)
    nodata = TIFF_NODATA if image.format == "tiff" else None
    rendered = render_image(image, view, nodata=nodata)
    return encode_png(fit_within(rendered.pixels, max_side)), rendered.view


@router.get(
    "/v1/observations/{observation_id}/image.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        404: {"model": ErrorResponse, "description": "no such observation, or its image is no longer stored"},
        422: {"model": ErrorResponse, "description": "the view needs bands"},
    },
    summary="The stored image rendered as PNG: true colour, colour infrared or NDVI false colour",
)
async def observation_png(
    observation_id: ObservationId,
    state: StateDep,
    _client: ClientDep,
    view: Annotated[
        View, Query(description="rgb, cir (nir/red/green), ndvi, gray; auto: rgb, cir or gray")
    ] = "auto",
    size: Annotated[int, Query(ge=16, le=4096, description="at most this many pixels a side")] = 1024,
) -> Response:
    png, drawn = await asyncio.to_thread(render_observation, state, observation_id, view, size)
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": IMMUTABLE, "X-Keeneye-View": drawn, "X-Content-Type-Options": "nosniff"},
    )
