"""``keeneye loadtest --scenario ops``: the timeline and events (pure), the watcher against a real API
(the system view as the supervisor writes it, alert rows in the results database, the API's own load
gauge), a short in-process run over the bus with its ops.json and ops.png, and the CLI's refusals.

The whole scenario against a real ``keeneye up`` is tests/integration/test_ops_scenario.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keeneye.monitoring.alerts.engine import fingerprint
from keeneye.monitoring.alerts.store import AlertStore
from keeneye.scaling import SystemView, heartbeat_dir, read_heartbeats, read_status, write_view
from keeneye.scaling.loadtest import LoadReport, StepPlan, StepReport, run_bus
from keeneye.scaling.ops_scenario import Look, SystemWatcher, build_timeline, events, run_ops, write_outputs
from keeneye.scaling.view import PipelineView, ProcessView
from keeneye.settings import Settings
from keeneye.store import open_results_db
from keeneye.stream import DEFAULT_GROUP, Ingestor, input_topic
from tests.serving_support import live_server
from tests.unit.scaling.test_supervisor import WORKER, fast, make, wait_until

PIPELINE = "species-id"


def _step(i: int, rate: float, errors: dict[str, int] | None = None) -> StepReport:
    return StepReport(
        step=i, offered_rps=rate, seconds=10, requests=int(rate * 10), achieved_rps=rate * 0.9,
        p50_ms=5.0, p95_ms=9.0, p99_ms=12.0, errors=errors or {},
    )  # fmt: skip


def _report(steps: list[StepReport]) -> LoadReport:
    return LoadReport(target="bus", pipeline=PIPELINE, url="", step_seconds=10, steps=steps)


LOOKS = [
    Look(t=0.5, replicas=2, desired=2, min_replicas=2, max_replicas=3, lag=0, utilization={"w1": 0.1}),
    Look(t=6, replicas=2, desired=3, min_replicas=2, max_replicas=3, lag=400, utilization={"w1": 0.9},
         pending=("WorkerLoadHigh[stream]",)),
    Look(t=9, error="/v1/system: timed out"),  # an unreadable look is left out
    Look(t=12, replicas=3, desired=3, min_replicas=2, max_replicas=3, lag=900,
         utilization={"w1": 0.97, "w2": 0.6}, api_utilization=0.3, firing=("WorkerLoadHigh[stream]",)),
    Look(t=21, replicas=3, desired=2, min_replicas=2, max_replicas=3, lag=0,
         utilization={"w1": 0.4, "w2": 0.3}, api_utilization=0.1),
    Look(t=31, replicas=2, desired=2, min_replicas=2, max_replicas=3, lag=0, utilization={"w1": 0.2}),
]  # fmt: skip


def test_the_timeline_has_a_row_per_step_and_per_slice_of_the_cooldown() -> None:
    load = _report([_step(1, 20), _step(2, 40, {"429": 3, "503": 2, "ConnectError": 1})])
    rows = build_timeline(load, step_starts=[0.0, 10.0], ramp_end=20.0, end=31.5, looks=LOOKS)
    assert [(r.phase, r.step, r.start, r.end) for r in rows] == [
        ("ramp", 1, 0.0, 10.0),
        ("ramp", 2, 10.0, 20.0),
        ("cooldown", 1, 20.0, 30.0),
        ("cooldown", 2, 30.0, 31.5),
    ]
    first, second, cool, last = rows
    assert (first.offered_rps, first.served_rps, first.p95_ms, first.requests) == (20, 18.0, 9.0, 200)
    assert (first.replicas, first.replicas_peak, first.desired, first.lag) == (2, 2, 3, 400)
    assert first.utilization == {"w1": 0.9} and first.utilization_max == 0.9
    assert (first.pending, first.firing) == (("WorkerLoadHigh[stream]",), ())
    assert (second.refused_429, second.refused_503, second.other_errors) == (3, 2, 1)
    assert (second.replicas, second.replicas_peak, second.api_utilization) == (3, 3, 0.3)
    assert second.utilization == {"w1": 0.97, "w2": 0.6} and second.firing == ("WorkerLoadHigh[stream]",)
    assert (cool.offered_rps, cool.served_rps, cool.requests, cool.replicas, cool.firing) == (
        0,
        None,
        0,
        3,
        (),
    )
    assert (last.replicas, last.utilization) == (2, {"w1": 0.2})


def test_a_step_never_announced_has_no_row() -> None:
    rows = build_timeline(_report([_step(1, 20), _step(2, 40)]), [0.0], 8.0, 8.0, LOOKS)
    assert [(r.phase, r.step) for r in rows] == [("ramp", 1)]


def test_events_say_what_changed_between_readable_looks() -> None:
    assert [(e.t, e.what) for e in events(LOOKS)] == [
        (0.5, "replicas 2 (min 2, max 3)"),
        (6, "WorkerLoadHigh[stream] pending"),
        (12, "replicas 2 → 3"),
        (12, "WorkerLoadHigh[stream] firing"),
        (21, "WorkerLoadHigh[stream] resolved"),
        (31, "replicas 3 → 2"),
    ]


def test_a_pending_alert_that_clears_is_named_as_such() -> None:
    looks = [Look(t=0, replicas=1, pending=("A",)), Look(t=1, replicas=1)]
    assert [e.what for e in events(looks)][-1] == "A no longer pending (cleared before firing)"


@pytest.mark.parametrize(
    ("look", "rest"),
    [
        (LOOKS[0], True),
        (LOOKS[-1], True),
        (LOOKS[1], False),  # lag
        (Look(t=0, replicas=2, min_replicas=2, lag=0, pending=("ApiLatencyAboveSlo",)), True),
        (LOOKS[4], False),  # above the minimum
        (LOOKS[2], False),  # not readable
        (Look(t=0, replicas=2, min_replicas=2, lag=None, firing=("X",)), False),
        (Look(t=0, replicas=2, min_replicas=2, lag=None), True),  # a bus whose lag is unknown
    ],
)
def test_at_rest(look: Look, rest: bool) -> None:
    assert look.at_rest() is rest


# --------------------------------------------------------------------------------------------------
# Against a real API
# --------------------------------------------------------------------------------------------------


def _write_system(settings: Settings, *, lag: int = 7) -> None:
    """The view ``keeneye up``'s supervisor writes, as if it ran two species-id workers now."""
    now = time.time()
    processes = [
        ProcessView(name="api", role="api", pid=os.getpid(), state="running"),
        ProcessView(name="worker-species-id-1", role="worker", pipeline=PIPELINE, pid=101, state="running",
                    utilization=0.92),
        ProcessView(name="worker-species-id-2", role="worker", pipeline=PIPELINE, pid=102, state="running",
                    utilization=0.35),
        ProcessView(name="worker-other-1", role="worker", pipeline="other", pid=103, state="running",
                    utilization=0.5),
    ]  # fmt: skip
    pipelines = {
        PIPELINE: PipelineView(replicas=2, desired=3, min_replicas=2, max_replicas=3, lag=lag, heartbeats=2)
    }
    write_view(
        settings.home,
        SystemView(
            state="running", supervisor_pid=os.getpid(), started_at=now - 60, updated_at=now,
            interval_seconds=60, processes=processes, pipelines=pipelines,
        ),
    )  # fmt: skip


