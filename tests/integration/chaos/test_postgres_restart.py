"""PostgreSQL (a private cluster) stopped for 4 s and started again under a steady load through the
API and the (SQLite) bus, whose external observations the worker records itself.

While it is down both routes answer 503 ``database_unavailable`` with Retry-After (never a 500 or a
hang); the connection pool reconnects by itself once it is back; every acknowledged observation ends
``done`` with exactly one prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keeneye.settings import Settings
from tests.integration.chaos.chaos_services import PrivatePostgres
from tests.integration.chaos.chaos_support import (
    audit,
    bus_producer,
    check_answers,
    prepare,
    report,
    storm,
)
from tests.integration.test_stream_reliability import Workers
from tests.unit.stream.stream_support import stream_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_postgres_restart_503_then_recovers_and_nothing_is_lost_or_doubled(
    tmp_path: Path, private_postgres: PrivatePostgres, workers: Callable[[Settings, str], Workers]
) -> None:
    pg = private_postgres
    settings, name = stream_settings(tmp_path)
    settings = settings.model_copy(update={"database_url": pg.url})
    db, pool = prepare(settings, name, tmp_path, workers, KEENEYE_DATABASE_URL=pg.url)

    def logs() -> str:
        return pool.logs() + "\n--- postgres\n" + pg.logs()

    with bus_producer(settings, name) as through_bus:
        load, outage = storm(settings, name, take_away=pg.stop, give_back=pg.start, outage_s=4.0, logs=logs)
    check_answers(load, outage, reasons={"database_unavailable"}, must_refuse=True)
    figures = audit(db, name, {"api": load.accepted(), "bus": set(through_bus)}, 40, logs)
    report("postgres restart", load, outage, {**figures, "through_bus": len(through_bus)})
