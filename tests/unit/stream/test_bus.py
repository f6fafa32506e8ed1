"""The bus contract, proved on every backend: SQLite (embedded) and Kafka (tansu broker)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keeneye.domain import ConfigError, MessageTooLarge
from keeneye.settings import BusSettings, Settings
from keeneye.stream import Bus, Consumer, Message, open_bus
from keeneye.stream.kafka_bus import KafkaBus, KafkaConsumer
from keeneye.stream.sqlite_bus import SqliteBus
from tests import services

CHILD = Path(__file__).with_name("_bus_child.py")
REPO = Path(__file__).resolve().parents[3]

MakeBus = Callable[..., Bus]


@pytest.fixture(params=["sqlite", pytest.param("kafka", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def bus_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    if backend == "kafka":
        return str(request.getfixturevalue("kafka_broker").url)
    return f"sqlite:///{tmp_path / 'bus' / 'bus.db'}"


@pytest.fixture
def make_bus(bus_url: str, tmp_path: Path) -> Iterator[MakeBus]:
    """Buses on the backend under test; short leases and session timeouts keep redelivery fast."""
    opened: list[Bus] = []

    def make(**bus_settings: Any) -> Bus:
        defaults: dict[str, Any] = {"lease_seconds": 1.0, "session_timeout_ms": 3000, "partitions": 2}
        settings = Settings(
            home=tmp_path / "home", bus_url=bus_url, bus=BusSettings(**(defaults | bus_settings))
        )
        bus = open_bus(settings)
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        bus.close()


@pytest.fixture
def bus(make_bus: MakeBus) -> Bus:
    return make_bus()


def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def drain(consumer: Consumer, n: int, timeout: float = 15.0, ack: bool = False) -> list[Message]:
    """Poll until ``n`` messages arrived or ``timeout`` passed (Kafka needs a few seconds to join)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for m in consumer.poll(max_messages=n - len(got), timeout=0.2):
            got.append(m)
            if ack:
                consumer.ack(m)
    return got


def settle(consumer: Consumer, seconds: float = 0.6) -> list[Message]:
    """Whatever else arrives in a short window (to prove nothing extra is delivered)."""
    return drain(consumer, 1_000, timeout=seconds)


def wait_assigned(consumers: list[Consumer], timeout: float = 15.0) -> None:
    """Kafka: poll every member until each owns partitions, so no message lands before the balance."""
    kafka = [c for c in consumers if isinstance(c, KafkaConsumer)]
    deadline = time.monotonic() + timeout
    while kafka and time.monotonic() < deadline:
        for c in kafka:
            assert c.poll(timeout=0.1) == []
        if all(c.assignment() for c in kafka):
            return
    assert not kafka, f"group did not balance in {timeout}s: {[c.assignment() for c in kafka]}"


# --------------------------------------------------------------------------------------------------
# Contract
# --------------------------------------------------------------------------------------------------


def test_open_bus_picks_backend_by_scheme(backend: str, bus: Bus) -> None:
    assert isinstance(bus, Bus)
    assert isinstance(bus, SqliteBus if backend == "sqlite" else KafkaBus)


def test_round_trip_keeps_key_headers_value(bus: Bus) -> None:
    topic = topic_name()
    before = time.time()
    bus.publish(topic, b"payload\x00\xff", key="cam-7", headers={"trace": "abc", "raw": b"\x00\x01"})
    bus.flush()
    with bus.subscribe([topic], "g") as consumer:
        (msg,) = drain(consumer, 1)
        assert settle(consumer) == []
    assert msg.topic == topic
    assert msg.value == b"payload\x00\xff"
    assert msg.key == b"cam-7"
    assert msg.headers == {"trace": b"abc", "raw": b"\x00\x01"}
    assert msg.header("trace") == "abc"
    assert msg.header("missing", "dflt") == "dflt"
    assert before - 5 <= msg.timestamp <= time.time() + 5
    assert msg.delivery_count == 1


