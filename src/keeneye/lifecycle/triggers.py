"""Retraining triggers: when a pipeline's champion should be retrained, and the scheduler's hook.

Each pipeline spec says when under ``training.retrain``; :func:`evaluate_triggers` checks every
pipeline that has a champion and requests at most one run per pipeline (:func:`request_run`), for the
first cause that holds, in this order:

* ``drift`` — the latest drift report of the champion exceeds the spec's thresholds: PSI above
  ``drift_psi`` or a KS statistic above ``drift_ks`` (p < 0.05) on a feature or the class mix, or the
  embedding's MMD test alarms. One run per report (``drift:report:<id>``).
* ``quality_drop`` — online quality of the champion (labelled feedback against its answers) has
  fallen by more than ``metric_drop`` relative to its test-split metrics, on at least
  ``monitoring.quality_min_feedback`` labels. One run per champion version and quality window
  (``quality_drop:v<version>:<window start>``, windows aligned to ``monitoring.quality_window_seconds``).
* ``new_labels`` — ``new_labels`` labelled observations arrived since the champion was registered.
  One run per multiple of the threshold and champion (``new_labels:v3:500``, then ``…:1000``), so
  labels that trained a refused challenger do not start the same run again.
* ``schedule`` — a cron expression or ``@daily`` / ``@weekly`` / ``@monthly``: the latest slot at or
  before now has passed and neither a run nor the champion's registration came after it. One run per
  slot (``schedule:2026-05-01T00:00Z``).
* ``manual`` — ``keeneye retrain P --reason …`` (:func:`request_manual`), never de-duplicated by key
  and never held back by the cooldown, but refused while a run of the pipeline is queued or running.

A cooldown (default :data:`~keeneye.lifecycle.runs.DEFAULT_COOLDOWN`, 6 h) after any request holds back
automatic causes; a cause that still holds afterwards (and whose key is new) fires then.

:func:`tick` is what the ``keeneye up`` scheduler calls every round: evaluate, then start each new run
as a detached ``python -m keeneye retrain P --run-id N`` process, never two at once per pipeline, so
the scheduler goes on evaluating alerts while a model trains.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from keeneye.domain import InvalidInput, JsonObject, KeeneyeError
from keeneye.lifecycle.runs import (
    DEFAULT_COOLDOWN,
    TrainingRunRecord,
    active_run,
    finish,
    get_run,
    request_run,
)
from keeneye.metrics import Metrics
from keeneye.monitoring.drift import latest_reports
from keeneye.monitoring.quality import QualityWindow, pipeline_quality
from keeneye.pipelines import PipelineCatalog, PipelineSpec, RetrainSection
from keeneye.registry import CHAMPION, ModelRegistry, ModelVersionInfo
from keeneye.settings import Settings
from keeneye.store import DriftReportRecord, ResultsDB, utcnow

log = logging.getLogger(__name__)

KS_P_MAX: Final = 0.05  # a KS statistic counts only when the test is significant
NEW_LABELS_CAP: Final = 1000  # count labels up to this many thresholds (bounds the count query)
SCHEDULE_ALIASES: Final = {"@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *"}


@dataclass(frozen=True)
class Trigger:
    """A cause that holds now, with what it would record on the run."""

    cause: str
    reason: str
    dedup_key: str
    inputs: JsonObject = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------


def parse_schedule(expression: str) -> str:
    """The cron expression of a spec's ``schedule`` (aliases expanded); ``InvalidInput`` when invalid."""
    from croniter import croniter

    expr = SCHEDULE_ALIASES.get(expression.strip().lower(), expression.strip())
    if not croniter.is_valid(expr) or len(expr.split()) != 5:
        raise InvalidInput(
            "bad_schedule",
            f"training.retrain.schedule {expression!r} is not a cron expression",
            fix="use five fields (minute hour day-of-month month weekday), e.g. '0 3 * * 1', "
            "or @daily / @weekly / @monthly",
        )
    return expr


def last_slot(expression: str, now: datetime) -> datetime:
    """The latest time at or before ``now`` (UTC) that the schedule names."""
    from croniter import croniter

    expr = parse_schedule(expression)
    now = now.astimezone(UTC)
    if croniter.match(expr, now.replace(second=0, microsecond=0)) and now.second == now.microsecond == 0:
        return now
    prev: datetime = croniter(expr, now).get_prev(datetime)
    return prev.astimezone(UTC)


