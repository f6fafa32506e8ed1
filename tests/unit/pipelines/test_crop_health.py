"""The crop-health pipeline on GeoTIFFs: band maps per request, per-tile inference at the model's
native size with stitching, disease + vigour zones in WGS84 or the native CRS, precise refusals."""

from __future__ import annotations

import asyncio
import math
import tracemalloc
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from keeneye.domain import Answer, GeoPart, InvalidInput, JsonObject, ModelRef, Variant
from keeneye.geo import tile_windows
from keeneye.metrics import Metrics
from keeneye.models import MicroBatcher, OnnxModel
from keeneye.pipelines import (
    LoadedModel,
    PipelineCatalog,
    PipelineSpec,
    answer_key,
    finish,
    prepare,
    prepare_for,
    run_model,
    run_tiles_sync,
)
from keeneye.pipelines.routing import ShadowRunner
from keeneye.settings import Settings
from keeneye.store import open_results_db
from tests.serving_support import tiff

from .crop_support import (
    MICASENSE,
    SIZE,
    crop_bundle,
    crop_manifest,
    geotiff_bytes,
    huge_header_geotiff,
    micasense_field,
)

REF = ModelRef("crop-health", "1", "champion")
MICA: JsonObject = {"band_map": "micasense-rededge-mx"}


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return PipelineCatalog(Settings()).get("crop-health")


