"""A stand-in PLC: a real pymodbus TCP server on loopback, in a thread of this process.

For ``keeneye demo line-inspection`` and for trying ``keeneye inspect --plc modbus://…`` without a PLC
on the desk: holding registers 0-15 of unit 1, zero at start, written by the Modbus sink exactly as a
PLC would see it, and read back with :meth:`StandInPlc.registers` (a real Modbus read over TCP). Not
for production: it keeps nothing and answers anyone on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType
from typing import Any, Self

from keeneye.domain import KeeneyeError

REGISTERS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StandInPlc:
    """``with StandInPlc() as plc:`` — a Modbus TCP server on ``plc.url`` until the block ends."""

    def __init__(self, port: int | None = None, *, unit: int = 1) -> None:
        self.port = port or _free_port()
        self.unit = unit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="keeneye-standin-plc", daemon=True)

    @property
    def url(self) -> str:
        return f"modbus://127.0.0.1:{self.port}?unit={self.unit}"

    def start(self, timeout: float = 10.0) -> Self:
        try:
            import pymodbus  # noqa: F401 - the plc extra
        except ImportError as exc:
            raise KeeneyeError("the stand-in PLC needs pymodbus", fix="pip install 'keeneye[plc]'") from exc
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise KeeneyeError(
                f"the stand-in PLC did not start on 127.0.0.1:{self.port}: {self._error or 'timeout'}",
                fix="free the port or let keeneye pick one",
            )
        return self

    def _run(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        async def serve() -> None:
            device = SimDevice(
                id=self.unit, simdata=[SimData(0, count=REGISTERS, values=0, datatype=DataType.REGISTERS)]
            )
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            await self._server.serve_forever(background=True)
            self._ready.set()
            await self._server.serving

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def registers(self, count: int = 6) -> list[int]:
        """Holding registers 0 … count-1, read over Modbus TCP like a PLC program's HMI would."""
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient("127.0.0.1", port=self.port, timeout=2)
        try:
            if not client.connect():  # type: ignore[no-untyped-call]
                raise KeeneyeError("cannot read the stand-in PLC back", fix="see the log above")
            response = client.read_holding_registers(0, count=count, device_id=self.unit)
            if response.isError():
                raise KeeneyeError(f"the stand-in PLC refused the read: {response}", fix="see the log above")
            return [int(v) for v in response.registers]
        finally:
            client.close()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(timeout=5)
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["StandInPlc"]
