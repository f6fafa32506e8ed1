"""The pipeline worker: batches in → done / rejected / failed, DLQ, idempotency, retries, status file."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from keeneye.domain import ObservationStatus, Variant
from keeneye.models.bundle import ModelBundle
from keeneye.pipelines import quarantine_key
from keeneye.registry import ModelRegistry
from keeneye.settings import InferenceSettings, Settings
from keeneye.store import Completion, NewPrediction, open_object_store, open_results_db
from keeneye.stream import (
    Ingestor,
    PipelineWorker,
    dlq_topic,
    input_topic,
    open_bus,
    output_topic,
    status_dir,
)
from keeneye.stream import threads as threads_module
from keeneye.stream.messages import ObservationMessage, publish_observation
from keeneye.stream.threads import model_threads
from keeneye.workers import UtilizationWindow
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


def metric(worker: PipelineWorker, name: str, **labels: str) -> float:
    """A sample of the worker's metrics (0 when the series was never touched)."""
    value = worker.metrics.registry.get_sample_value(name, {"pipeline": worker.pipeline, **labels})
    return 0.0 if value is None else value


def settled(worker: PipelineWorker) -> dict[str, float]:
    return {s: metric(worker, "keeneye_observations_total", status=s) for s in ("done", "rejected", "failed")}


def test_batch_in_all_done_once_results_out(tmp_path: Path, bus_url: str) -> None:
    settings, name = stream_settings(tmp_path, bus_url)
    register_species_model(settings, tmp_path)
    ingestor = Ingestor(settings)
    # The last two: colours the tiny random classifier is unsure of (for the review-queue check).
    images = [jpeg(seed=i) for i in range(18)] + [
        jpeg((90, 120, 150), seed=11),
        jpeg((90, 120, 150), seed=12),
    ]
    ids = [ingestor.accept(name, data, {"i": i}).id for i, data in enumerate(images)]
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
    assert settled(worker) == {"done": 20, "rejected": 0, "failed": 0}
    # accepted → stored, one sample per result; each is at least the time its row waited in the test
    assert metric(worker, "keeneye_observation_seconds_count") == 20
    latencies = [
        (row.completed_at - row.created_at).total_seconds()
        for row in (db.get_observation(i) for i in ids)
        if row is not None and row.completed_at is not None
    ]
    assert metric(worker, "keeneye_observation_seconds_sum") >= sum(latencies) > 0
    assert all(worker.stage_seconds[s] > 0 for s in ("claim", "decode", "infer", "post", "store", "publish"))
    # Uncertain answers (top-1 below 0.6, or within 0.1 of the runner-up) wait in the review queue.
    from keeneye.lifecycle.labels import review_queue

    def uncertain(result: dict[str, object]) -> bool:
        top = [float(p["probability"]) for p in result["top_3_predictions"]]  # type: ignore[attr-defined]
        return top[0] < 0.6 or top[0] - top[1] < 0.1

    expected = {i for i in ids if uncertain(db.predictions_for(i)[0].result)}
    entries = {e.observation_id: e for e in review_queue(db, name, limit=100)}
    assert expected and expected <= set(entries), "the random classifier should be unsure of some images"
    assert all("audit" in entries[i].reasons for i in set(entries) - expected)  # the rest: audit sample

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
    for reason in reasons:
        assert metric(worker, "keeneye_dead_letters_total", reason=reason) == 1, reason
    assert settled(worker) == {"done": 1, "rejected": 0, "failed": 0}  # a dead letter is no observation


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
    assert settled(worker) == {"done": 0, "rejected": 1, "failed": 0}
    assert metric(worker, "keeneye_observation_seconds_count") == 0  # only done ones are timed


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
    assert settled(worker) == {"done": 1, "rejected": 0, "failed": 0}  # skipped duplicates count nothing


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
    return bytes(model.SerializeToString())


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
    assert settled(worker) == {"done": 0, "rejected": 0, "failed": 1}
    assert metric(worker, "keeneye_dead_letters_total", reason="max_attempts") == 1


