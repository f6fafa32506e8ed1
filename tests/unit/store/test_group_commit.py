"""Group commit: jobs waiting together are committed together, each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from keeneye.domain import BackendUnavailable
from keeneye.store import GroupCommit, GroupCommitClosed


class Recorder:
    """A commit function that records its groups; the first group can be held until released."""

    def __init__(self, *, hold_first: bool = False, bad: frozenset[int] = frozenset()) -> None:
        self.groups: list[list[int]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.hold_first = hold_first
        self.bad = bad

    def __call__(self, jobs: list[int]) -> Sequence[str]:
        self.groups.append(list(jobs))
        if self.hold_first and len(self.groups) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.bad & set(jobs):
            raise ValueError(f"job {sorted(self.bad & set(jobs))[0]} cannot be stored")
        return [f"id-{j}" for j in jobs]


def test_jobs_that_wait_together_are_committed_together() -> None:
    commit = Recorder(hold_first=True)
    writer: GroupCommit[int, str] = GroupCommit(commit, max_group=64)
    first = writer.submit_future(0)
    assert commit.entered.wait(10)  # the writer is busy with job 0 …
    waiting = [writer.submit_future(i) for i in range(1, 21)]  # … so these 20 queue up
    commit.release.set()
    assert first.result(10) == "id-0"
    assert [f.result(10) for f in waiting] == [f"id-{i}" for i in range(1, 21)]
    assert commit.groups == [[0], list(range(1, 21))]  # one group for everyone who waited
    writer.close()


def test_a_group_never_exceeds_max_group() -> None:
    commit = Recorder(hold_first=True)
    writer: GroupCommit[int, str] = GroupCommit(commit, max_group=8)
    writer.submit_future(0)
    assert commit.entered.wait(10)
    futures = [writer.submit_future(i) for i in range(1, 21)]
    commit.release.set()
    assert [f.result(10) for f in futures] == [f"id-{i}" for i in range(1, 21)]
    assert [len(g) for g in commit.groups] == [1, 8, 8, 4]
    writer.close()


def test_a_bad_job_fails_alone_and_the_others_are_stored() -> None:
    commit = Recorder(hold_first=True, bad=frozenset({5}))
    writer: GroupCommit[int, str] = GroupCommit(commit)
    writer.submit_future(0)
    assert commit.entered.wait(10)
    futures = {i: writer.submit_future(i) for i in range(1, 9)}
    commit.release.set()
    with pytest.raises(ValueError, match="job 5 cannot be stored"):
        futures[5].result(10)
    assert {i: f.result(10) for i, f in futures.items() if i != 5} == {
        i: f"id-{i}" for i in range(1, 9) if i != 5
    }
    # the group of 8 failed, then each job was committed on its own
    assert commit.groups[1] == list(range(1, 9)) and commit.groups[2:] == [[i] for i in range(1, 9)]
    writer.close()


def test_a_wrong_number_of_results_fails_every_job_clearly() -> None:
    writer: GroupCommit[int, str] = GroupCommit(lambda jobs: [])
    with pytest.raises(RuntimeError, match="commit returned 0 results for 1 jobs"):
        writer.submit_future(1).result(10)
    writer.close()


def test_close_commits_what_is_queued_then_refuses_new_jobs() -> None:
    commit = Recorder(hold_first=True)
    writer: GroupCommit[int, str] = GroupCommit(commit)
    writer.submit_future(0)
    assert commit.entered.wait(10)
    queued = [writer.submit_future(i) for i in (1, 2, 3)]
    closing = threading.Thread(target=writer.close)
    closing.start()
    commit.release.set()
    closing.join(10)
    assert [f.result(0) for f in queued] == ["id-1", "id-2", "id-3"]
    with pytest.raises(GroupCommitClosed):
        writer.submit_future(4)
    writer.close()  # idempotent


def test_submit_awaits_without_blocking_the_event_loop() -> None:
    sizes: list[int] = []
    writer: GroupCommit[int, str] = GroupCommit(Recorder(), on_group=lambda n, _s: sizes.append(n))

    async def main() -> list[str]:
        return await asyncio.gather(*(writer.submit(i) for i in range(50)))

    assert asyncio.run(main()) == [f"id-{i}" for i in range(50)]
    assert sum(sizes) == 50  # every job counted once, in however many groups formed
    writer.close()


def test_an_outage_fails_the_whole_group_at_once_not_job_by_job() -> None:
    calls: list[list[int]] = []
    entered, release = threading.Event(), threading.Event()

    def commit(jobs: list[int]) -> Sequence[str]:
        calls.append(list(jobs))
        if len(calls) == 1:
            entered.set()
            assert release.wait(10)
            return ["id-0"]
        raise BackendUnavailable("KEENEYE_OBJECTS_URL", "s3://b/", "S3 endpoint not reachable")

    writer: GroupCommit[int, str] = GroupCommit(commit, max_group=64)
    writer.submit_future(0)
    assert entered.wait(10)
    futures = [writer.submit_future(i) for i in range(1, 6)]
    release.set()
    for f in futures:
        with pytest.raises(BackendUnavailable, match="not reachable"):
            f.result(10)
    assert calls == [[0], [1, 2, 3, 4, 5]]  # one try for the group, not five more one by one
    writer.close()
