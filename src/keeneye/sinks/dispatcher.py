"""The one sink thread behind every protocol: hand-off, writes, heartbeat, reconnect with backoff.

A protocol module supplies a :class:`Transport` (connect / write / heartbeat / disconnect, each
blocking but bounded by the configured timeouts); :class:`ThreadedSink` runs it in its own daemon
thread so the caller never waits on a PLC:

* ``send()`` puts the decision in a bounded queue and returns; a full queue fails it at once.
* Connected: each decision is written in turn and reported ``acked`` once the PLC acknowledged it;
  the heartbeat counter is written every ``plc.heartbeat_seconds``.
* A failed connect, write or heartbeat marks the sink down (``keeneye_plc_up`` 0, which fires
  ``PlcUnreachable``) and schedules a reconnect with exponential backoff and jitter.
* While down, decisions are failed as they arrive (``plc_unreachable``): the parts have passed, a late
  result would be applied to the wrong part. With ``plc.replay`` they are kept (bounded) and written
  in order after the reconnect instead.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self

from keeneye.metrics import Metrics
from keeneye.settings import PlcSettings
from keeneye.sinks.types import (
    FailReason,
    OutcomeCallback,
    PlcDecision,
    PlcNotAcknowledged,
    PlcRejected,
    SinkOutcome,
    SinkState,
    SinkStatus,
)

log = logging.getLogger(__name__)

_IDLE_WAIT = 0.5  # the thread wakes at least this often to check close() and the reconnect time


class Transport(Protocol):
    """One protocol's blocking calls; :class:`ThreadedSink` calls them from its thread only.

    ``write`` raises :class:`~keeneye.sinks.types.PlcRejected` when the PLC refused the value (the
    connection stays up) and any other exception when the connection is gone.
    """

    kind: str

    def connect(self) -> None: ...

    def write(self, decision: PlcDecision) -> None: ...

    def heartbeat(self, counter: int) -> None: ...

    def disconnect(self) -> None: ...


def backoff_delay(attempt: int, *, initial: float, maximum: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (1 = first retry): ``initial × 2^(attempt-1)`` capped
    at ``maximum``, then a random half to whole of it, so many runners behind one switch that comes
    back do not all reconnect in the same instant."""
    cap = min(maximum, initial * 2.0 ** max(0, min(attempt - 1, 60)))
    return cap * (0.5 + 0.5 * rng.random())


