"""The OPC UA sink against a real asyncua server with the six variables of each line and camera, and
in handshake mode against PLC programs run by that server (one that echoes, one that never does, one
that echoes too late)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from asyncua import ua

from keeneye.sinks import SinkStatus, open_sink
from tests.integration.sinks.plc_servers import OpcUaServer, OpcUaWrite, opcua_server, wait_until
from tests.integration.sinks.sink_support import (
    FAST,
    Outcomes,
    decision,
    late_echo,
    unacknowledged,
    with_handshake,
)

pytestmark = pytest.mark.integration

VT = ua.VariantType
TYPES = {
    "Sequence": VT.UInt32,
    "Result": VT.UInt16,
    "ClassId": VT.Int32,
    "Confidence": VT.Float,
    "LatencyMs": VT.Double,
    "Heartbeat": VT.UInt32,
}
HANDSHAKE_TYPES = {**TYPES, "Ready": VT.UInt16, "Ack": VT.UInt32}


async def echo(server: OpcUaServer, write: OpcUaWrite) -> None:
    """The PLC's side of the handshake: when Ready goes up, copy Sequence into Ack."""
    if write.name == "Ready" and write.value:
        sequence = await server.nodes[write.camera, "Sequence"].read_value()
        await server.write(write.camera, "Ack", sequence)


async def late_for_part_1(server: OpcUaServer, write: OpcUaWrite) -> None:
    """Misses part 1, echoes part 1 while part 2 waits (too late), then echoes part 3 properly."""
    if write.name == "Ready" and write.value:
        sequence = await server.nodes[write.camera, "Sequence"].read_value()
        if sequence in (2, 3):
            await server.write(write.camera, "Ack", 1 if sequence == 2 else 3)


PROGRAMS = {"echo": echo, "bool": echo, "late": late_for_part_1}  # "silent": a PLC that never acks


async def plc_program(server: OpcUaServer, write: OpcUaWrite) -> None:
    program = PROGRAMS.get(write.camera)
    if program is not None:
        await program(server, write)


@pytest.fixture(scope="module")
def server() -> Iterator[OpcUaServer]:
    cameras = {
        "float": TYPES,
        "permille": {**TYPES, "Confidence": VT.UInt16},
        "partial": {n: t for n, t in TYPES.items() if n not in ("LatencyMs", "Heartbeat")},
        "echo": HANDSHAKE_TYPES,
        "bool": {**HANDSHAKE_TYPES, "Sequence": VT.UInt16, "Ready": VT.Boolean, "Ack": VT.UInt16},
        "silent": HANDSHAKE_TYPES,
        "late": HANDSHAKE_TYPES,
        "badack": {**HANDSHAKE_TYPES, "Ack": VT.String},
    }
    with opcua_server("L1", cameras) as srv:
        srv.program = plc_program
        yield srv


@pytest.mark.parametrize(
    ("camera", "expected_confidence"),
    [("float", pytest.approx(0.63, abs=1e-6)), ("permille", 630)],
    ids=["float-fraction", "uint16-per-mille"],
)
def test_values_reach_the_default_node_ids_in_the_servers_types(
    server: OpcUaServer, camera: str, expected_confidence: object
) -> None:
    outcomes = Outcomes()
    with open_sink(server.url, line="L1", camera=camera, plc=FAST, on_outcome=outcomes) as sink:
        assert sink.wait_connected(30), sink.state().last_error
        for seq in range(1, 14):
            sink.send(decision(seq))
        got = outcomes.wait(13)
        wait_until(lambda: server.value(camera, "Heartbeat") >= 2, what="two heartbeats")
        values = {name: server.value(camera, name) for name in TYPES}

    last = decision(13)
    assert [o.status for o in got] == [SinkStatus.acked] * 13
    assert values["Sequence"] == 13
    assert values["Result"] == int(last.result) == 1
    assert values["ClassId"] == 0
    assert values["Confidence"] == expected_confidence
    assert values["LatencyMs"] == pytest.approx(last.latency_ms)
    assert values["Heartbeat"] >= 2


def test_a_missing_node_keeps_the_sink_down_and_says_which(server: OpcUaServer) -> None:
    outcomes = Outcomes()
    with open_sink(server.url, line="L1", camera="partial", plc=FAST, on_outcome=outcomes) as sink:
        wait_until(lambda: "keeneye.L1.partial." in sink.state().last_error, what="the connect error")
        sink.send(decision(1))
        [outcome] = outcomes.wait(1)
        state = sink.state()
    assert not state.connected
    assert "ns=2;s=keeneye.L1.partial.LatencyMs" in state.last_error
    assert outcome.status is SinkStatus.failed


