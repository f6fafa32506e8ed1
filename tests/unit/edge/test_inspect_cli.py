"""``keeneye inspect``: help a newcomer can follow, and refusals before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.domain import ConfigError


def test_help_names_the_sources_the_plc_urls_and_the_failsafe() -> None:
    out = CliRunner().invoke(app, ["inspect", "--help"], env={"COLUMNS": "200"}).output
    for text in ("--source", "rtsp://", "modbus://", "--once", "--sku", "fail-safe DEFECT (result 3)"):
        assert text in out, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plc", "modbus://plc?unit=300"], "unit '300' is not a number 0-255"),
        (["--plc", "ftp://plc"], "--plc"),
        (["--line", "../L1"], "line '../L1' must be 1-64 letters"),
        (["--camera", "cam 1"], "camera 'cam 1' must be 1-64 letters"),
        (["--pipeline", "species-id"], "species-id makes no OK/DEFECT decision"),
    ],
)
def test_bad_options_are_refused_with_the_setting_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.setenv("KEENEYE_HOME", str(tmp_path / "home"))
    base = {"--source": str(tmp_path), "--line": "L1", "--camera": "C1", "--plc": "modbus://127.0.0.1:1"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = CliRunner().invoke(app, ["inspect", *[x for kv in base.items() for x in kv], "--once"])
    assert isinstance(result.exception, ConfigError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "home" / "edge").exists() or not any((tmp_path / "home" / "edge").iterdir())
