"""Drift end to end: synthetic images through the running API fire ``DriftDetected`` — or do not.

The champion's reference profile comes from one synthetic species-id set. Live traffic from a second
set of the same generator (another seed) must not alarm; traffic from ``keeneye synth species-id
--drift lighting`` must: the API's drift window closes with an alarm, ``keeneye_drift_alarm`` goes to
1 on ``/metrics``, and the rules engine — scraping that endpoint like ``keeneye up``'s scheduler —
fires the alert and posts it to a real webhook.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keeneye.imaging import decode_image
from keeneye.models.bundle import ModelBundle
from keeneye.models.testing import tiny_classifier
from keeneye.monitoring.alerts.engine import RulesEngine
from keeneye.monitoring.alerts.source import ScrapeSource
from keeneye.registry import ModelRegistry
from keeneye.settings import AlertingSettings, ChannelSettings, MonitoringSettings, Settings
from keeneye.store import open_results_db
from keeneye.training.export import reference_profile
from tests.serving_support import (
    SPECIES,
    fast_registry_store,
    live_server,
    species_manifest,
    with_species_limits,
)
from tests.unit.monitoring.alert_support import WebhookReceiver, webhook_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WINDOW = 60


def synth(out: Path, n: int, seed: int, drift: str | None = None) -> list[Path]:
    """``keeneye synth species-id`` as a user runs it."""
    args = ["synth", "species-id", "--out", str(out), "--n", str(n), "--seed", str(seed), "--size", "64"]
    if drift:
        args += ["--drift", drift]
    done = subprocess.run(
        [sys.executable, "-m", "keeneye", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return sorted((out / "images").glob("*.jpg"))


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as receiver:
        yield receiver


def test_drifted_traffic_fires_the_drift_alert_and_undrifted_does_not(
    settings: Settings, tmp_path: Path, hook: WebhookReceiver
) -> None:
    url = hook.url
    settings = settings.model_copy(
        update={
            "monitoring": MonitoringSettings(drift_window_size=WINDOW, drift_min_samples=30),
            "alerting": AlertingSettings(
                channels=[ChannelSettings(name="hook", kind="webhook", url=url)], route=["hook"]
            ),
        }
    )
    settings = with_species_limits(
        settings, tmp_path, rate_per_second=1e6, burst=10**6
    )  # a test, not a flood
    reference = synth(tmp_path / "reference", 200, seed=1)
    profile = reference_profile(
        [decode_image(p.read_bytes(), max_pixels=settings.imaging.max_pixels) for p in reference], seed=0
    )
    fast_registry_store(settings)
    manifest = species_manifest()
    manifest.reference_profile = profile
    bundle = ModelBundle.write(tmp_path / "bundle", tiny_classifier(len(SPECIES)), manifest)
    ModelRegistry(settings, events=open_results_db(settings)).register(
        "species-id", bundle, alias="champion", gates_passed=True
    )
    calm = synth(tmp_path / "calm", WINDOW, seed=2)
    drifted = synth(tmp_path / "drifted", WINDOW, seed=3, drift="lighting")

    with live_server(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        engine = RulesEngine.from_settings(settings, source=ScrapeSource([f"{server.url}/metrics"]))

        def send(images: list[Path]) -> None:
            for path in images:
                r = client.post(
                    "/v1/pipelines/species-id/predict", files={"file": (path.name, path.read_bytes())}
                )
                assert r.status_code == 200, r.text

        def drift_alerts() -> list[str]:
            return [a.state for a in engine.evaluate() if a.rule == "DriftDetected"]

        send(calm)
        reports = client.get("/v1/pipelines/species-id/drift").json()["reports"]
        assert len(reports) == 1 and reports[0]["n"] == WINDOW
        assert reports[0]["alarm"] is False, reports[0]["alarms"]
        assert 'keeneye_drift_alarm{pipeline="species-id"} 0.0' in client.get("/metrics").text
        assert drift_alerts() == []
        assert hook.bodies == []

        send(drifted)
        reports = client.get("/v1/pipelines/species-id/drift").json()["reports"]
        assert len(reports) == 2 and reports[0]["alarm"] is True
        assert "brightness" in reports[0]["alarms"]
        assert 'keeneye_drift_alarm{pipeline="species-id"} 1.0' in client.get("/metrics").text
        assert drift_alerts() == ["firing"]  # for: 0s — fires on the first evaluation

    bodies = hook.bodies
    assert len(bodies) == 1, json.dumps(bodies)[:500]
    alert = bodies[0]["alerts"][0]
    assert alert["labels"]["alertname"] == "DriftDetected"
    assert alert["labels"]["pipeline"] == "species-id"
    assert alert["status"] == "firing"
