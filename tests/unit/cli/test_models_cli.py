"""``keeneye models …`` and ``keeneye pipelines …`` through the real command line (one MLflow store)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keeneye.cli import app, main
from tests.unit.registry.bundles import write_bundle

# MLflow's SQL store uses an SQLAlchemy loader that SQLAlchemy 2.1 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")

runner = CliRunner()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli") / "home"


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return {"KEENEYE_HOME": str(home), "COLUMNS": "200"}


def _ok(args: list[str], env: dict[str, str]) -> str:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_pipelines_list_and_show(env: dict[str, str]) -> None:
    table = _ok(["pipelines", "list"], env)
    assert "species-id" in table and "348 ms" in table
    listed = json.loads(_ok(["pipelines", "list", "--json"], env))
    assert [p["name"] for p in listed] == ["crop-health", "line-inspection", "species-id"]
    assert listed[1]["p95_latency_ms"] == 348
    shown = _ok(["pipelines", "show", "line-inspection"], env)
    assert "name: line-inspection" in shown and "precision: 0.97" in shown


def test_register_list_show_promote_rollback(env: dict[str, str], tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", "species-id")
    register = ["models", "register", "--pipeline", "species-id", "--onnx", str(bundle.onnx_path)]
    register += ["--manifest", str(bundle.manifest_path)]

    first = json.loads(_ok([*register, "--alias", "champion", "--json"], env))
    assert (first["version"], first["aliases"]) == ("1", ["champion"])
    assert "registered species-id v2" in _ok(register, env)

    listed = json.loads(_ok(["models", "list", "--json"], env))
    assert [(v["name"], v["version"], v["aliases"], v["gates"]) for v in listed] == [
        ("species-id", "1", ["champion"], "unknown"),
        ("species-id", "2", [], "unknown"),
    ]
    assert listed[0]["metrics"] == {"accuracy": 0.91, "macro_f1": 0.88}
    assert listed[0]["task"] == "classify"
    table = _ok(["models", "list", "--pipeline", "species-id"], env)
    assert "champion" in table and "accuracy=0.91" in table

    assert json.loads(_ok(["models", "show", "species-id", "2", "--json"], env))["sha256"] == bundle.sha256()
    assert "champion is now species-id v2" in _ok(
        ["models", "promote", "species-id", "2", "--reason", "t"], env
    )
    rolled = json.loads(_ok(["models", "rollback", "species-id", "--json"], env))
    assert (rolled["version"], rolled["aliases"]) == ("1", ["champion"])


def _main(args: list[str], home: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the real entry point (its error handling is what users see)."""
    monkeypatch.setenv("KEENEYE_HOME", str(home))
    monkeypatch.setattr(sys, "argv", ["keeneye", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code or 0)


def test_promote_unknown_version_is_one_line_exit_2(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _main(["models", "promote", "species-id", "42"], home, monkeypatch) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.count("error:") == 1
    assert "has no version '42'" in " ".join(captured.err.split())
    assert captured.out == ""


def test_register_refuses_unknown_pipeline_and_non_onnx(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write_bundle(tmp_path / "b", "fish", onnx_bytes=b"not onnx")
    files = ["--onnx", str(bundle.onnx_path), "--manifest", str(bundle.manifest_path)]
    assert _main(["models", "register", "--pipeline", "fish", *files], home, monkeypatch) == 2
    assert "unknown pipeline 'fish'; known: crop-health" in " ".join(capsys.readouterr().err.split())

    junk = write_bundle(tmp_path / "j", "species-id", onnx_bytes=b"not onnx")
    files = ["--onnx", str(junk.onnx_path), "--manifest", str(junk.manifest_path)]
    assert _main(["models", "register", "--pipeline", "species-id", *files], home, monkeypatch) == 2
    assert "is not an ONNX model" in " ".join(capsys.readouterr().err.split())
