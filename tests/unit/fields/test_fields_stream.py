"""The stream path records fields too: an ingested crop-health image (answered by a worker, asked in
the raster's own CRS) joins its field by overlap, exactly as an API answer does."""

from __future__ import annotations

from pathlib import Path

import pytest

from keeneye.fields import FieldBook
from keeneye.settings import BusSettings, Settings, StreamSettings
from keeneye.store import open_results_db
from keeneye.stream import Ingestor, PipelineWorker
from tests.unit.pipelines.crop_support import geotiff_bytes, micasense_field, register_crop_model
from tests.unit.stream.stream_support import run_until

from .support import FIELD_A, FIELD_B, HEIGHT, TRANSFORM_1M, WIDTH


def test_an_ingested_image_joins_its_field_through_the_worker(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        bus=BusSettings(lease_seconds=2.0, session_timeout_ms=6000, partitions=1),
        stream=StreamSettings(poll_timeout_seconds=0.1, reconcile_interval_seconds=3600.0),
    )
    register_crop_model(settings, tmp_path)
    book = FieldBook(open_results_db(settings))
    book.add(name="Field A", boundary=FIELD_A, field_id="a")
    book.add(name="Field B", boundary=FIELD_B, field_id="b")
    data = geotiff_bytes(micasense_field(HEIGHT, WIDTH, blight=(40, 60, 50, 70)), transform=TRANSFORM_1M)
    accepted = Ingestor(settings).accept(
        "crop-health", data, {"band_map": "micasense-rededge-mx", "crs": "native", "flight": "june"}
    )
    worker = PipelineWorker(settings, "crop-health")
    worker.setup()
    try:
        run_until(worker, lambda: worker.counts["done"] == 1, timeout=60)
    finally:
        worker.teardown()
    (flight,) = book.history("a")
    assert (flight.flight, flight.observation_id) == ("june", accepted.id)
    assert flight.joined_by == "overlap"
    assert flight.disease_ha == {"blight": pytest.approx(0.35 / 0.9996**2, rel=3e-3)}
    assert book.history("b") == []
