"""A treatment prescription for one field and flight: where to spray, and how much.

The rule (docs/crop-health.md, "Prescriptions"):

1. take the flight's **disease zones** (clipped to the field) whose ``severity`` ≥ ``threshold``
   (default 0.5: the zone has lost at least half the healthy crop's NDVI);
2. put them in the field's **local UTM zone** (EPSG:326xx north / 327xx south, by the boundary's
   centroid) and **buffer** each by ``buffer_m`` metres (default 5: a boom's width of margin around
   what the image saw, since the disease spreads past its visible edge);
3. **merge** them (``unary_union``: overlapping buffers become one zone) and **clip** to the boundary;
4. give each merged zone the **highest severity** of the zones in it and the **rate**
   ``rate = round(base_rate × (0.5 + severity), 1)`` — ``base_rate`` (default 100, in ``unit``,
   default ``l/ha``) is the label dose at severity 0.5; severity 1 gets 1.5 × it;
5. areas are geodesic hectares; zones are numbered 1… by severity, highest first.

Exports: GeoJSON (RFC 7946, WGS84, one Feature per zone with ``zone``, ``class``, ``severity``,
``rate``, ``unit``, ``area_ha``) and a zipped ESRI Shapefile (``.shp``, ``.shx``, ``.dbf``, ``.prj``
in WGS84, ``.cpg``) with the same attributes as ``ZONE``, ``CLASS``, ``SEVERITY``, ``RATE``,
``UNIT``, ``AREA_HA`` — what farm terminals (John Deere, CNH, Trimble, …) import as a rate map.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import pyproj
import shapefile
import shapely  # type: ignore[import-untyped]  # no stubs shipped

from keeneye.domain import InvalidInput, JsonObject, JsonValue
from keeneye.fields.boundary import geodesic_area_m2, geojson_of, geometry_of, reproject

DEFAULT_THRESHOLD: Final = 0.5
DEFAULT_BUFFER_M: Final = 5.0
DEFAULT_BASE_RATE: Final = 100.0
DEFAULT_UNIT: Final = "l/ha"
MAX_BUFFER_M: Final = 100.0
RATE_RULE: Final = "rate = round(base_rate × (0.5 + severity), 1)"
PrescriptionFormat = Literal["geojson", "shapefile"]
FORMATS: Final = ("geojson", "shapefile")
WGS84_ESRI_WKT: Final = pyproj.CRS.from_epsg(4326).to_wkt(pyproj.enums.WktVersion.WKT1_ESRI)


@dataclass(frozen=True)
class PrescriptionZone:
    number: int
    geometry: shapely.Geometry  # WGS84
    classes: tuple[str, ...]
    severity: float
    rate: float
    area_ha: float


@dataclass(frozen=True)
class Prescription:
    field_id: str
    flight: str
    threshold: float
    buffer_m: float
    base_rate: float
    unit: str
    utm_crs: str
    zones: tuple[PrescriptionZone, ...]

    @property
    def basename(self) -> str:
        return f"{self.field_id}-{self.flight}-prescription"

    def to_geojson(self) -> JsonObject:
        """A FeatureCollection (RFC 7946) whose foreign members say how it was made."""
        features: list[JsonValue] = [
            {
                "type": "Feature",
                "geometry": geojson_of(z.geometry),
                "properties": {
                    "zone": z.number,
                    "class": ",".join(z.classes),
                    "severity": round(z.severity, 3),
                    "rate": z.rate,
                    "unit": self.unit,
                    "area_ha": round(z.area_ha, 4),
                },
            }
            for z in self.zones
        ]
        return {
            "type": "FeatureCollection",
            "field": self.field_id,
            "flight": self.flight,
            "threshold": self.threshold,
            "buffer_m": self.buffer_m,
            "base_rate": self.base_rate,
            "unit": self.unit,
            "rate_rule": RATE_RULE,
            "features": features,
        }

    def to_shapefile_zip(self) -> bytes:
        """``<field>-<flight>-prescription.{shp,shx,dbf,prj,cpg}`` in one zip (WGS84)."""
        shp, shx, dbf = io.BytesIO(), io.BytesIO(), io.BytesIO()
        with shapefile.Writer(shp=shp, shx=shx, dbf=dbf, shapeType=shapefile.POLYGON) as w:
            w.field("ZONE", "N", size=5, decimal=0)
            w.field("CLASS", "C", size=80)
            w.field("SEVERITY", "N", size=6, decimal=3)
            w.field("RATE", "N", size=12, decimal=1)
            w.field("UNIT", "C", size=16)
            w.field("AREA_HA", "N", size=14, decimal=4)
            for z in self.zones:
                # Shapefile rings: exterior clockwise, holes counter-clockwise (the reverse of GeoJSON).
                oriented = shapely.orient_polygons(z.geometry, exterior_cw=True)
                rings = [
                    [tuple(xy) for xy in ring.coords]
                    for poly in shapely.get_parts(oriented)
                    for ring in (poly.exterior, *poly.interiors)
                ]
                w.poly(rings)
                w.record(z.number, ",".join(z.classes)[:80], z.severity, z.rate, self.unit, z.area_ha)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{self.basename}.shp", shp.getvalue())
            zf.writestr(f"{self.basename}.shx", shx.getvalue())
            zf.writestr(f"{self.basename}.dbf", dbf.getvalue())
            zf.writestr(f"{self.basename}.prj", WGS84_ESRI_WKT)
            zf.writestr(f"{self.basename}.cpg", "UTF-8")
        return out.getvalue()


def utm_crs_of(geom: shapely.Geometry) -> pyproj.CRS:
    """The WGS84 UTM zone of a lon/lat geometry's centroid (EPSG:326xx / 327xx)."""
    centroid = shapely.centroid(geom)
    lon, lat = float(centroid.x), float(centroid.y)
    zone = min(60, max(1, math.floor((lon + 180) / 6) + 1))
    return pyproj.CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def check_options(threshold: float, buffer_m: float, base_rate: float) -> None:
    if not 0 <= threshold <= 1:
        raise InvalidInput(
            "bad_threshold",
            f"threshold {threshold} is outside 0–1",
            fix="severity runs 0–1; 0.5 is the default",
        )
    if not 0 <= buffer_m <= MAX_BUFFER_M:
        raise InvalidInput(
            "bad_buffer", f"buffer {buffer_m} m is outside 0–{MAX_BUFFER_M:g} m", fix="5 m is the default"
        )
    if not (base_rate > 0 and math.isfinite(base_rate)):
        raise InvalidInput("bad_rate", f"base rate {base_rate} must be > 0", fix="e.g. 100 (l/ha)")


