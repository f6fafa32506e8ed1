"""MicroBatcher and run_batch: batching, per-item results, waiting, errors, back-pressure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from keeneye.domain import InvalidInput
from keeneye.models import BatcherClosed, MicroBatcher, OnnxModel, QueueFull, run_batch
from keeneye.models.testing import tiny_classifier_reference
from keeneye.settings import InferenceSettings
from tests.unit.models.support import CLASSES, classifier_bundle

pytestmark = pytest.mark.timeout(30)


class Recorder:
    """Collects what the on_batch hook reports."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float, float]] = []

    def __call__(self, size: int, queue_ms: float, infer_ms: float) -> None:
        self.batches.append((size, queue_ms, infer_ms))

    @property
    def sizes(self) -> list[int]:
        return [b[0] for b in self.batches]


def _sum_model(batch: np.ndarray) -> list[np.ndarray]:
    """A model in numpy: per-item sum and the item's batch size (to see how items were grouped)."""
    n = batch.shape[0]
    return [batch.reshape(n, -1).sum(axis=1), np.full(n, n)]


def test_concurrent_submits_are_batched_and_results_stay_with_their_caller(tmp_path: Path) -> None:
    model = OnnxModel.load(classifier_bundle(tmp_path / "m"), InferenceSettings(intra_op_threads=1))
    rng = np.random.default_rng(7)
    items = [rng.uniform(0, 1, size=(3, 32, 32)).astype(np.float32) for _ in range(20)]
    hook = Recorder()

    async def main() -> list[list[np.ndarray]]:
        batcher = MicroBatcher(model.run, max_batch=8, max_wait_ms=50, on_batch=hook)
        try:
            return await asyncio.gather(*(batcher.submit(x) for x in items))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert sum(hook.sizes) == 20
    assert max(hook.sizes) <= 8 and max(hook.sizes) > 1
    for item, outputs in zip(items, results, strict=True):
        assert len(outputs) == 1 and outputs[0].shape == (len(CLASSES),)
        np.testing.assert_allclose(
            outputs[0], tiny_classifier_reference(item[None], len(CLASSES))[0], atol=1e-5
        )
    assert all(q >= 0 and i >= 0 for _, q, i in hook.batches)


def test_a_lone_client_is_not_kept_waiting_for_company() -> None:
    """Requests further apart than max_wait: nobody is coming, so each runs at once."""
    hook = Recorder()

    async def main() -> float:
        batcher = MicroBatcher(_sum_model, max_batch=8, max_wait_ms=1_000, on_batch=hook)
        assert batcher.arrival_gap_ms == float("inf")
        for _ in range(3):
            await batcher.submit(np.ones((2, 2), dtype=np.float32))
            await asyncio.sleep(1.2)  # longer than max_wait between requests
        gap = batcher.arrival_gap_ms
        await batcher.close()
        return gap

    gap = asyncio.run(main())
    assert gap >= 1_000
    assert hook.sizes == [1, 1, 1]
    assert all(queue_ms < 500 for _, queue_ms, _ in hook.batches)  # none sat out the 1 s wait


def test_a_lone_item_waits_for_company_when_requests_arrive_close_together() -> None:
    hook = Recorder()

    async def main() -> float:
        batcher = MicroBatcher(_sum_model, max_batch=4, max_wait_ms=300, on_batch=hook)
        # A burst: arrivals microseconds apart (a full batch goes at once) …
        await asyncio.gather(*(batcher.submit(np.ones((2, 2), np.float32)) for _ in range(4)))
        start = time.perf_counter()
        await batcher.submit(np.ones((2, 2), dtype=np.float32))  # … so this one waits for company
        elapsed = time.perf_counter() - start
        await batcher.close()
        return elapsed

    elapsed = asyncio.run(main())
    assert hook.sizes == [4, 1]
    assert hook.batches[1][1] >= 250  # it did wait for company …
    assert elapsed < 5.0  # … but not for long (generous bound, CI machines stall)


