"""Rollout: routing by hash, the state machine and its audit trail, the runtime's challenger, and the
controller's automatic moves — on a real MLflow registry and a real SQLite results database."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keeneye.domain import InvalidInput, NotFound, ObservationStatus, Variant
from keeneye.imaging import content_hash
from keeneye.lifecycle.rollout import (
    RolloutPolicy,
    answers_agree,
    mean_instance_iou,
)
from keeneye.pipelines import ModelRuntime, choose_variant, finish, in_shadow_sample, prepare
from keeneye.settings import Settings
from keeneye.store import utcnow
from keeneye.store.rollouts import RolloutRecord, RolloutState, read_rollout
from tests.serving_support import jpeg
from tests.unit.lifecycle.rollout_support import (
    PIPELINE,
    World,
    answer,
    make_world,
    register_version,
    shadow_answer,
)
from tests.unit.lifecycle.support import as_answer, line_manifest, segment_result

# MLflow's SQL store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def _record(
    state: RolloutState, *, share: float = 0.1, sample: float = 1.0, challenger: str = "2"
) -> RolloutRecord:
    return RolloutRecord(PIPELINE, state, "1", challenger, share, sample, None, {}, None)


def _keys(n: int = 1000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> World:
    return make_world(settings, tmp_path, policy=RolloutPolicy(rollback_min_samples=10), min_samples=20)


# ---------------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------------


def test_canary_share_by_hash_is_near_the_setting_and_each_key_keeps_its_variant() -> None:
    keys = _keys()
    canary = _record(RolloutState.canary, share=0.1)
    chosen = [choose_variant(canary, k) for k in keys]
    assert 0.07 <= chosen.count(Variant.canary) / len(keys) <= 0.13
    assert [choose_variant(canary, k) for k in keys] == chosen  # same key, same variant
    # Another challenger gets another slice of the inputs, of the same size.
    other = [choose_variant(replace(canary, challenger_version="3"), k) for k in keys]
    assert other != chosen and 0.07 <= other.count(Variant.canary) / len(keys) <= 0.13


@pytest.mark.parametrize(
    "record",
    [None, _record(RolloutState.stable), _record(RolloutState.shadow), _record(RolloutState.canary, share=0)],
)
def test_only_a_canary_sends_keys_to_the_challenger(record: RolloutRecord | None) -> None:
    assert {choose_variant(record, k) for k in _keys(200)} == {Variant.champion}


@pytest.mark.parametrize(("sample", "low", "high"), [(0.25, 0.2, 0.3), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)])
def test_shadow_sample_share(sample: float, low: float, high: float) -> None:
    keys = _keys()
    shadow = _record(RolloutState.shadow, sample=sample)
    share = sum(in_shadow_sample(shadow, k) for k in keys) / len(keys)
    assert low <= share <= high
    assert not any(in_shadow_sample(_record(RolloutState.canary), k) for k in keys)


# ---------------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------------


def _boxes(*items: tuple[str, list[float], float]) -> dict[str, Any]:
    return {"instances": [{"class": c, "box": box, "score": s} for c, box, s in items]}


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        (_boxes(), _boxes(), 1.0),
        (_boxes(("scratch", [0, 0, 10, 10], 0.9)), _boxes(), 0.0),
        (_boxes(("scratch", [0, 0, 10, 10], 0.9)), _boxes(("scratch", [0, 0, 10, 10], 0.8)), 1.0),
        (_boxes(("scratch", [0, 0, 10, 10], 0.9)), _boxes(("scratch", [5, 0, 15, 10], 0.8)), 1 / 3),
        (_boxes(("scratch", [0, 0, 10, 10], 0.9)), _boxes(("dent", [0, 0, 10, 10], 0.8)), 0.0),
        (
            _boxes(("scratch", [0, 0, 10, 10], 0.9)),
            _boxes(("scratch", [0, 0, 10, 10], 0.9), ("dent", [20, 20, 30, 30], 0.7)),
            0.5,
        ),
    ],
)
def test_mean_instance_iou_pairs_same_class_instances(
    a: dict[str, Any], b: dict[str, Any], iou: float
) -> None:
    assert mean_instance_iou(as_answer(a), as_answer(b)) == pytest.approx(iou, abs=1e-6)
    assert mean_instance_iou(as_answer(b), as_answer(a)) == pytest.approx(iou, abs=1e-6)


def test_segment_answers_agree_on_masks() -> None:
    from keeneye.pipelines import PipelineCatalog

    spec = PipelineCatalog(Settings()).get("line-inspection")
    manifest = line_manifest()
    one = as_answer(segment_result(spec, manifest, [(1, (10, 10, 40, 40), 0.9)]))
    same = as_answer(segment_result(spec, manifest, [(1, (11, 10, 41, 40), 0.8)]))
    moved = as_answer(segment_result(spec, manifest, [(1, (30, 30, 60, 60), 0.8)]))
    assert mean_instance_iou(one, same) > 0.85
    assert answers_agree("instances", one, same)
    assert not answers_agree("instances", one, moved)
    assert answers_agree("ok-defect", as_answer({"decision": "DEFECT"}), as_answer({"decision": "DEFECT"}))
    assert not answers_agree("ok-defect", as_answer({"decision": "OK"}), as_answer({"decision": "DEFECT"}))
    assert answers_agree("classify", as_answer({"predicted_class": "a"}), as_answer({"predicted_class": "a"}))
    assert not answers_agree(
        "classify", as_answer({"predicted_class": "a"}), as_answer({"predicted_class": "b"})
    )


# ---------------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------------


def test_transitions_are_persisted_audited_and_published(world: World) -> None:
    c = world.controller
    assert c.status(PIPELINE).state is RolloutState.stable
    assert read_rollout(world.db, PIPELINE) is None

    shadow = c.start_shadow(PIPELINE, actor="cli:ana", reason="try v2")
    assert (shadow.state, shadow.champion_version, shadow.challenger_version) == (
        RolloutState.shadow,
        "1",
        "2",
    )
    assert shadow.shadow_sample == 1.0 and shadow.started_at == world.clock.now
    assert read_rollout(world.db, PIPELINE) == shadow
    assert (world.gauge("shadow"), world.gauge("stable"), world.gauge("canary")) == (1.0, 0.0, 0.0)

    canary = c.start_canary(PIPELINE, share=0.2, actor="cli:ana", reason="agrees")
    assert (canary.state, canary.canary_share, canary.challenger_version) == (RolloutState.canary, 0.2, "2")
    wider = c.start_canary(PIPELINE, share=0.5, actor="cli:ana")
    assert wider.canary_share == 0.5 and wider.started_at == canary.started_at
    assert world.gauge("canary") == 1.0

    promoted = c.promote(PIPELINE, actor="cli:ana", reason="looks good")
    assert (promoted.state, promoted.champion_version, promoted.challenger_version) == (
        RolloutState.stable, "2", None,
    )  # fmt: skip
    assert (world.alias("champion"), world.alias("previous"), world.alias("challenger")) == ("2", "1", None)
    assert world.gauge("stable") == 1.0

    events = world.rollout_events()  # newest first
    assert [e.event for e in events] == [
        "rollout_promoted",
        "rollout_canary",
        "rollout_canary",
        "rollout_shadow",
    ]
    assert (events[0].actor, events[0].reason, events[0].model_version, events[0].from_version) == (
        "cli:ana", "looks good", "2", "1",
    )  # fmt: skip
    assert events[1].details["from_share"] == 0.2 and events[1].details["state"] == "canary"
    assert "promoted" in [e.event for e in world.db.model_events(PIPELINE)]  # the registry's own event

    # Right after a promotion, abort gives the champion alias back (the registry's rollback).
    back = c.abort(PIPELINE, actor="cli:ana", reason="customers complain")
    assert back.state is RolloutState.stable and back.champion_version == "1"
    assert world.alias("champion") == "1"
    assert world.rollout_events()[0].event == "rollout_rolled_back"
    with pytest.raises(InvalidInput) as exc:
        c.abort(PIPELINE, actor="cli:ana", reason="again")
    assert (exc.value.reason, exc.value.status) == ("nothing_to_abort", 409)


def test_abort_keeps_the_champion_and_drops_the_challenger_alias(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t", sample=0.5)
    aborted = c.abort(PIPELINE, actor="t", reason="disagrees too often")
    assert (aborted.state, aborted.champion_version, aborted.challenger_version) == (
        RolloutState.stable,
        "1",
        None,
    )
    assert (world.alias("champion"), world.alias("challenger")) == ("1", None)
    assert world.rollout_events()[0].event == "rollout_aborted"
    assert world.rollout_events()[0].details["from_state"] == "shadow"
    with pytest.raises(InvalidInput) as exc:
        c.start_shadow(PIPELINE, actor="t")
    assert (exc.value.reason, exc.value.status) == ("no_challenger", 409)
    # Naming a version makes it the challenger again.
    assert c.start_shadow(PIPELINE, actor="t", version="2").challenger_version == "2"


@pytest.mark.parametrize(
    ("moves", "reason", "status"),
    [
        ([("promote", {})], "wrong_state", 409),
        ([("abort", {})], "nothing_to_abort", 409),
        ([("canary", {})], "skips_shadow", 409),
        ([("canary", {"force": True})], "reason_required", 422),
        ([("shadow", {}), ("shadow", {})], "wrong_state", 409),
        ([("shadow", {}), ("promote", {})], "wrong_state", 409),
        ([("shadow", {"version": "1"})], "same_version", 409),
        ([("shadow", {"sample": 1.5})], "bad_rollout", 422),
        ([("canary", {"share": 0.2, "sample": 0.5})], "bad_rollout", 422),
        ([("promote", {"version": "2"})], "bad_rollout", 422),
        ([("rocket", {})], "bad_rollout", 422),
    ],
)
def test_refused_moves_say_why(
    world: World, moves: list[tuple[str, dict[str, Any]]], reason: str, status: int
) -> None:
    *before, (action, kwargs) = moves
    for a, k in before:
        world.controller.apply(PIPELINE, a, actor="t", **k)
    with pytest.raises(InvalidInput) as exc:
        world.controller.apply(PIPELINE, action, actor="t", **kwargs)
    assert (exc.value.reason, exc.value.status) == (reason, status)


def test_a_challenger_whose_gates_failed_needs_force_and_a_reason(world: World, tmp_path: Path) -> None:
    bad = register_version(world.settings, tmp_path, seed=5, gates_passed=False)
    c = world.controller
    with pytest.raises(InvalidInput) as exc:
        c.start_shadow(PIPELINE, actor="t", version=bad)
    assert (exc.value.reason, exc.value.status) == ("refused", 409)
    assert "failed its quality gates" in exc.value.message
    with pytest.raises(NotFound):
        c.start_shadow("no-such-pipeline", actor="t")
    forced = c.start_canary(
        PIPELINE, version=bad, share=0.3, force=True, actor="t", reason="hotfix for line 3"
    )
    assert (forced.state, forced.challenger_version) == (RolloutState.canary, bad)


def test_a_stale_move_is_refused_not_applied(world: World) -> None:
    c = world.controller
    stale = c.status(PIPELINE)
    c.start_shadow(PIPELINE, actor="t")
    with pytest.raises(InvalidInput) as exc:
        c._move(stale, "rollout_shadow", actor="t", reason="race", details={}, state=RolloutState.canary)
    assert (exc.value.reason, exc.value.status) == ("rollout_conflict", 409)
    assert c.status(PIPELINE).state is RolloutState.shadow
    assert len(world.rollout_events()) == 1


# ---------------------------------------------------------------------------------------------------
# The controller's tick (fake clock)
# ---------------------------------------------------------------------------------------------------


def _shadow_pairs(world: World, agree: int, disagree: int) -> None:
    for i in range(agree + disagree):
        obs = answer(world.db, Variant.champion, "1", predicted="esox_lucius")
        shadow_answer(world.db, obs, "2", "esox_lucius" if i < agree else "perca_fluviatilis")


def test_shadow_moves_to_canary_once_enough_answers_agree(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t")
    _shadow_pairs(world, agree=14, disagree=1)
    (result,) = c.tick()
    assert (result.before, result.after, result.verdict.action) == (RolloutState.shadow,) * 2 + ("wait",)
    assert result.verdict.reasons == ("15 of 20 shadow answers compared",)

    _shadow_pairs(world, agree=5, disagree=0)  # 19 of 20 agree: 0.95
    (result,) = c.tick()
    assert (result.after, result.verdict.action) == (RolloutState.canary, "canary")
    assert world.metrics.registry.get_sample_value("keeneye_shadow_agreement", {"pipeline": PIPELINE}) == 0.95
    event = world.rollout_events()[0]
    assert (event.event, event.actor) == ("rollout_canary", "controller")
    assert event.details["evaluation"]["agreement"] == {"n": 20, "agreeing": 19, "share": 0.95}
    assert c.status(PIPELINE).canary_share == 0.1  # the spec's share


def test_shadow_that_disagrees_waits_for_a_person(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t")
    _shadow_pairs(world, agree=15, disagree=15)
    (result,) = c.tick()
    assert (result.after, result.verdict.action) == (RolloutState.shadow, "wait")
    assert "agreement 0.500 on 30 answers is below 0.9" in result.verdict.reason


def _canary_traffic(world: World, *, challenger: int, champion: int, challenger_ms: float = 10.0) -> None:
    rng = np.random.default_rng(0)
    for _ in range(challenger):
        answer(world.db, Variant.canary, "2", latency_ms=challenger_ms + float(rng.uniform(0, 2)))
    for _ in range(champion):
        answer(world.db, Variant.champion, "1", latency_ms=10.0 + float(rng.uniform(0, 2)))


def test_canary_is_promoted_after_min_samples_and_min_time(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t")
    c.start_canary(PIPELINE, actor="t")
    _canary_traffic(world, challenger=12, champion=110)
    world.clock.advance(minutes=11)
    (result,) = c.tick()
    assert (result.after, result.verdict.reasons) == (RolloutState.canary, ("12 of 20 challenger answers",))

    world.clock.advance(minutes=-6)  # back to 5 minutes in: enough answers, not enough time
    _canary_traffic(world, challenger=10, champion=90)
    (result,) = c.tick()
    assert (result.after, result.verdict.reasons) == (RolloutState.canary, ("300 of 600 s in canary",))

    world.clock.advance(minutes=6)
    (result,) = c.tick()
    assert (result.after, result.verdict.action) == (RolloutState.stable, "promote")
    assert (world.alias("champion"), world.alias("previous")) == ("2", "1")
    event = world.rollout_events()[0]
    assert (event.event, event.actor, event.model_version) == ("rollout_promoted", "controller", "2")
    variants = {v["variant"]: v for v in event.details["evaluation"]["variants"]}
    assert (variants["canary"]["predictions"], variants["champion"]["predictions"]) == (22, 200)
    assert world.gauge("stable") == 1.0


def test_slow_challenger_is_rolled_back_without_waiting(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t")
    c.start_canary(PIPELINE, actor="t")
    _canary_traffic(world, challenger=12, champion=100, challenger_ms=60.0)
    (result,) = c.tick()
    assert (result.after, result.verdict.action) == (RolloutState.stable, "rollback")
    assert "p95 latency" in result.verdict.reason
    assert (world.alias("champion"), world.alias("challenger")) == ("1", None)
    event = world.rollout_events()[0]
    assert (event.event, event.actor) == ("rollout_rolled_back", "controller")
    assert "p95 latency" in event.reason


def test_challenger_worse_on_feedback_is_rolled_back(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t")
    c.start_canary(PIPELINE, actor="t", share=0.5)
    for variant, version in ((Variant.champion, "1"), (Variant.canary, "2")):
        for i in range(24):
            truth = ("esox_lucius", "perca_fluviatilis")[i % 2]
            said = truth if variant is Variant.champion else "salmo_trutta"
            obs = answer(world.db, variant, version, predicted=said)
            world.db.add_feedback(obs, {"class": truth}, "test")
    world.clock.now = utcnow() + timedelta(minutes=1)  # the feedback window ends now
    (result,) = c.tick()
    assert (result.after, result.verdict.action) == (RolloutState.stable, "rollback")
    assert "online f1 0.000 on 24 labels is below the champion's 1.000" in result.verdict.reason


def test_failures_are_attributed_by_the_routing_hash(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t")
    record = c.start_canary(PIPELINE, actor="t")
    _canary_traffic(world, challenger=20, champion=180)
    failed = 0
    while failed < 5:  # stream observations that ended failed, routed to the canary by their id
        obs_id = uuid.uuid4().hex
        if choose_variant(record, obs_id) is Variant.canary:
            world.db.create_observation(
                PIPELINE,
                obs_id * 2,
                None,
                "image/jpeg",
                1,
                {},
                "bus",
                status=ObservationStatus.failed,
                id=obs_id,
            )
            failed += 1
    (result,) = c.tick()
    assert (result.after, result.verdict.action) == (RolloutState.stable, "rollback")
    assert result.verdict.reason.startswith("error rate 20.000% (5 failed) above the champion's 0.000%")


def test_a_challenger_that_stops_answering_is_rolled_back(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t")
    c.start_canary(PIPELINE, actor="t")
    _canary_traffic(world, challenger=1, champion=60)  # 10 % expected, 1.6 % answered
    (result,) = c.tick()
    assert (result.after, result.verdict.action) == (RolloutState.stable, "rollback")
    assert "its answers are failing" in result.verdict.reason


def test_automatic_moves_can_be_turned_off(settings: Settings, tmp_path: Path) -> None:
    world = make_world(settings, tmp_path, policy=RolloutPolicy(auto_rollback=False, rollback_min_samples=10))
    world.controller.start_shadow(PIPELINE, actor="t")
    world.controller.start_canary(PIPELINE, actor="t")
    _canary_traffic(world, challenger=12, champion=100, challenger_ms=60.0)
    (result,) = world.controller.tick()
    assert (result.after, result.verdict.action) == (RolloutState.canary, "rollback")
    assert world.alias("challenger") == "2"


def test_a_new_challenger_starts_its_shadow_run_and_an_aborted_one_does_not_return(world: World) -> None:
    c = world.controller
    (result,) = c.tick()  # v2 has the challenger alias (as a retraining run leaves it)
    assert (result.before, result.after, result.verdict.reasons) == (
        RolloutState.stable, RolloutState.shadow, ("new challenger v2",),
    )  # fmt: skip
    assert (world.rollout_events()[0].event, world.rollout_events()[0].actor) == (
        "rollout_shadow",
        "controller",
    )
    c.abort(PIPELINE, actor="cli:ana", reason="not now")
    assert c.tick() == [] and c.status(PIPELINE).state is RolloutState.stable
    assert world.gauge("stable") == 1.0


def test_no_automatic_shadow_when_turned_off(settings: Settings, tmp_path: Path) -> None:
    world = make_world(settings, tmp_path, policy=RolloutPolicy(auto_shadow=False))
    assert world.controller.tick() == []
    assert world.controller.status(PIPELINE).state is RolloutState.stable


def test_a_promotion_outside_the_rollout_ends_it(world: World) -> None:
    c = world.controller
    c.start_shadow(PIPELINE, actor="t")
    world.registry.promote(PIPELINE, "2", actor="cli:bob", reason="by hand")
    (result,) = c.tick()
    assert result.after is RolloutState.stable
    event = world.rollout_events()[0]
    assert (event.event, event.details["reconciled"]) == ("rollout_promoted", True)
    assert c.status(PIPELINE).champion_version == "2"


# ---------------------------------------------------------------------------------------------------
# The runtime: the challenger beside the champion
# ---------------------------------------------------------------------------------------------------


def test_runtime_loads_the_challenger_during_a_rollout_and_unloads_it_after(
    world: World, tmp_path: Path
) -> None:
    c = world.controller
    keys = _keys(400)

    async def scenario() -> None:
        runtime = ModelRuntime(world.settings, world.catalog, world.registry, world.metrics, db=world.db)
        await runtime.start(poll=False)
        try:
            assert runtime.challenger(PIPELINE) is None
            c.start_shadow(PIPELINE, actor="t")
            await runtime.refresh()
            challenger = runtime.challenger(PIPELINE)
            assert challenger is not None and challenger.ref.version == "2"
            # Shadow: the champion answers everything; the challenger runs on the side.
            assert {runtime.get_variant(PIPELINE, k)[1] for k in keys} == {Variant.champion}
            assert all(runtime.shadow_model(PIPELINE, k) is challenger for k in keys)

            c.start_canary(PIPELINE, actor="t", share=0.5)
            await runtime.refresh()
            routed = [runtime.get_variant(PIPELINE, k) for k in keys]
            canary = [m for m, v in routed if v is Variant.canary]
            assert 0.4 <= len(canary) / len(keys) <= 0.6 and all(m is challenger for m in canary)
            assert runtime.shadow_model(PIPELINE, keys[0]) is None

            c.promote(PIPELINE, actor="t", reason="good")
            await runtime.refresh()
            champion = runtime.get(PIPELINE)
            assert champion.ref.version == "2" and champion.batcher is challenger.batcher  # kept warm
            assert runtime.challenger(PIPELINE) is None

            v3 = register_version(world.settings, tmp_path, seed=3)
            c.start_shadow(PIPELINE, actor="t", version=v3)
            await runtime.refresh()
            third = runtime.challenger(PIPELINE)
            assert third is not None and third.ref.version == v3
            c.abort(PIPELINE, actor="t", reason="no")
            await runtime.refresh()
            assert runtime.challenger(PIPELINE) is None and runtime.rollout(PIPELINE) is not None
            assert runtime.get(PIPELINE).ref.version == "2"
        finally:
            await runtime.stop()

    asyncio.run(scenario())


def test_shadow_runs_store_a_shadow_prediction_and_a_full_queue_skips(world: World) -> None:
    spec = world.catalog.get(PIPELINE)
    images = [jpeg((30 * i % 255, 90, 160), seed=i) for i in range(3)]

    async def scenario() -> None:
        runtime = ModelRuntime(
            world.settings, world.catalog, world.registry, world.metrics, db=world.db, shadow_queue=1
        )
        await runtime.start(poll=False)
        try:
            world.controller.start_shadow(PIPELINE, actor="t")
            await runtime.refresh()
            observations = []
            for data in images:
                champion, variant = runtime.get_variant(PIPELINE, content_hash(data))
                prepared = prepare(spec, champion.bundle.manifest, data, world.settings)
                result = finish(
                    spec,
                    champion.bundle.manifest,
                    champion.ref,
                    prepared,
                    await champion.batcher.submit(prepared.tensor),
                )
                obs = answer(
                    world.db, variant, champion.ref.version, predicted=result.to_json()["predicted_class"]
                )
                observations.append(obs)
            scheduled = [
                runtime.shadow(spec, content_hash(d), o, d) for d, o in zip(images, observations, strict=True)
            ]
            assert scheduled == [True, False, False]  # a queue of one: the others are skipped, not queued
            assert runtime.shadow_runner.skipped == {PIPELINE: 2}
            await runtime.shadow_runner.aclose()
            stored = world.db.predictions_for(observations[0])
            assert [(p.variant, p.model_version) for p in stored] == [
                (Variant.champion, "1"),
                (Variant.shadow, "2"),
            ]
            assert world.db.predictions_for(observations[1])[-1].variant is Variant.champion
            # The stream's shadow: synchronous, in one transaction, for the items in the sample.
            prepared = [
                prepare(spec, runtime.get(PIPELINE).bundle.manifest, d, world.settings) for d in images[1:]
            ]
            assert runtime.shadow_batch(spec, list(zip(observations[1:], prepared, strict=True))) == 2
            assert world.db.predictions_for(observations[2])[-1].variant is Variant.shadow
        finally:
            await runtime.stop()

    asyncio.run(scenario())


def test_a_forced_bad_challenger_in_canary_is_rolled_back_automatically(world: World, tmp_path: Path) -> None:
    """End to end on real models: the challenger (gates failed, forced in) answers half the inputs,
    feedback says it is wrong more often than the champion, and the controller's tick rolls it back."""
    spec = world.catalog.get(PIPELINE)
    bad = register_version(world.settings, tmp_path, seed=11, gates_passed=False)
    c = world.controller
    c.start_canary(PIPELINE, version=bad, share=0.5, force=True, reason="urgent fix", actor="cli:ana")
    rng = np.random.default_rng(3)

    async def serve() -> None:
        runtime = ModelRuntime(world.settings, world.catalog, world.registry, world.metrics, db=world.db)
        await runtime.start(poll=False)
        try:
            champion = runtime.get(PIPELINE)
            for i in range(80):
                r, g, b = (int(v) for v in rng.integers(0, 255, 3))
                data = jpeg((r, g, b), seed=i)
                model, variant = runtime.get_variant(PIPELINE, content_hash(data))
                said = await _classify(spec, model, data, world.settings)
                obs = answer(world.db, variant, model.ref.version, predicted=said)
                truth = await _classify(spec, champion, data, world.settings)  # the champion is right here
                world.db.add_feedback(obs, {"class": truth}, "test")
        finally:
            await runtime.stop()

    asyncio.run(serve())
    world.clock.now = utcnow() + timedelta(minutes=1)
    (result,) = c.tick()
    assert (result.before, result.after, result.verdict.action) == (
        RolloutState.canary,
        RolloutState.stable,
        "rollback",
    )
    assert "online f1" in result.verdict.reason
    assert (world.alias("champion"), world.alias("challenger")) == ("1", None)
    assert world.rollout_events()[0].event == "rollout_rolled_back"


async def _classify(spec: Any, model: Any, data: bytes, settings: Settings) -> str:
    prepared = prepare(spec, model.bundle.manifest, data, settings)
    outputs = await model.batcher.submit(prepared.tensor)
    return str(finish(spec, model.bundle.manifest, model.ref, prepared, outputs).to_json()["predicted_class"])
