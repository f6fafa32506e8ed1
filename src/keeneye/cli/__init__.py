"""The ``keeneye`` command line: one thin command per capability, each calling into its package.

User errors (:class:`~keeneye.domain.KeeneyeError`) print one line with the fix and exit 2; ``--debug``
shows the traceback as well. Commands that print data accept ``--json``.
"""

from __future__ import annotations

import logging
import sys

import typer

from keeneye.cli._common import console, err_console, state
from keeneye.domain import KeeneyeError

app = typer.Typer(
    name="keeneye",
    help="keeneye: turn image and video streams into decisions, and keep the vision models current.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
) -> None:
    state.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    """Attach every command module. Each module owns its commands; this is the only list of them."""
    from keeneye.cli import alerts as alerts_cli
    from keeneye.cli import demo as demo_cli
    from keeneye.cli import drift as drift_cli
    from keeneye.cli import labels as labels_cli
    from keeneye.cli import models as models_cli
    from keeneye.cli import ops as ops_cli
    from keeneye.cli import pipelines as pipelines_cli
    from keeneye.cli import quality as quality_cli
    from keeneye.cli import retrain as retrain_cli
    from keeneye.cli import scheduler as scheduler_cli
    from keeneye.cli import serve, system
    from keeneye.cli import stream as stream_cli
    from keeneye.cli import synth as synth_cli
    from keeneye.cli import train as train_cli

    demo_cli.register(app)
    system.register(app)
    serve.register(app)
    stream_cli.register(app)
    pipelines_cli.register(app)
    models_cli.register(app)
    ops_cli.register(app)
    synth_cli.register(app)
    train_cli.register(app)
    drift_cli.register(app)
    quality_cli.register(app)
    alerts_cli.register(app)
    scheduler_cli.register(app)
    labels_cli.register(app)
    retrain_cli.register(app)


_register()


def main() -> None:
    try:
        app()
    except KeeneyeError as exc:
        if state.debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


__all__ = ["app", "console", "main"]
