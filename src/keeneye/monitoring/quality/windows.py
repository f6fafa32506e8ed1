"""Online quality windows: each model version's precision / recall / F1 on the live traffic people
labelled, against the version's own test-split values.

:func:`online_quality` (one pipeline, one window), :func:`pipeline_quality` and
:func:`evaluate_quality` (every pipeline, what the scheduler runs) and :func:`update_quality_metrics`
(the gauges). When a metric falls more than ``drop`` (relative) below its reference on at least
``min_feedback`` labelled observations, :attr:`QualityWindow.drop` is raised. Queries stay bounded:
feedback is read by ``(pipeline, created_at)`` newest first in pages of :data:`FEEDBACK_PAGE`, at most
:data:`MAX_WINDOW_FEEDBACK` rows per window; predictions by observation id in chunks.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

from keeneye.domain import (
    Answer,
    Decision,
    JsonObject,
    KeeneyeError,
    NotFound,
    Task,
)
from keeneye.geometry import match_instances
from keeneye.metrics import Metrics
from keeneye.monitoring.quality.feedback import is_number, truth_decision, truth_instances
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.registry import ModelRegistry
from keeneye.scores import binary_metrics, classification_metrics, confusion_matrix
from keeneye.settings import Settings
from keeneye.store import ResultsDB, utcnow

log = logging.getLogger(__name__)


# --- the window ---------------------------------------------------------------------------------
FEEDBACK_PAGE = 500  # feedback rows per query (keyset pages, newest first)
PREDICTION_CHUNK = 500  # observation ids per IN (...) query: below every backend's parameter limit
MAX_WINDOW_FEEDBACK = 50_000  # feedback rows read per window and pipeline

QualityKind = Literal["classify", "ok-defect", "instances"]

# Online metric name → the manifest (test-split) metric it is compared with. The classify values are
# macro averages (``compute_metrics`` also stores them as precision/recall/f1); ok-defect is image-level
# with DEFECT positive; instance metrics count instances matched at IoU ≥ 0.5 (class must agree).
REFERENCE_NAMES: dict[QualityKind, dict[str, str]] = {
    "classify": {
        "precision": "macro_precision",
        "recall": "macro_recall",
        "f1": "macro_f1",
        "accuracy": "accuracy",
        "macro_precision": "macro_precision",
        "macro_recall": "macro_recall",
        "macro_f1": "macro_f1",
    },
    "ok-defect": {"precision": "precision", "recall": "recall", "f1": "f1", "accuracy": "accuracy"},
    "instances": {"precision": "instance_precision", "recall": "instance_recall", "f1": "instance_f1"},
}


def quality_kind(spec: PipelineSpec) -> QualityKind:
    """Which truth a pipeline's quality is measured on (the same choice ``evaluate_bundle`` makes)."""
    if spec.task is Task.classify:
        return "classify"
    if spec.decision.kind == "ok-defect":
        return "ok-defect"
    return "instances"


# ==================================================================================================
# Online quality
# ==================================================================================================


class QualityWindowJson(TypedDict):
    pipeline: str
    model_version: str
    variant: str
    kind: QualityKind
    n: int
    metrics: dict[str, float | None]
    reference: dict[str, float]
    relative_drops: dict[str, float]
    drop: bool
    window_start: str
    window_end: str


@dataclass(frozen=True)
class QualityWindow:
    """One model version (in one variant) on the labelled observations of one window."""

    pipeline: str
    model_version: str
    variant: str
    kind: QualityKind
    n: int  # labelled observations this version answered
    metrics: Mapping[str, float | None]  # None = undefined (e.g. precision when nothing was positive)
    reference: Mapping[str, float]  # the version's test-split values, by the same names
    relative_drops: Mapping[str, float]  # (reference − online) / reference, per metric with both
    drop: bool
    window_start: datetime
    window_end: datetime

    def to_dict(self) -> QualityWindowJson:
        return {
            "pipeline": self.pipeline,
            "model_version": self.model_version,
            "variant": self.variant,
            "kind": self.kind,
            "n": self.n,
            "metrics": dict(self.metrics),
            "reference": dict(self.reference),
            "relative_drops": dict(self.relative_drops),
            "drop": self.drop,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
        }


