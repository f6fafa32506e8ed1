"""Registry commands: ``models list|show|register|promote|rollback|rollout``."""

from __future__ import annotations

import getpass
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from keeneye.cli._common import PANEL_MODELS, console, print_json, settings

if TYPE_CHECKING:
    from keeneye.lifecycle.rollout import RolloutController, RolloutRecord
    from keeneye.registry import ModelRegistry, ModelVersionInfo
    from keeneye.settings import Settings

models_app = typer.Typer(help="Model registry: register bundles, promote, roll back.", no_args_is_help=True)

JSON_OPT = typer.Option(False, "--json/--no-json", help="Print JSON instead of a table.")
REASON_OPT = typer.Option("", "--reason", help="Why (recorded in the audit log; required with --force).")
ONNX_OPT = typer.Option(..., "--onnx", exists=True, dir_okay=False, help="The ONNX model file.")
MANIFEST_OPT = typer.Option(..., "--manifest", exists=True, dir_okay=False, help="The keeneye.json manifest.")
FORCE_OPT = typer.Option(
    False, "--force/--no-force", help="Allow a version whose gates failed (needs --reason)."
)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in some containers
        return "cli"


def _registry(s: Settings) -> ModelRegistry:
    """The registry the commands use; the single place where the audit-event sink is wired in."""
    from keeneye.registry import ModelRegistry
    from keeneye.store import open_results_db

    db = open_results_db(s)
    db.ensure_schema()
    return ModelRegistry(s, events=db)


def _model_name(s: Settings, pipeline: str, *, strict: bool = False) -> str:
    """The registered model that serves ``pipeline``.

    ``strict`` (registering) refuses an unknown pipeline, listing the known ones; otherwise an unknown
    name is taken as a registered model name, so models of removed pipelines stay manageable.
    """
    from keeneye.pipelines import PipelineCatalog

    catalog = PipelineCatalog(s)
    if strict or pipeline in catalog:
        return catalog.get(pipeline).model_name
    return pipeline


# What describes a task's models besides their gated metrics (and for a model no pipeline gates any
# more): a segmentation model by its masks, not by box_map (0 for masks drawn as one blob).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classify": ("accuracy", "macro_f1"),
    "segment": ("mask_map50", "mean_iou"),
    "detect": ("box_map50", "box_map"),
}


def _gated_metrics(s: Settings) -> dict[str, tuple[str, ...]]:
    """Registered model name → the metrics its pipeline's gates check (``gates.metrics``)."""
    from keeneye.pipelines import PipelineCatalog

    return {spec.model_name: tuple(spec.gates.metrics) for spec in PipelineCatalog(s).specs()}


def _key_metrics(info: ModelVersionInfo, gated: tuple[str, ...] = (), limit: int = 4) -> str:
    """The gated metrics first, then the task's own; the first few stored ones when none is known."""
    wanted = [*gated, *TASK_METRICS.get(info.task, ())]
    names = [k for k in dict.fromkeys(wanted) if k in info.metrics] or list(info.metrics)[:3]
    return ", ".join(f"{k}={info.metrics[k]:.4g}" for k in names[:limit])


