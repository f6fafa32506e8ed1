"""The one base of every long-running loop (stream workers, the scheduler): setup / run_loop / teardown.

:class:`WorkerBase` — ``setup`` / ``run_loop`` / ``teardown``, a stop event set by SIGTERM/SIGINT
(drain: the work in hand is finished, then the loop exits), a busy-fraction gauge over a sliding
window (:class:`UtilizationWindow`), and an optional status file (JSON, rewritten every few seconds
and atomically) so a supervisor can read it without importing the worker. It sits on the lowest floor
so a loop in any package can use it without climbing above its own layer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Utilisation: busy fraction over a sliding window
# --------------------------------------------------------------------------------------------------


class UtilizationWindow:
    """Fraction of the last ``window_seconds`` spent inside :meth:`busy` spans (0..1)."""

    def __init__(self, window_seconds: float = 30.0) -> None:
        self.window = window_seconds
        self._spans: deque[tuple[float, float]] = deque()
        self._busy_since: float | None = None
        self._created = time.monotonic()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        start = time.monotonic()
        with self._lock:
            self._busy_since = start
        try:
            yield
        finally:
            end = time.monotonic()
            with self._lock:
                self._busy_since = None
                self._spans.append((start, end))
                while self._spans and self._spans[0][1] < end - self.window:
                    self._spans.popleft()

    def fraction(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        lo = max(now - self.window, self._created)
        total = now - lo
        if total <= 0:
            return 0.0
        with self._lock:
            busy = sum(max(0.0, min(end, now) - max(start, lo)) for start, end in self._spans)
            if self._busy_since is not None:
                busy += now - max(self._busy_since, lo)
        return min(1.0, busy / total)


# --------------------------------------------------------------------------------------------------
# The base of every long-running loop
# --------------------------------------------------------------------------------------------------


class WorkerBase:
    """``setup`` → ``run_loop`` (calls :meth:`step` until stopped) → ``teardown``.

    Subclasses implement :meth:`step` (one short iteration: it must return within about a second so
    a stop request is honoured) and wrap real work in ``with self.busy():``.
    """

    def __init__(self, name: str, *, status_path: Path | None = None, status_interval: float = 2.0) -> None:
        self.name = name
        self.stop_event = threading.Event()
        self.utilization = UtilizationWindow()
        self.processed = 0
        self.started_at = time.time()
        self.status_path = status_path
        self.status_interval = status_interval
        self._next_status = 0.0

    @property
    def busy_fraction(self) -> float:
        return self.utilization.fraction()

    def busy(self) -> contextlib.AbstractContextManager[None]:
        return self.utilization.busy()

    # -- the lifecycle ----------------------------------------------------------------------------

    def setup(self) -> None:
        """Open backends and load models; raising here ends the worker before any message is taken."""

    def step(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        """Release backends; runs whether ``run_loop`` ended normally or by an exception."""

    def run_loop(self) -> None:
        while not self.stop_event.is_set():
            self.step()
            self.write_status()

    def run(self, *, handle_signals: bool = True) -> None:
        """The whole life: signals (main thread only), setup, loop, teardown."""
        if handle_signals and threading.current_thread() is threading.main_thread():
            self.install_signal_handlers()
        self.setup()
        try:
            self.write_status(force=True)
            self.run_loop()
        finally:
            try:
                self.teardown()
            finally:
                self.remove_status()
        log.info("worker stopped", extra={"worker": self.name, "processed": self.processed})

    def stop(self) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if self.stop_event.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, unacked messages come back
            log.info("stop requested; finishing the batch in hand", extra={"signal": signum})
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- the status file --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "name": self.name,
            "busy_fraction": round(self.busy_fraction, 4),
            "processed": self.processed,
            "started_at": self.started_at,
            "updated_at": time.time(),
        }

    def write_status(self, *, force: bool = False) -> None:
        if self.status_path is None:
            return
        now = time.monotonic()
        if not force and now < self._next_status:
            return
        self._next_status = now + self.status_interval
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status()))
            os.replace(tmp, self.status_path)  # readers never see half a file
        except OSError:
            log.warning("cannot write the worker status file", extra={"path": str(self.status_path)})

    def remove_status(self) -> None:
        if self.status_path is not None:
            with contextlib.suppress(OSError):
                self.status_path.unlink()


__all__ = ["UtilizationWindow", "WorkerBase"]
