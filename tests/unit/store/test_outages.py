"""Which failures are a dependency being down: real exceptions from real drivers, classified."""

from __future__ import annotations

import errno
import socket
import sqlite3
import time
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


def test_a_stalled_s3_server_fails_after_attempts_times_the_read_timeout() -> None:
    """A server that accepts the connection and never answers (a stalled proxy, a hung MinIO): the
    request fails as object_store_unavailable once every attempt has waited s3.read_timeout_seconds,
    instead of holding its caller for boto3's 60 s."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.listen(8)
        store = S3ObjectStore(
            "bucket",
            s3=S3Settings(
                endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
                read_timeout_seconds=0.3,
                max_attempts=2,
                create_bucket=False,
                access_key_id="test",
                secret_access_key="test",
            ),
            max_object_bytes=1024,
        )
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            store.put("a.jpg", b"x")
        waited = time.monotonic() - started
    assert outage_reason(info.value) == "object_store_unavailable"
    assert 0.6 <= waited < 30  # two attempts of 0.3 s each, far from the old 3 × 30 s


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
