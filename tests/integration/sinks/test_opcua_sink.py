"""The OPC UA sink against a real asyncua server with the six variables of each line and camera."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asyncua import ua

from keeneye.sinks import SinkStatus, open_sink
from tests.integration.sinks.plc_servers import OpcUaServer, opcua_server, wait_until
from tests.integration.sinks.sink_support import FAST, Outcomes, decision

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


@pytest.fixture(scope="module")
def server() -> Iterator[OpcUaServer]:
    cameras = {
        "float": TYPES,
        "permille": {**TYPES, "Confidence": VT.UInt16},
        "partial": {n: t for n, t in TYPES.items() if n not in ("LatencyMs", "Heartbeat")},
    }
    with opcua_server("L1", cameras) as srv:
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
