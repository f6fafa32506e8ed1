"""The results database's connection: URL handling, the engine, sessions, Alembic and health.

One class, :class:`Database`, serves both deployments — SQLite (embedded default) and PostgreSQL
(scaled) — chosen by ``KEENEYE_DATABASE_URL``. The repositories of ``keeneye.store`` build on it;
:func:`insert_ignoring_conflicts` is the one dialect-specific ``INSERT … ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, CursorResult, Result, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from keeneye.domain import BackendHealth, ConfigError
from keeneye.settings import mask_url, split_url
from keeneye.store.schema import Base

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger(__name__)

SETTING = "KEENEYE_DATABASE_URL"
SCHEMES = {
    "sqlite": "embedded file",
    "postgresql+psycopg": "PostgreSQL",
    "postgresql": "PostgreSQL (psycopg 3)",
}
CONNECT_TIMEOUT_S = 3
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any constant works; it only has to be the same in every keeneye process (serialises migrations).
_PG_MIGRATION_LOCK = 0x6B65656E_657965


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# URL handling and engine
# --------------------------------------------------------------------------------------------------


def engine_url(url: str) -> URL:
    """Validate ``KEENEYE_DATABASE_URL`` and return the SQLAlchemy URL it selects.

    ``postgresql://`` means psycopg 3 (the only PostgreSQL driver keeneye ships with). Raises
    :class:`ConfigError` for an unknown scheme, a malformed URL, or SQLite without a file path.
    """
    scheme, _ = split_url(SETTING, url, SCHEMES)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(SETTING, f"malformed URL {mask_url(url)!r}", fix=_fix_scheme()) from exc
    if scheme == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if scheme == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ConfigError(
                SETTING,
                f"{mask_url(url)!r} names no database file (results must survive a restart)",
                fix="use sqlite:////absolute/path/keeneye.db or sqlite:///relative/path.db",
            )
    return parsed


def _fix_scheme() -> str:
    return "use one of: " + ", ".join(f"{s}://… ({what})" for s, what in SCHEMES.items())


def _on_sqlite_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of
        # failing with "database is locked"; SQLite leaves foreign keys off unless asked.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL (not WAL's usual NORMAL): an acknowledged observation survives a power loss too.
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        assert url.database is not None  # engine_url refused a URL without one
        folder = Path(url.database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                SETTING,
                f"cannot create the folder {folder} ({exc.strerror})",
                fix="point it at a writable path",
            ) from exc
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,  # survive a PostgreSQL restart or an idle connection cut by a proxy
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "keeneye"},
    )


def _driver_message(exc: BaseException) -> str:
    """The driver's own error text on one line (no SQLAlchemy boilerplate, no traceback)."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = " ".join(str(orig).split())
    return message or type(orig).__name__


def rowcount(result: Result[Any]) -> int:
    """Rows an INSERT/UPDATE/DELETE touched (``Session.execute`` types them as a plain ``Result``)."""
    return cast(CursorResult[Any], result).rowcount


def _fix_for(message: str, backend: str) -> str:
    lowered = message.lower()
    if backend == "sqlite":
        return f"make the database file writable or point {SETTING} at another path"
    if "password" in lowered or "authentication" in lowered or "role" in lowered:
        return f"correct the user and password in {SETTING}"
    if "does not exist" in lowered and "database" in lowered:
        return f"create the database (createdb) or correct its name in {SETTING}"
    return f"start PostgreSQL (make services) or correct host and port in {SETTING}"


def insert_ignoring_conflicts(
    session: Session, row_type: type[Base], rows: Sequence[Mapping[str, Any]], conflict: Sequence[str]
) -> int:
    """``INSERT … ON CONFLICT (conflict) DO NOTHING`` of ``rows`` on either backend; how many went in.

    The rows are dictionaries of ``row_type``'s attributes. One statement for all of them (SQLAlchemy
    batches it under each backend's bound-parameter limit); a row that meets an existing one on the
    ``conflict`` columns — a redelivery — is left out, and so is a duplicate within ``rows``.
    ``RETURNING`` counts what went in (a driver's rowcount is unreliable for ``ON CONFLICT``).
    """
    if not rows:
        return 0
    insert = sqlite_dialect.insert if session.get_bind().dialect.name == "sqlite" else postgresql.insert
    keys = list(row_type.__mapper__.primary_key)
    stmt = insert(row_type).on_conflict_do_nothing(index_elements=list(conflict)).returning(*keys)
    if len(rows) == 1:
        return len(session.execute(stmt.values(**rows[0])).all())
    return len(session.execute(stmt, [dict(r) for r in rows]).all())


