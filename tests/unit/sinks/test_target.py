"""``--plc`` URLs: what each parses to, and the exact refusal for each malformed one."""

from __future__ import annotations

import pytest

from keeneye.domain import ConfigError
from keeneye.sinks import SinkTarget, open_sink, parse_sink_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("modbus://10.0.0.5", SinkTarget("modbus", "10.0.0.5", 502, "modbus://10.0.0.5")),
        (
            "modbus://plc-1:1502?unit=3",
            SinkTarget("modbus", "plc-1", 1502, "modbus://plc-1:1502?unit=3", unit=3),
        ),
        ("MODBUS://plc/", SinkTarget("modbus", "plc", 502, "MODBUS://plc/")),
        ("opcua://plc:4841", SinkTarget("opcua", "plc", 4841, "opcua://plc:4841")),
        (
            "opc.tcp://plc/freeopcua/server/",
            SinkTarget("opcua", "plc", 4840, "opc.tcp://plc/freeopcua/server/", path="/freeopcua/server"),
        ),
        (
            "mqtt://broker/plant/line%201/decisions",
            SinkTarget(
                "mqtt",
                "broker",
                1883,
                "mqtt://broker/plant/line%201/decisions",
                topic="plant/line 1/decisions",
            ),
        ),
        ("mqtt://[::1]:1884/t", SinkTarget("mqtt", "::1", 1884, "mqtt://[::1]:1884/t", topic="t")),
    ],
)
def test_urls_parse(url: str, expected: SinkTarget) -> None:
    assert parse_sink_url(url) == expected


def test_the_opcua_endpoint_keeps_the_path() -> None:
    assert parse_sink_url("opcua://plc:4841/ua").opcua_endpoint == "opc.tcp://plc:4841/ua"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "--plc: no scheme in '' is not supported"),
        ("http://plc:80", "--plc: scheme 'http' in 'http://plc:80' is not supported"),
        ("modbus://plc:notaport", "--plc: malformed URL 'modbus://plc:notaport'"),
        ("modbus://plc:70000", "--plc: malformed URL 'modbus://plc:70000'"),
        ("modbus://:502", "--plc: 'modbus://:502' names no host"),
        ("modbus://plc:0", "--plc: port 0 in 'modbus://plc:0' is not a port"),
        ("modbus://plc?unit=256", "--plc: 'modbus://plc?unit=256': unit '256' is not a number 0-255"),
        ("modbus://plc?unit=-1", "--plc: 'modbus://plc?unit=-1': unit '-1' is not a number 0-255"),
        ("modbus://plc?unit=1&unit=2", "--plc: 'modbus://plc?unit=1&unit=2' repeats ['unit']"),
        ("modbus://plc?slave=1", "--plc: 'modbus://plc?slave=1': unknown parameter(s) ['slave']"),
        ("modbus://plc/holding", "--plc: 'modbus://plc/holding': Modbus TCP has no path ('/holding')"),
        ("modbus://plc#x", "--plc: 'modbus://plc#x' has a #fragment"),
        (
            "opcua://plc?security=none",
            "--plc: 'opcua://plc?security=none': unknown parameter(s) ['security']",
        ),
        ("mqtt://broker", "--plc: 'mqtt://broker' names no topic"),
        ("mqtt://broker/", "--plc: 'mqtt://broker/' names no topic"),
        ("mqtt://broker/plant/+/decisions", "--plc: topic 'plant/+/decisions' has a wildcard or NUL"),
        ("mqtt://broker/plant/%23", "--plc: topic 'plant/#' has a wildcard or NUL"),
        ("mqtt://broker/plant//x", "--plc: topic 'plant//x' has an empty level"),
        ("mqtt://u:secret@broker", "--plc: 'mqtt://u:***@broker' names no topic"),
    ],
)
def test_malformed_urls_are_refused_precisely(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_sink_url(url)
    assert err.value.message.startswith(message)
    assert err.value.fix
    assert "secret" not in err.value.one_line()


def test_open_sink_refuses_before_starting_anything() -> None:
    with pytest.raises(ConfigError, match="KEENEYE_LINE__PLC: 'mqtt://broker' names no topic"):
        open_sink("mqtt://broker", line="L1", camera="C1", setting="KEENEYE_LINE__PLC")
