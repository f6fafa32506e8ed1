"""The result-ready / result-ack handshake, once for every sink (``plc.<protocol>.handshake``).

As Cognex and LandingEdge offer it: the sink writes a result, raises *ready*, and waits for the PLC to
echo the result's sequence as its *ack*; then it lowers ready. The decision counts as acked only once
echoed; no echo within ``ack_timeout_seconds`` raises :class:`~keeneye.sinks.types.PlcNotAcknowledged`
(the dispatcher fails the decision ``not_acknowledged``, the connection stays up) and ready goes
down anyway: a late PLC must not take a result meant for a part that has passed. Results wait for the
previous handshake, since the sink thread writes one decision at a time.

Each protocol supplies how ready is raised and lowered (a Modbus register, an OPC UA variable, nothing
for MQTT, where the decision message itself says "ready") and how acks arrive: read by the waiting
thread (``poll``, Modbus) or pushed from another thread with :meth:`Handshake.offer` (an OPC UA
subscription, an MQTT message callback). Only an ack equal to the sequence being waited for counts —
an echo of an earlier result that came too late is never applied to the next part.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from keeneye.sinks.types import PlcNotAcknowledged

log = logging.getLogger(__name__)

POLL_SECONDS = 0.002  # a PLC scan cycle is a few ms: a polled ack is read about as often


def ack_value(value: object) -> int | None:
    """``value`` as a sequence number when it is one (an integer, or a float with no fraction — a PLC
    may keep the echo in a REAL), else None (a bool, text, a fraction: not an ack)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


class Handshake:
    """One sink's handshake; :meth:`run` is called from the sink thread, :meth:`offer` from any thread.

    ``ready(True)`` / ``ready(False)`` raise and lower the ready signal (None: the protocol has none);
    ``poll`` reads the current ack (None: acks are pushed through :meth:`offer`); ``where`` names the
    ack for the failure text ("in HR7", "in ns=2;s=…Ack", "on plant/L1/ack").
    """

    def __init__(
        self,
        *,
        timeout: float,
        where: str,
        ready: Callable[[bool], None] | None = None,
        poll: Callable[[], object] | None = None,
    ) -> None:
        self.timeout = timeout
        self.where = where
        self._ready = ready
        self._poll = poll
        self._cond = threading.Condition()
        self._expected: int | None = None  # the sequence being waited for; None between handshakes
        self._echoed = False

    def run(self, sequence: int, write: Callable[[], None]) -> None:
        """``write`` the result, raise ready, wait for the PLC to echo ``sequence``, lower ready.

        Raises :class:`PlcNotAcknowledged` without the echo in time; whatever ``write``, ``ready`` or
        ``poll`` raise passes through (ready is lowered on every way out once it was raised).
        """
        # Armed before the write: a PLC that echoes as soon as it sees the new result must not be missed.
        with self._cond:
            self._expected, self._echoed = sequence, False
        try:
            write()
            if self._ready is not None:
                self._ready(True)
            try:
                if not self._wait():
                    raise PlcNotAcknowledged(
                        f"no echo of sequence {sequence} {self.where} within {self.timeout} s"
                    )
            finally:
                if self._ready is not None:
                    self._ready(False)
        finally:
            with self._cond:
                self._expected = None

    def offer(self, value: object) -> None:
        """An ack the PLC pushed (any thread); it counts only if it echoes the awaited sequence."""
        expected = self._take(value)
        if expected is not None:
            # A late echo of an earlier result, or one that came after its timeout: worth a trace.
            log.debug("PLC ack %r %s ignored: waiting for sequence %s", value, self.where, expected)

    def _take(self, value: object) -> int | None:
        """Record ``value`` if it is the awaited echo; else return the sequence still awaited (None when
        no handshake is running)."""
        sequence = ack_value(value)
        with self._cond:
            if sequence is not None and sequence == self._expected:
                self._echoed = True
                self._cond.notify_all()
                return None
            return self._expected

    def _wait(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while True:
            if self._poll is not None:
                self._take(self._poll())  # a polled register holds the previous echo until the PLC acts
            with self._cond:
                left = deadline - time.monotonic()
                pause = left if self._poll is None else min(left, POLL_SECONDS)
                if self._cond.wait_for(lambda: self._echoed, max(0.0, pause)):
                    return True
            if left <= 0:
                return False
