"""``keeneye demo``."""

from __future__ import annotations

import sys

import typer

from keeneye.cli._common import PANEL_SERVE, console, settings, state


def demo(
    images: int = typer.Option(600, help="Synthetic training photos to generate."),
    epochs: int = typer.Option(15, help="Training epochs (early stopping may finish sooner)."),
    port: int = typer.Option(8000, help="Port for the API (a free one is used when taken)."),
    requests: int = typer.Option(8, help="Unseen photos to send once the server runs."),
    serve: bool = typer.Option(
        None,
        "--serve/--no-serve",
        help="Keep serving until Ctrl-C (default: only in an interactive terminal).",
    ),
) -> None:
    """Show the whole loop: synthetic data → train → register → promote → serve → sample requests."""
    from keeneye.demo import run_demo

    keep = sys.stdin.isatty() if serve is None else serve
    run_demo(
        settings(),
        console,
        images=images,
        epochs=epochs,
        port=port,
        requests=requests,
        serve_forever=keep,
        quiet=state.quiet,
    )


def register(app: typer.Typer) -> None:
    app.command("demo", rich_help_panel=PANEL_SERVE)(demo)
