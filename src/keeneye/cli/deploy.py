"""``keeneye deploy kubernetes``: every Kubernetes object of a keeneye cluster from one values file
(docs/deploy.md). The generator is :mod:`keeneye.scaling.kubernetes`."""

from __future__ import annotations

from pathlib import Path

import typer

from keeneye.cli._common import PANEL_OPS, console, settings

deploy_app = typer.Typer(
    help="Deployment files: generate the Kubernetes objects of every component (docs/deploy.md).",
    no_args_is_help=True,
)


@deploy_app.command("kubernetes")
def kubernetes(
    values: Path | None = typer.Option(
        None,
        "--values",
        "-f",
        dir_okay=False,
        help="Values file (YAML; deploy/kubernetes/values.yaml lists every key). Default: built-in defaults.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", file_okay=False, help="Folder to write the manifests into (created if needed)."
    ),
) -> None:
    """Write the Kubernetes objects of every component: API (HPA 4–6 on CPU and in-flight requests),
    workers per pipeline (KEDA on Kafka lag), scheduler, smartcut plugins, line cameras on edge
    nodes, PodDisruptionBudgets, NetworkPolicies, ServiceMonitor, PrometheusRule and dashboards.

    Bounds come from the pipeline specs and the scaling settings; backend URLs stay in the Secret
    named by `secret` (kubectl create secret generic keeneye-env --from-env-file=.env).
    Example: keeneye deploy kubernetes --values deploy/kubernetes/values.yaml --out deploy/kubernetes
    Then: kubectl apply -f DIR
    """
    from keeneye.monitoring.alerts.rules import load_rules
    from keeneye.scaling.kubernetes import generate, load_values, pipeline_sources

    s = settings()
    written = generate(load_values(values), s, pipeline_sources(s), load_rules(s.alerting.rules), out)
    for path in written:
        console.print(f"wrote {path}")
    console.print(f"{len(written)} file(s); apply with: kubectl apply -f {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy", rich_help_panel=PANEL_OPS)
