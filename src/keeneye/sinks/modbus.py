"""Modbus TCP sink (pymodbus, the ``plc`` extra): five holding registers per decision, one request.

Default map (``plc.modbus``, INTERFACES.md), unit 1, 0-based: HR0 sequence (uint16, wraps), HR1 result
(1 OK, 2 DEFECT, 3 fail-safe DEFECT), HR2 class id (0 none), HR3 confidence × 1000, HR4 latency ms —
written with one *write multiple registers* (function 16) request, so a PLC polling the block never
reads half of one result and half of the next; HR5 a heartbeat counter, written every second.

Handshake mode (``plc.modbus.handshake``, :mod:`keeneye.sinks.handshake`): after the result block
the sink sets HR6 (ready) to 1 and polls HR7 (ack) until the PLC copied the sequence into it; then it
sets HR6 back to 0. A decision is acked only once echoed; no echo within ``ack_timeout_seconds`` fails
it (``not_acknowledged``) while the connection stays up.
"""

from __future__ import annotations

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from keeneye.settings import ModbusMapSettings
from keeneye.sinks.handshake import Handshake
from keeneye.sinks.target import SinkTarget
from keeneye.sinks.types import PlcDecision, PlcRejected

UINT16_MAX = 0xFFFF


def _uint16(value: float) -> int:
    return int(min(UINT16_MAX, max(0, round(value))))


def result_registers(decision: PlcDecision, *, confidence_scale: int = 1000) -> list[int]:
    """HR0-HR4 of ``decision``: the sequence wraps at 65536; the other values saturate at 0 and 65535
    (a latency of 70 s reads 65535 ms rather than a small number)."""
    return [
        decision.sequence & UINT16_MAX,
        int(decision.result),
        _uint16(decision.class_id),
        _uint16(decision.confidence * confidence_scale),
        _uint16(decision.latency_ms),
    ]


class ModbusTransport:
    """Writes decisions and the heartbeat to one Modbus TCP server (the PLC)."""

    kind = "modbus"

    def __init__(self, target: SinkTarget, registers: ModbusMapSettings, *, timeout: float) -> None:
        self._target = target
        self._map = registers
        self._unit = registers.unit if target.unit is None else target.unit
        self._timeout = timeout
        self._client: ModbusTcpClient | None = None
        self._handshake: Handshake | None = None
        if registers.handshake:
            ready, ack = registers.ready_address, registers.ack_address
            self._handshake = Handshake(
                timeout=registers.ack_timeout_seconds,
                where=f"in HR{ack}",
                ready=lambda up: self.write_registers(ready, [1 if up else 0]),
                poll=lambda: self._read(ack),
            )

    def connect(self) -> None:
        client = ModbusTcpClient(
            self._target.host, port=self._target.port, timeout=self._timeout, retries=0, name="keeneye-plc"
        )
        if not client.connect():  # type: ignore[no-untyped-call]
            client.close()  # type: ignore[no-untyped-call]
            raise ConnectionError(f"no Modbus TCP server answers at {self._target.host}:{self._target.port}")
        self._client = client

    def write(self, decision: PlcDecision) -> None:
        registers = result_registers(decision, confidence_scale=self._map.confidence_scale)
        if self._handshake is None:
            self.write_registers(self._map.result_address, registers)
        else:  # the PLC echoes HR0, the sequence modulo 65536
            self._handshake.run(
                registers[0], lambda: self.write_registers(self._map.result_address, registers)
            )

    def _read(self, address: int) -> int:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        response = client.read_holding_registers(address, count=1, device_id=self._unit)
        if isinstance(response, ModbusIOException):
            raise ConnectionError(str(response))
        if response.isError():
            raise PlcRejected(f"unit {self._unit} refused reading register {address}: {response}")
        return int(response.registers[0])

    def heartbeat(self, counter: int) -> None:
        if self._map.heartbeat_address is not None:
            self.write_registers(self._map.heartbeat_address, [counter & UINT16_MAX])

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()  # type: ignore[no-untyped-call]

    def write_registers(self, address: int, values: list[int]) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        # write_registers is function 16 even for one register: one request, one transaction.
        response = client.write_registers(address, values, device_id=self._unit)
        if isinstance(response, ModbusIOException):
            raise ConnectionError(str(response))
        if response.isError():
            raise PlcRejected(
                f"unit {self._unit} refused registers {address}-{address + len(values) - 1}: {response}"
            )