def schedule_trigger(
    spec: PipelineSpec, champion: ModelVersionInfo, last_request: datetime | None, now: datetime
) -> Trigger | None:
    """Due when the latest slot lies after both the last request and the champion's registration."""
    expression = spec.training.retrain.schedule
    if not expression:
        return None
    slot = last_slot(expression, now)
    latest = max(t for t in (last_request, champion.created) if t is not None)
    if slot <= latest:
        return None
    stamp = slot.strftime("%Y-%m-%dT%H:%MZ")
    return Trigger(
        "schedule",
        f"scheduled retraining ({expression}), slot {stamp}",
        f"schedule:{stamp}",
        {"schedule": expression, "slot": slot.isoformat(), "champion_version": champion.version},
    )


# --------------------------------------------------------------------------------------------------
# New labels
# --------------------------------------------------------------------------------------------------


def count_new_labels(db: ResultsDB, pipeline: str, since: datetime, *, cap: int) -> int:
    """Distinct observations labelled after ``since``, counted up to ``cap`` rows (index range + LIMIT)."""
    return db.count_labelled_observations(pipeline, since, cap=cap)


def new_labels_trigger(db: ResultsDB, spec: PipelineSpec, champion: ModelVersionInfo) -> Trigger | None:
    """Due at every multiple of ``new_labels`` labelled observations since the champion's registration."""
    threshold = spec.training.retrain.new_labels
    if not threshold:
        return None
    count = count_new_labels(db, spec.name, champion.created, cap=threshold * NEW_LABELS_CAP)
    mark = count // threshold * threshold
    if mark == 0:
        return None
    return Trigger(
        "new_labels",
        f"{count} new labelled observations since champion v{champion.version} (threshold {threshold})",
        f"new_labels:v{champion.version}:{mark}",
        {
            "champion_version": champion.version,
            "since": champion.created.isoformat(),
            "new_labels": count,
            "threshold": threshold,
        },
    )


# --------------------------------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def drift_exceeded(report: DriftReportRecord, retrain: RetrainSection) -> list[str]:
    """What in one drift report crosses the spec's retraining thresholds, one line each."""
    hits = []
    for name, feature in sorted(report.features.items()):
        psi, ks, p = (_number(feature.get(k)) for k in ("psi", "ks", "ks_p"))
        if psi is not None and psi > retrain.drift_psi:
            hits.append(f"{name}: PSI {psi:.3f} > {retrain.drift_psi:g}")
        elif ks is not None and p is not None and ks > retrain.drift_ks and p < KS_P_MAX:
            hits.append(f"{name}: KS {ks:.3f} > {retrain.drift_ks:g} (p={p:.3g})")
    if report.embedding.get("alarm"):
        p_value = _number(report.embedding.get("p_value"))
        hits.append("embedding: MMD test alarms" + (f" (p={p_value:.3g})" if p_value is not None else ""))
    return hits


def drift_trigger(db: ResultsDB, spec: PipelineSpec, champion: ModelVersionInfo) -> Trigger | None:
    """Due when the champion's latest drift report crosses the spec's thresholds (once per report)."""

    reports = latest_reports(db, spec.name, limit=1, model_version=champion.version)
    if not reports:
        return None
    report = reports[0]
    hits = drift_exceeded(report, spec.training.retrain)
    if not hits:
        return None
    return Trigger(
        "drift",
        f"drift report {report.id} of champion v{champion.version}: " + "; ".join(hits[:3]),
        f"drift:report:{report.id}",
        {
            "champion_version": champion.version,
            "report_id": report.id,
            "window_end": report.window_end.isoformat(),
            "n": report.n,
            "exceeded": list(hits),
        },
    )


# --------------------------------------------------------------------------------------------------
# Online quality
# --------------------------------------------------------------------------------------------------


