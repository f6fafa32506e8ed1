"""The embedded bus: a durable queue in one SQLite file, shared by the API and worker processes.

Layout (one file, WAL mode, every write in ``BEGIN IMMEDIATE`` so processes never deadlock):

* ``messages``: the log. ``id`` (AUTOINCREMENT, never reused) is the offset, ordered per topic.
* ``groups``: one row per (topic, group) with ``acked_upto``, a watermark below which the group has
  acked everything. A group that subscribes late starts at 0 (Kafka's ``auto.offset.reset=earliest``).
* ``deliveries``: one row per (group, message) above the watermark that a consumer claimed: who holds
  it, until when (the lease) and whether it was acked. An expired, unacked lease means the consumer
  died or stalled, so the next poll claims the message again with ``delivery_count`` + 1. Rows fall
  away as the watermark passes them, so the table holds only the in-flight window.

Lag is an index range count above the watermark minus the acked rows above it. ``compact`` deletes
messages every group of the topic has acked.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from keeneye.domain import BackendHealth, BackendUnavailable, ConfigError
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    headers TEXT NOT NULL DEFAULT '{}',
    value BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_topic_id ON messages (topic, id);
CREATE TABLE IF NOT EXISTS groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    acked_upto INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    grp TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    topic TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    lease_expires_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 1,
    acked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_owner ON deliveries (claimed_by) WHERE acked = 0;
"""

