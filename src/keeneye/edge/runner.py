"""The edge runner: frames → decision → PLC, in process, never later than the deadline.

For each frame the runner stamps the trigger (sequence, wall and monotonic time), hands capture →
preprocess → model → decision to one inference thread, and waits for it **until the deadline**
(``decision.deadline_ms`` after the trigger, 348 ms for line-inspection). This wait is the per-frame
watchdog:

* an answer in time → OK / DEFECT by the line thresholds (:mod:`keeneye.edge.decision`);
* no answer by the deadline → fail-safe DEFECT (PLC result 3) with reason ``deadline_missed``; the
  model's answer, when it comes, is counted as late and dropped — it is never sent, so it can never
  overwrite the fail-safe decision the PLC already has;
* an unreadable frame (``unreadable_frame``) or a model error (``model_error``) → fail-safe at once.

The decided event goes to the journal (page cache, survives kill -9) **before** the PLC sink gets it,
then to the sink (``send`` never blocks); storing it in the DB is the recorder thread's job
(:mod:`keeneye.edge.recorder`). Nothing on this path waits for a disk, a database or the PLC.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

import numpy as np
import numpy.typing as npt

from keeneye.domain import Answer, Decision, InvalidInput, ModelRef
from keeneye.edge.decision import LineThresholds, LineVerdict, decide_line
from keeneye.edge.frames import Frame, FrameSource, SourceFrame
from keeneye.edge.journal import DecidedEvent, Journal
from keeneye.edge.recorder import EventRecorder
from keeneye.imaging import content_hash, sniff_format
from keeneye.metrics import Metrics
from keeneye.models import ModelManifest
from keeneye.pipelines import PipelineSpec, finish, prepare
from keeneye.settings import Settings
from keeneye.sinks import LineStopGuard, PlcDecision, ResultCode, Sink
from keeneye.workers import WorkerBase

log = logging.getLogger(__name__)

DEFAULT_DEADLINE_MS = 348.0


class InferenceModel(Protocol):
    """What the runner needs of a model: its manifest and a synchronous batch run
    (:class:`keeneye.models.OnnxModel` is one)."""

    @property
    def manifest(self) -> ModelManifest: ...

    def run(self, batch: npt.NDArray[Any]) -> list[npt.NDArray[Any]]: ...


class FailsafeReason(enum.StrEnum):
    """Why a part got the fail-safe DEFECT (stored as the event's ``rejected`` reason)."""

    deadline_missed = "deadline_missed"
    unreadable_frame = "unreadable_frame"
    model_error = "model_error"


@dataclass(frozen=True)
class LineContext:
    """Where the frames come from and what is on the line: labels of every decision."""

    line: str
    camera: str
    sku: str = ""
    batch: str = ""


@dataclass(frozen=True)
class _Answered:
    answer: Answer
    verdict: LineVerdict
    image_format: str
    timings: dict[str, float]


class SummaryJson(TypedDict):
    frames: int
    ok: int
    defect: int
    failsafe: dict[str, int]
    first_sequence: int | None
    last_sequence: int | None
    latency_ms: dict[str, float]
    late_answers: int
    stored: int


@dataclass
class RunSummary:
    """What a run decided: counts by result and fail-safe reason, sequences, latency percentiles."""

    frames: int = 0
    ok: int = 0
    defect: int = 0
    failsafe: Counter[str] = field(default_factory=Counter)
    first_sequence: int | None = None
    last_sequence: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    late_answers: int = 0
    stored: int = 0

    def add(self, event: DecidedEvent) -> None:
        self.frames += 1
        if event.reason is not None:
            self.failsafe[event.reason] += 1
        elif event.decision == Decision.ok.value:
            self.ok += 1
        else:
            self.defect += 1
        if self.first_sequence is None:
            self.first_sequence = event.sequence
        self.last_sequence = event.sequence
        self.latencies_ms.append(event.latency_ms)

    def to_json(self) -> SummaryJson:
        lat = np.asarray(self.latencies_ms or [0.0])
        return {
            "frames": self.frames,
            "ok": self.ok,
            "defect": self.defect,
            "failsafe": dict(self.failsafe),
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 2),
                "p95": round(float(np.percentile(lat, 95)), 2),
                "max": round(float(lat.max()), 2),
            },
            "late_answers": self.late_answers,
            "stored": self.stored,
        }