def quality_trigger(
    spec: PipelineSpec,
    champion: ModelVersionInfo,
    windows: Sequence[QualityWindow],
    *,
    min_feedback: int,
    window_seconds: float,
) -> Trigger | None:
    """Due when the champion's online quality fell by more than ``metric_drop`` (once per window)."""
    limit = spec.training.retrain.metric_drop
    for w in windows:
        if w.model_version != champion.version or w.variant != "champion" or w.n < min_feedback:
            continue
        drops = {k: d for k, d in w.relative_drops.items() if round(d, 9) > limit}
        if not drops:
            continue
        bucket = math.floor(w.window_end.timestamp() / window_seconds) * window_seconds
        start = datetime.fromtimestamp(bucket, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        worst = ", ".join(f"{k} {d:.1%} below test" for k, d in sorted(drops.items()))
        return Trigger(
            "quality_drop",
            f"online quality of champion v{champion.version} on {w.n} labels: {worst}",
            f"quality_drop:v{champion.version}:{start}",
            {
                "champion_version": champion.version,
                "window_start": w.window_start.isoformat(),
                "window_end": w.window_end.isoformat(),
                "n": w.n,
                "metrics": dict(w.metrics),
                "reference": dict(w.reference),
                "relative_drops": dict(w.relative_drops),
                "metric_drop": limit,
            },
        )
    return None


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def last_requested_at(db: ResultsDB, pipeline: str) -> datetime | None:
    """When the pipeline's newest run was requested (the index, one row)."""
    return db.last_run_requested_at(pipeline)


def pipeline_triggers(
    settings: Settings,
    db: ResultsDB,
    registry: ModelRegistry,
    spec: PipelineSpec,
    *,
    now: datetime,
    quality: Sequence[QualityWindow] | None = None,
) -> list[Trigger]:
    """Every cause that holds for one pipeline now, most urgent first (none without a champion)."""

    champion = registry.resolve(spec.model_name, CHAMPION)
    if champion is None:
        return []
    found: list[Trigger | None] = [drift_trigger(db, spec, champion)]
    if quality is None:
        quality = pipeline_quality(settings, db, registry, spec, now)
    monitoring = settings.monitoring
    found.append(
        quality_trigger(
            spec,
            champion,
            quality,
            min_feedback=monitoring.quality_min_feedback,
            window_seconds=monitoring.quality_window_seconds,
        )
    )
    found.append(new_labels_trigger(db, spec, champion))
    try:
        found.append(schedule_trigger(spec, champion, last_requested_at(db, spec.name), now))
    except InvalidInput as exc:
        log.warning("%s: scheduled retraining skipped: %s", spec.name, exc.one_line())
    return [t for t in found if t is not None]


def evaluate_triggers(
    settings: Settings,
    db: ResultsDB,
    registry: ModelRegistry,
    catalog: PipelineCatalog,
    *,
    now: datetime,
    quality: Mapping[str, Sequence[QualityWindow]] | None = None,
    cooldown: timedelta = DEFAULT_COOLDOWN,
    metrics: Metrics | None = None,
) -> list[TrainingRunRecord]:
    """Request a run for every pipeline with a cause that holds; the runs queued now.

    ``quality``: the scheduler's latest online-quality windows per pipeline (from
    ``evaluate_quality``); without it they are computed here. A pipeline whose evaluation fails (the
    registry is down) is logged and skipped; the others are still evaluated.
    """
    queued = []
    for spec in catalog.specs():
        try:
            windows = None if quality is None else quality.get(spec.name, [])
            triggers = pipeline_triggers(settings, db, registry, spec, now=now, quality=windows)
            for t in triggers:
                record = request_run(
                    db, spec.name, t.cause, t.reason, t.dedup_key, t.inputs,
                    now=now, cooldown=cooldown, metrics=metrics,
                )  # fmt: skip
                if record is not None:
                    queued.append(record)
                    break
        except KeeneyeError as exc:
            log.warning("retraining triggers of %s not evaluated: %s", spec.name, exc.one_line())
    return queued


def request_manual(
    db: ResultsDB, pipeline: str, reason: str, inputs: Mapping[str, Any], *, now: datetime | None = None
) -> TrainingRunRecord:
    """Queue a manual run (``keeneye retrain P --reason …``); 409 while another run is in progress."""
    if not reason.strip():
        raise InvalidInput("reason_required", "a manual retraining needs a reason", fix="add --reason TEXT")
    record = request_run(
        db, pipeline, "manual", reason.strip(), f"manual:{uuid.uuid4().hex}", inputs,
        now=now, cooldown=timedelta(0),
    )  # fmt: skip
    if record is not None:
        return record
    busy = active_run(db, pipeline)
    which = f"run {busy.id} is {busy.status}" if busy is not None else "another run is in progress"
    raise InvalidInput(
        "run_in_progress",
        f"{pipeline}: {which}; one training at a time per pipeline",
        status=409,
        fix=f"wait for it (keeneye runs {pipeline}) and retry",
    )


# --------------------------------------------------------------------------------------------------
# The scheduler's hook: request, then run each new run in its own process
# --------------------------------------------------------------------------------------------------


def retrain_command(pipeline: str, run_id: int) -> list[str]:
    """The command that executes a queued run (what the scheduler, Airflow or cron run)."""
    return [sys.executable, "-m", "keeneye", "retrain", pipeline, "--run-id", str(run_id)]


def retrain_log_path(settings: Settings, pipeline: str, run_id: int) -> Path:
    """Where a run started by the scheduler writes its output."""
    return settings.home / "runs" / pipeline / f"retrain-{run_id}.log"


def child_environment(settings: Settings) -> dict[str, str]:
    """The scheduler's environment plus its backends, so the child opens the same database,
    registry, object store and pipeline folders even when the settings were built in code."""
    env = dict(os.environ)
    env["KEENEYE_HOME"] = str(settings.home)
    env.update(settings.backend_urls())
    if settings.pipelines.dirs:
        env["KEENEYE_PIPELINES__DIRS"] = json.dumps([str(d) for d in settings.pipelines.dirs])
    return env


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    run_id: int
    log_path: Path


class RetrainLauncher:
    """Starts queued runs as detached processes, at most one live process per pipeline.

    A run whose pipeline still has a live process (a previous run exiting) waits for the next
    :meth:`launch`. Exited children are reaped (no zombies); one that exited without finishing its
    run (a crash, a bad command line) has the run marked ``failed`` with its exit status and the last
    line of its log, instead of leaving it queued until it goes stale.
    """

    def __init__(self, command: Callable[[str, int], list[str]] = retrain_command) -> None:
        self._command = command
        self._children: dict[str, _Child] = {}
        self._waiting: dict[str, int] = {}
        self._lock = threading.Lock()

    def busy(self, pipeline: str) -> bool:
        """Whether the pipeline's last child is still running."""
        child = self._children.get(pipeline)
        return child is not None and child.process.poll() is None

    def launch(
        self,
        settings: Settings,
        db: ResultsDB,
        runs: Sequence[TrainingRunRecord],
        *,
        metrics: Metrics | None = None,
    ) -> list[int]:
        """Start ``runs`` (and any that waited); returns the ids started now."""
        with self._lock:
            self._reap(db, metrics)
            for run in runs:
                self._waiting[run.pipeline] = run.id
            started = []
            for pipeline, run_id in list(self._waiting.items()):
                if self.busy(pipeline):
                    continue
                del self._waiting[pipeline]
                if self._spawn(settings, db, pipeline, run_id, metrics):
                    started.append(run_id)
            return started

    def _reap(self, db: ResultsDB, metrics: Metrics | None) -> None:
        for pipeline, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self._children[pipeline]
            try:
                if not get_run(db, child.run_id).active:
                    continue
                error = (
                    f"the retraining process exited with status {code} before finishing the run "
                    f"(log {child.log_path}): {_last_line(child.log_path)}"
                )
                finish(db, child.run_id, "failed", {}, error, metrics=metrics)
                log.error("training run %d of %s: %s", child.run_id, pipeline, error)
            except KeeneyeError as exc:  # finished meanwhile, or the database is unreachable
                log.warning("training run %d of %s not checked: %s", child.run_id, pipeline, exc.one_line())

    def _spawn(
        self, settings: Settings, db: ResultsDB, pipeline: str, run_id: int, metrics: Metrics | None
    ) -> bool:
        log_path = retrain_log_path(settings, pipeline, run_id)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as out:
                process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                    self._command(pipeline, run_id),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=child_environment(settings),
                    start_new_session=True,  # a Ctrl-C of the scheduler does not kill a training
                )
        except OSError as exc:
            log.error("could not start training run %d of %s: %s", run_id, pipeline, exc)
            finish(db, run_id, "failed", {}, f"could not start its process: {exc}", metrics=metrics)
            return False
        self._children[pipeline] = _Child(process, run_id, log_path)
        log.info("training run %d of %s started (pid %d, log %s)", run_id, pipeline, process.pid, log_path)
        return True


