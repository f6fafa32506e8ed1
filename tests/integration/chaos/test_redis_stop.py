"""The Redis cache (a private ``redis-server``) stopped for 5 s and started again under load.

The cache makes things fast and never fails them: no request is refused while it is down (every
answer is accepted, none waits on Redis), it is used again once back, and every acknowledged
observation ends ``done`` with exactly one prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from keeneye.settings import Settings
from tests.integration.chaos.chaos_services import PrivateRedis
from tests.integration.chaos.chaos_support import (
    audit,
    check_answers,
    prepare,
    report,
    storm,
)
from tests.integration.test_stream_reliability import Workers
from tests.unit.stream.stream_support import stream_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_redis_stopped_nothing_refused_and_nothing_lost_or_doubled(
    tmp_path: Path, private_redis: PrivateRedis, workers: Callable[[Settings, str], Workers]
) -> None:
    import redis

    settings, name = stream_settings(tmp_path)
    settings = settings.model_copy(update={"cache_url": private_redis.url})
    db, pool = prepare(settings, name, tmp_path, workers, KEENEYE_CACHE_URL=private_redis.url)

    load, outage = storm(
        settings,
        name,
        take_away=private_redis.stop,
        give_back=private_redis.start,
        outage_s=5.0,
        logs=pool.logs,
        after_s=7.0,  # past the 5 s a cache stays out of the way after a failure
    )
    check_answers(load, outage, reasons=set(), must_refuse=False)  # no 503 at all
    figures = audit(db, name, {"api": load.accepted()}, 40, pool.logs)
    # Back in use: answers given after the restart were cached in the new (empty) Redis.
    client = redis.Redis.from_url(private_redis.url)
    cached = len(client.keys("keeneye:pred:*"))
    client.close()
    assert cached > 0
    report("redis stop", load, outage, {**figures, "cached_after": cached})
