"""The SQL side of a backup: consistent copies of the embedded SQLite databases and what a backup reads
back from them (see docs/backup.md; the orchestration is :mod:`keeneye.scaling.backup`).

- :func:`copy_sqlite` copies a live database with SQLite's online backup API: one read transaction
  over the whole file, so the copy is the database as of one instant while ``keeneye up`` goes on
  writing (WAL lets the writers continue). The copy is left in rollback-journal mode, one
  self-contained file with no ``-wal`` beside it.
- A backup's own files are read with ``mode=ro&immutable=1``: nothing is written into the backup (a
  WAL switch or a ``-shm`` file would change the bytes its manifest hashes).
- :func:`rebase_mlflow_artifacts` rewrites the absolute ``file://`` artifact locations MLflow keeps in
  its SQLite store, so a registry restored into a new home reads its own artifacts, not the old ones.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from keeneye.domain import KeeneyeError

RESULTS_TABLE_OBSERVATIONS = "observations"
# MLflow's columns that hold an absolute artifact URI (tracking and registry tables of MLflow 2 and 3);
# a table or column an MLflow version lacks is skipped.
MLFLOW_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


@dataclass(frozen=True)
class PredictedObject:
    """The stored input of an observation that has at least one prediction: its key and its recorded
    SHA-256 (``observations.content_hash``, the hash of exactly the stored bytes) and size."""

    object_key: str
    content_hash: str
    size_bytes: int


@dataclass(frozen=True)
class RegisteredVersion:
    """One model version of a backed-up MLflow store and where its artifacts were."""

    name: str
    version: str
    source: str


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///relative.db`` / ``sqlite:////absolute.db`` URL; None for another scheme."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser().absolute()


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the file: no locks, no ``-shm``, no journal (the file is static)."""
    if not path.is_file():
        raise KeeneyeError(f"{path} does not exist", fix="check the backup's path")
    uri = f"file:{quote(str(path.absolute()))}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    conn = _read_only(path)
    try:
        yield conn
    finally:
        conn.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_sqlite(source: Path, target: Path) -> None:
    """Copy the live SQLite database ``source`` to the new file ``target`` with the online backup API.

    Raises :class:`KeeneyeError` when the source is missing or is not a database, or the target exists.
    """
    if not source.is_file():
        raise KeeneyeError(f"{source} does not exist", fix="check the setting that names it")
    if target.exists():
        raise KeeneyeError(f"{target} already exists", fix="back up into a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            # pages=-1: the whole file in one step, in one read transaction. Stepping in chunks would
            # restart the copy every time a writer commits in between, forever on a busy system.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
            dst.commit()
        finally:
            dst.close()
    except sqlite3.DatabaseError as exc:
        target.unlink(missing_ok=True)
        raise KeeneyeError(f"cannot copy {source}: {exc}", fix="check that it is a SQLite database") from exc
    finally:
        src.close()
    _fsync(target)


def integrity_problems(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` of a database file; [] when SQLite finds it sound."""
    try:
        with _reading(path) as conn:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    return [] if rows == ["ok"] else rows


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return sorted(str(r[0]) for r in rows)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f'PRAGMA table_info("{table}")')}


def table_counts(path: Path) -> dict[str, int]:
    """Rows per table of a database file."""
    with _reading(path) as conn:
        return {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in _tables(conn)}  # noqa: S608


def alembic_revision(path: Path) -> str | None:
    """The Alembic revision a results-database file is at; None when it was never migrated."""
    with _reading(path) as conn:
        if "alembic_version" not in _tables(conn):
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def known_revision(revision: str) -> bool:
    """Whether this keeneye's migrations know ``revision`` (a newer keeneye's are unknown to it)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory(str(resources.files("keeneye.store") / "migrations"))
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


def predicted_objects(path: Path) -> list[PredictedObject]:
    """The stored input of every observation with a prediction, in a results-database file, by key."""
    with _reading(path) as conn:
        rows = conn.execute(
            "SELECT DISTINCT o.object_key, o.content_hash, o.size_bytes FROM observations o "
            "WHERE o.object_key IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM predictions p WHERE p.observation_id = o.id) "
            "ORDER BY o.object_key"
        ).fetchall()
    return [PredictedObject(str(key), str(digest), int(size)) for key, digest, size in rows]


def registered_versions(path: Path) -> list[RegisteredVersion]:
    """Every model version of an MLflow SQLite store file with its artifact source."""
    with _reading(path) as conn:
        if "model_versions" not in _tables(conn):
            return []
        rows = conn.execute(
            "SELECT name, version, coalesce(source, '') FROM model_versions ORDER BY name, version"
        ).fetchall()
    return [RegisteredVersion(str(name), str(version), str(source)) for name, version, source in rows]


def artifact_locations(path: Path) -> list[str]:
    """The distinct artifact locations of an MLflow SQLite store's experiments."""
    with _reading(path) as conn:
        if "experiments" not in _tables(conn):
            return []
        rows = conn.execute(
            "SELECT DISTINCT artifact_location FROM experiments WHERE artifact_location IS NOT NULL"
        ).fetchall()
    return sorted(str(r[0]) for r in rows)


def rebase_mlflow_artifacts(path: Path, old_root: str, new_root: str) -> int:
    """In the MLflow SQLite store ``path`` (not in use), point every artifact URI under ``old_root``
    at the same place under ``new_root``; returns the number of values changed."""
    old, new = old_root.rstrip("/"), new_root.rstrip("/")
    changed = 0
    conn = sqlite3.connect(path)
    try:
        with conn:
            for table, column in MLFLOW_ARTIFACT_COLUMNS:
                if table not in _tables(conn) or column not in _columns(conn, table):
                    continue
                # substr, not LIKE: a path may hold '%' or '_'.
                cursor = conn.execute(
                    f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '  # noqa: S608
                    f'WHERE "{column}" = ? OR substr("{column}", 1, ?) = ?',
                    (new, len(old) + 1, old, len(old) + 1, old + "/"),
                )
                changed += cursor.rowcount
    finally:
        conn.close()
    return changed


__all__ = [
    "MLFLOW_ARTIFACT_COLUMNS",
    "PredictedObject",
    "RegisteredVersion",
    "alembic_revision",
    "artifact_locations",
    "copy_sqlite",
    "integrity_problems",
    "known_revision",
    "predicted_objects",
    "rebase_mlflow_artifacts",
    "registered_versions",
    "sqlite_file",
    "table_counts",
]
