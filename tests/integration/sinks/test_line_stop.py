"""The line-stop output (``--line-stop``): raised once the PLC has been unreachable for
``plc.line_stop_after_seconds``, lowered when it is back — on a real Modbus device and a real broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from keeneye.metrics import Metrics
from keeneye.sinks import LineStopGuard, SinkState, open_line_stop, open_sink
from tests.integration.sinks.plc_servers import ModbusServer, modbus_server, wait_until
from tests.integration.sinks.sink_support import FAST
from tests.integration.sinks.test_mqtt_sink import Subscriber, subscriber, topic  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

SETTINGS = FAST.model_copy(update={"line_stop_after_seconds": 1.0, "line_stop_register": 3})


def _stop_values(device: ModbusServer) -> list[int]:
    """What the line-stop device's HR3 was set to, in order."""
    return [w.values[0] for w in device.writes() if w.address == 3]


def _outage(
    plc: ModbusServer, guard: LineStopGuard, stopped: Callable[[], bool], running: Callable[[], bool]
) -> None:
    wait_until(running, what="the initial run signal")
    assert not guard.stopped
    plc.kill()
    wait_until(stopped, what="the stop signal after the outage")
    assert guard.stopped
    plc.start()
    wait_until(lambda: not guard.stopped, what="the PLC back")
    wait_until(running, what="the run signal once the PLC is back")


def test_a_modbus_line_stop_device_is_told_to_stop_then_to_run(modbus: ModbusServer, tmp_path: Path) -> None:
    metrics = Metrics()
    gauge = metrics.edge_line_stop.labels("line-inspection", "L1", "C1")
    (tmp_path / "stop").mkdir()
    with modbus_server(tmp_path / "stop") as device:
        sink = open_sink(modbus.url, line="L1", camera="C1", plc=SETTINGS)
        guard = LineStopGuard(
            sink.state,
            open_line_stop(device.url, SETTINGS, line="L1", camera="C1"),
            after_seconds=SETTINGS.line_stop_after_seconds,
            on_change=lambda stop: gauge.set(1 if stop else 0),
        ).start()
        try:
            assert sink.wait_connected(10)
            seen: list[float] = []
            _outage(
                modbus,
                guard,
                stopped=lambda: bool(seen.append(gauge._value.get()) or 1 in _stop_values(device)),
                running=lambda: _stop_values(device)[-1:] == [0],
            )
        finally:
            guard.close()
            sink.close()
        values = _stop_values(device)
        assert values[0] == 0 and 1 in values and values[-1] == 0  # run, stop, run: in that order
        assert values.index(1) < len(values) - 1
        assert 1.0 in seen and gauge._value.get() == 0


def test_an_mqtt_line_stop_topic_gets_retained_stop_and_run(
    modbus: ModbusServer,
    mqtt_port: int,
    topic: str,  # noqa: F811
    subscriber: Subscriber,  # noqa: F811
) -> None:
    sink = open_sink(modbus.url, line="L1", camera="C1", plc=SETTINGS)
    url = f"mqtt://127.0.0.1:{mqtt_port}/{topic}"
    guard = LineStopGuard(
        sink.state,
        open_line_stop(url, SETTINGS, line="L1", camera="C1"),
        after_seconds=SETTINGS.line_stop_after_seconds,
    ).start()

    def stops() -> list[bool]:
        return [json.loads(m.payload)["stop"] for m in subscriber.on(topic)]

    try:
        assert sink.wait_connected(10)
        _outage(modbus, guard, stopped=lambda: True in stops(), running=lambda: stops()[-1:] == [False])
    finally:
        guard.close()
        sink.close()
    messages = subscriber.on(topic)
    assert [json.loads(m.payload)["stop"] for m in messages] == [False, True, False]
    assert all(m.qos == 1 for m in messages)
    first_stop = json.loads(messages[1].payload)
    assert (first_stop["line"], first_stop["camera"], first_stop["reason"]) == ("L1", "C1", "plc_unreachable")


class _Recorded:
    """A line-stop output that records what it was told and fails while ``broken``."""

    url = "test://line-stop"

    def __init__(self) -> None:
        self.told: list[bool] = []
        self.broken = False

    def set(self, stop: bool, reason: str) -> None:
        if self.broken:
            raise ConnectionError("unreachable")
        self.told.append(stop)

    def close(self) -> None:
        pass


def _state(connected: bool) -> SinkState:
    return SinkState("modbus", "modbus://plc", connected, None, 0, 0, 0, 0, 0, "")


def test_the_guard_waits_out_short_outages_and_retries_an_unreachable_output() -> None:
    now = [0.0]
    connected = [True]
    output = _Recorded()
    guard = LineStopGuard(lambda: _state(connected[0]), output, after_seconds=10.0, clock=lambda: now[0])
    guard.poll()
    assert output.told == [False]  # the first poll says run: a stop left by an earlier run is lifted
    connected[0] = False
    for t in (1.0, 5.0, 9.9):  # a blip shorter than the limit does not stop the line
        now[0] = t
        guard.poll()
    assert output.told == [False] and not guard.stopped
    connected[0], now[0] = True, 10.5
    guard.poll()
    connected[0] = False
    now[0] = 11.0
    guard.poll()  # the outage clock restarts after a reconnect
    now[0] = 20.9
    guard.poll()
    assert not guard.stopped
    output.broken = True
    now[0] = 21.0
    guard.poll()
    assert guard.stopped and output.told == [False]  # wanted, not yet written: the device is down too
    output.broken = False
    now[0] = 21.2
    guard.poll()
    assert output.told == [False, True]  # retried on the next poll
    guard.poll()
    assert output.told == [False, True]  # written once per change
    connected[0] = True
    guard.poll()
    assert output.told == [False, True, False] and not guard.stopped
