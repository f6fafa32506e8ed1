"""The field book: register fields, join crop-health answers to them, read history, prescribe.

One class, :class:`FieldBook`, over the results DB (the record), the cache (the feature-store mirror)
and the metrics (the trend the quality monitor watches):

* :meth:`FieldBook.add` validates the boundary (:func:`~keeneye.fields.boundary.parse_boundary`)
  and registers the field with its geodesic area;
* :meth:`FieldBook.record_answer` is called for every stored crop-health answer
  (:class:`keeneye.answering.Answering`, for the API and the stream workers alike). The image joins
  a field by ``metadata.field`` (the field's id) or, without one, by the **largest overlap** of its
  footprint with a boundary; its flight is ``metadata.flight`` or the observed date. The field's
  flight row is upserted (a re-sent image replaces it), then the field's **latest** flight is
  mirrored as a hash ``field:<id>`` in the cache (``keeneye:field:<id>`` in Redis) and as the
  gauges ``keeneye_field_ndvi_mean`` and ``keeneye_field_diseased_hectares``;
* :meth:`FieldBook.prescription` cuts the prescription of a flight
  (:mod:`keeneye.fields.prescription`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import shapely  # type: ignore[import-untyped]  # no stubs shipped

from keeneye.domain import GeoPart, InvalidInput, NotFound
from keeneye.fields.boundary import field_id_of, geodesic_area_m2, geometry_of, parse_boundary
from keeneye.fields.flights import ZoneWgs84, flight_of, footprint, observed_at_of, summarise, zones_wgs84
from keeneye.fields.prescription import (
    DEFAULT_BASE_RATE,
    DEFAULT_BUFFER_M,
    DEFAULT_THRESHOLD,
    DEFAULT_UNIT,
    Prescription,
    check_options,
    prescribe,
)
from keeneye.metrics import Metrics
from keeneye.store import Cache, FieldFlightRecord, FieldRecord, NewField, NewFieldFlight, ResultsDB

log = logging.getLogger(__name__)

JoinedBy = Literal["metadata", "overlap"]
FEATURE_KEY = "field:{}"


@dataclass(frozen=True)
class Join:
    field: FieldRecord
    joined_by: JoinedBy


def parse_sowing_date(value: str | date | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(
            "bad_sowing_date", f"sowing date {value!r} is not a date", fix="write YYYY-MM-DD"
        ) from exc


class FieldBook:
    """Fields over one results DB (module docstring); ``cache`` and ``metrics`` are optional mirrors."""

    def __init__(self, db: ResultsDB, cache: Cache | None = None, metrics: Metrics | None = None) -> None:
        self.db = db
        self.cache = cache
        self.metrics = metrics

    # -- the registry -----------------------------------------------------------------------------

    def add(
        self,
        *,
        name: str,
        boundary: Any,
        crs: str | None = None,
        field_id: str | None = None,
        crop: str | None = None,
        sowing_date: str | date | None = None,
    ) -> FieldRecord:
        """Validate and register a field; InvalidInput (422, 409 for a taken id) when refused."""
        name = name.strip()
        if not name:
            raise InvalidInput("bad_field_name", "a field needs a name", fix="e.g. --name 'North 12'")
        fid = field_id_of(name, field_id)
        sown = parse_sowing_date(sowing_date)
        parsed = parse_boundary(boundary, crs)
        return self.db.create_field(
            NewField(
                id=fid,
                name=name,
                crop=(crop or "").strip() or None,
                sowing_date=sown,
                boundary=parsed.to_geojson(),
                area_ha=parsed.area_ha,
                bbox=parsed.bbox,
            )
        )

    def fields(self) -> list[FieldRecord]:
        return self.db.fields()

    def get(self, field_id: str) -> FieldRecord:
        return self.db.field(field_id)

    def history(self, field_id: str) -> list[FieldFlightRecord]:
        return self.db.field_flights(field_id)

    # -- joining answers --------------------------------------------------------------------------

    def join(
        self, geo: GeoPart, metadata: Mapping[str, Any], zones: list[ZoneWgs84] | None = None
    ) -> Join | None:
        """The field an answer belongs to (module docstring); None when it joins none. ``zones``:
        the answer's zones in WGS84 when the caller has them already."""
        raw = metadata.get("field")
        named = str(raw).strip() if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
        if named:
            try:
                return Join(self.db.field(named), "metadata")
            except NotFound:
                log.warning("metadata.field %r names no registered field; the image joins none", named)
                return None
        seen = footprint(zones_wgs84(geo) if zones is None else zones)
        if seen is None:
            return None
        bounds = tuple(float(v) for v in shapely.bounds(seen))
        best: tuple[float, FieldRecord] | None = None
        for candidate in self.db.fields(bbox=(bounds[0], bounds[1], bounds[2], bounds[3])):
            overlap = geodesic_area_m2(shapely.intersection(seen, geometry_of(candidate.boundary)))
            if overlap > 0 and (best is None or overlap > best[0]):
                best = (overlap, candidate)
        return Join(best[1], "overlap") if best is not None else None

    def record_answer(
        self, observation_id: str | None, geo: GeoPart, metadata: Mapping[str, Any], received: datetime
    ) -> FieldFlightRecord | None:
        """Join a stored crop-health answer to its field and record the flight; None when it joins
        no field. Raises only on a storage failure (the caller logs it)."""
        zones = zones_wgs84(geo)
        join = self.join(geo, metadata, zones)
        if join is None:
            return None
        observed_at = observed_at_of(metadata, received)
        summary = summarise(geo, join.field.boundary, zones)
        record = self.db.record_field_flight(
            NewFieldFlight(
                field_id=join.field.id,
                flight=flight_of(metadata, observed_at),
                observed_at=observed_at,
                observation_id=observation_id,
                joined_by=join.joined_by,
                indices=summary.indices,
                disease_ha=summary.disease_ha,
                vigour_ha=summary.vigour_ha,
                zones=summary.zones,
            )
        )
        self.mirror(join.field)
        return record

    # -- the feature-store mirror and the trend ---------------------------------------------------

    def mirror(self, field: FieldRecord) -> None:
        """The field's latest flight as a cache hash and as gauges (never raises)."""
        try:
            latest = self.db.field_flight(field.id)
        except Exception:
            log.warning("field %s: no latest flight to mirror", field.id, exc_info=True)
            return
        values = features_of(field, latest)
        if self.cache is not None:
            self.cache.set_hash(FEATURE_KEY.format(field.id), values)
        if self.metrics is not None:
            ndvi = latest.indices.get("ndvi")
            mean = ndvi.get("mean") if isinstance(ndvi, dict) else None
            if isinstance(mean, int | float):
                self.metrics.field_ndvi_mean.labels(field.id).set(float(mean))
            self.metrics.field_diseased_hectares.labels(field.id).set(float(values["disease_ha"]))

    def features(self, field_id: str) -> dict[str, str]:
        """The mirrored features of a field (``{}`` without a cache or before its first flight)."""
        return {} if self.cache is None else self.cache.get_hash(FEATURE_KEY.format(field_id))

    # -- prescriptions ----------------------------------------------------------------------------

    def prescription(
        self,
        field_id: str,
        flight: str | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        buffer_m: float = DEFAULT_BUFFER_M,
        base_rate: float = DEFAULT_BASE_RATE,
        unit: str = DEFAULT_UNIT,
    ) -> Prescription:
        """The prescription of ``flight`` (None: the latest) of the field; bad options are refused
        before the field is looked up."""
        check_options(threshold, buffer_m, base_rate)
        field = self.db.field(field_id)
        record = self.db.field_flight(field_id, flight)
        return prescribe(
            field.id,
            record.flight,
            field.boundary,
            record.zones,
            threshold=threshold,
            buffer_m=buffer_m,
            base_rate=base_rate,
            unit=unit,
        )


