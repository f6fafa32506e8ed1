"""The crop-health geo answer of one raster: index statistics, the CRS, vigour zones as GeoJSON.

:func:`analyse_field` is what the crop-health pipeline calls once per raster (the model's disease zones
are added to ``zones`` by the caller with :func:`keeneye.geo.zones.disease_zones`). It needs no model:
indices and vigour zones come from the bands alone, which is why they are answered even when no model
can read the camera's bands. The answer is :class:`keeneye.domain.GeoPart`, the typed ``geo`` part of
a crop-health :class:`~keeneye.domain.Answer` (INTERFACES.md, "crop-health answer").
"""

from __future__ import annotations

from collections.abc import Mapping

from keeneye.domain import GeoPart, IndexStatsJson, InvalidInput
from keeneye.geo.bands import BandMap
from keeneye.geo.indices import DEFAULT_INDICES, INDICES, available, compute_index, index_stats
from keeneye.geo.raster import BoolArray, FloatArray, RasterSource, Reflectance, read_raster
from keeneye.geo.zones import (
    OutputCrs,
    Zone,
    vigour_zones,
    zones_to_geojson,
)

VIGOUR_SOURCES = ("ndvi", "ndre", "gndvi")  # the index vigour zones are cut from: the first available


def analyse_reflectance(
    raster: Reflectance,
    *,
    indices: tuple[str, ...] = DEFAULT_INDICES,
    crs: OutputCrs = "wgs84",
    n_zones: int = 3,
    min_area_px: int | None = None,
    extra_zones: list[Zone] | None = None,
    maps: Mapping[str, tuple[FloatArray, BoolArray]] | None = None,
) -> GeoPart:
    """Index stats + vigour zones (+ ``extra_zones``, e.g. a model's disease zones) of a read raster.

    ``min_area_px``: the smallest vigour zone (None: 0.1% of the valid pixels, see :func:`vigour_zones`).
    ``maps``: index maps already computed (:func:`~keeneye.geo.indices.index_maps`), used as they are.

    Indices the bands do not allow are left out with a note; an unknown index name is refused
    (``InvalidInput("unknown_index")``) since it is a typo, not a camera limit.
    """
    unknown = [n for n in indices if n not in INDICES]
    if unknown:
        raise InvalidInput(
            "unknown_index", f"no index named {', '.join(unknown)}", fix=f"use {', '.join(INDICES)}"
        )
    notes: list[str] = []
    stats: dict[str, IndexStatsJson] = {}
    computed = dict(maps or {})
    for name in indices:
        if name not in available(raster.bands, (name,)):
            notes.append(f"{name}: needs bands {', '.join(INDICES[name].bands)}")
            continue
        if name not in computed:
            computed[name] = compute_index(raster, name)
        stats[name] = index_stats(*computed[name])
    vigour_index = next((n for n in VIGOUR_SOURCES if n in available(raster.bands, (n,))), None)
    zones: list[Zone] = list(extra_zones or [])
    if vigour_index is None:
        notes.append("vigour zones: need NIR with Red, Red edge or Green")
    else:
        values, ok = computed.get(vigour_index) or compute_index(raster, vigour_index)
        zones = vigour_zones(values, ok, raster.georef, n_zones=n_zones, min_area_px=min_area_px) + zones
    georef = raster.georef
    if not georef.georeferenced:
        notes.append(
            "not georeferenced: zones in pixel coordinates"
            + ("" if georef.gsd_m else "; areas in pixels only (give the GSD for m²)")
        )
    zones_crs = None if not georef.georeferenced else "EPSG:4326" if crs == "wgs84" else georef.crs_name
    return GeoPart(
        indices=stats,
        crs=georef.crs_name,
        area_basis=georef.area_basis,
        zones_crs=zones_crs,
        zones=zones_to_geojson(zones, georef, crs),
        bands=raster.bands,
        vigour_index=vigour_index,
        notes=notes,
    )


def analyse_field(
    source: RasterSource,
    band_map: BandMap,
    *,
    indices: tuple[str, ...] = DEFAULT_INDICES,
    crs: OutputCrs = "wgs84",
    n_zones: int = 3,
    min_area_px: int | None = None,
    gsd_m: float | None = None,
) -> GeoPart:
    """Read a raster (path or bytes) and answer its geo part; see :func:`analyse_reflectance`."""
    raster = read_raster(source, band_map, gsd_m=gsd_m)
    return analyse_reflectance(raster, indices=indices, crs=crs, n_zones=n_zones, min_area_px=min_area_px)