def _last_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty line of a log (its error, usually), at most 500 characters."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - tail))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:500] if lines else "(empty log)"


_LAUNCHER = RetrainLauncher()


def tick(
    settings: Settings,
    db: ResultsDB,
    registry: ModelRegistry,
    catalog: PipelineCatalog,
    metrics: Metrics | None,
    now: datetime | None = None,
    *,
    quality: Mapping[str, Sequence[QualityWindow]] | None = None,
    cooldown: timedelta = DEFAULT_COOLDOWN,
    launcher: RetrainLauncher | None = None,
) -> list[int]:
    """One scheduler round of retraining: evaluate the triggers, start each new run as a detached
    ``python -m keeneye retrain P --run-id N``; returns the ids of the runs started."""
    queued = evaluate_triggers(
        settings, db, registry, catalog,
        now=now or utcnow(), quality=quality, cooldown=cooldown, metrics=metrics,
    )  # fmt: skip
    return (launcher or _LAUNCHER).launch(settings, db, queued, metrics=metrics)


__all__ = [
    "SCHEDULE_ALIASES",
    "RetrainLauncher",
    "Trigger",
    "child_environment",
    "count_new_labels",
    "drift_exceeded",
    "drift_trigger",
    "evaluate_triggers",
    "last_requested_at",
    "last_slot",
    "new_labels_trigger",
    "parse_schedule",
    "pipeline_triggers",
    "quality_trigger",
    "request_manual",
    "retrain_command",
    "retrain_log_path",
    "schedule_trigger",
    "tick",
]
