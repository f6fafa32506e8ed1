"""``/v1/fields``: crop-health fields, their flight history and prescription maps (docs/crop-health.md,
"Fields, history and prescriptions"; the JSON shapes are :mod:`keeneye.fields.views`).

Reads need the viewer role, registering a field the operator role. The field book is the one the
prediction service records crop-health answers into (:attr:`Answering.fields`), so what a GET shows
is what the last stored answer left.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from keeneye.domain import InvalidInput
from keeneye.fields import (
    DEFAULT_BASE_RATE,
    DEFAULT_BUFFER_M,
    DEFAULT_THRESHOLD,
    DEFAULT_UNIT,
    FORMATS,
    FieldBook,
    field_detail_json,
    field_json,
    history_json,
)
from keeneye.serving.routes.deps import OperatorDep, StateDep, ViewerDep
from keeneye.serving.routes.params import FieldId
from keeneye.serving.schemas import API_ERRORS, ErrorResponse, error_responses
from keeneye.serving.state import AppState

router = APIRouter(tags=["fields"], responses=API_ERRORS)


class FieldCreate(BaseModel):
    """A field to register: ``boundary`` is GeoJSON (Polygon / MultiPolygon geometry, Feature or
    FeatureCollection), lon/lat WGS84 unless ``crs`` (or the GeoJSON's ``crs`` member) names another."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    boundary: dict[str, Any]
    id: str | None = None
    crop: str | None = Field(default=None, max_length=128)
    sowing_date: str | None = None
    crs: str | None = None


def _book(state: AppState) -> FieldBook:
    return state.service.answering.fields


@router.get("/v1/fields", summary="Crop-health fields")
async def list_fields(state: StateDep, _actor: ViewerDep) -> Any:
    """Every field: id, name, crop, sowing date, geodesic area, WGS84 boundary, flights, last flight."""
    fields = await asyncio.to_thread(_book(state).fields)
    return {"fields": [field_json(f) for f in fields]}


@router.post(
    "/v1/fields",
    status_code=201,
    summary="Register a field",
    responses={
        409: {"model": ErrorResponse, "description": "a field with this id exists"},
        422: {
            "model": ErrorResponse,
            "description": "invalid boundary: self-intersecting, not a polygon, unknown CRS, off the globe",
        },
    },
)
async def create_field(state: StateDep, _actor: OperatorDep, body: FieldCreate) -> Any:
    record = await asyncio.to_thread(
        _book(state).add,
        name=body.name,
        boundary=body.boundary,
        crs=body.crs,
        field_id=body.id,
        crop=body.crop,
        sowing_date=body.sowing_date,
    )
    return JSONResponse(status_code=201, content=field_detail_json(record))


@router.get(
    "/v1/fields/{field_id}", summary="One field, with its bounding box", responses=error_responses(404)
)
async def get_field(field_id: FieldId, state: StateDep, _actor: ViewerDep) -> Any:
    return field_detail_json(await asyncio.to_thread(_book(state).get, field_id))


@router.get(
    "/v1/fields/{field_id}/history",
    summary="The field's flights, oldest first",
    responses=error_responses(404),
)
async def get_history(field_id: FieldId, state: StateDep, _actor: ViewerDep) -> Any:
    """Per flight: index statistics, hectares per disease class and vigour zone, and the zones
    clipped to the boundary (WGS84 GeoJSON)."""
    flights = await asyncio.to_thread(_book(state).history, field_id)
    return history_json(field_id, flights)


@router.get(
    "/v1/fields/{field_id}/prescription",
    summary="Treatment prescription of a flight (GeoJSON or zipped Shapefile)",
    responses={
        200: {
            "content": {"application/geo+json": {}, "application/zip": {}},
            "description": "GeoJSON FeatureCollection, or a zip of .shp/.shx/.dbf/.prj/.cpg",
        },
        404: {"model": ErrorResponse, "description": "unknown field or flight"},
    },
)
async def get_prescription(
    field_id: FieldId,
    state: StateDep,
    _actor: ViewerDep,
    flight: str | None = Query(None, description="Flight (default: the latest)"),
    format: str = Query("geojson", description="geojson or shapefile"),  # the API's word
    threshold: float = Query(DEFAULT_THRESHOLD, description="Severity at or above which a zone is treated"),
    buffer_m: float = Query(DEFAULT_BUFFER_M, description="Margin around each zone in metres"),
    base_rate: float = Query(DEFAULT_BASE_RATE, description="Rate at severity 0.5"),
    unit: str = Query(DEFAULT_UNIT, max_length=16, description="Unit of the rate"),
) -> Response:
    if format not in FORMATS:
        raise InvalidInput(
            "bad_format", f"format {format!r} is not one of {', '.join(FORMATS)}", status=400,
            fix="?format=geojson or ?format=shapefile",
        )  # fmt: skip
    rx = await asyncio.to_thread(
        _book(state).prescription,
        field_id,
        flight,
        threshold=threshold,
        buffer_m=buffer_m,
        base_rate=base_rate,
        unit=unit,
    )
    if format == "shapefile":
        data = await asyncio.to_thread(rx.to_shapefile_zip)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{rx.basename}.zip"'},
        )
    return JSONResponse(
        rx.to_geojson(),
        media_type="application/geo+json",
        headers={"Content-Disposition": f'attachment; filename="{rx.basename}.geojson"'},
    )