def steps(server: OpcUaServer, camera: str) -> list[tuple[str, object]]:
    """The handshake's writes to ``camera``: Sequence (last of each result), Ready, Ack, in order."""
    return [(name, value) for name, value in server.of(camera) if name in ("Sequence", "Ready", "Ack")]


@pytest.mark.parametrize(
    ("camera", "first", "up", "down"),
    [("echo", 1, 1, 0), ("bool", 65_530, True, False)],
    ids=["uint16-ready", "boolean-ready-uint16-sequence-wraps"],
)
def test_handshake_acks_each_result_once_the_plc_echoed_it_in_order(
    server: OpcUaServer, camera: str, first: int, up: object, down: object
) -> None:
    outcomes = Outcomes()
    sequences = range(first, first + 12)
    with open_sink(
        server.url, line="L1", camera=camera, plc=with_handshake("opcua", 10.0), on_outcome=outcomes
    ) as sink:
        assert sink.wait_connected(30), sink.state().last_error
        for seq in sequences:
            sink.send(decision(seq))
        got = outcomes.wait(len(sequences))

    assert [(o.decision.sequence, o.status) for o in got] == [(seq, SinkStatus.acked) for seq in sequences]
    # Per part, in this order: the result (Sequence last), Ready up, the PLC's echo, Ready down; the
    # next result only after that. A UInt16 Sequence wraps, and the echo of the wrapped value counts.
    echoed = [seq & 0xFFFF if camera == "bool" else seq for seq in sequences]
    assert steps(server, camera) == [
        step for seq in echoed for step in [("Sequence", seq), ("Ready", up), ("Ack", seq), ("Ready", down)]
    ]
    assert server.value(camera, "Ready") == down


def test_handshake_without_an_echo_fails_not_acknowledged_and_lowers_ready(server: OpcUaServer) -> None:
    outcomes = Outcomes()
    with open_sink(
        server.url, line="L1", camera="silent", plc=with_handshake("opcua", 1.0), on_outcome=outcomes
    ) as sink:
        outcome = unacknowledged(sink, outcomes, 5, ack_timeout=1.0)

    assert outcome.detail == "no echo of sequence 5 in ns=2;s=keeneye.L1.silent.Ack within 1.0 s"
    assert steps(server, "silent") == [("Sequence", 5), ("Ready", 1), ("Ready", 0)]
    assert server.value("silent", "Ready") == 0


def test_a_late_echo_is_not_applied_to_the_next_part(
    server: OpcUaServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keeneye.sinks.handshake")
    outcomes = Outcomes()
    with open_sink(
        server.url, line="L1", camera="late", plc=with_handshake("opcua", 1.0), on_outcome=outcomes
    ) as sink:
        late_echo(sink, outcomes)

    assert steps(server, "late") == [
        *[("Sequence", 1), ("Ready", 1), ("Ready", 0)],
        *[("Sequence", 2), ("Ready", 1), ("Ack", 1), ("Ready", 0)],
        *[("Sequence", 3), ("Ready", 1), ("Ack", 3), ("Ready", 0)],
    ]
    # The late echo did reach the sink while part 2 waited, and was ignored there.
    assert "PLC ack 1 in ns=2;s=keeneye.L1.late.Ack ignored: waiting for sequence 2" in caplog.messages


@pytest.mark.parametrize(
    ("camera", "error"),
    [
        ("float", "node ns=2;s=keeneye.L1.float.Ready (Ready) is not usable"),
        (
            "badack",
            "node ns=2;s=keeneye.L1.badack.Ack (Ack) has type String; use an integer, Float or Double",
        ),
    ],
    ids=["no-ready-variable", "string-ack"],
)
def test_handshake_variables_that_are_missing_or_of_the_wrong_type_keep_the_sink_down(
    server: OpcUaServer, camera: str, error: str
) -> None:
    with open_sink(server.url, line="L1", camera=camera, plc=with_handshake("opcua", 1.0)) as sink:
        wait_until(lambda: error in sink.state().last_error, what=f"the connect error {error!r}")
        assert not sink.state().connected
