"""The layer contract of docs/architecture.md holds, and it would catch an upward import.

``lint-imports`` (import-linter, configured in pyproject.toml) checks the whole package; the second
test proves the contract can fail: a copy of the package with one module importing a higher floor
must be refused, naming that module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import IN_CI

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# Skipped on a developer machine without it; under CI=true a missing import-linter fails the tests.
pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists() and not IN_CI, reason="import-linter is missing: make install"
)


def _lint(config: Path, package_parent: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), str(config), "--no-cache"],
        cwd=package_parent,
        env={"PYTHONPATH": str(package_parent), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers() -> None:
    result = _lint(ROOT / "pyproject.toml", ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "keeneye", src / "keeneye", ignore=shutil.ignore_patterns("__pycache__"))
    bad = src / "keeneye" / "store" / "_upward.py"
    bad.write_text('"""A store module that climbs to the API (forbidden)."""\n\nimport keeneye.serving\n')
    try:
        result = _lint(ROOT / "pyproject.toml", src)
        assert result.returncode != 0, result.stdout
        assert "keeneye.store is not allowed to import keeneye.serving" in result.stdout
        assert "keeneye.store._upward -> keeneye.serving" in result.stdout
    finally:
        bad.unlink(missing_ok=True)
