"""The edge journal: decided events survive kill -9 without the decision path waiting on storage.

One folder per line and camera (``$KEENEYE_HOME/edge/<line>__<camera>/``) holds:

* ``journal.jsonl`` — one JSON line per decided event (:class:`DecidedEvent`), appended **before** the
  decision goes to the PLC, and one per PLC outcome (:class:`OutcomeNote`) as the sink reports it. An
  append is one ``write(2)`` of a few hundred bytes into the page cache: a process killed with
  SIGKILL loses nothing written, and nothing waits for a disk. The recorder fsyncs the file every
  ``edge.fsync_interval_seconds`` (what a power cut may lose) and copies it to the results DB.
* ``cursor`` — the byte offset up to which every event is in the results DB (rewritten atomically);
  a restart replays from there, and the DB writes are idempotent (event ids are derived from the
  journal's epoch and the sequence), so replaying twice stores nothing twice.
* ``epoch`` — a random id made with the folder; with the sequence it names each event for ever.
* ``images/`` — each frame's bytes by content hash, until the recorder has put them in the object store.

Sequences continue across restarts (the last journaled one + 1), so a PLC never sees a number twice.
A line cut short by the kill (no newline yet) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

from keeneye.domain import AnswerJson
from keeneye.sinks import SinkOutcome

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COMPACT_BYTES = 8 * 1024 * 1024  # a fully stored journal larger than this starts again from empty


@dataclass(frozen=True)
class DecidedEvent:
    """One part's decision as the PLC got it, plus what is needed to store and trace it.

    ``result`` is the PLC result code (1 OK, 2 DEFECT, 3 fail-safe DEFECT); ``reason`` is set for a
    fail-safe (``deadline_missed``, ``unreadable_frame``, ``model_error``) with ``detail`` for a human;
    ``answer`` is the model's answer JSON when the model answered in time.
    """

    epoch: str
    sequence: int
    line: str
    camera: str
    sku: str
    batch: str
    frame: str
    triggered_at: float
    latency_ms: float
    result: int
    decision: str
    class_id: int
    class_name: str
    confidence: float
    content_hash: str
    size_bytes: int
    image_format: str | None
    model_name: str
    model_version: str
    task: str
    reason: str | None = None
    detail: str = ""
    answer: AnswerJson | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """The observation id of this event: stable across restarts and replays."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"keeneye-edge:{self.epoch}:{self.sequence}").hex

    @property
    def failsafe(self) -> bool:
        return self.reason is not None


class OutcomeNote(TypedDict):
    """A PLC outcome line: ``status`` acked / failed, ``reason`` the sink's fail reason."""

    kind: Literal["outcome"]
    sequence: int
    status: str
    reason: str | None
    at: float


@dataclass
class JournalRead:
    """What :meth:`Journal.read` found after an offset: events and outcomes by sequence, each event's
    line start offset, and where reading stopped (the end of the last complete line)."""

    events: list[tuple[int, DecidedEvent]]
    outcomes: dict[int, OutcomeNote]
    end: int


def check_name(value: str, what: str) -> str:
    """Line and camera ids name folders and metric labels: letters, digits, ``.``, ``_``, ``-``."""
    if not NAME_PATTERN.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-' (not starting with one)"
        )
    return value


