"""A leader lock: at most one process per database holds a named lock at a time.

Two scheduler replicas (docs/deploy.md) must never both run a round — both would start the same
retrain, move the same alias, fire the same notification. The replica that holds the lock works;
the other stands by and takes over as soon as the holder is gone:

* **PostgreSQL**: a session-level advisory lock (``pg_try_advisory_lock``) on a connection kept for
  that purpose. The server releases it when that session ends, so a crashed, killed or partitioned
  holder frees it without any timeout; a holder that lost its connection notices at its next check
  and stands by.
* **SQLite** (one host by nature): an exclusive ``flock`` on ``<database file>.<name>.lock`` beside
  the database file, released by the kernel when the holding process dies.

No table and no migration: the lock lives exactly as long as its holder.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from pathlib import Path

from sqlalchemy import Connection, create_engine, func, select
from sqlalchemy.pool import NullPool

from keeneye.store.engine import CONNECT_TIMEOUT_S, engine_url

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name``, the same in every process."""
    digest = hashlib.sha256(f"keeneye-leader:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LeaderLock:
    """``try_acquire()`` never blocks: True while this process holds the lock (call it every round)."""

    def __init__(self, database_url: str, name: str) -> None:
        self.name = name
        self._url = engine_url(database_url)
        self.backend = self._url.get_backend_name()
        self._conn: Connection | None = None
        self._fd: int | None = None
        if self.backend == "sqlite":
            assert self._url.database is not None  # engine_url refused a URL without one
            self.path: Path | None = Path(f"{Path(self._url.database).expanduser()}.{name}.lock")
        else:
            self.path = None
            self._engine = create_engine(
                self._url,
                poolclass=NullPool,  # one session of our own: the lock is that session's
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": f"keeneye-{name}"},
            )

    @property
    def held(self) -> bool:
        return self._fd is not None or self._conn is not None

    def try_acquire(self) -> bool:
        """Take the lock if free, confirm it if held; False when another process holds it (or the
        database cannot be reached: no one may lead who cannot prove it)."""
        if self.backend == "sqlite":
            return self._try_file()
        return self._try_advisory()

    def _try_file(self) -> bool:
        if self._fd is not None:
            return True
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def _try_advisory(self) -> bool:
        if self._conn is not None:
            try:  # still our session? (a restarted server or a cut connection ends it, and the lock)
                self._conn.execute(select(1))
                self._conn.commit()
                return True
            except Exception:
                log.warning("leader lock %s: lost the database session; standing by", self.name)
                self._drop()
        try:
            conn = self._engine.connect()
        except Exception as exc:
            log.warning("leader lock %s: database unreachable (%s)", self.name, exc)
            return False
        try:
            got = bool(conn.execute(select(func.pg_try_advisory_lock(lock_key(self.name)))).scalar())
            conn.commit()  # the lock is the session's, not the transaction's: no idle transaction kept
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken: nothing left to release
                log.debug("leader lock %s: closing a broken session failed", self.name, exc_info=True)
            self._conn = None

    def release(self) -> None:
        """Give the lock up (a stopping scheduler lets its stand-by take over at once)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.execute(select(func.pg_advisory_unlock(lock_key(self.name))))
                self._conn.commit()
            except Exception:  # the session is gone, and the lock with it
                log.debug("leader lock %s: unlock failed", self.name, exc_info=True)
            self._drop()

    def close(self) -> None:
        self.release()
        if self.backend != "sqlite":
            self._engine.dispose()


__all__ = ["LeaderLock", "lock_key"]
