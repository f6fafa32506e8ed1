"""The scaled bus: Kafka (or a Kafka-protocol broker such as Redpanda or tansu) via confluent-kafka.

* Producer: ``acks=all`` with the idempotent producer; if the broker refuses idempotence the producer
  is rebuilt without it (logged once). ``publish`` queues; ``flush`` waits for the broker and raises
  :class:`~keeneye.domain.KeeneyeError` for any message the broker did not take.
* Consumers: one group member each, ``enable.auto.commit=false``. ``ack`` commits only the contiguous
  prefix of acked offsets per partition, so acking a later message first never skips an earlier one.
  Unacked messages come back after a rebalance (member closed, or dead for ``session_timeout_ms``).
* ``lag``: per partition, log end minus the group's committed offset. The log end is read from the
  last record batch, not only the high watermark, because tansu 0.6 reports the base offset of the
  last batch + 1 as its high watermark.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from confluent_kafka import Consumer as _KConsumer
from confluent_kafka import (
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
    libversion,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # confluent_kafka.admin re-exports it untyped

from keeneye.domain import BackendHealth, ConfigError, KeeneyeError
from keeneye.settings import BusSettings, mask_url
from keeneye.stream.bus import (
    BUS_SETTING,
    HeaderValue,
    Message,
    Outgoing,
    check_size,
    encode_headers,
    encode_key,
)

log = logging.getLogger(__name__)
_kafka_log = logging.getLogger("keeneye.stream.kafka.librdkafka")

_OFFSET_UNSET = -1001  # librdkafka's OFFSET_INVALID: the group never committed this partition
_ADMIN_TIMEOUT = 5.0
_CHECK_TIMEOUT = 3.0


def kafka_bootstrap(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` → ``h1:9092,h2:9092``; every host needs a numeric port."""
    netloc = urlsplit(url).netloc
    hosts = [h.strip() for h in netloc.split(",") if h.strip()]
    fix = "use kafka://host:9092[,host2:9092]"
    if not hosts:
        raise ConfigError(BUS_SETTING, f"{mask_url(url)!r} names no broker", fix=fix)
    for host in hosts:
        name, sep, port = host.rpartition(":")
        if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(BUS_SETTING, f"broker {host!r} in {mask_url(url)!r} needs host:port", fix=fix)
    return ",".join(hosts)


def _base_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "logger": _kafka_log,  # librdkafka's own log lines go to Python logging, not stderr
        "socket.connection.setup.timeout.ms": 5000,
        "reconnect.backoff.max.ms": 2000,
    }


def _unavailable_fix() -> str:
    return f"start the broker or point {BUS_SETTING} at a reachable kafka://host:port"


