"""The shape of ``keeneye --help``: commands grouped in panels, every option explained, boolean flags
as ``--x/--no-x`` pairs (a bare ``--json`` showed ``<bool>`` in help while ``--json true`` failed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.cli._common import PANELS


def _root() -> Any:
    return typer.main.get_command(app)


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


ALL = [(" ".join(path), cmd) for path, cmd in _walk(_root())]


def test_root_help_shows_the_panels_in_order() -> None:
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    titles = [line.split("─ ", 1)[1].split(" ─")[0] for line in out.splitlines() if line.startswith("╭─ ")]
    assert titles == ["Options", *PANELS]
    assert "Commands" not in titles  # no command left outside a panel


def test_every_top_level_command_sits_in_a_panel() -> None:
    root = _root()
    outside = {name: getattr(cmd, "rich_help_panel", None) for name, cmd in root.commands.items()}
    assert {name: panel for name, panel in outside.items() if panel not in PANELS} == {}
    by_panel = {p: sorted(n for n, panel in outside.items() if panel == p) for p in PANELS}
    assert by_panel["Train"] == ["evaluate", "retrain", "runs", "train"]
    assert all(by_panel.values())


@pytest.mark.parametrize(("path", "command"), ALL, ids=[p or "keeneye" for p, _ in ALL])
def test_every_option_has_help(path: str, command: Any) -> None:
    missing = [
        p.name
        for p in command.params
        if getattr(p, "param_type_name", "") in {"option", "argument"} and not (p.help or "").strip()
    ]
    assert missing == [], f"keeneye {path}: parameters without help: {missing}"


@pytest.mark.parametrize(("path", "command"), ALL, ids=[p or "keeneye" for p, _ in ALL])
def test_boolean_flags_come_in_pairs(path: str, command: Any) -> None:
    single = [
        p.opts[0]
        for p in command.params
        if getattr(p, "is_bool_flag", False) and p.name != "help" and not p.secondary_opts
    ]
    assert single == [], f"keeneye {path}: boolean flags without a --no- form: {single}"


def test_no_json_is_accepted_and_json_true_is_refused_with_a_hint() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["pipelines", "list", "--no-json"]).exit_code == 0
    refused = runner.invoke(app, ["pipelines", "list", "--json", "true"])
    assert refused.exit_code == 2
    help_text = runner.invoke(app, ["pipelines", "list", "--help"], env={"COLUMNS": "120"}).output
    assert "--no-json" in help_text


@pytest.mark.parametrize(("path", "command"), ALL, ids=[p or "keeneye" for p, _ in ALL])
def test_help_shows_no_value_type_for_flags(path: str, command: Any) -> None:
    """A flag takes no value, so its help row must not read ``<bool>`` (typer prints one by default)."""
    out = CliRunner().invoke(app, [*path.split(), "--help"], env={"COLUMNS": "160"}).output
    assert "Usage:" in out
    assert "<bool>" not in out
