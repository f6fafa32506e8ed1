"""keeneye.geo.bands: the presets table (band order, scaling, nodata) and --band-map parsing.

Each preset row is checked against the vendor value written beside it, and an index is computed
through the preset to show it reads the right bands (a red/nir swap would flip NDVI's sign).
"""

from __future__ import annotations

import numpy as np
import pytest

from keeneye.domain import InvalidInput
from keeneye.geo import PRESETS, Reflectance, compute_index, resolve_band_map
from keeneye.geo.bands import BandMap, Scaling
from keeneye.geo.georef import Georef

# preset → (band order, DN that gives reflectance 0.5 (or None when 16-bit DN/65535 / black level))
PRESET_TABLE = [
    ("micasense-rededge-mx", ("blue", "green", "red", "nir", "red_edge")),
    ("micasense-altum", ("blue", "green", "red", "nir", "red_edge", "lwir")),
    ("dji-p4m", ("blue", "green", "red", "red_edge", "nir")),
    ("dji-mavic3m", ("green", "red", "red_edge", "nir")),
    ("parrot-sequoia", ("green", "red", "red_edge", "nir")),
    ("sentinel2-l2a-10m", ("blue", "green", "red", "nir")),
    (
        "sentinel2-l2a-20m",
        ("blue", "green", "red", "red_edge", "red_edge2", "red_edge3", "nir", "swir1", "swir2"),
    ),
    ("landsat89-oli", ("coastal", "blue", "green", "red", "nir", "swir1", "swir2")),
    ("landsat7-etm", ("blue", "green", "red", "nir", "swir1", "swir2")),
]

# preset → (DN, expected reflectance): worked by hand from the vendor formula
SCALING_TABLE = [
    ("micasense-rededge-mx", 16384, 0.5),  # DN / 32768
    ("dji-p4m", 4096 + 32768, 32768 / 65535),  # (DN − 4096) / 65535
    ("dji-mavic3m", 3200, 0.0),  # black level 3200 → 0
    ("parrot-sequoia", 65535, 1.0),  # DN / 65535
    ("sentinel2-l2a-10m", 6000, 0.5),  # (6000 − 1000) / 10000
    ("sentinel2-l2a-20m", 1000, 0.0),  # the BOA_ADD_OFFSET itself is reflectance 0
    ("landsat89-oli", 25455, 0.5000125),  # 25455 × 0.0000275 − 0.2
    ("landsat7-etm", 7273, 0.0000075),  # 7273 × 0.0000275 − 0.2
]


def test_every_preset_is_in_the_table() -> None:
    assert sorted(PRESETS) == sorted(name for name, _ in PRESET_TABLE)


@pytest.mark.parametrize(("name", "bands"), PRESET_TABLE)
def test_preset_band_order(name: str, bands: tuple[str, ...]) -> None:
    assert resolve_band_map(name).bands == bands
    assert resolve_band_map(name.upper()).preset == name  # names are case-insensitive


@pytest.mark.parametrize(("name", "dn", "reflectance"), SCALING_TABLE)
def test_preset_scaling(name: str, dn: int, reflectance: float) -> None:
    scaled = resolve_band_map(name).scaling_for(np.dtype(np.uint16)).apply(np.array([dn], dtype=np.uint16))
    assert scaled.dtype == np.float32
    assert scaled[0] == pytest.approx(reflectance, abs=2e-6)


def test_satellite_presets_declare_zero_nodata_and_drones_none() -> None:
    assert {n: p.nodata for n, p in PRESETS.items() if p.nodata is not None} == {
        "sentinel2-l2a-10m": 0.0,
        "sentinel2-l2a-20m": 0.0,
        "landsat89-oli": 0.0,
        "landsat7-etm": 0.0,
    }


def test_float_rasters_are_taken_as_reflectance() -> None:
    data = np.array([0.25, 0.75], dtype=np.float32)
    assert np.array_equal(resolve_band_map("dji-p4m").scaling_for(data.dtype).apply(data), data)


@pytest.mark.parametrize("name", [n for n, _ in PRESET_TABLE])
def test_ndvi_through_each_preset_reads_nir_and_red(name: str) -> None:
    band_map = resolve_band_map(name)
    # every band 0.1 except nir 0.5 and red 0.1 → NDVI = (0.5 − 0.1) / 0.6 = 2/3
    data = np.full((len(band_map.bands), 2, 2), 0.1, dtype=np.float32)
    data[band_map.bands.index("nir")] = 0.5
    raster = Reflectance(data, band_map.bands, np.ones((2, 2), bool), Georef.pixels())
    values, ok = compute_index(raster, "ndvi")
    assert ok.all()
    assert values[0, 0] == pytest.approx(2 / 3, rel=1e-6)


def test_ndre_on_p4m_reads_band_4_and_5() -> None:
    # DJI P4M order B, G, R, RE, NIR: RE = band 4 (0.3), NIR = band 5 (0.6) → (0.6 − 0.3) / 0.9
    data = np.stack([np.full((1, 1), v, np.float32) for v in (0.05, 0.1, 0.08, 0.3, 0.6)])
    raster = Reflectance(data, resolve_band_map("dji-p4m").bands, np.ones((1, 1), bool), Georef.pixels())
    assert compute_index(raster, "ndre")[0][0, 0] == pytest.approx(1 / 3, rel=1e-6)


def test_explicit_list_canonicalises_and_scales_by_dtype() -> None:
    band_map = resolve_band_map("Blue, Green, Red, NIR, RedEdge,swir1")
    assert band_map.bands == ("blue", "green", "red", "nir", "red_edge", "swir1")
    assert band_map.preset is None
    assert band_map.scaling_for(np.dtype(np.uint8)) == Scaling(scale=1 / 255)
    assert band_map.scaling_for(np.dtype(np.uint16)) == Scaling(scale=1 / 65535)
    assert resolve_band_map(["r", "n"]).bands == ("red", "nir")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("micasense", "unknown_band_map"),
        ("", "bad_band_map"),
        (",,", "bad_band_map"),
        ("red,nir,Red", "bad_band_map"),
        ([], "bad_band_map"),
    ],
)
def test_bad_band_maps_are_refused(value: str | list[str], reason: str) -> None:
    with pytest.raises(InvalidInput) as err:
        resolve_band_map(value)
    assert err.value.reason == reason
    assert err.value.fix


def test_band_map_index_of() -> None:
    assert BandMap(("green", "red", "nir"), None).index_of("NIR") == 2
    assert BandMap(("green", "red", "nir"), None).index_of("blue") is None
