"""Where a raster lies: its affine transform, its CRS, and how areas and WGS84 coordinates follow.

Three cases, each named by :attr:`Georef.area_basis` so an answer says how its areas were obtained:

* ``projected``: a projected CRS; area = planar area × (CRS linear unit in metres)²;
* ``geodesic``: a geographic CRS (degrees); area on the CRS's ellipsoid (``pyproj.Geod``), since a
  square degree has no fixed size;
* ``gsd``: no georeference, but the caller gave the ground sampling distance; area = px × GSD²;
* ``pixels``: neither: areas are ``None`` and only ``area_px`` is given.

Without a CRS, polygons stay in pixel coordinates (x = column, y = row) and cannot be put in WGS84.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
import pyproj
import shapely  # type: ignore[import-untyped]  # no stubs shipped
from affine import Affine
from rasterio.crs import CRS

from keeneye.domain import AreaBasis

WGS84: CRS = CRS.from_epsg(4326)


@dataclass(frozen=True)
class Georef:
    """The pixel → world transform and CRS of a raster; ``crs=None`` means not georeferenced."""

    transform: Affine
    crs: CRS | None
    gsd_m: float | None = None  # ground sampling distance for rasters without a CRS

    @classmethod
    def pixels(cls, gsd_m: float | None = None) -> Georef:
        """No georeference: identity transform (x = column, y = row), optional GSD in metres."""
        return cls(Affine.identity(), None, gsd_m)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    @cached_property
    def _pyproj(self) -> pyproj.CRS | None:
        return pyproj.CRS.from_wkt(self.crs.to_wkt()) if self.crs is not None else None

    @cached_property
    def _to_wgs84(self) -> pyproj.Transformer:
        """One transformer per raster: building one costs about a millisecond, zones are hundreds."""
        if self.crs is None:
            raise ValueError("a raster without a CRS cannot be put in WGS84")
        return pyproj.Transformer.from_crs(self.crs.to_wkt(), "EPSG:4326", always_xy=True)

    @property
    def crs_name(self) -> str | None:
        """``EPSG:<code>`` when the CRS has one, its WKT otherwise, None without a CRS."""
        if self._pyproj is None:
            return None
        code = self._pyproj.to_epsg()
        return f"EPSG:{code}" if code is not None else self._pyproj.to_wkt()

    @property
    def area_basis(self) -> AreaBasis:
        if self._pyproj is not None:
            return "geodesic" if self._pyproj.is_geographic else "projected"
        return "gsd" if self.gsd_m else "pixels"

    @property
    def pixel_size(self) -> float:
        """Mean side of a pixel in CRS units (the simplification tolerance is derived from it)."""
        return float(np.sqrt(abs(self.transform.determinant)))

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in CRS units squared (m² for a metric CRS, px² without one)."""
        return float(abs(self.transform.determinant))

    def _unit_m(self) -> float:
        assert self._pyproj is not None
        return float(self._pyproj.axis_info[0].unit_conversion_factor)

    def area_m2(self, geom: shapely.Geometry) -> float | None:
        """Area in m² by :attr:`area_basis`; None when no scale is known (``pixels``)."""
        basis = self.area_basis
        if basis == "projected":
            return float(shapely.area(geom)) * self._unit_m() ** 2
        if basis == "geodesic":
            geod = self._pyproj.get_geod() if self._pyproj is not None else None
            assert geod is not None  # every geographic CRS has an ellipsoid
            area, _perimeter = geod.geometry_area_perimeter(geom)
            return abs(float(area))
        if basis == "gsd":
            assert self.gsd_m is not None
            return float(shapely.area(geom)) * self.gsd_m**2 / self.pixel_area
        return None

    def to_wgs84(self, geom: shapely.Geometry) -> shapely.Geometry:
        """The geometry in WGS84 lon/lat (RFC 7946 axis order); needs a CRS."""
        transformer = self._to_wgs84

        def project(xy: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            x, y = transformer.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([x, y])

        return shapely.transform(geom, project)
