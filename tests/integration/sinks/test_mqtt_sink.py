"""The MQTT sink against Mosquitto, read by a real paho subscriber; in handshake mode a paho client
stands in for the PLC and answers on ``TOPIC/ack`` (or does not)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from paho.mqtt import client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from keeneye.sinks import SinkStatus, open_sink
from tests.integration.sinks.plc_servers import wait_until
from tests.integration.sinks.sink_support import (
    FAST,
    Outcomes,
    decision,
    late_echo,
    unacknowledged,
    with_handshake,
)

pytestmark = pytest.mark.integration


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Subscriber:
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]


@pytest.fixture
def topic() -> str:
    return f"keeneye-tests/{uuid.uuid4().hex}/L1/C1"


@pytest.fixture
def subscriber(mqtt_port: int, topic: str) -> Iterator[Subscriber]:
    sub = Subscriber()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with sub.lock:
            sub.messages.append(Received(msg.topic, msg.payload, msg.qos, bool(msg.retain)))

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", mqtt_port)
    client.subscribe(f"{topic}/#", qos=1)
    client.subscribe(topic, qos=1)
    client.loop_start()
    assert subscribed.wait(10)
    try:
        yield sub
    finally:
        client.disconnect()
        client.loop_stop()


def test_decisions_are_published_in_order_with_qos1_and_a_retained_heartbeat(
    mqtt_port: int, topic: str, subscriber: Subscriber
) -> None:
    outcomes = Outcomes()
    url = f"mqtt://127.0.0.1:{mqtt_port}/{topic}"
    with open_sink(url, line="L1", camera="C1", plc=FAST, on_outcome=outcomes) as sink:
        assert sink.wait_connected(20), sink.state().last_error
        for seq in range(20):
            sink.send(decision(seq))
        got = outcomes.wait(20)
        wait_until(lambda: len(subscriber.on(topic)) >= 20, what="20 decision messages")
        wait_until(lambda: len(subscriber.on(f"{topic}/heartbeat")) >= 2, what="two heartbeats")
    wait_until(
        lambda: [m.payload for m in subscriber.on(f"{topic}/status")][-1:] == [b"offline"], what="offline"
    )

    assert [o.status for o in got] == [SinkStatus.acked] * 20
    messages = subscriber.on(topic)
    docs = [json.loads(m.payload) for m in messages]
    assert [d["sequence"] for d in docs] == list(range(20))
    assert {m.qos for m in messages} == {1} and not any(m.retain for m in messages)
    assert docs[1] == {
        "sequence": 1,
        "result": "OK",
        "result_code": 1,
        "class_id": 0,
        "class_name": "",
        "confidence": 0.51,
        "latency_ms": 11.0,
        "line": "L1",
        "camera": "C1",
        "triggered_at": "2023-11-14T22:13:21+00:00",
    }
    assert docs[14]["result"] == "FAILSAFE_DEFECT" and docs[14]["result_code"] == 3
    assert docs[3]["result"] == "DEFECT" and docs[3]["class_name"] == "scratch"
    beats = [json.loads(m.payload)["heartbeat"] for m in subscriber.on(f"{topic}/heartbeat")]
    assert beats == list(range(beats[0], beats[0] + len(beats)))
    assert [m.payload for m in subscriber.on(f"{topic}/status")] == [b"online", b"offline"]
    # A subscriber that comes later finds the last heartbeat and the status kept by the broker.
    kept = retained(mqtt_port, [f"{topic}/heartbeat", f"{topic}/status"])
    assert json.loads(kept[f"{topic}/heartbeat"])["heartbeat"] == beats[-1]
    assert kept[f"{topic}/status"] == b"offline"


def retained(port: int, topics: list[str]) -> dict[str, bytes]:
    """The retained message of each topic, read by a new subscriber; then cleared on the broker."""
    kept: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            kept[msg.topic] = msg.payload
        if set(kept) == set(topics):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"late-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for t in topics:
            client.subscribe(t, qos=1)
        assert done.wait(10), f"retained messages seen: {sorted(kept)}"
        for t in topics:  # an empty retained message deletes it: leave a shared broker clean
            client.publish(t, b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    return kept


def test_a_broker_that_is_not_there_fails_decisions_without_blocking(topic: str) -> None:
    from tests.services import free_port

    outcomes = Outcomes()
    with open_sink(
        f"mqtt://127.0.0.1:{free_port()}/{topic}", line="L1", camera="C1", plc=FAST, on_outcome=outcomes
    ) as sink:
        wait_until(lambda: "connect" in sink.state().last_error, what="a failed connect")
        for seq in range(5):
            sink.send(decision(seq))
        got = outcomes.wait(5)
    assert {(o.status, o.reason) for o in got} == {(SinkStatus.failed, "plc_unreachable")}


# --------------------------------------------------------------------------------------------------
# Handshake mode
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def plc(port: int, topic: str, answer: Callable[[int], list[bytes]]) -> Iterator[None]:
    """A PLC on the broker: for each decision message on ``topic`` it publishes ``answer(sequence)``
    (zero or more payloads) to ``topic/ack``, QoS 1."""
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        for payload in answer(json.loads(msg.payload)["sequence"]):
            client.publish(f"{topic}/ack", payload, qos=1)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"plc-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    assert subscribed.wait(10)
    try:
        yield
    finally:
        client.disconnect()
        client.loop_stop()


def kinds(subscriber: Subscriber, topic: str) -> list[tuple[str, object]]:
    """Decision and ack messages in the order the broker delivered them: ("decision", seq) / ("ack", …)."""
    with subscriber.lock:
        messages = list(subscriber.messages)
    out: list[tuple[str, object]] = []
    for m in messages:
        if m.topic == topic:
            out.append(("decision", json.loads(m.payload)["sequence"]))
        elif m.topic == f"{topic}/ack":
            out.append(("ack", m.payload))
    return out


@pytest.mark.parametrize(
    "payload",
    [lambda seq: json.dumps({"sequence": seq}).encode(), lambda seq: str(seq).encode()],
    ids=["json-object", "plain-number"],
)
def test_handshake_acks_each_decision_once_the_plc_published_its_sequence(
    mqtt_port: int, topic: str, subscriber: Subscriber, payload: Callable[[int], bytes]
) -> None:
    outcomes = Outcomes()
    url = f"mqtt://127.0.0.1:{mqtt_port}/{topic}"
    with (
        plc(mqtt_port, topic, lambda seq: [payload(seq)]),
        open_sink(url, line="L1", camera="C1", plc=with_handshake("mqtt", 10.0), on_outcome=outcomes) as sink,
    ):
        assert sink.wait_connected(20), sink.state().last_error
        for seq in range(1, 11):
            sink.send(decision(seq))
        got = outcomes.wait(10)
        wait_until(lambda: len(kinds(subscriber, topic)) >= 20, what="10 decisions and 10 acks")

    assert [(o.decision.sequence, o.status) for o in got] == [(seq, SinkStatus.acked) for seq in range(1, 11)]
    # Each decision waits for the previous one's ack: the broker saw them strictly alternate.
    assert kinds(subscriber, topic) == [
        step for seq in range(1, 11) for step in [("decision", seq), ("ack", payload(seq))]
    ]


def test_handshake_without_an_ack_fails_not_acknowledged(
    mqtt_port: int, topic: str, subscriber: Subscriber
) -> None:
    outcomes = Outcomes()
    url = f"mqtt://127.0.0.1:{mqtt_port}/{topic}"
    with (
        plc(mqtt_port, topic, lambda seq: []),
        open_sink(url, line="L1", camera="C1", plc=with_handshake("mqtt", 1.0), on_outcome=outcomes) as sink,
    ):
        outcome = unacknowledged(sink, outcomes, 5, ack_timeout=1.0)

    assert outcome.detail == f"no echo of sequence 5 on {topic}/ack within 1.0 s"
    assert kinds(subscriber, topic) == [("decision", 5)]  # published once, never again


def test_a_late_ack_is_not_applied_to_the_next_decision(
    mqtt_port: int, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="keeneye.sinks")
    answers = {
        1: [],  # part 1: no answer in time …
        2: [b"part two", b'{"sequence": 1}'],  # … its ack comes while part 2 waits, after a garbled one
        3: [b'{"sequence": 3}'],
    }
    outcomes = Outcomes()
    url = f"mqtt://127.0.0.1:{mqtt_port}/{topic}"
    with (
        plc(mqtt_port, topic, lambda seq: answers[seq]),
        open_sink(url, line="L1", camera="C1", plc=with_handshake("mqtt", 1.0), on_outcome=outcomes) as sink,
    ):
        late_echo(sink, outcomes)

    # Both answers to part 2 reached the sink while it waited, and neither counted.
    assert f"PLC ack 1 on {topic}/ack ignored: waiting for sequence 2" in caplog.messages
    assert (
        f"MQTT sink: ignoring ack b'part two' on {topic}/ack; publish {{\"sequence\": N}} or N"
        in caplog.messages
    )
