"""What one crop-health answer tells about one field: its flight, index stats, hectares, zones.

* **Flight**: ``metadata.flight`` when the request names one, else the UTC date the image was
  observed (``metadata.observed_at``, ISO 8601, else when it was received), e.g. ``2026-06-12``.
* **Zones** of the answer's ``geo`` part are put in WGS84 (from ``zones_crs`` when the answer was
  asked in the raster's own CRS) and **clipped to the field's boundary**; their hectares are the
  geodesic area of the part inside the field. An answer without georeference (pixel coordinates)
  has no place on the map: its zones are left out and only its index statistics are kept.
* **Footprint**: the union of the answer's zones — vigour zones cover every valid pixel of the
  raster, so this is where the image saw crop (nodata excluded); it is what the overlap join uses.
* **Index statistics** (mean, p10, p50, p90) are the answer's, over the whole image.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import shapely  # type: ignore[import-untyped]  # no stubs shipped

from keeneye.domain import GeoPart, JsonObject, JsonValue
from keeneye.fields.boundary import geodesic_area_m2, geojson_of, geometry_of, reproject, transformer_to_wgs84

log = logging.getLogger(__name__)

WGS84_NAMES: Final = frozenset({"EPSG:4326", "OGC:CRS84"})
STATS: Final = ("mean", "p10", "p50", "p90")
HA_DECIMALS: Final = 4  # 1 m²


@dataclass(frozen=True)
class ZoneWgs84:
    """One zone of an answer in WGS84 lon/lat and what it is."""

    geometry: shapely.Geometry
    kind: str
    class_name: str
    severity: float | None
    confidence: float | None


@dataclass(frozen=True)
class FlightSummary:
    """A flight over one field: what ``field_flights`` stores."""

    indices: JsonObject
    disease_ha: JsonObject
    vigour_ha: JsonObject
    zones: JsonObject  # FeatureCollection, WGS84, clipped to the boundary


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def zones_wgs84(geo: GeoPart) -> list[ZoneWgs84]:
    """The answer's zones in WGS84; ``[]`` for an answer in pixel coordinates."""
    if geo.zones_crs is None:
        return []
    transformer = None if geo.zones_crs in WGS84_NAMES else transformer_to_wgs84(geo.zones_crs)
    out: list[ZoneWgs84] = []
    for feature in geo.zones.get("features", []):
        props: Mapping[str, Any] = feature.get("properties") or {}
        try:
            geom = geometry_of(feature["geometry"])
        except Exception:  # a malformed stored zone is skipped, never a failure
            log.warning("a malformed zone was skipped", exc_info=True)
            continue
        if transformer is not None:
            geom = reproject(geom, transformer)
        if not shapely.is_valid(geom):
            geom = shapely.make_valid(geom)
        out.append(
            ZoneWgs84(
                geometry=geom,
                kind=str(props.get("kind", "")),
                class_name=str(props.get("class", "")),
                severity=_float(props.get("severity")),
                confidence=_float(props.get("confidence")),
            )
        )
    return out


def footprint(zones: list[ZoneWgs84]) -> shapely.Geometry | None:
    """Where the image saw crop, in WGS84 (None without georeferenced zones)."""
    if not zones:
        return None
    return shapely.union_all([z.geometry for z in zones])


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """Only the polygons of an intersection (a shared edge gives lines, a corner a point)."""
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not parts:
        return shapely.Polygon()
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def summarise(
    geo: GeoPart, boundary: Mapping[str, Any], zones: list[ZoneWgs84] | None = None
) -> FlightSummary:
    """The answer seen through one field's boundary (module docstring); ``zones``: the answer's
    zones in WGS84 (:func:`zones_wgs84`) when the caller has them already."""
    field = geometry_of(boundary)
    indices: JsonObject = {}
    for name, stats in geo.indices.items():
        indices[name] = {k: _float(stats.get(k)) for k in STATS}
    disease: dict[str, float] = {}
    vigour: dict[str, float] = {}
    features: list[JsonValue] = []
    for zone in zones_wgs84(geo) if zones is None else zones:
        inside = _polygonal(shapely.intersection(zone.geometry, field))
        area_ha = geodesic_area_m2(inside) / 10_000
        if area_ha <= 0:
            continue
        totals = disease if zone.kind == "disease" else vigour
        totals[zone.class_name] = totals.get(zone.class_name, 0.0) + area_ha
        features.append(
            {
                "type": "Feature",
                "geometry": geojson_of(inside),
                "properties": {
                    "kind": zone.kind,
                    "class": zone.class_name,
                    "severity": zone.severity,
                    "confidence": zone.confidence,
                    "area_ha": round(area_ha, HA_DECIMALS),
                },
            }
        )
    return FlightSummary(
        indices=indices,
        disease_ha={k: round(v, HA_DECIMALS) for k, v in sorted(disease.items())},
        vigour_ha={k: round(v, HA_DECIMALS) for k, v in sorted(vigour.items())},
        zones={"type": "FeatureCollection", "features": features},
    )


def observed_at_of(metadata: Mapping[str, Any], received: datetime) -> datetime:
    """``metadata.observed_at`` (ISO 8601; naive = UTC) when it parses, else ``received``."""
    raw = metadata.get("observed_at")
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return received
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return received


def flight_of(metadata: Mapping[str, Any], observed_at: datetime) -> str:
    """``metadata.flight`` (at most 64 characters), else the observed UTC date."""
    raw = metadata.get("flight")
    if isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw).strip():
        return str(raw).strip()[:64]
    return observed_at.astimezone(UTC).date().isoformat()