def test_every_group_sees_every_message(bus: Bus) -> None:
    topic = topic_name()
    values = {f"m{i}".encode() for i in range(6)}
    for i, v in enumerate(sorted(values)):
        bus.publish(topic, v, key=f"k{i}")
    bus.flush()
    with bus.subscribe([topic], "a") as a, bus.subscribe([topic], "b") as b:
        got_a = [m.value for m in drain(a, 6, ack=True)]
        got_b = [m.value for m in drain(b, 6, ack=True)]
    assert sorted(got_a) == sorted(values)
    assert sorted(got_b) == sorted(values)


def test_consumers_in_one_group_share_the_messages(bus: Bus) -> None:
    topic = topic_name()
    bus.ensure_topics([topic])
    with bus.subscribe([topic], "workers") as c1, bus.subscribe([topic], "workers") as c2:
        wait_assigned([c1, c2])
        values = [f"m{i}".encode() for i in range(20)]
        for i, v in enumerate(values):
            bus.publish(topic, v, key=f"k{i}")
        bus.flush()
        got: dict[int, list[bytes]] = {1: [], 2: []}
        deadline = time.monotonic() + 15
        while len(got[1]) + len(got[2]) < 20 and time.monotonic() < deadline:
            for idx, c in ((1, c1), (2, c2)):
                for m in c.poll(max_messages=2, timeout=0.1):
                    got[idx].append(m.value)
                    c.ack(m)
        got[1].extend(m.value for m in settle(c1))
        got[2].extend(m.value for m in settle(c2))
    assert set(got[1]) | set(got[2]) == set(values)
    assert set(got[1]) & set(got[2]) == set()
    assert len(got[1]) + len(got[2]) == 20
    assert got[1] and got[2]


def test_acked_messages_stay_acked_unacked_come_back(backend: str, bus: Bus) -> None:
    topic = topic_name()
    for v in (b"m0", b"m1", b"m2"):
        bus.publish(topic, v, key="same-partition")
    bus.flush()
    with bus.subscribe([topic], "g") as consumer:
        first = drain(consumer, 3)
        assert [m.value for m in first] == [b"m0", b"m1", b"m2"]
        consumer.ack(first[2])  # out of order: must not let m1 be skipped
        consumer.ack(first[0])
        consumer.ack(first[0])  # idempotent
    with bus.subscribe([topic], "g") as consumer:
        # SQLite tracks each message; Kafka commits only the contiguous prefix, so m2 also returns.
        expected = [b"m1"] if backend == "sqlite" else [b"m1", b"m2"]
        again = drain(consumer, len(expected))
        again += settle(consumer)
        assert [m.value for m in again] == expected
        if backend == "sqlite":
            assert again[0].delivery_count == 2
        for m in again:
            consumer.ack(m)
    with bus.subscribe([topic], "g") as consumer:
        wait_assigned([consumer])
        assert settle(consumer) == []


