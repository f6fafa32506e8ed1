"""``keeneye up`` runs one ``keeneye inspect`` per camera of ``edge.cameras`` (keeneye.yaml) under the
supervisor: against a real Modbus TCP server and a watched folder, a runner killed like a crash is
restarted with backoff and goes on where it stopped — the sequence continues and no part is decided
twice."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from keeneye.domain import ConfigError
from keeneye.metrics import Metrics
from keeneye.scaling import Supervisor
from keeneye.scaling.cameras import camera_children, inspect_command
from keeneye.settings import EdgeCamera, ScalingSettings, Settings, load_settings
from keeneye.store import ObservationFilter, open_results_db
from tests.integration.edge.edge_support import bundle, write_frames
from tests.integration.sinks.plc_servers import ModbusServer, ModbusWrite

pytestmark = pytest.mark.integration


def results(modbus: ModbusServer) -> list[ModbusWrite]:
    return [w for w in modbus.writes() if w.fc == 16 and w.address == 0]


def test_cameras_come_from_keeneye_yaml_and_become_inspect_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "keeneye.yaml"
    config.write_text(
        "edge:\n  cameras:\n"
        "    - {line: L1, camera: cam-1, source: /data/l1, plc: 'modbus://10.0.0.5', sku: A-100, fps: 30}\n"
        "    - {line: L1, camera: cam-2, source: 'rtsp://cam2/s', plc: 'opcua://10.0.0.5', replay: false,"
        " line_stop: 'mqtt://broker/plant/L1/stop'}\n"
    )
    monkeypatch.setenv("KEENEYE_CONFIG", str(config))
    s = load_settings(home=tmp_path / "home")
    children, notes = camera_children(s, "py")
    assert notes == []
    assert [(c.name, c.role) for c in children] == [
        ("inspect-L1-cam-1", "inspect"),
        ("inspect-L1-cam-2", "inspect"),
    ]
    assert children[0].command == (
        "py", "-m", "keeneye", "inspect", "--pipeline", "line-inspection", "--source", "/data/l1",
        "--line", "L1", "--camera", "cam-1", "--plc", "modbus://10.0.0.5", "--sku", "A-100", "--fps", "30",
    )  # fmt: skip
    assert children[1].command[-3:] == ("--no-replay", "--line-stop", "mqtt://broker/plant/L1/stop")
    monkeypatch.setenv("KEENEYE_CONFIG", os.devnull)
    assert camera_children(Settings(home=tmp_path), "py") == (
        [],
        ["inspect: no camera configured (edge.cameras in keeneye.yaml)"],
    )
    monkeypatch.setenv("KEENEYE_CONFIG", str(config))

    config.write_text(
        "edge:\n  cameras:\n"
        "    - {line: L1, camera: cam-1, source: a, plc: 'modbus://x'}\n"
        "    - {line: L1, camera: cam-1, source: b, plc: 'modbus://x'}\n"
    )
    with pytest.raises(ConfigError, match="L1/cam-1 more than once"):
        load_settings(home=tmp_path / "home")
    config.write_text("edge:\n  cameras:\n    - {line: 'L 1', camera: c, source: a, plc: 'modbus://x'}\n")
    with pytest.raises(ConfigError, match="KEENEYE_EDGE__CAMERAS__0__LINE"):
        load_settings(home=tmp_path / "home")


def test_a_crashed_runner_is_restarted_and_goes_on_where_it_stopped(
    tmp_path: Path, modbus: ModbusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    frames = write_frames(tmp_path / "frames", ["ok", "defect", "small"] * 20)  # 60 parts, played at 20/s
    camera = EdgeCamera(
        line="L1", camera="C1", source=str(frames), plc=modbus.url, sku="A-100", fps=20,
        model=bundle(tmp_path / "bundle").path,
    )  # fmt: skip
    settings = Settings(home=home, edge={"cameras": [camera], "flush_interval_seconds": 0.1})
    # the children read their settings as `keeneye up`'s would: from the environment
    monkeypatch.setenv("KEENEYE_HOME", str(home))
    monkeypatch.setenv("KEENEYE_CONFIG", os.devnull)
    monkeypatch.setenv("KEENEYE_PLC__HEARTBEAT_SECONDS", "0.2")
    children, notes = camera_children(settings, sys.executable)
    assert children[0].command == inspect_command(sys.executable, camera)
    scaling = ScalingSettings(interval_seconds=0.2, restart_initial_seconds=0.2, restart_max_seconds=1.0,
                              stop_grace_seconds=10.0)  # fmt: skip
    sup = Supervisor(
        home=home, scaling=scaling, policies={}, worker_command=lambda p: ("true",), fixed=children,
        metrics=Metrics(), notes=notes,
    )  # fmt: skip
    sup.start()
    try:

        def run_until(cond: object, timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                sup.step()
                if cond():  # type: ignore[operator]
                    return
                time.sleep(0.05)
            raise AssertionError(f"not within {timeout} s: {what}")

        run_until(lambda: len(results(modbus)) >= 10, 90, "10 parts at the PLC")
        [child] = sup.fixed
        first_pid = child.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)  # a crash
        run_until(lambda: child.restarts == 1 and child.pid not in (None, first_pid), 30, "a restart")
        run_until(lambda: max(w.values[0] for w in results(modbus)) >= 60, 90, "every part decided")
        view = sup.view()
        [process] = [p for p in view.processes if p.name == "inspect-L1-C1"]
        assert (process.role, process.restarts) == ("inspect", 1)
    finally:
        sup.shutdown()

    sequences = [w.values[0] for w in results(modbus)]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)  # on, never twice
    assert sequences[-1] == 60 or max(sequences) >= 60
    stored = open_results_db(Settings(home=home)).find_observations(
        ObservationFilter(pipeline="line-inspection"), limit=500
    )
    frames_decided = [str(o.metadata["frame"]) for o in stored.observations]
    # The restart resumed after the last journaled frame: 60 files, each decided once (a part in flight at
    # the kill and never journaled is decided again after the restart, so at most one more)
    assert len(set(frames_decided)) == 60
    assert len(frames_decided) <= 61
