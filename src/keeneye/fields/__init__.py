"""Crop-health fields: the field registry, per-field history, prescriptions (docs/crop-health.md,
"Fields, history and prescriptions").

A field is a named boundary (GeoJSON, stored in WGS84 with its geodesic area), a crop and a sowing
date. Every stored crop-health answer joins a field by ``metadata.field`` or by overlap with a
boundary and leaves one row per field and flight (index statistics, hectares per disease class and
vigour zone, the zones clipped to the field); a prescription per flight buffers, merges and clips
the severe disease zones and gives each a rate, exported as GeoJSON or a zipped Shapefile.
:class:`FieldBook` is the entry point; :mod:`keeneye.fields.views` holds the JSON shapes.
"""

from keeneye.fields.book import FEATURE_KEY, FieldBook, Join, features_of, parse_sowing_date
from keeneye.fields.boundary import Boundary, field_id_of, geodesic_area_m2, parse_boundary
from keeneye.fields.flights import FlightSummary, flight_of, footprint, observed_at_of, summarise, zones_wgs84
from keeneye.fields.prescription import (
    DEFAULT_BASE_RATE,
    DEFAULT_BUFFER_M,
    DEFAULT_THRESHOLD,
    DEFAULT_UNIT,
    FORMATS,
    RATE_RULE,
    Prescription,
    PrescriptionFormat,
    PrescriptionZone,
    prescribe,
    utm_crs_of,
)
from keeneye.fields.views import (
    FieldDetailJson,
    FieldJson,
    FlightJson,
    HistoryJson,
    field_detail_json,
    field_json,
    flight_json,
    history_json,
)

__all__ = [
    "DEFAULT_BASE_RATE",
    "DEFAULT_BUFFER_M",
    "DEFAULT_THRESHOLD",
    "DEFAULT_UNIT",
    "FEATURE_KEY",
    "FORMATS",
    "RATE_RULE",
    "Boundary",
    "FieldBook",
    "FieldDetailJson",
    "FieldJson",
    "FlightJson",
    "FlightSummary",
    "HistoryJson",
    "Join",
    "Prescription",
    "PrescriptionFormat",
    "PrescriptionZone",
    "features_of",
    "field_detail_json",
    "field_id_of",
    "field_json",
    "flight_json",
    "flight_of",
    "footprint",
    "geodesic_area_m2",
    "history_json",
    "observed_at_of",
    "parse_boundary",
    "parse_sowing_date",
    "prescribe",
    "summarise",
    "utm_crs_of",
    "zones_wgs84",
]
