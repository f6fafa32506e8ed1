"""The runner's inference thread: calls run in order, one at a time; a call cancelled at its deadline
before it started never runs (nothing piles up behind a stalled model)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from keeneye.edge.runner import InferenceThread


def test_a_cancelled_call_never_runs_and_errors_reach_their_own_future() -> None:
    worker = InferenceThread()
    release, ran = threading.Event(), []

    def call(tag: Any) -> Any:
        if tag == "stall":
            assert release.wait(30)
        if tag == "boom":
            raise RuntimeError("model error")
        ran.append(tag)
        return tag

    stalled = worker.submit(call, "stall")  # type: ignore[arg-type]
    skipped = worker.submit(call, "skipped")  # type: ignore[arg-type]
    failing = worker.submit(call, "boom")  # type: ignore[arg-type]
    last = worker.submit(call, "last")  # type: ignore[arg-type]
    assert skipped.cancel()  # its deadline passed while the model stalled
    release.set()
    assert (stalled.result(30), last.result(30)) == ("stall", "last")
    with pytest.raises(RuntimeError, match="model error"):
        failing.result(30)
    assert ran == ["stall", "last"]
    worker.close()
