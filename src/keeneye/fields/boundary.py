"""A field's boundary: GeoJSON in, validated, stored in WGS84 with its geodesic area.

Accepted: a GeoJSON ``Polygon`` or ``MultiPolygon`` geometry, a ``Feature`` holding one, or a
``FeatureCollection`` of such features (their polygons become one MultiPolygon). Coordinates are
WGS84 lon/lat (RFC 7946) unless a CRS is named — by the caller (``--crs EPSG:32633``) or by the
document's GeoJSON-2008 ``crs`` member (``{"type": "name", "properties": {"name": "EPSG:32633"}}``);
anything pyproj reads (``EPSG:…``, ``urn:ogc:def:crs:EPSG::…``, WKT) is a name. Every refusal is an
:class:`~keeneye.domain.InvalidInput` (422) whose reason says what is wrong:

* ``boundary_not_polygon``: not GeoJSON, not a polygon (a point, a line …), or malformed coordinates;
* ``boundary_bad_crs``: a CRS pyproj does not know;
* ``boundary_out_of_range``: lon/lat outside −180…180 / −90…90 (typically projected metres sent
  without naming their CRS), a boundary outside the named CRS's area of use (lon/lat sent while
  naming a UTM zone), or an area no field has (over 1,000,000 ha: a wrong CRS);
* ``boundary_invalid``: shapely finds the polygon invalid — a self-intersection, a ring with too few
  points, overlapping parts — and ``explain_validity`` says where; or it has no area.

The area is geodesic on the WGS84 ellipsoid (``pyproj.Geod.geometry_area_perimeter``), never planar
square degrees. Stored coordinates follow RFC 7946: exterior rings counter-clockwise, holes
clockwise, 8 decimals (about 1 mm).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import pyproj
import shapely  # type: ignore[import-untyped]  # no stubs shipped
from shapely.geometry import shape  # type: ignore[import-untyped]
from shapely.validation import explain_validity  # type: ignore[import-untyped]

from keeneye.domain import InvalidInput, JsonObject

WGS84_DECIMALS: Final = 8
MAX_FIELD_HA: Final = 1_000_000.0  # 10,000 km²: larger is a wrong CRS, not a field
AREA_OF_USE_SLACK_DEG: Final = 1.0
FIELD_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
GEOD: Final = pyproj.Geod(ellps="WGS84")
_POLYGONS: Final = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class Boundary:
    """A validated boundary in WGS84 lon/lat (a shapely Polygon or MultiPolygon)."""

    geometry: shapely.Geometry

    @property
    def area_ha(self) -> float:
        return geodesic_area_m2(self.geometry) / 10_000

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(min lon, min lat, max lon, max lat)."""
        x0, y0, x1, y1 = (float(v) for v in shapely.bounds(self.geometry))
        return (x0, y0, x1, y1)

    def to_geojson(self) -> JsonObject:
        return geojson_of(self.geometry)


def geodesic_area_m2(geom: shapely.Geometry) -> float:
    """Area in m² of a WGS84 lon/lat geometry on the WGS84 ellipsoid (0 for anything without area)."""
    if geom is None or shapely.is_empty(geom):
        return 0.0
    area, _perimeter = GEOD.geometry_area_perimeter(geom)
    return abs(float(area))


def geojson_of(geom: shapely.Geometry) -> JsonObject:
    """A WGS84 geometry as RFC 7946 GeoJSON: right-hand rule, 8 decimals."""
    oriented = shapely.orient_polygons(geom, exterior_cw=False)
    rounded = shapely.transform(oriented, lambda xy: np.round(xy, WGS84_DECIMALS))
    return cast(JsonObject, json.loads(shapely.to_geojson(rounded)))


def geometry_of(doc: Mapping[str, Any]) -> shapely.Geometry:
    """A stored (already valid) GeoJSON geometry as a shapely geometry."""
    return shape(doc)


def transformer_to_wgs84(crs: str) -> pyproj.Transformer:
    """lon/lat order whatever the CRS's axis order (GeoJSON is always x = lon)."""
    return pyproj.Transformer.from_crs(pyproj.CRS.from_user_input(crs), "EPSG:4326", always_xy=True)


