"""Cache contract: in-process LRU with TTL (``memory://``) or Redis (``redis://``).

Values are bytes; callers serialise (JSON) themselves. A cache never raises on a miss or on a backend
hiccup during ``get`` (it logs and answers ``None``): the cache makes things fast, never fails them.

Hashes (``set_hash`` / ``get_hash``) are the feature store's mirror of what the results DB holds
(a field's latest flight, :mod:`keeneye.fields`): string fields, no expiry, replaced as a whole;
the DB stays the record, so a lost hash is rebuilt by the next write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from keeneye.domain import BackendHealth, ConfigError
from keeneye.settings import Settings, split_url


@runtime_checkable
class Cache(Protocol):
    url: str

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        """Store ``value``; ``ttl_seconds`` None means the configured default."""
        ...

    def delete(self, key: str) -> None: ...

    def set_hash(self, key: str, values: Mapping[str, str]) -> None:
        """Replace the hash at ``key`` with ``values`` (the feature store: no expiry)."""
        ...

    def get_hash(self, key: str) -> dict[str, str]:
        """The hash at ``key``; ``{}`` when there is none or the backend is down."""
        ...

    def check(self) -> BackendHealth: ...

    def close(self) -> None: ...


CACHE_SETTING = "KEENEYE_CACHE_URL"

_SCHEMES = {
    "memory": "in-process LRU, memory://",
    "redis": "Redis, redis://host:6379/0",
    "rediss": "Redis over TLS, rediss://host:6380/0",
}


def check_ttl(ttl_seconds: float) -> float:
    """A time to live must be positive (Redis refuses PX 0; 'forever' is not a cache)."""
    if not ttl_seconds > 0:
        raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds}")
    return float(ttl_seconds)


def open_cache(settings: Settings) -> Cache:
    """The cache ``settings.cache_url`` names: ``memory://`` or ``redis[s]://host:port/db``.

    Opening does not connect (``check()`` does), so ``doctor`` can report a Redis that is down.
    """
    url = settings.cache_url
    scheme, _ = split_url(CACHE_SETTING, url, _SCHEMES)
    if scheme == "memory":
        from keeneye.store.memory_cache import MemoryCache

        return MemoryCache(max_entries=settings.cache.max_entries, ttl_seconds=settings.cache.ttl_seconds)
    try:
        from keeneye.store.redis_cache import RedisCache
    except ImportError as exc:  # redis-py is an optional extra
        raise ConfigError(
            CACHE_SETTING,
            f"{scheme}:// needs redis-py, which is not installed ({exc})",
            fix="pip install 'keeneye[redis]'",
        ) from exc
    return RedisCache(url, ttl_seconds=settings.cache.ttl_seconds)
