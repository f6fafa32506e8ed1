"""``keeneye up`` runs each smartcut plugin as its own supervised process (docs/operations.md): it
announces itself on started-plugins, comes back after a crash, and says stopped-plugins on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keeneye.settings import Settings
from keeneye.stream.bus import open_bus
from keeneye.video.messages import STARTED_PLUGINS, STOPPED_PLUGINS


def _announcements(settings: Settings, topic: str, group: str) -> list[dict[str, object]]:
    bus = open_bus(settings)
    got: list[dict[str, object]] = []
    try:
        with bus.subscribe([topic], group) as consumer:
            while batch := consumer.poll(max_messages=50, timeout=0.2):
                for message in batch:
                    got.append(json.loads(message.value))
                    consumer.ack(message)
    finally:
        bus.close()
    return got


def _plugin_pid(home: Path) -> int | None:
    try:
        view = json.loads((home / "run" / "system.json").read_text())
    except (OSError, ValueError):
        return None
    pids = [p["pid"] for p in view["processes"] if p["role"] == "plugin" and p["state"] == "running"]
    return pids[0] if pids else None


@pytest.mark.slow
def test_up_supervises_a_plugin_restarts_it_after_a_crash_and_stops_it_with_sigterm(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    env = {
        **os.environ,
        "KEENEYE_HOME": str(settings.home),
        "KEENEYE_CONFIG": os.devnull,
        "KEENEYE_SCALING__INTERVAL_SECONDS": "0.5",
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "keeneye", "up", "--no-api", "--no-scheduler", "--pipelines", "species-id",
         "--min-replicas", "0", "--max-replicas", "1", "--plugins", "motion"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 120
        first_pid = None
        while time.monotonic() < deadline and (not started or first_pid is None):
            assert up.poll() is None, up.communicate()[1][-3000:]
            started += _announcements(settings, STARTED_PLUGINS, "test-started")
            first_pid = _plugin_pid(settings.home)
            time.sleep(0.3)
        assert started == [{"plugin_name": "motion", "label": "Motion", "img_size": 320}]
        assert first_pid is not None

        os.kill(first_pid, signal.SIGKILL)  # a crash: no stopped-plugins from it
        while time.monotonic() < deadline and len(started) < 2:
            assert up.poll() is None, up.communicate()[1][-3000:]
            started += _announcements(settings, STARTED_PLUGINS, "test-started")
            time.sleep(0.3)
        assert [m["plugin_name"] for m in started] == ["motion", "motion"]  # restarted, announced again
        assert _plugin_pid(settings.home) not in (None, first_pid)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            out, err = up.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0, err[-3000:]
    assert "plugins: motion" in out and "keeneye up: stopped" in out
    assert _announcements(settings, STOPPED_PLUGINS, "test-stopped") == [{"plugin_name": "motion"}]
    view = json.loads((settings.home / "run" / "system.json").read_text())
    (plugin,) = [p for p in view["processes"] if p["role"] == "plugin"]
    assert (plugin["name"], plugin["restarts"], plugin["state"]) == ("plugin-motion", 1, "stopped")
