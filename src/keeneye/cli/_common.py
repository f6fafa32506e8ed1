"""What every command module shares: consoles, the --debug flag, JSON output, settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from keeneye.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)


@dataclass
class _State:
    debug: bool = False


state = _State()


def settings() -> Settings:
    return get_settings()


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout, nothing else."""
    console.print_json(json.dumps(data, default=str))
