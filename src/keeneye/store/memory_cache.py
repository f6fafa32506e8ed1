"""In-process cache (``memory://``): a thread-safe LRU with a time to live per entry.

Right for one process; several workers each keep their own copy (use ``redis://`` to share one).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from keeneye.domain import BackendHealth
from keeneye.store.cache import CACHE_SETTING, check_ttl


class MemoryCache:
    """At most ``max_entries`` values; the least recently used goes first, expired ones are misses.

    ``clock`` is a monotonic clock in seconds (injectable so tests need not sleep). ``hits`` and
    ``misses`` count ``get`` answers since start, for metrics.
    """

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        url: str = "memory://",
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.url = url
        self.max_entries = max_entries
        self.ttl_seconds = check_ttl(ttl_seconds)
        self.hits = 0
        self.misses = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key → (value, expires at)
        self._hashes: dict[str, dict[str, str]] = {}  # feature-store hashes: no LRU, no expiry
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, key: str) -> bytes | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[1] <= now:
                del self._entries[key]
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        ttl = self.ttl_seconds if ttl_seconds is None else check_ttl(ttl_seconds)
        expires = self._clock() + ttl
        with self._lock:
            self._entries[key] = (bytes(value), expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def set_hash(self, key: str, values: Mapping[str, str]) -> None:
        with self._lock:
            self._hashes[key] = dict(values)

    def get_hash(self, key: str) -> dict[str, str]:
        with self._lock:
            return dict(self._hashes.get(key, {}))

    def check(self) -> BackendHealth:
        with self._lock:
            size = len(self._entries)
        return BackendHealth(
            CACHE_SETTING,
            self.url,
            reachable=True,
            version="memory",
            detail=f"{size} of {self.max_entries} entries, in this process only",
        )

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._hashes.clear()