def reproject(geom: shapely.Geometry, transformer: pyproj.Transformer) -> shapely.Geometry:
    def project(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, project)


# --------------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------------


def _refuse(reason: str, message: str, fix: str) -> InvalidInput:
    return InvalidInput(reason, message, status=422, fix=fix)


_POLYGON_FIX = "send a GeoJSON Polygon or MultiPolygon (a geometry, a Feature or a FeatureCollection)"


def _geometries(doc: Any) -> tuple[list[Mapping[str, Any]], Any]:
    """The geometry dicts of ``doc`` and its ``crs`` member (None when absent)."""
    if not isinstance(doc, Mapping):
        raise _refuse("boundary_not_polygon", "the boundary is not a GeoJSON object", _POLYGON_FIX)
    kind = doc.get("type")
    crs = doc.get("crs")
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list) or not features:
            raise _refuse("boundary_not_polygon", "the FeatureCollection holds no feature", _POLYGON_FIX)
        geoms: list[Mapping[str, Any]] = []
        for feature in features:
            inner, _ = _geometries(feature)
            geoms.extend(inner)
        return geoms, crs
    if kind == "Feature":
        geometry = doc.get("geometry")
        if not isinstance(geometry, Mapping):
            raise _refuse("boundary_not_polygon", "the Feature has no geometry", _POLYGON_FIX)
        return [geometry], crs if crs is not None else geometry.get("crs")
    if kind in _POLYGONS:
        return [doc], crs
    raise _refuse(
        "boundary_not_polygon", f"a {kind or 'typeless object'} is not a field boundary", _POLYGON_FIX
    )


def _shape(geometry: Mapping[str, Any]) -> shapely.Geometry:
    kind = geometry.get("type")
    if kind not in _POLYGONS:
        raise _refuse(
            "boundary_not_polygon", f"a {kind or 'typeless geometry'} is not a field boundary", _POLYGON_FIX
        )
    try:
        geom = shape({"type": kind, "coordinates": geometry.get("coordinates")})
        coords = shapely.get_coordinates(geom)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise _refuse(
            "boundary_not_polygon",
            f"the {kind}'s coordinates are malformed ({exc})",
            "each ring is a list of at least 4 [x, y] positions, the first repeated last",
        ) from exc
    if geom.is_empty or not np.isfinite(coords).all():
        raise _refuse("boundary_not_polygon", f"the {kind} has no finite coordinates", _POLYGON_FIX)
    return geom


def _crs_name(value: Any) -> str | None:
    """The name in a GeoJSON-2008 ``crs`` member (or a plain string)."""
    if value is None or isinstance(value, str):
        return value
    props = value.get("properties") if isinstance(value, Mapping) else None
    name = props.get("name") if isinstance(props, Mapping) else None
    if not isinstance(name, str):
        raise _refuse(
            "boundary_bad_crs",
            "the boundary's crs member names no CRS",
            'write {"type": "name", "properties": {"name": "EPSG:32633"}}, or leave it out for WGS84',
        )
    return name


def _check_lonlat(geom: shapely.Geometry, *, named: str | None) -> None:
    x0, y0, x1, y1 = (float(v) for v in shapely.bounds(geom))
    if x0 >= -180 and x1 <= 180 and y0 >= -90 and y1 <= 90:
        return
    where = f"x {x0:.6g}…{x1:.6g}, y {y0:.6g}…{y1:.6g}"
    if named is None:
        raise _refuse(
            "boundary_out_of_range",
            f"the coordinates ({where}) are outside WGS84 lon/lat (−180…180, −90…90)",
            "they look projected: name their CRS (--crs EPSG:32633 or a crs member), or send lon/lat",
        )
    raise _refuse(
        "boundary_out_of_range",
        f"in {named} the boundary lies at lon/lat {where}, outside −180…180 / −90…90",
        "check that the coordinates are in the CRS you named",
    )


