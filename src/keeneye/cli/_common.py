"""What every command module shares: consoles, the global flags, help panels, JSON output, settings.

Every command sits in one of :data:`PANELS` (``keeneye --help`` groups them so); a new command module
passes ``rich_help_panel=`` one of these names when it registers its commands.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from keeneye.settings import Settings, get_settings

# Rich lays out for 80 columns when it cannot measure a terminal; a log or a pipe is read later, whole,
# so a wide table (loadtest's timeline) is laid out for 200 there (COLUMNS, when set, still wins).
PIPED_WIDTH = 200


def _console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


console = _console()
err_console = _console(stderr=True)

PANEL_SERVE = "Serve"
PANEL_DATA = "Data"
PANEL_TRAIN = "Train"
PANEL_MODELS = "Models"
PANEL_MONITOR = "Monitor"
PANEL_OPS = "Ops"
PANELS: tuple[str, ...] = (PANEL_SERVE, PANEL_DATA, PANEL_TRAIN, PANEL_MODELS, PANEL_MONITOR, PANEL_OPS)

# Exit status of a training command (`train`, `retrain`) whose model the gates refused: it is registered
# without an alias. Distinct from 1 (a check failed) and 2 (a user error) so scripts can tell them apart.
EXIT_GATES_REFUSED = 3


@dataclass
class _State:
    debug: bool = False
    quiet: bool = False  # --quiet: no progress output (results and errors still print)


state = _State()


def settings() -> Settings:
    return get_settings()


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout, nothing else."""
    console.print_json(json.dumps(data, default=str))


@contextmanager
def progress_bar(
    what: str, *, quiet: bool = False, transient: bool = True
) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (stdout stays clean for --json), off with ``--quiet``; yields
    ``update(done, total)``, safe to call from a worker thread. ``transient=False`` leaves the
    finished bar on screen."""
    with Progress(
        TextColumn(f"[bold]{what}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=quiet or state.quiet,
    ) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
