"""The supervisor with real child processes: small scripts stand in for the API and the workers."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keeneye.domain import ConfigError
from keeneye.metrics import Metrics
from keeneye.scaling import (
    Child,
    ChildSpec,
    RestartBackoff,
    ScalingPolicy,
    Supervisor,
    read_heartbeats,
    read_status,
    replica_bounds,
    view_path,
)
from keeneye.settings import ScalingSettings, Settings

# A stand-in worker: writes a heartbeat every 50 ms with the busy fraction read from <home>/busy,
# drains on SIGTERM (removes its heartbeat, exits 0), or ignores SIGTERM when <home>/stubborn exists.
WORKER = """
import json, os, signal, sys, time, pathlib
home, pipeline = pathlib.Path(sys.argv[1]), sys.argv[2]
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, signal.SIG_IGN if (home / "stubborn").exists() else on_term)
beat = home / "run" / "workers" / f"{pipeline}-{os.getpid()}.json"
while not stop:
    busy = float((home / "busy").read_text()) if (home / "busy").exists() else 0.0
    now = time.time()
    tmp = beat.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "pipeline": pipeline, "busy_fraction": busy,
                               "processed": 0, "started_at": now, "updated_at": now}))
    os.replace(tmp, beat)
    time.sleep(0.05)
beat.unlink()
"""
SLEEPER = "import time\nwhile True: time.sleep(1)"


def wait_until(cond: Callable[[], bool], sup: Supervisor, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.step()
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def fast(**overrides: float) -> ScalingSettings:
    values: dict[str, float] = {
        "interval_seconds": 0.1,
        "scale_down_window_seconds": 0.5,
        "restart_initial_seconds": 0.1,
        "restart_max_seconds": 0.4,
        "restart_reset_seconds": 30.0,
        "stop_grace_seconds": 3.0,
        "heartbeat_timeout_seconds": 30.0,
    }
    values.update(overrides)
    return ScalingSettings.model_validate(values)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "worker.py").write_text(WORKER)
    return tmp_path


def make(home: Path, scaling: ScalingSettings, *, fixed: tuple[ChildSpec, ...] = (), lo: int = 1, hi: int = 3,
         worker: str | None = None) -> Supervisor:  # fmt: skip
    script = worker or str(home / "worker.py")
    return Supervisor(
        home=home,
        scaling=scaling,
        policies={"p": ScalingPolicy.from_settings(scaling, lo, hi)},
        worker_command=lambda p: (sys.executable, script, str(home), p),
        fixed=fixed,
        metrics=Metrics(),
        notes=["scheduler: not started"],
    )


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    """Supervisors a test started; whatever the test's outcome, their children are stopped."""
    started: list[Supervisor] = []
    yield started
    for sup in started:
        sup.scaling = sup.scaling.model_copy(update={"stop_grace_seconds": 1.0})
        sup.shutdown()


def running_pids(sup: Supervisor) -> list[int]:
    return [c.pid for c in sup.workers["p"] if c.pid is not None]


# --------------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (20, 60.0)]
)
def test_restart_backoff_doubles_up_to_the_cap(failures: int, delay: float) -> None:
    assert RestartBackoff(initial=1.0, cap=60.0).delay(failures) == delay


@pytest.mark.parametrize(
    ("profile", "bus", "spec", "overrides", "expected"),
    [
        ("auto", "sqlite:///x/bus.db", (4, 6), (None, None), (1, 2)),  # embedded: a laptop is not flooded
        ("auto", "kafka://k:9092", (4, 6), (None, None), (4, 6)),  # scaled: the ops profile of the spec
        ("spec", "sqlite:///x/bus.db", (4, 6), (None, None), (4, 6)),
        ("embedded", "kafka://k:9092", (4, 6), (None, None), (1, 2)),
        ("embedded", "sqlite:///x", (0, 1), (None, None), (0, 1)),  # a spec asking for less keeps it
        ("auto", "sqlite:///x", (4, 6), (2, 5), (2, 5)),  # flags win
        ("spec", "sqlite:///x", (4, 6), (None, 3), (3, 3)),  # lowering only max pulls min down
    ],
)
def test_replica_bounds(
    profile: str,
    bus: str,
    spec: tuple[int, int],
    overrides: tuple[int | None, int | None],
    expected: tuple[int, int],
) -> None:
    scaling = ScalingSettings.model_validate({"replica_profile": profile})
    lo, hi = overrides
    got = replica_bounds(
        scaling, bus_url=bus, spec_min=spec[0], spec_max=spec[1], min_override=lo, max_override=hi
    )
    assert got == expected


def test_replica_bounds_refuses_min_above_max() -> None:
    with pytest.raises(ConfigError, match=r"--min-replicas: 5 is outside 0\.\.3"):
        replica_bounds(
            ScalingSettings(), bus_url="sqlite:///x", spec_min=1, spec_max=2, min_override=5, max_override=3
        )