def features_of(field: FieldRecord, flight: FieldFlightRecord) -> dict[str, str]:
    """The flat string features of a field's flight (the Redis hash): ``flight``, ``observed_at``,
    ``observation_id``, ``area_ha``, ``<index>_<stat>``, ``disease_ha`` (total),
    ``disease_ha:<class>``, ``vigour_ha:<zone>``, and ``indices`` as JSON."""
    out = {
        "field_id": field.id,
        "flight": flight.flight,
        "observed_at": flight.observed_at.isoformat(),
        "observation_id": flight.observation_id or "",
        "area_ha": f"{field.area_ha:.4f}",
        "indices": json.dumps(flight.indices, sort_keys=True),
    }
    for index, stats in flight.indices.items():
        if isinstance(stats, dict):
            for stat, value in stats.items():
                out[f"{index}_{stat}"] = "" if value is None else f"{value}"
    disease_total = 0.0
    for cls, ha in flight.disease_ha.items():
        if isinstance(ha, int | float):
            out[f"disease_ha:{cls}"] = f"{ha}"
            disease_total += float(ha)
    for zone, ha in flight.vigour_ha.items():
        out[f"vigour_ha:{zone}"] = f"{ha}"
    out["disease_ha"] = f"{round(disease_total, 4)}"
    return out
