"""Short synthetic videos shared by the smartcut tests (made once per test process, a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keeneye.video import GroundTruth, SynthSpec, generate_video


@pytest.fixture(scope="session")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """3 minutes at 5 fps, 320×180, a keyframe every 2 s, 3 events, one camera-shake episode."""
    return generate_video(tmp_path_factory.mktemp("smartcut"), SynthSpec(hours=0.05, events=3, seed=7))


@pytest.fixture(scope="session")
def long_gop_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """1 minute at 10 fps with a keyframe every 10 s and no events: for the seek + decode path."""
    spec = SynthSpec(hours=1 / 60, events=0, seed=1, fps=10, gop_seconds=10.0, name="longgop")
    return generate_video(tmp_path_factory.mktemp("longgop"), spec)
