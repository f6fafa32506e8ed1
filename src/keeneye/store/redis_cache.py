"""Shared cache in Redis (``redis://host:6379/0``, ``rediss://`` for TLS).

A cache makes things fast and never fails them: when Redis is down, ``get`` answers ``None`` and
``set``/``delete`` do nothing, each logging a warning once per outage. After a connection failure the
cache stays out of the way for ``retry_after_seconds`` so a dead or unroutable Redis does not add a
connect timeout to every request. ``check()`` always tries, and says what is wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT

from keeneye.domain import BackendHealth, ConfigError
from keeneye.settings import mask_url
from keeneye.store.cache import CACHE_SETTING, check_ttl

log = logging.getLogger(__name__)

KEY_PREFIX = "keeneye:"


class RedisCache:
    """Values under ``prefix + key`` with a per-entry expiry (``SET … PX``)."""

    def __init__(
        self,
        url: str,
        *,
        ttl_seconds: float,
        prefix: str = KEY_PREFIX,
        timeout_seconds: float = 2.0,
        retry_after_seconds: float = 5.0,
    ) -> None:
        self.url = mask_url(url)  # the password is only needed to connect
        self.ttl_seconds = check_ttl(ttl_seconds)
        self.prefix = prefix
        self.retry_after_seconds = retry_after_seconds
        self.hits = 0
        self.misses = 0
        self._down_until = 0.0
        self._lock = threading.Lock()
        try:
            self._client: redis.Redis = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout_seconds,
                socket_timeout=timeout_seconds,
                # One quick retry covers a pooled connection that went stale when Redis restarted.
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise ConfigError(
                CACHE_SETTING, f"malformed Redis URL {self.url!r} ({exc})", fix="use redis://host:6379/0"
            ) from exc

    # -- outage bookkeeping -----------------------------------------------------------------------

    def _skipping(self) -> bool:
        return time.monotonic() < self._down_until

    def _failed(self, op: str, exc: redis.RedisError) -> None:
        with self._lock:
            first = self._down_until == 0.0
            self._down_until = time.monotonic() + self.retry_after_seconds
        if first:
            log.warning(
                "cache %s failed, carrying on without the cache: %s",
                op,
                exc,
                extra={"url": self.url, "op": op},
            )

    def _succeeded(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until = 0.0
            log.info("cache reachable again", extra={"url": self.url})

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    # -- the Cache protocol -----------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        if self._skipping():
            self._count(False)
            return None
        try:
            value = self._client.get(self.prefix + key)
        except redis.RedisError as exc:
            self._failed("get", exc)
            self._count(False)
            return None
        self._succeeded()
        self._count(value is not None)
        if value is None or isinstance(value, bytes):
            return value
        return str(value).encode()  # only if someone built the client with decode_responses

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        ttl = self.ttl_seconds if ttl_seconds is None else check_ttl(ttl_seconds)
        if self._skipping():
            return
        try:
            self._client.set(self.prefix + key, value, px=max(1, round(ttl * 1000)))
        except redis.RedisError as exc:
            self._failed("set", exc)
            return
        self._succeeded()

    def delete(self, key: str) -> None:
        if self._skipping():
            return
        try:
            self._client.delete(self.prefix + key)
        except redis.RedisError as exc:
            self._failed("delete", exc)
            return
        self._succeeded()

    def set_hash(self, key: str, values: Mapping[str, str]) -> None:
        """DEL + HSET in one MULTI/EXEC, so a reader never sees a half-replaced hash."""
        if self._skipping():
            return
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self.prefix + key)
                if values:
                    mapping: dict[EncodableT, EncodableT] = {k: v for k, v in values.items()}
                    pipe.hset(self.prefix + key, mapping=mapping)
                pipe.execute()
        except redis.RedisError as exc:
            self._failed("hset", exc)
            return
        self._succeeded()

    def get_hash(self, key: str) -> dict[str, str]:
        if self._skipping():
            return {}
        try:
            raw = self._client.hgetall(self.prefix + key)
        except redis.RedisError as exc:
            self._failed("hgetall", exc)
            return {}
        self._succeeded()
        return {_text(k): _text(v) for k, v in raw.items()}

    def check(self) -> BackendHealth:
        try:
            self._client.ping()
            info = self._client.info("server")
        except redis.AuthenticationError as exc:
            return BackendHealth(
                CACHE_SETTING,
                self.url,
                reachable=False,
                detail=f"Redis refused the credentials: {exc}",
                fix="put the user and password in KEENEYE_CACHE_URL (redis://user:password@host:6379/0)",
            )
        except redis.RedisError as exc:
            return BackendHealth(
                CACHE_SETTING,
                self.url,
                reachable=False,
                detail=f"Redis not reachable: {exc}",
                fix="start Redis (`make services`) or correct KEENEYE_CACHE_URL",
            )
        self._succeeded()
        return BackendHealth(
            CACHE_SETTING, self.url, reachable=True, version=str(info.get("redis_version", ""))
        )

    def close(self) -> None:
        self._client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
