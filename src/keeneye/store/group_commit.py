"""Group commit: many callers' writes made durable by one flush.

A synchronous prediction must be stored before it is answered, and storing one costs a few
``fsync`` calls (the image file, its directory, the database commit) whatever its size. Under load,
:class:`GroupCommit` makes those flushes shared: callers hand their job to one writer thread and wait;
the thread takes **every job waiting** (up to ``max_group``) and commits them together with one call
of ``commit(jobs)`` — one object-store group, one transaction. It never waits for company: an idle
server commits each job at once, a busy one commits while the next group gathers, so the group
grows with the load by itself (as the model's micro-batcher does).

Each caller gets its own result or its own exception: when a group's commit raises, its jobs are
committed again one by one, so one bad job fails alone and the others are stored — unless the
failure is a dependency being down (:func:`keeneye.store.outage_of`), which fails the whole group at
once instead of once per job.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Final, Generic, TypeVar

from keeneye.domain import KeeneyeError
from keeneye.store.outages import outage_of

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

CommitFn = Callable[[list[J]], Sequence[R]]
GroupHook = Callable[[int, float], None]
"""``on_group(size, seconds)``: called in the writer thread after each committed group."""

_STOP: Final = object()


class GroupCommitClosed(KeeneyeError):
    """The writer was closed (the process is stopping): nothing more is accepted."""


class GroupCommit(Generic[J, R]):
    """One writer thread committing waiting jobs together (module docstring)."""

    def __init__(
        self,
        commit: Callable[[list[J]], Sequence[R]],
        *,
        name: str = "keeneye-group-commit",
        max_group: int = 64,
        on_group: GroupHook | None = None,
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._commit = commit
        self.max_group = max_group
        self._on_group = on_group
        self._queue: queue.Queue[tuple[J, Future[R]] | object] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit_future(self, job: J) -> Future[R]:
        """Queue ``job``; the future holds its result once its group is durable."""
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise GroupCommitClosed("the storage writer is closed", fix="the process is stopping")
            self._queue.put((job, future))
        return future

    async def submit(self, job: J) -> R:
        """Queue ``job`` and wait (without blocking the event loop) until it is stored."""
        return await asyncio.wrap_future(self.submit_future(job))

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, then stop the thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- the writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            group = [first]
            while len(group) < self.max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True  # commit this group, then stop
                    break
                group.append(item)
            self._commit_group(group)  # type: ignore[arg-type]  # _STOP never reaches here

    def _commit_group(self, group: list[tuple[J, Future[R]]]) -> None:
        jobs = [job for job, _ in group]
        started = time.perf_counter()
        try:
            results = self._commit(jobs)
            if len(results) != len(jobs):
                raise RuntimeError(f"commit returned {len(results)} results for {len(jobs)} jobs")
        except BaseException as exc:
            if len(group) == 1 or outage_of(exc) is not None:
                # A dependency down fails every job alike: retrying them one by one would hold the
                # writer (and every caller queued behind it) for a timeout per job.
                for _, future in group:
                    _fail(future, exc)
                return
            log.warning("group commit of %d jobs failed (%s); committing them one by one", len(group), exc)
            for item in group:
                self._commit_group([item])
            return
        if self._on_group is not None:
            try:
                self._on_group(len(jobs), time.perf_counter() - started)
            except Exception:
                log.exception("group commit hook failed")
        for (_, future), result in zip(group, results, strict=True):
            if not future.cancelled():
                future.set_result(result)


def _fail(future: Future[R], exc: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(exc)
