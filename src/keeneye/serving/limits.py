"""Flood protection: per-client token buckets (429) and a bound on requests in flight (503)."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per client key. ``acquire`` answers 0 when allowed, else seconds to wait.

    Bounded memory: at most ``max_clients`` buckets, least recently seen dropped first (a dropped
    client simply starts again with a full bucket).
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> float:
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = _Bucket(self.burst, now)
                self._buckets[client] = bucket
                if len(self._buckets) > self.max_clients:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(client)
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
                bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never advertise 0 for a refusal."""
    return str(max(1, math.ceil(seconds)))


class InflightLimiter:
    """Counts requests being processed; refuses beyond ``limit`` instead of queueing without bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.current >= self.limit:
                return False
            self.current += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.current -= 1
