"""keeneye.geo.analysis + cog: the crop-health geo answer end to end, its JSON round trip, and COGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from keeneye.domain import (
    Answer,
    AnswerParts,
    ClassLabel,
    GeoPart,
    Instances,
    InvalidInput,
    ModelRef,
    Prediction,
    Task,
)
from keeneye.geo import (
    Georef,
    analyse_field,
    compute_index,
    read_raster,
    resolve_band_map,
    write_index_cog,
)

from .rasters import write_tif


def _p4m_field(h: int = 200, w: int = 240) -> np.ndarray:
    """DJI P4M order (B, G, R, RE, NIR), DN with black level 4096: NDVI rises west → east."""
    cols = np.arange(w, dtype=np.float64)[np.newaxis, :].repeat(h, axis=0)
    refl = {
        "blue": np.full((h, w), 0.04),
        "green": np.full((h, w), 0.08),
        "red": 0.15 - 0.1 * cols / (w - 1),
        "red_edge": np.full((h, w), 0.2),
        "nir": 0.3 + 0.3 * cols / (w - 1),
    }
    dn = [
        np.round(refl[b] * 65535 + 4096).astype(np.uint16)
        for b in ("blue", "green", "red", "red_edge", "nir")
    ]
    return np.stack(dn)


def test_analyse_field_answers_indices_crs_and_vigour_zones(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "p4m.tif", _p4m_field())
    geo = analyse_field(path, resolve_band_map("dji-p4m"))
    assert geo.crs == "EPSG:32633" and geo.zones_crs == "EPSG:4326" and geo.area_basis == "projected"
    assert set(geo.indices) == {"ndvi", "ndre", "gndvi"}
    # west edge NDVI (0.3 − 0.15)/0.45 = 1/3, east edge (0.6 − 0.05)/0.65 = 0.846
    assert geo.indices["ndvi"]["p10"] is not None and 0.33 < geo.indices["ndvi"]["p10"] < 0.5
    assert geo.indices["ndvi"]["p90"] is not None and 0.75 < geo.indices["ndvi"]["p90"] < 0.85
    assert geo.indices["ndvi"]["valid_px"] == 200 * 240
    assert geo.vigour_index == "ndvi"
    zones = geo.zones["features"]
    assert {f["properties"]["class"] for f in zones} == {"low", "medium", "high"}
    assert sum(f["properties"]["area_px"] for f in zones) == 200 * 240
    total_m2 = sum(f["properties"]["area_m2"] or 0.0 for f in zones)
    assert total_m2 == pytest.approx(200 * 240 * 0.0025, rel=0.01)
    assert geo.notes == []


def test_geo_part_round_trips_through_the_answer(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "p4m.tif", _p4m_field())
    geo = analyse_field(path, resolve_band_map("dji-p4m"), crs="native")
    answer = Answer(
        Prediction(Instances.empty((200, 240)), ModelRef("crop-health", "1"), Task.segment),
        (ClassLabel("rust", "Rust"),),
        parts=AnswerParts(geo=geo),
    )
    text = json.dumps(answer.to_json())  # plain JSON, nothing numpy-typed left
    doc = json.loads(text)
    assert doc["geo"]["crs"] == "EPSG:32633" and doc["geo"]["georeferenced"] is True
    back = Answer.from_stored(doc)
    assert back.parts.geo == geo
    assert back.parts.geo is not None
    assert back.parts.geo.zones["crs"] == {"type": "name", "properties": {"name": "EPSG:32633"}}
    # an answer without the part stays without it, both ways
    plain = Answer.from_stored({"task": "segment", "instances": []})
    assert plain.parts.geo is None and "geo" not in plain.to_json()


@pytest.mark.parametrize(
    "stored",
    [
        {"indices": "nope", "zones": 3, "area_basis": "lightyears", "bands": "rgb"},
        {"indices": {"ndvi": {"mean": 0.5}}, "zones": {"features": ["x", {"type": "Feature"}]}},
        {},
    ],
)
def test_malformed_stored_geo_reads_back_empty_not_crashing(stored: dict) -> None:
    geo = GeoPart.from_json(stored)
    assert geo.indices == {}  # an entry without valid_px is not index statistics
    assert geo.area_basis == "pixels" and geo.crs is None
    assert geo.zones["type"] == "FeatureCollection"
    assert all(isinstance(f, dict) for f in geo.zones["features"])


def test_missing_bands_leave_notes_not_errors(tmp_path: Path) -> None:
    rgb = np.full((3, 20, 20), 100, dtype=np.uint8)
    geo = analyse_field(write_tif(tmp_path / "rgb.tif", rgb, crs=None), resolve_band_map("red,green,blue"))
    assert geo.indices == {} and geo.vigour_index is None and geo.zones["features"] == []
    assert geo.crs is None and geo.area_basis == "pixels"
    assert any(n.startswith("ndvi: needs") for n in geo.notes)
    assert any("not georeferenced" in n and "GSD" in n for n in geo.notes)


def test_unknown_index_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        analyse_field(
            write_tif(tmp_path / "a.tif", _p4m_field(20, 20)), resolve_band_map("dji-p4m"), indices=("ndv1",)
        )
    assert err.value.reason == "unknown_index"


def test_index_map_as_cog(tmp_path: Path) -> None:
    src = write_tif(tmp_path / "p4m.tif", _p4m_field(600, 700))
    raster = read_raster(src, resolve_band_map("dji-p4m"))
    values, ok = compute_index(raster, "ndvi")
    ok[:50, :50] = False
    out = write_index_cog(values, ok, raster.georef, tmp_path / "ndvi.tif", name="ndvi")
    is_valid, errors, _warnings = cog_validate(str(out), quiet=True)
    assert is_valid and errors == []
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32633
        assert ds.transform == raster.georef.transform
        assert ds.descriptions == ("ndvi",)
        assert ds.overviews(1)  # a zoomed-out view needs no full read
        band = ds.read(1)
        assert np.isnan(band[:50, :50]).all()
        assert np.allclose(band[50:], values[50:], equal_nan=True)


def test_index_map_without_georeference_is_a_cog_on_the_pixel_grid(tmp_path: Path) -> None:
    values = np.linspace(-1, 1, 300 * 200, dtype=np.float32).reshape(300, 200)
    out = write_index_cog(values, values > -0.5, Georef.pixels(), tmp_path / "ndvi.tif", name="ndvi")
    assert cog_validate(str(out), quiet=True)[0]
    with rasterio.open(out) as ds:
        assert ds.crs is None
        band = ds.read(1)
    assert np.isnan(band[values <= -0.5]).all()
    assert np.array_equal(band[values > -0.5], values[values > -0.5])