def _print_versions(
    infos: list[ModelVersionInfo], title: str, gated: dict[str, tuple[str, ...]] | None = None
) -> None:
    table = Table(title=title)
    for col in ("model", "version", "aliases", "task", "metrics", "gates", "created"):
        table.add_column(col, overflow="fold")
    colour = {"passed": "green", "failed": "red", "unknown": "yellow"}
    for i in infos:
        table.add_row(
            i.name,
            i.version,
            ", ".join(i.aliases),
            i.task,
            _key_metrics(i, (gated or {}).get(i.name, ())),
            f"[{colour[i.gates]}]{i.gates}[/]",
            i.created.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


def _print_one(info: ModelVersionInfo, verb: str) -> None:
    aliases = f" ({', '.join(info.aliases)})" if info.aliases else ""
    console.print(f"{verb} {info.name} v{info.version}{aliases}, gates {info.gates}", highlight=False)


@models_app.command("list")
def list_models(
    pipeline: str | None = typer.Option(None, "--pipeline", "-p", help="Only this pipeline's model."),
    json_out: bool = JSON_OPT,
) -> None:
    """List registered model versions with aliases, task, gated metrics and gate results."""
    s = settings()
    registry = _registry(s)
    names = [_model_name(s, pipeline)] if pipeline else registry.names()
    infos = [info for name in names for info in registry.versions(name)]
    if json_out:
        print_json([i.to_dict() for i in infos])
    elif not infos:
        console.print("no models registered yet — `keeneye models register` or `keeneye train`")
    else:
        _print_versions(infos, "registered models", _gated_metrics(s))


@models_app.command("show")
def show_model(
    pipeline: str = typer.Argument(..., help="Pipeline (or registered model) name."),
    version: str = typer.Argument(..., help="Model version, e.g. 3."),
    json_out: bool = JSON_OPT,
) -> None:
    """Show one model version: aliases, tags, metrics, gates, source."""
    s = settings()
    info = _registry(s).get(_model_name(s, pipeline), version)
    if json_out:
        print_json(info.to_dict())
        return
    table = Table(title=f"{info.name} v{info.version}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key, value in info.to_dict().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        table.add_row(key, "" if value is None else str(value))
    console.print(table)


@models_app.command("register")
def register_model(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline the model serves."),
    onnx_file: Path = ONNX_OPT,
    manifest_file: Path = MANIFEST_OPT,
    alias: str | None = typer.Option(
        None, "--alias", help="Give the new version this alias (e.g. champion)."
    ),
    force: bool = FORCE_OPT,
    reason: str = REASON_OPT,
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the new version as JSON."),
) -> None:
    """Register an ONNX model and its manifest as a new version of a pipeline's model."""
    from keeneye.models.bundle import ModelBundle
    from keeneye.models.manifest import MANIFEST_FILE, MODEL_FILE

    s = settings()
    name = _model_name(s, pipeline, strict=True)
    # A bundle is a folder with fixed file names; the user's files may be called anything.
    with tempfile.TemporaryDirectory(prefix="keeneye-register-") as tmp:
        folder = Path(tmp)
        shutil.copyfile(onnx_file, folder / MODEL_FILE)
        shutil.copyfile(manifest_file, folder / MANIFEST_FILE)
        bundle = ModelBundle.load(folder)
        info = _registry(s).register(
            name, bundle, alias=alias, actor=_actor(), reason=reason or "registered from the CLI", force=force
        )
    if json_out:
        print_json(info.to_dict())
    else:
        _print_one(info, "registered")


@models_app.command("promote")
def promote_model(
    pipeline: str = typer.Argument(..., help="Pipeline (or registered model) name."),
    version: str = typer.Argument(..., help="The version to make champion."),
    force: bool = FORCE_OPT,
    reason: str = REASON_OPT,
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the champion as JSON."),
) -> None:
    """Make a version the champion (the old champion is kept as 'previous' for rollback)."""
    s = settings()
    info = _registry(s).promote(
        _model_name(s, pipeline),
        version,
        actor=_actor(),
        reason=reason or "promoted from the CLI",
        force=force,
    )
    if json_out:
        print_json(info.to_dict())
    else:
        _print_one(info, "champion is now")


@models_app.command("rollback")
def rollback_model(
    pipeline: str = typer.Argument(..., help="Pipeline (or registered model) name."),
    force: bool = FORCE_OPT,
    reason: str = REASON_OPT,
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the champion as JSON."),
) -> None:
    """Give the champion alias back to the previous champion."""
    s = settings()
    info = _registry(s).rollback(
        _model_name(s, pipeline), actor=_actor(), reason=reason or "rolled back from the CLI", force=force
    )
    if json_out:
        print_json(info.to_dict())
    else:
        _print_one(info, "rolled back: champion is now")


def _controller(s: Settings) -> RolloutController:
    from keeneye.lifecycle.rollout import RolloutController
    from keeneye.metrics import Metrics
    from keeneye.pipelines import PipelineCatalog
    from keeneye.store import open_results_db

    registry = _registry(s)
    return RolloutController(s, open_results_db(s), registry, PipelineCatalog(s), Metrics())


def _rollout_action(
    shadow: bool, canary: float | None, promote: bool, abort: bool, status: bool, sample: float | None
) -> str:
    """The one action asked for (``status`` when none); a one-line error for a bad combination."""
    from keeneye.domain import InvalidInput

    chosen = [
        name
        for name, on in (
            ("shadow", shadow),
            ("canary", canary is not None),
            ("promote", promote),
            ("abort", abort),
            ("status", status),
        )
        if on
    ]
    if len(chosen) > 1:
        raise InvalidInput(
            "bad_option",
            f"choose one of --shadow, --canary, --promote, --abort, --status (got {', '.join(chosen)})",
        )
    action = chosen[0] if chosen else "status"
    if sample is not None and action != "shadow":
        raise InvalidInput("bad_option", "--sample goes with --shadow", fix="e.g. --shadow --sample 0.5")
    if canary is not None and not 0 < canary <= 100:
        raise InvalidInput(
            "bad_option",
            f"--canary is a percentage above 0 and at most 100, got {canary:g}",
            fix="e.g. --canary 10",
        )
    return action


def _print_rollout(record: RolloutRecord) -> None:
    line = f"{record.pipeline}: {record.state.value}"
    if record.state.value == "shadow":
        line += f" — champion v{record.champion_version}, challenger v{record.challenger_version} in shadow"
        line += f" on {record.shadow_sample:.0%} of inputs"
    elif record.state.value == "canary":
        line += f" — champion v{record.champion_version}, challenger v{record.challenger_version} answers"
        line += f" {record.canary_share:.0%} of inputs"
    elif record.champion_version:
        line += f" — champion v{record.champion_version}"
    console.print(line, highlight=False)


def _print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"rollout of {report['pipeline']}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    reg = report["registry"]
    table.add_row("state", report["state"])
    table.add_row("champion", f"v{reg['champion']}" if reg["champion"] else "(none)")
    table.add_row("challenger", f"v{report['challenger_version'] or reg['challenger'] or '-'}")
    if report["state"] == "canary":
        table.add_row("canary share", f"{report['canary_share']:.0%}")
    if report["state"] == "shadow":
        table.add_row("shadow sample", f"{report['shadow_sample']:.0%}")
    if report["started_at"] and report["state"] != "stable":
        table.add_row("started", report["started_at"])
    if report.get("earliest_promotion"):
        table.add_row("earliest promotion", report["earliest_promotion"])
    evaluation = report.get("evaluation")
    if evaluation:
        for v in evaluation["variants"]:
            p95 = "-" if v["latency_p95_ms"] is None else f"{v['latency_p95_ms']:.1f} ms"
            quality = "-" if v["quality"] is None else f"{v['quality']:.3f} on {v['quality_n']} labels"
            table.add_row(
                f"{v['variant']} v{v['version']}",
                f"{v['predictions']} answers, p95 {p95}, {v['failed']} failed, "
                f"{evaluation['quality_metric']} {quality}",
            )
        agreement = evaluation.get("agreement")
        if agreement:
            share = "-" if agreement["share"] is None else f"{agreement['share']:.1%}"
            table.add_row("agreement", f"{share} of {agreement['n']} answers")
    if report.get("next"):
        table.add_row("next", f"{report['next']['action']}: {'; '.join(report['next']['reasons'])}")
    for e in report["events"][:5]:
        table.add_row(e["event"], f"{e['created_at']} by {e['actor']}: {e['reason']}")
    console.print(table)


@models_app.command("rollout")
def rollout_model(
    pipeline: str = typer.Argument(..., help="Pipeline name."),
    shadow: bool = typer.Option(False, "--shadow/--no-shadow", help="Start a shadow run of the challenger."),
    sample: float | None = typer.Option(
        None, "--sample", help="With --shadow: share of inputs the challenger also runs on (0-1)."
    ),
    canary: float | None = typer.Option(
        None, "--canary", help="Let the challenger answer this percentage of inputs (or change the share)."
    ),
    promote: bool = typer.Option(False, "--promote/--no-promote", help="Make the challenger the champion."),
    abort: bool = typer.Option(
        False,
        "--abort/--no-abort",
        help="End the rollout, champion unchanged (right after a promotion: roll it back).",
    ),
    status: bool = typer.Option(
        False, "--status/--no-status", help="Show the rollout and its measurements (default)."
    ),
    version: str | None = typer.Option(
        None, "--version", help="With --shadow/--canary: make this version the challenger first."
    ),
    reason: str = REASON_OPT,
    force: bool = typer.Option(
        False,
        "--force/--no-force",
        help="Canary without a shadow run, promote from shadow, or a challenger whose gates failed "
        "(needs --reason).",
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """Shadow → canary → promote a challenger, or abort; --status shows the measurements."""
    action = _rollout_action(shadow, canary, promote, abort, status, sample)
    controller = _controller(settings())
    if action == "status":
        report = controller.report(pipeline)
        if json_out:
            print_json(report)
        else:
            _print_report(report)
        return
    record = controller.apply(
        pipeline,
        action,
        actor=_actor(),
        reason=reason,
        share=None if canary is None else canary / 100,
        sample=sample,
        version=version,
        force=force,
    )
    if json_out:
        print_json(record.to_dict())
    else:
        _print_rollout(record)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models", rich_help_panel=PANEL_MODELS)