def _open_alert(settings: Settings, rule: str, state: str, labels: dict[str, str]) -> None:
    db = open_results_db(settings)
    db.ensure_schema()
    AlertStore(db).create(
        rule=rule, fingerprint=fingerprint(rule, labels), severity="warning", state=state, labels=labels,
        annotations={}, value=0.9, now=datetime.now(UTC),
    )  # fmt: skip


def test_the_watcher_reads_replicas_utilisation_and_alerts_through_the_api(settings: Settings) -> None:
    settings.home.mkdir(parents=True)
    _write_system(settings)
    _open_alert(
        settings, "WorkerLoadHigh", "pending", {"pipeline": PIPELINE, "kind": "stream", "stat": "max"}
    )
    _open_alert(
        settings, "WorkerLoadCritical", "firing", {"pipeline": PIPELINE, "kind": "api", "stat": "max"}
    )
    _open_alert(settings, "WorkerLoadHigh", "firing", {"pipeline": "other", "kind": "stream", "stat": "max"})
    _open_alert(settings, "DeadLettersGrowing", "firing", {})  # no pipeline label: shown
    with live_server(settings) as server:
        watcher = SystemWatcher(server.url, PIPELINE, interval=0.2)
        deadline = time.monotonic() + 20
        look = watcher.look()
        while look.api_utilization is None and time.monotonic() < deadline:  # the API's 2 s load tick
            time.sleep(0.2)
            look = watcher.look()
    assert look.error is None
    assert (look.replicas, look.desired, look.min_replicas, look.max_replicas, look.lag) == (2, 3, 2, 3, 7)
    assert look.workers_alive == 2
    assert look.utilization == {"worker-species-id-1": 0.92, "worker-species-id-2": 0.35}
    assert look.utilization_max == 0.92
    assert look.api_utilization == 0.0  # the live server has no request in flight
    assert look.pending == ("WorkerLoadHigh[stream]",)
    assert look.firing == ("DeadLettersGrowing", "WorkerLoadCritical[api]")
    assert not look.at_rest()


