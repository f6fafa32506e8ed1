"""Which failures are a dependency being down: real exceptions from real drivers, classified."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from keeneye.domain import BackendUnavailable, ObservationStatus
from keeneye.settings import S3Settings
from keeneye.store import ResultsDB, StorageFull, outage_of, outage_reason, retry_after_seconds
from keeneye.store.s3_objects import S3ObjectStore
from tests.services import free_port


def _closed_postgres_url() -> str:
    return f"postgresql+psycopg://keeneye:secret@127.0.0.1:{free_port()}/keeneye"


def test_a_database_that_does_not_answer_is_database_unavailable() -> None:
    url = _closed_postgres_url()
    with pytest.raises(Exception) as info:
        ResultsDB(url).get_observation("x")
    outage = outage_of(info.value, database_url=url)
    assert outage is not None
    assert outage_reason(outage) == "database_unavailable"
    assert retry_after_seconds(outage) == 5
    assert outage.setting == "KEENEYE_DATABASE_URL"
    assert "refused" in outage.message.lower()
    assert "secret" not in outage.message  # the URL is shown masked


def test_a_locked_sqlite_database_is_database_unavailable(tmp_path: Path) -> None:
    db = ResultsDB(f"sqlite:///{tmp_path / 'k.db'}")
    db.ensure_schema()
    short = db.with_lock_timeout(0.05)
    lock = sqlite3.connect(tmp_path / "k.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Exception) as info:
            short.set_status("x", ObservationStatus.done)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    outage = outage_of(info.value)
    assert outage is not None and outage_reason(outage) == "database_unavailable"
    assert "locked" in outage.message


def test_a_full_disk_is_storage_full() -> None:
    with pytest.raises(OSError) as info, open("/dev/full", "wb", buffering=0) as full:
        full.write(b"x")
    assert info.value.errno == errno.ENOSPC
    outage = outage_of(info.value)
    assert isinstance(outage, StorageFull)
    assert outage_reason(outage) == "storage_full"
    assert retry_after_seconds(outage) == 30
    assert outage.fix is not None and "free disk space" in outage.fix


def test_an_unreachable_s3_endpoint_is_object_store_unavailable() -> None:
    store = S3ObjectStore(
        "bucket",
        s3=S3Settings(endpoint_url=f"http://127.0.0.1:{free_port()}"),
        max_object_bytes=1024,
    )
    with pytest.raises(BackendUnavailable) as info:
        store.put("a.jpg", b"x")
    outage = outage_of(info.value)
    assert outage is info.value
    assert outage_reason(outage) == "object_store_unavailable"
    assert retry_after_seconds(outage) == 5


@pytest.mark.parametrize(
    "exc",
    [
        IntegrityError("INSERT …", {}, sqlite3.IntegrityError("UNIQUE constraint failed")),
        FileNotFoundError(errno.ENOENT, "No such file", "/x"),
        PermissionError(errno.EACCES, "Permission denied", "/x"),
        ValueError("a bug"),
    ],
)
def test_what_is_not_an_outage_stays_a_failure(exc: BaseException) -> None:
    assert outage_of(exc) is None
