"""``keeneye ingest`` of crop-health multi-file captures (zips) and orthomosaics, answered by a stream
worker on the real SQLite bus and stored like any answer; ``keeneye predict`` storing a mosaic.

* a zipped capture ingested answers exactly as the same band files sent synchronously;
* nasty zips (traversal, bomb, too many members, not a zip) and a header claiming 100,000² px are
  ``rejected`` with their reason while the worker keeps answering;
* a mosaic — streamed into the object store from its file (over the upload limit) or stored as
  bytes (over the pixel limit) — is answered block by block: its zones and hectares are those
  ``keeneye predict`` prints, its index maps are stored as COGs the index routes serve, and it joins
  its field's history; ``keeneye predict`` stores a mosaic the same way unless ``--no-store``.
"""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
import yaml
from pydantic import SecretStr
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.domain import InvalidInput
from keeneye.fields import FieldBook
from keeneye.geo.capture import capture_key
from keeneye.pipelines import PipelineCatalog
from keeneye.pipelines.mosaic_jobs import index_map_key
from keeneye.settings import BusSettings, S3Settings, Settings, StreamSettings
from keeneye.store import open_object_store, open_results_db
from keeneye.store.retention import RetentionPolicy, run_retention
from keeneye.stream import Ingestor, PipelineWorker
from tests.serving_support import live_server
from tests.unit.fields.support import utm_box
from tests.unit.stream.stream_support import run_until

from .crop_support import (
    MICASENSE_SCALE,
    geotiff_bytes,
    huge_header_geotiff,
    micasense_field,
    register_crop_model,
)
from .mosaic_support import write_mosaic
from .test_crop_health_capture_api import _zip

MICA = {"band_map": "micasense-rededge-mx"}
W, H = 1200, 1000  # 0.05 m pixels from (500000 E, 5500000 N): 60 m × 50 m
BLIGHT = (400, 600, 200, 160)  # row, col, h, w: 32,000 px = 80 m²
X0, Y0 = 500_000.0, 5_500_000.0
FIELD = utm_box(X0 - 10, Y0 - 60, X0 + 70, Y0 + 10)  # covers the whole mosaic


def _settings(tmp: Path, **input_limits: int) -> Settings:
    """Embedded settings in ``tmp``; ``input_limits`` override the crop-health spec's input section
    (a user spec file, as an operator would write one)."""
    settings = Settings(
        home=tmp / "home",
        bus=BusSettings(lease_seconds=60.0, partitions=1),
        stream=StreamSettings(poll_timeout_seconds=0.1, reconcile_interval_seconds=3600.0),
    )
    if not input_limits:
        return settings
    spec = PipelineCatalog(settings).get("crop-health").model_dump(mode="json", exclude_none=True)
    spec["input"].update(input_limits)
    folder = tmp / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "crop-health.yaml").write_text(yaml.safe_dump(spec))
    return settings.model_copy(update={"pipelines": settings.pipelines.model_copy(update={"dirs": [folder]})})


def _cli(settings: Settings, *args: str) -> Any:
    """``keeneye ARGS --json`` in process, on ``settings``' home and pipeline folders; the JSON printed."""
    env = {"KEENEYE_HOME": str(settings.home), "COLUMNS": "200"}
    if settings.pipelines.dirs:
        env["KEENEYE_PIPELINES__DIRS"] = json.dumps([str(d) for d in settings.pipelines.dirs])
    result = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _answer_all(settings: Settings, expected: int) -> PipelineWorker:
    worker = PipelineWorker(settings, "crop-health")
    worker.setup()
    try:
        run_until(worker, lambda: worker.counts["done"] + worker.counts["rejected"] >= expected, timeout=240)
    finally:
        worker.teardown()
    return worker


