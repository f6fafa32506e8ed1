"""The recorder: copies the edge journal into the results DB and the object store, off the decision path.

A thread wakes every ``edge.flush_interval_seconds``, fsyncs the journal, reads the new lines and
stores each decided event once its PLC outcome is known (or ``edge.outcome_wait_seconds`` after the
decision, or at shutdown / restart: then ``sink`` is ``unknown``). Each event becomes:

* the frame's bytes at its content-addressed ``observation_key`` (when ``edge.keep_images``);
* an ``observations`` row with the event id as its id — ``done`` when the model decided, ``rejected``
  with the fail-safe reason (``deadline_missed``, ``unreadable_frame``, ``model_error``) otherwise — and
  the line, camera, SKU, batch, sequence, PLC result and sink outcome (and its time) in its metadata,
  plus the PLC link as the sink saw it when the part was stored (``plc``: connected, last ack, last
  error), which the line dashboard shows;
* a ``predictions`` row (champion) for a model decision, with the latency and timings.

Both writes are idempotent (an existing observation id is left alone, predictions are unique per
observation and model version), so a replay after kill -9 stores nothing twice. When the DB is down the
events stay in the journal and are retried; the line keeps deciding.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keeneye.domain import Decision, JsonObject, ObservationStatus, Variant
from keeneye.edge.journal import DecidedEvent, Journal, OutcomeNote
from keeneye.metrics import Metrics
from keeneye.pipelines import content_type_of, observation_key
from keeneye.settings import EdgeSettings
from keeneye.sinks import SinkState
from keeneye.store import NewPrediction, ObjectStore, ResultsDB

log = logging.getLogger(__name__)

SOURCE = "edge"


@dataclass(frozen=True)
class RecorderLabels:
    pipeline: str
    line: str
    camera: str


@dataclass(frozen=True)
class EventMessage:
    """A stored event as the bus carries it on ``keeneye.<pipeline>.out``: keyed by ``line_id/camera_id``
    so one camera's parts stay in order on one partition."""

    key: str
    value: bytes


StoredHook = Callable[[Sequence[EventMessage]], None]
"""Called in the recorder thread with each stored group (the CLI publishes them to the bus)."""


class EventRecorder:
    """The journal → DB copier thread of one runner (module docstring)."""

    def __init__(
        self,
        journal: Journal,
        db: ResultsDB,
        objects: ObjectStore | None,
        labels: RecorderLabels,
        settings: EdgeSettings,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        on_stored: StoredHook | None = None,
        link: Callable[[], SinkState] | None = None,
    ) -> None:
        self.on_stored = on_stored
        self.link = link  # the sink's state, snapshotted into each stored group (the PLC link)
        self.journal = journal
        self.db = db
        self.objects = objects
        self.labels = labels
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self._offset = journal.cursor()
        self._pending: list[tuple[int, DecidedEvent]] = []
        self._outcomes: dict[int, OutcomeNote] = {}
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stored = 0
        self._last_sync = 0.0
        self._stopping = False  # close(): the sink is already closed, so its link reads "stopped"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keeneye-edge-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.flush_interval_seconds):
            try:
                self.flush()
            except Exception:  # the DB or object store is down: the journal keeps the events
                log.warning("edge events not stored yet; retrying", exc_info=True)

    def halt(self, timeout: float = 10.0) -> None:
        """Stop the thread; from now on every stored part says the runner stopped the link itself. The
        runner calls it before it closes the sink, so no part stored while the sink shuts down reads as
        a PLC outage."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stopping = True

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and store everything journaled, outcome known or not."""
        self.halt(timeout)
        try:
            self.flush(final=True)
        except Exception:
            log.warning("edge events left in the journal for the next start", exc_info=True)

    @property
    def unstored(self) -> int:
        return len(self._pending)

    def flush(self, *, final: bool = False) -> int:
        """Store the ready events; returns how many. ``final``: every journaled event is ready."""
        with self._flush_lock:
            now = self._clock()
            if final or now - self._last_sync >= self.settings.fsync_interval_seconds:
                self.journal.sync()
                self._last_sync = now
            read = self.journal.read(self._offset)
            self._offset = read.end
            self._pending.extend(read.events)
            self._outcomes.update(read.outcomes)
            wait = self.settings.outcome_wait_seconds
            ready = [
                e
                for _, e in self._pending
                if final or e.sequence in self._outcomes or now - e.triggered_at - e.latency_ms / 1000 >= wait
            ]
            if ready:
                self._store(ready)
            done = {e.sequence for e in ready}
            self._pending = [(start, e) for start, e in self._pending if e.sequence not in done]
            for seq in done:
                self._outcomes.pop(seq, None)
            cursor = self._pending[0][0] if self._pending else self._offset
            newest = max(ready, key=lambda e: e.sequence) if ready else None
            self.journal.set_cursor(cursor, max(done) if done else None, newest.frame if newest else None)
            if self._pending == [] and cursor != self._offset:
                self._offset = cursor  # the journal was compacted: read on from its new start
            self.stored += len(ready)
            if self.metrics is not None:
                lab = self.labels
                self.metrics.edge_unstored.labels(lab.pipeline, lab.line, lab.camera).set(len(self._pending))
            return len(ready)

    def _store(self, events: list[DecidedEvent]) -> None:
        pipeline = self.labels.pipeline
        keys: dict[str, str | None] = {}
        for event in events:
            keys[event.event_id] = self._store_image(event)
        predictions: list[tuple[str, NewPrediction]] = []
        link = None if self.link is None else link_snapshot(self.link(), stopped=self._stopping)
        for event in events:
            outcome = self._outcomes.get(event.sequence)
            self.db.create_observation(
                pipeline,
                event.content_hash,
                keys[event.event_id],
                content_type_of(event.image_format),
                event.size_bytes,
                event_metadata(event, outcome, link),
                SOURCE,
                status=ObservationStatus.rejected if event.failsafe else ObservationStatus.done,
                id=event.event_id,
                reason=event.reason,
            )
            if not event.failsafe and event.answer is not None:
                predictions.append((event.event_id, prediction_of(event, outcome)))
        if predictions:
            self.db.save_predictions(pipeline, predictions)
        if self.on_stored is not None:
            messages = [event_message(pipeline, e, self._outcomes.get(e.sequence)) for e in events]
            try:
                self.on_stored(messages)
            except Exception:  # stored is what counts; the bus announcement is best effort
                log.warning("stored edge events not published to the bus", exc_info=True)
        still_needed = {e.content_hash for _, e in self._pending if e not in events}
        for event in events:
            if event.content_hash not in still_needed:
                with contextlib.suppress(OSError):
                    (self.journal.images / event.content_hash).unlink()

    def _store_image(self, event: DecidedEvent) -> str | None:
        if self.objects is None or not self.settings.keep_images or event.size_bytes == 0:
            return None
        spooled = self.journal.images / event.content_hash
        key = observation_key(self.labels.pipeline, event.content_hash, event.image_format)
        try:
            data = spooled.read_bytes()
        except FileNotFoundError:
            return key if self.objects.exists(key) else None  # stored before a restart, or never spooled
        self.objects.put(key, data, content_type=content_type_of(event.image_format))
        return key