# --------------------------------------------------------------------------------------------------
# The connection
# --------------------------------------------------------------------------------------------------


class Database:
    """A connection to the results database on SQLite or PostgreSQL; thread-safe, one per process."""

    def __init__(self, url: str) -> None:
        self.url = url  # as configured; show it with mask_url
        self.sa_url = engine_url(url)
        self.backend = self.sa_url.get_backend_name()  # "sqlite" | "postgresql"
        self.engine = _create_engine(self.sa_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._at_head = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({mask_url(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def set_busy_timeout(self, seconds: float) -> None:
        """SQLite: let writes on this handle's new connections wait at most ``seconds`` for a lock."""
        millis = max(1, int(seconds * 1000))

        def short_busy_timeout(dbapi_connection: sqlite3.Connection, _record: object) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout={millis}")
            finally:
                cursor.close()

        # Registered after the engine's own connect hook (30 s), so it wins.
        event.listen(self.engine, "connect", short_busy_timeout)

    # ------------------------------------------------------------------ sessions

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits when the block succeeds, rolls back when it raises."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    # ------------------------------------------------------------------ migrations

    def _alembic_config(self, connection: Connection | None = None) -> AlembicConfig:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("keeneye.store") / "migrations"))
        # "%" is ConfigParser interpolation; URLs may contain percent-escapes in passwords.
        cfg.set_main_option(
            "sqlalchemy.url", self.sa_url.render_as_string(hide_password=False).replace("%", "%%")
        )
        cfg.attributes["connection"] = connection
        return cfg

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        assert head is not None
        return head

    def current_revision(self) -> str | None:
        """The revision the database is at; ``None`` for a database never migrated."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to ``revision``; safe to run from several processes at once."""
        from alembic import command

        with self.engine.connect() as conn:
            # Serialise concurrent upgrades and make the migration all-or-nothing on both backends.
            if self.backend == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.begin()
                conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            try:
                command.upgrade(self._alembic_config(conn), revision)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        log.info("results database migrated", extra={"url": mask_url(self.url), "revision": revision})
        self._at_head = False

    def ensure_schema(self) -> None:
        """Upgrade to head unless already there (cheap after the first call in a process)."""
        if self._at_head:
            return
        head = self.head_revision()
        if self.current_revision() != head:
            self.upgrade("head")
        self._at_head = True

    # ------------------------------------------------------------------ health

    def check(self) -> BackendHealth:
        """Reachability and server version for ``keeneye doctor``; never raises for a down server."""
        shown = mask_url(self.url)
        try:
            with self.engine.connect() as conn:
                if self.backend == "sqlite":
                    version = f"SQLite {sqlite3.sqlite_version}"
                else:
                    server = conn.exec_driver_sql("SHOW server_version").scalar_one()
                    version = f"PostgreSQL {str(server).split()[0]}"
                from alembic.runtime.migration import MigrationContext

                revision = MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as exc:
            message = _driver_message(exc)
            return BackendHealth(SETTING, shown, False, detail=message, fix=_fix_for(message, self.backend))
        head = self.head_revision()
        if revision == head:
            detail = f"schema at revision {revision}"
        else:
            detail = f"schema at revision {revision or 'none'}, code expects {head}; run `keeneye db upgrade`"
        return BackendHealth(SETTING, shown, True, version=version, detail=detail)

    # ------------------------------------------------------------------ observations


__all__ = [
    "SCHEMES",
    "SETTING",
    "Database",
    "engine_url",
    "insert_ignoring_conflicts",
    "rowcount",
    "utcnow",
]
