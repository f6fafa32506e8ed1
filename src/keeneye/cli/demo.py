"""``keeneye demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from keeneye.cli._common import PANEL_SERVE, console, settings, state
from keeneye.domain import ConfigError

APPLICATIONS = ("species-id", "line-inspection", "crop-health")


def demo(
    application: str = typer.Argument(
        "species-id",
        help="species-id (photos → species, served over HTTP) or line-inspection (camera frames → "
        "OK/DEFECT to a stand-in PLC, shown on the line dashboard) or crop-health (drone GeoTIFFs → "
        "zones in hectares over two fields, their history and a prescription map, on /fields).",
        show_default=True,
    ),
    images: int = typer.Option(
        None,
        help="Synthetic training images to generate (default: 600 photos; 300 line frames; 160 crop tiles).",
    ),
    epochs: int = typer.Option(
        None,
        help="Training epochs; early stopping may finish sooner (default: 15; line-inspection: its "
        "pipeline's recipe, 30; crop-health 8).",
    ),
    port: int = typer.Option(8000, help="Port for the API (a free one is used when taken)."),
    requests: int = typer.Option(8, help="Unseen photos to send once the server runs."),
    serve: bool = typer.Option(
        None,
        "--serve/--no-serve",
        help="Keep serving until Ctrl-C (default: only in an interactive terminal).",
    ),
    parts: int = typer.Option(
        150, min=1, help="line-inspection: parts in the recorded line video the runner inspects."
    ),
    model: Path = typer.Option(
        None,
        "--model",
        help="line-inspection: skip training and inspect with this bundle folder (from keeneye train).",
    ),
) -> None:
    """Show the whole loop on synthetic data, in a few minutes on a laptop.

    species-id (the default): synthetic photos → train → register → promote → serve → sample requests.
    line-inspection: synthetic line frames → train → promote → a stand-in PLC (Modbus TCP on loopback)
    → a recorded line video → the edge runner decides every part by its deadline → the PLC's registers
    read back → the line dashboard (/lines) shows the run.
    crop-health: synthetic multispectral tiles → train → promote → two fields → three drone flights
    with a spreading rust patch through the predict API → each field's history and a prescription
    file (GeoJSON and Shapefile) → the fields page (/fields) shows the map and the trend.
    """
    if application not in APPLICATIONS:
        raise ConfigError(
            "APPLICATION", f"no demo {application!r}", fix="use one of: " + ", ".join(APPLICATIONS)
        )
    keep = sys.stdin.isatty() if serve is None else serve
    if application == "line-inspection":
        from keeneye.line_demo import run_line_demo

        run_line_demo(
            settings(),
            console,
            frames=300 if images is None else images,
            epochs=epochs,
            parts=parts,
            port=port,
            serve_forever=keep,
            quiet=state.quiet,
            model_dir=model,
        )
        return
    if application == "crop-health":
        from keeneye.crop_demo import run_crop_demo

        run_crop_demo(
            settings(),
            console,
            tiles=160 if images is None else images,
            epochs=8 if epochs is None else epochs,
            port=port,
            serve_forever=keep,
            quiet=state.quiet,
        )
        return
    from keeneye.demo import run_demo

    run_demo(
        settings(),
        console,
        images=600 if images is None else images,
        epochs=15 if epochs is None else epochs,
        port=port,
        requests=requests,
        serve_forever=keep,
        quiet=state.quiet,
    )


def register(app: typer.Typer) -> None:
    app.command("demo", rich_help_panel=PANEL_SERVE)(demo)
