"""Helpers for the ingestion / worker / reconciler tests: settings per bus, a private pipeline, polling."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from keeneye.pipelines import PipelineCatalog
from keeneye.settings import BusSettings, Settings, StreamSettings
from keeneye.stream import Bus, Consumer, Message, PipelineWorker


@pytest.fixture(params=["sqlite", pytest.param("kafka", marks=pytest.mark.integration)])
def bus_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "kafka":
        return str(request.getfixturevalue("kafka_broker").url)
    return f"sqlite:///{tmp_path / 'home' / 'bus.db'}"


def stream_settings(tmp_path: Path, bus_url: str | None = None, **stream: Any) -> tuple[Settings, str]:
    """Settings with short leases and a private copy of species-id under a unique name.

    The unique name gives every test its own topics, so tests sharing one Kafka broker never see each
    other's messages. The copy serves the same registered model (``species-id``).
    """
    home = tmp_path / "home"
    base = Settings(home=home)
    spec = PipelineCatalog(base).get("species-id").model_dump(mode="json", exclude_none=True)
    name = f"species-{uuid.uuid4().hex[:8]}"
    spec["name"] = name
    folder = tmp_path / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    defaults: dict[str, Any] = {
        "poll_timeout_seconds": 0.1,
        "reconcile_interval_seconds": 3600.0,  # tests that want reconciling ask for it
        "status_interval_seconds": 0.2,
    }
    settings = Settings(
        home=home,
        bus_url=bus_url or "",
        bus=BusSettings(lease_seconds=2.0, session_timeout_ms=6000, partitions=2),
        stream=StreamSettings(**(defaults | stream)),
        pipelines={"dirs": [folder]},
    )
    return settings, name


def drain(consumer: Consumer, n: int, timeout: float = 20.0, *, ack: bool = True) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for m in consumer.poll(max_messages=n - len(got), timeout=0.2):
            got.append(m)
            if ack:
                consumer.ack(m)
    return got


def run_until(worker: PipelineWorker, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Drive ``worker.step()`` in this thread until ``done()`` (checked between steps)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"condition not reached in {timeout}s; counts={worker.counts}"
        worker.step()


def publish_raw(bus: Bus, topic: str, value: bytes, headers: dict[str, str] | None = None) -> None:
    bus.publish(topic, value, headers=headers)
    bus.flush()
