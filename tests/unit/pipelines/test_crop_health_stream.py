"""Crop health through the stream: the worker reads the observation's band map and runs the tiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from keeneye.settings import BusSettings, Settings, StreamSettings
from keeneye.store import open_results_db
from keeneye.stream import Ingestor, PipelineWorker
from tests.unit.stream.stream_support import run_until

from .crop_support import geotiff_bytes, micasense_field, register_crop_model


def test_the_worker_answers_the_geo_part_with_the_metadata_band_map(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        bus=BusSettings(lease_seconds=2.0, session_timeout_ms=6000, partitions=2),
        stream=StreamSettings(poll_timeout_seconds=0.1, reconcile_interval_seconds=3600.0),
    )
    register_crop_model(settings, tmp_path)
    data = geotiff_bytes(micasense_field(256, 320, blight=(40, 60, 50, 70)))
    ingest = Ingestor(settings)
    ok = ingest.accept("crop-health", data, {"band_map": "micasense-rededge-mx", "crs": "native"})
    refused = ingest.accept(
        "crop-health", geotiff_bytes(micasense_field(32, 32, bands=4)), {"camera": "micasense"}
    )
    worker = PipelineWorker(settings, "crop-health")
    worker.setup()
    try:
        run_until(worker, lambda: worker.counts["done"] + worker.counts["rejected"] == 2, timeout=60)
    finally:
        worker.teardown()
    db = open_results_db(settings)
    (prediction,) = db.predictions_for(ok.id)
    geo = prediction.result["geo"]
    assert geo["zones_crs"] == "EPSG:32633" and geo["model"]["ran"] is True and geo["model"]["tiles"] == 12
    (blight,) = [f for f in geo["zones"]["features"] if f["properties"]["kind"] == "disease"]
    assert blight["properties"]["area_m2"] == pytest.approx(3500 * 0.0025, rel=1e-3)
    row = db.get_observation(refused.id)
    assert row is not None and row.reason is not None
    assert row.reason.startswith("wrong_band_count"), row.reason
    assert "camera micasense (blue,green,red,nir,red_edge) names 5" in row.reason
