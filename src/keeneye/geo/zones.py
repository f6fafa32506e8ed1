"""Zones: connected regions of a class raster as polygons with holes, areas and GeoJSON.

Two producers share one path (components → polygons → slivers dropped → coverage-simplified):

* :func:`vigour_zones` — management zones by index classes, like Pix4Dfields' zonation: the index
  (NDVI by default) is smoothed over valid pixels, its valid pixels are cut into ``n_zones`` classes
  of equal pixel count (quantile breaks), regions smaller than the minimum area (default 0.1% of the
  field) are merged into their neighbours (``rasterio.features.sieve``), then each connected region
  is a zone. Works with no model.
* :func:`disease_zones` — a model's class mask (0 = healthy) + the probability of the assigned class.
  ``confidence`` = mean probability over the zone. ``severity`` (0–1) = the zone's loss of canopy
  vigour against the healthy part of the field: ``1 − mean NDVI(zone) / median NDVI(healthy valid
  pixels)``, clipped to 0–1 — 0 means as green as healthy crop, 1 means no vegetation signal left. It
  needs NDVI; without it (an RGB model) severity falls back to the mean probability and
  ``severity_basis`` says so.

Polygons come from ``rasterio.features.shapes`` (4-connected, holes kept) in the raster's CRS and are
simplified together with ``shapely.coverage_simplify`` (edges within about a pixel of the pixel
outline), so neighbouring zones keep shared edges without gaps or overlaps. Pixel-count areas
(``area_px``) are exact; ``area_m2`` is measured on the simplified polygon by :meth:`Georef.area_m2`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

import cv2
import numpy as np
import numpy.typing as npt
import shapely  # type: ignore[import-untyped]  # no stubs shipped
from rasterio import features

from keeneye.domain import (
    Instances,
    InvalidInput,
    JsonObject,
    ZoneCollectionJson,
    ZoneFeatureJson,
    ZonePropertiesJson,
)
from keeneye.geo.georef import Georef
from keeneye.geo.raster import BoolArray

ZoneKind = Literal["vigour", "disease"]
SeverityBasis = Literal["ndvi_deficit", "probability"]
OutputCrs = Literal["wgs84", "native"]
DEFAULT_MIN_AREA_PX: Final = 16
# coverage_simplify is Visvalingam–Whyatt: it drops vertices whose triangle is under tolerance².
# 2 px keeps every edge within about a pixel of the pixel outline while removing the staircase of a
# gently sloping edge (a 1 px tolerance keeps each 1-px step of a slope: 3× the vertices).
SIMPLIFY_TOLERANCE_PX: Final = 2.0
VIGOUR_MIN_AREA_FRACTION: Final = 1000  # vigour zones: at least 1/1000 of the valid pixels
WGS84_DECIMALS: Final = 8  # 1e-8° ≈ 1 mm: far below any drone pixel, short enough for JSON

_ZONE_NAMES: Final = {
    2: ("low", "high"),
    3: ("low", "medium", "high"),
    4: ("low", "medium_low", "medium_high", "high"),
    5: ("very_low", "low", "medium", "high", "very_high"),
}


@dataclass(frozen=True)
class Zone:
    """One zone: a polygon in the raster's CRS (pixel coordinates without one) and what it is."""

    kind: ZoneKind
    class_name: str
    geometry: shapely.Polygon
    area_px: int
    confidence: float | None = None
    severity: float | None = None
    severity_basis: SeverityBasis | None = None
    index_mean: float | None = None


# --------------------------------------------------------------------------------------------------
# Components and polygons
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Components:
    labels: npt.NDArray[np.int32]  # 0 = no zone, 1..n = component
    classes: npt.NDArray[np.int64]  # per label (index 0 unused): its class value
    counts: npt.NDArray[np.int64]  # per label: pixels
    # flat indexes of the labelled pixels when they are few (disease zones): per-label sums visit
    # only them; None when most pixels are labelled (vigour zones cover the field)
    inside: npt.NDArray[np.intp] | None = None