def test_read_heartbeats_accepts_epoch_and_iso_and_skips_garbage(tmp_path: Path) -> None:
    (tmp_path / "a-1.json").write_text(
        json.dumps({"pid": 1, "pipeline": "a", "busy_fraction": 0.5, "updated_at": 100.0})
    )
    (tmp_path / "a-2.json").write_text(
        json.dumps({"pid": 2, "pipeline": "a", "busy_fraction": 7, "updated_at": "1970-01-01T00:02:00Z"})
    )
    (tmp_path / "a-3.json").write_text("{half a fi")
    (tmp_path / "a-4.json").write_text(json.dumps({"pipeline": "a"}))
    beats = read_heartbeats(tmp_path)
    assert sorted(beats) == [1, 2]
    assert beats[1].busy_fraction == 0.5
    assert (beats[2].busy_fraction, beats[2].updated_at) == (1.0, 120.0)  # clamped to 0..1


def test_status_when_missing_stale_or_dead(tmp_path: Path) -> None:
    assert read_status(tmp_path).running is False
    assert "supervisor not running" in read_status(tmp_path).detail
    view_path(tmp_path).parent.mkdir(parents=True)
    base = {"state": "running", "started_at": 0, "interval_seconds": 5}
    view_path(tmp_path).write_text(
        json.dumps({**base, "supervisor_pid": os.getpid(), "updated_at": time.time()})
    )
    assert read_status(tmp_path).running is True
    view_path(tmp_path).write_text(
        json.dumps({**base, "supervisor_pid": os.getpid(), "updated_at": time.time() - 60})
    )
    status = read_status(tmp_path)
    assert (status.running, status.fix) == (False, "start the whole system with `keeneye up`")
    assert "old" in status.detail
    view_path(tmp_path).write_text(
        json.dumps({**base, "supervisor_pid": 2**22 + 12345, "updated_at": time.time()})
    )
    assert "is gone" in read_status(tmp_path).detail
    view_path(tmp_path).write_text("not json")
    assert "unreadable" in read_status(tmp_path).detail


# --------------------------------------------------------------------------------------------------
# Real processes
# --------------------------------------------------------------------------------------------------


def test_starts_children_writes_the_view_and_stops_in_order(
    home: Path, supervisors: list[Supervisor]
) -> None:
    api = ChildSpec("api", "api", (sys.executable, "-c", SLEEPER))
    sup = make(home, fast(), fixed=(api,), lo=2)
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: len(read_heartbeats(home / "run" / "workers")) == 2, sup)
    wait_until(lambda: (read_status(home).system or sup.view()).pipelines["p"].heartbeats == 2, sup)
    status = read_status(home)
    assert status.running and status.system is not None
    roles = sorted((p.role, p.state) for p in status.system.processes)
    assert roles == [("api", "running"), ("worker", "running"), ("worker", "running")]
    assert status.system.pipelines["p"].replicas == 2
    assert status.system.notes == ["scheduler: not started"]
    assert (home / "logs" / "api.log").exists()
    procs = [c.proc for c in [*sup.fixed, *sup.workers["p"]]]
    sup.shutdown()
    assert all(p is not None and p.returncode is not None for p in procs)
    # The stand-in workers drained (exit 0, heartbeat removed); the API sleeper was terminated.
    assert [p.returncode for p in procs if p is not None] == [-signal.SIGTERM, 0, 0]
    assert read_heartbeats(home / "run" / "workers") == {}
    assert read_status(home).detail == "supervisor not running (stopped)"


def test_crashed_child_restarts_with_growing_backoff(home: Path, supervisors: list[Supervisor]) -> None:
    crash = ChildSpec("api", "api", (sys.executable, "-c", "import sys; sys.exit(3)"))
    sup = make(home, fast(restart_initial_seconds=0.1, restart_max_seconds=0.4), fixed=(crash,))
    supervisors.append(sup)
    starts: list[float] = []
    spawn = sup._spawn

    def recording(child: Child) -> None:
        if child.spec.name == "api":
            starts.append(time.monotonic())
        spawn(child)

    sup._spawn = recording  # type: ignore[method-assign]
    sup.start()
    wait_until(lambda: sup.fixed[0].restarts >= 5, sup, timeout=15)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Delays 0.1, 0.2, 0.4, 0.4 (cap): each gap at least its delay, and the cap holds.
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.2
    assert gaps[2] >= 0.4
    assert max(gaps) < 1.5
    assert sup.fixed[0].last_exit_code == 3
    assert read_status(home).system is not None


def test_a_killed_worker_is_replaced(home: Path, supervisors: list[Supervisor]) -> None:
    sup = make(home, fast(), lo=1)
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: len(running_pids(sup)) == 1, sup)
    (first,) = running_pids(sup)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: running_pids(sup) not in ([], [first]), sup)
    assert sup.workers["p"][0].restarts == 1
    assert sup.workers["p"][0].last_exit_code == -signal.SIGKILL


def test_silent_worker_is_restarted(home: Path, supervisors: list[Supervisor]) -> None:
    silent = home / "silent.py"
    silent.write_text(SLEEPER)
    sup = make(home, fast(heartbeat_timeout_seconds=0.5), lo=1, worker=str(silent))
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: sup.workers["p"][0].restarts >= 1, sup, timeout=10)


