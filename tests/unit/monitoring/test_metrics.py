"""The metric catalogue across processes: real child processes write to one PROMETHEUS_MULTIPROC_DIR,
the parent aggregates; docs/metrics.md stays generated from the code; the worker's metrics port and
the supervisor's wiring (directory, dead processes, scheduler child) with real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.cli.ops import _fixed_children
from keeneye.domain import ConfigError
from keeneye.metrics import (
    MULTIPROC_ENV,
    REGENERATE,
    Metrics,
    catalogue_markdown,
    mark_process_dead,
    prepare_multiprocess_dir,
    render_metrics,
    serve_metrics,
)
from keeneye.scaling import ChildSpec, ScalingPolicy, Supervisor
from keeneye.settings import ScalingSettings
from tests.services import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[3]

# One process of a multi-process deployment: counts, sets gauges, exits (its files stay behind).
WRITER = """
import sys
from keeneye.metrics import Metrics
n, drift, version = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
m = Metrics()
m.requests.labels("p", "200").inc(n)                     # counter: summed
m.inflight.inc(n)                                        # livesum
m.model_info.labels("p", "m", version).set(1)            # livemax
m.drift_score.labels("p", "brightness", "psi").set(drift)  # mostrecent
m.stage_seconds.labels("p", "infer").observe(0.01 * n)   # histogram: summed
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def write_in_child(script: Path, folder: Path, *args: str) -> int:
    """Run the writer to its end in a child process with the directory set; its pid."""
    env = {**os.environ, MULTIPROC_ENV: str(folder)}
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return proc.pid


@pytest.fixture
def single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


# --------------------------------------------------------------------------------------------------
# Several processes, one directory
# --------------------------------------------------------------------------------------------------


def test_two_processes_add_up_and_a_dead_ones_live_gauges_vanish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "metrics"
    prepare_multiprocess_dir(folder)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    first = write_in_child(script, folder, "2", "0.5", "1")
    second = write_in_child(script, folder, "3", "0.25", "2")  # later: its drift value is the most recent
    assert first != second
    assert {f.name for f in folder.glob("counter_*.db")} == {f"counter_{first}.db", f"counter_{second}.db"}

    monkeypatch.setenv(MULTIPROC_ENV, str(folder))
    found = samples(render_metrics(Metrics()).decode())
    assert value(found, "keeneye_requests_total", pipeline="p", status="200") == 5
    assert value(found, "keeneye_inflight_requests") == 5  # 2 + 3, both alive as far as we know
    assert value(found, "keeneye_model_info", pipeline="p", model="m", version="1") == 1
    assert value(found, "keeneye_model_info", pipeline="p", model="m", version="2") == 1
    assert value(found, "keeneye_drift_score", pipeline="p", feature="brightness", test="psi") == 0.25
    assert value(found, "keeneye_stage_seconds_count", pipeline="p", stage="infer") == 2
    assert value(found, "keeneye_stage_seconds_sum", pipeline="p", stage="infer") == pytest.approx(0.05)
    assert value(found, "keeneye_stage_seconds_bucket", pipeline="p", stage="infer", le="0.025") == 1
    assert all("pid" not in dict(labels) for _, labels in found), "aggregated, not one series per pid"

    mark_process_dead(first, folder)
    found = samples(render_metrics(Metrics()).decode())
    assert value(found, "keeneye_inflight_requests") == 3  # only the live process's
    assert value(found, "keeneye_model_info", pipeline="p", model="m", version="1") is None
    assert value(found, "keeneye_model_info", pipeline="p", model="m", version="2") == 1
    assert value(found, "keeneye_requests_total", pipeline="p", status="200") == 5  # what it counted stays
    assert value(found, "keeneye_drift_score", pipeline="p", feature="brightness", test="psi") == 0.25

    # The worker's own endpoint serves the same aggregate.
    port = free_port()
    server = serve_metrics(None, port)
    try:
        served = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    finally:
        server.shutdown()
        server.server_close()
    assert value(served, "keeneye_requests_total", pipeline="p", status="200") == 5
    assert value(served, "keeneye_inflight_requests") == 3