def _components(classes: npt.NDArray[np.integer], valid: BoolArray, min_area_px: int) -> _Components:
    """4-connected components of each class value > 0 inside ``valid``; slivers below min area dropped."""
    labels = np.zeros(classes.shape, dtype=np.int32)
    label_class: list[int] = [0]
    next_label = 1
    for value in np.unique(classes[valid & (classes > 0)]):
        binary = ((classes == value) & valid).astype(np.uint8)
        n, comp = cv2.connectedComponents(binary, connectivity=4, ltype=cv2.CV_32S)
        inside = comp > 0
        labels[inside] = comp[inside] + (next_label - 1)
        label_class.extend([int(value)] * (n - 1))
        next_label += n - 1
    counts = np.bincount(labels.ravel(), minlength=next_label).astype(np.int64)
    small = counts < min_area_px
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
        counts[small] = 0
    inside = np.flatnonzero(labels) if int(counts[1:].sum()) * 4 < labels.size else None
    return _Components(labels, np.asarray(label_class, dtype=np.int64), counts, inside)


def _polygons(comps: _Components, georef: Georef) -> dict[int, shapely.Polygon]:
    """One polygon (holes kept) per surviving label, simplified as a coverage (edges within ~1 px)."""
    found: dict[int, shapely.Polygon] = {}
    mask = comps.labels > 0
    for geom, value in features.shapes(comps.labels, mask=mask, connectivity=4, transform=georef.transform):
        # A 4-connected component is one polygon; shapes never splits it. Rings as arrays: building
        # from lists of tuples (shapely.geometry.shape) is the slow part on big fields.
        rings = [np.asarray(r, dtype=np.float64) for r in geom["coordinates"]]
        found[int(value)] = shapely.Polygon(rings[0], rings[1:])
    if not found:
        return found
    keys = list(found)
    simplified = shapely.coverage_simplify(
        np.array([found[k] for k in keys]), tolerance=georef.pixel_size * SIMPLIFY_TOLERANCE_PX
    )
    return {k: cast(shapely.Polygon, g) for k, g in zip(keys, simplified, strict=True)}