# Compaction runs from consumers every this many acks (and from close()), so history stays bounded
# without a separate janitor process.
_COMPACT_EVERY_ACKS = 500
_BUSY_TIMEOUT_MS = 30_000
_MIN_SLEEP, _MAX_SLEEP = 0.01, 0.05


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute/bus.db`` (SQLAlchemy's convention)."""
    parts = urlsplit(url)
    raw = parts.path[1:] if parts.path.startswith("/") else parts.path
    if parts.netloc or not raw or raw == ":memory:" or parts.query:
        raise ConfigError(
            BUS_SETTING,
            f"{mask_url(url)!r} does not name a database file",
            fix="use sqlite:////absolute/path/bus.db (a file shared by every process)",
        )
    return Path(raw).expanduser()


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a write lock is taken up front.
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a published message survives power loss, not only a killed process.
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class _Db:
    """One connection guarded by a lock (a bus or consumer may be shared between threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.conn = _connect(path)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()


def _row_to_message(row: tuple[int, str, bytes | None, str, bytes, float], delivery_count: int) -> Message:
    mid, topic, key, headers, value, created_at = row
    return Message(
        topic=topic,
        value=bytes(value),
        key=None if key is None else bytes(key),
        headers={k: v.encode("latin-1") for k, v in json.loads(headers).items()},
        partition=0,
        offset=mid,
        timestamp=created_at,
        delivery_count=delivery_count,
    )


def _encode_headers_json(headers: Mapping[str, bytes]) -> str:
    # latin-1 maps every byte to one code point, so arbitrary header bytes survive JSON.
    return json.dumps({k: v.decode("latin-1") for k, v in headers.items()}, separators=(",", ":"))


def _advance_watermark(conn: sqlite3.Connection, topic: str, group: str) -> None:
    """Move ``acked_upto`` past every acked message at its front and drop their delivery rows."""
    row = conn.execute("SELECT acked_upto FROM groups WHERE topic = ? AND grp = ?", (topic, group)).fetchone()
    if row is None:
        return
    current = int(row[0])
    first_open = conn.execute(
        """SELECT m.id FROM messages m
           LEFT JOIN deliveries d ON d.grp = ? AND d.message_id = m.id
           WHERE m.topic = ? AND m.id > ? AND (d.acked IS NULL OR d.acked = 0)
           ORDER BY m.id LIMIT 1""",
        (group, topic, current),
    ).fetchone()
    if first_open is not None:
        new = int(first_open[0]) - 1
    else:
        top = conn.execute("SELECT MAX(id) FROM messages WHERE topic = ?", (topic,)).fetchone()[0]
        new = current if top is None else int(top)
    if new > current:
        conn.execute("UPDATE groups SET acked_upto = ? WHERE topic = ? AND grp = ?", (new, topic, group))
        conn.execute(
            "DELETE FROM deliveries WHERE grp = ? AND message_id <= ? AND topic = ?", (group, new, topic)
        )


class SqliteConsumer:
    """A member of a consumer group on the SQLite bus; claims messages under a lease."""

    def __init__(self, bus: SqliteBus, topics: Sequence[str], group: str) -> None:
        self.group = group
        self.topics = list(dict.fromkeys(topics))
        self.member_id = uuid.uuid4().hex
        self._bus = bus
        self._lease = bus.settings.lease_seconds
        self._db = _Db(bus.path)
        self._next_topic = 0
        self._acks_since_compact = 0
        self._closed = False
        with self._db.write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO groups (topic, grp, acked_upto) VALUES (?, ?, 0)",
                [(t, group) for t in self.topics],
            )

    def poll(self, max_messages: int = 1, timeout: float = 1.0) -> list[Message]:
        if self._closed:
            raise RuntimeError("poll on a closed consumer")
        deadline = time.monotonic() + max(timeout, 0.0)
        sleep = _MIN_SLEEP
        while True:
            claimed = self._claim(max(1, max_messages))
            if claimed or time.monotonic() >= deadline:
                return claimed
            time.sleep(min(sleep, max(0.0, deadline - time.monotonic())))
            sleep = min(sleep * 2, _MAX_SLEEP)

    def _claim(self, limit: int) -> list[Message]:
        out: list[Message] = []
        now = time.time()
        # Rotate the starting topic so one busy topic cannot starve the others.
        order = self.topics[self._next_topic :] + self.topics[: self._next_topic]
        self._next_topic = (self._next_topic + 1) % max(1, len(self.topics))
        with self._db.write() as conn:
            for topic in order:
                if len(out) >= limit:
                    break
                (acked_upto,) = conn.execute(
                    "SELECT acked_upto FROM groups WHERE topic = ? AND grp = ?", (topic, self.group)
                ).fetchone()
                rows = conn.execute(
                    """SELECT m.id, m.topic, m.key, m.headers, m.value, m.created_at,
                              COALESCE(d.delivery_count, 0)
                       FROM messages m
                       LEFT JOIN deliveries d ON d.grp = ? AND d.message_id = m.id
                       WHERE m.topic = ? AND m.id > ?
                         AND (d.message_id IS NULL OR (d.acked = 0 AND d.lease_expires_at <= ?))
                       ORDER BY m.id LIMIT ?""",
                    (self.group, topic, acked_upto, now, limit - len(out)),
                ).fetchall()
                for *msg, count in rows:
                    conn.execute(
                        """INSERT INTO deliveries (grp, message_id, topic, claimed_by, lease_expires_at)
                           VALUES (?, ?, ?, ?, ?)
                           ON CONFLICT (grp, message_id) DO UPDATE SET
                               claimed_by = excluded.claimed_by,
                               lease_expires_at = excluded.lease_expires_at,
                               delivery_count = deliveries.delivery_count + 1""",
                        (self.group, msg[0], topic, self.member_id, now + self._lease),
                    )
                    out.append(_row_to_message((msg[0], msg[1], msg[2], msg[3], msg[4], msg[5]), count + 1))
        if any(m.delivery_count > 1 for m in out):
            log.info(
                "redelivering messages whose lease expired",
                extra={"group": self.group, "offsets": [m.offset for m in out if m.delivery_count > 1]},
            )
        return out

    def ack(self, message: Message) -> None:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET acked = 1 WHERE grp = ? AND message_id = ? AND acked = 0",
                (self.group, message.offset),
            )
            if cur.rowcount:
                _advance_watermark(conn, message.topic, self.group)
        self._acks_since_compact += 1
        if self._acks_since_compact >= _COMPACT_EVERY_ACKS:
            self._acks_since_compact = 0
            self._bus.compact([message.topic])

    def ack_many(self, messages: Sequence[Message]) -> None:
        """Every ack of the batch and one watermark move per topic, in one transaction."""
        if not messages:
            return
        moved: set[str] = set()
        with self._db.write() as conn:
            for message in messages:
                cur = conn.execute(
                    "UPDATE deliveries SET acked = 1 WHERE grp = ? AND message_id = ? AND acked = 0",
                    (self.group, message.offset),
                )
                if cur.rowcount:
                    moved.add(message.topic)
            for topic in sorted(moved):
                _advance_watermark(conn, topic, self.group)
        self._acks_since_compact += len(messages)
        if self._acks_since_compact >= _COMPACT_EVERY_ACKS:
            self._acks_since_compact = 0
            self._bus.compact(sorted({m.topic for m in messages}))

    def keep_alive(self, messages: Sequence[Message]) -> None:
        """The lease of each message this member still holds starts again (one transaction); one
        whose lease ran out and that another member claimed meanwhile stays that member's."""
        if not messages:
            return
        with self._db.write() as conn:
            conn.executemany(
                """UPDATE deliveries SET lease_expires_at = ?
                   WHERE grp = ? AND message_id = ? AND claimed_by = ? AND acked = 0""",
                [(time.time() + self._lease, self.group, m.offset, self.member_id) for m in messages],
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Leaving the group hands unacked claims back at once (like a Kafka rebalance) instead of
            # making the group wait for the lease to run out.
            with self._db.write() as conn:
                conn.execute(
                    "UPDATE deliveries SET lease_expires_at = 0 WHERE claimed_by = ? AND acked = 0",
                    (self.member_id,),
                )
        finally:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SqliteBus:
    """Durable, multi-process message bus in one SQLite file (see the module docstring)."""

    def __init__(self, url: str, settings: BusSettings | None = None) -> None:
        self.url = url
        self.settings = settings or BusSettings()
        self.path = sqlite_path(url)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _Db(self.path)
            with self._db.lock:
                self._db.conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailable(
                BUS_SETTING, mask_url(url), f"cannot open the bus file ({exc})", fix=self._fix()
            ) from exc

    @staticmethod
    def _fix() -> str:
        return f"point {BUS_SETTING} at a writable file, e.g. sqlite:////var/lib/keeneye/bus.db"

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
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO messages (topic, key, headers, value, created_at) VALUES (?, ?, ?, ?, ?)",
                (topic, raw_key, _encode_headers_json(raw_headers), bytes(value), time.time()),
            )

    def publish_many(self, topic: str, messages: Sequence[Outgoing]) -> None:
        """Every message in one transaction: all committed when this returns, or none."""
        rows = []
        for m in messages:
            raw_key = encode_key(m.key)
            raw_headers = encode_headers(m.headers)
            check_size(topic, m.value, raw_key, raw_headers, self.settings.max_message_bytes)
            rows.append((topic, raw_key, _encode_headers_json(raw_headers), bytes(m.value)))
        if not rows:
            return
        now = time.time()
        with self._db.write() as conn:
            conn.executemany(
                "INSERT INTO messages (topic, key, headers, value, created_at) VALUES (?, ?, ?, ?, ?)",
                [(*row, now) for row in rows],
            )

    def flush(self, timeout: float = 10.0) -> None:
        """Nothing to do: every publish is committed before it returns."""

    def subscribe(self, topics: Sequence[str], group: str) -> SqliteConsumer:
        return SqliteConsumer(self, topics, group)

    def lag(self, topic: str, group: str) -> int:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT acked_upto FROM groups WHERE topic = ? AND grp = ?", (topic, group)
            ).fetchone()
            upto = 0 if row is None else int(row[0])
            (pending,) = conn.execute(
                "SELECT COUNT(*) FROM messages WHERE topic = ? AND id > ?", (topic, upto)
            ).fetchone()
            (acked,) = conn.execute(
                """SELECT COUNT(*) FROM deliveries
                   WHERE grp = ? AND message_id > ? AND topic = ? AND acked = 1""",
                (group, upto, topic),
            ).fetchone()
        return int(pending) - int(acked)

    def ensure_topics(self, topics: Sequence[str]) -> None:
        """Topics need no creation on the SQLite bus."""

    def compact(self, topics: Sequence[str] | None = None) -> int:
        """Delete messages that every group subscribed to their topic has acked; returns the count.

        Topics no group has subscribed to yet keep everything (a group may still come for them).
        """
        deleted = 0
        with self._db.write() as conn:
            if topics is None:
                topics = [r[0] for r in conn.execute("SELECT DISTINCT topic FROM groups")]
            for topic in topics:
                (floor,) = conn.execute(
                    "SELECT MIN(acked_upto) FROM groups WHERE topic = ?", (topic,)
                ).fetchone()
                if floor:
                    cur = conn.execute("DELETE FROM messages WHERE topic = ? AND id <= ?", (topic, floor))
                    deleted += max(cur.rowcount, 0)
        if deleted:
            log.debug("compacted bus", extra={"deleted": deleted, "path": str(self.path)})
        return deleted

    def check(self) -> BackendHealth:
        url = mask_url(self.url)
        try:
            with self._db.write() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS keeneye_check (at REAL)")
                conn.execute("DELETE FROM keeneye_check")
                conn.execute("INSERT INTO keeneye_check VALUES (?)", (time.time(),))
        except sqlite3.Error as exc:
            return BackendHealth(
                BUS_SETTING, url, False, version=sqlite3.sqlite_version, detail=str(exc), fix=self._fix()
            )
        return BackendHealth(
            BUS_SETTING, url, True, version=f"SQLite {sqlite3.sqlite_version}", detail=f"file {self.path}"
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
