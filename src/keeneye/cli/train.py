"""Training commands: ``train`` (data → gated, registered model) and ``evaluate`` (a version on data).

``train`` is recorded as a ``manual`` training run (``keeneye runs P`` lists it). Exit status of
``train``: 0 when the gates passed, :data:`EXIT_GATES_REFUSED` (3) when they refused the model (it is
registered without an alias; a line names each failed gate), 2 for a user error (bad data, export
refused), like every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from keeneye.cli._common import (
    EXIT_GATES_REFUSED,
    PANEL_TRAIN,
    console,
    err_console,
    print_json,
    settings,
    state,
)

if TYPE_CHECKING:
    from keeneye.training.run import TrainResult

__all__ = ["EXIT_GATES_REFUSED"]

JSON_OPT = typer.Option(False, "--json/--no-json", help="Print the result as JSON (progress goes to stderr).")


def _registry() -> Any:
    # The models CLI wires the audit-event sink into the registry; train through the same one.
    from keeneye.cli.models import _registry as registry_of

    return registry_of(settings())


def register(app: typer.Typer) -> None:
    app.command("train", rich_help_panel=PANEL_TRAIN)(train)
    app.command("evaluate", rich_help_panel=PANEL_TRAIN)(evaluate)


def train(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline to train a model for."),
    data: Path = typer.Option(..., "--data", help="Dataset folder: COCO (annotations.json) or ImageFolder."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the spec's epochs."),
    search: int = typer.Option(0, "--search", min=0, help="Optuna trials before the final fit (0 = none)."),
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid/--no-skip-invalid",
        help="Train without the invalid images instead of refusing the dataset.",
    ),
    register_model: bool = typer.Option(
        True, "--register/--no-register", help="Register the model (challenger alias when the gates pass)."
    ),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="timm model / smp encoder name, or liteN (keeneye's small U-Net, e.g. lite8).",
    ),
    image_size: int | None = typer.Option(None, "--image-size", min=8, help="Model input side in pixels."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=2, help="Images per training step (default: the spec's, e.g. 16)."
    ),
    learning_rate: float | None = typer.Option(
        None, "--lr", min=0.0, help="Learning rate of the optimiser (default: the spec's recipe)."
    ),
    weights: Path | None = typer.Option(
        None, "--weights", exists=True, dir_okay=False, help="Local pretrained weights."
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """Train, export, evaluate and gate a model; register it when asked (the default).

    Exits 3 when the gates refuse the model (see docs/training.md)."""
    from keeneye.lifecycle.recorded import recorded_training
    from keeneye.pipelines import PipelineCatalog
    from keeneye.store import open_results_db
    from keeneye.training.progress import console_progress
    from keeneye.training.run import train_pipeline

    overrides = {
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "weights": weights,
    }
    s = settings()
    PipelineCatalog(s).get(pipeline)  # an unknown pipeline: NotFound naming the known ones, no run recorded
    out = err_console if json_out else console
    inputs = {
        "requested_by": "keeneye train",
        "data_dir": str(data.expanduser().absolute()),
        "epochs": epochs,
    }
    with (
        recorded_training(open_results_db(s), pipeline, reason="keeneye train", inputs=inputs) as run,
        console_progress(out, quiet=state.quiet) as progress,
    ):
        result = train_pipeline(
            s,
            pipeline,
            data,
            epochs=epochs,
            search=search,
            skip_invalid=skip_invalid,
            register=register_model,
            progress=progress,
            overrides=overrides,
            registry=_registry() if register_model else None,
            actor="cli",
        )
        run.finish(result)
    if run.note:
        err_console.print(f"note: {run.note}", highlight=False)
    if json_out:
        print_json(result.to_dict())
    else:
        _print_result(result, run.run.id if run.run else None)
    if not result.gates.passed:
        err_console.print(
            f"[red]the gates refused the model:[/] {'; '.join(result.gates.reasons)}", highlight=False
        )
        raise typer.Exit(EXIT_GATES_REFUSED)


def _print_result(result: TrainResult, run_id: int | None) -> None:
    if result.validation.skipped:
        console.print(
            f"skipped {len(result.validation.skipped)} invalid image(s): "
            + ", ".join(result.validation.skipped)
        )
    sizes = "/".join(str(s) for s in result.split_sizes)
    console.print(
        f"{result.pipeline}: {result.epochs_run} epochs (best {result.best_epoch}), train/val/test {sizes}, "
        f"data version {result.data_version[:12]}",
        highlight=False,
    )
    console.print(
        "test metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()), highlight=False
    )
    if result.gates.passed:
        console.print("[green]gates passed[/]")
    else:
        console.print("[red]gates failed:[/]")
        for reason in result.gates.reasons:
            console.print(f"  - {reason}", highlight=False)
    targets = [c for c in result.gates.checks if c.kind == "target"]
    if targets:  # the design's quality targets: reported, not gated
        met = "met" if result.gates.targets_met else "not all met"
        console.print(
            f"targets ({met}): " + "; ".join(c.message.removeprefix("target ") for c in targets),
            highlight=False,
        )
    if result.version is not None:
        alias = f" with alias {result.alias}" if result.alias else " without an alias"
        console.print(f"registered {result.model_name} v{result.version}{alias}", highlight=False)
    if run_id is not None:
        console.print(f"training run {run_id} (keeneye runs {result.pipeline})", highlight=False)
    console.print(f"report: {result.run_dir / 'evaluation' / 'report.md'}", highlight=False)


def evaluate(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline whose model to evaluate."),
    model: str = typer.Option(..., "--model", help="Model version number or alias (e.g. champion)."),
    data: Path = typer.Option(..., "--data", help="Labelled dataset folder (every image is evaluated)."),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid/--no-skip-invalid", help="Leave invalid images out."
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """Evaluate a registered model version on a labelled dataset, through the serving code path."""
    from keeneye.training.progress import console_progress
    from keeneye.training.run import evaluate_version

    with console_progress(err_console if json_out else console, quiet=state.quiet) as progress:
        evaluation, paths = evaluate_version(
            settings(),
            pipeline,
            model,
            data,
            skip_invalid=skip_invalid,
            registry=_registry(),
            progress=progress,
        )
    if json_out:
        print_json({**evaluation.to_dict(), "artifacts": [str(p) for p in paths]})
        return
    console.print(evaluation.report_markdown(f"{pipeline} model {model}"), highlight=False, markup=False)
    console.print(f"written: {', '.join(str(p) for p in paths)}", highlight=False)
