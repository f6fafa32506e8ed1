"""Retraining triggers and run records: each cause fires once, de-duplicates, cools down; the launcher.

A real SQLite results database and a real MLflow registry (a tiny registered champion); drift reports
and feedback are real rows. Times are passed in (``now``), never slept for.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update

from keeneye.domain import InvalidInput, NotFound
from keeneye.lifecycle.runs import (
    active_run,
    finish,
    get_run,
    list_runs,
    request_run,
    start,
)
from keeneye.lifecycle.triggers import (
    RetrainLauncher,
    Trigger,
    evaluate_triggers,
    last_slot,
    parse_schedule,
    quality_trigger,
    request_manual,
    schedule_trigger,
    tick,
)
from keeneye.metrics import Metrics
from keeneye.monitoring.quality import QualityWindow
from keeneye.pipelines import PipelineCatalog
from keeneye.registry import ModelRegistry, ModelVersionInfo
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_object_store, open_results_db, utcnow
from keeneye.store.schema import DriftReportRow, FeedbackRow, TrainingRunRow
from tests.serving_support import register_species_model
from tests.unit.lifecycle.support import species_jpeg, species_result, store_answer

PIPELINE = "species-id"
NO_COOLDOWN = timedelta(0)


@dataclass
class World:
    settings: Settings
    db: ResultsDB
    registry: ModelRegistry
    catalog: PipelineCatalog
    champion: ModelVersionInfo


def _with_retrain(settings: Settings, tmp: Path, **retrain: Any) -> Settings:
    spec = PipelineCatalog(settings).get(PIPELINE).model_dump(mode="json", exclude_none=True)
    spec["training"]["retrain"] = retrain
    folder = tmp / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(spec))
    return settings.model_copy(update={"pipelines": settings.pipelines.model_copy(update={"dirs": [folder]})})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = _with_retrain(
        Settings(home=tmp_path / "home"), tmp_path, new_labels=3, drift_psi=0.2, drift_ks=0.1, metric_drop=0.1
    )
    register_species_model(settings, tmp_path)
    db = open_results_db(settings)
    registry = ModelRegistry(settings, events=db)
    champion = registry.resolve(PIPELINE, "champion")
    assert champion is not None
    yield World(settings, db, registry, PipelineCatalog(settings), champion)


def _evaluate(w: World, now: datetime, cooldown: timedelta = NO_COOLDOWN) -> list[tuple[str, str]]:
    runs = evaluate_triggers(w.settings, w.db, w.registry, w.catalog, now=now, quality={}, cooldown=cooldown)
    return [(r.cause, r.dedup_key) for r in runs]


def _complete(w: World, run_id: int) -> None:
    start(w.db, run_id)
    finish(w.db, run_id, "refused", {"note": "test"})


def _drift_report(
    w: World, *, psi: float = 0.05, ks: float = 0.02, ks_p: float = 0.5, version: str | None = None
) -> int:
    now = utcnow()
    row = DriftReportRow(
        pipeline=PIPELINE,
        model_version=version or w.champion.version,
        window_start=now - timedelta(minutes=5),
        window_end=now,
        n=200,
        alarm=psi > 0.2,
        features={"brightness": {"psi": psi, "ks": ks, "ks_p": ks_p, "alarm": psi > 0.2}},
        embedding={},
        source="test",
        created_at=now,
    )
    with w.db.session() as s:
        s.add(row)
        s.flush()
        return int(row.id)


def _label(w: World, seed: int) -> str:
    result = species_result([0.9, 0.1, 0, 0, 0])
    objects = open_object_store(w.settings)
    stored = store_answer(
        w.db, objects, PIPELINE, result, species_jpeg(seed), version=w.champion.version, fmt="jpeg"
    )
    w.db.add_feedback(stored.observation_id, {"class": "esox_lucius"}, "test")
    return stored.observation_id


# --------------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------------


def test_a_drift_report_starts_one_run_and_only_one(world: World) -> None:
    now = utcnow()
    assert _evaluate(world, now) == []
    _drift_report(world, psi=0.1)  # below the spec's drift_psi: nothing
    assert _evaluate(world, now) == []
    _drift_report(world, psi=0.9, version="99")  # another version's drift is not the champion's
    assert _evaluate(world, now) == []

    report = _drift_report(world, psi=0.45)
    assert _evaluate(world, now) == [("drift", f"drift:report:{report}")]
    run = list_runs(world.db, PIPELINE, limit=1)[0]
    assert run.status == "queued"
    assert run.inputs["report_id"] == report
    assert run.inputs["champion_version"] == world.champion.version
    assert run.inputs["exceeded"] == ["brightness: PSI 0.450 > 0.2"]
    assert "drift report" in run.reason

    assert _evaluate(world, now) == []  # queued: nothing else queues beside it
    _complete(world, run.id)
    assert _evaluate(world, now) == []  # the same report never starts a second run
    ks_report = _drift_report(world, psi=0.05, ks=0.3, ks_p=0.001)
    assert _evaluate(world, now) == [("drift", f"drift:report:{ks_report}")]
    assert list_runs(world.db, PIPELINE, limit=1)[0].inputs["exceeded"] == [
        "brightness: KS 0.300 > 0.1 (p=0.001)"
    ]


def test_an_insignificant_ks_statistic_does_not_trigger(world: World) -> None:
    _drift_report(world, ks=0.5, ks_p=0.2)
    assert _evaluate(world, utcnow()) == []


def test_the_cooldown_holds_back_automatic_causes(world: World) -> None:
    now = utcnow()
    _drift_report(world, psi=0.5)
    first = evaluate_triggers(world.settings, world.db, world.registry, world.catalog, now=now, quality={})
    assert [r.cause for r in first] == ["drift"]
    _complete(world, first[0].id)
    second = _drift_report(world, psi=0.6)
    assert _evaluate(world, now + timedelta(hours=5), timedelta(hours=6)) == []  # cooling down
    assert _evaluate(world, now + timedelta(hours=7), timedelta(hours=6)) == [
        ("drift", f"drift:report:{second}")
    ]


# --------------------------------------------------------------------------------------------------
# New labels
# --------------------------------------------------------------------------------------------------


def test_new_labels_fire_at_each_multiple_of_the_threshold(world: World) -> None:
    now = utcnow()
    _label(world, 1)
    _label(world, 2)
    assert _evaluate(world, now) == []
    _label(world, 3)
    assert _evaluate(world, now) == [("new_labels", f"new_labels:v{world.champion.version}:3")]
    run = list_runs(world.db, PIPELINE, limit=1)[0]
    assert run.inputs["new_labels"] == 3 and run.inputs["threshold"] == 3
    _complete(world, run.id)
    _label(world, 4)
    assert _evaluate(world, now) == []  # still the 3-mark: it already started its run
    _label(world, 5)
    _label(world, 6)
    assert _evaluate(world, now) == [("new_labels", f"new_labels:v{world.champion.version}:6")]


def test_labels_from_before_the_champion_and_repeated_labels_do_not_count(world: World) -> None:
    old = _label(world, 1)
    with world.db.session() as s:
        s.execute(
            update(FeedbackRow)
            .where(FeedbackRow.observation_id == old)
            .values(created_at=world.champion.created - timedelta(days=1))
        )
    twice = _label(world, 2)
    world.db.add_feedback(twice, {"class": "perca_fluviatilis"}, "test")  # a correction: one observation
    assert _evaluate(world, utcnow()) == []


# --------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------


def _champion_at(created: datetime) -> ModelVersionInfo:
    return ModelVersionInfo(name=PIPELINE, version="1", aliases=("champion",), created=created)


T0 = datetime(2026, 5, 17, 10, 0, tzinfo=UTC)  # a Sunday


@pytest.mark.parametrize(
    ("schedule", "now", "last", "slot"),
    [
        ("@daily", T0 + timedelta(hours=13), None, None),  # no midnight since the champion
        ("@daily", datetime(2026, 5, 18, 0, 0, tzinfo=UTC), None, "2026-05-18T00:00Z"),
        ("@daily", datetime(2026, 5, 18, 9, 0, tzinfo=UTC), None, "2026-05-18T00:00Z"),
        ("@daily", datetime(2026, 5, 18, 9, 0, tzinfo=UTC), datetime(2026, 5, 18, 0, 1, tzinfo=UTC), None),
        ("@weekly", datetime(2026, 5, 23, 23, 0, tzinfo=UTC), None, None),  # next Sunday not reached
        ("@weekly", datetime(2026, 5, 24, 1, 0, tzinfo=UTC), None, "2026-05-24T00:00Z"),
        ("@monthly", datetime(2026, 5, 31, 1, 0, tzinfo=UTC), None, None),
        ("@monthly", datetime(2026, 6, 2, 1, 0, tzinfo=UTC), None, "2026-06-01T00:00Z"),
        ("0 3 * * 1", datetime(2026, 5, 18, 2, 59, tzinfo=UTC), None, None),
        ("0 3 * * 1", datetime(2026, 5, 18, 3, 0, tzinfo=UTC), None, "2026-05-18T03:00Z"),
        ("0 3 * * 1", datetime(2026, 6, 1, 12, 0, tzinfo=UTC), None, "2026-06-01T03:00Z"),
    ],
)
def test_schedule_slots(schedule: str, now: datetime, last: datetime | None, slot: str | None) -> None:
    spec = PipelineCatalog(Settings()).get(PIPELINE)
    spec.training.retrain.schedule = schedule
    trigger = schedule_trigger(spec, _champion_at(T0), last, now)
    if slot is None:
        assert trigger is None
    else:
        assert trigger == Trigger(
            "schedule",
            f"scheduled retraining ({schedule}), slot {slot}",
            f"schedule:{slot}",
            {"schedule": schedule, "slot": trigger.inputs["slot"], "champion_version": "1"},
        )
        assert last_slot(schedule, now).strftime("%Y-%m-%dT%H:%MZ") == slot


@pytest.mark.parametrize("bad", ["61 * * * *", "@hourlyish", "* * *", "0 0 * * * *"])
def test_a_bad_schedule_is_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(InvalidInput, match="is not a cron expression") as exc:
        parse_schedule(bad)
    assert "@daily" in (exc.value.fix or "")


def test_the_schedule_fires_once_per_slot_through_the_database(world: World, tmp_path: Path) -> None:
    settings = _with_retrain(world.settings, tmp_path, schedule="@daily")
    w = World(settings, world.db, world.registry, PipelineCatalog(settings), world.champion)
    next_midnight = (world.champion.created + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    assert _evaluate(w, next_midnight - timedelta(seconds=1)) == []
    key = f"schedule:{next_midnight:%Y-%m-%dT%H:%MZ}"
    assert _evaluate(w, next_midnight + timedelta(hours=2)) == [("schedule", key)]
    _complete(w, list_runs(w.db, PIPELINE, limit=1)[0].id)
    assert _evaluate(w, next_midnight + timedelta(hours=3)) == []
    day_after = next_midnight + timedelta(days=1)
    assert _evaluate(w, day_after + timedelta(minutes=1)) == [
        ("schedule", f"schedule:{day_after:%Y-%m-%dT%H:%MZ}")
    ]


# --------------------------------------------------------------------------------------------------
# Online quality
# --------------------------------------------------------------------------------------------------


def _window(
    version: str, drop: float, n: int = 50, end: datetime = T0, variant: str = "champion"
) -> QualityWindow:
    return QualityWindow(
        pipeline=PIPELINE,
        model_version=version,
        variant=variant,
        kind="classify",
        n=n,
        metrics={"accuracy": round(0.9 * (1 - drop), 6)},
        reference={"accuracy": 0.9},
        relative_drops={"accuracy": drop},
        drop=drop > 0.1,
        window_start=end - timedelta(hours=1),
        window_end=end,
    )


def test_a_quality_drop_triggers_once_per_version_and_window() -> None:
    spec = PipelineCatalog(Settings()).get(PIPELINE)
    champion = _champion_at(T0 - timedelta(days=3))

    def trigger(*windows: QualityWindow) -> Trigger | None:
        return quality_trigger(spec, champion, windows, min_feedback=20, window_seconds=3600)

    assert trigger(_window("1", 0.05)) is None  # within the spec's metric_drop of 0.1
    assert trigger(_window("1", 0.3, n=10)) is None  # too few labels to say
    assert trigger(_window("2", 0.3)) is None  # not the champion
    assert trigger(_window("1", 0.3, variant="shadow")) is None
    hit = trigger(_window("2", 0.5), _window("1", 0.25))
    assert hit is not None and hit.cause == "quality_drop"
    assert hit.dedup_key == "quality_drop:v1:2026-05-17T10:00:00Z"
    assert hit.inputs["relative_drops"] == {"accuracy": 0.25} and hit.inputs["n"] == 50
    assert "accuracy 25.0% below test" in hit.reason
    later = trigger(_window("1", 0.25, end=T0 + timedelta(minutes=30)))
    assert later is not None and later.dedup_key == hit.dedup_key  # the same window: the same run
    next_window = trigger(_window("1", 0.25, end=T0 + timedelta(minutes=70)))
    assert next_window is not None and next_window.dedup_key == "quality_drop:v1:2026-05-17T11:00:00Z"


def test_quality_windows_from_the_scheduler_start_a_run(world: World) -> None:
    windows = {PIPELINE: [_window(world.champion.version, 0.4, end=utcnow())]}
    runs = evaluate_triggers(
        world.settings, world.db, world.registry, world.catalog, now=utcnow(), quality=windows
    )
    assert [r.cause for r in runs] == ["quality_drop"]
    assert runs[0].inputs["champion_version"] == world.champion.version


def test_without_the_schedulers_windows_online_quality_is_computed(world: World) -> None:
    for seed in range(2):
        _label(world, seed)  # labels, but no reference metrics on the tiny champion: no drop
    runs = evaluate_triggers(world.settings, world.db, world.registry, world.catalog, now=utcnow())
    assert runs == []
    report = _drift_report(world, psi=0.5)
    runs = evaluate_triggers(world.settings, world.db, world.registry, world.catalog, now=utcnow())
    assert [(r.cause, r.dedup_key) for r in runs] == [("drift", f"drift:report:{report}")]


# --------------------------------------------------------------------------------------------------
# One cause, one run; manual; records
# --------------------------------------------------------------------------------------------------


def test_several_causes_at_once_start_one_run_the_most_urgent(world: World) -> None:
    for seed in range(3):
        _label(world, seed)
    report = _drift_report(world, psi=0.7)
    assert _evaluate(world, utcnow()) == [("drift", f"drift:report:{report}")]
    assert len(list_runs(world.db, PIPELINE)) == 1


def test_manual_runs_skip_the_cooldown_but_not_a_run_in_progress(world: World) -> None:
    metrics = Metrics()
    first = request_manual(world.db, PIPELINE, "  new camera installed ", {"epochs": 2})
    assert (first.cause, first.reason, first.status) == ("manual", "new camera installed", "queued")
    with pytest.raises(InvalidInput, match=f"run {first.id} is queued") as exc:
        request_manual(world.db, PIPELINE, "again", {})
    assert exc.value.status == 409
    start(world.db, first.id)
    with pytest.raises(InvalidInput, match=f"run {first.id} is running"):
        request_manual(world.db, PIPELINE, "again", {})
    finish(world.db, first.id, "succeeded", {"version": "2"}, metrics=metrics)
    again = request_manual(world.db, PIPELINE, "again", {})  # no cooldown for people
    assert again.id != first.id and again.dedup_key != first.dedup_key
    with pytest.raises(InvalidInput, match="needs a reason"):
        request_manual(world.db, PIPELINE, "  ", {})
    done = get_run(world.db, first.id)
    assert done.status == "succeeded" and done.outcome["version"] == "2"
    assert done.outcome["process"]["pid"] > 0 and done.seconds is not None
    assert (
        metrics.registry.get_sample_value(
            "keeneye_training_runs_total", {"pipeline": PIPELINE, "cause": "manual", "status": "succeeded"}
        )
        == 1.0
    )


def test_run_state_changes_are_guarded(world: World) -> None:
    run = request_manual(world.db, PIPELINE, "test", {})
    assert start(world.db, run.id).status == "running"
    with pytest.raises(InvalidInput, match="is running, not queued") as exc:
        start(world.db, run.id)
    assert exc.value.status == 409
    finish(world.db, run.id, "failed", {}, "boom")
    with pytest.raises(InvalidInput, match="is failed, not queued or running"):
        finish(world.db, run.id, "succeeded", {})
    with pytest.raises(ValueError, match="not 'running'"):
        finish(world.db, run.id, "running", {})
    with pytest.raises(NotFound, match="no training run 9999"):
        start(world.db, 9999)
    with pytest.raises(InvalidInput, match="unknown run cause"):
        request_run(world.db, PIPELINE, "whim", "x", "k", {})
    assert get_run(world.db, run.id).error == "boom"


def test_listing_is_newest_first_and_bounded(world: World) -> None:
    base = utcnow()
    ids = []
    for k in range(4):
        rec = request_run(
            world.db,
            PIPELINE,
            "manual",
            f"r{k}",
            f"manual:{k}",
            {},
            now=base + timedelta(minutes=k),
            cooldown=NO_COOLDOWN,
        )
        assert rec is not None
        _complete(world, rec.id)
        ids.append(rec.id)
    assert [r.id for r in list_runs(world.db, PIPELINE, limit=3)] == ids[::-1][:3]
    assert [r.id for r in list_runs(world.db, PIPELINE, limit=0)] == ids[::-1][:1]
    assert list_runs(world.db, "line-inspection") == []


def test_concurrent_requests_for_one_cause_queue_one_run(world: World) -> None:
    barrier = threading.Barrier(4)
    results: list[object] = []

    def request() -> None:
        db = ResultsDB(world.settings.database_url)  # its own engine, as another process would have
        barrier.wait()
        results.append(request_run(db, PIPELINE, "drift", "race", "drift:report:1", {}, cooldown=NO_COOLDOWN))
        db.close()

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert sum(r is not None for r in results) == 1
    assert len(list_runs(world.db, PIPELINE)) == 1


def test_abandoned_runs_stop_blocking_their_pipeline(world: World) -> None:
    queued = request_manual(world.db, PIPELINE, "never started", {})
    later = utcnow() + timedelta(hours=2)
    fresh = request_run(world.db, PIPELINE, "manual", "x", "manual:x", {}, now=later, cooldown=NO_COOLDOWN)
    assert fresh is not None
    stale = get_run(world.db, queued.id)
    assert stale.status == "failed" and "never started" in (stale.error or "")

    start(world.db, fresh.id)
    dead = subprocessed_pid()
    with world.db.session() as s:  # as if another process had started it and died
        s.execute(
            update(TrainingRunRow)
            .where(TrainingRunRow.id == fresh.id)
            .values(outcome={"process": {"host": __import__("socket").gethostname(), "pid": dead}})
        )
    assert active_run(world.db, PIPELINE) is not None
    third = request_run(world.db, PIPELINE, "manual", "y", "manual:y", {}, now=later, cooldown=NO_COOLDOWN)
    assert third is not None
    gone = get_run(world.db, fresh.id)
    assert gone.status == "failed" and f"pid {dead}" in (gone.error or "")


def subprocessed_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------------------------------
# The scheduler's hook
# --------------------------------------------------------------------------------------------------


def test_the_launcher_never_runs_two_of_one_pipeline_at_once(world: World) -> None:
    flag = world.settings.home / "ran.txt"
    script = f"import sys, time; time.sleep(1.5); open({str(flag)!r}, 'a').write(sys.argv[1] + '\\n')"
    launcher = RetrainLauncher(lambda pipeline, run_id: [sys.executable, "-c", script, str(run_id)])
    first = request_manual(world.db, PIPELINE, "one", {})
    assert launcher.launch(world.settings, world.db, [first]) == [first.id]
    second = request_run(world.db, PIPELINE, "manual", "two", "manual:two", {}, cooldown=NO_COOLDOWN)
    assert second is None  # the database refuses a second queued run …
    finish(world.db, first.id, "succeeded", {})
    second = request_run(world.db, PIPELINE, "manual", "two", "manual:two", {}, cooldown=NO_COOLDOWN)
    assert second is not None
    assert launcher.launch(world.settings, world.db, [second]) == []  # … and the launcher a second process
    assert launcher.busy(PIPELINE)
    deadline = time.monotonic() + 60
    while launcher.busy(PIPELINE) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert launcher.launch(world.settings, world.db, []) == [second.id]  # the waiting run starts now
    while launcher.busy(PIPELINE) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert flag.read_text().split() == [str(first.id), str(second.id)]


# ``keeneye retrain`` as the scheduler's child runs it; the command is registered here when the CLI
# module list does not name it yet, so the child runs exactly the code ``python -m keeneye`` runs.
CHILD_CLI = (
    "import sys; from keeneye.cli import app, main; from keeneye.cli.retrain import register\n"
    "if 'retrain' not in {c.name for c in app.registered_commands}: register(app)\n"
    "sys.argv = ['keeneye', *sys.argv[1:]]; main()"
)


def test_the_scheduler_runs_keeneye_retrain_with_the_run_id() -> None:
    from keeneye.lifecycle.triggers import retrain_command

    assert retrain_command(PIPELINE, 7) == [
        sys.executable,
        "-m",
        "keeneye",
        "retrain",
        PIPELINE,
        "--run-id",
        "7",
    ]


def test_a_child_that_dies_before_finishing_fails_its_run(world: World) -> None:
    launcher = RetrainLauncher(lambda p, n: [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    run = request_manual(world.db, PIPELINE, "crash", {})
    assert launcher.launch(world.settings, world.db, [run]) == [run.id]
    deadline = time.monotonic() + 60
    while launcher.busy(PIPELINE) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert launcher.launch(world.settings, world.db, []) == []
    failed = get_run(world.db, run.id)
    assert failed.status == "failed"
    assert "exited with status 3 before finishing the run" in (failed.error or "")
    assert (failed.error or "").endswith(": boom")


@pytest.mark.slow
def test_tick_runs_the_retraining_in_a_detached_process(world: World) -> None:
    """The real child: ``keeneye retrain P --run-id N`` opens the same database (settings passed
    through the environment) and records the outcome — here a clear failure, since the tiny champion
    has no training data and nobody labelled anything."""
    report = _drift_report(world, psi=0.8)
    launcher = RetrainLauncher(
        lambda p, n: [sys.executable, "-c", CHILD_CLI, "retrain", p, "--run-id", str(n)]
    )
    started = tick(
        world.settings, world.db, world.registry, world.catalog, None, utcnow(), quality={}, launcher=launcher
    )
    assert len(started) == 1
    run_id = started[0]
    assert get_run(world.db, run_id).inputs["report_id"] == report
    deadline = time.monotonic() + 120
    while launcher.busy(PIPELINE) and time.monotonic() < deadline:
        time.sleep(0.2)
    run = get_run(world.db, run_id)
    log_text = (world.settings.home / "runs" / PIPELINE / f"retrain-{run_id}.log").read_text()
    assert run.status == "failed", log_text
    assert "nothing to retrain species-id on" in (run.error or "")
    assert "nothing to retrain" in log_text
    again = tick(
        world.settings, world.db, world.registry, world.catalog, None, utcnow(), quality={}, launcher=launcher
    )
    assert again == []  # the same report does not start another run


@pytest.mark.integration
def test_run_records_on_postgresql(postgres_url: str) -> None:
    """The same guarantees on PostgreSQL: the advisory lock lets one of four racing requests queue."""
    db = ResultsDB(postgres_url)
    db.ensure_schema()
    barrier = threading.Barrier(4)
    results: list[object] = []

    def request() -> None:
        own = ResultsDB(postgres_url)
        barrier.wait()
        results.append(
            request_run(own, PIPELINE, "drift", "race", "drift:report:1", {"n": 1}, cooldown=NO_COOLDOWN)
        )
        own.close()

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    run = list_runs(db, PIPELINE)[0]
    assert start(db, run.id).status == "running"
    done = finish(db, run.id, "succeeded", {"version": "2", "metrics": {"accuracy": 0.9}})
    assert done.outcome["metrics"] == {"accuracy": 0.9} and done.inputs == {"n": 1}
    assert request_run(db, PIPELINE, "drift", "again", "drift:report:1", {}, cooldown=NO_COOLDOWN) is None
    db.close()
