"""Rollout in the stream worker: shadow answers stored beside the champion's (never published), and a
canary's share of observations — chosen by observation id — answered by the challenger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keeneye.domain import Variant
from keeneye.lifecycle.rollout import RolloutController
from keeneye.metrics import Metrics
from keeneye.pipelines import PipelineCatalog, choose_variant
from keeneye.registry import ModelRegistry
from keeneye.store import open_results_db
from keeneye.stream import Ingestor, PipelineWorker, open_bus
from keeneye.stream.messages import output_topic
from tests.serving_support import jpeg, register_species_model
from tests.unit.lifecycle.rollout_support import register_version
from tests.unit.stream.stream_support import drain, run_until, stream_settings

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def _work(worker: PipelineWorker, n: int) -> None:
    worker.setup()
    try:
        run_until(worker, lambda: worker.counts["done"] >= n)
    finally:
        worker.teardown()


def test_worker_runs_the_shadow_then_routes_the_canary_share(tmp_path: Path) -> None:
    settings, name = stream_settings(tmp_path)
    register_species_model(settings, tmp_path, seed=0)
    assert register_version(settings, tmp_path, seed=1) == "2"
    db = open_results_db(settings)
    controller = RolloutController(
        settings, db, ModelRegistry(settings, events=db), PipelineCatalog(settings), Metrics()
    )
    ingestor = Ingestor(settings)

    controller.start_shadow(name, version="2", actor="t")
    shadowed = [ingestor.accept(name, jpeg(seed=i), {}).id for i in range(12)]
    _work(PipelineWorker(settings, name, batch_size=5), 12)
    for obs_id in shadowed:
        stored = {(p.variant, p.model_version) for p in db.predictions_for(obs_id)}
        assert stored == {(Variant.champion, "1"), (Variant.shadow, "2")}
    bus = open_bus(settings)
    with bus.subscribe([output_topic(name)], "test-out") as consumer:
        published = [json.loads(m.value) for m in drain(consumer, 12)]
    assert sorted(o["id"] for o in published) == sorted(shadowed)
    assert {o["model_version"] for o in published} == {"1"}  # a shadow's answer is never announced

    record = controller.start_canary(name, share=0.5, actor="t")
    routed = [ingestor.accept(name, jpeg(seed=100 + i), {}).id for i in range(30)]
    worker = PipelineWorker(settings, name, batch_size=8)
    _work(worker, 30)
    expected = {i: choose_variant(record, i) for i in routed}
    assert 0 < sum(v is Variant.canary for v in expected.values()) < 30
    for obs_id in routed:
        (answer,) = db.predictions_for(obs_id)
        want = expected[obs_id]
        assert (answer.variant, answer.model_version) == (want, "2" if want is Variant.canary else "1")
    with bus.subscribe([output_topic(name)], "test-out") as consumer:
        announced = {o["id"]: o["model_version"] for o in (json.loads(m.value) for m in drain(consumer, 30))}
    bus.close()
    assert announced == {i: "2" if expected[i] is Variant.canary else "1" for i in routed}
    canary = sum(v is Variant.canary for v in expected.values())
    assert (
        worker.metrics.registry.get_sample_value(
            "keeneye_variant_predictions_total", {"pipeline": name, "variant": "canary"}
        )
        == canary
    )