def _band_files(folder: Path) -> list[Path]:
    """A MicaSense capture: IMG_0007_1.tif … _5.tif, one band each (256 × 320, a blight of 3,500 px)."""
    folder.mkdir(parents=True)
    stack = micasense_field(256, 320, blight=(40, 60, 50, 70))
    paths = []
    for k in range(5):
        path = folder / f"IMG_0007_{k + 1}.tif"
        path.write_bytes(geotiff_bytes(stack[k : k + 1]))
        paths.append(path)
    return paths


def _kinds(geo: Any, kind: str) -> list[Any]:
    return [f["properties"] for f in geo["zones"]["features"] if f["properties"]["kind"] == kind]


def test_band_files_are_grouped_into_captures_by_their_names() -> None:
    assert capture_key(Path("f/IMG_0001_3.tif")) == "f/IMG_0001_"
    assert capture_key(Path("f/IMG_0001_10.tif")) == "f/IMG_0001_"  # MicaSense Dual: bands 1–10
    assert capture_key(Path("f/DJI_0013.TIF")) == "f/DJI_001"  # DJI P4M: the counter's last digit
    assert capture_key(Path("f/DJI_0010.JPG")) is None  # the RGB preview
    assert capture_key(Path("f/odm_orthophoto.tif")) is None


