"""Crop-health geo core: band-map presets, reflectance, indices, zones as geo-referenced polygons.

Everything here uses rasterio (CRS, transforms, windowed reads, polygonising), shapely 2 and pyproj;
no GeoTIFF tag is parsed by hand. Pipelines import these names only; docs/crop-health.md describes
presets, indices, zones, severity and the output schema. The answer types (``GeoPart`` and its JSON
shapes) live in :mod:`keeneye.domain`, since an :class:`~keeneye.domain.Answer` carries them.
"""

from keeneye.geo.analysis import analyse_field, analyse_reflectance
from keeneye.geo.bands import PRESETS, BandMap, BandPreset, Scaling, resolve_band_map
from keeneye.geo.cog import write_index_cog
from keeneye.geo.georef import Georef
from keeneye.geo.indices import DEFAULT_INDICES, INDICES, available, compute_index, index_stats
from keeneye.geo.raster import Reflectance, open_raster, read_dataset, read_raster
from keeneye.geo.tiles import Stitcher, Tile, tile_windows
from keeneye.geo.zones import (
    Zone,
    class_map_of,
    disease_zones,
    smooth_valid,
    vigour_zones,
    zones_to_geojson,
)

__all__ = [
    "DEFAULT_INDICES",
    "INDICES",
    "PRESETS",
    "BandMap",
    "BandPreset",
    "Georef",
    "Reflectance",
    "Scaling",
    "Stitcher",
    "Tile",
    "Zone",
    "analyse_field",
    "analyse_reflectance",
    "available",
    "class_map_of",
    "compute_index",
    "disease_zones",
    "index_stats",
    "open_raster",
    "read_dataset",
    "read_raster",
    "resolve_band_map",
    "smooth_valid",
    "tile_windows",
    "vigour_zones",
    "write_index_cog",
    "zones_to_geojson",
]
