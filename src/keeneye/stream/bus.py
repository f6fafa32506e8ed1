"""The message bus contract shared by every backend (SQLite embedded default, Kafka scaled).

Semantics every backend honours (tests/unit/stream/test_bus.py proves them on each):

* ``publish`` is durable once it returns (``flush`` for backends that batch); a payload larger than
  ``settings.bus.max_message_bytes`` raises :class:`~keeneye.domain.MessageTooLarge` before sending.
* Consumer groups: every group sees every message (fan-out); consumers in one group share the
  messages (competing consumers) — each message goes to one member at a time.
* Delivery is at-least-once: a message polled but never acked is delivered again to the group after
  its consumer dies (SQLite: lease expiry; Kafka: group rebalance from the last committed offset).
* ``ack`` is explicit and idempotent. Ack in the order messages were polled per key/partition.
* ``keep_alive`` says a consumer still works on messages it holds: a message that takes longer than
  the lease (SQLite) or ``max.poll.interval.ms`` (Kafka) — an orthomosaic answered for minutes — is
  not handed to another member while its consumer is alive and says so, and is after it dies.
* ``lag(topic, group)`` counts messages the group has not acked yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from keeneye.domain import BackendHealth, MessageTooLarge
from keeneye.settings import BusSettings, Settings, split_url

HeaderValue = str | bytes


@dataclass(frozen=True)
class Message:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)
    partition: int = 0
    offset: int = 0
    timestamp: float = 0.0  # seconds since the epoch, set by the bus at publish time
    delivery_count: int = 1  # 1 on first delivery; >1 on redelivery where the backend knows it

    def header(self, name: str, default: str | None = None) -> str | None:
        raw = self.headers.get(name)
        return default if raw is None else raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class Outgoing:
    """A message to publish with :meth:`Bus.publish_many`."""

    value: bytes
    key: str | bytes | None = None
    headers: Mapping[str, HeaderValue] | None = None


@runtime_checkable
class Consumer(Protocol):
    """A member of a consumer group. Use as a context manager; ``close`` leaves the group."""

    group: str

    def poll(self, max_messages: int = 1, timeout: float = 1.0) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``timeout`` seconds for the first."""
        ...

    def ack(self, message: Message) -> None:
        """Mark the message processed for this group; it is never delivered to the group again."""
        ...

    def ack_many(self, messages: Sequence[Message]) -> None:
        """:meth:`ack` for a polled batch (in poll order) at the cost of one commit, not one each."""
        ...

    def keep_alive(self, messages: Sequence[Message]) -> None:
        """Still working on these polled, unacked messages: keep them this member's (SQLite: the lease
        starts again; Kafka: the poll interval). Call it every :func:`keep_alive_seconds` while one
        piece of work outlasts them."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class Bus(Protocol):
    url: str

    def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | bytes | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
    ) -> None: ...

    def publish_many(self, topic: str, messages: Sequence[Outgoing]) -> None:
        """:meth:`publish` for a batch; durable after ``flush`` (SQLite: one transaction, all or none).

        Every message is size-checked before any is sent.
        """
        ...

    def flush(self, timeout: float = 10.0) -> None:
        """Block until every published message is durable at the broker."""
        ...

    def subscribe(self, topics: Sequence[str], group: str) -> Consumer: ...

    def lag(self, topic: str, group: str) -> int: ...

    def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create the topics when missing (idempotent)."""
        ...

    def check(self) -> BackendHealth: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------------
# Helpers shared by the backends
# --------------------------------------------------------------------------------------------------

BUS_SETTING = "KEENEYE_BUS_URL"
SIZE_SETTING = "KEENEYE_BUS__MAX_MESSAGE_BYTES"
BUS_SCHEMES = {"sqlite": "embedded durable queue", "kafka": "Kafka or a Kafka-protocol broker"}


def keep_alive_seconds(settings: BusSettings) -> float:
    """How often a consumer busy with the same messages calls ``keep_alive``: a third of the shorter
    of the SQLite lease and Kafka's poll interval, so two missed calls still leave it in time."""
    return min(settings.lease_seconds, settings.max_poll_interval_ms / 1000) / 3


def encode_key(key: str | bytes | None) -> bytes | None:
    return key.encode("utf-8") if isinstance(key, str) else key


def encode_headers(headers: Mapping[str, HeaderValue] | None) -> dict[str, bytes]:
    if not headers:
        return {}
    return {name: v.encode("utf-8") if isinstance(v, str) else bytes(v) for name, v in headers.items()}


def check_size(topic: str, value: bytes, key: bytes | None, headers: Mapping[str, bytes], limit: int) -> None:
    """Refuse a message before it is sent: value, key and header names/values count against the limit."""
    size = len(value) + len(key or b"") + sum(len(n.encode("utf-8")) + len(v) for n, v in headers.items())
    if size > limit:
        raise MessageTooLarge(f"message for topic {topic!r}", size, limit, setting=SIZE_SETTING)


def open_bus(settings: Settings) -> Bus:
    """The bus named by ``settings.bus_url``: ``sqlite:///path`` or ``kafka://host:port[,host:port]``."""
    url = settings.bus_url
    # urllib cannot read a port out of "h1:9092,h2:9092", so the scheme (and first broker) is checked
    # here and every broker by the Kafka backend.
    head = url.split(",", 1)[0] if url.lower().startswith("kafka:") else url
    scheme, _parts = split_url(BUS_SETTING, head, BUS_SCHEMES)
    if scheme == "sqlite":
        from keeneye.stream.sqlite_bus import SqliteBus

        return SqliteBus(url, settings.bus)
    from keeneye.stream.kafka_bus import KafkaBus

    return KafkaBus(url, settings.bus)
