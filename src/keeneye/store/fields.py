"""Crop-health fields and their flights: the rows behind ``keeneye fields`` and ``/v1/fields``
(docs/crop-health.md, "Fields, history and prescriptions").

A field is registered once (its boundary already validated and in WGS84 by :mod:`keeneye.fields`);
each flight that joins it leaves one ``field_flights`` row, unique on (field, flight): recording the
same flight again — a redelivered or re-sent image — replaces the row in one upsert, so nothing is
counted twice and the history keeps one entry per flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keeneye.domain import InvalidInput, JsonObject, NotFound
from keeneye.store.engine import Database, utcnow
from keeneye.store.schema import FieldFlightRow, FieldRow

Bbox = tuple[float, float, float, float]  # min lon, min lat, max lon, max lat (WGS84)


@dataclass(frozen=True)
class NewField:
    """A field about to be registered: boundary is a WGS84 GeoJSON Polygon or MultiPolygon."""

    id: str
    name: str
    crop: str | None
    sowing_date: date | None
    boundary: JsonObject
    area_ha: float
    bbox: Bbox


@dataclass(frozen=True)
class FieldRecord:
    """A registered field, with how many flights it has and the latest one's name."""

    id: str
    name: str
    crop: str | None
    sowing_date: date | None
    boundary: JsonObject
    area_ha: float
    bbox: Bbox
    created_at: datetime
    flights: int = 0
    last_flight: str | None = None


@dataclass(frozen=True)
class NewFieldFlight:
    """What one flight saw over one field (``joined_by``: ``metadata`` or ``overlap``)."""

    field_id: str
    flight: str
    observed_at: datetime
    observation_id: str | None
    joined_by: str
    indices: JsonObject
    disease_ha: JsonObject
    vigour_ha: JsonObject
    zones: JsonObject


@dataclass(frozen=True)
class FieldFlightRecord(NewFieldFlight):
    recorded_at: datetime

    @classmethod
    def of(cls, row: FieldFlightRow) -> FieldFlightRecord:
        return cls(
            field_id=row.field_id,
            flight=row.flight,
            observed_at=row.observed_at,
            observation_id=row.observation_id,
            joined_by=row.joined_by,
            indices=dict(row.indices),
            disease_ha=dict(row.disease_ha),
            vigour_ha=dict(row.vigour_ha),
            zones=dict(row.zones),
            recorded_at=row.recorded_at,
        )


def _record(row: FieldRow, flights: int = 0, last_flight: str | None = None) -> FieldRecord:
    return FieldRecord(
        id=row.id,
        name=row.name,
        crop=row.crop,
        sowing_date=row.sowing_date,
        boundary=dict(row.boundary),
        area_ha=float(row.area_ha),
        bbox=(float(row.min_lon), float(row.min_lat), float(row.max_lon), float(row.max_lat)),
        created_at=row.created_at,
        flights=flights,
        last_flight=last_flight,
    )


def _unknown(field_id: str) -> NotFound:
    return NotFound(f"no field {field_id!r}", fix="see `keeneye fields list` (or GET /v1/fields)")