def test_an_ingested_drone_folder_or_capture_zip_answers_as_the_synchronous_multi_file_upload(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    register_crop_model(settings, tmp_path)
    bands = _band_files(tmp_path / "IMG_0007")
    # synchronous: the band files of one request, packed as the API packs several `file` fields
    (sync,) = _cli(
        settings, "predict", "-p", "crop-health", "--metadata", json.dumps(MICA), str(bands[0].parent)
    )
    assert sync["image"]["bands"] == ["blue", "green", "red", "nir", "red_edge"]
    drop = tmp_path / "drop"
    (drop / "flight").mkdir(parents=True)
    (drop / "capture.zip").write_bytes(_zip({f"IMG_0007/{p.name}": p.read_bytes() for p in bands}))
    for band in bands:  # a drone folder: the capture's band files and the RGB preview
        (drop / "flight" / band.name).write_bytes(band.read_bytes())
    (drop / "flight" / "DJI_0010.JPG").write_bytes(b"\xff\xd8\xff preview")
    queued = _cli(settings, "ingest", str(drop), "-p", "crop-health", "--metadata", json.dumps(MICA))
    assert queued["refused"] == []
    ids = {a["file"]: a["id"] for a in queued["accepted"]}
    assert sorted(ids) == ["capture.zip", "flight/IMG_0007_*.tif"]
    worker = _answer_all(settings, 2)
    assert worker.counts["done"] == 2 and worker.counts["rejected"] == 0
    db = open_results_db(settings)
    zipped, folder = db.get_observation(ids["capture.zip"]), db.get_observation(ids["flight/IMG_0007_*.tif"])
    assert zipped is not None and folder is not None
    assert zipped.content_type == "application/zip" and (zipped.object_key or "").endswith(".zip")
    # the folder's band files are packed exactly as the synchronous upload packed them
    assert folder.content_hash == db.get_observation(sync["observation_id"]).content_hash
    (sync_blight,) = _kinds(sync["geo"], "disease")
    for observation in (zipped, folder):
        assert observation.status.value == "done"
        (prediction,) = db.predictions_for(observation.id)
        geo = prediction.result["geo"]
        assert geo["indices"] == sync["geo"]["indices"]
        assert geo["indices"]["ndvi"]["valid_px"] == 256 * 320
        (blight,) = _kinds(geo, "disease")
        assert blight["area_px"] == sync_blight["area_px"] == 3500
        assert blight["area_m2"] == pytest.approx(sync_blight["area_m2"])


def test_nasty_inputs_are_rejected_with_their_reason_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    register_crop_model(settings, tmp_path)
    bands = {p.name: p.read_bytes() for p in _band_files(tmp_path / "IMG_0007")}
    drop = tmp_path / "drop"
    drop.mkdir()
    nasty = {
        "a_slip.zip": _zip({**bands, "../../evil.tif": b"x"}),
        "b_bomb.zip": _zip({"IMG_0007_1.tif": b"\0" * (20 * 1024 * 1024)}, zipfile.ZIP_DEFLATED),
        "c_many.zip": _zip({f"IMG_{i}_1.tif": b"x" for i in range(40)}),
        "d_corrupt.zip": b"PK\x03\x04" + b"\x13" * 200,
        "e_huge.tif": huge_header_geotiff(100_000),
        "f_good.zip": _zip(bands),
    }
    for name, data in nasty.items():
        (drop / name).write_bytes(data)
    queued = _cli(settings, "ingest", str(drop), "-p", "crop-health", "--metadata", json.dumps(MICA))
    assert queued["refused"] == []
    ids = {a["file"]: a["id"] for a in queued["accepted"]}
    assert sorted(ids) == sorted(nasty)
    worker = _answer_all(settings, len(nasty))
    assert (worker.counts["done"], worker.counts["rejected"]) == (1, 5)
    db = open_results_db(settings)
    reasons = {}
    for name, obs_id in ids.items():
        row = db.get_observation(obs_id)
        assert row is not None
        reasons[name] = (row.status.value, (row.reason or "").split(":")[0])
    assert reasons == {
        "a_slip.zip": ("rejected", "zip_unsafe_path"),
        "b_bomb.zip": ("rejected", "zip_bomb"),
        "c_many.zip": ("rejected", "zip_too_many_members"),
        "d_corrupt.zip": ("rejected", "corrupt_zip"),
        "e_huge.tif": ("rejected", "mosaic_too_large"),
        "f_good.zip": ("done", ""),
    }
    # the door: a zip over the upload limit is refused before anything is stored
    ingestor = Ingestor(_settings(tmp_path / "small", max_upload_bytes=1024))
    with pytest.raises(InvalidInput) as err:
        ingestor.accept("crop-health", drop / "f_good.zip")
    assert (err.value.reason, err.value.status) == ("too_large", 413)


def test_an_ingested_mosaic_is_answered_in_blocks_and_stored_like_any_answer(tmp_path: Path) -> None:
    # over the upload limit (64 KiB): streamed into the store; the second over the pixel limit only
    settings = _settings(tmp_path, max_upload_bytes=64 * 1024, max_pixels=1_000_000)
    register_crop_model(settings, tmp_path)
    FieldBook(open_results_db(settings)).add(name="North", boundary=FIELD, field_id="north")
    drop = tmp_path / "drop"
    drop.mkdir()
    ortho = write_mosaic(drop / "ortho.tif", W, H, blight=BLIGHT, nodata_cols=40)
    assert ortho.stat().st_size > 64 * 1024
    meta = json.dumps({**MICA, "flight": "june"})
    printed = _cli(settings, "predict", "-p", "crop-health", "--no-store", "--metadata", meta, str(ortho))[0]
    assert "observation_id" not in printed and printed["mosaic"]["width"] == W
    queued = _cli(settings, "ingest", str(drop), "-p", "crop-health", "--metadata", meta)
    (accepted,) = queued["accepted"]
    worker = _answer_all(settings, 1)
    assert worker.counts["done"] == 1, worker.counts
    db = open_results_db(settings)
    row = db.get_observation(accepted["id"])
    assert row is not None and row.status.value == "done" and row.size_bytes == ortho.stat().st_size
    (prediction,) = db.predictions_for(accepted["id"])
    geo = prediction.result["geo"]
    assert prediction.result["image"]["width"] == W and prediction.result["image"]["height"] == H
    assert geo["zones"] == printed["geo"]["zones"] and geo["indices"] == printed["geo"]["indices"]
    (blight,) = _kinds(geo, "disease")
    assert blight["area_px"] == 32_000
    assert blight["area_ha"] == pytest.approx(32_000 * 0.05**2 / 10_000, rel=1e-3)
    # the field's history has the flight, its blight in hectares
    (flight,) = FieldBook(db).history("north")
    assert (flight.flight, flight.observation_id) == ("june", accepted["id"])
    assert flight.disease_ha["blight"] == pytest.approx(blight["area_ha"], rel=1e-3)
    # index maps: stored as COGs, served by the index routes without reading the mosaic again
    objects = open_object_store(settings)
    assert objects.exists(index_map_key("crop-health", accepted["id"], "ndvi"))
    with live_server(settings) as server:
        tif = httpx.get(f"{server.url}/v1/observations/{accepted['id']}/index/ndvi.tif", timeout=60)
        png = httpx.get(f"{server.url}/v1/observations/{accepted['id']}/index/ndvi.png?size=256", timeout=60)
    assert tif.status_code == 200, tif.text
    cog = tmp_path / "ndvi.tif"
    cog.write_bytes(tif.content)
    assert cog_validate(str(cog))[0]
    with rasterio.open(cog) as ds:
        assert (ds.width, ds.height, ds.crs.to_epsg()) == (W, H, 32633)
        ndvi = ds.read(1)
    red = np.round((0.15 - 0.1 * np.linspace(0, 1, W, dtype=np.float32)) * MICASENSE_SCALE)
    nir = np.round((0.3 + 0.3 * np.linspace(0, 1, W, dtype=np.float32)) * MICASENSE_SCALE)
    assert np.isnan(ndvi[:, :40]).all()
    np.testing.assert_allclose(ndvi[0, 40:], ((nir - red) / (nir + red))[40:], atol=1e-5)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    bounds = [float(v) for v in png.headers["x-keeneye-bounds"].split(",")]
    west, south, east, north = transform_bounds(
        "EPSG:32633", "EPSG:4326", X0, Y0 - H * 0.05, X0 + W * 0.05, Y0
    )
    assert bounds == pytest.approx([south, west, north, east], abs=1e-5)  # ~1 m: the warped grid
    # a mosaic larger than the object store may hold is refused at the door, with the fix
    small = settings.model_copy(
        update={"objects": settings.objects.model_copy(update={"max_object_bytes": 1024})}
    )
    with pytest.raises(InvalidInput) as err:
        Ingestor(small).accept("crop-health", ortho)
    assert (err.value.reason, err.value.status) == ("too_large", 413)
    assert "KEENEYE_OBJECTS__MAX_OBJECT_BYTES" in (err.value.fix or "")


def test_a_mosaic_under_the_upload_limit_but_over_the_pixel_limit_takes_the_mosaic_path(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, max_pixels=1_000_000)
    register_crop_model(settings, tmp_path)
    ortho = write_mosaic(tmp_path / "ortho.tif", W, H, blight=BLIGHT)
    accepted = Ingestor(settings).accept("crop-health", ortho.read_bytes(), MICA)
    worker = _answer_all(settings, 1)
    assert worker.counts["done"] == 1, worker.counts
    (prediction,) = open_results_db(settings).predictions_for(accepted.id)
    (blight,) = _kinds(prediction.result["geo"], "disease")
    assert blight["area_px"] == 32_000
    assert open_object_store(settings).exists(index_map_key("crop-health", accepted.id, "gndvi"))


def test_predict_stores_a_mosaic_with_its_index_maps_and_field_history(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_pixels=1_000_000)
    register_crop_model(settings, tmp_path)
    FieldBook(open_results_db(settings)).add(name="North", boundary=FIELD, field_id="north")
    ortho = write_mosaic(tmp_path / "ortho.tif", W, H, blight=BLIGHT)
    meta = json.dumps({**MICA, "flight": "july"})
    (printed,) = _cli(settings, "predict", "-p", "crop-health", "--metadata", meta, str(ortho))
    obs_id = printed["observation_id"]
    db = open_results_db(settings)
    row = db.get_observation(obs_id)
    assert row is not None and row.status.value == "done" and row.source == "cli"
    (prediction,) = db.predictions_for(obs_id)
    assert prediction.result["geo"] == printed["geo"]
    (flight,) = FieldBook(db).history("north")
    assert (flight.flight, flight.observation_id) == ("july", obs_id)
    (blight,) = _kinds(printed["geo"], "disease")
    assert flight.disease_ha["blight"] == pytest.approx(blight["area_ha"], rel=1e-3)
    objects = open_object_store(settings)
    assert (
        objects.exists(row.object_key or "")
        and objects.info(row.object_key or "").size == ortho.stat().st_size
    )
    for name in ("ndvi", "ndre", "gndvi"):
        assert objects.exists(index_map_key("crop-health", obs_id, name))
    # retention takes the index maps with the mosaic (a mosaic is never held for review)
    later = datetime.now(UTC) + timedelta(days=3)
    report = run_retention(db, objects, "crop-health", RetentionPolicy(raw_images_days=1), now=later)
    assert report.deleted == 1
    assert not objects.exists(row.object_key or "")
    assert list(objects.list(f"index-maps/crop-health/{obs_id}/")) == []


@pytest.mark.integration
def test_a_mosaic_in_an_s3_object_store_is_answered_from_a_temporary_copy(
    tmp_path: Path, s3_server: Any
) -> None:
    keys = SecretStr("test")  # moto accepts any credentials
    settings = _settings(tmp_path, max_upload_bytes=64 * 1024, max_pixels=1_000_000).model_copy(
        update={
            "objects_url": "s3://crop-mosaics/keeneye",
            "s3": S3Settings(endpoint_url=s3_server.endpoint_url, access_key_id=keys, secret_access_key=keys),
        }
    )
    register_crop_model(settings, tmp_path)
    ortho = write_mosaic(tmp_path / "ortho.tif", W, H, blight=BLIGHT)
    accepted = Ingestor(settings).accept("crop-health", ortho, MICA)
    assert accepted.by_reference and accepted.object_key.startswith("observations/crop-health/")
    worker = _answer_all(settings, 1)
    assert worker.counts["done"] == 1, worker.counts
    (prediction,) = open_results_db(settings).predictions_for(accepted.id)
    (blight,) = _kinds(prediction.result["geo"], "disease")
    assert blight["area_px"] == 32_000
    objects = open_object_store(settings)
    assert objects.uri(accepted.object_key).startswith("s3://")
    cog = objects.get(index_map_key("crop-health", accepted.id, "ndvi"))
    with rasterio.MemoryFile(cog) as mem, mem.open() as ds:
        assert (ds.width, ds.height) == (W, H) and ds.overviews(1)  # a COG, with overviews


def test_a_map_wider_than_a_view_gets_a_preview_that_the_png_route_draws(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_upload_bytes=16 * 1024, max_pixels=500_000)
    register_crop_model(settings, tmp_path)
    strip = write_mosaic(tmp_path / "strip.tif", 4400, 200)  # wider than PREVIEW_MAX_SIDE (2048)
    (printed,) = _cli(settings, "predict", "-p", "crop-health", "--metadata", json.dumps(MICA), str(strip))
    obs_id = printed["observation_id"]
    objects = open_object_store(settings)
    preview = objects.get(index_map_key("crop-health", obs_id, "ndvi", preview=True))
    with rasterio.MemoryFile(preview) as mem, mem.open() as ds:
        assert (ds.width, ds.height) == (2048, 93) and ds.crs.to_epsg() == 32633
        assert ds.transform.a == pytest.approx(0.05 * 4400 / 2048)
        ndvi = ds.read(1)
    assert float(np.nanmean(ndvi)) == pytest.approx(printed["geo"]["indices"]["ndvi"]["mean"], abs=1e-3)
    objects.delete(index_map_key("crop-health", obs_id, "ndvi"))  # the full map gone: the view still draws
    with live_server(settings) as server:
        png = httpx.get(f"{server.url}/v1/observations/{obs_id}/index/ndvi.png?size=1024", timeout=60)
        tif = httpx.get(f"{server.url}/v1/observations/{obs_id}/index/ndvi.tif", timeout=60)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert tif.status_code == 404 and tif.json()["detail"].endswith("is a mosaic without a stored ndvi map")
