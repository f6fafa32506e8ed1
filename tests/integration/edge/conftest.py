"""Fixtures of the edge runner tests: a real Modbus TCP server (the sink tests' one) on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sinks import plc_servers


@pytest.fixture
def modbus(tmp_path: Path) -> Iterator[plc_servers.ModbusServer]:
    with plc_servers.modbus_server(tmp_path) as server:
        yield server