class FieldRepository(Database):
    """Field and field-flight reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def create_field(self, new: NewField) -> FieldRecord:
        """Register a field; a taken id is refused (409 ``field_exists``)."""
        min_lon, min_lat, max_lon, max_lat = new.bbox
        row = FieldRow(
            id=new.id,
            name=new.name,
            crop=new.crop,
            sowing_date=new.sowing_date,
            boundary=new.boundary,
            area_ha=new.area_ha,
            min_lon=min_lon,
            min_lat=min_lat,
            max_lon=max_lon,
            max_lat=max_lat,
            created_at=utcnow(),
        )
        taken = InvalidInput(
            "field_exists",
            f"a field with id {new.id!r} exists already",
            status=409,
            fix="choose another --id (ids are unique), or look at it with `keeneye fields show`",
        )
        try:
            with self.session() as s:
                if s.get(FieldRow, new.id) is not None:
                    raise taken
                s.add(row)
                s.flush()
                return _record(row)
        except IntegrityError as exc:  # a concurrent registration of the same id won
            raise taken from exc

    def field(self, field_id: str) -> FieldRecord:
        """One field with its flight count and latest flight; NotFound when unknown."""
        with self.session() as s:
            row = s.get(FieldRow, field_id)
            if row is None:
                raise _unknown(field_id)
            counts = self._flight_summary(s, [field_id])
            return _record(row, *counts.get(field_id, (0, None)))

    def fields(self, bbox: Bbox | None = None) -> list[FieldRecord]:
        """Every field by id; with ``bbox``, only those whose bounding box meets it."""
        with self.session() as s:
            query = select(FieldRow).order_by(FieldRow.id)
            if bbox is not None:
                min_lon, min_lat, max_lon, max_lat = bbox
                query = query.where(
                    FieldRow.min_lon <= max_lon,
                    FieldRow.max_lon >= min_lon,
                    FieldRow.min_lat <= max_lat,
                    FieldRow.max_lat >= min_lat,
                )
            rows = list(s.scalars(query))
            counts = self._flight_summary(s, [r.id for r in rows])
            return [_record(r, *counts.get(r.id, (0, None))) for r in rows]

    @staticmethod
    def _flight_summary(s: Session, field_ids: Sequence[str]) -> dict[str, tuple[int, str | None]]:
        """field id → (flights, the latest flight by observed_at)."""
        if not field_ids:
            return {}
        rows = s.execute(
            select(FieldFlightRow.field_id, FieldFlightRow.flight)
            .where(FieldFlightRow.field_id.in_(list(field_ids)))
            .order_by(FieldFlightRow.observed_at, FieldFlightRow.flight)
        )
        out: dict[str, tuple[int, str | None]] = {}
        for field_id, flight in rows:
            n, _ = out.get(field_id, (0, None))
            out[field_id] = (n + 1, flight)
        return out

    def record_field_flight(self, new: NewFieldFlight) -> FieldFlightRecord:
        """Store (or replace) the flight's row of the field, in one upsert on (field, flight)."""
        values = {
            "field_id": new.field_id,
            "flight": new.flight,
            "observed_at": new.observed_at,
            "observation_id": new.observation_id,
            "joined_by": new.joined_by,
            "indices": new.indices,
            "disease_ha": new.disease_ha,
            "vigour_ha": new.vigour_ha,
            "zones": new.zones,
            "recorded_at": utcnow(),
        }
        with self.session() as s:
            if s.get(FieldRow, new.field_id) is None:
                raise _unknown(new.field_id)
            sqlite = s.get_bind().dialect.name == "sqlite"
            insert = sqlite_dialect.insert if sqlite else postgresql.insert
            stmt = insert(FieldFlightRow).values(**values)
            replace = {k: v for k, v in values.items() if k not in ("field_id", "flight")}
            s.execute(stmt.on_conflict_do_update(index_elements=["field_id", "flight"], set_=replace))
            row = s.scalars(
                select(FieldFlightRow).where(
                    FieldFlightRow.field_id == new.field_id, FieldFlightRow.flight == new.flight
                )
            ).one()
            return FieldFlightRecord.of(row)

    def field_flights(self, field_id: str) -> list[FieldFlightRecord]:
        """The field's flights, oldest first (by observed_at); NotFound when the field is unknown."""
        with self.session() as s:
            if s.get(FieldRow, field_id) is None:
                raise _unknown(field_id)
            rows = s.scalars(
                select(FieldFlightRow)
                .where(FieldFlightRow.field_id == field_id)
                .order_by(FieldFlightRow.observed_at, FieldFlightRow.flight)
            )
            return [FieldFlightRecord.of(r) for r in rows]

    def field_flight(self, field_id: str, flight: str | None = None) -> FieldFlightRecord:
        """One flight of the field (None: the latest); NotFound naming the flights there are."""
        flights = self.field_flights(field_id)
        if not flights:
            raise NotFound(
                f"field {field_id!r} has no flight yet",
                fix="send a crop-health image of it (metadata.field, or one that overlaps its boundary)",
            )
        if flight is None:
            return flights[-1]
        for f in flights:
            if f.flight == flight:
                return f
        raise NotFound(
            f"field {field_id!r} has no flight {flight!r}",
            fix=f"use one of {', '.join(f.flight for f in flights)}",
        )


__all__ = [
    "Bbox",
    "FieldFlightRecord",
    "FieldRecord",
    "FieldRepository",
    "NewField",
    "NewFieldFlight",
]
