"""The real promtool and amtool for the Prometheus export tests: required in CI, skipped where missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from keeneye.monitoring.alerts.rules import AlertRule, load_rules


def require_tool(name: str, package: str) -> str:
    """The tool's path; fails the test in CI (CI=true) and skips it elsewhere when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing: install the Debian package `{package}` (`make promtool`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_promtool() -> str:
    return require_tool("promtool", "prometheus")


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the real promtool; stdout and stderr are kept for the assertion message."""
    return subprocess.run(
        [require_promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def default_rules() -> list[AlertRule]:
    return load_rules()
