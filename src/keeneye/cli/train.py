"""Training commands: ``train`` (data → gated, registered model) and ``evaluate`` (a version on data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from keeneye.cli._common import console, err_console, print_json, settings

JSON_OPT = typer.Option(False, "--json", help="Print the result as JSON (progress goes to stderr).")


def _registry() -> Any:
    # The models CLI wires the audit-event sink into the registry; train through the same one.
    from keeneye.cli.models import _registry as registry_of

    return registry_of(settings())


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)


def train(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline to train a model for."),
    data: Path = typer.Option(..., "--data", help="Dataset folder: COCO (annotations.json) or ImageFolder."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the spec's epochs."),
    search: int = typer.Option(0, "--search", min=0, help="Optuna trials before the final fit (0 = none)."),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Train without the invalid images instead of refusing the dataset."
    ),
    register_model: bool = typer.Option(
        True, "--register/--no-register", help="Register the model (challenger alias when the gates pass)."
    ),
    backbone: str | None = typer.Option(None, "--backbone", help="timm model / smp encoder name."),
    image_size: int | None = typer.Option(None, "--image-size", min=8, help="Model input side in pixels."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=2),
    learning_rate: float | None = typer.Option(None, "--lr", min=0.0),
    weights: Path | None = typer.Option(
        None, "--weights", exists=True, dir_okay=False, help="Local pretrained weights."
    ),
    json_out: bool = JSON_OPT,
) -> None:
    """Train, export, evaluate and gate a model; register it when asked (the default)."""
    from keeneye.training.run import RichProgress, train_pipeline

    overrides = {
        "backbone": backbone,
        "image_size": image_size,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "weights": weights,
    }
    with RichProgress(err_console if json_out else console) as progress:
        result = train_pipeline(
            settings(),
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
    if json_out:
        print_json(result.to_dict())
        return
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
    if result.version is not None:
        alias = f" with alias {result.alias}" if result.alias else ""
        console.print(f"registered {result.model_name} v{result.version}{alias}", highlight=False)
    console.print(f"report: {result.run_dir / 'evaluation' / 'report.md'}", highlight=False)


def evaluate(
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="Pipeline whose model to evaluate."),
    model: str = typer.Option(..., "--model", help="Model version number or alias (e.g. champion)."),
    data: Path = typer.Option(..., "--data", help="Labelled dataset folder (every image is evaluated)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Leave invalid images out."),
    json_out: bool = JSON_OPT,
) -> None:
    """Evaluate a registered model version on a labelled dataset, through the serving code path."""
    from keeneye.training.run import RichProgress, evaluate_version

    with RichProgress(err_console if json_out else console) as progress:
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