def test_prepare_removes_an_earlier_runs_files_but_keeps_the_callers(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "metrics"
    prepare_multiprocess_dir(folder)  # creates it
    assert folder.is_dir()
    (folder / "counter_4242.db").write_bytes(b"old")
    (folder / "gauge_livesum_4242.db").write_bytes(b"old")
    own = folder / f"counter_{os.getpid()}.db"
    own.write_bytes(b"mine")
    (folder / f"counter_1{os.getpid()}.db").write_bytes(b"another pid ending in ours")
    prepare_multiprocess_dir(folder)
    assert sorted(f.name for f in folder.iterdir()) == [own.name]


def test_render_refuses_a_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"PROMETHEUS_MULTIPROC_DIR: .*nowhere is not a directory"):
        render_metrics(Metrics())


# --------------------------------------------------------------------------------------------------
# One process: the instance's own registry
# --------------------------------------------------------------------------------------------------


def test_serve_metrics_answers_with_every_catalogue_name(single_process: None) -> None:
    metrics = Metrics()
    metrics.requests.labels("species-id", "200").inc(3)
    port = free_port()
    server = serve_metrics(metrics, port)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 200
    for doc in metrics.catalogue:
        assert f"# TYPE {doc.exposed} {doc.kind}\n" in response.text, doc.exposed
    found = samples(response.text)
    assert value(found, "keeneye_requests_total", pipeline="species-id", status="200") == 3
    assert render_metrics(metrics) == metrics.render()  # without the variable: the instance's registry