def test_autoscales_up_to_max_under_load_and_back_after_the_window(
    home: Path, supervisors: list[Supervisor]
) -> None:
    sup = make(home, fast(scale_down_window_seconds=1.0), lo=1, hi=3)
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: sup.view().pipelines["p"].heartbeats == 1, sup)
    (home / "busy").write_text("1.0")  # every worker saturated
    seen: list[int] = []

    def at_max() -> bool:
        seen.append(len(sup.workers["p"]))
        return len(running_pids(sup)) == 3 and sup.view().pipelines["p"].heartbeats == 3

    wait_until(at_max, sup)
    for _ in range(10):  # stays at max, never above, however loaded
        sup.step()
        seen.append(len(sup.workers["p"]))
        time.sleep(0.05)
    assert max(seen) == 3
    assert sup.metrics.replicas.labels("p")._value.get() == 3
    assert sup.metrics.desired_replicas.labels("p")._value.get() == 3
    (home / "busy").write_text("0.0")
    idle_since = time.monotonic()
    pids_at_max = set(running_pids(sup))
    wait_until(lambda: len(sup.workers["p"]) == 1, sup)
    assert time.monotonic() - idle_since >= 0.8, "held for the stabilisation window"
    # The scaled-down replicas got SIGTERM and drained (exit 0).
    wait_until(lambda: not sup._retiring, sup)
    view = read_status(home).system
    assert view is not None
    directions = [d.direction for d in view.decisions]
    assert "up" in directions and directions[-1] == "down"
    assert set(running_pids(sup)) < pids_at_max
    assert sup.metrics.worker_utilization.labels("p", "stream", "mean")._value.get() == 0.0


def test_stubborn_child_is_killed_after_the_grace_period(home: Path, supervisors: list[Supervisor]) -> None:
    (home / "stubborn").write_text("")
    sup = make(home, fast(stop_grace_seconds=0.5), lo=1)
    supervisors.append(sup)
    sup.start()
    wait_until(lambda: sup.view().pipelines["p"].heartbeats == 1, sup)
    proc = sup.workers["p"][0].proc
    t = time.monotonic()
    sup.shutdown()
    assert proc is not None and proc.returncode == -signal.SIGKILL
    assert 0.4 <= time.monotonic() - t < 5


# --------------------------------------------------------------------------------------------------
# The real thing: `keeneye up` with the API and a real worker on a tiny registered model
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_keeneye_up_serves_scales_and_stops_gracefully(tmp_path: Path) -> None:
    import httpx

    from tests.services import free_port
    from tests.serving_support import jpeg, register_species_model

    settings = Settings(home=tmp_path / "home")
    register_species_model(settings, tmp_path)
    port = free_port()
    env = {
        **os.environ,
        "KEENEYE_HOME": str(settings.home),
        "KEENEYE_CONFIG": os.devnull,
        "KEENEYE_SCALING__INTERVAL_SECONDS": "0.5",
    }
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keeneye", "up", "--pipelines", "species-id", "--port", str(port),
         "--min-replicas", "1", "--max-replicas", "2", "--plugins", "none"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        system: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                system = httpx.get(f"{base}/v1/system", timeout=2).json()
                if system["running"] and system["system"]["pipelines"]["species-id"]["heartbeats"] == 1:
                    break
            except (httpx.HTTPError, KeyError):
                pass
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        else:
            raise AssertionError(f"keeneye up did not come up: {system}")
        view = system["system"]
        assert sorted(p["role"] for p in view["processes"]) == ["api", "scheduler", "worker"]
        assert view["pipelines"]["species-id"]["min_replicas"] == 1
        assert view["pipelines"]["species-id"]["max_replicas"] == 2
        assert not any(n.startswith("scheduler:") for n in view["notes"])

        # An observation goes in through the API and a supervised worker finishes it.
        accepted = httpx.post(
            f"{base}/v1/pipelines/species-id/observations",
            content=jpeg(seed=7),
            headers={"content-type": "image/jpeg"},
            timeout=10,
        )
        assert accepted.status_code == 202, accepted.text
        link = base + accepted.json()["links"]["self"]
        status = ""
        while time.monotonic() < deadline + 30 and status != "done":
            status = httpx.get(link, timeout=5).json()["status"]
            time.sleep(0.1)
        assert status == "done"
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'keeneye_replicas{pipeline="species-id"} 1.0' in metrics
        assert 'keeneye_queue_lag{pipeline="species-id"}' in metrics
        # Every process on the API's /metrics: the worker's counter, the supervisor's bounds.
        assert 'keeneye_observations_total{pipeline="species-id",status="done"} 1.0' in metrics
        assert 'keeneye_min_replicas{pipeline="species-id"} 1.0' in metrics
        assert 'keeneye_max_replicas{pipeline="species-id"} 2.0' in metrics
        assert (settings.home / "run" / "metrics").is_dir()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err[-3000:]
    assert "keeneye up: stopped" in out
    assert read_status(settings.home).detail == "supervisor not running (stopped)"
    assert read_heartbeats(settings.home / "run" / "workers") == {}