class Recording:
    """The real ONNX model, remembering the shape of every batch it ran."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.shapes: list[tuple[int, ...]] = []

    def run(self, batch: npt.NDArray[np.generic]) -> list[npt.NDArray[np.generic]]:
        self.shapes.append(tuple(batch.shape))
        return self.model.run(batch)


def answer(
    spec: PipelineSpec,
    tmp_path: Path,
    data: bytes,
    metadata: JsonObject,
    channels: tuple[str, ...] = ("red", "nir"),
) -> tuple[Answer, Recording]:
    """prepare → run_model (a real micro-batcher over the real ONNX model) → finish."""
    settings = Settings(home=tmp_path / "home")
    bundle = crop_bundle(tmp_path / "bundle", channels)
    recording = Recording(OnnxModel(bundle, settings.inference))
    prepared = prepare(spec, bundle.manifest, data, settings, metadata)

    async def infer() -> list[npt.NDArray[np.generic]]:
        batcher = MicroBatcher(recording.run, max_batch=8, max_wait_ms=1.0)
        try:
            return await run_model(batcher, prepared)
        finally:
            await batcher.aclose()

    outputs = asyncio.run(infer())
    return finish(spec, bundle.manifest, REF, prepared, outputs), recording


def geo_of(result: Answer) -> GeoPart:
    assert result.parts.geo is not None
    return result.parts.geo


def test_a_2048_px_raster_runs_per_tile_at_the_models_size_and_zones_are_exact(
    spec: PipelineSpec, tmp_path: Path
) -> None:
    side = 2048
    data = geotiff_bytes(micasense_field(side, side, blight=(700, 1100, 300, 200)))
    result, recording = answer(spec, tmp_path, data, MICA)
    expected_tiles = len(list(tile_windows(side, side, size=SIZE, overlap=SIZE // 8)))
    assert expected_tiles == math.ceil(side / (SIZE - 2 * (SIZE // 8))) ** 2 == 484  # 96 px cores
    # every batch the model saw holds tiles at its native 128 × 128, never the whole image shrunk
    assert {s[1:] for s in recording.shapes} == {(2, SIZE, SIZE)}
    assert sum(s[0] for s in recording.shapes) == expected_tiles
    geo = geo_of(result)
    assert geo.model == {"ran": True, "reason": None, "missing_bands": [], "tiles": 484, "tile_size": 128}
    # one blight instance at full resolution: exactly the painted 300 × 200 px
    assert result.to_json()["count"] == 1
    assert result.areas_px is not None and result.areas_px.tolist() == [60_000.0]
    assert result.instances.boxes.tolist() == [[1100.0, 700.0, 1300.0, 1000.0]]
    disease = [f for f in geo.zones["features"] if f["properties"]["kind"] == "disease"]
    assert len(disease) == 1
    props = disease[0]["properties"]
    assert props["class"] == "blight" and props["area_px"] == 60_000
    # 0.05 m pixels: 60,000 px = 150 m² = 0.015 ha
    assert props["area_m2"] == pytest.approx(150.0, rel=1e-3)
    assert props["area_ha"] == pytest.approx(0.015, rel=1e-3)
    assert props["confidence"] is not None and props["confidence"] > 0.99
    assert props["severity"] is not None and 0 < props["severity"] <= 1
    assert geo.zones_crs == "EPSG:4326" and geo.crs == "EPSG:32633"
    assert result.image is not None and (result.image.width, result.image.height) == (side, side)


def test_zones_are_wgs84_by_default_and_native_on_request(spec: PipelineSpec, tmp_path: Path) -> None:
    data = geotiff_bytes(micasense_field(256, 320, blight=(40, 60, 50, 70)))
    wgs, _ = answer(spec, tmp_path / "a", data, MICA)
    native, _ = answer(spec, tmp_path / "b", data, {**MICA, "crs": "native"})
    g, n = geo_of(wgs), geo_of(native)
    assert (g.zones_crs, n.zones_crs) == ("EPSG:4326", "EPSG:32633")
    assert n.zones["crs"] == {"type": "name", "properties": {"name": "EPSG:32633"}}
    assert "crs" not in g.zones
    # UTM 33N easting 500,000 is the central meridian 15° E; 5,500,000 m north ≈ 49.6° N
    lon, lat = g.zones["features"][0]["geometry"]["coordinates"][0][0]
    assert 14.99 < lon < 15.01 and 49.6 < lat < 49.7
    x, y = n.zones["features"][0]["geometry"]["coordinates"][0][0]
    assert 500_000 <= x <= 500_016 and 5_499_987 <= y <= 5_500_000
    kinds = sorted(f["properties"]["kind"] for f in g.zones["features"])
    assert kinds.count("disease") == 1 and kinds.count("vigour") >= 3
    areas = [f["properties"]["area_ha"] for f in g.zones["features"] if f["properties"]["kind"] == "disease"]
    assert areas == [pytest.approx(50 * 70 * 0.0025 / 10_000, rel=1e-3)]
    # the same bytes asked in another CRS are another cached answer
    assert answer_key(spec, "h", MICA) != answer_key(spec, "h", {**MICA, "crs": "native"})


def test_a_model_needing_a_missing_band_still_answers_indices_and_vigour_zones(
    spec: PipelineSpec, tmp_path: Path
) -> None:
    # a Sentinel-2 10 m stack has no red edge; this model reads red_edge
    data = geotiff_bytes(micasense_field(96, 96, bands=4))
    result, recording = answer(
        spec, tmp_path, data, {"band_map": "blue,green,red,nir"}, channels=("red", "red_edge")
    )
    assert recording.shapes == []  # the model never ran
    geo = geo_of(result)
    assert geo.model is not None and geo.model["ran"] is False and geo.model["missing_bands"] == ["red_edge"]
    assert geo.model["reason"] == (
        "the model needs band red_edge; the image has blue, green, red, nir (band map blue,green,red,nir)"
    )
    assert set(geo.indices) == {"ndvi", "gndvi"}  # NDRE needs red edge too
    assert any("ndre" in n for n in geo.notes) and any("disease model not run" in n for n in geo.notes)
    assert {f["properties"]["kind"] for f in geo.zones["features"]} == {"vigour"}
    assert result.to_json()["count"] == 0
    doc = result.to_json()["geo"]
    assert doc["model"]["missing_bands"] == ["red_edge"]
    assert GeoPart.from_json(doc).model == geo.model  # stored answers keep it


def test_nodata_is_masked_out_of_the_model_and_the_statistics(spec: PipelineSpec, tmp_path: Path) -> None:
    stack = micasense_field(128, 128, blight=(10, 10, 30, 30))
    stack[:, :, 64:] = 0  # the eastern half is outside the flight
    data = geotiff_bytes(stack, nodata=0)
    result, _ = answer(spec, tmp_path, data, MICA)
    geo = geo_of(result)
    assert geo.indices["ndvi"]["valid_px"] == 128 * 64
    assert max(f["properties"]["area_px"] for f in geo.zones["features"]) <= 128 * 64


def test_camera_chooses_the_band_map(spec: PipelineSpec, tmp_path: Path) -> None:
    # the spec's dji-p4m row: B, G, R, RE, NIR (a preset by the same name scales DN differently)
    p4m = micasense_field(64, 64)[[0, 1, 2, 4, 3]]
    result, _ = answer(spec, tmp_path, geotiff_bytes(p4m), {"camera": "dji-p4m"})
    geo = geo_of(result)
    assert geo.bands == ("blue", "green", "red", "red_edge", "nir")
    assert set(geo.indices) == {"ndvi", "ndre", "gndvi"}


@pytest.mark.parametrize(
    ("data", "metadata", "reason", "status", "detail"),
    [
        pytest.param(
            lambda: geotiff_bytes(micasense_field(32, 32, bands=4)), MICA, "wrong_band_count", 422,
            "the image has 4 data bands; preset micasense-rededge-mx (blue,green,red,nir,red_edge) names 5",
            id="micasense-preset-on-4-bands",
        ),
        pytest.param(
            lambda: geotiff_bytes(micasense_field(32, 32)), {}, "wrong_band_count", 422,
            "the image has 5 data bands; pipeline band map nir,red_edge,red,green names 4",
            id="default-map-on-5-bands",
        ),
        pytest.param(
            lambda: geotiff_bytes(micasense_field(32, 32)), {"camera": "nikon"}, "unknown_camera", 422,
            "camera 'nikon' has no band map in pipeline 'crop-health'", id="unknown-camera",
        ),
        pytest.param(
            lambda: geotiff_bytes(micasense_field(32, 32)), {**MICA, "crs": "mercator"}, "bad_crs", 400,
            "crs 'mercator' is not one of wgs84, native", id="bad-crs",
        ),
        pytest.param(
            lambda: geotiff_bytes(micasense_field(32, 32)), {"band_map": "rgbn"}, "unknown_band_map", 422,
            "'rgbn' is neither a band-map preset nor a list of bands", id="unknown-preset",
        ),
        pytest.param(
            lambda: b"II*\x00" + b"\x00" * 64, MICA, "corrupt_raster", 422, None, id="corrupt",
        ),
    ],
)  # fmt: skip
def test_refusals_name_the_reason(
    spec: PipelineSpec,
    tmp_path: Path,
    data: object,
    metadata: JsonObject,
    reason: str,
    status: int,
    detail: str | None,
) -> None:
    assert callable(data)
    manifest = crop_manifest()
    with pytest.raises(InvalidInput) as caught:
        prepare(spec, manifest, data(), Settings(home=tmp_path), metadata)
    assert (caught.value.reason, caught.value.status) == (reason, status)
    if detail is not None:
        assert caught.value.message == detail


def test_a_header_claiming_100000_squared_is_refused_before_any_allocation(
    spec: PipelineSpec, tmp_path: Path
) -> None:
    data = huge_header_geotiff()
    assert len(data) < 4_000_000  # sparse: the header and tile index only
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as caught:
            prepare(spec, crop_manifest(), data, Settings(home=tmp_path), MICA)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (caught.value.reason, caught.value.status) == ("image_too_large", 413)
    assert caught.value.message == "100000×100000 px is over the 4,194,304 pixels one request may hold"
    assert peak < 8_000_000  # 10^10 px × 5 bands would be 100 GB
    assert MICASENSE[3] == "nir"


def test_stream_and_shadow_paths_retile_for_another_model_and_run_without_an_event_loop(
    spec: PipelineSpec, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home")
    small = crop_bundle(tmp_path / "small", size=64)
    big = crop_bundle(tmp_path / "big", size=SIZE)
    data = geotiff_bytes(micasense_field(200, 300, blight=(20, 30, 40, 50)))
    prepared = prepare(spec, small.manifest, data, settings, MICA)
    assert prepared.geo is not None and prepared.geo.batch().shape[1:] == (2, 64, 64)
    again = prepare_for(big.manifest, prepared)  # a challenger with another input size
    assert again.geo is not None and again.geo.batch().shape[1:] == (2, SIZE, SIZE)
    assert again.image is prepared.image  # no second decode
    for bundle, p in ((small, prepared), (big, again)):
        assert p.geo is not None
        outputs = run_tiles_sync(OnnxModel(bundle, settings.inference).run, p.geo)
        result = finish(spec, bundle.manifest, REF, p, outputs)
        assert result.areas_px is not None and result.areas_px.tolist() == [2000.0]


def test_a_multi_page_tiff_is_read_one_band_per_page_and_a_small_one_is_one_tile(
    spec: PipelineSpec, tmp_path: Path
) -> None:
    # tifffile writes a (bands, H, W) array as one page per band unless told planarconfig=separate
    stack = micasense_field(SIZE, 100, blight=(5, 5, 20, 30))
    data = tiff(stack, photometric="minisblack")
    result, recording = answer(spec, tmp_path, data, MICA)
    assert recording.shapes == [(1, 2, SIZE, SIZE)]  # 100 × 128 fits the model: one tile
    geo = geo_of(result)
    assert geo.bands == MICASENSE and geo.crs is None and geo.area_basis == "pixels"
    assert result.areas_px is not None and result.areas_px.tolist() == [600.0]


def test_the_api_shadow_run_reads_the_bytes_with_the_requests_band_map(
    spec: PipelineSpec, tmp_path: Path
) -> None:
    """A five-band MicaSense upload: without the request's band map the challenger would read it with
    the spec's four-band default and refuse it (wrong_band_count); with it, the shadow answer is stored."""
    settings = Settings(home=tmp_path / "home")
    db = open_results_db(settings)
    bundle = crop_bundle(tmp_path / "challenger")
    data = geotiff_bytes(micasense_field(200, 300, blight=(20, 30, 40, 50)))
    ids = [
        db.create_observation("crop-health", f"h{i}", None, "image/tiff", len(data), MICA, "api")
        for i in (1, 2)
    ]

    async def scenario() -> ShadowRunner:
        model = OnnxModel(bundle, settings.inference)
        batcher = MicroBatcher(model.run, max_batch=8, max_wait_ms=1.0)
        loaded = LoadedModel(
            ModelRef("crop-health", "2", "challenger"), bundle, model, batcher, "crop-health"
        )
        runner = ShadowRunner(settings, Metrics(), lambda: db, max_pending=4)
        try:
            assert runner.submit(spec, loaded, ids[0], data, MICA)
            assert runner.submit(spec, loaded, ids[1], data)  # no metadata: the spec's default bands
            await runner.aclose()
        finally:
            await batcher.aclose()
        return runner

    runner = asyncio.run(scenario())
    assert (runner.stored, runner.failed) == ({"crop-health": 1}, {"crop-health": 1})
    [stored] = db.predictions_for(ids[0])
    assert (stored.variant, stored.model_version) == (Variant.shadow, "2")
    assert [(i["class"], i["area_px"]) for i in stored.result["instances"]] == [("blight", 2000.0)]
    assert stored.result["image"]["bands"] == ["blue", "green", "red", "nir", "red_edge"]
    assert db.predictions_for(ids[1]) == []
