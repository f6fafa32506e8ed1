"""Flood protection: per-client token buckets, per-client and per-key concurrency caps (429), a bound
on requests in flight per pipeline (503), and how full that bound has been (the API's utilisation).

Admission (``serving.routes.deps.admitted``) asks in this order; the first that says no answers:

1. the pipeline's :class:`RateLimiter` for the request's rate identity (429 ``rate_limited``);
2. :class:`ConcurrencyCap` per client address (429 ``too_many_in_flight``);
3. :class:`ConcurrencyCap` per API key, when the request carries one (429 ``too_many_in_flight``);
4. the pipeline's :class:`InflightLimiter` (503 ``busy``).

A refusal is a :class:`Refused`: its status, a stable ``reason``, the ``Retry-After`` seconds and the
fix. Every structure here is bounded: buckets by ``max_clients``, the caps' tables by the requests in
flight (a key leaves the table when its last request ends), the utilisation window by its length.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from keeneye.domain import KeeneyeError

Clock = Callable[[], float]


class Refused(KeeneyeError):
    """A request turned away before any work: ``status`` 429 (this client) or 503 (this server).

    ``reason`` is a stable code (``rate_limited``, ``too_many_in_flight``, ``busy``) and
    ``retry_after`` the seconds the answer's ``Retry-After`` header advertises.
    """

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float, fix: str) -> None:
        super().__init__(message, fix=fix)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        return retry_after_header(self.retry_after)


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
        clock: Clock = time.monotonic,
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


class ConcurrencyCap:
    """At most ``limit`` requests in flight per key (a client address, an API key).

    The table holds only keys with a request in flight, so its size is bounded by the requests the
    server holds at once (themselves bounded by the in-flight limits), however many clients come.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency cap must allow at least 1 request in flight")
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_enter(self, key: str) -> bool:
        with self._lock:
            n = self._counts.get(key, 0)
            if n >= self.limit:
                return False
            self._counts[key] = n + 1
            return True

    def leave(self, key: str) -> None:
        with self._lock:
            n = self._counts.get(key, 0) - 1
            if n > 0:
                self._counts[key] = n
            else:
                self._counts.pop(key, None)

    def in_flight(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def __len__(self) -> int:
        """Keys with at least one request in flight."""
        with self._lock:
            return len(self._counts)


MARK_SECONDS = 1.0  # resolution of the utilisation window: one mark a second at most


class InflightLimiter:
    """Counts requests being processed; refuses beyond ``limit`` instead of queueing without bound.

    It also measures how full it has been: :meth:`utilization` is the mean number of requests in
    flight over the last ``window_seconds`` divided by ``limit`` — the busy time of its ``limit``
    slots over their wall time (0..1). 1.0 means every slot was taken all the time: the next request
    is answered 503. Memory: one mark per second of the window.
    """

    def __init__(self, limit: int, *, window_seconds: float = 30.0, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.current = 0
        self.window = window_seconds
        self.clock = clock
        now = clock()
        self._created = now
        self._area = 0.0  # slot-seconds since creation
        self._changed = now  # when ``current`` last changed (or the area was last brought up to date)
        self._marks: deque[tuple[float, float]] = deque([(now, 0.0)])  # (time, area then)
        self._lock = threading.Lock()

    def _advance(self, now: float) -> None:
        """Bring the area up to ``now`` (caller holds the lock); mark it at most once a second."""
        self._area += self.current * max(0.0, now - self._changed)
        self._changed = max(now, self._changed)
        if now - self._marks[-1][0] >= MARK_SECONDS:
            self._marks.append((now, self._area))
            while len(self._marks) > 1 and self._marks[1][0] <= now - self.window:
                self._marks.popleft()

    def try_enter(self) -> bool:
        with self._lock:
            if self.current >= self.limit:
                return False
            self._advance(self.clock())
            self.current += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._advance(self.clock())
            self.current -= 1

    def utilization(self) -> float:
        """Mean requests in flight over the last ``window_seconds`` (or since creation) / ``limit``."""
        with self._lock:
            now = self.clock()
            self._advance(now)
            lo = max(now - self.window, self._created)
            span = now - lo
            if span <= 0:
                return min(1.0, self.current / self.limit)
            area_lo = self._area_at(lo)
            return max(0.0, min(1.0, (self._area - area_lo) / (self.limit * span)))

    def _area_at(self, t: float) -> float:
        """The area at time ``t`` inside the marked history (linear between two marks)."""
        before = self._marks[0]
        for mark in self._marks:
            if mark[0] > t:
                t0, a0 = before
                t1, a1 = mark
                return a0 + (a1 - a0) * (t - t0) / (t1 - t0)
            before = mark
        t0, a0 = before  # after the last mark: ``current`` has not changed since ``_changed``
        return a0 + (self._area - a0) * ((t - t0) / (self._changed - t0) if self._changed > t0 else 0.0)