class KafkaConsumer:
    """One member of a Kafka consumer group; see the module docstring for the ack rule."""

    def __init__(self, bus: KafkaBus, topics: Sequence[str], group: str) -> None:
        self.group = group
        self.topics = list(dict.fromkeys(topics))
        self._bus = bus
        session_ms = bus.settings.session_timeout_ms
        self._consumer = _KConsumer(
            {
                **_base_config(bus.bootstrap),
                "group.id": group,
                "client.id": f"keeneye-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": session_ms,
                "max.poll.interval.ms": max(session_ms, bus.settings.max_poll_interval_ms),
                "heartbeat.interval.ms": max(100, session_ms // 3),
                "fetch.wait.max.ms": 100,
            }
        )
        # Per assigned partition: offsets handed out by poll, in order, → acked yet?
        self._inflight: dict[tuple[str, int], dict[int, bool]] = {}
        self._stash: list[Any] = []  # records a keep-alive poll returned: the next poll hands them out
        self._lock = threading.Lock()
        self._closed = False
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"group": self.group, "partitions": _names(partitions)})

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # Whatever was polled but not committed goes to the partition's next owner.
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        with self._lock:
            for tp in revoked:
                self._inflight.pop(tp, None)
            self._stash = [r for r in self._stash if (r.topic(), r.partition()) not in revoked]
        log.info("partitions revoked", extra={"group": self.group, "partitions": _names(partitions)})

    def poll(self, max_messages: int = 1, timeout: float = 1.0) -> list[Message]:
        if self._closed:
            raise RuntimeError("poll on a closed consumer")
        raw, self._stash = self._stash[:max_messages], self._stash[max_messages:]
        first = self._consumer.poll(0 if raw else max(timeout, 0.0)) if len(raw) < max_messages else None
        if first is not None:
            raw.append(first)
            if len(raw) < max_messages:
                # Drain what is already fetched without waiting for a full batch.
                raw.extend(self._consumer.consume(num_messages=max_messages - len(raw), timeout=0))
        out: list[Message] = []
        with self._lock:
            for m in raw:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal():
                        raise KeeneyeError(f"Kafka consumer failed: {err.str()}", fix=_unavailable_fix())
                    log.warning("kafka consumer error", extra={"group": self.group, "error": err.str()})
                    continue
                topic, partition, offset = m.topic(), m.partition(), m.offset()
                self._inflight.setdefault((topic, partition), {})[offset] = False
                _, ts = m.timestamp()
                out.append(
                    Message(
                        topic=topic,
                        value=m.value() or b"",
                        key=m.key(),
                        headers={k: v or b"" for k, v in (m.headers() or [])},
                        partition=partition,
                        offset=offset,
                        timestamp=ts / 1000 if ts > 0 else time.time(),
                    )
                )
        return out

    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this member owns now; empty until the group has balanced."""
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def ack(self, message: Message) -> None:
        with self._lock:
            pending = self._inflight.get((message.topic, message.partition))
            if pending is None or message.offset not in pending:
                # Already committed, or the partition moved to another member (which redelivers it).
                return
            pending[message.offset] = True
            commit_to = None
            for offset in list(pending):
                if not pending[offset]:
                    break
                del pending[offset]
                commit_to = offset + 1
        if commit_to is None:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(message.topic, message.partition, commit_to)], asynchronous=False
            )
        except KafkaException as exc:
            # A rebalance raced the commit: the new owner redelivers, which at-least-once allows.
            log.warning(
                "kafka commit failed; the message may be delivered again",
                extra={"group": self.group, "topic": message.topic, "error": str(exc)},
            )

    def ack_many(self, messages: Sequence[Message]) -> None:
        """Mark the batch acked, then one synchronous commit of every partition's new watermark."""
        commits: dict[tuple[str, int], int] = {}
        with self._lock:
            for message in messages:
                pending = self._inflight.get((message.topic, message.partition))
                if pending is not None and message.offset in pending:
                    pending[message.offset] = True
            for tp in {(m.topic, m.partition) for m in messages}:
                pending = self._inflight.get(tp)
                if pending is None:
                    continue
                for offset in list(pending):
                    if not pending[offset]:
                        break
                    del pending[offset]
                    commits[tp] = offset + 1
        if not commits:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in sorted(commits.items())],
                asynchronous=False,
            )
        except KafkaException as exc:
            # A rebalance raced the commit: the new owner redelivers, which at-least-once allows.
            log.warning(
                "kafka commit failed; messages may be delivered again",
                extra={"group": self.group, "error": str(exc)},
            )

    def keep_alive(self, messages: Sequence[Message]) -> None:
        """Poll with every partition paused: librdkafka's poll-interval clock starts again and nothing
        new is fetched (the pattern KIP-62 gives for long processing); the group heartbeat runs on
        librdkafka's own thread anyway. ``messages`` is not needed: Kafka keeps a member's whole
        assignment, not single messages."""
        del messages
        assigned = self._consumer.assignment()
        if not assigned:
            return
        self._consumer.pause(assigned)
        try:
            record = self._consumer.poll(0)
            if record is not None:  # fetched before the pause: handed out by the next poll
                self._stash.append(record)
        finally:
            still = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
            self._consumer.resume([tp for tp in assigned if (tp.topic, tp.partition) in still])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]