def _check_area_of_use(wgs84: shapely.Geometry, source: pyproj.CRS, named: str) -> None:
    """Coordinates in the wrong CRS usually land far outside the named CRS's area of use (lon/lat
    read as UTM metres land near its false origin); a degree of slack allows a zone's neighbours."""
    use = source.area_of_use
    if use is None:
        return
    x0, y0, x1, y1 = (float(v) for v in shapely.bounds(wgs84))
    slack = AREA_OF_USE_SLACK_DEG
    if x0 < use.west - slack or x1 > use.east + slack or y0 < use.south - slack or y1 > use.north + slack:
        raise _refuse(
            "boundary_out_of_range",
            f"in {named} the boundary lies at lon {x0:.4f}…{x1:.4f}, lat {y0:.4f}…{y1:.4f}, outside "
            f"where {named} is used (lon {use.west:g}…{use.east:g}, lat {use.south:g}…{use.north:g})",
            "check that the coordinates are in the CRS you named (lon/lat needs no CRS)",
        )


def parse_boundary(doc: Any, crs: str | None = None) -> Boundary:
    """Validate a GeoJSON boundary (module docstring) and return it in WGS84; ``crs`` overrides the
    document's own ``crs`` member. Raises InvalidInput with a precise reason."""
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise _refuse("boundary_not_polygon", f"the boundary is not JSON ({exc})", _POLYGON_FIX) from exc
    geometries, member = _geometries(doc)
    named = crs if crs is not None else _crs_name(member)
    parts: list[shapely.Geometry] = []
    for g in geometries:
        geom = _shape(g)
        parts.extend(shapely.get_parts(geom))
    geom = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    source: pyproj.CRS | None = None
    if named is not None:
        try:
            source = pyproj.CRS.from_user_input(named)
        except pyproj.exceptions.CRSError as exc:
            raise _refuse(
                "boundary_bad_crs",
                f"unknown CRS {named!r} ({exc})",
                "name it as EPSG:<code> (e.g. EPSG:32633 for UTM 33N), or leave it out for WGS84 lon/lat",
            ) from exc
    if source is None or source.is_geographic:
        _check_lonlat(geom, named=named)
    if not shapely.is_valid(geom):
        raise _refuse(
            "boundary_invalid",
            f"the boundary is not a valid polygon: {explain_validity(geom)}",
            "fix the outline in your GIS (a self-intersection is an edge crossing another; "
            "QGIS: Vector → Geometry Tools → Check Validity / Fix Geometries)",
        )
    if shapely.area(geom) <= 0:
        raise _refuse("boundary_invalid", "the boundary has no area", _POLYGON_FIX)
    wgs84 = geom
    if source is not None and not (source.is_geographic and source.equals(pyproj.CRS.from_epsg(4326))):
        wgs84 = reproject(geom, transformer_to_wgs84(named or "EPSG:4326"))
        if not np.isfinite(shapely.get_coordinates(wgs84)).all():
            raise _refuse(
                "boundary_out_of_range",
                f"the boundary cannot be placed on the globe in {named}",
                "check that the coordinates are in the CRS you named",
            )
        _check_lonlat(wgs84, named=named)
        _check_area_of_use(wgs84, source, named or "")
        if not shapely.is_valid(wgs84):
            wgs84 = shapely.make_valid(wgs84)
    boundary = Boundary(shapely.normalize(wgs84))
    if boundary.area_ha > MAX_FIELD_HA:
        raise _refuse(
            "boundary_out_of_range",
            f"the boundary covers {boundary.area_ha:,.0f} ha, more than any field",
            "check the coordinates and their CRS",
        )
    return boundary


def field_id_of(name: str, given: str | None = None) -> str:
    """``given`` checked as an id, else a slug of ``name`` (``"North 12"`` → ``north-12``)."""
    if given is not None:
        if not FIELD_ID.match(given):
            raise InvalidInput(
                "bad_field_id",
                f"{given!r} is not a field id",
                fix="use 1–64 lower-case letters, digits, '-' or '_', starting with a letter or digit",
            )
        return given
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:64].strip("-")
    if not slug:
        raise InvalidInput(
            "bad_field_id", f"no id can be made from the name {name!r}", fix="give an id (--id a7)"
        )
    return slug
