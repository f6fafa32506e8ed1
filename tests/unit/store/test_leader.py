"""The leader lock the scheduler replicas share (keeneye.store.leader), on SQLite and PostgreSQL:
one holder at a time; a second process stands by; release or the holder's death hands it over."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from keeneye.store.engine import engine_url
from keeneye.store.leader import LeaderLock


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'keeneye.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def locks(url: str) -> Iterator[tuple[LeaderLock, LeaderLock]]:
    a, b = LeaderLock(url, "scheduler"), LeaderLock(url, "scheduler")
    yield a, b
    a.close()
    b.close()


def test_one_holder_at_a_time_and_release_hands_over(locks: tuple[LeaderLock, LeaderLock]) -> None:
    a, b = locks
    assert a.try_acquire() is True
    assert b.try_acquire() is False
    assert a.try_acquire() is True  # confirming is idempotent
    assert b.try_acquire() is False
    a.release()
    assert b.try_acquire() is True
    assert a.try_acquire() is False
    assert (a.held, b.held) == (False, True)


def test_other_names_do_not_conflict(url: str) -> None:
    a, b = LeaderLock(url, "scheduler"), LeaderLock(url, "other")
    try:
        assert a.try_acquire() and b.try_acquire()
    finally:
        a.close()
        b.close()


def test_a_killed_holder_frees_the_lock(url: str) -> None:
    """kill -9 of the holding process: the kernel (flock) or the server (session end) frees it."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from keeneye.store.leader import LeaderLock
                lock = LeaderLock({url!r}, "scheduler")
                assert lock.try_acquire()
                print("held", flush=True)
                time.sleep(120)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        standby = LeaderLock(url, "scheduler")
        assert standby.try_acquire() is False
        holder.kill()
        holder.wait(timeout=30)
        # PostgreSQL ends the session when the client's socket closes; allow the server a moment
        for _ in range(100):
            if standby.try_acquire():
                break
            time.sleep(0.05)
        assert standby.held
        standby.close()
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.integration
def test_postgres_holder_that_loses_its_session_stands_by(postgres_url: str) -> None:
    a, b = LeaderLock(postgres_url, "scheduler"), LeaderLock(postgres_url, "scheduler")
    try:
        assert a.try_acquire()
        admin = create_engine(engine_url(postgres_url))
        with admin.connect() as conn:  # the server cuts a's session (a restart, a proxy timeout)
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'keeneye-scheduler' AND datname = current_database()"
                )
            )
            conn.commit()
        admin.dispose()
        assert b.try_acquire() is True
        assert a.try_acquire() is False  # a noticed, and b holds it now
        assert not a.held
    finally:
        a.close()
        b.close()
