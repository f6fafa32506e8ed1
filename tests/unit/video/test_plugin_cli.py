"""``keeneye plugin run NAME``: a real process on the embedded bus — announces, answers, says stopped on
SIGTERM; an unknown NAME exits 2 naming the installed plugins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from keeneye.settings import Settings
from keeneye.stream.bus import open_bus
from keeneye.video import GroundTruth
from keeneye.video.messages import PROCESSED_FILES, STARTED_PLUGINS, STOPPED_PLUGINS
from tests.unit.video.bus_support import announce_chunks, drain, values


def test_plugin_run_serves_the_protocol_until_sigterm(
    tmp_path: Path, short_video: tuple[Path, GroundTruth]
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    assert settings.smartcut.root is not None
    settings.smartcut.root.mkdir(parents=True)
    bus = open_bus(settings)
    env = {**os.environ, "KEENEYE_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keeneye", "plugin", "run", "scene"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert values(drain(bus, STARTED_PLUGINS, "t-started", 1)) == [
            {"plugin_name": "scene", "label": "Scene change", "img_size": 320}
        ]
        uid, _ = announce_chunks(bus, settings.smartcut.root, short_video[0], "scene", "u1")
        answers = values(drain(bus, PROCESSED_FILES, "t-answers", 1))
        assert [a["user_request_uid"] for a in answers] == [uid]  # type: ignore[index]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped after 1 answered requests" in err
    assert values(drain(bus, STOPPED_PLUGINS, "t-stopped", 1)) == [{"plugin_name": "scene"}]
    bus.close()


def test_unknown_plugin_exits_2_and_names_the_installed_ones(tmp_path: Path) -> None:
    env = {**os.environ, "KEENEYE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "keeneye", "plugin", "run", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no smartcut plugin named 'nope'" in done.stderr and "motion, objects, scene" in done.stderr
