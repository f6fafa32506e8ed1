"""Cache contract: in-process LRU with TTL (``memory://``) or Redis (``redis://``).

Values are bytes; callers serialise (JSON) themselves. A cache never raises on a miss or on a backend
hiccup during ``get`` (it logs and answers ``None``): the cache makes things fast, never fails them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from keeneye.domain import BackendHealth


@runtime_checkable
class Cache(Protocol):
    url: str

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        """Store ``value``; ``ttl_seconds`` None means the configured default."""
        ...

    def delete(self, key: str) -> None: ...

    def check(self) -> BackendHealth: ...

    def close(self) -> None: ...
