"""`keeneye doctor`, `db upgrade`, `predict`, `keys` and `--help` through the real entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serving_support import jpeg, register_species_model
from tests.unit.store.test_db import HEAD

KEENEYE = [sys.executable, "-m", "keeneye"]


def run(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "KEENEYE_HOME": str(home), "COLUMNS": "200", **env}
    return subprocess.run([*KEENEYE, *args], capture_output=True, text=True, env=full_env, timeout=120)


def test_help_lists_every_command_with_a_description(tmp_path: Path) -> None:
    out = run(["--help"], tmp_path)
    assert out.returncode == 0
    for command in ("doctor", "db", "serve", "predict", "keys", "models", "pipelines", "synth", "train"):
        rows = [ln.strip("│ ") for ln in out.stdout.splitlines()]
        line = next((r for r in rows if r.startswith(f"{command} ")), "")
        assert len(line.removeprefix(command).strip()) > 10, f"{command} has no description: {line!r}"


def test_doctor_on_a_fresh_machine_exits_0(tmp_path: Path) -> None:
    out = run(["doctor", "--json"], tmp_path / "fresh")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads(out.stdout)
    settings = ["DATABASE_URL", "BUS_URL", "OBJECTS_URL", "CACHE_URL", "REGISTRY_URI"]
    assert [r["setting"] for r in rows] == [f"KEENEYE_{s}" for s in settings]
    assert all(r["reachable"] for r in rows)


def test_doctor_with_unreachable_postgres_exits_1_with_a_clear_line(tmp_path: Path) -> None:
    start = time.monotonic()
    out = run(["doctor"], tmp_path, KEENEYE_DATABASE_URL="postgresql+psycopg://nobody:pw@127.0.0.1:1/x")
    assert out.returncode == 1
    assert time.monotonic() - start < 60
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("✗ KEENEYE_DATABASE_URL"))
    assert "127.0.0.1" in line and "KEENEYE_DATABASE_URL" in line
    assert "pw" not in out.stdout  # the password is masked
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"KEENEYE_BUS_URL": "amqp://127.0.0.1:5672"}, "KEENEYE_BUS_URL: scheme 'amqp'"),
        ({"KEENEYE_CACHE_URL": "memcached://x"}, "KEENEYE_CACHE_URL: scheme 'memcached'"),
        ({"KEENEYE_OBJECTS_URL": "ftp://x/y"}, "KEENEYE_OBJECTS_URL: scheme 'ftp'"),
    ],
)
def test_doctor_names_a_misconfigured_setting(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    out = run(["doctor"], tmp_path, **env)
    assert out.returncode == 1
    assert expected in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_bad_setting_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = run(["db", "upgrade"], tmp_path, KEENEYE_DATABASE_URL="mysql://root@localhost/x")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert out.stderr.startswith("error: KEENEYE_DATABASE_URL: scheme 'mysql'")
    debug = run(["--debug", "db", "upgrade"], tmp_path, KEENEYE_DATABASE_URL="mysql://root@localhost/x")
    assert "Traceback" in debug.stderr


def test_db_upgrade_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        out = run(["db", "upgrade"], tmp_path)
        assert out.returncode == 0, out.stderr
        assert f"is at revision {HEAD}" in out.stdout  # the newest migration, both times


def test_predict_cli_uses_the_api_code_path(settings_home: Path, tmp_path: Path) -> None:
    photo = tmp_path / "fish.jpg"
    photo.write_bytes(jpeg(seed=5))
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    out = run(["predict", "--json", str(photo), str(bad)], settings_home)
    assert out.returncode == 1  # one file was refused
    results = json.loads(out.stdout)
    assert results[0]["file"] == str(photo) and results[0]["model_version"] == "1"
    assert results[0]["predicted_class"] in {
        "salmo_trutta",
        "esox_lucius",
        "perca_fluviatilis",
        "sander_lucioperca",
        "abramis_brama",
    }
    assert results[1]["reason"] == "unsupported_format"


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = run(["keys", "create", "field-app"], tmp_path)
    assert created.returncode == 0 and "ke_" in created.stdout
    listed = json.loads(run(["keys", "list", "--json"], tmp_path).stdout)
    assert [(k["id"], k["name"], k["revoked_at"]) for k in listed] == [(1, "field-app", None)]
    assert run(["keys", "revoke", "1"], tmp_path).returncode == 0
    again = run(["keys", "revoke", "1"], tmp_path)
    assert again.returncode == 2 and "no active API key with id 1" in again.stderr


def test_keys_have_a_role(tmp_path: Path) -> None:
    viewer = run(["keys", "create", "wall-screen", "--role", "viewer"], tmp_path)
    assert viewer.returncode == 0 and "role viewer" in viewer.stdout
    assert run(["keys", "create", "field-app"], tmp_path).returncode == 0
    listed = json.loads(run(["keys", "list", "--json"], tmp_path).stdout)
    assert [(k["name"], k["role"]) for k in listed] == [("wall-screen", "viewer"), ("field-app", "operator")]
    table = run(["keys", "list"], tmp_path).stdout
    assert any("wall-screen" in ln and "viewer" in ln for ln in table.splitlines())
    bad = run(["keys", "create", "x", "--role", "root"], tmp_path)
    assert bad.returncode == 2 and "'root' is not one of 'viewer', 'operator', 'admin'" in bad.stderr
    help_text = run(["keys", "create", "--help"], tmp_path).stdout
    assert "--role" in help_text and "promote" in help_text


@pytest.fixture
def settings_home(tmp_path: Path) -> Path:
    from keeneye.settings import Settings

    home = tmp_path / "home"
    register_species_model(Settings(home=home), tmp_path)
    return home
