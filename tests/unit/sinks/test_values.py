"""What each protocol writes for a decision, the reconnect backoff, the PLC settings' checks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from asyncua import ua
from pydantic import ValidationError

from keeneye.domain import Decision
from keeneye.settings import ModbusMapSettings, OpcUaSettings, PlcSettings
from keeneye.sinks import PlcDecision, ResultCode, backoff_delay
from keeneye.sinks.modbus import result_registers
from keeneye.sinks.mqtt import decision_message
from keeneye.sinks.opcua import node_ids, variant


def make(**kw: object) -> PlcDecision:
    base: dict[str, object] = {
        "sequence": 7,
        "result": ResultCode.defect,
        "line": "L1",
        "camera": "C1",
        "triggered_at": 0.0,
    }
    return PlcDecision(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("decision", "failsafe", "code"),
    [
        (Decision.ok, False, 1),
        (Decision.defect, False, 2),
        (Decision.ok, True, 3),
        (Decision.defect, True, 3),
    ],
)
def test_result_codes(decision: Decision, failsafe: bool, code: int) -> None:
    assert ResultCode.of(decision, failsafe=failsafe) == code


@pytest.mark.parametrize(
    ("fields", "registers"),
    [
        ({}, [7, 2, 0, 0, 0]),
        ({"class_id": 4, "confidence": 0.9876, "latency_ms": 41.6}, [7, 2, 4, 988, 42]),
        ({"sequence": 65535}, [65535, 2, 0, 0, 0]),
        ({"sequence": 65536 + 5}, [5, 2, 0, 0, 0]),  # the sequence wraps
        ({"latency_ms": 70_000.0, "class_id": 99_999}, [7, 2, 65535, 0, 65535]),  # others saturate
        ({"confidence": 1.0, "result": ResultCode.failsafe_defect}, [7, 3, 0, 1000, 0]),
    ],
)
def test_modbus_result_registers(fields: dict[str, object], registers: list[int]) -> None:
    assert result_registers(make(**fields)) == registers


def test_a_decision_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="sequence must be >= 0, got -1"):
        make(sequence=-1)
    with pytest.raises(ValueError, match="class_id must be >= 0, got -2"):
        make(class_id=-2)
    with pytest.raises(ValueError, match=r"must be finite numbers, got nan, 1\.0"):
        make(confidence=float("nan"), latency_ms=1.0)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (500, 30.0)]:
        delays = [backoff_delay(attempt, initial=0.5, maximum=30.0, rng=rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays), attempt
        assert max(delays) - min(delays) > cap / 4  # jittered, not one fixed value


def test_opcua_node_ids_follow_the_pattern_unless_named() -> None:
    ids = node_ids(OpcUaSettings(nodes={"Heartbeat": "ns=3;i=1001"}), line="L1", camera="cam-2")
    assert ids["Sequence"] == "ns=2;s=keeneye.L1.cam-2.Sequence"
    assert ids["LatencyMs"] == "ns=2;s=keeneye.L1.cam-2.LatencyMs"
    assert ids["Heartbeat"] == "ns=3;i=1001"
    with pytest.raises(ValueError, match=r"unknown values \['Heartbaet'\]"):
        node_ids(OpcUaSettings(nodes={"Heartbaet": "ns=3;i=1"}), line="L1", camera="C1")


VT = ua.VariantType


@pytest.mark.parametrize(
    ("name", "fields", "vtype", "value"),
    [
        ("Confidence", {"confidence": 0.875}, VT.Float, 0.875),
        ("Confidence", {"confidence": 0.875}, VT.UInt16, 875),
        ("Sequence", {"sequence": 2**32 + 3}, VT.UInt32, 3),
        ("Sequence", {"sequence": 70_000}, VT.Int16, 70_000 & 0x7FFF),
        ("LatencyMs", {"latency_ms": 300.4}, VT.Byte, 255),
        ("Result", {}, VT.Int32, 2),
    ],
)
def test_opcua_values_take_the_nodes_type(
    name: str, fields: dict[str, object], vtype: VT, value: float
) -> None:
    v = variant(name, make(**fields), vtype)
    assert (v.Value, v.VariantType) == (value, vtype)


def test_an_opcua_node_of_another_type_is_refused() -> None:
    from keeneye.sinks import PlcRejected

    with pytest.raises(PlcRejected, match="node Result has type String"):
        variant("Result", make(), VT.String)


def test_the_mqtt_message() -> None:
    msg = decision_message(
        make(confidence=0.1234567, latency_ms=12.34567, class_name="dent", triggered_at=1.5)
    )
    assert msg["result"] == "DEFECT" and msg["result_code"] == 2
    assert msg["confidence"] == 0.123457 and msg["latency_ms"] == 12.346
    assert msg["triggered_at"] == "1970-01-01T00:00:01.500000+00:00"


def test_plc_settings_refuse_a_heartbeat_inside_the_result_block() -> None:
    with pytest.raises(ValidationError, match="heartbeat_address must not be one of the 5 result registers"):
        ModbusMapSettings(result_address=10, heartbeat_address=14)
    assert ModbusMapSettings(result_address=10, heartbeat_address=15).heartbeat_address == 15
    assert PlcSettings().modbus.unit == 1


def test_plc_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from keeneye.settings import Settings

    monkeypatch.setenv("KEENEYE_PLC__MODBUS__RESULT_ADDRESS", "100")
    monkeypatch.setenv("KEENEYE_PLC__REPLAY", "true")
    s = Settings(home=tmp_path)
    assert (s.plc.modbus.result_address, s.plc.replay) == (100, True)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"handshake": True, "ready_address": 3}, "ready_address must not be one of the 5 result registers"),
        ({"handshake": True, "ack_address": 5}, "heartbeat, ready and ack registers must differ"),
        (
            {"handshake": True, "ready_address": 9, "ack_address": 9},
            "heartbeat, ready and ack registers must differ",
        ),
    ],
)
def test_handshake_registers_must_not_collide(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModbusMapSettings(**fields)  # type: ignore[arg-type]
    assert ModbusMapSettings(**{**fields, "handshake": False, "heartbeat_address": 20}).handshake is False  # type: ignore[arg-type]
