"""The cache contract, proved on every backend (memory; Redis for real), plus per-backend details."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keeneye.domain import ConfigError
from keeneye.settings import CacheSettings, Settings
from keeneye.store.cache import Cache, open_cache
from keeneye.store.memory_cache import MemoryCache
from tests.services import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class CacheUnderTest:
    cache: Cache
    wait: Callable[[float], None]  # let time pass: a fake clock for memory, real sleep for Redis


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheUnderTest]:
    if request.param == "memory":
        clock = FakeClock()
        yield CacheUnderTest(MemoryCache(max_entries=100, ttl_seconds=60, clock=clock), clock.advance)
        return
    url = request.getfixturevalue("redis_url")
    cache = open_cache(Settings(home=tmp_path, cache_url=url, cache=CacheSettings(ttl_seconds=60)))
    yield CacheUnderTest(cache, time.sleep)
    cache.close()


@pytest.fixture
def cache(subject: CacheUnderTest) -> Cache:
    return subject.cache


def test_cache_satisfies_protocol(cache: Cache) -> None:
    assert isinstance(cache, Cache)


def test_round_trip(cache: Cache) -> None:
    cache.set("pred:abc", b'{"label": "ok"}')
    cache.set("empty", b"")

    assert cache.get("pred:abc") == b'{"label": "ok"}'
    assert cache.get("empty") == b""


def test_hashes_are_replaced_whole(cache: Cache) -> None:
    assert cache.get_hash("field:a") == {}
    cache.set_hash("field:a", {"flight": "f1", "ndvi_mean": "0.61", "disease_ha": "0.35"})
    cache.set_hash("field:a", {"flight": "f2", "ndvi_mean": "0.58"})  # a field not given is gone
    cache.set_hash("field:b", {})
    assert cache.get_hash("field:a") == {"flight": "f2", "ndvi_mean": "0.58"}
    assert cache.get_hash("field:b") == {}


def test_miss_is_none(cache: Cache) -> None:
    assert cache.get("never-set") is None


def test_delete(cache: Cache) -> None:
    cache.set("k", b"v")
    cache.set("other", b"stays")

    cache.delete("k")
    cache.delete("k")  # twice is fine
    cache.delete("never-set")

    assert cache.get("k") is None
    assert cache.get("other") == b"stays"


def test_overwrite(cache: Cache) -> None:
    cache.set("k", b"one")
    cache.set("k", b"two")

    assert cache.get("k") == b"two"


def test_entry_ttl_expires(subject: CacheUnderTest) -> None:
    cache = subject.cache
    cache.set("short", b"1", ttl_seconds=0.2)
    cache.set("default", b"2")  # 60 s

    assert cache.get("short") == b"1"
    subject.wait(0.4)

    assert cache.get("short") is None
    assert cache.get("default") == b"2"


def test_overwrite_resets_ttl(subject: CacheUnderTest) -> None:
    cache = subject.cache
    cache.set("k", b"old", ttl_seconds=0.2)
    cache.set("k", b"new", ttl_seconds=30)
    subject.wait(0.4)

    assert cache.get("k") == b"new"


def test_hit_and_miss_counters(cache: Cache) -> None:
    cache.get("a")
    cache.set("a", b"1")
    cache.get("a")
    cache.get("a")
    cache.get("b")

    assert (cache.hits, cache.misses) == (2, 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize("ttl", [0, -1.0])
def test_non_positive_ttl_is_a_programming_error(cache: Cache, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_seconds must be > 0"):
        cache.set("k", b"1", ttl_seconds=ttl)


def test_check_reports_reachable(cache: Cache) -> None:
    health = cache.check()

    assert health.reachable is True
    assert health.setting == "KEENEYE_CACHE_URL"
    assert health.version != ""


# --------------------------------------------------------------------------------------------------
# Memory details
# --------------------------------------------------------------------------------------------------


def test_memory_default_ttl_comes_from_settings() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=10, ttl_seconds=60, clock=clock)
    cache.set("k", b"1")

    clock.advance(59.9)
    assert cache.get("k") == b"1"
    clock.advance(0.1)
    assert cache.get("k") is None


def test_memory_evicts_least_recently_used() -> None:
    cache = MemoryCache(max_entries=2, ttl_seconds=60, clock=FakeClock())
    cache.set("a", b"1")
    cache.set("b", b"2")
    assert cache.get("a") == b"1"  # a is now more recent than b

    cache.set("c", b"3")

    assert len(cache) == 2
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (b"1", b"3")

    cache.set("a", b"1'")  # writing refreshes too: c is now the oldest
    cache.set("d", b"4")
    assert (cache.get("c"), cache.get("a"), cache.get("d")) == (None, b"1'", b"4")


def test_memory_expired_entries_free_their_slot() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=2, ttl_seconds=60, clock=clock)
    cache.set("a", b"1", ttl_seconds=1)
    clock.advance(2)

    assert cache.get("a") is None
    assert len(cache) == 0


def test_memory_check_and_close() -> None:
    cache = MemoryCache(max_entries=5, ttl_seconds=60)
    cache.set("a", b"1")

    assert cache.check().detail == "1 of 5 entries, in this process only"
    cache.close()
    assert cache.get("a") is None


def test_open_cache_default_is_memory_with_settings(settings: Settings) -> None:
    tuned = settings.model_copy(update={"cache": CacheSettings(max_entries=7, ttl_seconds=9)})

    cache = open_cache(tuned)

    assert isinstance(cache, MemoryCache)
    assert (cache.url, cache.max_entries, cache.ttl_seconds) == ("memory://", 7, 9.0)


@pytest.mark.parametrize("url", ["memcached://host:11211", "nothing", "redis://host:port/0", "redis://[::1"])
def test_unusable_cache_urls_raise_config_error_naming_the_setting(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_cache(Settings(home=tmp_path, cache_url=url))
    assert caught.value.setting == "KEENEYE_CACHE_URL"


# --------------------------------------------------------------------------------------------------
# Redis details
# --------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_redis_keys_are_prefixed_and_carry_the_ttl(redis_url: str, tmp_path: Path) -> None:
    import redis

    cache = open_cache(Settings(home=tmp_path, cache_url=redis_url, cache=CacheSettings(ttl_seconds=60)))
    raw = redis.Redis.from_url(redis_url)
    try:
        cache.set("k", b"v")
        ttl_ms = raw.pttl("keeneye:k")
        assert raw.get("keeneye:k") == b"v"
        assert 59_000 < ttl_ms <= 60_000
        assert raw.exists("k") == 0
    finally:
        raw.close()
        cache.close()


@pytest.mark.integration
def test_redis_check_reports_the_server_version(redis_url: str, tmp_path: Path) -> None:
    import re

    cache = open_cache(Settings(home=tmp_path, cache_url=redis_url))
    try:
        health = cache.check()
    finally:
        cache.close()

    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", health.version)
    assert health.url == redis_url


def test_redis_down_never_fails_a_request(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    from keeneye.store.redis_cache import RedisCache

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    cache = RedisCache(url, ttl_seconds=60)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="keeneye.store.redis_cache"):
        assert cache.get("k") is None
        cache.set("k", b"v")
        cache.delete("k")
        assert cache.get("k") is None
    elapsed = time.monotonic() - started

    health = cache.check()
    cache.close()

    assert elapsed < 3
    assert (cache.hits, cache.misses) == (0, 2)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # once per outage
    assert health.reachable is False
    assert "KEENEYE_CACHE_URL" in health.fix
    assert "Redis not reachable" in health.detail
    assert "s3cret" not in cache.url and "s3cret" not in health.url
