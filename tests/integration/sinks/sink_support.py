"""What every sink test needs: decisions, a recorder of outcomes, settings that react fast."""

from __future__ import annotations

import threading
import time

from keeneye.settings import PlcSettings
from keeneye.sinks import FailReason, PlcDecision, ResultCode, Sink, SinkOutcome, SinkStatus

# Short heartbeat and backoff so a test sees several beats and a reconnect in well under a second;
# a generous write timeout so a busy 2-core machine never turns a slow ack into a failure.
FAST = PlcSettings(
    heartbeat_seconds=0.05,
    backoff_initial_seconds=0.05,
    backoff_max_seconds=0.2,
    connect_timeout_seconds=2.0,
    write_timeout_seconds=5.0,
)


def with_handshake(protocol: str, ack_timeout: float) -> PlcSettings:
    """FAST with ``plc.<protocol>.handshake`` on and this ack timeout (modbus, opcua or mqtt)."""
    section = getattr(FAST, protocol)
    update = {"handshake": True, "ack_timeout_seconds": ack_timeout}
    return FAST.model_copy(update={protocol: section.model_copy(update=update)})


def decision(seq: int, *, line: str = "L1", camera: str = "C1") -> PlcDecision:
    """Decision ``seq``: every third a DEFECT of class 2, every seventh fail-safe; distinct values."""
    result = ResultCode.ok
    if seq % 3 == 0:
        result = ResultCode.defect
    if seq % 7 == 0:
        result = ResultCode.failsafe_defect
    return PlcDecision(
        sequence=seq,
        result=result,
        line=line,
        camera=camera,
        triggered_at=1_700_000_000.0 + seq,
        class_id=2 if result is ResultCode.defect else 0,
        class_name="scratch" if result is ResultCode.defect else "",
        confidence=0.5 + (seq % 50) / 100,
        latency_ms=10.0 + seq % 90,
    )


class Outcomes:
    """The ``on_outcome`` callback: records outcomes in arrival order; :meth:`wait` for a count."""

    def __init__(self) -> None:
        self.items: list[SinkOutcome] = []
        self._cond = threading.Condition()

    def __call__(self, outcome: SinkOutcome) -> None:
        with self._cond:
            self.items.append(outcome)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 30.0) -> list[SinkOutcome]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout):
                raise AssertionError(f"{len(self.items)} outcomes after {timeout} s, expected {count}")
            return list(self.items)

    def of(self, sequences: range) -> list[SinkOutcome]:
        wanted = set(sequences)
        with self._cond:
            return [o for o in self.items if o.decision.sequence in wanted]

    def statuses(self, sequences: range) -> set[SinkStatus]:
        return {o.status for o in self.of(sequences)}


def unacknowledged(sink: Sink, outcomes: Outcomes, seq: int, *, ack_timeout: float) -> SinkOutcome:
    """Send decision ``seq`` to a handshake-mode sink whose PLC never acks; check that it failed
    ``not_acknowledged`` after the whole ack timeout and left the connection up; return the outcome."""
    assert sink.wait_connected(30), sink.state().last_error
    sent = time.monotonic()
    sink.send(decision(seq))
    [outcome] = outcomes.wait(1)
    waited = time.monotonic() - sent
    assert (outcome.status, outcome.reason) == (SinkStatus.failed, FailReason.not_acknowledged)
    assert waited >= ack_timeout  # a lower bound only: a busy machine may take longer, never shorter
    assert sink.state().connected  # a slow PLC is not a lost connection
    return outcome


def late_echo(sink: Sink, outcomes: Outcomes) -> None:
    """Parts 1-3 to a handshake-mode sink whose PLC misses part 1, echoes 1 (too late) while part 2
    waits, then echoes part 3: the late echo must not count for part 2."""
    assert sink.wait_connected(30), sink.state().last_error
    for seq in (1, 2, 3):
        sink.send(decision(seq))
    got = outcomes.wait(3)
    assert [(o.decision.sequence, o.status, o.reason) for o in got] == [
        (1, SinkStatus.failed, FailReason.not_acknowledged),
        (2, SinkStatus.failed, FailReason.not_acknowledged),
        (3, SinkStatus.acked, None),
    ]
