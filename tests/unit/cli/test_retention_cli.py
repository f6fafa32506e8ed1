"""``keeneye retention run`` and ``keeneye storage estimate`` in process, on a real SQLite file and folder."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from typer.testing import CliRunner

from keeneye.cli import app
from keeneye.settings import Settings
from keeneye.store import open_object_store, open_results_db, utcnow
from keeneye.store.retention import in_ok_sample
from keeneye.store.schema import ObservationRow


def _seed(home: Path) -> list[str]:
    """Two OK line-inspection frames finished 3 days ago (outside the OK sample); their object keys."""
    settings = Settings(home=home)
    db, objects = open_results_db(settings), open_object_store(settings)
    keys = []
    ids = (f"{i:032x}" for i in range(1000) if not in_ok_sample(f"{i:032x}", 0.002))
    for n, obs_id in zip(range(2), ids, strict=False):
        data = f"frame {n}".encode() * 100
        digest = hashlib.sha256(data).hexdigest()
        key = f"observations/line-inspection/{digest[:2]}/{digest}.jpg"
        objects.put(key, data, content_type="image/jpeg")
        db.create_observation("line-inspection", digest, key, "image/jpeg", len(data), {}, "edge", id=obs_id)
        with db.session() as s:
            s.execute(
                update(ObservationRow)
                .where(ObservationRow.id == obs_id)
                .values(status="done", updated_at=utcnow() - timedelta(days=3))
            )
        keys.append(key)
    return keys


def test_retention_run_dry_then_for_real(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keys = _seed(home)
    objects = open_object_store(Settings(home=home))
    runner = CliRunner()
    env = {"KEENEYE_HOME": str(home), "COLUMNS": "200"}

    dry = runner.invoke(app, ["retention", "run", "--dry-run", "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    (report,) = [r for r in json.loads(dry.output) if r["pipeline"] == "line-inspection"]
    assert report["dry_run"] is True
    assert report["kinds"]["raw_images"] == {"deleted": 2, "bytes": 1400, "protected": 0, "days": 2}
    assert all(objects.exists(k) for k in keys)

    real = runner.invoke(
        app, ["retention", "run", "--pipeline", "line-inspection", "--batch-size", "1"], env=env
    )
    assert real.exit_code == 0, real.output
    row = next(line for line in real.output.splitlines() if "raw_images" in line)
    assert [cell.strip() for cell in row.split("│")[3:7]] == ["2 d", "2", "1.4 KB", "0"]
    assert not any(objects.exists(k) for k in keys)

    unknown = runner.invoke(app, ["retention", "run", "--pipeline", "nope"], env=env)
    assert unknown.exit_code != 0 and "unknown pipeline" in str(unknown.exception)


def test_storage_estimate_prints_the_seed_sizing(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"KEENEYE_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    out = runner.invoke(app, ["storage", "estimate", "--inspections-per-day", "1124316", "--json"], env=env)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    kinds = {k["kind"]: k for k in doc["kinds"]}
    assert round(kinds["raw_images"]["bytes_per_day"] / 1e9) == 180
    assert round(kinds["defect_images"]["bytes_per_day"] / 1e9, 1) == 2.7
    assert round(doc["objects_bytes"] / 1e12, 2) == 1.36
    text = runner.invoke(
        app, ["storage", "estimate", "--fps", "60", "--cameras", "2", "--hours-per-day", "12"], env=env
    ).output
    assert "5,184,000 inspections a day" in text
    assert "raw_images" in text and "829 GB" in text