class Journal:
    """The journal folder of one line and camera (module docstring). Thread-safe: the runner appends
    events, the sink thread appends outcomes, the recorder reads and advances the cursor."""

    def __init__(self, root: Path, line: str, camera: str) -> None:
        self.folder = root / f"{check_name(line, 'line')}__{check_name(camera, 'camera')}"
        self.images = self.folder / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "journal.jsonl"
        self._cursor_path = self.folder / "cursor"
        epoch_path = self.folder / "epoch"
        if not epoch_path.exists():
            _write_atomically(epoch_path, uuid.uuid4().hex)
        self.epoch = epoch_path.read_text().strip()
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._dirty = False

    # -- writing (the decision path: page cache only) ---------------------------------------------

    def append(self, event: DecidedEvent) -> None:
        self._write({"kind": "event", **asdict(event)})

    def record_outcome(self, outcome: SinkOutcome) -> None:
        """The sink's ``on_outcome`` callback: one outcome line (called from the sink's thread)."""
        note: OutcomeNote = {
            "kind": "outcome",
            "sequence": outcome.decision.sequence,
            "status": outcome.status.value,
            "reason": None if outcome.reason is None else outcome.reason.value,
            "at": outcome.at,
        }
        try:
            self._write(dict(note))
        except OSError:
            log.warning("cannot journal the PLC outcome of %s", outcome.decision.sequence, exc_info=True)

    def spool_image(self, digest: str, data: bytes) -> None:
        """Keep a frame's bytes until the recorder stores them (content-addressed: a repeat is free)."""
        path = self.images / digest
        if not path.exists():
            tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

    def _write(self, doc: dict[str, object]) -> None:
        line = (json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            self._dirty = True

    def sync(self) -> None:
        """fsync what was appended (the recorder calls this; the decision path never does)."""
        with self._lock:
            dirty, self._dirty = self._dirty, False
        if dirty:
            os.fsync(self._fd)

    # -- reading (recorder, restarts) --------------------------------------------------------------

    def cursor(self) -> int:
        try:
            return int(self._cursor_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def set_cursor(
        self, offset: int, last_sequence: int | None = None, last_frame: str | None = None
    ) -> None:
        """Everything before ``offset`` is stored; a fully stored, large journal starts again (its
        ``last_sequence`` and ``last_frame`` kept aside first, so the count goes on and a watched
        folder resumes after that frame)."""
        with self._lock:
            size = os.fstat(self._fd).st_size
            if offset == size and size > COMPACT_BYTES and last_sequence is not None:
                _write_atomically(self.folder / "last_sequence", str(last_sequence))
                if last_frame is not None:
                    _write_atomically(self.folder / "last_frame", last_frame)
                os.ftruncate(self._fd, 0)
                offset = 0
            _write_atomically(self._cursor_path, str(offset))

    def read(self, offset: int) -> JournalRead:
        """Complete lines after ``offset``; a half-written last line (a kill) is left for later."""
        events: list[tuple[int, DecidedEvent]] = []
        outcomes: dict[int, OutcomeNote] = {}
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read()
        pos = offset
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            start, pos = pos, pos + len(raw)
            try:
                doc = json.loads(raw)
                kind = doc.pop("kind")
            except (ValueError, KeyError, AttributeError):
                log.warning("skipping an unreadable journal line at byte %s of %s", start, self.path)
                continue
            if kind == "event":
                events.append((start, DecidedEvent(**doc)))
            elif kind == "outcome":
                seq = int(doc["sequence"])
                outcomes[seq] = OutcomeNote(
                    kind="outcome",
                    sequence=seq,
                    status=str(doc["status"]),
                    reason=doc.get("reason"),
                    at=doc["at"],
                )
        return JournalRead(events, outcomes, pos)

    def last_sequence(self) -> int | None:
        """The highest sequence journaled (None for a new journal), so a restart continues after it."""
        last = None
        for _, event in self.read(0).events:
            last = event.sequence if last is None else max(last, event.sequence)
        if last is None:
            with contextlib.suppress(OSError, ValueError):
                last = int((self.folder / "last_sequence").read_text())
        return last

    def last_frame(self) -> str | None:
        """The source name of the last journaled part (None for a new journal): a restarted runner
        watching a folder resumes after it instead of deciding the folder again."""
        events = [e for _, e in self.read(0).events]
        if events:
            return max(events, key=lambda e: e.sequence).frame
        with contextlib.suppress(OSError):
            return (self.folder / "last_frame").read_text() or None
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sync()
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
