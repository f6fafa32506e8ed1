"""The agronomist's pages: ``/fields`` (every field) and ``/fields/{id}`` (its map, flights, trend).

Server-rendered shells around the ``/v1/fields`` JSON (:mod:`keeneye.serving.routes.fields`): the
list is drawn here; the field page (``static/fields.js``) draws the boundary, the chosen flight's NDVI
false colour (``/v1/observations/{id}/index/ndvi.png``, :mod:`keeneye.serving.routes.index_maps`) and
its vigour and disease zones on a Leaflet map, the NDVI and diseased-hectare trend with uPlot, and
links the prescription (GeoJSON, Shapefile) and the index map (COG). No tile server is needed:
``serving.basemap_url`` adds one when set. docs/crop-health.md, "The fields page". Viewer role.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from keeneye.fields import field_detail_json
from keeneye.serving.routes.deps import VIEWER, StateDep
from keeneye.serving.routes.shell import templates
from keeneye.serving.state import AppState

router = APIRouter(include_in_schema=False, dependencies=[VIEWER])


def field_rows(state: AppState) -> list[dict[str, Any]]:
    """One row per field: what the list shows, with the latest flight's NDVI mean."""
    book = state.service.answering.fields
    rows: list[dict[str, Any]] = []
    for f in book.fields():
        ndvi_mean = None
        if f.flights:
            ndvi = book.history(f.id)[-1].indices.get("ndvi")
            mean = ndvi.get("mean") if isinstance(ndvi, dict) else None
            ndvi_mean = float(mean) if isinstance(mean, int | float) else None
        rows.append(
            {
                "id": f.id,
                "name": f.name,
                "crop": f.crop,
                "area_ha": f.area_ha,
                "flights": f.flights,
                "last_flight": f.last_flight,
                "ndvi_mean": ndvi_mean,
            }
        )
    return rows


@router.get("/fields", response_class=HTMLResponse)
async def fields_page(request: Request, state: StateDep) -> HTMLResponse:
    rows = await asyncio.to_thread(field_rows, state)
    return templates.TemplateResponse(request, "fields.html", {"rows": rows})


@router.get("/fields/{field_id}", response_class=HTMLResponse)
async def field_page(field_id: str, request: Request, state: StateDep) -> HTMLResponse:
    field = await asyncio.to_thread(state.service.answering.fields.get, field_id)  # NotFound → 404 page
    return templates.TemplateResponse(
        request,
        "field.html",
        {"field": field_detail_json(field), "basemap_url": state.settings.serving.basemap_url},
    )
