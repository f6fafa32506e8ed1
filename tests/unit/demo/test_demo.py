"""`keeneye demo` end to end, as a newcomer runs it (smaller data so the suite stays quick)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import free_port

pytestmark = pytest.mark.slow


def test_demo_trains_promotes_serves_and_answers(tmp_path: Path) -> None:
    env = {**os.environ, "KEENEYE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    args = ["demo", "--no-serve", "--images", "300", "--epochs", "8", "--port", str(free_port())]
    out = subprocess.run(
        [sys.executable, "-m", "keeneye", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "models:/species-id@champion → version 1" in out.stdout
    correct = next(line for line in out.stdout.splitlines() if " correct. " in line)
    right, total = (int(x) for x in correct.split(" ", 1)[0].split("/"))
    assert total == 8 and right >= 6  # unseen photos, a model trained for seconds
    assert "gets 422" in out.stdout  # the refused text file
    listed = subprocess.run(
        [sys.executable, "-m", "keeneye", "models", "list", "--json"], capture_output=True, text=True, env=env
    )
    versions = json.loads(listed.stdout)
    assert [(v["version"], "champion" in v["aliases"]) for v in versions] == [("1", True)]
    # The demo's training is a training run; the closing panel fits --no-serve and this KEENEYE_HOME.
    runs = subprocess.run(
        [sys.executable, "-m", "keeneye", "runs", "species-id", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    listed_runs = json.loads(runs.stdout)["runs"]
    assert [(r["cause"], r["status"], r["outcome"]["version"]) for r in listed_runs] == [
        ("manual", "succeeded", "1")
    ]
    assert "is serving" not in out.stdout and "--no-serve" in out.stdout
    assert str(tmp_path / "home") in out.stdout.replace("\n", "")
