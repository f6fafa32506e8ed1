"""``keeneye ingest`` run again on a folder it already sent: it says so and names ``--resend``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keeneye.cli import app
from tests.serving_support import jpeg
from tests.unit.stream.stream_support import stream_settings


def test_a_rerun_that_queues_nothing_names_resend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, name = stream_settings(tmp_path)
    monkeypatch.setenv("KEENEYE_HOME", str(settings.home))
    monkeypatch.setenv("KEENEYE_PIPELINES__DIRS", json.dumps([str(d) for d in settings.pipelines.dirs]))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(seed=1))
    (folder / "b.jpg").write_bytes(jpeg(seed=2))
    runner = CliRunner()
    args = ["ingest", "--pipeline", name, str(folder)]

    first = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert first.exit_code == 0, first.output
    assert f"queued 2 image(s) for '{name}'" in first.stdout
    assert "--resend" not in first.stdout
    # stderr is no terminal here: plain timestamped progress lines, not a live bar.
    assert re.search(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ingest +2 new file\(s\) from .* 2/2 100%$", first.stderr, re.M
    )

    again = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert again.exit_code == 0, again.output
    assert f"queued 0 image(s) for '{name}'" in again.stdout
    assert "nothing new: 2 file(s)" in again.stdout and "pass --resend to send them again" in again.stdout

    resent = runner.invoke(app, ["--quiet", *args, "--resend"], env={"COLUMNS": "300"})
    assert f"queued 2 image(s) for '{name}'" in resent.stdout and "nothing new" not in resent.stdout
    assert "ingest" not in resent.stderr  # --quiet: no progress
