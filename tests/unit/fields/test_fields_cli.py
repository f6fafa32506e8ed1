"""``keeneye fields add | list | show | history | prescription`` through typer's CliRunner on a real
SQLite results DB (a flight recorded by the field book, as a stored crop-health answer would be)."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import shapefile
from typer.testing import CliRunner

from keeneye.cli import app, main
from keeneye.cli._common import err_console
from keeneye.fields import FieldBook
from keeneye.settings import Settings
from keeneye.store import open_results_db

from .support import FIELD_A, flight_geo, write_flight


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KEENEYE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_the_fields_commands(home: Path, tmp_path: Path) -> None:
    boundary = tmp_path / "a.geojson"
    boundary.write_text(json.dumps(FIELD_A))
    code, out = run(
        "fields", "add", str(boundary), "--name", "North 12", "--crop", "wheat", "--sowing-date", "2025-10-05"
    )
    assert code == 0, out
    assert "field north-12 (North 12): 8.01 ha" in out
    code, out = run("fields", "list", "--json")
    (field,) = json.loads(out)["fields"]
    assert (field["id"], field["crop"], field["flights"]) == ("north-12", "wheat", 0)

    db = open_results_db(Settings(home=home))
    geo = flight_geo(write_flight(tmp_path / "f.tif"))
    FieldBook(db).record_answer("obs1", geo, {"flight": "f1"}, datetime(2026, 6, 12, tzinfo=UTC))

    code, out = run("fields", "list")
    assert code == 0 and "north-12" in out and "f1" in out
    code, out = run("fields", "show", "north-12", "--json")
    assert json.loads(out)["last_flight"] == "f1" and len(json.loads(out)["bbox"]) == 4
    code, out = run("fields", "history", "north-12")
    assert code == 0 and "f1" in out and "0.35" in out  # diseased hectares
    code, out = run("fields", "history", "north-12", "--json")
    assert [f["flight"] for f in json.loads(out)["flights"]] == ["f1"]

    rx = tmp_path / "rx.zip"
    code, out = run(
        "fields", "prescription", "north-12", "--format", "shapefile", "--out", str(rx), "--base-rate", "80"
    )
    assert code == 0, out
    assert "1 zone" in out and "flight f1" in out
    with zipfile.ZipFile(rx) as zf:
        reader = shapefile.Reader(
            shp=io.BytesIO(zf.read("north-12-f1-prescription.shp")),
            shx=io.BytesIO(zf.read("north-12-f1-prescription.shx")),
            dbf=io.BytesIO(zf.read("north-12-f1-prescription.dbf")),
        )
        assert [list(r)[:4] for r in reader.records()] == [[1, "blight", 1.0, 120.0]]  # 80 × 1.5
    gj = tmp_path / "rx.geojson"
    code, out = run("fields", "prescription", "north-12", "--flight", "f1", "--out", str(gj))
    assert code == 0 and json.loads(gj.read_text())["features"][0]["properties"]["rate"] == 150.0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["fields", "add", "{bow}", "--name", "x"], "the boundary is not a valid polygon: Self-intersection"),
        (["fields", "show", "nope"], "no field 'nope' — see `keeneye fields list`"),
        (
            ["fields", "prescription", "nope", "--out", "{tmp}/x", "--format", "kml"],
            "format 'kml' is not one of",
        ),
    ],
)
def test_refusals_exit_2_with_one_line(
    home: Path,
    tmp_path: Path,
    args: list[str],
    words: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bow = tmp_path / "bow.geojson"
    ring = [[15, 49.6], [15.01, 49.61], [15.01, 49.6], [15, 49.61], [15, 49.6]]
    bow.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    argv = [a.format(bow=bow, tmp=tmp_path) for a in args]
    monkeypatch.setattr(err_console, "width", 300)
    monkeypatch.setattr(sys, "argv", ["keeneye", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert words in capsys.readouterr().err