class EdgeRunner(WorkerBase):
    """One camera's runner (module docstring). ``step`` decides one frame; a finite source ends the run."""

    def __init__(
        self,
        *,
        spec: PipelineSpec,
        model: InferenceModel,
        ref: ModelRef,
        source: FrameSource,
        sink: Sink,
        journal: Journal,
        recorder: EventRecorder | None,
        settings: Settings,
        context: LineContext,
        metrics: Metrics | None = None,
        line_stop: LineStopGuard | None = None,
    ) -> None:
        super().__init__(f"edge-{context.line}-{context.camera}")
        self.line_stop = line_stop
        self.spec = spec
        self.model = model
        self.ref = ref
        self.source = source
        self.sink = sink
        self.journal = journal
        self.recorder = recorder
        self.settings = settings
        self.context = context
        self.metrics = metrics or Metrics()
        self.deadline_ms = spec.decision.deadline_ms or DEFAULT_DEADLINE_MS
        self.thresholds = LineThresholds.for_sku(
            spec, model.manifest, context.sku, settings.edge.sku_thresholds
        )
        self.summary = RunSummary()
        self._labels = (spec.name, context.line, context.camera)
        for reason in FailsafeReason:  # series exist at 0 from the start, so the first increase counts
            self.metrics.edge_failsafe.labels(*self._labels, reason.value)
        self.metrics.edge_late_answers.labels(*self._labels)
        # One inference thread: a stalled model blocks it, and every frame meanwhile meets its deadline
        # as a fail-safe; frames not started by then are cancelled, so nothing piles up behind it.
        self._executor = InferenceThread()
        self._frames: Iterator[SourceFrame | None] | None = None
        last = journal.last_sequence()
        self.next_sequence = 1 if last is None else last + 1

    # -- the worker lifecycle ---------------------------------------------------------------------

    def setup(self) -> None:
        if self.recorder is not None:
            self.recorder.start()
        if self.line_stop is not None:
            self.line_stop.start()
        self._frames = iter(self.source.frames())

    def step(self) -> None:
        assert self._frames is not None, "setup() first"
        try:
            captured = next(self._frames)
        except StopIteration:
            self.stop_event.set()
            return
        if captured is None:
            return  # the source is waiting for a frame: a chance to honour a stop request
        frame = self.stamp(captured)
        with self.busy():
            self.decide(frame)
        self.processed += 1

    def teardown(self) -> None:
        self.source.close()
        self._executor.close()
        if self.line_stop is not None:
            self.line_stop.close()
        if self.recorder is not None:
            self.recorder.halt()
        self.sink.close()
        if self.recorder is not None:
            self.recorder.close()
            self.summary.stored = self.recorder.stored
        self.journal.close()

    # -- one frame --------------------------------------------------------------------------------

    def stamp(self, captured: SourceFrame) -> Frame:
        """The trigger: this frame's sequence and time (a camera with a hardware timestamp would pass
        its own here)."""
        seq = self.next_sequence
        self.next_sequence += 1
        c = self.context
        return Frame(
            data=captured.data,
            name=captured.name,
            sequence=seq,
            triggered_at=time.time(),
            trigger_monotonic=time.monotonic(),
            line=c.line,
            camera=c.camera,
            sku=c.sku,
            batch=c.batch,
        )

    def decide(self, frame: Frame) -> DecidedEvent:
        """Decide ``frame`` by its deadline, journal it, hand it to the PLC; returns the event."""
        future = self._executor.submit(self._answer, frame)
        budget_ms = self.deadline_ms - self.settings.edge.decision_margin_ms  # room to journal and send
        remaining = budget_ms / 1000 - (time.monotonic() - frame.trigger_monotonic)
        answered: _Answered | None = None
        reason: FailsafeReason | None = None
        detail = ""
        try:
            answered = future.result(timeout=max(remaining, 0.0))
        except concurrent.futures.TimeoutError:
            reason, detail = FailsafeReason.deadline_missed, f"no answer within {self.deadline_ms:g} ms"
            if not future.cancel():  # running: its answer will be late, and dropped
                future.add_done_callback(self._late)
        except InvalidInput as exc:
            reason, detail = FailsafeReason.unreadable_frame, f"{exc.reason}: {exc}"
        except Exception as exc:
            log.warning("model error on frame %s", frame.name, exc_info=True)
            reason, detail = FailsafeReason.model_error, f"{type(exc).__name__}: {exc}"
        latency_ms = (time.monotonic() - frame.trigger_monotonic) * 1000
        if answered is not None and latency_ms > self.deadline_ms:
            # Answered, but the decision itself would go out late: the part gets the fail-safe too.
            reason, detail = FailsafeReason.deadline_missed, f"answered after {latency_ms:.0f} ms"
            self._count_late()
        event = self._event(frame, answered if reason is None else None, reason, detail, latency_ms)
        try:
            self.journal.append(event)  # before the PLC: a decision the PLC got is never lost
        except OSError:  # a full or failed disk must not stop the line: the PLC still gets its answer
            log.exception("cannot journal part %s; it is decided but will not be stored", event.sequence)
        self.sink.send(self._plc_decision(event))
        if self.settings.edge.keep_images and frame.data:
            try:
                self.journal.spool_image(event.content_hash, frame.data)
            except OSError:
                log.warning("cannot spool frame %s; its event is stored without the image", frame.name)
        self._observe(event)
        return event

    def _answer(self, frame: Frame) -> _Answered:
        """capture → preprocess → model → decision (the inference thread)."""
        manifest = self.model.manifest
        t0 = time.perf_counter()
        prepared = prepare(self.spec, manifest, frame.data, self.settings)
        t1 = time.perf_counter()
        batch = np.expand_dims(prepared.tensor, 0)
        outputs = [o[0] for o in self.model.run(batch)]
        t2 = time.perf_counter()
        answer = finish(self.spec, manifest, self.ref, prepared, outputs)
        verdict = decide_line(answer.prediction.instances, manifest, self.thresholds)
        answer.decision = verdict.decision  # the line's thresholds decide, not the manifest's
        t3 = time.perf_counter()
        timings = {"decode": (t1 - t0) * 1000, "infer": (t2 - t1) * 1000, "post": (t3 - t2) * 1000}
        return _Answered(answer, verdict, prepared.image.format, timings)

    def _event(
        self,
        frame: Frame,
        answered: _Answered | None,
        reason: FailsafeReason | None,
        detail: str,
        latency_ms: float,
    ) -> DecidedEvent:
        manifest = self.model.manifest
        if answered is not None:
            verdict = answered.verdict
            result = ResultCode.of(verdict.decision)
            class_id, class_name, confidence = verdict.class_id, verdict.class_name, verdict.confidence
            image_format: str | None = answered.image_format
        else:
            result = ResultCode.failsafe_defect
            class_id, class_name, confidence = 0, "", 0.0
            image_format = _format_of(frame.data)
        return DecidedEvent(
            epoch=self.journal.epoch,
            sequence=frame.sequence,
            line=frame.line,
            camera=frame.camera,
            sku=frame.sku,
            batch=frame.batch,
            frame=frame.name,
            triggered_at=frame.triggered_at,
            latency_ms=round(latency_ms, 3),
            result=int(result),
            decision=Decision.ok.value if result is ResultCode.ok else Decision.defect.value,
            class_id=class_id,
            class_name=class_name,
            confidence=round(confidence, 6),
            content_hash=content_hash(frame.data),
            size_bytes=len(frame.data),
            image_format=image_format,
            model_name=self.ref.name,
            model_version=self.ref.version,
            task=manifest.task.value,
            reason=None if reason is None else reason.value,
            detail=detail,
            answer=None if answered is None else answered.answer.to_json(),
            timings={} if answered is None else answered.timings,
        )

    def _plc_decision(self, event: DecidedEvent) -> PlcDecision:
        return PlcDecision(
            sequence=event.sequence,
            result=ResultCode(event.result),
            line=event.line,
            camera=event.camera,
            triggered_at=event.triggered_at,
            class_id=event.class_id,
            class_name=event.class_name,
            confidence=event.confidence,
            latency_ms=event.latency_ms,
        )

    def _observe(self, event: DecidedEvent) -> None:
        self.summary.add(event)
        m = self.metrics
        m.edge_decisions.labels(*self._labels, ResultCode(event.result).name).inc()
        m.edge_decision_seconds.labels(*self._labels).observe(event.latency_ms / 1000)
        if event.reason is not None:
            m.edge_failsafe.labels(*self._labels, event.reason).inc()
            log.warning(
                "fail-safe DEFECT for part %s (%s): %s", event.sequence, event.reason, event.detail,
                extra={"line": event.line, "camera": event.camera},
            )  # fmt: skip

    def _late(self, future: Future[_Answered]) -> None:
        if not future.cancelled():
            self._count_late()

    def _count_late(self) -> None:
        self.summary.late_answers += 1
        self.metrics.edge_late_answers.labels(*self._labels).inc()


class InferenceThread:
    """One daemon thread running submitted calls in order, each with its own future.

    Not a ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so a model hung
    for good would keep a stopping runner alive; a daemon thread is abandoned instead.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], _Answered], Future[_Answered]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="keeneye-edge-infer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Frame], _Answered], frame: Frame) -> Future[_Answered]:
        future: Future[_Answered] = Future()
        self._jobs.put((lambda: fn(frame), future))
        return future

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, future = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled at its deadline before it started
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

    def close(self) -> None:
        self._jobs.put(None)


def _format_of(data: bytes) -> str | None:
    try:
        return str(sniff_format(data))
    except InvalidInput:
        return None
