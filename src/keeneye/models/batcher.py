"""Micro-batching at the model: concurrent requests share one inference call.

:class:`MicroBatcher` collects submitted tensors until it has ``max_batch`` of them or the first one
has waited ``max_wait_ms``, stacks them, runs the model in its **one** worker thread (ONNX Runtime
releases the GIL, and the event loop never blocks), and hands every caller its own slice of the
outputs. While a batch runs, new requests queue up and form the next batch — under load batches
grow by themselves. The wait is adaptive: the first item of a batch waits for company only while
requests arrive closer together than ``max_wait_ms`` (a moving average of the gaps between
submits); a lone client's requests run at once instead of each paying the whole wait.

:func:`run_batch` is the synchronous counterpart for CLI commands and workers that already hold a
list of inputs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from keeneye.domain import InvalidInput, KeeneyeError
from keeneye.settings import InferenceSettings

log = logging.getLogger(__name__)

AnyArray = npt.NDArray[Any]
RunFn = Callable[[AnyArray], Sequence[AnyArray]]
"""The model: a stacked batch ``(N, …)`` → outputs, each with ``N`` as its first axis."""
BatchHook = Callable[[int, float, float], None]
"""``on_batch(size, queue_ms, infer_ms)``: called on the event loop after each batch."""


class QueueFull(KeeneyeError):
    """More requests are waiting for the model than ``max_queue``; serving answers 503."""

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(
            f"model {name!r} is overloaded: {limit} requests already waiting",
            fix="retry after a short pause, or add replicas",
        )
        self.limit = limit


class BatcherClosed(KeeneyeError):
    """The batcher was closed (the model is being unloaded or the process is stopping)."""


@dataclass(eq=False)
class _Item:
    tensor: AnyArray
    future: asyncio.Future[list[AnyArray]]
    enqueued: float = field(default_factory=time.perf_counter)
    whole: bool = False  # a ready batch (submit_batch): runs as it is, never stacked with others


def _infer_stacked(run: RunFn, tensors: Sequence[AnyArray]) -> list[list[AnyArray]]:
    """Stack same-shaped tensors, run once, split the outputs per item (views, no copies)."""
    n = len(tensors)
    # A lone item only needs a batch axis: a view instead of np.stack's copy.
    batch = tensors[0][None] if n == 1 else np.stack(tensors)
    outputs = run(batch)
    for i, out in enumerate(outputs):
        if out.ndim == 0 or out.shape[0] != n:
            raise InvalidInput(
                "bad_model_output",
                f"model output {i} has shape {out.shape}, expected a leading batch axis of {n}",
            )
    return [[out[j] for out in outputs] for j in range(n)]


def _infer_whole(run: RunFn, batch: AnyArray) -> list[AnyArray]:
    """Run a ready ``(n, …)`` batch once; its outputs keep the batch axis."""
    outputs = list(run(batch))
    for i, out in enumerate(outputs):
        if out.ndim == 0 or out.shape[0] != batch.shape[0]:
            raise InvalidInput(
                "bad_model_output",
                f"model output {i} has shape {out.shape}, expected a leading batch axis of {batch.shape[0]}",
            )
    return outputs


def _group_by_shape(shapes: Sequence[tuple[tuple[int, ...], np.dtype[Any]]]) -> list[list[int]]:
    """Indices grouped by (shape, dtype), groups in order of first appearance."""
    groups: dict[tuple[tuple[int, ...], np.dtype[Any]], list[int]] = {}
    for i, key in enumerate(shapes):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def run_batch(run: RunFn, tensors: Sequence[AnyArray], *, max_batch: int = 16) -> list[list[AnyArray]]:
    """Run many items synchronously in batches of at most ``max_batch`` same-shaped tensors.

    Returns each item's outputs (without the batch axis) in the order of ``tensors``.
    """
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    results: list[list[AnyArray] | None] = [None] * len(tensors)
    for group in _group_by_shape([(t.shape, t.dtype) for t in tensors]):
        for start in range(0, len(group), max_batch):
            chunk = group[start : start + max_batch]
            for i, outs in zip(chunk, _infer_stacked(run, [tensors[i] for i in chunk]), strict=True):
                results[i] = outs
    return [r for r in results if r is not None]


ARRIVAL_GAP_WEIGHT = 0.2  # of the newest gap in the moving average
ARRIVAL_GAP_CAP_S = 1.0


class MicroBatcher:
    """Shares one model between concurrent ``await submit(tensor)`` calls.

    * ``max_batch``: most items per model call; ``max_wait_ms``: how long the first item of a batch
      may wait for company — only when the recent gap between arrivals (:attr:`arrival_gap_ms`) is
      shorter than that, so company is likely; ``max_queue``: items allowed to wait before
      :class:`QueueFull`.
    * Items of different shapes or dtypes are never stacked together; they run as separate batches.
    * An exception from the model reaches every caller of that batch.
    * ``on_batch(size, queue_ms, infer_ms)`` reports every batch (metrics attach here); ``queue_ms``
      is how long its oldest item waited, ``infer_ms`` the stack + run + split time in the worker.

    Bound to the event loop of its first ``submit``; :meth:`close` runs what is queued, then stops.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 4.0,
        max_queue: int = 1024,
        on_batch: BatchHook | None = None,
        name: str = "model",
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self._run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.name = name
        self._items: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._last_arrival: float | None = None
        self._gap = float("inf")  # moving average of the seconds between submits
        # One thread: a session runs one batch at a time, which is what makes batching pay.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"keeneye-infer-{name}")

    @classmethod
    def from_settings(
        cls, run: RunFn, settings: InferenceSettings, *, max_queue: int = 1024, **kwargs: Any
    ) -> MicroBatcher:
        return cls(
            run, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms, max_queue=max_queue, **kwargs
        )

    @property
    def arrival_gap_ms(self) -> float:
        """Moving average of the gap between submits (inf before the second one)."""
        return self._gap * 1000.0

    def _arrived(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = min(now - self._last_arrival, ARRIVAL_GAP_CAP_S)  # one idle spell is not forever
            self._gap = (
                gap if self._gap == float("inf") else self._gap + ARRIVAL_GAP_WEIGHT * (gap - self._gap)
            )
        self._last_arrival = now

    @property
    def pending(self) -> int:
        """Items waiting for a batch (not counting the batch now running)."""
        return len(self._items)

    async def submit(self, tensor: AnyArray) -> list[AnyArray]:
        """Queue one input (no batch axis); returns its outputs (no batch axis)."""
        return await self._enqueue(tensor, whole=False)

    async def submit_batch(self, batch: AnyArray) -> list[AnyArray]:
        """Queue a ready batch ``(n, …)`` (one request's tiles): it takes its turn in the queue and
        runs as one model call as it is — no per-item stacking, no copy; returns the outputs with
        their batch axis. Counts as one item against ``max_queue``."""
        return await self._enqueue(batch, whole=True)

    async def _enqueue(self, tensor: AnyArray, *, whole: bool) -> list[AnyArray]:
        if self._closing:
            raise BatcherClosed(
                f"model {self.name!r} is shutting down", fix="retry; another replica will answer"
            )
        if len(self._items) >= self.max_queue:
            raise QueueFull(self.name, self.max_queue)
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._collect(), name=f"keeneye-batcher-{self.name}")
        elif loop is not self._loop:
            raise RuntimeError(f"MicroBatcher {self.name!r} is bound to another event loop")
        assert self._wakeup is not None
        item = _Item(tensor, loop.create_future(), whole=whole)
        self._arrived(item.enqueued)
        self._items.append(item)
        self._wakeup.set()
        return await item.future

    async def close(self) -> None:
        """Stop accepting, run everything already queued, then release the worker thread."""
        self._closing = True
        if self._task is not None and self._wakeup is not None:
            self._wakeup.set()
            await self._task
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """Same as :meth:`close`; the name ``contextlib.aclosing`` expects."""
        await self.close()

    # ----------------------------------------------------------------------------------------------

    async def _collect(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        try:
            while True:
                while not self._items:
                    if self._closing:
                        return
                    wakeup.clear()
                    await wakeup.wait()
                # Wait for company only when it is likely to come within the wait.
                wait = self.max_wait if self._gap < self.max_wait else 0.0
                deadline = self._items[0].enqueued + wait
                while len(self._items) < self.max_batch and not self._closing:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    wakeup.clear()
                    try:
                        await asyncio.wait_for(wakeup.wait(), remaining)
                    except TimeoutError:
                        break
                take = min(self.max_batch, len(self._items))
                await self._dispatch([self._items.popleft() for _ in range(take)])
        except BaseException as exc:
            # Never leave a caller hanging if the collector itself dies (a bug, or cancellation).
            error = (
                exc if isinstance(exc, Exception) else BatcherClosed(f"model {self.name!r} batcher stopped")
            )
            for item in self._items:
                if not item.future.done():
                    item.future.set_exception(error)
            self._items.clear()
            raise

    async def _dispatch(self, items: list[_Item]) -> None:
        live = [i for i in items if not i.future.done()]  # skip callers that gave up (cancelled)
        loop = asyncio.get_running_loop()
        singles = [i for i in live if not i.whole]
        groups = [
            [singles[i] for i in g]
            for g in _group_by_shape([(i.tensor.shape, i.tensor.dtype) for i in singles])
        ]
        groups += [[i] for i in live if i.whole]
        for batch in groups:
            started = time.perf_counter()
            queue_ms = (started - batch[0].enqueued) * 1000.0
            try:
                if batch[0].whole:
                    results = [
                        await loop.run_in_executor(self._executor, _infer_whole, self._run, batch[0].tensor)
                    ]
                else:
                    results = await loop.run_in_executor(
                        self._executor, _infer_stacked, self._run, [i.tensor for i in batch]
                    )
            except Exception as exc:
                log.warning(
                    "batch failed", extra={"model": self.name, "size": len(batch), "error": repr(exc)}
                )
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            infer_ms = (time.perf_counter() - started) * 1000.0
            for item, outs in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(outs)
            if self.on_batch is not None:
                size = int(batch[0].tensor.shape[0]) if batch[0].whole else len(batch)
                try:
                    self.on_batch(size, queue_ms, infer_ms)
                except Exception:
                    log.exception("on_batch hook failed", extra={"model": self.name})
