"""Fixtures of the PLC sink tests: real Modbus TCP, OPC UA and MQTT servers on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sinks import plc_servers


@pytest.fixture
def modbus(tmp_path: Path) -> Iterator[plc_servers.ModbusServer]:
    with plc_servers.modbus_server(tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def mqtt_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with plc_servers.mqtt_broker(tmp_path_factory.mktemp("mqtt")) as port:
        yield port
