"""Plain progress lines for stdout that is not a terminal (``nohup``, CI logs), nothing when quiet."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from keeneye.training.progress import PlainProgress, console_progress
from keeneye.training.run import RichProgress
from keeneye.training.trainers import ProgressEvent

T0 = 1_780_000_000.0  # a fixed clock: the stamps are predictable


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, force_terminal=False), out


def test_plain_lines_per_stage_epoch_and_tenth() -> None:
    console, out = _console()
    progress = PlainProgress(console, clock=lambda: T0)
    progress(ProgressEvent("load", "reading data"))
    for k in range(101):
        progress(ProgressEvent("load", "preparing images", done=k, total=100))
    for epoch in range(1, 4):
        progress(ProgressEvent("train", f"epoch {epoch}/3", epoch, 3, {"loss": 1.0 / epoch}))
    progress(ProgressEvent("done", "gates passed"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 11 + 3  # the stage, 0 % … 100 % by tenths, every epoch; "done" is the caller's
    stamp = lines[0][:19]
    assert all(line.startswith(stamp) for line in lines)
    assert lines[1].endswith("load      preparing images 0/100 0%")
    assert lines[11].endswith("preparing images 100/100 100%")
    assert lines[-1].endswith("train     epoch 3/3 100% loss=0.3333")


@pytest.mark.parametrize(
    ("terminal", "quiet", "expected"),
    [(False, False, PlainProgress), (True, False, RichProgress), (False, True, type(None))],
)
def test_console_progress_suits_the_console(terminal: bool, quiet: bool, expected: type) -> None:
    console = Console(file=io.StringIO(), force_terminal=terminal)
    with console_progress(console, quiet=quiet) as progress:
        assert isinstance(progress, expected)
