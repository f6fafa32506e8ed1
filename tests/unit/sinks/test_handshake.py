"""The shared result-ready / result-ack handshake, its settings and the ack payloads (no I/O)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from asyncua import ua

from keeneye.settings import MqttSinkSettings, OpcUaSettings, PlcSettings
from keeneye.sinks import PlcNotAcknowledged
from keeneye.sinks.handshake import Handshake, ack_value
from keeneye.sinks.mqtt import ack_sequence
from keeneye.sinks.opcua import check_handshake_types, flag, node_ids


class Plc:
    """Records what the handshake did, in order: the result write and the ready signal."""

    def __init__(self) -> None:
        self.steps: list[str] = []

    def write(self) -> None:
        self.steps.append("write")

    def ready(self, up: bool) -> None:
        self.steps.append("ready up" if up else "ready down")


def test_a_polled_echo_acks_and_ready_goes_up_then_down() -> None:
    plc = Plc()
    reads = iter([4, 4, 9, 5])  # the previous echo, a stray value, then this result's sequence

    def poll() -> int:
        plc.steps.append("read")
        return next(reads)

    Handshake(timeout=60.0, where="in HR7", ready=plc.ready, poll=poll).run(5, plc.write)
    assert plc.steps == ["write", "ready up", "read", "read", "read", "read", "ready down"]


def test_no_echo_raises_not_acknowledged_and_still_lowers_ready() -> None:
    plc = Plc()
    handshake = Handshake(timeout=0.01, where="in HR7", ready=plc.ready, poll=lambda: 4)
    with pytest.raises(PlcNotAcknowledged, match=r"^no echo of sequence 5 in HR7 within 0\.01 s$"):
        handshake.run(5, plc.write)
    assert plc.steps[:2] == ["write", "ready up"] and plc.steps[-1] == "ready down"


def test_a_pushed_echo_from_another_thread_acks() -> None:
    handshake = Handshake(timeout=60.0, where="on t/ack")
    pushers: list[threading.Thread] = []

    def write() -> None:  # the PLC answers as soon as it sees the result
        pusher = threading.Thread(target=handshake.offer, args=(7,))
        pushers.append(pusher)
        pusher.start()

    handshake.run(7, write)
    pushers[0].join(10)


def test_an_echo_for_another_sequence_does_not_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="keeneye.sinks.handshake")
    handshake = Handshake(timeout=0.05, where="on t/ack")
    with pytest.raises(PlcNotAcknowledged, match="no echo of sequence 8 on t/ack"):
        handshake.run(8, lambda: handshake.offer(7))  # the late echo of the part before
    assert caplog.messages == ["PLC ack 7 on t/ack ignored: waiting for sequence 8"]


def test_an_echo_before_the_handshake_does_not_count_for_it() -> None:
    handshake = Handshake(timeout=0.05, where="on t/ack")
    handshake.offer(3)  # nothing awaited: dropped, not kept for later
    with pytest.raises(PlcNotAcknowledged):
        handshake.run(3, lambda: None)


def test_a_failed_write_raises_no_ready_and_leaves_nothing_awaited() -> None:
    plc = Plc()
    handshake = Handshake(timeout=60.0, where="in HR7", ready=plc.ready, poll=lambda: 0)

    def write() -> None:
        raise ConnectionError("gone")

    with pytest.raises(ConnectionError, match="gone"):
        handshake.run(1, write)
    assert plc.steps == []
    handshake.offer(1)  # after the failure an echo finds nothing to ack


@pytest.mark.parametrize(
    ("value", "sequence"),
    [(42, 42), (42.0, 42), (0, 0), (True, None), (42.5, None), ("42", None), (None, None)],
)
def test_ack_values(value: object, sequence: int | None) -> None:
    assert ack_value(value) == sequence


@pytest.mark.parametrize(
    ("payload", "sequence"),
    [
        (b'{"sequence": 42}', 42),
        (b'{"sequence": 42, "line": "L1"}', 42),
        (b"42", 42),
        (b" 42\n", 42),
        (b'"42"', None),  # a JSON string is not a number
        (b'{"seq": 42}', None),
        (b"true", None),
        (b"part 42", None),
        (b"\xff", None),
    ],
)
def test_mqtt_ack_payloads(payload: bytes, sequence: int | None) -> None:
    assert ack_sequence(payload) == sequence


def test_opcua_handshake_adds_ready_and_ack_by_the_same_pattern() -> None:
    assert set(node_ids(OpcUaSettings(), line="L1", camera="C1")).isdisjoint({"Ready", "Ack"})
    ids = node_ids(OpcUaSettings(handshake=True, nodes={"Ack": "ns=4;i=77"}), line="L1", camera="C1")
    assert ids["Ready"] == "ns=2;s=keeneye.L1.C1.Ready"
    assert ids["Ack"] == "ns=4;i=77"


@pytest.mark.parametrize(
    ("vtype", "up", "down"),
    [(ua.VariantType.Boolean, True, False), (ua.VariantType.UInt16, 1, 0), (ua.VariantType.Double, 1.0, 0.0)],
)
def test_opcua_ready_takes_the_nodes_type(vtype: ua.VariantType, up: object, down: object) -> None:
    assert (flag(True, vtype).Value, flag(False, vtype).Value) == (up, down)
    assert flag(True, vtype).VariantType == vtype


def test_opcua_handshake_nodes_of_unusable_types_are_refused() -> None:
    ids = {"Ready": "ns=2;s=r", "Ack": "ns=2;s=a"}
    check_handshake_types({"Ready": ua.VariantType.Boolean, "Ack": ua.VariantType.UInt32}, ids)
    with pytest.raises(ConnectionError, match=r"node ns=2;s=a \(Ack\) has type Boolean; use an integer"):
        check_handshake_types({"Ready": ua.VariantType.Boolean, "Ack": ua.VariantType.Boolean}, ids)
    with pytest.raises(ConnectionError, match=r"node ns=2;s=r \(Ready\) has type String"):
        check_handshake_types({"Ready": ua.VariantType.String, "Ack": ua.VariantType.Int32}, ids)


def test_handshake_settings_per_protocol_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from keeneye.settings import Settings

    monkeypatch.setenv("KEENEYE_PLC__OPCUA__HANDSHAKE", "true")
    monkeypatch.setenv("KEENEYE_PLC__MQTT__HANDSHAKE", "true")
    monkeypatch.setenv("KEENEYE_PLC__MQTT__ACK_TIMEOUT_SECONDS", "0.5")
    plc = Settings(home=tmp_path).plc
    assert (plc.modbus.handshake, plc.opcua.handshake, plc.mqtt.handshake) == (False, True, True)
    assert (plc.opcua.ack_timeout_seconds, plc.mqtt.ack_timeout_seconds) == (0.25, 0.5)
    assert PlcSettings().opcua == OpcUaSettings() and PlcSettings().mqtt == MqttSinkSettings()
    with pytest.raises(ValueError, match="greater than 0"):
        MqttSinkSettings(ack_timeout_seconds=0)