def test_a_full_batch_goes_without_waiting() -> None:
    async def main() -> tuple[float, list[list[np.ndarray]]]:
        batcher = MicroBatcher(_sum_model, max_batch=4, max_wait_ms=60_000)
        start = time.perf_counter()
        results = await asyncio.gather(*(batcher.submit(np.full((2,), i, np.float32)) for i in range(4)))
        elapsed = time.perf_counter() - start
        await batcher.close()
        return elapsed, results

    elapsed, results = asyncio.run(main())
    assert elapsed < 10.0  # max_wait is a minute: only a full batch releases it this early
    assert [int(r[0]) for r in results] == [0, 2, 4, 6] and all(int(r[1]) == 4 for r in results)


def test_an_exception_in_the_model_reaches_every_caller() -> None:
    calls: list[int] = []

    def broken(batch: np.ndarray) -> Sequence[np.ndarray]:
        calls.append(batch.shape[0])
        if len(calls) == 1:
            raise RuntimeError("boom")
        return _sum_model(batch)

    async def main() -> tuple[list[object], list[np.ndarray]]:
        batcher = MicroBatcher(broken, max_batch=8, max_wait_ms=30)
        failed = await asyncio.gather(
            *(batcher.submit(np.ones(3, np.float32)) for _ in range(5)), return_exceptions=True
        )
        after = await batcher.submit(np.ones(3, np.float32))  # the batcher survives
        await batcher.close()
        return failed, after

    failed, after = asyncio.run(main())
    assert calls[0] == 5
    assert all(isinstance(e, RuntimeError) and str(e) == "boom" for e in failed)
    assert int(after[0]) == 3


def test_wrong_output_batch_axis_is_reported_to_callers() -> None:
    async def main() -> list[object]:
        batcher = MicroBatcher(lambda b: [np.zeros(1)], max_batch=4, max_wait_ms=30)
        out = await asyncio.gather(*(batcher.submit(np.ones(2)) for _ in range(3)), return_exceptions=True)
        await batcher.close()
        return out

    errors = asyncio.run(main())
    assert all("expected a leading batch axis of 3" in str(e) for e in errors)


def test_queue_full_when_over_max_queue() -> None:
    release = threading.Event()

    def slow(batch: np.ndarray) -> list[np.ndarray]:
        release.wait(10)
        return _sum_model(batch)

    async def main() -> list[object]:
        batcher = MicroBatcher(slow, max_batch=1, max_wait_ms=0, max_queue=3)
        # submit() queues synchronously before its first await: the first 3 fill the queue before
        # the batcher's collector task gets to run, the 4th is refused.
        tasks = [asyncio.ensure_future(batcher.submit(np.full(1, i, np.float32))) for i in range(4)]
        await asyncio.sleep(0.05)
        assert batcher.pending <= 3
        release.set()
        out = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert isinstance(out[3], QueueFull) and out[3].limit == 3
    assert "overloaded" in out[3].message
    assert [int(r[0]) for r in out[:3]] == [0, 1, 2]  # type: ignore[index]


def test_different_shapes_run_as_separate_batches() -> None:
    hook = Recorder()

    async def main() -> list[list[np.ndarray]]:
        batcher = MicroBatcher(_sum_model, max_batch=8, max_wait_ms=30, on_batch=hook)
        shapes = [(2, 2), (3, 3), (2, 2), (3, 3), (2, 2)]
        out = await asyncio.gather(*(batcher.submit(np.ones(s, np.float32)) for s in shapes))
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert [int(r[0]) for r in out] == [4, 9, 4, 9, 4]
    assert [int(r[1]) for r in out] == [3, 2, 3, 2, 3]
    assert sorted(hook.sizes) == [2, 3]