def _label_means(comps: _Components, values: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Mean of ``values`` per label (NaN where a label has no pixel or values are NaN)."""
    labels, weights = comps.labels.ravel(), values.ravel()
    if comps.inside is not None:
        labels, weights = labels[comps.inside], weights[comps.inside]
    # Label 0 (no zone) collects the rest, whatever it holds; its sum is never used.
    sums = np.bincount(labels, weights=weights, minlength=comps.counts.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        return sums / comps.counts


# --------------------------------------------------------------------------------------------------
# Producers
# --------------------------------------------------------------------------------------------------


def smooth_valid(
    values: npt.NDArray[np.floating], valid: BoolArray, *, sigma: float
) -> npt.NDArray[np.float32]:
    """Gaussian smoothing that ignores invalid pixels (normalised convolution); σ < 0.5 px: as is.

    Vigour classes are cut from the smoothed index so zone edges follow the field's pattern rather
    than pixel noise (a noisy NDVI otherwise gives jagged edges of tens of thousands of vertices).
    """
    if sigma < 0.5:
        return np.asarray(values, dtype=np.float32)
    weight = valid.astype(np.float32)
    filled = np.where(valid, values, 0).astype(np.float32)
    num = cv2.GaussianBlur(filled, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    with np.errstate(divide="ignore", invalid="ignore"):
        out: npt.NDArray[np.float32] = np.where(den > 1e-6, num / den, np.nan).astype(np.float32)
    return out


def zone_names(n_zones: int) -> tuple[str, ...]:
    """Class names of ``n_zones`` vigour classes, lowest first."""
    return _ZONE_NAMES.get(n_zones, tuple(f"zone_{i + 1}" for i in range(n_zones)))


def vigour_classes(values: npt.NDArray[np.floating], valid: BoolArray, n_zones: int) -> npt.NDArray[np.int32]:
    """1..n_zones by quantile breaks of the valid values (equal pixel counts); 0 outside ``valid``."""
    if not 2 <= n_zones <= 10:
        raise InvalidInput("bad_zone_count", f"{n_zones} zones asked for", fix="ask for 2 to 10 zones")
    picked = values[valid]
    out = np.zeros(values.shape, dtype=np.int32)
    if picked.size == 0:
        return out
    breaks = np.quantile(picked, np.linspace(0, 1, n_zones + 1)[1:-1])
    # np.digitize(v, breaks) + 1 (the count of breaks ≤ v, NaN above all) without a binary search
    # per pixel: one comparison per break over the raster.
    classes = np.ones(picked.shape, dtype=np.int32)
    for b in breaks:
        classes += ~(picked < b)
    out[valid] = classes
    return out


def vigour_zones(
    values: npt.NDArray[np.floating],
    valid: BoolArray,
    georef: Georef,
    *,
    n_zones: int = 3,
    min_area_px: int | None = None,
) -> list[Zone]:
    """Management zones of an index map (see the module docstring), largest first.

    ``min_area_px`` None: 0.1% of the valid pixels (at least 16) — a management zone is a part of
    the field a machine can treat differently, not a patch of a few leaves, and a per-pixel split of
    a noisy index would answer hundreds of specks.
    """
    if min_area_px is None:
        min_area_px = max(DEFAULT_MIN_AREA_PX, int(valid.sum()) // VIGOUR_MIN_AREA_FRACTION)
    classes = vigour_classes(smooth_valid(values, valid, sigma=np.sqrt(min_area_px) / 8), valid, n_zones)
    if min_area_px > 1 and valid.any():
        classes = features.sieve(classes, size=min_area_px, mask=valid, connectivity=4).astype(np.int32)
    comps = _components(classes, valid, min_area_px)
    polygons = _polygons(comps, georef)
    means = _label_means(comps, values)
    names = zone_names(n_zones)
    zones = [
        Zone(
            kind="vigour",
            class_name=names[int(comps.classes[k]) - 1],
            geometry=poly,
            area_px=int(comps.counts[k]),
            index_mean=float(means[k]),
        )
        for k, poly in polygons.items()
    ]
    return sorted(zones, key=lambda z: -z.area_px)


def disease_zones(
    class_mask: npt.NDArray[np.integer],
    probability: npt.NDArray[np.floating],
    georef: Georef,
    class_names: Sequence[str],
    *,
    valid: BoolArray | None = None,
    ndvi: npt.NDArray[np.floating] | None = None,
    min_area_px: int = DEFAULT_MIN_AREA_PX,
) -> list[Zone]:
    """Disease zones from a class mask (0 = healthy, k ≥ 1 = ``class_names[k - 1]``).

    Raises ``InvalidInput("shape_mismatch")`` when mask, probability, valid and NDVI differ in shape
    and ``InvalidInput("unknown_class")`` when the mask holds a class with no name.
    """
    shapes = {a.shape for a in (class_mask, probability, valid, ndvi) if a is not None}
    if len(shapes) != 1:
        raise InvalidInput("shape_mismatch", f"mask and maps differ in shape: {sorted(shapes)}")
    ok = np.ones(class_mask.shape, dtype=bool) if valid is None else valid
    top = int(class_mask.max(initial=0))
    if top > len(class_names) or int(class_mask.min(initial=0)) < 0:
        raise InvalidInput(
            "unknown_class", f"the mask holds class {top}, only {len(class_names)} names were given"
        )
    comps = _components(class_mask, ok, min_area_px)
    polygons = _polygons(comps, georef)
    confidence = _label_means(comps, probability)
    basis: SeverityBasis = "probability"
    severity = confidence
    if ndvi is not None:
        healthy = ok & (class_mask == 0) & np.isfinite(ndvi)
        reference = float(np.median(ndvi[healthy])) if healthy.any() else 0.0
        if reference > 0:
            basis = "ndvi_deficit"
            severity = 1 - _label_means(comps, np.nan_to_num(ndvi, nan=0.0)) / reference
    zones = [
        Zone(
            kind="disease",
            class_name=class_names[int(comps.classes[k]) - 1],
            geometry=poly,
            area_px=int(comps.counts[k]),
            confidence=float(np.clip(confidence[k], 0, 1)),
            severity=float(np.clip(severity[k], 0, 1)),
            severity_basis=basis,
        )
        for k, poly in polygons.items()
    ]
    return sorted(zones, key=lambda z: -z.area_px)


def class_map_of(
    instances: Instances, shape: tuple[int, int]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    """A model's instance masks as :func:`disease_zones` input: (class mask, probability map).

    Pixel value k ≥ 1 is ``class_ids == k - 1``; where instances overlap the higher score wins and
    its score is the pixel's probability. Instances without masks (a detector) paint their boxes.
    """
    class_mask = np.zeros(shape, dtype=np.int32)
    probability = np.zeros(shape, dtype=np.float32)
    for i in np.argsort(instances.scores, kind="stable"):  # ascending: the best is painted last
        if instances.masks is not None:
            where = instances.masks[i]
        else:
            x1, y1, x2, y2 = (round(float(v)) for v in instances.boxes[i])
            where = np.zeros(shape, dtype=bool)
            where[max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = True
        # copyto with where: one pass per instance (boolean indexing gathers the indexes first)
        np.copyto(class_mask, np.int32(int(instances.class_ids[i]) + 1), where=where)
        np.copyto(probability, np.float32(instances.scores[i]), where=where)
    return class_mask, probability


# --------------------------------------------------------------------------------------------------
# GeoJSON
# --------------------------------------------------------------------------------------------------


def _geojson(geom: shapely.Geometry, decimals: int | None) -> JsonObject:
    oriented = shapely.orient_polygons(geom, exterior_cw=False)  # RFC 7946 §3.1.6 right-hand rule
    if decimals is not None:
        oriented = shapely.transform(oriented, lambda xy: np.round(xy, decimals))
    return cast(JsonObject, json.loads(shapely.to_geojson(oriented)))


def zones_to_geojson(zones: Sequence[Zone], georef: Georef, crs: OutputCrs = "wgs84") -> ZoneCollectionJson:
    """The zones as a FeatureCollection: WGS84 lon/lat (RFC 7946) or the raster's own CRS.

    A raster without a CRS always answers in pixel coordinates (x = column, y = row), whatever
    ``crs`` asks; the answer's ``crs`` is then null and ``area_basis`` says ``gsd`` or ``pixels``.
    """
    to_wgs84 = crs == "wgs84" and georef.georeferenced
    out: list[ZoneFeatureJson] = []
    for zone in zones:
        area_m2 = georef.area_m2(zone.geometry)
        geom = georef.to_wgs84(zone.geometry) if to_wgs84 else zone.geometry
        props: ZonePropertiesJson = {
            "kind": zone.kind,
            "class": zone.class_name,
            "confidence": zone.confidence,
            "severity": zone.severity,
            "severity_basis": zone.severity_basis,
            "index_mean": zone.index_mean,
            "area_px": zone.area_px,
            "area_m2": area_m2,
            "area_ha": area_m2 / 10_000 if area_m2 is not None else None,
        }
        geometry = _geojson(geom, WGS84_DECIMALS if to_wgs84 else None)
        out.append(ZoneFeatureJson(type="Feature", geometry=geometry, properties=props))
    collection = ZoneCollectionJson(type="FeatureCollection", features=out)
    if not to_wgs84 and georef.crs_name is not None:
        collection["crs"] = {"type": "name", "properties": {"name": georef.crs_name}}
    return collection
