"""``keeneye demo line-inspection``: the line part end to end — a stand-in PLC (a real pymodbus server),
a recorded line video (PyAV), the edge runner over it, the registers read back, the dashboard's JSON.

The quick test inspects with a tiny bundle (``--model``) so it runs in the normal suite; the whole
demo with training is the ``slow`` test below."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.domain import ConfigError
from keeneye.line_demo import run_line_demo
from keeneye.settings import Settings
from keeneye.store import ObservationFilter, open_results_db
from tests.integration.edge.edge_support import bundle
from tests.services import free_port


def test_the_line_demo_inspects_a_video_writes_the_plc_and_fills_the_dashboard(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    model = bundle(tmp_path / "bundle").path
    console = Console(record=True, width=200)
    result = run_line_demo(settings, console, parts=20, fps=None, port=free_port(), model_dir=model)

    summary = result.summary
    assert summary["frames"] == 20 and summary["stored"] == 20
    assert summary["ok"] + summary["defect"] + sum(summary["failsafe"].values()) == 20
    assert (summary["first_sequence"], summary["last_sequence"]) == (1, 20)
    # HR0-HR5 read back over Modbus TCP: the last part's sequence and a result code; a moving heartbeat
    assert result.registers[0] == 20
    assert result.registers[1] in (1, 2, 3)
    assert len(result.registers) == 6
    assert result.video.suffix == ".mp4" and result.video.stat().st_size > 0

    stored = open_results_db(settings).find_observations(
        ObservationFilter(pipeline="line-inspection"), limit=50
    )
    assert sorted(int(str(o.metadata["sequence"])) for o in stored.observations) == list(range(1, 21))
    assert {o.metadata["sink"] for o in stored.observations} == {"acked"}  # every part reached the PLC

    [line] = result.dashboard["lines"]
    [camera] = line["cameras"]
    assert (line["line"], camera["camera"], camera["parts"]) == ("L1", "cam-1", 20)
    # the link as of the newest stored part: connected, or "stopped" when that part was stored at shutdown
    assert camera["plc"]["state"] in {"up", "stopped"}
    assert camera["plc"]["sink"] == "modbus" and camera["plc"]["consecutive_failures"] == 0
    assert camera["plc"]["last_ack_at"] is not None
    assert camera["latency_ms"]["samples"] == 20
    text = console.export_text()
    assert re.search(r"HR0 = last part's sequence\s*│ yes", text)
    assert "/lines shows L1/cam-1: 20 parts" in text


def test_an_unknown_demo_is_refused_with_the_known_ones() -> None:
    out = CliRunner().invoke(app, ["demo", "fruit"], env={"COLUMNS": "200"})
    assert isinstance(out.exception, ConfigError)  # `keeneye` prints it as one line and exits 2
    assert out.exception.one_line() == (
        "APPLICATION: no demo 'fruit' — use one of: species-id, line-inspection, crop-health"
    )
    assert "line-inspection" in CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).output


@pytest.mark.slow
@pytest.mark.soak  # minutes of training: out of `make test`, run with `pytest -m soak`
def test_the_whole_line_demo_trains_promotes_inspects_and_serves(tmp_path: Path) -> None:
    env = {**os.environ, "KEENEYE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    args = ["demo", "line-inspection", "--no-serve", "--parts", "60", "--port", str(free_port())]
    out = subprocess.run(
        [sys.executable, "-m", "keeneye", *args], capture_output=True, text=True, env=env, timeout=900
    )
    if (
        out.returncode != 0
        and "the gates refused the demo's line-inspection model" in out.stderr + out.stdout
    ):
        pytest.fail("the demo's default recipe no longer passes the gates: " + out.stderr[-1500:])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "models:/line-inspection@champion → version 1" in out.stdout
    assert re.search(r"HR0 = last part's sequence\s*│ yes", out.stdout)
    assert "/lines shows L1/cam-1: 60 parts" in out.stdout