@dataclass
class _Accumulator(abc.ABC):
    """Truth against one version's answers, added one observation at a time."""

    n: int = 0  # observations counted

    @abc.abstractmethod
    def add(self, label: Mapping[str, Any], answer: Answer, decision: str | None) -> None: ...

    @abc.abstractmethod
    def metrics(self) -> dict[str, float | None]: ...


@dataclass
class _ClassifyAccumulator(_Accumulator):
    truth: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)

    def add(self, label: Mapping[str, Any], answer: Answer, decision: str | None) -> None:
        t, p = label.get("class"), answer.predicted_class
        if isinstance(t, str) and isinstance(p, str):
            self.truth.append(t)
            self.predicted.append(p)
            self.n += 1

    def metrics(self) -> dict[str, float | None]:
        names = sorted({*self.truth, *self.predicted})
        index = {name: i for i, name in enumerate(names)}
        cm = confusion_matrix([index[t] for t in self.truth], [index[p] for p in self.predicted], len(names))
        m = classification_metrics(cm, names)
        out: dict[str, float | None] = {
            "precision": m["macro_precision"],
            "recall": m["macro_recall"],
            "f1": m["macro_f1"],
            "accuracy": m["accuracy"],
        }
        out.update({k: m[k] for k in ("macro_precision", "macro_recall", "macro_f1")})
        return out


@dataclass
class _DecisionAccumulator(_Accumulator):
    truth: list[bool] = field(default_factory=list)
    predicted: list[bool] = field(default_factory=list)

    def add(self, label: Mapping[str, Any], answer: Answer, decision: str | None) -> None:
        said = decision or (answer.decision.value if answer.decision is not None else None)
        truth = label.get("decision")
        if truth is None and isinstance(label.get("instances"), list):  # stored by an importer
            truth = truth_decision([i for i in label["instances"] if isinstance(i, Mapping)], None).value
        if said in (Decision.ok.value, Decision.defect.value) and truth in (
            Decision.ok.value,
            Decision.defect.value,
        ):
            self.truth.append(truth == Decision.defect.value)
            self.predicted.append(said == Decision.defect.value)
            self.n += 1

    def metrics(self) -> dict[str, float | None]:
        b = binary_metrics(self.truth, self.predicted)
        return {k: b[k] for k in ("precision", "recall", "f1", "accuracy")}


@dataclass
class _InstanceAccumulator(_Accumulator):
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, label: Mapping[str, Any], answer: Answer, decision: str | None) -> None:
        vocabulary: list[str] = []
        truth = truth_instances(label, vocabulary)
        if truth is None:
            return
        counts = match_instances(truth, answer.instances_on(vocabulary))
        self.tp, self.fp, self.fn = self.tp + counts.tp, self.fp + counts.fp, self.fn + counts.fn
        self.n += 1

    def metrics(self) -> dict[str, float | None]:
        # One entry per instance outcome: tp (found), fp (false find), fn (missed).
        truth = [True] * self.tp + [False] * self.fp + [True] * self.fn
        predicted = [True] * (self.tp + self.fp) + [False] * self.fn
        b = binary_metrics(truth, predicted)
        return {k: b[k] for k in ("precision", "recall", "f1")}


_ACCUMULATORS: dict[QualityKind, Callable[[], _Accumulator]] = {
    "classify": _ClassifyAccumulator,
    "ok-defect": _DecisionAccumulator,
    "instances": _InstanceAccumulator,
}


