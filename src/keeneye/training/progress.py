"""Progress of a long job for a person: a live bar on a terminal, plain lines elsewhere, or nothing.

A live bar redraws one screen region; with stdout in a file (``nohup``, CI, ``| tee``) rich draws
nothing until the end, so a five-minute training looked dead. :func:`console_progress` picks:

* a terminal → :class:`~keeneye.training.run.RichProgress` (the live bars);
* anything else → :class:`PlainProgress`: one timestamped line per stage, per epoch or trial, and per
  tenth of a long count (preparing or evaluating images), each with its percentage and metrics;
* ``quiet`` → no progress at all (``None``: the job runs without a callback).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from rich.console import Console

from keeneye.training.run import RichProgress
from keeneye.training.trainers import ProgressCallback, ProgressEvent

# Stages whose every event is a unit of work worth a line (one epoch, one search trial).
EVERY_EVENT_STAGES = frozenset({"train", "search"})
PLAIN_STEP = 0.1  # other counted stages: a line per tenth of the total


class PlainProgress:
    """A :data:`ProgressCallback` printing plain lines: ``2026-05-01 10:00:00 train  epoch 3/20 15% …``.

    A line is printed when the stage or its message changes or a count starts at 0, for every epoch or
    trial, when a count crosses the next tenth of its total, and when it completes. Commands with
    their own counts (``keeneye ingest``) feed it :class:`ProgressEvent` values as well.
    """

    def __init__(self, console: Console, *, clock: Callable[[], float] = time.time) -> None:
        self._console = console
        self._clock = clock
        self._stage: str | None = None
        self._message: str | None = None
        self._next_share = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage == "done":
            return  # the caller prints the outcome (gates, version) itself
        # A new stage, a new kind of step or a count starting again (the next batch) starts afresh.
        new_stage = event.stage != self._stage or event.message != self._message or event.done == 0
        if new_stage:
            self._stage, self._message, self._next_share = event.stage, event.message, 0.0
        share = None
        if event.total and event.done is not None:
            share = min(1.0, event.done / event.total)
        if not (new_stage or event.stage in EVERY_EVENT_STAGES or share is None or share >= self._next_share):
            return
        if share is not None:
            self._next_share = (int(share / PLAIN_STEP + 1e-9) + 1) * PLAIN_STEP
        self._console.print(self._line(event, share), highlight=False, markup=False, soft_wrap=True)

    def _line(self, event: ProgressEvent, share: float | None) -> str:
        stamp = datetime.fromtimestamp(self._clock()).strftime("%Y-%m-%d %H:%M:%S")
        parts = [stamp, f"{event.stage:<9}", event.message]
        if share is not None:
            count = f"{event.done}/{event.total}"
            parts.append(f"{share:.0%}" if count in event.message else f"{count} {share:.0%}")
        if event.metrics:
            parts.append("  ".join(f"{k}={v:.4f}" for k, v in event.metrics.items()))
        return " ".join(p for p in parts if p)


@contextlib.contextmanager
def console_progress(console: Console, *, quiet: bool = False) -> Iterator[ProgressCallback | None]:
    """The progress callback that suits ``console``: a live bar on a terminal, plain lines otherwise,
    ``None`` when ``quiet``."""
    if quiet:
        yield None
    elif console.is_terminal:
        with RichProgress(console) as progress:
            yield progress
    else:
        yield PlainProgress(console)


__all__ = ["EVERY_EVENT_STAGES", "PlainProgress", "console_progress"]
