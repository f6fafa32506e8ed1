"""The smartcut settings section: the root under KEENEYE_HOME unless KEENEYE_SMARTCUT__ROOT says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from keeneye.settings import Settings


def test_root_defaults_under_home_with_the_seeds_limits(tmp_path: Path) -> None:
    s = Settings(home=tmp_path).smartcut
    assert s.root == tmp_path.absolute() / "smartcut"
    assert (s.max_duration_seconds, s.max_video_bytes, s.default_sensitivity) == (86400.0, 25 * 1000**3, 1.0)


def test_root_and_limits_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEENEYE_SMARTCUT__ROOT", str(tmp_path / "shared"))
    monkeypatch.setenv("KEENEYE_SMARTCUT__MAX_DURATION_SECONDS", "3600")
    s = Settings(home=tmp_path / "home").smartcut
    assert (s.root, s.max_duration_seconds) == (tmp_path / "shared", 3600.0)
