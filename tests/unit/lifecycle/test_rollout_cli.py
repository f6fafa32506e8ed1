"""``keeneye models rollout`` through the real command line (one MLflow store, one SQLite database)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keeneye.cli import app, main
from keeneye.settings import Settings
from tests.serving_support import register_species_model
from tests.unit.lifecycle.rollout_support import register_version

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    settings = Settings(home=tmp_path / "home")
    register_species_model(settings, tmp_path, seed=0)
    assert register_version(settings, tmp_path, seed=1) == "2"
    return settings.home


def _ok(args: list[str], home: Path) -> str:
    result = runner.invoke(
        app, ["models", "rollout", "species-id", *args], env={"KEENEYE_HOME": str(home), "COLUMNS": "200"}
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_rollout_from_shadow_to_promotion_and_back(home: Path) -> None:
    assert "state" in _ok([], home) and "stable" in _ok(["--status"], home)

    shadow = json.loads(
        _ok(["--shadow", "--version", "2", "--sample", "0.5", "--reason", "try v2", "--json"], home)
    )
    assert (shadow["state"], shadow["challenger_version"], shadow["shadow_sample"]) == ("shadow", "2", 0.5)
    report = json.loads(_ok(["--status", "--json"], home))
    assert report["evaluation"]["agreement"] == {"n": 0, "agreeing": 0, "share": None}
    assert report["next"] == {"action": "wait", "reasons": ["0 of 200 shadow answers compared"]}
    assert report["events"][0]["event"] == "rollout_shadow" and report["events"][0]["actor"].startswith("cli")
    assert "agreement" in _ok(["--status"], home)

    assert json.loads(_ok(["--canary", "10", "--json"], home))["canary_share"] == 0.1
    assert "challenger v2 answers 25% of inputs" in _ok(["--canary", "25"], home)
    assert "species-id: stable — champion v2" in _ok(["--promote", "--reason", "looks good"], home)
    assert "species-id: stable — champion v1" in _ok(["--abort", "--reason", "complaints"], home)


def _main(args: list[str], home: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("KEENEYE_HOME", str(home))
    monkeypatch.setattr(sys, "argv", ["keeneye", "models", "rollout", "species-id", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code or 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shadow", "--promote"], "choose one of --shadow, --canary, --promote, --abort, --status"),
        (["--canary", "150"], "--canary is a percentage above 0 and at most 100, got 150"),
        (["--promote", "--sample", "0.5"], "--sample goes with --shadow"),
        (["--promote"], "cannot promote: pipeline species-id is in stable"),
        (["--canary", "10"], "a canary normally follows a shadow run"),
        (["--shadow", "--version", "9"], "has no version '9'"),
    ],
)
def test_refusals_are_one_line_with_exit_2(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert _main(args, home, monkeypatch) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    assert message in " ".join(captured.err.split())
