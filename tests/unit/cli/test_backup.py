"""`keeneye backup create | verify | restore` and `keeneye doctor --deep` on real SQLite files, a real
file object store and a real MLflow store: a restored home serves the same answers, a damaged backup
is named, a damaged object store is found."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner, Result

from keeneye.cli import app
from keeneye.domain import KeeneyeError
from keeneye.settings import Settings, get_settings
from keeneye.store import (
    ResultsDB,
    alembic_revision,
    known_revision,
    open_object_store,
    open_results_db,
    rebase_mlflow_artifacts,
    registered_versions,
)
from tests.serving_support import fast_registry_store, jpeg, live_server, register_species_model
from tests.unit.lifecycle.support import Stored, png_bytes, store_answer
from tests.unit.store.test_db import HEAD

RESULT = {"task": "classify", "class": "esox_lucius", "confidence": 0.9}
VOLATILE = {"observation_id", "cached", "processing_time_ms", "timings_ms"}
EXPORT_KEY = "exports/species-id/report.json"


def cli(args: list[str], home: Path) -> Result:
    """One command through the real typer app, with the settings of ``home`` (read afresh)."""
    get_settings.cache_clear()
    return CliRunner().invoke(app, args, env={"KEENEYE_HOME": str(home), "COLUMNS": "200"})


def _key(stored: Stored) -> str:
    return f"observations/species-id/{stored.content_hash[:2]}/{stored.content_hash}.png"


def _stored_home(settings: Settings, n: int = 3) -> list[Stored]:
    """``n`` observations with an image and an answer, and one object no observation names."""
    db, objects = open_results_db(settings), open_object_store(settings)
    stored = [store_answer(db, objects, "species-id", RESULT, png_bytes(i)) for i in range(n)]
    objects.put(EXPORT_KEY, b'{"n": 3}', content_type="application/json")
    return stored


def test_a_restored_home_serves_the_same_answers(settings: Settings, tmp_path: Path) -> None:
    version = register_species_model(settings, tmp_path)
    images = [jpeg(color=(40 * i, 200 - 50 * i, 90), seed=i) for i in range(3)]
    predict = "/v1/pipelines/species-id/predict"
    with live_server(settings, poll_aliases=False) as server:
        answers = [
            httpx.post(server.url + predict, content=img, headers={"content-type": "image/jpeg"}).json()
            for img in images
        ]
    assert [a["model_version"] for a in answers] == [version] * 3
    open_object_store(settings).put(EXPORT_KEY, b'{"n": 3}', content_type="application/json")
    db = open_results_db(settings)
    rows = {a["observation_id"]: db.predictions_for(a["observation_id"]) for a in answers}
    assert all(len(r) == 1 for r in rows.values())

    archive = tmp_path / "backups" / "nightly.tar"
    made = cli(["backup", "create", str(archive), "--json"], settings.home)
    assert made.exit_code == 0, made.output
    summary = json.loads(made.stdout)["summary"]
    assert {k: summary[k] for k in ("observations", "predictions", "objects", "model_versions")} == {
        "observations": 3,
        "predictions": 3,
        "objects": 4,
        "model_versions": 1,
    }
    checked = cli(["backup", "verify", str(archive), "--json"], settings.home)
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    # two databases: the results and the registry (serving alone never opens the bus)
    assert (report["ok"], report["databases"], report["predicted_objects"], report["model_versions"]) == (
        True,
        2,
        3,
        1,
    )

    shutil.rmtree(settings.home)  # the original is gone: the restored home must stand on its own
    home = tmp_path / "restored"
    done = cli(["backup", "restore", str(archive), "--home", str(home), "--json"], tmp_path / "elsewhere")
    assert done.exit_code == 0, done.output
    restored = json.loads(done.stdout)
    assert restored["models_checked"] == [f"species-id v{version} (champion)"]
    assert (restored["revision_before"], restored["revision_after"]) == (HEAD, HEAD)

    moved = {v.source for v in registered_versions(home / "mlflow.db")}
    assert len(moved) == 1 and moved.pop().startswith((home / "mlartifacts").as_uri() + "/species-id/")
    new = Settings(home=home)
    new_db = open_results_db(new)
    assert {obs_id: new_db.predictions_for(obs_id) for obs_id in rows} == rows  # the same rows, ids and all
    export = open_object_store(new)
    assert (export.get(EXPORT_KEY), export.info(EXPORT_KEY).content_type) == (b'{"n": 3}', "application/json")
    with live_server(new, poll_aliases=False) as server:
        for image, answer in zip(images, answers, strict=True):
            stored = httpx.get(f"{server.url}/v1/observations/{answer['observation_id']}/image")
            assert (stored.status_code, stored.content) == (200, image)
            assert stored.headers["content-type"] == "image/jpeg"
            again = httpx.post(server.url + predict, content=image, headers={"content-type": "image/jpeg"})
            assert again.status_code == 200, again.text
            strip = lambda a: {k: v for k, v in a.items() if k not in VOLATILE}  # noqa: E731
            assert strip(again.json()) == strip(answer)  # same model version, same answer


def test_verify_names_a_corrupted_a_missing_and_a_stray_file(settings: Settings, tmp_path: Path) -> None:
    stored = _stored_home(settings)
    backup = tmp_path / "backup"
    assert cli(["backup", "create", str(backup)], settings.home).exit_code == 0
    assert cli(["backup", "verify", str(backup)], settings.home).exit_code == 0
    corrupted = backup / "objects" / _key(stored[0])
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    corrupted.write_bytes(bytes(data))
    (backup / "objects" / _key(stored[1])).unlink()
    (backup / "objects" / "stray.bin").write_bytes(b"x")

    out = cli(["backup", "verify", str(backup), "--json"], settings.home)
    assert out.exit_code == 1
    problems = {(p["kind"], p["path"]) for p in json.loads(out.stdout)["problems"]}
    assert problems == {
        ("hash_mismatch", f"objects/{_key(stored[0])}"),
        ("missing_file", f"objects/{_key(stored[1])}"),
        ("prediction_object", f"objects/{_key(stored[1])}"),
        ("unlisted_file", "objects/stray.bin"),
    }
    shown = cli(["backup", "verify", str(backup)], settings.home)
    assert shown.exit_code == 1
    assert f"hash_mismatch objects/{_key(stored[0])}" in shown.stdout
    assert "4 problems" in shown.stdout


def test_verify_runs_integrity_check_and_reads_the_manifest(settings: Settings, tmp_path: Path) -> None:
    _stored_home(settings, n=1)
    backup = tmp_path / "backup"
    assert cli(["backup", "create", str(backup)], settings.home).exit_code == 0
    db = backup / "keeneye.db"
    raw = bytearray(db.read_bytes())
    page = 4096
    raw[2 * page : 3 * page] = bytes(page)  # a zeroed b-tree page
    db.write_bytes(bytes(raw))
    report = json.loads(cli(["backup", "verify", str(backup), "--json"], settings.home).stdout)
    kinds = {p["kind"] for p in report["problems"] if p["path"] == "keeneye.db"}
    assert "hash_mismatch" in kinds and "integrity" in kinds

    (backup / "manifest.json").unlink()
    missing = json.loads(cli(["backup", "verify", str(backup), "--json"], settings.home).stdout)
    assert [p["kind"] for p in missing["problems"]] == ["manifest"]


def test_restore_refuses_a_damaged_backup_and_a_busy_home(settings: Settings, tmp_path: Path) -> None:
    stored = _stored_home(settings, n=2)
    backup = tmp_path / "backup.tar"
    assert cli(["backup", "create", str(backup)], settings.home).exit_code == 0

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = cli(["backup", "restore", str(backup), "--home", str(busy)], tmp_path)
    assert isinstance(refused.exception, KeeneyeError)
    assert refused.exception.message == f"{busy} is not empty"
    forced = cli(["backup", "restore", str(backup), "--home", str(busy), "--force"], tmp_path)
    assert forced.exit_code == 0, forced.output
    assert (busy / "notes.txt").read_text() == "mine"  # --force replaces keeneye's files only
    assert open_results_db(Settings(home=busy)).get_observation(stored[0].observation_id) is not None

    folder = tmp_path / "folder-backup"
    assert cli(["backup", "create", str(folder)], settings.home).exit_code == 0
    (folder / "objects" / _key(stored[0])).write_bytes(b"not the image")
    fresh = tmp_path / "fresh"
    damaged = cli(["backup", "restore", str(folder), "--home", str(fresh)], tmp_path)
    assert isinstance(damaged.exception, KeeneyeError)
    assert "fails verification (1 problems; first: size_mismatch" in damaged.exception.message
    assert not fresh.exists()  # nothing written


def test_restore_migrates_an_older_database_and_refuses_a_newer_one(
    settings: Settings, tmp_path: Path
) -> None:
    old = ResultsDB(settings.database_url)
    old.upgrade("0007")
    old.close()
    backup = tmp_path / "old"
    made = cli(["backup", "create", str(backup), "--json"], settings.home)
    assert json.loads(made.stdout)["alembic_revision"] == "0007"
    home = tmp_path / "restored"
    done = json.loads(cli(["backup", "restore", str(backup), "--home", str(home), "--json"], tmp_path).stdout)
    assert (done["revision_before"], done["revision_after"]) == ("0007", HEAD)
    assert alembic_revision(home / "keeneye.db") == HEAD

    with sqlite3.connect(settings.home / "keeneye.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    newer = tmp_path / "newer"
    assert cli(["backup", "create", str(newer)], settings.home).exit_code == 0
    assert not known_revision("9999_future") and known_revision(HEAD)
    refused = cli(["backup", "restore", str(newer), "--home", str(tmp_path / "never")], tmp_path)
    assert isinstance(refused.exception, KeeneyeError)
    assert "schema revision 9999_future, which this keeneye does not know" in refused.exception.message
    assert not (tmp_path / "never").exists()


def test_create_refuses_what_it_cannot_copy_and_never_overwrites_other_files(
    settings: Settings, tmp_path: Path
) -> None:
    _stored_home(settings, n=1)
    scaled = CliRunner().invoke(
        app,
        ["backup", "create", str(tmp_path / "b")],
        env={
            "KEENEYE_HOME": str(settings.home),
            "KEENEYE_DATABASE_URL": "postgresql+psycopg://k:pw@db/keeneye",
        },
    )
    assert isinstance(scaled.exception, KeeneyeError)
    assert scaled.exception.message == (
        "KEENEYE_DATABASE_URL is postgresql+psycopg://k:***@db/keeneye: `keeneye backup` copies the "
        "embedded deployment's SQLite results database"
    )
    assert "docs/backup.md" in (scaled.exception.fix or "")
    get_settings.cache_clear()

    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    for force in ("--no-force", "--force"):
        refused = cli(["backup", "create", str(other), force], settings.home)
        assert isinstance(refused.exception, KeeneyeError)
        assert refused.exception.message == f"{other} is a folder with files that are not a keeneye backup"
    inside = cli(["backup", "create", str(settings.home / "objects" / "b")], settings.home)
    assert isinstance(inside.exception, KeeneyeError)
    assert "inside the data being backed up" in inside.exception.message

    backup = tmp_path / "b"
    assert cli(["backup", "create", str(backup)], settings.home).exit_code == 0
    again = cli(["backup", "create", str(backup)], settings.home)
    assert isinstance(again.exception, KeeneyeError)
    assert cli(["backup", "create", str(backup), "--force"], settings.home).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_a_backup_taken_while_answers_are_stored_is_consistent(settings: Settings, tmp_path: Path) -> None:
    """Rows and objects written during the copy: every row in the backup has its object."""
    _stored_home(settings, n=1)
    db, objects = open_results_db(settings), open_object_store(settings)
    stop = threading.Event()
    written: list[Stored] = []

    def write() -> None:
        seed = 100
        while not stop.is_set():
            written.append(store_answer(db, objects, "species-id", RESULT, png_bytes(seed)))
            seed += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(written) < 3:
            time.sleep(0.01)
        backups = [tmp_path / f"b{i}" for i in range(3)]
        for backup in backups:
            assert cli(["backup", "create", str(backup)], settings.home).exit_code == 0
    finally:
        stop.set()
        writer.join(timeout=30)
    for backup in backups:
        report = json.loads(cli(["backup", "verify", str(backup), "--json"], settings.home).stdout)
        assert report["problems"] == []
        assert report["predicted_objects"] >= 4


def test_doctor_deep_finds_a_deleted_and_a_modified_object(settings: Settings) -> None:
    fast_registry_store(settings)
    stored = _stored_home(settings)
    clean = cli(["doctor", "--deep", "--json"], settings.home)
    assert clean.exit_code == 0, clean.output
    deep = json.loads(clean.stdout)["deep"]
    assert {
        k: deep[k] for k in ("ok", "observations", "with_predictions", "keys_checked", "other_objects")
    } == {
        "ok": True,
        "observations": 3,
        "with_predictions": 3,
        "keys_checked": 3,
        "other_objects": 1,
    }

    root = settings.home / "objects"
    (root / _key(stored[0])).unlink()
    (root / _key(stored[1])).write_bytes(png_bytes(99))
    (root / EXPORT_KEY).write_bytes(b'{"n": 4}')
    out = cli(["doctor", "--deep", "--json", "--max-problems", "2"], settings.home)
    assert out.exit_code == 1
    deep = json.loads(out.stdout)["deep"]
    assert deep["problem_count"] == 3
    assert deep["problems_by_kind"] == {"etag_mismatch": 1, "hash_mismatch": 1, "missing": 1}
    first = [(p["kind"], p["key"], p["observation_id"]) for p in deep["problems"]]
    expected = sorted(
        [
            ("missing", _key(stored[0]), stored[0].observation_id),
            ("hash_mismatch", _key(stored[1]), stored[1].observation_id),
        ],
        key=lambda p: p[2],
    )
    assert first == expected  # the first two, in observation order

    shown = cli(["doctor", "--deep"], settings.home)
    assert shown.exit_code == 1
    assert f"✗ missing {_key(stored[0])} (observation {stored[0].observation_id})" in shown.stdout
    assert f"✗ etag_mismatch {EXPORT_KEY}" in shown.stdout
    assert "3 problems: 1 etag_mismatch, 1 hash_mismatch, 1 missing" in shown.stdout


def test_rebase_moves_only_the_old_homes_artifact_uris(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER, artifact_location TEXT)")
        conn.execute("CREATE TABLE model_versions (name TEXT, version INTEGER, source TEXT)")
        conn.executemany(
            "INSERT INTO experiments VALUES (?, ?)",
            [(1, "file:///old/mlartifacts/species-id"), (2, "file:///old/mlartifacts2/x"), (3, "s3://b/x")],
        )
        conn.execute(
            "INSERT INTO model_versions VALUES ('a', 1, 'file:///old/mlartifacts/a/r1/artifacts/model')"
        )
    assert rebase_mlflow_artifacts(path, "file:///old/mlartifacts", "file:///new%20home/mlartifacts") == 2
    with sqlite3.connect(path) as conn:
        locations = [r[0] for r in conn.execute("SELECT artifact_location FROM experiments ORDER BY 1")]
        source = conn.execute("SELECT source FROM model_versions").fetchone()[0]
    assert locations == [
        "file:///new%20home/mlartifacts/species-id",
        "file:///old/mlartifacts2/x",
        "s3://b/x",
    ]
    assert source == "file:///new%20home/mlartifacts/a/r1/artifacts/model"
