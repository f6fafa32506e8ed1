"""Kubernetes objects for every keeneye component, generated from one values file.

``keeneye deploy kubernetes --values values.yaml --out DIR`` (docs/deploy.md) writes one YAML file per
component. The bounds come from the same places ``keeneye up`` takes them: each pipeline's
``replicas:`` (min/max), ``scaling.lag_per_replica_target`` (KEDA's lag threshold),
``scaling.scale_down_window_seconds``, ``scaling.stop_grace_seconds``; the pipeline specs travel as a
ConfigMap, the alert rules as a PrometheusRule (the same PromQL as ``keeneye alerts export``) and the
dashboards as a Grafana ConfigMap (the same JSON as ``deploy/grafana``). Backend URLs are never in
the output: every pod reads them from the Secret named by ``secret`` (created from ``.env``).
The same values, rules and specs always give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from keeneye.domain import InvalidInput
from keeneye.monitoring.alerts.export import write_files
from keeneye.monitoring.alerts.grafana import dashboard_json, grafana_dashboards
from keeneye.monitoring.alerts.promql import rule_file
from keeneye.monitoring.alerts.rules import AlertRule
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.settings import Settings
from keeneye.stream import DEFAULT_GROUP, input_topic

Obj = dict[str, Any]

API_PORT = 8000
METRICS_PORT = 9100
UID = 10001  # the image's user (deploy/Dockerfile)
PIPELINES_DIR = "/etc/keeneye/pipelines"
SMARTCUT_DIR = "/var/lib/keeneye/smartcut"
NAME = "keeneye"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104  (inside a pod: the probes and Prometheus come from outside)
TMP = "/tmp"  # noqa: S108  (an emptyDir: the root filesystem is read-only)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """Requests (what the scheduler reserves) and limits of one container."""

    cpu: str = Field("1", description="CPU request, e.g. '500m' or '2'")
    memory: str = Field("1Gi", description="memory request")
    cpu_limit: str = Field("2", description="CPU limit")
    memory_limit: str = Field("2Gi", description="memory limit")

    def to_obj(self) -> Obj:
        return {
            "requests": {"cpu": self.cpu, "memory": self.memory},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


class ApiValues(_Strict):
    min_replicas: int = Field(4, ge=1)
    max_replicas: int = Field(6, ge=1)
    cpu_utilization: int = Field(70, ge=1, le=100, description="HPA target: mean CPU % of the request")
    inflight_per_pod: int = Field(
        32, ge=1, description="HPA target: mean keeneye_inflight_requests per pod (prometheus-adapter)"
    )
    resources: Resources = Resources(cpu="2", memory="2Gi", cpu_limit="2", memory_limit="3Gi")

    @model_validator(mode="after")
    def _bounds(self) -> ApiValues:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})"
            )
        return self


class WorkerValues(_Strict):
    pipelines: list[str] | None = Field(None, description="pipelines to run workers for (default: all)")
    resources: Resources = Resources(cpu="2", memory="2Gi", cpu_limit="2", memory_limit="3Gi")


class SchedulerValues(_Strict):
    replicas: int = Field(2, ge=1, description="one leads (leader lock in the database), the others stand by")
    resources: Resources = Resources(cpu="500m", memory="1Gi", cpu_limit="1", memory_limit="2Gi")


class SmartcutValues(_Strict):
    plugins: list[str] = Field(default_factory=lambda: ["motion", "objects", "scene"])
    storage: str = Field("300Gi", description="size of the chunk volume the API and plugins share")
    storage_class: str | None = Field(None, description="a ReadWriteMany class (NFS, CephFS, EFS …)")
    resources: Resources = Resources(cpu="1", memory="1Gi", cpu_limit="2", memory_limit="2Gi")


class CameraValues(_Strict):
    line: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    camera: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    source: str = Field(..., min_length=1, description="camera stream URL, e.g. rtsp://cam/stream")
    plc: str = Field(..., min_length=1, description="modbus://… | opcua://… | mqtt://…/topic")
    sku: str | None = None


class EdgeValues(_Strict):
    node_selector: dict[str, str] = Field(default_factory=lambda: {"keeneye.io/edge": "true"})
    tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [
            {"key": "keeneye.io/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ]
    )
    journal_storage: str = "5Gi"
    resources: Resources = Resources(cpu="2", memory="1Gi", cpu_limit="2", memory_limit="2Gi")


class MonitoringValues(_Strict):
    namespace: str = Field("monitoring", description="where Prometheus runs (NetworkPolicy for scrapes)")
    service_monitor_labels: dict[str, str] = Field(default_factory=lambda: {"release": "prometheus"})
    dashboard_labels: dict[str, str] = Field(default_factory=lambda: {"grafana_dashboard": "1"})


class KubernetesValues(_Strict):
    """Everything ``keeneye deploy kubernetes`` reads (deploy/kubernetes/values.yaml has every key)."""

    namespace: str = Field("keeneye", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: str = Field("keeneye:0.1.0", description="the serving image (deploy/Dockerfile), pinned")
    image_pull_policy: str = Field("Always", pattern="^(Always|IfNotPresent|Never)$")
    secret: str = Field(
        "keeneye-env", description="Secret with KEENEYE_DATABASE_URL, _BUS_URL … (kubectl create secret)"
    )
    kafka_bootstrap: str = Field("kafka:9092", description="for KEDA's lag trigger (host:port,…)")
    ingress_namespace: str = Field("ingress-nginx", description="who may reach the API (NetworkPolicy)")
    partitions: int = Field(
        12, ge=1, description="KEENEYE_BUS__PARTITIONS: partitions per topic, ≥ every pipeline's replicas.max"
    )
    api: ApiValues = ApiValues()
    workers: WorkerValues = WorkerValues()
    scheduler: SchedulerValues = SchedulerValues()
    smartcut: SmartcutValues = SmartcutValues()
    line_cameras: list[CameraValues] = Field(default_factory=list)
    edge: EdgeValues = EdgeValues()
    monitoring: MonitoringValues = MonitoringValues()

    @model_validator(mode="after")
    def _pinned(self) -> KubernetesValues:
        if self.image.endswith(":latest") or (
            ":" not in self.image.rsplit("/", 1)[-1] and "@" not in self.image
        ):
            raise ValueError(f"image {self.image!r} must carry a fixed tag or digest (e.g. keeneye:0.1.0)")
        return self


def load_values(path: Path | None) -> KubernetesValues:
    """The values file (empty or missing keys take the defaults); errors name the key and the fix."""
    if path is None:
        return KubernetesValues()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise InvalidInput("bad_values", f"{path}: cannot read ({exc.strerror or exc})", status=400) from exc
    except yaml.YAMLError as exc:
        raise InvalidInput("bad_values", f"{path}: not YAML ({exc})", status=400) from exc
    if not isinstance(data, dict):
        raise InvalidInput("bad_values", f"{path}: expected a mapping of keys", status=400)
    try:
        return KubernetesValues.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise InvalidInput(
            "bad_values",
            f"{path}: {where}: {first['msg']}",
            status=400,
            fix="see deploy/kubernetes/values.yaml for every key and its default",
        ) from exc


@dataclass(frozen=True)
class PipelineSource:
    """One pipeline spec: its file name in the ConfigMap, its YAML text and the parsed spec."""

    file: str
    text: str
    spec: PipelineSpec


def _labels(component: str, **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": component, **extra}


def _meta(name: str, values: KubernetesValues, labels: Mapping[str, str], **more: Any) -> Obj:
    return {"name": name, "namespace": values.namespace, "labels": dict(labels), **more}


def _skips(*pairs: tuple[str, str]) -> dict[str, str]:
    """checkov annotations: a check that does not apply here, with the reason (docs/deploy.md)."""
    return {f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason) in enumerate(pairs, 1)}


# Shared by every keeneye pod: they read backend URLs from the Secret as environment variables (the
# settings come from the environment, docs/configuration.md); no pod talks to the Kubernetes API.
_COMMON_SKIPS = (
    ("CKV_K8S_35", "keeneye reads its settings, URLs included, from KEENEYE_* environment variables"),
    ("CKV_K8S_43", "the tag is pinned by values.image; use a digest there to pin the bytes"),
)


def _container(
    values: KubernetesValues,
    name: str,
    args: list[str],
    resources: Resources,
    *,
    ports: Sequence[tuple[str, int]] = (),
    probes: Obj | None = None,
    mounts: Sequence[Obj] = (),
    env: Sequence[Obj] = (),
) -> Obj:
    c: Obj = {
        "name": name,
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "args": args,
    }
    if ports:
        c["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    c["envFrom"] = [{"configMapRef": {"name": "keeneye-config"}}, {"secretRef": {"name": values.secret}}]
    if env:
        c["env"] = list(env)
    c.update(probes or {})
    c["resources"] = resources.to_obj()
    c["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    c["volumeMounts"] = [
        {"name": "home", "mountPath": "/var/lib/keeneye"},
        {"name": "tmp", "mountPath": TMP},
        {"name": "pipelines", "mountPath": PIPELINES_DIR, "readOnly": True},
        *mounts,
    ]
    return c


def _pod(containers: list[Obj], grace: int, volumes: Sequence[Obj] = (), **extra: Any) -> Obj:
    return {
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": grace,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **extra,
        "containers": containers,
        "volumes": [
            {"name": "home", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "pipelines", "configMap": {"name": "keeneye-pipelines"}},
            *volumes,
        ],
    }


def _deployment(
    values: KubernetesValues,
    name: str,
    labels: Mapping[str, str],
    replicas: int,
    pod: Obj,
    *,
    skips: Sequence[tuple[str, str]] = (),
    recreate: bool = False,
    metrics_port: int | None = None,
) -> Obj:
    annotations: dict[str, str] = {}
    if metrics_port is not None:
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/path": "/metrics",
            "prometheus.io/port": str(metrics_port),
        }
    spec: Obj = {"replicas": replicas, "selector": {"matchLabels": dict(labels)}}
    if recreate:
        spec["strategy"] = {"type": "Recreate"}  # never two at once, not even during a rollout
    spec["template"] = {
        "metadata": {"labels": dict(labels), **({"annotations": annotations} if annotations else {})},
        "spec": pod,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, values, labels, annotations=_skips(*_COMMON_SKIPS, *skips)),
        "spec": spec,
    }


def _pdb(values: KubernetesValues, name: str, labels: Mapping[str, str], *, min_available: int | None) -> Obj:
    spec: Obj = {"selector": {"matchLabels": dict(labels)}}
    if min_available is None:
        spec["maxUnavailable"] = 1
    else:
        spec["minAvailable"] = min_available
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, values, labels),
        "spec": spec,
    }


def _http_probes(port: str, ready: str, live: str) -> Obj:
    return {
        "startupProbe": {"httpGet": {"path": live, "port": port}, "periodSeconds": 5, "failureThreshold": 60},
        "readinessProbe": {
            "httpGet": {"path": ready, "port": port},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": live, "port": port},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
    }


_NO_PORT_SKIPS = (
    ("CKV_K8S_8", "no HTTP port; a crash restarts the container"),
    ("CKV_K8S_9", "no HTTP port; it takes no traffic to be ready for"),
)


def _objects(
    values: KubernetesValues,
    settings: Settings,
    pipelines: Sequence[PipelineSource],
    rules: Sequence[AlertRule],
) -> dict[str, list[Obj]]:
    specs = [p.spec for p in pipelines]
    by_name = {p.spec.name: p for p in pipelines}
    grace = int(settings.scaling.stop_grace_seconds)
    window = int(settings.scaling.scale_down_window_seconds)
    out: dict[str, list[Obj]] = {}

    out["namespace.yaml"] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": values.namespace, "labels": {"app.kubernetes.io/name": NAME}},
        }
    ]
    config_env = {
        "KEENEYE_HOME": "/var/lib/keeneye",
        "KEENEYE_PIPELINES__DIRS": f'["{PIPELINES_DIR}"]',
        "KEENEYE_SMARTCUT__ROOT": SMARTCUT_DIR,
        "KEENEYE_BUS__PARTITIONS": str(values.partitions),
    }
    out["config.yaml"] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("keeneye-pipelines", values, _labels("config")),
            "data": {p.file: p.text for p in sorted(pipelines, key=lambda p: p.file)},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("keeneye-config", values, _labels("config")),
            "data": config_env,
        },
    ]

    # ---- API: Deployment + Service + HPA (CPU and in-flight requests) + PDB
    api = _labels("api")
    api_pod = _pod(
        [
            _container(
                values,
                "api",
                ["serve", "--host", ALL_INTERFACES, "--port", str(API_PORT)],
                values.api.resources,
                ports=[("http", API_PORT)],
                probes=_http_probes("http", "/ready", "/health"),
                mounts=[{"name": "smartcut", "mountPath": SMARTCUT_DIR}],
            )
        ],
        grace,
        [{"name": "smartcut", "persistentVolumeClaim": {"claimName": "keeneye-smartcut"}}],
    )
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta("keeneye-api", values, api),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "keeneye-api"},
            "minReplicas": values.api.min_replicas,
            "maxReplicas": values.api.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": values.api.cpu_utilization},
                    },
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "keeneye_inflight_requests"},
                        "target": {"type": "AverageValue", "averageValue": str(values.api.inflight_per_pod)},
                    },
                },
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": window},
            },
        },
    }
    out["api.yaml"] = [
        _deployment(values, "keeneye-api", api, values.api.min_replicas, api_pod, metrics_port=API_PORT),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta("keeneye-api", values, api),
            "spec": {
                "selector": dict(api),
                "ports": [{"name": "http", "port": API_PORT, "targetPort": "http"}],
            },
        },
        hpa,
        _pdb(values, "keeneye-api", api, min_available=max(1, values.api.min_replicas - 1)),
    ]

    # ---- workers: per pipeline, Deployment + KEDA ScaledObject on the input topic's lag + PDB
    names = values.workers.pipelines if values.workers.pipelines is not None else sorted(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InvalidInput(
            "bad_values",
            f"workers.pipelines: unknown pipeline(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(by_name))}",
            status=400,
            fix="name pipelines from `keeneye pipelines list`",
        )
    workers: list[Obj] = []
    for name in names:
        bounds = by_name[name].spec.replicas
        if bounds.max > values.partitions:
            raise InvalidInput(
                "bad_values",
                f"pipeline {name}: replicas.max {bounds.max} exceeds partitions {values.partitions} "
                "(workers beyond the partitions would sit idle)",
                status=400,
                fix="raise `partitions` in the values file or lower the spec's replicas.max",
            )
        labels = _labels("worker", **{"keeneye.io/pipeline": name})
        deploy_name = f"keeneye-worker-{name}"
        args = [
            "worker",
            "--pipeline",
            name,
            "--group",
            DEFAULT_GROUP,
            "--metrics-port",
            str(METRICS_PORT),
            "--metrics-host",
            ALL_INTERFACES,
        ]
        pod = _pod(
            [
                _container(
                    values,
                    "worker",
                    args,
                    values.workers.resources,
                    ports=[("metrics", METRICS_PORT)],
                    probes={
                        "livenessProbe": {
                            "httpGet": {"path": "/metrics", "port": "metrics"},
                            "periodSeconds": 15,
                            "failureThreshold": 4,
                        },
                        "readinessProbe": {
                            "httpGet": {"path": "/metrics", "port": "metrics"},
                            "periodSeconds": 10,
                        },
                    },
                )
            ],
            grace,
        )
        workers += [
            _deployment(values, deploy_name, labels, max(bounds.min, 1), pod, metrics_port=METRICS_PORT),
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": _meta(deploy_name, values, labels),
                "spec": {
                    "scaleTargetRef": {"name": deploy_name},
                    "minReplicaCount": bounds.min,
                    "maxReplicaCount": bounds.max,
                    "pollingInterval": 5,
                    "advanced": {
                        "horizontalPodAutoscalerConfig": {
                            "behavior": {
                                "scaleUp": {"stabilizationWindowSeconds": 0},
                                "scaleDown": {"stabilizationWindowSeconds": window},
                            }
                        }
                    },
                    "triggers": [
                        {
                            "type": "kafka",
                            "metadata": {
                                "bootstrapServers": values.kafka_bootstrap,
                                "consumerGroup": DEFAULT_GROUP,
                                "topic": input_topic(name),
                                "lagThreshold": _number(settings.scaling.lag_per_replica_target),
                                "offsetResetPolicy": "earliest",
                            },
                        }
                    ],
                },
            },
            _pdb(values, deploy_name, labels, min_available=None),
        ]
    workers.append(
        {
            "apiVersion": "v1",
            "kind": "Service",  # headless: the ServiceMonitor finds every worker pod through it
            "metadata": _meta("keeneye-workers", values, _labels("worker")),
            "spec": {
                "clusterIP": "None",
                "selector": _labels("worker"),
                "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}],
            },
        }
    )
    out["workers.yaml"] = workers

    # ---- scheduler: replicas share a leader lock (keeneye.store.leader): one runs rounds, the
    # others stand by and take over within 5 s of the leader's end, so a retrain starts once
    sched = _labels("scheduler")
    out["scheduler.yaml"] = [
        _deployment(
            values,
            "keeneye-scheduler",
            sched,
            values.scheduler.replicas,
            _pod([_container(values, "scheduler", ["scheduler"], values.scheduler.resources)], grace),
            skips=_NO_PORT_SKIPS,
        ),
        _pdb(values, "keeneye-scheduler", sched, min_available=1 if values.scheduler.replicas > 1 else None),
    ]

    # ---- smartcut: the shared chunk volume and one Deployment per plugin
    pvc_spec: Obj = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": values.smartcut.storage}},
    }
    if values.smartcut.storage_class:
        pvc_spec["storageClassName"] = values.smartcut.storage_class
    smartcut: list[Obj] = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta("keeneye-smartcut", values, _labels("smartcut")),
            "spec": pvc_spec,
        }
    ]
    for plugin in values.smartcut.plugins:
        labels = _labels("plugin", **{"keeneye.io/plugin": plugin})
        pod = _pod(
            [
                _container(
                    values,
                    "plugin",
                    ["plugin", "run", plugin],
                    values.smartcut.resources,
                    mounts=[{"name": "smartcut", "mountPath": SMARTCUT_DIR}],
                )
            ],
            grace,
            [{"name": "smartcut", "persistentVolumeClaim": {"claimName": "keeneye-smartcut"}}],
        )
        smartcut += [
            _deployment(
                values, f"keeneye-plugin-{plugin}", labels, 1, pod, skips=_NO_PORT_SKIPS, recreate=True
            )
        ]
    out["smartcut.yaml"] = smartcut

    # ---- line cameras: one runner per camera, pinned to edge nodes, its journal on a volume
    cameras: list[Obj] = []
    for cam in values.line_cameras:
        ident = f"{cam.line}-{cam.camera}".lower().replace("_", "-")
        labels = _labels("line-camera", **{"keeneye.io/line": cam.line, "keeneye.io/camera": cam.camera})
        name = f"keeneye-camera-{ident}"
        args = [
            "inspect",
            "--source",
            cam.source,
            "--line",
            cam.line,
            "--camera",
            cam.camera,
            "--plc",
            cam.plc,
        ]
        if cam.sku:
            args += ["--sku", cam.sku]
        pod = _pod(
            [
                _container(
                    values,
                    "inspect",
                    args,
                    values.edge.resources,
                    mounts=[{"name": "journal", "mountPath": "/var/lib/keeneye/edge"}],
                    env=[{"name": "KEENEYE_EDGE__JOURNAL_DIR", "value": "/var/lib/keeneye/edge"}],
                )
            ],
            grace,
            [{"name": "journal", "persistentVolumeClaim": {"claimName": f"{name}-journal"}}],
            nodeSelector=dict(values.edge.node_selector),
            tolerations=[dict(t) for t in values.edge.tolerations],
        )
        cameras += [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": _meta(f"{name}-journal", values, labels),
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": values.edge.journal_storage}},
                },
            },
            _deployment(values, name, labels, 1, pod, skips=_NO_PORT_SKIPS, recreate=True),
        ]
    if cameras:
        out["line-cameras.yaml"] = cameras

    # ---- monitoring: ServiceMonitor, PrometheusRule, Grafana dashboards
    out["monitoring.yaml"] = [
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": _meta(
                "keeneye", values, {**_labels("monitoring"), **values.monitoring.service_monitor_labels}
            ),
            "spec": {
                "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                "namespaceSelector": {"matchNames": [values.namespace]},
                "endpoints": [
                    {"port": "http", "path": "/metrics", "interval": "15s"},
                    {"port": "metrics", "path": "/metrics", "interval": "15s"},
                ],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": _meta(
                "keeneye", values, {**_labels("monitoring"), **values.monitoring.service_monitor_labels}
            ),
            "spec": rule_file(rules, specs),
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(
                "keeneye-dashboards", values, {**_labels("monitoring"), **values.monitoring.dashboard_labels}
            ),
            "data": {name: dashboard_json(d) for name, d in grafana_dashboards(specs, rules).items()},
        },
    ]

    # ---- network policies: nothing reaches a keeneye pod except the ingress (API) and Prometheus
    def policy(name: str, selector: Mapping[str, str], ingress: list[Obj]) -> Obj:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(name, values, _labels("network")),
            "spec": {
                "podSelector": {"matchLabels": dict(selector)},
                "policyTypes": ["Ingress"],
                "ingress": ingress,
            },
        }

    def from_namespace(ns: str) -> Obj:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}

    out["network-policies.yaml"] = [
        policy("keeneye-default-deny", {}, []),
        policy(
            "keeneye-api-ingress",
            api,
            [
                {
                    "from": [from_namespace(values.ingress_namespace), from_namespace(values.namespace)],
                    "ports": [{"port": API_PORT, "protocol": "TCP"}],
                }
            ],
        ),
        policy(
            "keeneye-metrics-scrape",
            {"app.kubernetes.io/name": NAME},
            [
                {
                    "from": [from_namespace(values.monitoring.namespace)],
                    "ports": [
                        {"port": API_PORT, "protocol": "TCP"},
                        {"port": METRICS_PORT, "protocol": "TCP"},
                    ],
                }
            ],
        ),
    ]
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def render(
    values: KubernetesValues,
    settings: Settings,
    pipelines: Sequence[PipelineSource],
    rules: Sequence[AlertRule],
) -> dict[str, str]:
    """File name → YAML text (several documents each), in a stable order."""
    header = (
        "# Generated by `keeneye deploy kubernetes` from the values file, the pipeline specs and the\n"
        "# alert rules (docs/deploy.md). Do not edit: change the values and generate again.\n"
    )
    files = {}
    for name, objects in _objects(values, settings, pipelines, rules).items():
        docs = [yaml.safe_dump(o, sort_keys=False, allow_unicode=True, width=1000) for o in objects]
        files[name] = header + "---\n" + "---\n".join(docs)
    return files


def generate(
    values: KubernetesValues,
    settings: Settings,
    pipelines: Sequence[PipelineSource],
    rules: Sequence[AlertRule],
    out_dir: Path,
) -> list[Path]:
    """Write :func:`render`'s files into ``out_dir``, removing generated files it no longer produces."""
    files = render(values, settings, pipelines, rules)
    if out_dir.is_dir():
        for old in out_dir.glob("*.yaml"):
            if old.name not in files and old.read_text(encoding="utf-8").startswith(
                "# Generated by `keeneye deploy kubernetes`"
            ):
                old.unlink()
    return write_files(out_dir, files)


def object_names(files: Mapping[str, str]) -> list[tuple[str, str]]:
    """(kind, name) of every object in rendered files: for messages and tests."""
    out = []
    for text in files.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((str(doc["kind"]), str(doc["metadata"]["name"])))
    return out


def pipeline_sources(settings: Settings) -> list[PipelineSource]:
    """Every pipeline of this installation (built-ins and KEENEYE_PIPELINES__DIRS) with its YAML text."""
    catalog = PipelineCatalog(settings)
    out = []
    for name in catalog.names():
        source = catalog.source(name)
        if source.startswith("builtin:"):
            text = (
                resources.files("keeneye.pipelines")
                .joinpath("builtin", source.removeprefix("builtin:"))
                .read_text(encoding="utf-8")
            )
        else:
            text = Path(source).read_text(encoding="utf-8")
        out.append(PipelineSource(f"{name}.yaml", text, catalog.get(name)))
    return out