class KafkaBus:
    """Message bus on Kafka; see the module docstring."""

    def __init__(self, url: str, settings: BusSettings | None = None) -> None:
        self.url = url
        self.settings = settings or BusSettings()
        self.bootstrap = kafka_bootstrap(url)
        self._producer: Producer | None = None
        self._idempotent = True
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._admin: AdminClient | None = None
        self._known_topics: set[str] = set()
        self._probe: _KConsumer | None = None
        self._probe_lock = threading.Lock()

    # -- producing ---------------------------------------------------------------------------------

    def _get_producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = Producer(
                    {
                        **_base_config(self.bootstrap),
                        "acks": "all",
                        "enable.idempotence": self._idempotent,
                        "linger.ms": 5,
                        # Headers and framing ride on top of the payload limit we enforce.
                        "message.max.bytes": max(1_000_000, self.settings.max_message_bytes + 64 * 1024),
                        "message.timeout.ms": 30_000,
                        "error_cb": self._on_error,
                    }
                )
            return self._producer

    def warm_up(self, topics: Sequence[str], timeout: float = 5.0) -> None:
        """Start the producer and fetch the topics' metadata now, so the first publish does not wait
        (a stream worker's first ``.out`` flush otherwise pays producer start-up, ~0.5 s)."""
        producer = self._get_producer()
        for topic in topics:
            try:
                producer.list_topics(topic, timeout=timeout)
            except KafkaException as exc:
                log.debug("kafka warm-up failed", extra={"topic": topic, "error": str(exc)})
        producer.poll(0)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() and self._idempotent:
            # Brokers without idempotent-producer support fail it fatally; fall back to plain acks=all.
            log.warning(
                "kafka idempotent producer refused; continuing without it", extra={"error": err.str()}
            )
            self._idempotent = False
            self._errors.append(f"producer failed: {err.str()}")
        else:
            log.debug("kafka client error", extra={"error": err.str()})

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(f"message to {msg.topic()!r} was not delivered: {err.str()}")

    def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | bytes | None = None,
        headers: Mapping[str, HeaderValue] | None = None,
    ) -> None:
        raw_key = encode_key(key)
        raw_headers = encode_headers(headers)
        check_size(topic, value, raw_key, raw_headers, self.settings.max_message_bytes)
        self.ensure_topics([topic])
        producer = self._get_producer()
        kwargs: dict[str, Any] = {"value": value, "key": raw_key, "on_delivery": self._on_delivery}
        if raw_headers:
            kwargs["headers"] = list(raw_headers.items())
        try:
            producer.produce(topic, **kwargs)
        except BufferError:
            # Local queue full: let deliveries drain, then try once more.
            producer.poll(1.0)
            producer.produce(topic, **kwargs)
        except KafkaException as exc:
            raise KeeneyeError(
                f"Kafka refused a message for {topic!r}: {exc}", fix=_unavailable_fix()
            ) from exc
        producer.poll(0)

    def publish_many(self, topic: str, messages: Sequence[Outgoing]) -> None:
        """Checks every size first, then hands each to the producer; durable after ``flush``."""
        for m in messages:
            check_size(
                topic, m.value, encode_key(m.key), encode_headers(m.headers), self.settings.max_message_bytes
            )
        for m in messages:
            self.publish(topic, m.value, key=m.key, headers=m.headers)

    def flush(self, timeout: float = 10.0) -> None:
        producer = self._producer
        if producer is not None:
            remaining = producer.flush(timeout)
            if remaining:
                self._errors.append(f"{remaining} message(s) still unsent after {timeout:g}s")
        if self._errors:
            errors, self._errors = self._errors, []
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            with self._lock:
                if not self._idempotent and self._producer is not None:
                    self._producer = None  # rebuilt without idempotence on the next publish
            raise KeeneyeError(f"Kafka bus {mask_url(self.url)}: {errors[0]}{more}", fix=_unavailable_fix())

    # -- topics and consumers ----------------------------------------------------------------------

    def _get_admin(self) -> AdminClient:
        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(_base_config(self.bootstrap))
            return self._admin

    def ensure_topics(self, topics: Sequence[str]) -> None:
        missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
        if not missing:
            return
        new = [NewTopic(t, num_partitions=self.settings.partitions, replication_factor=-1) for t in missing]
        futures = self._get_admin().create_topics(new, request_timeout=_ADMIN_TIMEOUT)
        for topic, future in futures.items():
            try:
                future.result(timeout=_ADMIN_TIMEOUT + 1)
                log.info(
                    "kafka topic created", extra={"topic": topic, "partitions": self.settings.partitions}
                )
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                    raise KeeneyeError(
                        f"cannot create Kafka topic {topic!r} at {mask_url(self.url)}: {exc}",
                        fix=_unavailable_fix(),
                    ) from exc
            except TimeoutError as exc:
                raise KeeneyeError(
                    f"Kafka broker at {mask_url(self.url)} did not answer within {_ADMIN_TIMEOUT:g}s",
                    fix=_unavailable_fix(),
                ) from exc
            self._known_topics.add(topic)

    def subscribe(self, topics: Sequence[str], group: str) -> KafkaConsumer:
        self.ensure_topics(topics)
        return KafkaConsumer(self, topics, group)

    # -- lag ---------------------------------------------------------------------------------------

    def _get_probe(self) -> _KConsumer:
        # An assign-only consumer (never joins its group) to read watermarks and the log end.
        if self._probe is None:
            self._probe = _KConsumer(
                {
                    **_base_config(self.bootstrap),
                    "group.id": f"keeneye-lag-probe-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 10,
                }
            )
        return self._probe

    def _partitions(self, topic: str) -> list[int]:
        # All topics, not list_topics(topic=…): asking for one by name auto-creates it on some brokers.
        meta = self._get_admin().list_topics(timeout=_ADMIN_TIMEOUT)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            return []
        return sorted(info.partitions)

    def _log_ends(self, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
        """Partition → (low watermark, log end offset)."""
        with self._probe_lock:
            return self._read_log_ends(self._get_probe(), topic, partitions)

    @staticmethod
    def _read_log_ends(probe: _KConsumer, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
        ends: dict[int, tuple[int, int]] = {}
        to_read: list[TopicPartition] = []
        for p in partitions:
            low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=_ADMIN_TIMEOUT)
            ends[p] = (low, high)
            if high > low:
                to_read.append(TopicPartition(topic, p, high - 1))
        if not to_read:
            return ends
        # Read from the last offset the broker admits to until end-of-partition: a correct broker
        # returns one record, tansu returns the whole last batch and so reveals the real end.
        probe.assign(to_read)
        waiting = {tp.partition for tp in to_read}
        deadline = time.monotonic() + _ADMIN_TIMEOUT
        try:
            while waiting and time.monotonic() < deadline:
                m = probe.poll(0.2)
                if m is None:
                    continue
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        waiting.discard(m.partition())
                    continue
                part, offset = m.partition(), m.offset()
                if part is not None and offset is not None:
                    low, end = ends[part]
                    ends[part] = (low, max(end, offset + 1))
        finally:
            probe.unassign()
        return ends

    def lag(self, topic: str, group: str) -> int:
        from confluent_kafka import ConsumerGroupTopicPartitions

        partitions = self._partitions(topic)
        if not partitions:
            return 0
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
        futures = self._get_admin().list_consumer_group_offsets([request], request_timeout=_ADMIN_TIMEOUT)
        committed = {
            tp.partition: tp.offset
            for tp in futures[group].result(timeout=_ADMIN_TIMEOUT + 1).topic_partitions
        }
        total = 0
        for p, (low, end) in self._log_ends(topic, partitions).items():
            start = committed.get(p, _OFFSET_UNSET)
            start = low if start < 0 else max(start, low)
            total += max(0, end - start)
        return total

    # -- health and shutdown -----------------------------------------------------------------------

    def check(self) -> BackendHealth:
        url = mask_url(self.url)
        admin = AdminClient({**_base_config(self.bootstrap), "socket.connection.setup.timeout.ms": 2000})
        try:
            meta = admin.list_topics(timeout=_CHECK_TIMEOUT)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            detail = err.str() if isinstance(err, KafkaError) else str(err)
            return BackendHealth(
                BUS_SETTING,
                url,
                False,
                detail=f"no broker answered within {_CHECK_TIMEOUT:g}s: {detail}",
                fix=_unavailable_fix(),
            )
        version = f"cluster {meta.cluster_id}, {len(meta.brokers)} broker(s); librdkafka {libversion()[0]}"
        return BackendHealth(BUS_SETTING, url, True, version=version, detail=f"{len(meta.topics)} topic(s)")

    def close(self) -> None:
        try:
            if self._producer is not None:
                self.flush()
        finally:
            with self._probe_lock:
                if self._probe is not None:
                    self._probe.close()
                    self._probe = None
            self._producer = None
            self._admin = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
