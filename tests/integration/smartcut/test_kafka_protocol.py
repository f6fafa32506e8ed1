"""The seed's protocol on Kafka (tansu) with a plugin that imports nothing from keeneye
(bare_plugin.py: confluent-kafka only) — the backend's request ends with that plugin's segments."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keeneye.settings import Settings
from keeneye.store import open_results_db
from keeneye.stream.bus import open_bus
from keeneye.video import GroundTruth, SynthSpec, generate_video
from keeneye.video.backend import SmartcutBackend
from keeneye.video.messages import STOPPED_PLUGINS
from tests import services

pytestmark = pytest.mark.integration

BARE = Path(__file__).with_name("bare_plugin.py")


def test_bare_plugin_imports_only_confluent_kafka_and_the_standard_library() -> None:
    tree = ast.parse(BARE.read_text())
    modules = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "keeneye" not in modules
    assert modules - set(sys.stdlib_module_names) == {"confluent_kafka"}


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """75 s at 5 fps, 160×90: 75 frames at 1 s → two chunks (50 + 25)."""
    spec = SynthSpec(hours=75 / 3600, events=1, seed=3, width=160, height=90, name="tiny")
    return generate_video(tmp_path_factory.mktemp("tiny"), spec)


def test_backend_and_a_bare_kafka_plugin_speak_the_seed_protocol(
    kafka_broker: services.Broker, tmp_path: Path, tiny_video: tuple[Path, GroundTruth]
) -> None:
    settings = Settings(home=tmp_path / "home", bus_url=kafka_broker.url)
    root = settings.smartcut.root
    assert root is not None
    root.mkdir(parents=True)
    bus = open_bus(settings)
    backend = SmartcutBackend(bus, open_results_db(settings), root)
    log = (tmp_path / "plugin.log").open("wb")
    plugin = subprocess.Popen(
        [sys.executable, "-u", str(BARE), kafka_broker.bootstrap, str(root), "bare"], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while "bare" not in backend.plugins() and time.monotonic() < deadline:
            backend.directory.refresh(timeout=0.5)
        assert backend.plugins()["bare"] == {
            "plugin_name": "bare",
            "label": "Bare Kafka plugin",
            "img_size": 160,
        }
        video = tiny_video[0]
        uid = backend.submit_video(video, user_id="user_id1", plugin="bare", sensitivity=1.0)
        while time.monotonic() < deadline + 60 and backend.db.smartcut_request(uid).status not in (
            "done",
            "failed",
        ):
            backend.collect(timeout=0.5)
        record = backend.db.smartcut_request(uid)
        assert record.status == "done", (record, (tmp_path / "plugin.log").read_text())
        assert record.segments == {"timestamps": [{"start": 0.0, "stop": 74.0}]}
        assert (record.frames_sampled, record.chunks_sent) == (75, 2)
        assert not (root / uid).exists()
    finally:
        plugin.terminate()
        plugin.wait(timeout=30)
        log.close()
    with bus.subscribe([STOPPED_PLUGINS], "test-stopped") as consumer:
        got: list[object] = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = [json.loads(m.value) for m in consumer.poll(max_messages=5, timeout=0.5)]
    assert got == [{"plugin_name": "bare"}]
    backend.close()
    bus.close()
