"""MQTT sink (paho-mqtt, the ``plc`` extra): one JSON message per decision, QoS 1 by default.

``mqtt://host:port/<topic>``: decisions go to ``<topic>`` (not retained: a subscriber that joins later
must not act on an old part); the heartbeat goes retained to ``<topic>/heartbeat``; ``<topic>/status``
holds ``online`` (retained, on connect) or ``offline`` — published on a clean close and, as the
connection's last will, by the broker when keeneye vanishes. A decision counts as acked when the broker
acknowledged it (PUBACK for QoS 1, PUBCOMP for QoS 2; QoS 0 once it is on the wire).

Handshake mode (``plc.mqtt.handshake``, :mod:`keeneye.sinks.handshake`): the sink subscribes to
``<topic>/ack`` on connect; a decision counts as acked only once the PLC published its sequence there
(``{"sequence": 42}`` or plain ``42``) within ``ack_timeout_seconds``, else it fails
``not_acknowledged``. The decision message itself is the "result ready"; there is no ready topic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any, TypedDict

from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from keeneye.settings import MqttSinkSettings
from keeneye.sinks.handshake import Handshake, ack_value
from keeneye.sinks.target import SinkTarget
from keeneye.sinks.types import PlcDecision

log = logging.getLogger(__name__)


class DecisionMessage(TypedDict):
    """The JSON of one decision message (docs/line-inspection.md)."""

    sequence: int
    result: str
    result_code: int
    class_id: int
    class_name: str
    confidence: float
    latency_ms: float
    line: str
    camera: str
    triggered_at: str


def decision_message(decision: PlcDecision) -> DecisionMessage:
    return {
        "sequence": decision.sequence,
        "result": decision.result.name.upper(),
        "result_code": int(decision.result),
        "class_id": decision.class_id,
        "class_name": decision.class_name,
        "confidence": round(decision.confidence, 6),
        "latency_ms": round(decision.latency_ms, 3),
        "line": decision.line,
        "camera": decision.camera,
        "triggered_at": datetime.fromtimestamp(decision.triggered_at, UTC).isoformat(),
    }


def ack_sequence(payload: bytes | bytearray) -> int | None:
    """The sequence an ack message carries — ``{"sequence": 42}`` or plain ``42`` — else None."""
    try:
        doc = json.loads(payload)
    except ValueError:  # not JSON (UnicodeDecodeError is a ValueError too)
        return None
    if isinstance(doc, dict):
        doc = doc.get("sequence")
    return ack_value(doc)


class MqttTransport:
    """Publishes decisions and the heartbeat to one broker; paho's network thread does the I/O."""

    kind = "mqtt"

    def __init__(
        self, target: SinkTarget, settings: MqttSinkSettings, *, line: str, camera: str, timeout: float
    ) -> None:
        self._target = target
        self._settings = settings
        self._timeout = timeout
        self._client_id = f"keeneye-{line}-{camera}-{os.getpid()}"
        self._client: mqtt.Client | None = None
        self.topic = target.topic
        self.heartbeat_topic = f"{target.topic}/heartbeat"
        self.status_topic = f"{target.topic}/status"
        self.ack_topic = f"{target.topic}/ack"
        self._handshake: Handshake | None = None
        if settings.handshake:
            self._handshake = Handshake(timeout=settings.ack_timeout_seconds, where=f"on {self.ack_topic}")
        self._warned_payload = False

    def connect(self) -> None:
        connected = threading.Event()
        refused: list[str] = []

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if reason.is_failure:
                refused.append(str(reason))
            connected.set()

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=mqtt.MQTTv311)
        client.connect_timeout = self._timeout
        client.on_connect = on_connect
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self._client = client  # so that disconnect() stops the network thread if the steps below fail
        client.connect(self._target.host, self._target.port, keepalive=self._settings.keepalive_seconds)
        client.loop_start()
        if not connected.wait(self._timeout):
            raise TimeoutError(f"no CONNACK from {self._target.host}:{self._target.port}")
        if refused:
            raise ConnectionError(f"the broker refused the connection: {refused[0]}")
        if self._handshake is not None:
            self._warned_payload = False
            self._subscribe_acks(client)
        self.publish(self.status_topic, "online", qos=1, retain=True)

    def _subscribe_acks(self, client: mqtt.Client) -> None:
        """Subscribe to ``<topic>/ack`` and wait for the SUBACK: an ack published before it would be lost."""
        subscribed = threading.Event()
        refused: list[str] = []

        def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
            refused.extend(str(r) for r in reasons if r.is_failure)
            subscribed.set()

        client.on_subscribe = on_subscribe
        client.message_callback_add(self.ack_topic, self._on_ack)
        rc, _ = client.subscribe(self.ack_topic, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"cannot subscribe to {self.ack_topic}: {mqtt.error_string(rc)}")
        if not subscribed.wait(self._timeout):
            raise TimeoutError(f"no SUBACK for {self.ack_topic} within {self._timeout} s")
        if refused:
            raise ConnectionError(f"the broker refused the subscription to {self.ack_topic}: {refused[0]}")

    def _on_ack(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        sequence = ack_sequence(message.payload)
        if sequence is not None:
            if self._handshake is not None:  # always, in fact: the callback is added in handshake mode
                self._handshake.offer(sequence)
            return
        # Once per connection: a PLC that sends the wrong shape sends it for every part.
        if not self._warned_payload:
            self._warned_payload = True
            log.warning(
                'MQTT sink: ignoring ack %r on %s; publish {"sequence": N} or N',
                message.payload[:80],
                self.ack_topic,
            )

    def write(self, decision: PlcDecision) -> None:
        payload = json.dumps(decision_message(decision))
        if self._handshake is None:
            self.publish(self.topic, payload, qos=self._settings.qos, retain=False)
            return
        self._handshake.run(
            decision.sequence,
            lambda: self.publish(self.topic, payload, qos=self._settings.qos, retain=False),
        )

    def heartbeat(self, counter: int) -> None:
        payload = json.dumps({"heartbeat": counter, "at": datetime.now(UTC).isoformat()})
        self.publish(self.heartbeat_topic, payload, qos=1, retain=True)

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if client.is_connected():
            info = client.publish(self.status_topic, "offline", qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                # The broker may go away meanwhile; its copy of the will says offline then.
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(self._timeout)
        client.disconnect()
        client.loop_stop()

    def publish(self, topic: str, payload: str, *, qos: int, retain: bool) -> None:
        client = self._client
        if client is None or not client.is_connected():
            raise ConnectionError("not connected to the broker")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(self._timeout)
        if not info.is_published():
            raise TimeoutError(f"the broker did not acknowledge within {self._timeout} s")
