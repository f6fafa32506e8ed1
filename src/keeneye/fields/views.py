"""The JSON shapes of fields and their history, shared by ``/v1/fields`` and ``keeneye fields --json``
(INTERFACES.md; the agronomist page is built against them — change them only with the page)."""

from __future__ import annotations

from typing import TypedDict

from keeneye.domain import JsonObject
from keeneye.store import FieldFlightRecord, FieldRecord


class FieldJson(TypedDict):
    id: str
    name: str
    crop: str | None
    sowing_date: str | None
    area_ha: float
    boundary: JsonObject
    flights: int
    last_flight: str | None


class FieldDetailJson(FieldJson):
    bbox: list[float]


class FlightJson(TypedDict):
    flight: str
    observed_at: str
    observation_id: str | None
    indices: JsonObject
    disease_ha: JsonObject
    vigour_ha: JsonObject
    zones: JsonObject


class HistoryJson(TypedDict):
    field_id: str
    flights: list[FlightJson]


def field_json(f: FieldRecord) -> FieldJson:
    return {
        "id": f.id,
        "name": f.name,
        "crop": f.crop,
        "sowing_date": f.sowing_date.isoformat() if f.sowing_date is not None else None,
        "area_ha": round(f.area_ha, 4),
        "boundary": f.boundary,
        "flights": f.flights,
        "last_flight": f.last_flight,
    }


def field_detail_json(f: FieldRecord) -> FieldDetailJson:
    return {**field_json(f), "bbox": list(f.bbox)}


def flight_json(f: FieldFlightRecord) -> FlightJson:
    return {
        "flight": f.flight,
        "observed_at": f.observed_at.isoformat(),
        "observation_id": f.observation_id,
        "indices": f.indices,
        "disease_ha": f.disease_ha,
        "vigour_ha": f.vigour_ha,
        "zones": f.zones,
    }


def history_json(field_id: str, flights: list[FieldFlightRecord]) -> HistoryJson:
    """The field's flights, oldest first (the store hands them sorted by observed_at)."""
    return {"field_id": field_id, "flights": [flight_json(f) for f in flights]}