def test_close_drains_queued_items_then_refuses() -> None:
    async def main() -> tuple[list[list[np.ndarray]], MicroBatcher]:
        batcher = MicroBatcher(_sum_model, max_batch=2, max_wait_ms=10_000)
        tasks = [asyncio.ensure_future(batcher.submit(np.full(1, i, np.float32))) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.close()  # the fifth item's batch is not full: close must not wait 10 s
        return [t.result() for t in tasks], batcher

    start = time.perf_counter()
    results, batcher = asyncio.run(main())
    assert time.perf_counter() - start < 5
    assert [int(r[0]) for r in results] == [0, 1, 2, 3, 4]

    async def late() -> None:
        await batcher.submit(np.ones(1))

    with pytest.raises(BatcherClosed):
        asyncio.run(late())


def test_a_cancelled_caller_is_skipped() -> None:
    seen: list[int] = []

    def model(batch: np.ndarray) -> list[np.ndarray]:
        seen.extend(int(v) for v in batch[:, 0])
        return _sum_model(batch)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=50)
        gone = asyncio.ensure_future(batcher.submit(np.full(1, 1, np.float32)))
        kept = asyncio.ensure_future(batcher.submit(np.full(1, 2, np.float32)))
        await asyncio.sleep(0)
        gone.cancel()
        result = await kept
        await batcher.close()
        return result

    assert int(asyncio.run(main())[0]) == 2
    assert seen == [2]


def test_from_settings_and_bad_arguments() -> None:
    batcher = MicroBatcher.from_settings(_sum_model, InferenceSettings(max_batch=5, max_wait_ms=7))
    assert batcher.max_batch == 5 and batcher.max_wait == pytest.approx(0.007)
    asyncio.run(batcher.aclose())
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(_sum_model, max_batch=0)


def test_run_batch_groups_by_shape_and_chunks_in_order() -> None:
    calls: list[tuple[int, ...]] = []

    def model(batch: np.ndarray) -> list[np.ndarray]:
        calls.append(batch.shape)
        return _sum_model(batch)

    tensors = [np.full((2,) if i % 3 else (5,), i, np.float32) for i in range(11)]
    results = run_batch(model, tensors, max_batch=4)
    assert [float(r[0]) for r in results] == [float(t.sum()) for t in tensors]
    assert all(shape[0] <= 4 for shape in calls)
    assert sorted(c[0] for c in calls) == [3, 4, 4]  # 7 items of (2,) → 4 + 3; 4 items of (5,) → 4
    assert run_batch(model, []) == []


def test_a_ready_batch_runs_as_it_is_never_stacked_with_others() -> None:
    """submit_batch (a crop-health request's tiles): the array reaches the model as it is (no copy),
    alone, while single items beside it are still stacked together; its outputs keep the batch axis."""
    hook = Recorder()
    seen: list[np.ndarray] = []

    def model(batch: np.ndarray) -> list[np.ndarray]:
        seen.append(batch)
        return _sum_model(batch)

    ready = [np.full((4, 2, 2), k, np.float32) for k in (1, 2)]

    async def main() -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=30, on_batch=hook)
        whole = [asyncio.ensure_future(batcher.submit_batch(b)) for b in ready]
        singles = await asyncio.gather(*(batcher.submit(np.ones((2, 2), np.float32)) for _ in range(3)))
        out = [await w for w in whole]
        await batcher.close()
        return out, singles

    whole, singles = asyncio.run(main())
    assert [r[0].tolist() for r in whole] == [[4.0] * 4, [8.0] * 4]  # per tile sums, batch axis kept
    assert [r[1].tolist() for r in whole] == [[4] * 4, [4] * 4]  # each ran as its own 4-item batch
    assert any(s is ready[0] for s in seen) and any(s is ready[1] for s in seen)  # not copied
    assert [int(r[1]) for r in singles] == [3, 3, 3]  # the singles still share one call
    assert sorted(hook.sizes) == [3, 4, 4]  # a ready batch reports its own size


def test_a_ready_batch_with_a_wrong_output_axis_fails_its_caller() -> None:
    def model(batch: np.ndarray) -> list[np.ndarray]:
        return [batch.reshape(-1)]  # the batch axis is lost

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=1)
        try:
            await batcher.submit_batch(np.ones((3, 2), np.float32))
        finally:
            await batcher.close()

    with pytest.raises(InvalidInput, match="leading batch axis of 3"):
        asyncio.run(main())
