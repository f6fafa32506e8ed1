"""A Modbus TCP server process for the sink tests: ``python modbus_server.py PORT``.

Holding registers 0-15 of unit 1. Every write *request* is printed as one JSON line
``{"fc": 16, "address": 0, "values": [...]}`` (stdout, flushed) as the server applies it, so a test
reads back the order of the requests and how many registers each carried — one line per request
proves a result was never split. A separate process, so a test can kill it like a PLC losing power.
"""

from __future__ import annotations

import asyncio
import json
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


async def record(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> None:
    if set_values is not None:
        line = {"fc": function_code, "address": address, "values": [int(v) for v in set_values]}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


async def main(port: int) -> None:
    device = SimDevice(
        id=1, simdata=[SimData(0, count=16, values=0, datatype=DataType.REGISTERS)], action=record
    )
    await ModbusTcpServer(device, address=("127.0.0.1", port)).serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
