"""The Kubernetes manifests (the scaled counterpart of `keeneye up`) parse and keep the same bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from keeneye.pipelines import PipelineCatalog
from keeneye.settings import Settings
from keeneye.stream import DEFAULT_GROUP, input_topic

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"


def docs(name: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / name).read_text())}


def test_api_hpa_bounds_and_metric(settings: Settings) -> None:
    spec = PipelineCatalog(settings).get("species-id").replicas
    api = docs("api.yaml")
    hpa = api["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (spec.min, spec.max) == (4, 6)
    assert hpa["scaleTargetRef"]["name"] == api["Deployment"]["metadata"]["name"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert (
        hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
        == settings.scaling.scale_down_window_seconds
    )
    container = api["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "serve"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_worker_keda_scales_on_the_input_topic_lag(settings: Settings) -> None:
    worker = docs("worker.yaml")
    scaled = worker["ScaledObject"]["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (4, 6)
    assert scaled["scaleTargetRef"]["name"] == worker["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] == input_topic("species-id")
    assert meta["consumerGroup"] == DEFAULT_GROUP
    assert float(meta["lagThreshold"]) == settings.scaling.lag_per_replica_target
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == settings.scaling.scale_down_window_seconds
    args = worker["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == [
        "worker",
        "--pipeline",
        "species-id",
        "--group",
        DEFAULT_GROUP,
        "--metrics-port",
        "9100",
        "--metrics-host",
        "0.0.0.0",  # a pod's metrics endpoint listens on all interfaces
    ]
