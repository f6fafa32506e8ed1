"""The demo's closing panel: the real KEENEYE_HOME, no "serving" once the API has stopped
(``--no-serve``), and a keeneye command that works from this shell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from rich.console import Console

from keeneye import demo as demo_module
from keeneye.demo import DemoResult, keeneye_command, next_steps


def _text(panel: object) -> str:
    console = Console(record=True, width=220)
    console.print(panel)
    return console.export_text()


RESULT = DemoResult(version="1", metrics={}, url="http://127.0.0.1:45123", seconds=95)


def test_no_serve_panel_names_the_home_and_no_server(tmp_path: Path) -> None:
    home = tmp_path / "elsewhere" / "keeneye-home"
    text = _text(next_steps(RESULT, home=home, serving=False, command=".venv/bin/keeneye"))
    assert "is serving" not in text and RESULT.url not in text
    assert "the demo's API has stopped (--no-serve)" in text
    assert f".venv/bin/keeneye predict {home}/demo/species-fresh/images/*.jpg" in text
    assert ".venv/bin/keeneye runs species-id" in text and ".venv/bin/keeneye serve" in text
    assert ".keeneye/demo" not in text


def test_serving_panel_shows_the_url(tmp_path: Path) -> None:
    text = _text(next_steps(RESULT, home=tmp_path, serving=True, command="keeneye"))
    assert f"keeneye is serving species-id version 1 at {RESULT.url}" in text
    assert f"curl -F file=@photo.jpg {RESULT.url}/predict" in text


def test_keeneye_command_follows_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert keeneye_command() == "keeneye"
    monkeypatch.setattr(demo_module.shutil, "which", lambda name: None)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "keeneye").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert keeneye_command() == ".venv/bin/keeneye"  # not on PATH: the script beside this Python
    (bin_dir / "keeneye").unlink()
    assert keeneye_command() == f"{bin_dir / 'python'} -m keeneye"