def test_serve_metrics_refuses_a_taken_port(single_process: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            serve_metrics(Metrics(), taken.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# The catalogue and docs/metrics.md
# --------------------------------------------------------------------------------------------------


def test_catalogue_lists_every_registered_metric() -> None:
    metrics = Metrics()
    registered = {(f.name, f.type, f.documentation) for f in metrics.registry.collect()}
    assert registered == {(d.name, d.kind, d.help) for d in metrics.catalogue}
    gauges = {d.name: d.mode for d in metrics.catalogue if d.kind == "gauge"}
    assert gauges["keeneye_inflight_requests"] == "livesum"
    assert "all" not in gauges.values(), "every gauge chooses how it combines across processes"


def test_docs_metrics_md_is_generated_from_the_code() -> None:
    expected = catalogue_markdown()
    assert "| `keeneye_requests_total` | counter | pipeline, status | sum |" in expected
    assert "| `keeneye_batch_size` | 1, 2, 4, 8, 16, 32, 64, +Inf |" in expected
    actual = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert actual == expected, f"docs/metrics.md is out of date: regenerate it with `{REGENERATE}`"


def test_module_prints_the_catalogue() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "keeneye.metrics"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == catalogue_markdown()


# --------------------------------------------------------------------------------------------------
# keeneye worker --metrics-port
# --------------------------------------------------------------------------------------------------


def test_worker_help_documents_the_metrics_port() -> None:
    result = CliRunner().invoke(app, ["worker", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--metrics-port" in result.output and "0 = off" in result.output
    assert "--metrics-host" in result.output


def worker_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "KEENEYE_HOME": str(home), "KEENEYE_CONFIG": os.devnull}
    env.pop(MULTIPROC_ENV, None)
    return env


def test_worker_refuses_a_taken_metrics_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "keeneye", "worker", "-p", "species-id", "--metrics-port", str(port)],
            env=worker_env(tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2, out.stderr
    assert f"--metrics-port: cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_standalone_worker_serves_its_metrics(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "keeneye", "worker", "-p", "species-id", "--metrics-port", str(port)],
        env=worker_env(tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_port(port, timeout=60), "the metrics port never opened"
        deadline = time.monotonic() + 60
        text = ""
        # The worker's metrics exist once it has set up (its requests-in-flight gauge first).
        while "keeneye_inflight_requests" not in text and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            with contextlib.suppress(httpx.ConnectError):  # gone: the next poll() shows why
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            time.sleep(0.2)
        assert "# TYPE keeneye_inflight_requests gauge" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert f"metrics on http://127.0.0.1:{port}/metrics" in err


# --------------------------------------------------------------------------------------------------
# The supervisor: one directory for every child, dead children forgotten, the scheduler child
# --------------------------------------------------------------------------------------------------

# A stand-in scheduler: counts one notification and one request in flight (live gauge), then records
# the metrics directory it was given; crashes on its first run and stays up on the next.
SCHEDULER = """
import os, sys, time, pathlib
from keeneye.metrics import Metrics
home = pathlib.Path(sys.argv[1])
m = Metrics()
m.alert_notifications.labels("log", "true").inc()
m.inflight.inc()
(home / f"scheduler-{os.getpid()}.env").write_text(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "-"))
if not (home / "crashed").exists():
    (home / "crashed").write_text("")
    sys.exit(1)
while True:
    time.sleep(1)
"""
# A stand-in worker: records the metrics directory it was given, then idles.
WORKER = """
import os, sys, time, pathlib
home = pathlib.Path(sys.argv[1])
(home / f"worker-{os.getpid()}.env").write_text(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "-"))
while True:
    time.sleep(1)
"""


def wait_until(cond: Callable[[], bool], sup: Supervisor, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.step()
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervisor]:
    (tmp_path / "scheduler.py").write_text(SCHEDULER)
    (tmp_path / "worker.py").write_text(WORKER)
    scaling = ScalingSettings.model_validate(
        {
            "interval_seconds": 0.1,
            "restart_initial_seconds": 0.1,
            "restart_max_seconds": 0.4,
            "stop_grace_seconds": 1.0,
            "heartbeat_timeout_seconds": 60.0,
        }
    )
    scheduler = ChildSpec(
        "scheduler", "scheduler", (sys.executable, str(tmp_path / "scheduler.py"), str(tmp_path))
    )
    sup = Supervisor(
        home=tmp_path,
        scaling=scaling,
        policies={"p": ScalingPolicy.from_settings(scaling, 1, 2)},
        worker_command=lambda p: (sys.executable, str(tmp_path / "worker.py"), str(tmp_path)),
        fixed=(scheduler,),
        metrics=Metrics(),
        metrics_dir=tmp_path / "run" / "metrics",
    )
    try:
        yield sup
    finally:
        sup.shutdown()


def test_supervisor_shares_one_metrics_dir_and_restarts_the_scheduler(
    supervised: Supervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run" / "metrics"
    folder.mkdir(parents=True)
    (folder / "counter_999999.db").write_bytes(b"from an earlier run")
    sup = supervised
    sup.start()
    assert not (folder / "counter_999999.db").exists()

    def envs(kind: str) -> dict[int, str]:
        return {int(f.stem.split("-")[1]): f.read_text() for f in tmp_path.glob(f"{kind}-*.env")}

    wait_until(lambda: len(envs("scheduler")) == 2 and len(envs("worker")) == 1, sup)
    assert set(envs("scheduler").values()) == set(envs("worker").values()) == {str(folder)}
    scheduler = sup.fixed[0]
    assert (scheduler.restarts, scheduler.last_exit_code, scheduler.state) == (1, 1, "running")
    (crashed,) = set(envs("scheduler")) - {scheduler.pid}
    assert not (folder / f"gauge_livesum_{crashed}.db").exists(), "the crashed scheduler was marked dead"
    assert (folder / f"counter_{crashed}.db").exists()
    assert (folder / f"gauge_livesum_{scheduler.pid}.db").exists()

    monkeypatch.setenv(MULTIPROC_ENV, str(folder))
    found = samples(render_metrics(sup.metrics).decode())
    assert value(found, "keeneye_alert_notifications_total", channel="log", ok="true") == 2
    assert value(found, "keeneye_inflight_requests") == 1  # the running scheduler's only

    # The supervisor's own exports, min/max beside the replicas.
    own = samples(sup.metrics.render().decode())
    assert value(own, "keeneye_replicas", pipeline="p") == 1
    assert value(own, "keeneye_min_replicas", pipeline="p") == 1
    assert value(own, "keeneye_max_replicas", pipeline="p") == 2

    running = scheduler.pid
    sup.shutdown()
    assert not (folder / f"gauge_livesum_{running}.db").exists(), "stopped children are marked dead too"


@pytest.mark.parametrize(
    ("api_url", "scheduler", "roles", "note"),
    [
        ("http://127.0.0.1:8000", True, ["api", "scheduler"], None),
        ("http://127.0.0.1:8000", False, ["api"], "scheduler: not started (--no-scheduler)"),
        (None, True, ["scheduler"], "api: not started (--no-api)"),
    ],
)
def test_keeneye_up_fixed_children(
    api_url: str | None, scheduler: bool, roles: list[str], note: str | None
) -> None:
    fixed, notes = _fixed_children("py", host="127.0.0.1", port=8000, api_url=api_url, scheduler=scheduler)
    assert [c.role for c in fixed] == roles
    if scheduler:
        spec = next(c for c in fixed if c.role == "scheduler")
        assert (spec.name, spec.command, spec.health_url) == (
            "scheduler",
            ("py", "-m", "keeneye", "scheduler"),
            None,
        )
    if note is not None:
        assert any(n.startswith(note) for n in notes), notes
    assert any(n.startswith("scheduler:") for n in notes) is not scheduler