def online_quality(
    db: ResultsDB,
    pipeline: str,
    *,
    spec: PipelineSpec,
    window_seconds: float,
    reference_for: Callable[[str], Mapping[str, float]],
    min_feedback: int,
    drop: float,
    now: datetime | None = None,
) -> list[QualityWindow]:
    """Quality of every model version and variant on the window ``(now − window_seconds, now]``.

    The latest feedback per observation wins (a correction replaces the first label). Each labelled
    observation counts for every version that answered it (champion, canary, shadow), so versions
    are compared on the same truth but never mixed. ``reference_for(version)`` gives the version's
    test-split metrics (the manifest's, as the registry stores them).
    """
    end = now or utcnow()
    start = end - timedelta(seconds=window_seconds)
    kind = quality_kind(spec)
    accumulators: dict[tuple[str, str], _Accumulator] = {}
    for labels in _latest_feedback(db, pipeline, start, end):
        for observation_id, version, variant, answer, decision in _predictions(db, spec, list(labels)):
            acc = accumulators.get((version, variant))
            if acc is None:
                acc = accumulators[(version, variant)] = _ACCUMULATORS[kind]()
            acc.add(labels[observation_id], answer, decision)
    references: dict[str, Mapping[str, float]] = {}
    windows = []
    for (version, variant), acc in sorted(
        accumulators.items(), key=lambda kv: (_version_key(kv[0][0]), kv[0][1])
    ):
        if acc.n == 0:
            continue
        if version not in references:
            references[version] = reference_for(version)
        windows.append(
            _window(
                pipeline, version, variant, kind, acc, references[version], min_feedback, drop, start, end
            )
        )
    return windows


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (10**12, version)


def _window(
    pipeline: str,
    version: str,
    variant: str,
    kind: QualityKind,
    acc: _Accumulator,
    manifest_metrics: Mapping[str, float],
    min_feedback: int,
    drop: float,
    start: datetime,
    end: datetime,
) -> QualityWindow:
    metrics = acc.metrics()
    reference = {
        name: float(manifest_metrics[source])
        for name, source in REFERENCE_NAMES[kind].items()
        if source in manifest_metrics and is_number(manifest_metrics[source])
    }
    drops = {}
    for name, ref in reference.items():
        value = metrics.get(name)
        if value is not None and ref > 0:
            drops[name] = (ref - value) / ref
    # Rounded so that "exactly 10 %" does not flip on the last bit of a float.
    dropped = acc.n >= min_feedback and any(round(d, 9) > drop for d in drops.values())
    return QualityWindow(
        pipeline=pipeline,
        model_version=version,
        variant=variant,
        kind=kind,
        n=acc.n,
        metrics=metrics,
        reference=reference,
        relative_drops=drops,
        drop=dropped,
        window_start=start,
        window_end=end,
    )


def _latest_feedback(
    db: ResultsDB, pipeline: str, start: datetime, end: datetime
) -> Iterator[dict[str, JsonObject]]:
    """``{observation_id: label}`` per page of the window's feedback, newest first, each observation
    once (its newest label). Keyset pages on ``ix_feedback_pipeline_created_at``."""
    seen: set[str] = set()
    cursor: tuple[datetime, int] | None = None
    read = 0
    while read < MAX_WINDOW_FEEDBACK:
        rows = db.feedback_page(
            pipeline,
            limit=min(FEEDBACK_PAGE, MAX_WINDOW_FEEDBACK - read),
            before=cursor,
            after=start,
            until=end,
        )
        if not rows:
            return
        read += len(rows)
        cursor = (rows[-1].created_at, rows[-1].id)
        page: dict[str, JsonObject] = {}
        for row in rows:
            if row.observation_id not in seen and isinstance(row.label, dict):
                seen.add(row.observation_id)
                page[row.observation_id] = row.label
        if page:
            yield page
        if len(rows) < FEEDBACK_PAGE:
            return
    log.warning(
        "quality window of %s holds more than %d feedback rows; the oldest are left out", pipeline, read
    )


def _predictions(
    db: ResultsDB, spec: PipelineSpec, observation_ids: Sequence[str]
) -> Iterator[tuple[str, str, str, Answer, str | None]]:
    """``(observation_id, version, variant, answer, decision)`` of the pipeline's model, in chunks."""
    for i in range(0, len(observation_ids), PREDICTION_CHUNK):
        chunk = observation_ids[i : i + PREDICTION_CHUNK]
        for p in db.predictions_of_model(chunk, spec.model_name):
            decision = None if p.decision is None else p.decision.value
            yield (
                p.observation_id,
                p.model_version,
                p.variant.value,
                Answer.from_stored(p.result or {}),
                decision,
            )


# --- publishing and scheduling --------------------------------------------------------------------

# Which label sets each Metrics object carries per pipeline, so a retired version's gauges go away
# instead of alarming forever.
_PUBLISHED: weakref.WeakKeyDictionary[Metrics, dict[str, set[tuple[str, ...]]]] = weakref.WeakKeyDictionary()
_PUBLISHED_LOCK = threading.Lock()


