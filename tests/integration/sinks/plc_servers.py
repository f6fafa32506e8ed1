"""Real protocol servers for the sink tests, on free loopback ports.

* :func:`modbus_server` — ``modbus_server.py`` in a child process (killable mid-run, restartable on
  the same port); its request log is read back as :class:`ModbusWrite` records.
* :func:`opcua_server` — an asyncua server in a thread of this process with the sink's variables; it
  logs every write in order and can run a PLC program (a coroutine called after each client write).
* :func:`mqtt_broker` — Mosquitto: the one on 127.0.0.1:1883 when it answers, else ``mosquitto -p PORT``
  started for the test session when the binary exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.services import _stop, free_port, unavailable, wait_for_port


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; a bounded wait, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------------
# Modbus TCP
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModbusWrite:
    fc: int
    address: int
    values: list[int]


@dataclass
class ModbusServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"modbus://127.0.0.1:{self.port}?unit=1"

    def start(self) -> None:
        with self.log.open("ab") as out:
            script = Path(__file__).with_name("modbus_server.py")
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(self.port)], stdout=out, stderr=subprocess.DEVNULL
            )
        if not wait_for_port(self.port, proc=self.proc):
            self.stop()
            unavailable(f"the pymodbus test server did not start on port {self.port}")

    def kill(self) -> None:
        """Like a PLC losing power: no goodbye on the connection."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def writes(self) -> list[ModbusWrite]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                out.append(ModbusWrite(doc["fc"], doc["address"], doc["values"]))
        return out


@contextlib.contextmanager
def modbus_server(tmp: Path) -> Iterator[ModbusServer]:
    server = ModbusServer(free_port(), tmp / "modbus-requests.jsonl")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def silent_server() -> Iterator[tuple[int, threading.Event]]:
    """A TCP server that accepts and never answers (a hung PLC); set the event to drop the peers."""
    release = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    peers: list[socket.socket] = []

    def accept() -> None:
        listener.settimeout(0.05)
        while not release.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                peers.append(listener.accept()[0])
        for peer in peers:
            peer.close()
        listener.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), release
    finally:
        release.set()
        thread.join(10)


# --------------------------------------------------------------------------------------------------
# OPC UA
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpcUaWrite:
    camera: str
    name: str
    value: Any


# The PLC program: called in the server's loop after each client write it applied, with that write.
PlcProgram = Callable[["OpcUaServer", OpcUaWrite], Awaitable[None]]


@dataclass
class OpcUaServer:
    url: str
    loop: asyncio.AbstractEventLoop
    nodes: dict[tuple[str, str], Any]
    types: dict[tuple[str, str], Any] = field(default_factory=dict)
    writes: list[OpcUaWrite] = field(default_factory=list)  # clients' and the program's, in order
    program: PlcProgram | None = None

    def value(self, camera: str, name: str) -> Any:
        """The variable's current value, read inside the server."""
        node = self.nodes[camera, name]
        return asyncio.run_coroutine_threadsafe(node.read_value(), self.loop).result(10)

    def of(self, camera: str) -> list[tuple[str, Any]]:
        """(name, value) of the writes to ``camera``'s variables, in order."""
        return [(w.name, w.value) for w in list(self.writes) if w.camera == camera]

    async def write(self, camera: str, name: str, value: Any) -> None:
        """The PLC program writing its own variable (logged like a client's write: it takes the same
        path through the server, PostWrite callback included)."""
        from asyncua import ua

        await self.nodes[camera, name].write_value(ua.Variant(value, self.types[camera, name]))


@contextlib.contextmanager
def opcua_server(line: str, cameras: Mapping[str, Mapping[str, Any]]) -> Iterator[OpcUaServer]:
    """Per camera, variables ``ns=2;s=keeneye.<line>.<camera>.<Name>`` of the given variant types,
    writable. One server serves several cameras: its start-up (seconds) is the slow part."""
    from asyncua import Server, ua
    from asyncua.common.callback import CallbackType

    VT = ua.VariantType
    port = free_port()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = Server()

    async def start() -> dict[str, Any]:
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
        ns = await server.register_namespace("urn:keeneye:tests")
        assert ns == 2
        nodes = {}
        zeros: dict[Any, Any] = {VT.Float: 0.0, VT.Double: 0.0, VT.Boolean: False, VT.String: ""}
        for camera, types in cameras.items():
            folder = await server.nodes.objects.add_object(ns, f"{line}.{camera}")
            for name, vtype in types.items():
                zero = zeros.get(vtype, 0)
                node_id = ua.NodeId(f"keeneye.{line}.{camera}.{name}", ns)
                var = await folder.add_variable(node_id, name, ua.Variant(zero, vtype))
                await var.set_writable()
                nodes[camera, name] = var
        await server.start()
        return nodes

    prefix = f"keeneye.{line}."

    async def on_write(event: Any, dispatcher: Any) -> None:
        for wv in event.request_params.NodesToWrite:
            ident = str(wv.NodeId.Identifier)
            if ident.startswith(prefix):
                camera, name = ident[len(prefix) :].rsplit(".", 1)
                done = OpcUaWrite(camera, name, wv.Value.Value.Value)
                srv.writes.append(done)
                if srv.program is not None:
                    await srv.program(srv, done)

    try:
        nodes = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        types = {(camera, n): v for camera, t in cameras.items() for n, v in t.items()}
        srv = OpcUaServer(f"opcua://127.0.0.1:{port}", loop, nodes, types)
        server.subscribe_server_callback(CallbackType.PostWrite, on_write)
        yield srv
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


# --------------------------------------------------------------------------------------------------
# MQTT
# --------------------------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def mqtt_broker(tmp: Path) -> Iterator[int]:
    """The broker's port: the running Mosquitto on 1883, or one started here."""
    if _port_open(1883):
        yield 1883
        return
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None:
        unavailable("no MQTT broker on 127.0.0.1:1883 and no mosquitto binary; run `make services`")
    assert binary is not None
    port = free_port()
    log = tmp / f"mosquitto-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    if not wait_for_port(port, proc=proc):
        _stop(proc)
        unavailable(f"mosquitto did not start on port {port}: {log.read_text()[-2000:]}")
    try:
        yield port
    finally:
        _stop(proc)
