"""Fixtures of the chaos tests: private dependencies to take away (``chaos_services``), worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import services
from tests.integration.chaos.chaos_services import PrivatePostgres, PrivateRedis, SmallDisk, TcpProxy
from tests.integration.test_stream_reliability import workers as workers  # the fixture

__all__ = ["workers"]


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.remove()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def s3_proxy(s3_server: services.S3Server) -> Iterator[TcpProxy]:
    host, port = s3_server.endpoint_url.removeprefix("http://").rsplit(":", 1)
    proxy = TcpProxy((host, int(port)))
    proxy.restore()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "small-disk")
    try:
        yield disk
    finally:
        disk.unmount()