def update_quality_metrics(
    metrics: Metrics, windows: Iterable[QualityWindow], *, pipelines: Iterable[str] | None = None
) -> None:
    """Set ``online_quality{pipeline,version,metric}`` and ``quality_drop{pipeline,version}``.

    ``pipelines`` (default: those in ``windows``) are replaced wholesale: versions without a window now
    lose their gauges. A version seen in two variants is published from the one with more feedback.
    """
    windows = list(windows)
    covered = set(pipelines) if pipelines is not None else {w.pipeline for w in windows}
    chosen: dict[tuple[str, str], QualityWindow] = {}
    for w in windows:
        key = (w.pipeline, w.model_version)
        if key not in chosen or w.n > chosen[key].n:
            chosen[key] = w
    with _PUBLISHED_LOCK:
        published = _PUBLISHED.setdefault(metrics, {})
        for pipeline in covered:
            for labels in published.pop(pipeline, set()):
                gauge = metrics.online_quality if len(labels) == 3 else metrics.quality_drop
                with contextlib.suppress(KeyError):  # already gone
                    gauge.remove(*labels)
        for (pipeline, version), w in chosen.items():
            if pipeline not in covered:
                continue
            sets = published.setdefault(pipeline, set())
            for name, value in w.metrics.items():
                if value is not None:
                    metrics.online_quality.labels(pipeline, version, name).set(value)
                    sets.add((pipeline, version, name))
            metrics.quality_drop.labels(pipeline, version).set(1 if w.drop else 0)
            sets.add((pipeline, version))


def pipeline_quality(
    settings: Settings,
    db: ResultsDB,
    registry: ModelRegistry,
    spec: PipelineSpec,
    now: datetime | None = None,
) -> list[QualityWindow]:
    """:func:`online_quality` with the settings' window and thresholds and the registry's references."""
    monitoring = settings.monitoring

    def reference_for(version: str) -> Mapping[str, float]:
        try:
            return registry.get(spec.model_name, version).metrics
        except NotFound:  # a deleted version: nothing to compare with
            return {}

    return online_quality(
        db,
        spec.name,
        spec=spec,
        window_seconds=monitoring.quality_window_seconds,
        reference_for=reference_for,
        min_feedback=monitoring.quality_min_feedback,
        drop=monitoring.quality_drop,
        now=now,
    )


def evaluate_quality(
    settings: Settings,
    db: ResultsDB,
    registry: ModelRegistry,
    catalog: PipelineCatalog,
    metrics: Metrics,
    now: datetime | None = None,
) -> dict[str, list[QualityWindow]]:
    """Every pipeline's quality windows, published as gauges; the scheduler runs this each interval.

    A pipeline whose evaluation fails (registry down) is logged and left out; its gauges keep their
    last values until the next successful evaluation.
    """
    out: dict[str, list[QualityWindow]] = {}
    for spec in catalog.specs():
        try:
            out[spec.name] = pipeline_quality(settings, db, registry, spec, now)
        except KeeneyeError as exc:
            log.warning("online quality of %s not evaluated: %s", spec.name, exc.one_line())
    update_quality_metrics(metrics, [w for ws in out.values() for w in ws], pipelines=out)
    for name, ws in out.items():
        for w in ws:
            if w.drop:
                log.warning(
                    "quality drop: %s v%s (%s) on %d labels: %s",
                    name, w.model_version, w.variant, w.n,
                    ", ".join(f"{k} {d:.1%} below test" for k, d in w.relative_drops.items() if d > 0),
                )  # fmt: skip
    return out


def quality_report(
    settings: Settings, spec: PipelineSpec, windows: Sequence[QualityWindow]
) -> dict[str, Any]:
    """The JSON of ``GET /v1/pipelines/{name}/quality`` and ``keeneye quality --json``."""
    monitoring = settings.monitoring
    return {
        "pipeline": spec.name,
        "kind": quality_kind(spec),
        "window_seconds": monitoring.quality_window_seconds,
        "min_feedback": monitoring.quality_min_feedback,
        "drop_threshold": monitoring.quality_drop,
        "reference_names": REFERENCE_NAMES[quality_kind(spec)],
        "windows": [w.to_dict() for w in windows],
    }
