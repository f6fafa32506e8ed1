"""The pipeline worker: batches in → done / rejected / failed, DLQ, idempotency, retries, status file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from keeneye.domain import ObservationStatus
from keeneye.models.bundle import ModelBundle
from keeneye.pipelines import quarantine_key
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import open_object_store, open_results_db
from keeneye.stream import (
    Ingestor,
    PipelineWorker,
    UtilizationWindow,
    dlq_topic,
    input_topic,
    open_bus,
    output_topic,
    status_dir,
)
from keeneye.stream.messages import ObservationMessage, publish_observation
from tests.serving_support import SPECIES, fast_registry_store, jpeg, register_species_model, species_manifest
from tests.unit.stream.stream_support import bus_url, drain, publish_raw, run_until, stream_settings

__all__ = ["bus_url"]


def statuses(settings: Settings, ids: list[str]) -> list[str]:
    db = open_results_db(settings)
    return [str(db.get_observation(i).status) for i in ids]  # type: ignore[union-attr]


def started_worker(settings: Settings, name: str, **kwargs: object) -> PipelineWorker:
    worker = PipelineWorker(settings, name, **kwargs)  # type: ignore[arg-type]
    worker.setup()
    return worker


def test_batch_in_all_done_once_results_out(tmp_path: Path, bus_url: str) -> None:
    settings, name = stream_settings(tmp_path, bus_url)
    register_species_model(settings, tmp_path)
    ingestor = Ingestor(settings)
    ids = [ingestor.accept(name, jpeg(seed=i), {"i": i}).id for i in range(20)]
    worker = started_worker(settings, name, batch_size=8)
    try:
        run_until(worker, lambda: worker.counts["done"] >= 20)
        worker.write_status(force=True)
        status = json.loads(worker.status_path.read_text())  # type: ignore[union-attr]
    finally:
        worker.teardown()
    db = open_results_db(settings)
    assert statuses(settings, ids) == ["done"] * 20
    assert db.count_predictions(name) == 20
    for i in ids:
        (pred,) = db.predictions_for(i)
        assert pred.result["predicted_class"] in {s for s, _ in SPECIES}
        assert pred.model_name == "species-id"
    assert status["pipeline"] == name and status["pid"] == os.getpid() and status["done"] == 20
    assert 0.0 < status["busy_fraction"] <= 1.0

    bus = open_bus(settings)
    with bus.subscribe([output_topic(name)], "test-out") as consumer:
        out = [json.loads(m.value) for m in drain(consumer, 20)]
    bus.close()
    assert sorted(o["id"] for o in out) == sorted(ids)
    assert {o["model_version"] for o in out} == {"1"}
    assert all(o["result"]["task"] == "classify" for o in out)


def test_poison_and_unknown_pipeline_are_dead_lettered(tmp_path: Path, bus_url: str) -> None:
    settings, name = stream_settings(tmp_path, bus_url)
    register_species_model(settings, tmp_path)
    bus = open_bus(settings)
    publish_raw(bus, input_topic(name), os.urandom(256))  # poison: random bytes, no headers
    headers = {"observation_id": "abc123", "pipeline": "no-such-pipeline", "content_hash": "0" * 64}
    publish_raw(bus, input_topic(name), jpeg(), headers | {"content_type": "image/jpeg"})
    publish_raw(bus, input_topic(name), jpeg(), headers | {"pipeline": name, "content_type": "image/jpeg",
                                                           "metadata": "{not json"})  # fmt: skip
    good = Ingestor(settings).accept(name, jpeg(seed=9)).id
    worker = started_worker(settings, name)
    try:
        run_until(worker, lambda: worker.counts["done"] == 1 and worker.counts["dead_lettered"] == 3)
    finally:
        worker.teardown()
    assert statuses(settings, [good]) == ["done"]
    with bus.subscribe([dlq_topic(name)], "test-dlq") as consumer:
        reasons = sorted((m.header("reason") or "").split(":")[0] for m in drain(consumer, 3))
    bus.close()
    assert reasons == ["bad_metadata", "missing_headers", "unknown_pipeline"]


def test_corrupt_image_is_rejected_and_quarantined(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    register_species_model(settings, tmp_path)
    corrupt = jpeg()[:200]  # passes the magic-byte check at the door, fails to decode
    accepted = Ingestor(settings).accept(name, corrupt)
    worker = started_worker(settings, name)
    try:
        run_until(worker, lambda: worker.counts["rejected"] == 1)
    finally:
        worker.teardown()
    row = open_results_db(settings).get_observation(accepted.id)
    assert row is not None and row.status is ObservationStatus.rejected
    assert row.reason is not None and row.reason.startswith(("corrupt", "truncated"))
    assert open_object_store(settings).get(quarantine_key(name, accepted.content_hash)) == corrupt
    assert open_results_db(settings).count_predictions(name) == 0
    assert open_bus(settings).lag(input_topic(name), "keeneye-workers") == 0  # acked


def test_redelivery_of_a_done_observation_records_nothing_new(tmp_path: Path, bus_url: str) -> None:
    settings, name = stream_settings(tmp_path, bus_url)
    register_species_model(settings, tmp_path)
    ingestor = Ingestor(settings)
    data = jpeg(seed=11)
    accepted = ingestor.accept(name, data)
    worker = started_worker(settings, name)
    try:
        run_until(worker, lambda: worker.counts["done"] == 1)
        row = open_results_db(settings).get_observation(accepted.id)
        assert row is not None
        msg = ObservationMessage(accepted.id, name, row.content_hash, "image/jpeg", {}, data, row.object_key)
        for _ in range(2):  # a redelivery and a reconciler duplicate
            publish_observation(ingestor.bus, msg)
        ingestor.bus.flush()
        run_until(worker, lambda: worker.counts["skipped"] == 2)
    finally:
        worker.teardown()
    assert open_results_db(settings).count_predictions(name) == 1
    assert worker.counts["done"] == 1


def _failing_classifier() -> bytes:
    """Logits like tiny_classifier, plus a Gather whose index is max(input) × 100: zeros (the warm-up)
    pass, any real image indexes out of bounds and ONNX Runtime raises at run time."""
    nc, c = len(SPECIES), 3
    w = numpy_helper.from_array(np.ones((nc, c), np.float32), "W")
    b = numpy_helper.from_array(np.zeros(nc, np.float32), "b")
    table = numpy_helper.from_array(np.zeros(1, np.float32), "table")
    hundred = numpy_helper.from_array(np.array(100.0, np.float32), "hundred")
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "W", "b"], ["raw"], transB=1),
        helper.make_node("ReduceMax", ["images"], ["mx"], keepdims=0),
        helper.make_node("Abs", ["mx"], ["amx"]),
        helper.make_node("Mul", ["amx", "hundred"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "idx"], ["offset"], axis=0),
        helper.make_node("Add", ["raw", "offset"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "failing",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", c, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", nc])],
        [w, b, table, hundred],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_model_failure_is_retried_then_failed_and_dead_lettered(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path, max_attempts=3, retry_backoff_max_seconds=0.2)
    fast_registry_store(settings)
    bundle = ModelBundle.write(tmp_path / "failing", _failing_classifier(), species_manifest())
    db = open_results_db(settings)
    ModelRegistry(settings, events=db).register("species-id", bundle, alias="champion", gates_passed=True)
    accepted = Ingestor(settings).accept(name, jpeg(seed=12))
    worker = started_worker(settings, name)
    try:
        run_until(worker, lambda: worker.counts["failed"] == 1)
    finally:
        worker.teardown()
    row = db.get_observation(accepted.id)
    assert row is not None and row.status is ObservationStatus.failed
    assert row.attempts == 3
    assert row.reason is not None and row.reason.startswith("failed after 3 attempts:")
    assert worker.counts["retried"] == 2
    assert db.count_predictions(name) == 0
    bus = open_bus(settings)
    with bus.subscribe([dlq_topic(name)], "test-dlq") as consumer:
        (dead,) = drain(consumer, 1)
    assert dead.header("observation_id") == accepted.id
    assert (dead.header("reason") or "").startswith("failed after 3 attempts:")
    assert bus.lag(input_topic(name), "keeneye-workers") == 0


def test_worker_refuses_an_unknown_pipeline(tmp_path: Path) -> None:
    from keeneye.domain import NotFound

    settings, _ = stream_settings(tmp_path)
    with pytest.raises(NotFound, match="nope"):
        PipelineWorker(settings, "nope").setup()


def test_stop_event_ends_run_and_removes_the_status_file(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    worker = PipelineWorker(settings, name)
    worker.stop()  # stopped before the first step: run() sets up, writes status, tears down
    worker.run(handle_signals=False)
    assert worker.status_path is not None and worker.status_path.parent == status_dir(settings)
    assert not worker.status_path.exists()


def test_utilization_window_measures_busy_fraction() -> None:
    window = UtilizationWindow(window_seconds=10.0)
    with window.busy():
        time.sleep(0.2)
    time.sleep(0.2)
    assert 0.35 < window.fraction() < 0.65
    assert window.fraction(now=time.monotonic() + 20) == 0.0