class ThreadedSink:
    """A :class:`~keeneye.sinks.types.Sink` over one :class:`Transport`; see the module docstring."""

    def __init__(
        self,
        transport: Transport,
        *,
        url: str,
        plc: PlcSettings,
        line: str,
        camera: str,
        pipeline: str = "line-inspection",
        on_outcome: OutcomeCallback | None = None,
        metrics: Metrics | None = None,
        replay: bool | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._transport = transport
        self._url = url
        self._plc = plc
        self._replay = plc.replay if replay is None else replay
        self._on_outcome = on_outcome
        self._metrics = metrics
        self._labels = (pipeline, line, camera, transport.kind)
        self._rng = rng or random.Random()  # noqa: S311 — jitter, not secrets
        self._clock = clock
        self._wall = wall
        self._queue: queue.Queue[PlcDecision] = queue.Queue(maxsize=plc.queue_size)
        self._held: deque[PlcDecision] = deque()  # replay mode: decisions made while down
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()  # guards the counters below (read by state() from other threads)
        self._closed = False
        self._last_ack_at: float | None = None
        self._consecutive_failures = 0
        self._acked = 0
        self._failed = 0
        self._heartbeat = 0
        self._last_error = ""
        self._attempt = 0  # failed connection attempts in a row
        self._next_connect = clock()
        self._set_up(False)
        self._thread = threading.Thread(
            target=self._run, name=f"keeneye-sink-{transport.kind}-{line}-{camera}", daemon=True
        )
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._transport.kind

    def send(self, decision: PlcDecision) -> None:
        """Hand ``decision`` to the sink thread and return at once (never waits on the PLC)."""
        if self._closed:
            self._fail(decision, FailReason.closed, "the sink is closed")
            return
        try:
            self._queue.put_nowait(decision)
        except queue.Full:
            self._fail(decision, FailReason.queue_full, f"{self._plc.queue_size} decisions already waiting")

    def state(self) -> SinkState:
        with self._lock:
            return SinkState(
                sink=self.kind,
                url=self._url,
                connected=self._connected.is_set(),
                last_ack_at=self._last_ack_at,
                consecutive_failures=self._consecutive_failures,
                acked=self._acked,
                failed=self._failed,
                queued=self._queue.qsize() + len(self._held),
                heartbeat=self._heartbeat,
                last_error=self._last_error,
            )

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking decisions, deliver what is queued while connected, fail the rest, disconnect."""
        self._closed = True
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("PLC sink %s did not stop within %.1f s (a write is hanging)", self._url, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the sink thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        next_heartbeat = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            if not self._connected.is_set() and now >= self._next_connect:
                self._try_connect(now)
                next_heartbeat = now
            if self._connected.is_set() and now >= next_heartbeat:
                next_heartbeat = now + self._plc.heartbeat_seconds
                self._beat()
            if self._connected.is_set() and self._held:
                self._deliver(self._held.popleft())
                continue
            wake = next_heartbeat if self._connected.is_set() else self._next_connect
            try:
                decision = self._queue.get(timeout=min(_IDLE_WAIT, max(0.0, wake - self._clock())))
            except queue.Empty:
                continue
            if self._connected.is_set():
                self._deliver(decision)
            elif self._replay:
                self._hold(decision)
            else:
                self._fail(decision, FailReason.plc_unreachable, self._last_error)
        self._drain()

    def _try_connect(self, now: float) -> None:
        """One connection attempt; a failure schedules the next one further out."""
        try:
            self._transport.connect()
        except Exception as exc:
            if self._attempt == 0:
                log.warning("PLC sink %s: cannot connect (%s); retrying with backoff", self._url, exc)
            self._note_error(f"connect: {exc}")
            with contextlib.suppress(Exception):
                self._transport.disconnect()
            self._schedule_reconnect(now)
            return
        if self._attempt:
            log.info("PLC sink %s: connected after %d failed attempt(s)", self._url, self._attempt)
        self._attempt = 0
        self._set_up(True)  # before the event: whoever wait_connected() wakes reads keeneye_plc_up 1
        self._connected.set()

    def _schedule_reconnect(self, now: float) -> None:
        self._attempt += 1
        self._next_connect = now + backoff_delay(
            self._attempt,
            initial=self._plc.backoff_initial_seconds,
            maximum=self._plc.backoff_max_seconds,
            rng=self._rng,
        )

    def _lost(self, exc: BaseException, what: str) -> None:
        """The connection broke: mark down, drop the transport; the loop reconnects with backoff."""
        log.warning("PLC sink %s: connection lost during %s (%s)", self._url, what, exc)
        self._note_error(f"{what}: {exc}")
        self._connected.clear()
        self._set_up(False)
        with contextlib.suppress(Exception):
            self._transport.disconnect()
        # Not at once: a PLC that drops every connection would otherwise be hammered.
        self._schedule_reconnect(self._clock())

    def _deliver(self, decision: PlcDecision) -> None:
        started = self._clock()
        try:
            self._transport.write(decision)
        except PlcRejected as exc:
            self._fail(decision, FailReason.rejected, str(exc))
            return
        except PlcNotAcknowledged as exc:
            self._fail(decision, FailReason.not_acknowledged, str(exc))
            return
        except Exception as exc:
            self._fail(decision, FailReason.write_failed, str(exc) or type(exc).__name__)
            self._lost(exc, "write")
            return
        seconds = self._clock() - started
        at = self._wall()
        with self._lock:
            self._last_ack_at = at
            self._consecutive_failures = 0
            self._acked += 1
        if self._metrics is not None:
            self._metrics.plc_writes.labels(*self._labels, "acked").inc()
            self._metrics.plc_write_seconds.labels(*self._labels).observe(seconds)
        self._report(SinkOutcome(decision, SinkStatus.acked, at, write_seconds=seconds))

    def _beat(self) -> None:
        counter = (self._heartbeat + 1) & 0xFFFF
        try:
            self._transport.heartbeat(counter)
        except PlcRejected as exc:
            self._note_error(f"heartbeat refused: {exc}")
            return
        except Exception as exc:
            self._lost(exc, "heartbeat")
            return
        with self._lock:
            self._heartbeat = counter

    def _hold(self, decision: PlcDecision) -> None:
        self._held.append(decision)
        if len(self._held) > self._plc.replay_limit:
            oldest = self._held.popleft()
            self._fail(
                oldest, FailReason.replay_overflow, f"more than {self._plc.replay_limit} held while down"
            )

    def _drain(self) -> None:
        """After close(): what is held or queued goes out while connected; the rest fails ``closed``."""
        pending = list(self._held)
        self._held.clear()
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for decision in pending:
            if self._connected.is_set():
                self._deliver(decision)
            else:
                self._fail(decision, FailReason.closed, "the sink closed while the PLC was unreachable")
        with contextlib.suppress(Exception):
            self._transport.disconnect()
        self._connected.clear()

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _note_error(self, text: str) -> None:
        with self._lock:
            self._last_error = text

    def _set_up(self, up: bool) -> None:
        if self._metrics is not None:
            self._metrics.plc_up.labels(*self._labels).set(1 if up else 0)

    def _fail(self, decision: PlcDecision, reason: FailReason, detail: str) -> None:
        with self._lock:
            self._consecutive_failures += 1
            self._failed += 1
        if self._metrics is not None:
            self._metrics.plc_writes.labels(*self._labels, "failed").inc()
        self._report(SinkOutcome(decision, SinkStatus.failed, self._wall(), reason=reason, detail=detail))

    def _report(self, outcome: SinkOutcome) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome)
        except Exception:
            # A broken recorder must not stop decisions reaching the PLC.
            log.exception("PLC sink %s: the outcome callback failed", self._url)
