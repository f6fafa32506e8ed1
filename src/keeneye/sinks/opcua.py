"""OPC UA sink (asyncua, the ``plc`` extra): Sequence, Result, ClassId, Confidence, LatencyMs, Heartbeat.

Node ids come from ``plc.opcua.node_pattern`` (default ``ns=2;s=keeneye.<line>.<camera>.<Name>``) or
``plc.opcua.nodes``. On connect the sink reads each node's data type and writes values of that type:
an integer Confidence node gets per mille (× 1000), a Float/Double node the fraction. The five result
values go in one Write request with Sequence last, so a PLC that reacts to a new Sequence finds the
other four already in place.

Handshake mode (``plc.opcua.handshake``, :mod:`keeneye.sinks.handshake`) adds two variables, ``Ready``
and ``Ack`` (same pattern): after the result the sink writes Ready = 1 (``true`` if Boolean), waits for
the PLC to copy Sequence into Ack, then writes Ready = 0. Ack reaches the sink through a subscription
(publishing interval 0: as fast as the server allows), not by polling; a subscription the server ends
counts as a lost connection, since no ack could arrive any more.

asyncua is asynchronous; its client needs a running event loop for its keep-alive tasks, so the
transport runs one loop in a thread of its own and the sink thread waits on it with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaStatusCodeError

from keeneye.settings import OpcUaSettings
from keeneye.sinks.handshake import Handshake
from keeneye.sinks.target import SinkTarget
from keeneye.sinks.types import PlcDecision, PlcRejected

log = logging.getLogger(__name__)

RESULT_NAMES = ("Result", "ClassId", "Confidence", "LatencyMs", "Sequence")  # Sequence last, see above
HEARTBEAT = "Heartbeat"
NAMES = (*RESULT_NAMES, HEARTBEAT)
READY, ACK = "Ready", "Ack"
HANDSHAKE_NAMES = (READY, ACK)  # only with plc.opcua.handshake
# Publishing interval asked for the Ack subscription: 0 = the fastest the server offers (it revises it).
ACK_PUBLISHING_MS = 0.0

_FLOATS = {ua.VariantType.Float, ua.VariantType.Double}
_INT_RANGES = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}

T = TypeVar("T")


def node_ids(settings: OpcUaSettings, *, line: str, camera: str) -> dict[str, str]:
    """Name → node id string for the six values, plus Ready and Ack in handshake mode (explicit
    ``nodes`` win over the pattern)."""
    known = (*NAMES, *HANDSHAKE_NAMES)
    unknown = sorted(set(settings.nodes) - set(known))
    if unknown:
        raise ValueError(f"plc.opcua.nodes names unknown values {unknown}; known: {list(known)}")
    names = known if settings.handshake else NAMES
    return {
        n: settings.nodes.get(n) or settings.node_pattern.format(line=line, camera=camera, name=n)
        for n in names
    }


def variant(name: str, decision: PlcDecision, vtype: ua.VariantType) -> ua.Variant:
    """``name``'s value of ``decision`` in the node's own type; integers saturate at the type's range
    except Sequence, which wraps (as the Modbus register does)."""
    raw: dict[str, float] = {
        "Sequence": decision.sequence,
        "Result": int(decision.result),
        "ClassId": decision.class_id,
        "Confidence": decision.confidence,
        "LatencyMs": decision.latency_ms,
    }
    value = raw[name]
    if vtype in _FLOATS:
        return ua.Variant(float(value), vtype)
    if vtype not in _INT_RANGES:
        raise PlcRejected(f"node {name} has type {vtype.name}; use an integer, Float or Double variable")
    if name == "Confidence":
        value = value * 1000
    low, high = _INT_RANGES[vtype]
    if name == "Sequence":
        return ua.Variant(int(value) % (high + 1) if low == 0 else int(value) & high, vtype)
    return ua.Variant(int(min(high, max(low, round(value)))), vtype)


def flag(up: bool, vtype: ua.VariantType) -> ua.Variant:
    """The Ready value: ``true`` / ``false`` for a Boolean node, 1 / 0 for a number."""
    if vtype is ua.VariantType.Boolean:
        return ua.Variant(up, vtype)
    if vtype in _FLOATS:
        return ua.Variant(1.0 if up else 0.0, vtype)
    return ua.Variant(1 if up else 0, vtype)


def check_handshake_types(types: dict[str, ua.VariantType], ids: dict[str, str]) -> None:
    """Refuse (as a connect error naming the node) a Ready that is no Boolean or number, an Ack that is
    no number: every handshake would fail otherwise."""
    numbers = _FLOATS | set(_INT_RANGES)
    for name, allowed, want in [
        (READY, numbers | {ua.VariantType.Boolean}, "a Boolean, integer, Float or Double"),
        (ACK, numbers, "an integer, Float or Double"),
    ]:
        if name in types and types[name] not in allowed:
            raise ConnectionError(
                f"node {ids[name]} ({name}) has type {types[name].name}; use {want} variable"
            )


class _AckHandler:
    """asyncua's subscription callbacks (on the transport's loop): Ack values go to the handshake; a
    subscription the server ends is remembered, and the next write reports the connection lost."""

    def __init__(self, handshake: Handshake) -> None:
        self.handshake = handshake
        self.ended = ""

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.handshake.offer(val)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self.ended = f"the server ended the Ack subscription ({status.Status})"
        log.warning("OPC UA sink: %s", self.ended)


class OpcUaTransport:
    """Writes decisions and the heartbeat to one OPC UA server's variables."""

    kind = "opcua"

    def __init__(
        self, target: SinkTarget, settings: OpcUaSettings, *, line: str, camera: str, timeout: float
    ) -> None:
        self._target = target
        self._ids = node_ids(settings, line=line, camera=camera)
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._nodes: dict[str, Any] = {}
        self._types: dict[str, ua.VariantType] = {}
        self._acks: _AckHandler | None = None
        if settings.handshake:
            handshake = Handshake(
                timeout=settings.ack_timeout_seconds, where=f"in {self._ids[ACK]}", ready=self._set_ready
            )
            self._acks = _AckHandler(handshake)

    def connect(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="keeneye-sink-opcua-loop", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        self._run(self._connect())

    async def _connect(self) -> None:
        client = Client(self._target.opcua_endpoint, timeout=self._timeout)
        client.name = "keeneye PLC sink"
        await client.connect()
        self._client = client
        nodes = {name: client.get_node(node_id) for name, node_id in self._ids.items()}
        types: dict[str, ua.VariantType] = {}
        for name, node in nodes.items():
            try:
                types[name] = await node.read_data_type_as_variant_type()
            except UaStatusCodeError as exc:
                raise ConnectionError(f"node {self._ids[name]} ({name}) is not usable: {exc}") from exc
        check_handshake_types(types, self._ids)
        self._nodes, self._types = nodes, types
        if self._acks is not None:
            self._acks.ended = ""
            subscription = await client.create_subscription(ACK_PUBLISHING_MS, self._acks)
            await subscription.subscribe_data_change(nodes[ACK], sampling_interval=ua.Double(0.0))

    def write(self, decision: PlcDecision) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        nodes = [self._nodes[n] for n in RESULT_NAMES]
        values = [variant(n, decision, self._types[n]) for n in RESULT_NAMES]
        if self._acks is None:
            self._run(self._write(client, nodes, values))
            return
        if self._acks.ended:
            raise ConnectionError(self._acks.ended)
        # The PLC echoes the Sequence value as written (wrapped to its node's type), so that is awaited.
        sequence = int(values[-1].Value)
        self._acks.handshake.run(sequence, lambda: self._run(self._write(client, nodes, values)))

    def _set_ready(self, up: bool) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        value = flag(up, self._types[READY])
        self._run(self._write(client, [self._nodes[READY]], [value]))

    def heartbeat(self, counter: int) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        vtype = self._types[HEARTBEAT]
        value = ua.Variant(float(counter), vtype) if vtype in _FLOATS else ua.Variant(counter, vtype)
        self._run(self._write(client, [self._nodes[HEARTBEAT]], [value]))

    @staticmethod
    async def _write(client: Client, nodes: list[Any], values: list[ua.Variant]) -> None:
        try:
            await client.write_values(nodes, [ua.DataValue(v) for v in values])
        except UaStatusCodeError as exc:
            raise PlcRejected(str(exc)) from exc

    def disconnect(self) -> None:
        client, self._client = self._client, None
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        if client is not None:
            future = asyncio.run_coroutine_threadsafe(client.disconnect(), loop)
            try:
                future.result(self._timeout)
            except Exception:
                future.cancel()
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(self._timeout)
        if not loop.is_running():
            loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise ConnectionError("not connected")
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, self._timeout * 2), loop)
        try:
            return future.result(self._timeout * 3)
        except TimeoutError as exc:
            future.cancel()
            raise TimeoutError(f"no answer from {self._target.opcua_endpoint} in time") from exc