@contextlib.contextmanager
def model_held(worker: PipelineWorker) -> Iterator[None]:
    """Keep every model thread of ``worker`` busy until the block ends, so batches handed to the model
    stay there (deterministically) while the test looks at the worker."""
    gate = threading.Event()
    for _ in range(worker.model_runs):
        worker._model_threads.submit(gate.wait)
    try:
        yield
    finally:
        gate.set()


def test_batches_at_the_model_are_settled_later_and_by_teardown(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    register_species_model(settings, tmp_path)
    ids = [Ingestor(settings).accept(name, jpeg(seed=30 + i)).id for i in range(3)]
    worker = started_worker(settings, name, batch_size=8)
    try:
        with model_held(worker):
            worker.step()  # takes the three in and hands them to the model, which is busy
            assert worker.counts["done"] == 0
            assert statuses(settings, ids) == ["processing"] * 3
    finally:
        worker.teardown()  # drains: the batch at the model is stored, announced and acked
    assert worker.counts["done"] == 3
    assert statuses(settings, ids) == ["done"] * 3
    assert open_bus(settings).lag(input_topic(name), "keeneye-workers") == 0


def test_a_duplicate_of_an_observation_at_the_model_is_skipped(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    register_species_model(settings, tmp_path)
    ingestor = Ingestor(settings)
    data = jpeg(seed=40)
    accepted = ingestor.accept(name, data)
    worker = started_worker(settings, name)
    try:
        with model_held(worker):
            worker.step()  # the observation is claimed and at the model
            row = open_results_db(settings).get_observation(accepted.id)
            assert row is not None and row.status is ObservationStatus.processing
            msg = ObservationMessage(
                accepted.id, name, row.content_hash, "image/jpeg", {}, data, row.object_key
            )
            publish_observation(ingestor.bus, msg)  # a reconciler duplicate arrives meanwhile
            ingestor.bus.flush()
            worker.step()  # takes the duplicate
            assert (worker.counts["done"], worker.counts["skipped"]) == (0, 1)
        run_until(worker, lambda: worker.counts["done"] == 1)
    finally:
        worker.teardown()
    row = open_results_db(settings).get_observation(accepted.id)
    assert row is not None and row.status is ObservationStatus.done
    assert row.attempts == 1  # claimed once: the duplicate never reached the database
    assert open_results_db(settings).count_predictions(name) == 1
    assert open_bus(settings).lag(input_topic(name), "keeneye-workers") == 0


def test_an_observation_finished_by_another_worker_meanwhile_keeps_that_answer(tmp_path: Path) -> None:
    """Two workers held one message (a Kafka rebalance moved its partition while the first had it at
    the model) and the alias moved between their runs: the later completion adds no second answer,
    and what it announces is the stored one (found by tests/integration/test_many_processes.py's
    scenario)."""
    settings, name = stream_settings(tmp_path)
    register_species_model(settings, tmp_path)
    accepted = Ingestor(settings).accept(name, jpeg(seed=41))
    db = open_results_db(settings)
    worker = started_worker(settings, name)
    try:
        with model_held(worker):
            worker.step()  # claimed and at the model
            theirs = NewPrediction(
                "species-id", "99", Variant.champion, "classify", {"predicted_class": "esox_lucius"},
                None, 0.9, 5.0,
            )  # fmt: skip
            assert db.complete_many([Completion(accepted.id, name, theirs)]) == {accepted.id: True}
            finished_at = db.get_observation(accepted.id).completed_at  # type: ignore[union-attr]
        run_until(worker, lambda: worker.counts["skipped"] == 1)
    finally:
        worker.teardown()
    assert [p.model_version for p in db.predictions_for(accepted.id)] == ["99"]
    assert db.get_observation(accepted.id).completed_at == finished_at  # type: ignore[union-attr]
    assert worker.counts["done"] == 0
    assert settled(worker) == {"done": 0, "rejected": 0, "failed": 0}
    bus = open_bus(settings)
    assert bus.lag(input_topic(name), "keeneye-workers") == 0
    with bus.subscribe([output_topic(name)], "audit") as consumer:
        announced = [json.loads(m.value) for m in drain(consumer, 2, timeout=3)]
    assert [(a["id"], a["model_version"]) for a in announced] == [(accepted.id, "99")]


def test_one_model_run_at_a_time_gives_the_same_results(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    register_species_model(settings, tmp_path)
    ingestor = Ingestor(settings)
    ids = [ingestor.accept(name, jpeg(seed=50 + i)).id for i in range(10)]
    worker = started_worker(settings, name, batch_size=4, model_runs=1)
    try:
        run_until(worker, lambda: worker.counts["done"] == 10)
    finally:
        worker.teardown()
    assert statuses(settings, ids) == ["done"] * 10
    assert open_results_db(settings).count_predictions(name) == 10
    assert metric(worker, "keeneye_batch_size_count") == 3  # 4 + 4 + 2, one model run each


@pytest.mark.parametrize(
    ("configured", "cores", "runs", "expected"),
    [(0, 2, 2, 1), (0, 16, 2, 8), (0, 3, 2, 1), (0, 1, 2, 1), (0, 8, 1, 8), (6, 16, 2, 6)],
)
def test_model_threads_share_the_cores_between_runs(
    monkeypatch: pytest.MonkeyPatch, configured: int, cores: int, runs: int, expected: int
) -> None:
    monkeypatch.setattr(threads_module, "usable_cores", lambda: cores)
    settings = InferenceSettings(intra_op_threads=configured)
    assert model_threads(settings, runs).intra_op_threads == expected


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


def test_a_model_run_longer_than_the_lease_keeps_its_batch_claimed(tmp_path: Path, bus_url: str) -> None:
    """A run that outlasts the SQLite lease (1 s), Kafka's poll interval (6 s) and the reconciler's
    stale age (1.5 s) — what an orthomosaic does for minutes — is answered once: meanwhile no other
    member gets its message and the reconciler finds nothing stale; the commit at the end counts."""
    from keeneye.settings import BusSettings
    from keeneye.stream.reconciler import STALE_STATUSES

    kafka = bus_url.startswith("kafka")
    settings, name = stream_settings(tmp_path, bus_url, stale_after_seconds=1.5)
    settings = settings.model_copy(
        update={"bus": BusSettings(lease_seconds=1.0, session_timeout_ms=6000, max_poll_interval_ms=6000)}
    )
    register_species_model(settings, tmp_path)
    obs_id = Ingestor(settings).accept(name, jpeg(seed=3)).id
    slow = 9.0 if kafka else 3.5
    worker = started_worker(settings, name)
    real_run = worker._run_model

    at_model = threading.Event()

    def slow_run(items: list, loaded: object) -> float:  # type: ignore[type-arg]
        at_model.set()
        time.sleep(slow)
        return real_run(items, loaded)  # type: ignore[arg-type]

    worker._run_model = slow_run  # type: ignore[method-assign]
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # another member of the group and a reconciler, while the model works
        at_model.wait(30)
        bus, db = open_bus(settings), open_results_db(settings)
        rival = None if kafka else bus.subscribe([input_topic(name)], "keeneye-workers")
        while not stop.wait(0.25):
            if rival is not None:
                seen.extend(f"redelivered {m.offset}" for m in rival.poll(timeout=0))
            seen.extend(f"stale {i}" for i in db.claim_stale(name, 1.5, STALE_STATUSES))
        if rival is not None:
            rival.close()
        bus.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run_until(worker, lambda: worker.counts["done"] == 1, timeout=60)
    finally:
        stop.set()
        watcher.join()
        worker.teardown()
    assert seen == []
    assert worker.kept_alive >= int(slow / worker._keep_alive_every) - 1
    assert statuses(settings, [obs_id]) == ["done"]
    assert open_results_db(settings).count_predictions(name) == 1
    assert open_bus(settings).lag(input_topic(name), "keeneye-workers") == 0  # the commit counted
