"""Synthetic data commands: ``synth species-id | line-inspection | crop-health``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from keeneye.cli._common import PANEL_DATA, console, err_console, print_json, progress_bar, state
from keeneye.training.synth.line import TRAINING_DEFECT_RATE, line_batch_size

synth_app = typer.Typer(
    help="Generate synthetic datasets (COCO folders, reproducible from --seed) for each application.",
    no_args_is_help=True,
)

OutDir = Annotated[
    Path, typer.Option("--out", help="Output folder (images/, annotations.json, dataset.json).")
]
_DRIFT_HELP = "Drift to simulate: lighting, sensor or new-class (default: none)."
# line-inspection defaults are for training (docs/training.md): enough frames and defects that every
# split of the grouped split holds defective frames, few enough to train on a laptop CPU in minutes.
LINE_DEFAULT_N = 300
LINE_DEFAULT_SIZE = "1024x768"  # what a line camera sends (docs/line-inspection.md, *Frames*)


def _run(name: str, n: int, out: Path, json_out: bool, **params: Any) -> None:
    from keeneye.training.synth import generate

    with progress_bar(name, quiet=json_out, transient=json_out) as update:
        update(0, n)
        result = generate(name, out, n, progress=lambda done: update(done, n), **params)
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
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", help="Replace a dataset already in --out."
    ),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print a JSON summary."),
) -> None:
    """Fish photos of five species for classification (JPEG + COCO)."""
    _run("species-id", n, out, json_out, seed=seed, drift=drift, size=size, overwrite=overwrite)


@synth_app.command("line-inspection")
def line_inspection(
    out: OutDir,
    n: int = typer.Option(
        LINE_DEFAULT_N, "--n", min=1, help="Number of frames (the default trains a first model in minutes)."
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    drift: str | None = typer.Option(None, "--drift", help=_DRIFT_HELP),
    size: str = typer.Option(
        LINE_DEFAULT_SIZE,
        "--size",
        help="WIDTHxHEIGHT: a line camera's JPEG frame (default 1024x768, ≈150 KB, defects of a few to "
        "tens of pixels); one number N: a small N×N PNG tile (quick tests).",
    ),
    defect_rate: float = typer.Option(
        TRAINING_DEFECT_RATE,
        "--defect-rate",
        help="Share of defective frames, spread over every batch (a training set: 0.5; a real line ≈ 0.015).",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Frames per production batch (grouped splits keep a batch together); default: n/20, 2 to 50.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", help="Replace a dataset already in --out."
    ),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print a JSON summary."),
) -> None:
    """Product-surface frames with defect instance masks (JPEG or PNG + COCO) and line metadata."""
    from keeneye.domain import InvalidInput
    from keeneye.training.synth.line import parse_frame_size

    try:
        parsed = parse_frame_size(size)
    except InvalidInput as exc:
        raise typer.BadParameter(f"{exc} — {exc.fix}", param_hint="--size") from exc
    frame = {"frame_size": parsed} if isinstance(parsed, tuple) else {"size": parsed}
    _run(
        "line-inspection",
        n,
        out,
        json_out,
        seed=seed,
        drift=drift,
        **frame,
        defect_rate=defect_rate,
        batch_size=batch_size or line_batch_size(n),
        overwrite=overwrite,
    )


@synth_app.command("crop-health")
def crop_health(
    out: OutDir,
    n: int = typer.Option(200, "--n", help="Number of tiles."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    drift: str | None = typer.Option(None, "--drift", help=_DRIFT_HELP),
    size: int = typer.Option(128, "--size", help="Tile side in pixels."),
    overwrite: bool = typer.Option(
        False, "--overwrite/--no-overwrite", help="Replace a dataset already in --out."
    ),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print a JSON summary."),
) -> None:
    """Multispectral GeoTIFF tiles (nir, red_edge, red, green) with disease-zone masks (COCO)."""
    _run("crop-health", n, out, json_out, seed=seed, drift=drift, size=size, overwrite=overwrite)


@synth_app.command("smartcut")
def smartcut(
    out: Path = typer.Option(..., "--out", help="Output folder ({name}.mp4 and {name}.events.json)."),
    hours: float = typer.Option(1.0, "--hours", min=0.01, max=24.0, help="Video length in hours."),
    events: int = typer.Option(
        20, "--events", min=0, help="Objects that walk through the scene (15–60 s each)."
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same video and events."),
    fps: int = typer.Option(5, "--fps", min=1, max=60, help="Frames per second."),
    gop: float = typer.Option(2.0, "--gop", min=0.04, help="Seconds between keyframes."),
    name: str = typer.Option("smartcut", "--name", help="File name stem."),
    json_out: bool = typer.Option(False, "--json/--no-json", help="Print the ground truth as JSON."),
) -> None:
    """A long fixed-camera video with ground-truth events, sensor noise, lighting drift and camera shake.

    Score a plugin on it with [bold]keeneye smartcut evaluate OUT/smartcut.mp4 --plugin motion[/].
    """
    from keeneye.video import SynthSpec, generate_video

    spec = SynthSpec(hours=hours, events=events, seed=seed, fps=fps, gop_seconds=gop, name=name)
    with Progress(
        TextColumn("[bold]smartcut[/]"),
        BarColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=json_out,
        disable=json_out or state.quiet,
    ) as bar:
        task = bar.add_task("smartcut", total=1.0)
        try:
            video, truth = generate_video(out, spec, progress=lambda done: bar.update(task, completed=done))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--events") from exc
    if json_out:
        print_json({"video": str(video), **truth.to_dict()})
        return
    covered = sum(e.length for e in truth.events)
    console.print(
        f"wrote {video} ({truth.duration:.0f} s, {len(truth.events)} events covering {covered:.0f} s, "
        f"{len(truth.shake)} camera-shake episodes) and {video.with_suffix('.events.json').name}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(synth_app, name="synth", rich_help_panel=PANEL_DATA)
