"""Synthetic data commands: ``synth species-id | line-inspection | crop-health``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from keeneye.cli._common import console, err_console, print_json

synth_app = typer.Typer(
    help="Generate synthetic datasets (COCO folders, reproducible from --seed) for each application.",
    no_args_is_help=True,
)

OutDir = Annotated[
    Path, typer.Option("--out", help="Output folder (images/, annotations.json, dataset.json).")
]
_DRIFT_HELP = "Drift to simulate: lighting, sensor or new-class (default: none)."


def _run(name: str, n: int, out: Path, json_out: bool, **params: Any) -> None:
    from keeneye.training.synth import generate

    # Progress goes to stderr so --json output on stdout stays clean.
    with Progress(
        TextColumn(f"[bold]{name}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=json_out,
        disable=json_out,
    ) as bar:
        task = bar.add_task(name, total=n)
        result = generate(name, out, n, progress=lambda done: bar.update(task, completed=done), **params)
    if json_out:
        print_json(result.to_dict())
        return
    counts = ", ".join(f"{k} {v}" for k, v in result.class_counts.items())
    console.print(
        f"wrote {result.n_images} images, {result.n_annotations} annotations to {result.out_dir} "
        f"in {result.seconds:.1f} s ({result.images_per_second:.0f} images/s)",
        highlight=False,
    )
    console.print(
        f"classes: {counts}" + (f" · drift: {result.drift}" if result.drift else ""), highlight=False
    )


@synth_app.command("species-id")
def species_id(
    out: OutDir,
    n: int = typer.Option(500, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    drift: str | None = typer.Option(None, "--drift", help=_DRIFT_HELP),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Fish photos of five species for classification (JPEG + COCO)."""
    _run("species-id", n, out, json_out, seed=seed, drift=drift, size=size, overwrite=overwrite)


@synth_app.command("line-inspection")
def line_inspection(
    out: OutDir,
    n: int = typer.Option(500, "--n", help="Number of frames."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    drift: str | None = typer.Option(None, "--drift", help=_DRIFT_HELP),
    size: int = typer.Option(128, "--size", help="Image side in pixels."),
    defect_rate: float = typer.Option(
        0.015, "--defect-rate", help="Share of defective frames (a real line ≈ 0.015; 0.5 for training)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Product-surface frames with defect instance masks (PNG + COCO) and line metadata."""
    _run(
        "line-inspection",
        n,
        out,
        json_out,
        seed=seed,
        drift=drift,
        size=size,
        defect_rate=defect_rate,
        overwrite=overwrite,
    )


@synth_app.command("crop-health")
def crop_health(
    out: OutDir,
    n: int = typer.Option(200, "--n", help="Number of tiles."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    drift: str | None = typer.Option(None, "--drift", help=_DRIFT_HELP),
    size: int = typer.Option(128, "--size", help="Tile side in pixels."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Multispectral GeoTIFF tiles (nir, red_edge, red, green) with disease-zone masks (COCO)."""
    _run("crop-health", n, out, json_out, seed=seed, drift=drift, size=size, overwrite=overwrite)


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth")