def test_unacked_messages_survive_a_killed_consumer(
    backend: str, bus: Bus, bus_url: str, tmp_path: Path
) -> None:
    topic = topic_name()
    values = {f"m{i}".encode() for i in range(4)}
    for v in sorted(values):
        bus.publish(topic, v, key=v)
    bus.flush()
    child = subprocess.Popen(
        [sys.executable, str(CHILD), bus_url, str(tmp_path / "home"), topic, "g", "4"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "polled 4", line
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    started = time.monotonic()
    with bus.subscribe([topic], "g") as consumer:
        again = drain(consumer, 4, timeout=20)
        for m in again:
            consumer.ack(m)
    assert {m.value for m in again} == values
    assert len(again) == 4
    if backend == "sqlite":
        assert all(m.delivery_count == 2 for m in again)
        assert time.monotonic() - started < 5  # the 1 s lease, not the default 30 s
    assert bus.lag(topic, "g") == 0


def test_lag_counts_unacked_messages_per_group(bus: Bus) -> None:
    topic = topic_name()
    for i in range(5):
        bus.publish(topic, f"m{i}".encode(), key=f"k{i}")
    bus.flush()
    assert bus.lag(topic_name(), "g1") == 0  # an unknown topic has nothing pending (and is not created)
    # Groups that never subscribed start at the beginning of the topic (earliest).
    assert bus.lag(topic, "g1") == 5
    assert bus.lag(topic, "g2") == 5
    with bus.subscribe([topic], "g1") as consumer:
        got = drain(consumer, 5)
        assert len(got) == 5
        assert bus.lag(topic, "g1") == 5  # polled is not acked
        for m in got[:3]:
            consumer.ack(m)
        assert bus.lag(topic, "g1") == 2
        assert bus.lag(topic, "g2") == 5
        for m in got[3:]:
            consumer.ack(m)
        assert bus.lag(topic, "g1") == 0
    assert bus.lag(topic, "g2") == 5
    bus.publish(topic, b"late")
    bus.flush()
    assert bus.lag(topic, "g1") == 1
    assert bus.lag(topic, "g2") == 6


def test_oversized_message_is_refused_before_sending(make_bus: MakeBus) -> None:
    bus = make_bus(max_message_bytes=100)
    topic = topic_name()
    with pytest.raises(MessageTooLarge) as err:
        bus.publish(topic, b"x" * 101)
    assert (err.value.size, err.value.limit) == (101, 100)
    assert err.value.setting == "KEENEYE_BUS__MAX_MESSAGE_BYTES"
    assert "101 bytes, over the limit of 100 bytes" in err.value.one_line()
    with pytest.raises(MessageTooLarge) as err:
        bus.publish(topic, b"x" * 90, headers={"trace": "0123456789"})  # 90 + 5 + 10
    assert err.value.size == 105
    bus.publish(topic, b"x" * 100)  # exactly at the limit is fine
    bus.flush()
    assert bus.lag(topic, "g") == 1


def test_check_reports_a_reachable_backend(backend: str, bus: Bus) -> None:
    health = bus.check()
    assert health.reachable is True
    assert health.setting == "KEENEYE_BUS_URL"
    if backend == "sqlite":
        assert health.version == f"SQLite {sqlite3.sqlite_version}"
    else:
        assert "cluster" in health.version


# --------------------------------------------------------------------------------------------------
# Backend-specific behaviour
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1:6379", "scheme 'redis'"),
        ("no-scheme-here", "no scheme"),
        ("kafka://", "names no broker"),
        ("kafka://broker", "needs host:port"),
        ("kafka://a:9092,:9093", "needs host:port"),
        ("kafka://a:9092,b", "needs host:port"),
        ("kafka://a:port,b:9092", "malformed URL"),
        ("kafka://broker:port", "malformed URL"),
        ("sqlite://host/bus.db", "does not name a database file"),
        ("sqlite:///:memory:", "does not name a database file"),
    ],
)
def test_bad_bus_url_is_a_config_error(url: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        open_bus(Settings(home=tmp_path, bus_url=url))
    assert err.value.setting == "KEENEYE_BUS_URL"
    assert err.value.one_line().startswith("KEENEYE_BUS_URL: ")
    assert says in err.value.one_line()


def test_kafka_url_may_list_several_brokers(tmp_path: Path) -> None:
    bus = open_bus(Settings(home=tmp_path, bus_url="kafka://k1:9092, k2:9093"))
    assert isinstance(bus, KafkaBus)
    assert bus.bootstrap == "k1:9092,k2:9093"


def test_sqlite_bus_creates_its_folder_and_compacts_acked_history(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "bus.db"
    bus = SqliteBus(f"sqlite:///{path}", BusSettings())
    assert path.is_file()
    topic = topic_name()
    for i in range(5):
        bus.publish(topic, f"m{i}".encode())
    with bus.subscribe([topic], "fast") as fast, bus.subscribe([topic], "slow") as slow:
        for m in drain(fast, 5):
            fast.ack(m)
        assert bus.compact() == 0  # "slow" has acked nothing yet
        got = drain(slow, 5)
        for m in got[:2]:
            slow.ack(m)
        assert bus.compact() == 2
        for m in got[2:]:
            slow.ack(m)
        assert bus.compact() == 3
    assert (bus.lag(topic, "fast"), bus.lag(topic, "slow")) == (0, 0)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone() == (0,)
    bus.close()


def test_sqlite_poll_waits_then_returns_empty(tmp_path: Path) -> None:
    bus = SqliteBus(f"sqlite:///{tmp_path / 'bus.db'}", BusSettings())
    with bus.subscribe(["quiet"], "g") as consumer:
        started = time.monotonic()
        assert consumer.poll(timeout=0.3) == []
        assert 0.25 <= time.monotonic() - started < 1.0
    bus.close()


@pytest.mark.integration
def test_kafka_check_against_a_dead_port_fails_fast() -> None:
    bus = KafkaBus(f"kafka://127.0.0.1:{services.free_port()}", BusSettings())
    started = time.monotonic()
    health = bus.check()
    assert time.monotonic() - started < 6
    assert health.reachable is False
    assert "KEENEYE_BUS_URL" in health.fix
    assert health.detail


def test_ack_many_acks_a_batch_and_keeps_the_rest(backend: str, bus: Bus) -> None:
    topic = topic_name()
    for i in range(5):
        bus.publish(topic, f"m{i}".encode(), key="same-partition")
    bus.flush()
    with bus.subscribe([topic], "g") as consumer:
        got = drain(consumer, 5)
        assert [m.value for m in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        consumer.ack_many([got[0], got[1], got[3]])  # m2 left open: must not be skipped
        consumer.ack_many([got[0]])  # idempotent
        consumer.ack_many([])
        assert bus.lag(topic, "g") == (2 if backend == "sqlite" else 3)
    with bus.subscribe([topic], "g") as consumer:
        # SQLite tracks each message; Kafka commits only the contiguous prefix, so m3 also returns.
        expected = [b"m2", b"m4"] if backend == "sqlite" else [b"m2", b"m3", b"m4"]
        again = drain(consumer, len(expected))
        again += settle(consumer)
        assert [m.value for m in again] == expected
        consumer.ack_many(again)
        assert bus.lag(topic, "g") == 0
    with bus.subscribe([topic], "g") as consumer:
        wait_assigned([consumer])
        assert settle(consumer) == []


def test_publish_many_delivers_in_order_and_checks_every_size_first(make_bus: MakeBus) -> None:
    from keeneye.stream.bus import Outgoing

    bus = make_bus(max_message_bytes=64)
    topic = topic_name()
    with pytest.raises(MessageTooLarge):
        bus.publish_many(topic, [Outgoing(b"fits"), Outgoing(b"x" * 100)])
    bus.publish_many(topic, [Outgoing(v, key="k", headers={"h": "1"}) for v in (b"a", b"b", b"c")])
    bus.publish_many(topic, [])
    bus.flush()
    with bus.subscribe([topic], "g") as consumer:
        got = drain(consumer, 3, ack=True)
        got += settle(consumer)
    assert [m.value for m in got] == [b"a", b"b", b"c"]
    assert got[0].key == b"k" and got[0].header("h") == "1"
    assert bus.lag(topic, "g") == 0


def test_keep_alive_holds_messages_past_the_lease_and_the_poll_interval(
    backend: str, make_bus: MakeBus
) -> None:
    """A member busy with one message longer than the SQLite lease (1 s) or Kafka's poll interval
    (3 s) keeps it while it says so; its commit then counts and nothing behind it is lost. Stopping
    the keep-alive hands the next message it holds to another member (SQLite) / fails its commit
    (Kafka: the member left the group)."""
    bus = make_bus(max_poll_interval_ms=3000)
    topic = topic_name()
    for i in range(3):
        bus.publish(topic, f"m{i}".encode(), key="one-partition")
    bus.flush()
    with bus.subscribe([topic], "g") as busy:
        (first,) = drain(busy, 1)
        assert first.value == b"m0"
        other = bus.subscribe([topic], "g") if backend == "sqlite" else None
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            busy.keep_alive([first])
            if other is not None:  # past its lease, m0 would come to the other member now
                assert [m.value for m in other.poll(max_messages=5, timeout=0)] in ([], [b"m1", b"m2"])
            time.sleep(0.3)
        if other is not None:
            other.close()  # hands m1, m2 back if it took them
        busy.ack_many([first])
        assert bus.lag(topic, "g") == 2
        rest = drain(busy, 2)
        assert [m.value for m in rest] == [b"m1", b"m2"]
        # Without a keep-alive the same wait loses the claim.
        time.sleep(4.5)
        if backend == "sqlite":
            with bus.subscribe([topic], "g") as late:
                assert [m.value for m in drain(late, 2)] == [b"m1", b"m2"]
        else:
            busy.ack_many(rest)
            assert bus.lag(topic, "g") == 2