def link_snapshot(state: SinkState, *, stopped: bool = False) -> JsonObject:
    """The PLC link as stored with a part: connected or not, when the PLC last acknowledged a write
    (Unix seconds), failures since, and the last error (cut to 200 characters). ``stopped``: stored
    while the runner shuts down, after it closed the sink itself (not a PLC outage)."""
    return {
        "sink": state.sink,
        "stopped": stopped,
        "connected": state.connected,
        "last_ack_at": state.last_ack_at,
        "consecutive_failures": state.consecutive_failures,
        "last_error": state.last_error[:200],
    }


def event_metadata(
    event: DecidedEvent, outcome: OutcomeNote | None, link: JsonObject | None = None
) -> JsonObject:
    """What the observation row says about the part: where, which, what the PLC got, its ack (and
    when), and with ``link`` the PLC link when it was stored (:func:`link_snapshot`)."""
    doc: JsonObject = {
        "line": event.line,
        "camera": event.camera,
        "sku": event.sku,
        "batch": event.batch,
        "sequence": event.sequence,
        "frame": event.frame,
        "triggered_at": event.triggered_at,
        "result_code": event.result,
        "decision": event.decision,
        "class_name": event.class_name,
        "confidence": event.confidence,
        "latency_ms": event.latency_ms,
        "reason": event.reason,
        "detail": event.detail,
        "sink": "unknown" if outcome is None else outcome["status"],
        "sink_reason": None if outcome is None else outcome["reason"],
        "sink_at": None if outcome is None else outcome["at"],
    }
    if link is not None:
        doc["plc"] = link
    return doc


def prediction_of(event: DecidedEvent, outcome: OutcomeNote | None) -> NewPrediction:
    timings: JsonObject = {**event.timings, "sink": "unknown" if outcome is None else outcome["status"]}
    return NewPrediction(
        model_name=event.model_name,
        model_version=event.model_version,
        variant=Variant.champion,
        task=event.task,
        result=event.answer or {},
        decision=Decision(event.decision),
        confidence=event.confidence,
        latency_ms=event.latency_ms,
        timings=timings,
    )


def event_message(pipeline: str, event: DecidedEvent, outcome: OutcomeNote | None) -> EventMessage:
    """The bus message of a stored event (JSON), keyed ``line_id/camera_id``."""
    doc: JsonObject = {
        "observation_id": event.event_id,
        "pipeline": pipeline,
        "line_id": event.line,
        "camera_id": event.camera,
        **event_metadata(event, outcome),
        "class_id": event.class_id,
        "class_name": event.class_name,
        "confidence": event.confidence,
        "model_name": event.model_name,
        "model_version": event.model_version,
    }
    return EventMessage(f"{event.line}/{event.camera}", json.dumps(doc, separators=(",", ":")).encode())
