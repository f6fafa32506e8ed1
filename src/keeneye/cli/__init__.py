"""The ``keeneye`` command line: one thin command per capability, each calling into its package.

User errors (:class:`~keeneye.domain.KeeneyeError`) print one line with the fix and exit 2; ``--debug``
shows the traceback as well. Commands that print data accept ``--json/--no-json``; every boolean option
is a ``--x/--no-x`` pair. Progress is a live bar on a terminal, plain timestamped lines otherwise (a
log file, ``nohup``), and nothing with ``--quiet``. ``keeneye --help`` groups the commands in the panels
of :data:`keeneye.cli._common.PANELS`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

from keeneye.cli._common import PANELS, console, err_console, state
from keeneye.domain import KeeneyeError
from keeneye.settings import mask_secrets_in_logs

_typer_display_type = TyperOption.display_type_rich


def _flag_display_type(self: TyperOption, ctx: Any) -> str | None:
    """No type column for on/off flags: typer prints ``<bool>`` there, which reads as if ``--json true``
    were expected, while a flag takes no value (``--json`` / ``--no-json``)."""
    return None if self.is_flag else _typer_display_type(self, ctx)


TyperOption.display_type_rich = _flag_display_type  # type: ignore[method-assign]


class _PanelOrderedGroup(TyperGroup):
    """The root command group: lists commands panel by panel, in the order of :data:`PANELS`."""

    def list_commands(self, ctx: Any) -> list[str]:  # typer's vendored click.Context
        def panel_rank(name: str) -> int:
            panel = getattr(self.commands.get(name), "rich_help_panel", None)
            return PANELS.index(panel) if panel in PANELS else len(PANELS)

        return sorted(super().list_commands(ctx), key=panel_rank)  # stable: registration order within


app = typer.Typer(
    cls=_PanelOrderedGroup,
    name="keeneye",
    help="keeneye: turn image and video streams into decisions, and keep the vision models current.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug/--no-debug", help="Show tracebacks and debug logs."),
    quiet: bool = typer.Option(
        False, "--quiet/--no-quiet", "-q", help="No progress output (results and errors still print)."
    ),
) -> None:
    state.debug = debug
    state.quiet = quiet
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    mask_secrets_in_logs()  # no password of a URL, no API key in any log line (docs/security.md)


def _register() -> None:
    """Attach every command module. Each module owns its commands; this is the only list of them."""
    from keeneye.cli import alerts as alerts_cli
    from keeneye.cli import backup as backup_cli
    from keeneye.cli import demo as demo_cli
    from keeneye.cli import deploy as deploy_cli
    from keeneye.cli import drift as drift_cli
    from keeneye.cli import fields as fields_cli
    from keeneye.cli import inspect as inspect_cli
    from keeneye.cli import labels as labels_cli
    from keeneye.cli import models as models_cli
    from keeneye.cli import ops as ops_cli
    from keeneye.cli import pipelines as pipelines_cli
    from keeneye.cli import quality as quality_cli
    from keeneye.cli import retention as retention_cli
    from keeneye.cli import retrain as retrain_cli
    from keeneye.cli import scheduler as scheduler_cli
    from keeneye.cli import serve, system
    from keeneye.cli import smartcut as smartcut_cli
    from keeneye.cli import stream as stream_cli
    from keeneye.cli import synth as synth_cli
    from keeneye.cli import train as train_cli

    demo_cli.register(app)
    system.register(app)
    serve.register(app)
    inspect_cli.register(app)
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
    retention_cli.register(app)
    backup_cli.register(app)
    smartcut_cli.register(app)
    fields_cli.register(app)
    deploy_cli.register(app)


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
