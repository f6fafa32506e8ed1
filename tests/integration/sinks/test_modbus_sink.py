"""The Modbus TCP sink against a real pymodbus server process (killed and restarted mid-run)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
from pymodbus.client import ModbusTcpClient

from keeneye.metrics import Metrics
from keeneye.sinks import FailReason, SinkStatus, open_sink
from tests.integration.sinks.plc_servers import ModbusServer, ModbusWrite, silent_server, wait_until
from tests.integration.sinks.sink_support import FAST, Outcomes, decision

pytestmark = pytest.mark.integration

RESULT_BLOCK = 0  # HR0-HR4
HEARTBEAT = 5  # HR5


def results(writes: list[ModbusWrite]) -> list[ModbusWrite]:
    return [w for w in writes if w.address == RESULT_BLOCK]


def heartbeats(writes: list[ModbusWrite]) -> list[int]:
    return [w.values[0] for w in writes if w.address == HEARTBEAT]


def test_200_decisions_arrive_in_order_each_in_one_request(modbus: ModbusServer) -> None:
    outcomes, metrics = Outcomes(), Metrics()
    with open_sink(
        modbus.url, line="L1", camera="C1", plc=FAST, on_outcome=outcomes, metrics=metrics
    ) as sink:
        assert sink.wait_connected(20)
        for seq in range(200):
            sink.send(decision(seq))
        got = outcomes.wait(200)
        wait_until(lambda: len(heartbeats(modbus.writes())) >= 3, what="three heartbeats")
        state = sink.state()

    assert [o.status for o in got] == [SinkStatus.acked] * 200
    assert [o.decision.sequence for o in got] == list(range(200))
    writes = results(modbus.writes())
    # One write-multiple-registers request (function 16) of exactly five registers per decision, in
    # order, no gaps, nothing twice: a PLC never reads a torn result.
    assert [w.values[0] for w in writes] == list(range(200))
    assert {(w.fc, len(w.values)) for w in writes} == {(16, 5)}
    d = decision(199)
    assert writes[-1].values == [
        199,
        int(d.result),
        d.class_id,
        round(d.confidence * 1000),
        round(d.latency_ms),
    ]
    d = decision(21)  # fail-safe DEFECT (21 = 3 × 7)
    assert writes[21].values == [21, 3, 0, 710, 31]
    beats = heartbeats(modbus.writes())
    assert beats == list(range(1, len(beats) + 1))  # +1 each beat, from 1

    client = ModbusTcpClient("127.0.0.1", port=modbus.port, timeout=5)
    assert client.connect()
    try:
        registers = client.read_holding_registers(0, count=6, device_id=1).registers
    finally:
        client.close()
    assert registers[:5] == writes[-1].values
    assert registers[5] == beats[-1]

    assert state.connected and state.acked == 200 and state.failed == 0 and state.consecutive_failures == 0
    labels = ("line-inspection", "L1", "C1", "modbus")
    assert metrics.plc_writes.labels(*labels, "acked")._value.get() == 200
    assert metrics.plc_up.labels(*labels)._value.get() == 1
    assert metrics.plc_write_seconds.labels(*labels)._sum.get() > 0


def _outage(modbus: ModbusServer, *, replay: bool) -> tuple[Outcomes, list[ModbusWrite], Metrics]:
    """50 decisions, the server killed, 20 while down, the server back on its port, 30 more."""
    outcomes, metrics = Outcomes(), Metrics()
    with open_sink(
        modbus.url, line="L1", camera="C1", plc=FAST, on_outcome=outcomes, metrics=metrics, replay=replay
    ) as sink:
        assert sink.wait_connected(20)
        for seq in range(50):
            sink.send(decision(seq))
        outcomes.wait(50)
        modbus.kill()
        wait_until(lambda: not sink.state().connected, what="the sink to notice the outage")
        assert metrics.plc_up.labels("line-inspection", "L1", "C1", "modbus")._value.get() == 0
        for seq in range(50, 70):
            sink.send(decision(seq))  # returns at once although nobody answers
        if not replay:
            outcomes.wait(70)
        before = len(modbus.writes())
        modbus.start()
        assert sink.wait_connected(20)
        for seq in range(70, 100):
            sink.send(decision(seq))
        outcomes.wait(100)
        assert sink.state().connected
    return outcomes, modbus.writes()[before:], metrics


def test_decisions_made_while_the_plc_is_down_fail_and_are_not_replayed(modbus: ModbusServer) -> None:
    outcomes, after_restart, metrics = _outage(modbus, replay=False)

    assert outcomes.statuses(range(50)) == {SinkStatus.acked}
    down = outcomes.of(range(50, 70))
    assert [o.status for o in down] == [SinkStatus.failed] * 20
    assert {o.reason for o in down} == {FailReason.plc_unreachable}
    assert outcomes.statuses(range(70, 100)) == {SinkStatus.acked}
    # The restarted PLC sees only the decisions made after it came back.
    assert [w.values[0] for w in results(after_restart)] == list(range(70, 100))
    assert heartbeats(after_restart)  # the heartbeat resumed too
    labels = ("line-inspection", "L1", "C1", "modbus")
    assert metrics.plc_writes.labels(*labels, "failed")._value.get() == 20
    assert metrics.plc_writes.labels(*labels, "acked")._value.get() == 80
    assert metrics.plc_up.labels(*labels)._value.get() == 1


def test_replay_mode_delivers_the_held_decisions_in_order_after_the_reconnect(modbus: ModbusServer) -> None:
    outcomes, after_restart, _ = _outage(modbus, replay=True)

    assert outcomes.statuses(range(100)) == {SinkStatus.acked}
    assert [w.values[0] for w in results(after_restart)] == list(range(50, 100))


def test_send_never_waits_for_a_plc_that_does_not_answer() -> None:
    """A PLC that accepts the connection and then hangs: the sink thread is stuck in a write, yet
    every send() returns; what does not fit the hand-off fails at once, the rest after the drop."""
    outcomes = Outcomes()
    plc = FAST.model_copy(update={"queue_size": 4, "write_timeout_seconds": 120.0})
    with silent_server() as (port, release):
        sink = open_sink(f"modbus://127.0.0.1:{port}", line="L1", camera="C1", plc=plc, on_outcome=outcomes)
        try:
            assert sink.wait_connected(20)  # connected; its first heartbeat write now hangs
            for seq in range(10):
                sink.send(decision(seq))
            # All ten calls returned while the write hangs: four wait in the hand-off, six were
            # refused at once — nothing was written or failed by the stuck thread.
            assert [(o.decision.sequence, o.reason) for o in outcomes.items] == [
                (seq, FailReason.queue_full) for seq in range(4, 10)
            ]
            assert sink.state().queued == 4
            release.set()  # the PLC drops the connection: the hung write fails
            got = outcomes.wait(10)
        finally:
            sink.close()
    late = {o.decision.sequence: o.reason for o in got[6:]}
    assert late == dict.fromkeys(range(4), FailReason.plc_unreachable)


def test_a_modbus_exception_fails_that_decision_and_keeps_the_connection(modbus: ModbusServer) -> None:
    outcomes = Outcomes()
    # Registers 14-18 do not exist on the test server (0-15): the PLC answers with an exception.
    plc = FAST.model_copy(update={"modbus": FAST.modbus.model_copy(update={"result_address": 14})})
    with open_sink(modbus.url, line="L1", camera="C1", plc=plc, on_outcome=outcomes) as sink:
        assert sink.wait_connected(20)
        sink.send(decision(1))
        [outcome] = outcomes.wait(1)
        assert outcome.status is SinkStatus.failed and outcome.reason is FailReason.rejected
        assert "refused registers 14-18" in outcome.detail
        assert sink.state().connected


READY, ACK = 6, 7


@contextlib.contextmanager
def echoing_plc(port: int) -> Iterator[None]:
    """A PLC program: whenever HR6 (ready) is 1, copy HR0 (sequence) into HR7 (ack)."""
    stop = threading.Event()

    def scan() -> None:
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
        assert client.connect()
        try:
            while not stop.is_set():
                regs = client.read_holding_registers(0, count=8, device_id=1).registers
                if regs[READY] == 1 and regs[ACK] != regs[0]:
                    client.write_register(ACK, regs[0], device_id=1)
                time.sleep(0.001)
        finally:
            client.close()

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


HANDSHAKE = FAST.model_copy(
    update={"modbus": FAST.modbus.model_copy(update={"handshake": True, "heartbeat_address": None})}
)


def test_handshake_mode_acks_a_result_only_once_the_plc_echoed_it(modbus: ModbusServer) -> None:
    outcomes = Outcomes()
    plc = HANDSHAKE.model_copy(
        update={"modbus": HANDSHAKE.modbus.model_copy(update={"ack_timeout_seconds": 10.0})}
    )
    with (
        echoing_plc(modbus.port),
        open_sink(modbus.url, line="L1", camera="C1", plc=plc, on_outcome=outcomes) as sink,
    ):
        assert sink.wait_connected(20)
        for seq in range(1, 21):
            sink.send(decision(seq))
        got = outcomes.wait(20)

    assert [o.status for o in got] == [SinkStatus.acked] * 20
    # Per decision, in this order: the result block, ready up, the PLC's echo, ready down.
    steps = [(w.address, w.values[0]) for w in modbus.writes()]
    expected = [step for seq in range(1, 21) for step in [(0, seq), (READY, 1), (ACK, seq), (READY, 0)]]
    assert steps == expected


def test_handshake_without_an_echo_fails_the_decision_and_lowers_ready(modbus: ModbusServer) -> None:
    outcomes = Outcomes()
    with open_sink(modbus.url, line="L1", camera="C1", plc=HANDSHAKE, on_outcome=outcomes) as sink:
        assert sink.wait_connected(20)
        sink.send(decision(5))
        [outcome] = outcomes.wait(1)
        assert sink.state().connected  # a slow PLC is not a lost connection
    assert (outcome.status, outcome.reason) == (SinkStatus.failed, FailReason.not_acknowledged)
    assert "no echo of sequence 5 in HR7" in outcome.detail
    assert [(w.address, w.values) for w in modbus.writes()] == [
        (0, [5, 1, 0, 550, 15]),  # decision 5: OK, confidence 0.55, 15 ms
        (READY, [1]),
        (READY, [0]),
    ]
