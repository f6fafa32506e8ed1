"""What a PLC sink is given, what it reports back, and the one protocol every sink follows.

A line decision becomes a :class:`PlcDecision` in the edge runner; :meth:`Sink.send` hands it to the
sink's own thread and returns at once, whatever the PLC is doing. The sink reports one
:class:`SinkOutcome` per decision (``acked`` or ``failed`` with a stable reason) through the
``on_outcome`` callback it was opened with, so the runner can record ``sink: acked|failed`` beside the
decision (invariant 5: every decision is traceable to its sink ack). :meth:`Sink.state` is what the
line dashboard shows.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from keeneye.domain import Decision


class ResultCode(enum.IntEnum):
    """The result register / value a PLC reads (INTERFACES.md: 1 OK, 2 DEFECT, 3 fail-safe DEFECT)."""

    ok = 1
    defect = 2
    failsafe_defect = 3

    @classmethod
    def of(cls, decision: Decision, *, failsafe: bool = False) -> ResultCode:
        """The code of a line decision; a fail-safe answer (no model answer by the deadline) is always
        a DEFECT, so ``failsafe`` wins over ``decision``."""
        if failsafe:
            return cls.failsafe_defect
        return cls.ok if decision is Decision.ok else cls.defect


@dataclass(frozen=True)
class PlcDecision:
    """One decision for one part, as the PLC receives it.

    * ``sequence``: the runner's decision counter (grows by one per part); the Modbus register holds it
      modulo 65536, so a PLC detects a missed or repeated result by comparing with the last one;
    * ``result``: OK / DEFECT / fail-safe DEFECT; ``class_id``: the defect class (0 = none);
    * ``confidence`` in [0, 1]; ``latency_ms``: trigger to decision, as the runner measured it;
    * ``triggered_at``: wall-clock (Unix seconds) of the frame's trigger, for the MQTT payload and logs.
    """

    sequence: int
    result: ResultCode
    line: str
    camera: str
    triggered_at: float
    class_id: int = 0
    class_name: str = ""
    confidence: float = 0.0
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.sequence < 0:
            raise ValueError(f"sequence must be >= 0, got {self.sequence}")
        if self.class_id < 0:
            raise ValueError(f"class_id must be >= 0, got {self.class_id}")
        # A NaN would fail inside the sink thread, where it looks like a broken connection.
        if not (math.isfinite(self.confidence) and math.isfinite(self.latency_ms)):
            raise ValueError(
                f"confidence and latency_ms must be finite numbers, got {self.confidence}, {self.latency_ms}"
            )


class SinkStatus(enum.StrEnum):
    acked = "acked"
    failed = "failed"


class FailReason(enum.StrEnum):
    """Why a decision did not reach the PLC (stable codes: stored with the decision, shown in the UI)."""

    plc_unreachable = "plc_unreachable"  # not connected when its turn came: never sent, never replayed
    write_failed = "write_failed"  # the write was sent and the connection broke before the ack
    rejected = "rejected"  # the PLC answered with an error (e.g. a Modbus exception, a bad node type)
    not_acknowledged = "not_acknowledged"  # handshake mode: the PLC did not take the result in time
    queue_full = "queue_full"  # the sink thread was this far behind: refused at send()
    replay_overflow = "replay_overflow"  # replay mode kept too many while down: the oldest are dropped
    closed = "closed"  # sent after close(), or still queued when the sink closed


@dataclass(frozen=True)
class SinkOutcome:
    """What happened to one decision. ``at`` is wall-clock (Unix seconds); ``write_seconds`` is the time
    the acknowledged write took; ``detail`` is the error text for a human when it failed."""

    decision: PlcDecision
    status: SinkStatus
    at: float
    reason: FailReason | None = None
    detail: str = ""
    write_seconds: float | None = None


OutcomeCallback = Callable[[SinkOutcome], None]


@dataclass(frozen=True)
class SinkState:
    """A sink as the line dashboard shows it. ``last_ack_at`` is wall-clock; ``consecutive_failures``
    counts failed decisions since the last ack; ``heartbeat`` is the last counter written."""

    sink: str
    url: str
    connected: bool
    last_ack_at: float | None
    consecutive_failures: int
    acked: int
    failed: int
    queued: int
    heartbeat: int
    last_error: str


class Sink(Protocol):
    """A destination of line decisions: a PLC over Modbus TCP or OPC UA, or an MQTT broker.

    ``send`` never blocks: it puts the decision in a bounded hand-off and returns; a full hand-off
    fails the decision at once (``queue_full``). Outcomes arrive through the callback given to
    :func:`keeneye.sinks.open_sink`, from the sink's thread. ``close`` delivers what is queued while
    the PLC is reachable and fails the rest (``closed``). A sink is a context manager.
    """

    @property
    def kind(self) -> str:
        """``modbus``, ``opcua`` or ``mqtt``: the ``sink`` label of the metrics."""
        ...

    def send(self, decision: PlcDecision) -> None: ...

    def state(self) -> SinkState: ...

    def wait_connected(self, timeout: float) -> bool:
        """Whether the sink is connected, waiting up to ``timeout`` seconds for it (start-up checks)."""
        ...

    def close(self, timeout: float = 5.0) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class PlcRejected(Exception):
    """The PLC answered a write with an error: the connection is fine, this one value was refused."""


class PlcNotAcknowledged(Exception):
    """Handshake mode: the write went through but the PLC did not acknowledge the result in time."""