def prescribe(
    field_id: str,
    flight: str,
    boundary: Mapping[str, Any],
    zones: Mapping[str, Any],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    buffer_m: float = DEFAULT_BUFFER_M,
    base_rate: float = DEFAULT_BASE_RATE,
    unit: str = DEFAULT_UNIT,
) -> Prescription:
    """The prescription of a flight (module docstring): ``boundary`` a WGS84 GeoJSON geometry,
    ``zones`` the flight's stored FeatureCollection (WGS84, clipped to the field)."""
    check_options(threshold, buffer_m, base_rate)
    field = geometry_of(boundary)
    utm = utm_crs_of(field)
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", utm, always_xy=True)
    to_wgs84 = pyproj.Transformer.from_crs(utm, "EPSG:4326", always_xy=True)
    field_utm = reproject(field, to_utm)
    picked: list[tuple[shapely.Geometry, str, float]] = []
    for feature in cast(list[Mapping[str, Any]], zones.get("features") or []):
        props = feature.get("properties") or {}
        severity = props.get("severity")
        if props.get("kind") != "disease" or not isinstance(severity, int | float) or severity < threshold:
            continue
        geom = reproject(geometry_of(feature["geometry"]), to_utm)
        picked.append(
            (
                shapely.buffer(geom, buffer_m) if buffer_m > 0 else geom,
                str(props.get("class")),
                float(severity),
            )
        )
    if not picked:
        return Prescription(
            field_id, flight, threshold, buffer_m, base_rate, unit, f"EPSG:{utm.to_epsg()}", ()
        )
    merged = shapely.intersection(shapely.union_all([g for g, _, _ in picked]), field_utm)
    parts = [p for p in shapely.get_parts(merged) if p.geom_type == "Polygon" and p.area > 0]
    tree = shapely.STRtree([g for g, _, _ in picked])
    found: list[tuple[shapely.Geometry, tuple[str, ...], float]] = []
    for part in parts:
        hits = [picked[int(i)] for i in tree.query(part, predicate="intersects")]
        severity = max(s for _, _, s in hits)
        found.append((part, tuple(sorted({c for _, c, _ in hits})), severity))
    found.sort(key=lambda f: (-f[2], -f[0].area))
    out = []
    for number, (part, classes, severity) in enumerate(found, start=1):
        geom = reproject(part, to_wgs84)
        out.append(
            PrescriptionZone(
                number=number,
                geometry=geom,
                classes=classes,
                severity=severity,
                rate=round(base_rate * (0.5 + severity), 1),
                area_ha=geodesic_area_m2(geom) / 10_000,
            )
        )
    return Prescription(
        field_id, flight, threshold, buffer_m, base_rate, unit, f"EPSG:{utm.to_epsg()}", tuple(out)
    )
