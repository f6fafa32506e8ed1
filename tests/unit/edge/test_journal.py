"""The edge journal: what a kill leaves is read back exactly, the count continues, names are checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keeneye.edge import DecidedEvent, Journal
from keeneye.edge.journal import COMPACT_BYTES
from keeneye.sinks import FailReason, PlcDecision, ResultCode, SinkOutcome, SinkStatus


def event(journal: Journal, seq: int, *, reason: str | None = None) -> DecidedEvent:
    return DecidedEvent(
        epoch=journal.epoch, sequence=seq, line="L1", camera="C1", sku="A", batch="B", frame=f"f{seq}.png",
        triggered_at=1_800_000_000.0 + seq, latency_ms=12.5, result=3 if reason else 1,
        decision="DEFECT" if reason else "OK", class_id=0, class_name="", confidence=0.0 if reason else 0.99,
        content_hash=f"{seq:064x}", size_bytes=10, image_format="png", model_name="m", model_version="1",
        task="segment", reason=reason, detail="late" if reason else "",
    )  # fmt: skip


def test_events_and_outcomes_read_back_and_a_torn_last_line_is_left(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "L1", "C1")
    first, second = event(journal, 1), event(journal, 2, reason="deadline_missed")
    journal.append(first)
    journal.append(second)
    journal.record_outcome(
        SinkOutcome(
            PlcDecision(2, ResultCode.failsafe_defect, "L1", "C1", 0.0),
            SinkStatus.failed,
            5.0,
            reason=FailReason.plc_unreachable,
        )
    )
    with open(journal.path, "ab") as f:
        f.write(b'{"kind":"event","sequence":3')  # what a kill in the middle of a write would leave
    read = journal.read(0)
    assert [e for _, e in read.events] == [first, second]
    assert read.outcomes[2]["status"] == "failed" and read.outcomes[2]["reason"] == "plc_unreachable"
    assert read.end == journal.path.stat().st_size - len(b'{"kind":"event","sequence":3')
    assert read.events[1][0] > 0 and journal.read(read.events[1][0]).events[0][1] == second  # by offset
    assert journal.last_sequence() == 2
    assert first.event_id != second.event_id and len(first.event_id) == 32
    journal.close()


def test_a_reopened_journal_keeps_its_epoch_cursor_and_count(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "L1", "C1")
    e = event(journal, 7)
    journal.append(e)
    journal.set_cursor(123)
    journal.close()
    again = Journal(tmp_path, "L1", "C1")
    assert (again.epoch, again.cursor(), again.last_sequence()) == (journal.epoch, 123, 7)
    assert event(again, 7).event_id == e.event_id  # the same part gets the same id after a restart
    assert Journal(tmp_path, "L1", "C2").epoch != journal.epoch


def test_a_fully_stored_large_journal_starts_again_and_the_count_goes_on(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "L1", "C1")
    journal.append(event(journal, 41))
    with open(journal.path, "ab") as f:
        f.write(b"\n" * (COMPACT_BYTES + 1))  # blank lines: padding to the compaction size
    size = journal.path.stat().st_size
    journal.set_cursor(size, last_sequence=41)
    assert (journal.path.stat().st_size, journal.cursor(), journal.last_sequence()) == (0, 0, 41)
    journal.close()


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-x", "x" * 65, "L 1"])
def test_line_and_camera_names_that_cannot_be_folders_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        Journal(tmp_path, name, "C1")
    assert not any(tmp_path.iterdir())


def test_an_empty_journal_has_no_sequence(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "L1", "C1")
    assert journal.last_sequence() is None and journal.read(0).events == []
    assert os.path.exists(journal.folder / "epoch")
    journal.close()


def test_a_stored_event_is_announced_keyed_by_line_and_camera(tmp_path: Path) -> None:
    from keeneye.edge import event_message

    journal = Journal(tmp_path, "L1", "C1")
    e = event(journal, 9, reason="deadline_missed")
    message = event_message("line-inspection", e, {"kind": "outcome", "sequence": 9, "status": "acked",
                                                   "reason": None, "at": 1.0})  # fmt: skip
    doc = json.loads(message.value)
    assert message.key == "L1/C1"
    assert (doc["line_id"], doc["camera_id"], doc["sequence"], doc["result_code"]) == ("L1", "C1", 9, 3)
    assert (doc["reason"], doc["sink"], doc["observation_id"]) == ("deadline_missed", "acked", e.event_id)
    journal.close()
