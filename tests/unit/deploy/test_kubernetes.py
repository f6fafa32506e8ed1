"""deploy/kubernetes: the committed manifests are exactly what ``keeneye deploy kubernetes`` makes of
values.yaml today; every core object validates strictly against the Kubernetes 1.37 schemas shipped
by kubernetes-validate (offline); the CRD objects it has no schema for (KEDA ScaledObject,
ServiceMonitor, PrometheusRule) are checked field by field here; checkov finds nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.domain import InvalidInput
from keeneye.monitoring.alerts.grafana import grafana_dashboards
from keeneye.monitoring.alerts.promql import rule_file
from keeneye.monitoring.alerts.rules import load_rules
from keeneye.pipelines import PipelineCatalog, parse_spec_text
from keeneye.scaling.kubernetes import KubernetesValues, load_values, pipeline_sources, render
from keeneye.settings import Settings
from keeneye.stream import DEFAULT_GROUP, input_topic
from tests.services import IN_CI
from tests.unit.monitoring.promtool_support import run_promtool

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "kubernetes"
VALUES = K8S / "values.yaml"
VERSION = "1.37.0"
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
CHECKOV = Path(os.environ.get("KEENEYE_CHECKOV", ROOT / ".venv" / "tools" / "checkov" / "bin" / "checkov"))


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "values.yaml":
            out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _by(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_committed_manifests_are_a_fresh_render(tmp_path: Path, settings: Settings) -> None:
    files = render(
        load_values(VALUES), settings, pipeline_sources(settings), load_rules(settings.alerting.rules)
    )
    committed = {p.name for p in K8S.glob("*.yaml")} - {"values.yaml"}
    assert committed == set(files)
    for name, text in files.items():
        assert (K8S / name).read_text() == text, (
            f"deploy/kubernetes/{name} is stale: keeneye deploy kubernetes "
            "--values deploy/kubernetes/values.yaml --out deploy/kubernetes"
        )
    # the command writes the same bytes
    result = CliRunner().invoke(
        app, ["deploy", "kubernetes", "--values", str(VALUES), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_text() for p in tmp_path.glob("*.yaml")} == files


def test_core_objects_validate_strictly_and_crds_are_the_known_three(objects: list[dict[str, Any]]) -> None:
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        try:
            kubernetes_validate.validate(obj, VERSION, strict=True)
        except kubernetes_validate.utils.SchemaNotFoundError:
            assert (obj["apiVersion"], obj["kind"]) in CRDS, obj["kind"]
    assert {
        "Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "PersistentVolumeClaim", "NetworkPolicy", "ScaledObject", "ServiceMonitor", "PrometheusRule",
    } == kinds  # fmt: skip


def test_the_schema_check_can_fail(objects: list[dict[str, Any]]) -> None:
    deployment = json.loads(json.dumps(_by(objects, "Deployment")["keeneye-api"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # a typo, caught by strict
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        kubernetes_validate.validate(deployment, VERSION, strict=True)


def test_api_hpa_on_cpu_and_inflight_with_probes(objects: list[dict[str, Any]], settings: Settings) -> None:
    hpa = _by(objects, "HorizontalPodAutoscaler")["keeneye-api"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (4, 6)
    assert hpa["scaleTargetRef"]["name"] in _by(objects, "Deployment")
    cpu, inflight = hpa["metrics"]
    assert cpu["resource"]["name"] == "cpu" and cpu["resource"]["target"]["averageUtilization"] == 70
    assert inflight["pods"]["metric"]["name"] == "keeneye_inflight_requests"  # keeneye/metrics.py's gauge
    assert (
        hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
        == settings.scaling.scale_down_window_seconds
    )
    (api,) = _by(objects, "Deployment")["keeneye-api"]["spec"]["template"]["spec"]["containers"]
    assert api["args"][0] == "serve"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert _by(objects, "PodDisruptionBudget")["keeneye-api"]["spec"]["minAvailable"] == 3


def test_workers_scale_on_kafka_lag_per_pipeline(objects: list[dict[str, Any]], settings: Settings) -> None:
    scaled = _by(objects, "ScaledObject")
    deployments = _by(objects, "Deployment")
    catalog = PipelineCatalog(settings)
    assert set(scaled) == {f"keeneye-worker-{n}" for n in catalog.names()}
    for name, obj in scaled.items():
        spec = obj["spec"]
        pipeline = name.removeprefix("keeneye-worker-")
        bounds = catalog.get(pipeline).replicas
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (bounds.min, bounds.max)
        assert spec["maxReplicaCount"] <= 12  # ≤ the partitions of the values file
        assert spec["scaleTargetRef"]["name"] == name and name in deployments
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["topic"] == input_topic(pipeline) and meta["consumerGroup"] == DEFAULT_GROUP
        assert float(meta["lagThreshold"]) == settings.scaling.lag_per_replica_target
        assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata is a string map
        args = deployments[name]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[:3] == ["worker", "--pipeline", pipeline] and "0.0.0.0" in args


def test_monitoring_objects(objects: list[dict[str, Any]], settings: Settings) -> None:
    rule = _by(objects, "PrometheusRule")["keeneye"]["spec"]
    rules = load_rules(settings.alerting.rules)
    assert rule == rule_file(rules, [s for s in PipelineCatalog(settings).specs()])
    assert all({"alert", "expr", "labels"} <= set(r) for g in rule["groups"] for r in g["rules"])
    monitor = _by(objects, "ServiceMonitor")["keeneye"]["spec"]
    service_ports = {p["name"] for s in _by(objects, "Service").values() for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["endpoints"]} == {"http", "metrics"} <= service_ports
    dashboards = _by(objects, "ConfigMap")["keeneye-dashboards"]
    assert (
        set(dashboards["data"])
        == set(grafana_dashboards())
        == {p.name for p in (ROOT / "deploy" / "grafana").glob("*.json")}
    )
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_pods_are_locked_down_and_read_urls_from_the_secret(objects: list[dict[str, Any]]) -> None:
    for name, deployment in _by(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        for c in pod["containers"]:
            assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"], (
                name
            )
            assert {"cpu", "memory"} == set(c["resources"]["requests"]), name
            assert {"secretRef": {"name": "keeneye-env"}} in c["envFrom"], name
            assert not any("URL" in e.get("name", "") for e in c.get("env", [])), (
                name
            )  # URLs only in the Secret
        if "livenessProbe" not in pod["containers"][0]:
            assert "CKV_K8S_8=" in " ".join(deployment["metadata"]["annotations"].values()), name
    for pdb in _by(objects, "PodDisruptionBudget").values():
        selected = [
            d
            for d in _by(objects, "Deployment").values()
            if pdb["spec"]["selector"]["matchLabels"] == d["spec"]["selector"]["matchLabels"]
        ]
        assert len(selected) == 1
    policies = _by(objects, "NetworkPolicy")
    assert policies["keeneye-default-deny"]["spec"] == {
        "podSelector": {"matchLabels": {}},
        "policyTypes": ["Ingress"],
        "ingress": [],
    }


def test_scheduler_pair_plugins_and_cameras_on_edge_nodes(objects: list[dict[str, Any]]) -> None:
    deployments = _by(objects, "Deployment")
    scheduler = deployments["keeneye-scheduler"]["spec"]
    assert scheduler["replicas"] == 2 and "strategy" not in scheduler  # the leader lock, not Recreate
    assert _by(objects, "PodDisruptionBudget")["keeneye-scheduler"]["spec"] == {
        "selector": scheduler["selector"],
        "minAvailable": 1,
    }
    cameras = {n: d for n, d in deployments.items() if n.startswith("keeneye-camera-")}
    assert set(cameras) == {"keeneye-camera-l1-cam-1", "keeneye-camera-l1-cam-2"}
    for camera in cameras.values():
        pod = camera["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"keeneye.io/edge": "true"}
        assert pod["tolerations"][0]["key"] == "keeneye.io/edge"
        assert pod["containers"][0]["args"][0] == "inspect"
    plugins = {
        d["spec"]["template"]["spec"]["containers"][0]["args"][2]
        for n, d in deployments.items()
        if n.startswith("keeneye-plugin-")
    }
    assert plugins == {"motion", "objects", "scene"}
    pipelines = _by(objects, "ConfigMap")["keeneye-pipelines"]["data"]
    assert {parse_spec_text(text, source=f).name + ".yaml" for f, text in pipelines.items()} == set(pipelines)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "api: {min_replicas: 7, max_replicas: 6}\n",
            "api: Value error, min_replicas (7) must not exceed max_replicas (6)",
        ),
        ("image: keeneye:latest\n", "fixed tag"),
        ("scheduler: {replicas: 0}\n", "scheduler.replicas"),
        ("partitions: 4\n", "replicas.max 6 exceeds partitions 4"),
        ("workers: {pipelines: [nope]}\n", "unknown pipeline(s) nope"),
        ("apis: {}\n", "apis: Extra inputs are not permitted"),
        ("- a list\n", "expected a mapping"),
    ],
)
def test_bad_values_are_refused_with_the_key(
    tmp_path: Path, settings: Settings, text: str, says: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput) as err:
        render(load_values(path), settings, pipeline_sources(settings), [])
    assert says in err.value.message


def test_defaults_render_without_a_values_file(settings: Settings) -> None:
    files = render(KubernetesValues(), settings, pipeline_sources(settings), [])
    assert "line-cameras.yaml" not in files  # no cameras configured: no edge runners


@pytest.mark.skipif(not CHECKOV.exists() and not IN_CI, reason="checkov missing: make checkov")
def test_checkov_finds_nothing() -> None:
    done = subprocess.run(
        [str(CHECKOV), "-d", str(K8S), "--framework", "kubernetes", "--quiet", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]]
    assert failed == [] and done.returncode == 0
    assert report["summary"]["passed"] > 500
    # every skip is one of ours, with its reason (annotations written by the generator)
    skipped = report["results"].get("skipped_checks", [])
    assert all(s["check_id"] in {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_35", "CKV_K8S_43"} for s in skipped)


def test_prometheus_rule_spec_passes_promtool(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    spec = _by(objects, "PrometheusRule")["keeneye"]["spec"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec, sort_keys=False))
    done = run_promtool("check", "rules", rules)
    assert done.returncode == 0, done.stdout + done.stderr
    count = sum(len(g["rules"]) for g in spec["groups"])
    assert f"SUCCESS: {count} rules found" in done.stdout