def test_the_watcher_says_when_no_system_is_running(settings: Settings, tmp_path: Path) -> None:
    with live_server(settings) as server:
        look = SystemWatcher(server.url, PIPELINE).look()
    assert look.replicas is None
    assert look.error == "/v1/system: supervisor not running (no system view yet)"
    dead = SystemWatcher("http://127.0.0.1:9", PIPELINE, timeout=1).look()
    assert dead.error is not None and dead.error.count("Connection refused") == 3


def test_a_short_ops_run_over_the_bus_writes_the_timeline_and_the_plot(
    settings: Settings, tmp_path: Path
) -> None:
    settings.home.mkdir(parents=True)
    _write_system(settings, lag=0)
    ingestor = Ingestor(settings)
    plan = StepPlan(start=10, step=10, step_seconds=1.5, max=20)
    lines: list[str] = []
    try:
        with live_server(settings) as server:
            report = run_ops(
                plan,
                load=lambda on_step: run_bus(
                    plan,
                    accept=lambda data: ingestor.accept(PIPELINE, data, source="bus"),
                    lag=lambda: ingestor.bus.lag(input_topic(PIPELINE), DEFAULT_GROUP),
                    pipeline=PIPELINE,
                    on_step=on_step,
                ),
                watcher=SystemWatcher(server.url, PIPELINE, interval=0.3),
                target="bus",
                cooldown_seconds=1.0,
                say=lines.append,
            )
    finally:
        ingestor.close()
    ramp = [r for r in report.rows if r.phase == "ramp"]
    assert [r.offered_rps for r in ramp] == [10, 20]
    assert all(r.requests > 0 and r.replicas == 2 and r.other_errors == 0 for r in ramp), ramp
    assert ramp[0].utilization == {"worker-species-id-1": 0.92, "worker-species-id-2": 0.35}
    assert report.load.steps[1].lag == sum(s.requests for s in report.load.steps)  # no worker runs
    assert report.rows[-1].phase == "cooldown"
    assert report.bounds == (2, 3) and report.replicas_peak == 2
    assert report.at_rest  # the view says 2 of min 2, no lag, no alert
    assert lines[0].startswith("step 1/2: 10 req/s") and "the system is back at rest" in lines
    assert any(line.endswith("replicas 2 (min 2, max 3)") for line in lines)

    data_path, image_path = write_outputs(report, tmp_path / "out")
    data = json.loads(data_path.read_text())
    assert data["scenario"] == "ops" and data["target"] == "bus"
    assert (data["min_replicas"], data["max_replicas"], data["replicas_peak"]) == (2, 3, 2)
    assert len(data["timeline"]) == len(report.rows) and len(data["looks"]) == len(report.looks)
    assert data["load"]["steps"][0]["offered_rps"] == 10
    assert image_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image_path.stat().st_size > 10_000


def _cli(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEENEYE_HOME": str(settings.home), "KEENEYE_CONFIG": os.devnull}
    return subprocess.run(
        [sys.executable, "-m", "keeneye", "loadtest", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_refuses_an_unknown_scenario_and_a_system_it_cannot_watch(
    settings: Settings, tmp_path: Path
) -> None:
    result = _cli(["--scenario", "chaos"], settings)
    assert result.returncode == 2
    assert "--scenario: 'chaos' is not a scenario" in result.stderr and "--scenario ops" in result.stderr

    with live_server(settings) as server:
        result = _cli(
            ["--scenario", "ops", "--target", "bus", "--url", server.url, "--max", "5", "--step-seconds", "1",
             "--out", str(tmp_path / "out")],
            settings,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot watch 'species-id' at {server.url}" in result.stderr
    assert "supervisor not running" in result.stderr and "keeneye up" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was sent, nothing written


def test_the_system_view_carries_each_workers_utilisation(tmp_path: Path) -> None:
    """What the watcher reads per replica: the supervisor copies each worker's heartbeat into the view."""
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "busy").write_text("0.85")
    sup = make(tmp_path, fast(), lo=2, hi=2)
    try:
        sup.start()
        wait_until(lambda: len(read_heartbeats(heartbeat_dir(tmp_path))) == 2, sup)
        sup.control()
        view = read_status(tmp_path).system
        assert view is not None
        workers = [p for p in view.processes if p.role == "worker"]
        assert [(p.pipeline, p.utilization) for p in workers] == [("p", 0.85), ("p", 0.85)]
        assert all(p.utilization is None for p in view.processes if p.role != "worker")
    finally:
        sup.scaling = sup.scaling.model_copy(update={"stop_grace_seconds": 1.0})
        sup.shutdown()
