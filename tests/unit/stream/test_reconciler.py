"""The outbox reconciler: stale queued/processing rows are published again, once per claim."""

from __future__ import annotations

import time
from pathlib import Path

from keeneye.domain import ObservationStatus
from keeneye.settings import BusSettings
from keeneye.store import open_object_store, open_results_db
from keeneye.stream import Ingestor, Reconciler, input_topic, open_bus, parse_observation
from tests.serving_support import jpeg
from tests.unit.stream.stream_support import bus_url, drain, stream_settings

__all__ = ["bus_url"]


def test_stale_rows_are_republished_once_per_claim(tmp_path: Path, bus_url: str) -> None:
    settings, name = stream_settings(tmp_path, bus_url)
    ingestor = Ingestor(settings)
    # The API "died" between commit and publish: rows and objects exist, nothing is on the bus.
    stored = [ingestor.store(name, jpeg(seed=i), {"i": i}) for i in range(3)]
    db = open_results_db(settings)
    db.set_status(stored[0].observation_id, ObservationStatus.processing)  # a claim whose worker died
    ingestor.close()
    time.sleep(1.6)
    reconciler = Reconciler(settings, name, stale_after_seconds=1.5)
    claimed_at = time.monotonic()
    assert reconciler.run_once().republished == 3
    # Claimed: a row counts as fresh from its claim on. Judged with a window 1 s longer than the time
    # since the claim (publishing to a loaded Kafka can take longer than 1.5 s), which the rows' age
    # without the claim (≥ 1.6 s more) would still exceed.
    reconciler.stale_after = time.monotonic() - claimed_at + 1.0
    assert reconciler.run_once().republished == 0
    bus = open_bus(settings)
    with bus.subscribe([input_topic(name)], "test") as consumer:
        got = {m.header("observation_id"): parse_observation(m) for m in drain(consumer, 3)}
    assert set(got) == {m.observation_id for m in stored}
    for msg in stored:
        assert got[msg.observation_id].data == msg.data
        assert got[msg.observation_id].metadata == msg.metadata
    reconciler.close()
    bus.close()


def test_fresh_and_finished_rows_are_left_alone(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    ingestor = Ingestor(settings)
    done = ingestor.store(name, jpeg(seed=1)).observation_id
    open_results_db(settings).set_status(done, ObservationStatus.done)
    ingestor.store(name, jpeg(seed=2))  # fresh
    assert Reconciler(settings, name, stale_after_seconds=60).run_once().republished == 0
    time.sleep(0.1)
    assert Reconciler(settings, name, stale_after_seconds=0.05).run_once().republished == 1


def test_large_objects_go_by_reference_and_missing_ones_fail(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    settings = settings.model_copy(update={"bus": BusSettings(max_message_bytes=4096)})
    ingestor = Ingestor(settings)
    big = ingestor.store(name, jpeg(size=128, seed=3))
    gone = ingestor.store(name, jpeg(seed=4))
    open_object_store(settings).delete(gone.object_key or "")
    time.sleep(0.1)
    report = Reconciler(settings, name, stale_after_seconds=0.05).run_once()
    assert (report.republished, report.failed) == (1, 1)
    row = open_results_db(settings).get_observation(gone.observation_id)
    assert row is not None and row.status is ObservationStatus.failed
    assert row.reason is not None and row.reason.startswith("missing_object:")
    bus = open_bus(settings)
    with bus.subscribe([input_topic(name)], "test") as consumer:
        (msg,) = drain(consumer, 1)
    assert msg.value == b"" and msg.header("object_key") == big.object_key
