"""Safe rollout of a challenger model: shadow, canary, promotion and rollback, per pipeline.

A new model version must earn its place on live traffic before it answers anyone. Each pipeline has
one row in ``rollouts`` and moves through ``stable → shadow → canary → stable``:

* **shadow** — the challenger runs beside the champion on a sample of inputs (``shadow_sample``); its
  predictions are stored as variant ``shadow`` and never returned. The controller measures how often it
  agrees with the champion on the same observations.
* **canary** — a fixed share of inputs (``canary_share``) is answered by the challenger (variant
  ``canary``). The controller compares error rate, p95 latency and online quality of both variants.
* back to **stable** — by *promotion* (the registry's ``promote`` moves the ``champion`` alias to the
  challenger; serving switches through the runtime's hot swap) or by *abort* / *rollback* (the
  champion never changed; right after a promotion an abort gives the alias back with the registry's
  ``rollback``).

Routing is a pure function of a key, so every process (API replicas, stream workers) sends the same
input to the same variant without talking to each other: the key's SHA-256, salted with the pipeline
and the challenger version, mapped to ``[0, 1)`` and compared with the share. Stream workers use the
observation id; the synchronous API uses the image's content hash (the observation id does not exist
before the answer is stored), so a retried request stays on its variant.

Every transition is one transaction: the ``rollouts`` row (compare-and-set on state and
``updated_at``, so two actors cannot both move it) and its ``model_events`` audit row
(``rollout_shadow``, ``rollout_canary``, ``rollout_promoted``, ``rollout_aborted``,
``rollout_rolled_back``). :class:`RolloutController` does the moves for people (CLI, API) and for the
scheduler (:meth:`RolloutController.tick`); what it compares is documented in ``docs/rollout.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from keeneye.domain import InvalidInput, KeeneyeError, NotFound, ObservationStatus, Variant
from keeneye.registry import CHALLENGER, CHAMPION, ModelRegistry
from keeneye.store.db import ModelEvent, Observation, Prediction, ResultsDB, Rollout, utcnow

if TYPE_CHECKING:  # keeneye.pipelines imports this module (the runtime routes with it): no cycle at runtime
    from keeneye.models.manifest import ModelManifest
    from keeneye.monitoring.metrics import Metrics
    from keeneye.pipelines.runner import Prepared
    from keeneye.pipelines.runtime import LoadedModel
    from keeneye.pipelines.spec import PipelineCatalog, PipelineSpec
    from keeneye.settings import Settings

log = logging.getLogger(__name__)

ACTIONS = ("shadow", "canary", "promote", "abort")
Action = Literal["shadow", "canary", "promote", "abort"]
CONTROLLER = "controller"
PREDICTION_CHUNK = 500  # observation ids per IN (...) query
SHADOW_QUEUE = 64  # shadow runs waiting or running per API process; more are skipped and counted


class RolloutState(enum.StrEnum):
    stable = "stable"
    shadow = "shadow"
    canary = "canary"


ACTIVE = frozenset({RolloutState.shadow, RolloutState.canary})


# ==================================================================================================
# The record
# ==================================================================================================


@dataclass(frozen=True)
class RolloutRecord:
    """One pipeline's ``rollouts`` row (or the implicit stable state when it has none yet).

    ``updated_at`` is None only for that implicit state; it is the compare-and-set token of the row.
    """

    pipeline: str
    state: RolloutState
    champion_version: str | None
    challenger_version: str | None
    canary_share: float
    shadow_sample: float
    started_at: datetime | None
    details: Mapping[str, Any]
    updated_at: datetime | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def challenger_variant(self) -> Variant:
        """How the challenger's predictions are stored in this state."""
        return Variant.shadow if self.state is RolloutState.shadow else Variant.canary

    @classmethod
    def implicit(cls, spec: PipelineSpec) -> RolloutRecord:
        return cls(
            pipeline=spec.name,
            state=RolloutState.stable,
            champion_version=None,
            challenger_version=None,
            canary_share=spec.rollout.canary_share,
            shadow_sample=spec.rollout.shadow_sample,
            started_at=None,
            details={},
            updated_at=None,
        )

    @classmethod
    def from_row(cls, row: Rollout) -> RolloutRecord:
        return cls(
            pipeline=row.pipeline,
            state=RolloutState(row.state),
            champion_version=row.champion_version,
            challenger_version=row.challenger_version,
            canary_share=float(row.canary_share),
            shadow_sample=float(row.shadow_sample),
            started_at=row.started_at,
            details=dict(row.details or {}),
            updated_at=row.updated_at,
        )

    def values(self) -> dict[str, Any]:
        """The row's columns (for an insert or an update)."""
        return {
            "pipeline": self.pipeline,
            "state": self.state.value,
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            "canary_share": float(self.canary_share),
            "shadow_sample": float(self.shadow_sample),
            "started_at": self.started_at,
            "details": dict(self.details),
            "updated_at": self.updated_at,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "state": self.state.value,
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            "canary_share": self.canary_share,
            "shadow_sample": self.shadow_sample,
            "started_at": _iso(self.started_at),
            "updated_at": _iso(self.updated_at),
            "details": dict(self.details),
        }


def read_rollout(db: ResultsDB, pipeline: str) -> RolloutRecord | None:
    """The pipeline's row, None when it never had a rollout (one primary-key lookup)."""
    with db.session() as s:
        row = s.get(Rollout, pipeline)
        return None if row is None else RolloutRecord.from_row(row)


def rollout_rows(db: ResultsDB) -> list[RolloutRecord]:
    """Every row: one per pipeline that ever rolled out, so the table stays as small as the catalog."""
    with db.session() as s:
        return [RolloutRecord.from_row(r) for r in s.scalars(select(Rollout).order_by(Rollout.pipeline))]


# ==================================================================================================
# Routing: a stable hash of the key decides, the same in every process
# ==================================================================================================


def _unit(*parts: str) -> float:
    """A uniform number in ``[0, 1)`` from the SHA-256 of ``parts`` (64 bits of it)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose_variant(rollout: RolloutRecord | None, key: str) -> Variant:
    """``canary`` for the keys in the canary share of an active canary, else ``champion``.

    Salted with the challenger version: each rollout gives its canary another slice of the inputs,
    while one key keeps its variant for the whole rollout.
    """
    if rollout is None or rollout.state is not RolloutState.canary or not rollout.challenger_version:
        return Variant.champion
    bucket = _unit("canary", rollout.pipeline, rollout.challenger_version, key)
    return Variant.canary if bucket < rollout.canary_share else Variant.champion


def in_shadow_sample(rollout: RolloutRecord | None, key: str) -> bool:
    """Whether the challenger also runs, in shadow, on this key's input."""
    if rollout is None or rollout.state is not RolloutState.shadow or not rollout.challenger_version:
        return False
    return _unit("shadow", rollout.pipeline, rollout.challenger_version, key) < rollout.shadow_sample


# ==================================================================================================
# Running the challenger on the side (shadow)
# ==================================================================================================


def prepare_for(manifest: ModelManifest, prepared: Prepared) -> Prepared:
    """The same decoded image as the input of another model (no second decode)."""
    from keeneye.imaging import prepare_input
    from keeneye.pipelines.runner import Prepared

    tensor, transform = prepare_input(prepared.image, manifest.input)
    return Prepared(prepared.image, tensor, transform)


def _prediction_row(
    observation_id: str, spec: PipelineSpec, model: LoadedModel, result: Mapping[str, Any], latency_ms: float
) -> dict[str, Any]:
    return {
        "observation_id": observation_id,
        "pipeline": spec.name,
        "model_name": model.ref.name,
        "model_version": model.ref.version,
        "variant": Variant.shadow.value,
        "task": model.bundle.manifest.task.value,
        "result": dict(result),
        "decision": result.get("decision"),
        "confidence": result.get("confidence"),
        "latency_ms": float(latency_ms),
        "timings": {"shadow": round(latency_ms, 3)},
        "created_at": utcnow(),
    }


def _insert_predictions(db: ResultsDB, rows: Sequence[Mapping[str, Any]]) -> None:
    """Many predictions in one transaction; one already stored (a redelivery) is left as it is."""
    if not rows:
        return
    dialect = postgresql if db.backend == "postgresql" else sqlite_dialect
    stmt = dialect.insert(Prediction).on_conflict_do_nothing(
        index_elements=["observation_id", "model_name", "model_version", "variant"]
    )
    with db.session() as s:
        s.execute(stmt, [dict(r) for r in rows])


class ShadowRunner:
    """The API's shadow runs: after the client has its answer, in background tasks, bounded.

    At most ``max_pending`` runs wait or run at once per process; beyond that a run is skipped and
    counted in :attr:`skipped` (a shadow must never slow the champion down or grow without bound).
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, db: Callable[[], ResultsDB], *, max_pending: int
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._db = db
        self.max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        self.skipped: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.stored: dict[str, int] = {}

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, spec: PipelineSpec, model: LoadedModel, observation_id: str, data: bytes) -> bool:
        """Schedule one shadow run (call on the event loop); False when the queue is full."""
        if len(self._tasks) >= self.max_pending:
            self.skipped[spec.name] = self.skipped.get(spec.name, 0) + 1
            log.debug("shadow queue full; skipped observation %s of %s", observation_id, spec.name)
            return False
        task = asyncio.get_running_loop().create_task(
            self._run(spec, model, observation_id, data), name=f"keeneye-shadow-{spec.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, spec: PipelineSpec, model: LoadedModel, observation_id: str, data: bytes) -> None:
        from keeneye.pipelines.runner import finish, prepare

        started = time.perf_counter()
        manifest = model.bundle.manifest
        try:
            prepared = await asyncio.to_thread(prepare, spec, manifest, data, self.settings)
            outputs = await model.batcher.submit(prepared.tensor)
            result = await asyncio.to_thread(finish, spec, manifest, model.ref, prepared, outputs)
            latency_ms = (time.perf_counter() - started) * 1000
            row = _prediction_row(observation_id, spec, model, result, latency_ms)
            await asyncio.to_thread(_insert_predictions, self._db(), [row])
        except Exception as exc:  # a failing shadow is the challenger's problem, never the client's
            self.failed[spec.name] = self.failed.get(spec.name, 0) + 1
            log.warning("shadow run of %s v%s failed: %s", spec.name, model.ref.version, _one_line(exc))
            return
        self.stored[spec.name] = self.stored.get(spec.name, 0) + 1
        self.metrics.variant_predictions.labels(spec.name, Variant.shadow.value).inc()

    async def aclose(self) -> None:
        """Wait for the runs in flight (their results are worth keeping)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def run_shadow_batch(
    db: ResultsDB,
    metrics: Metrics,
    spec: PipelineSpec,
    model: LoadedModel,
    items: Sequence[tuple[str, Prepared]],
) -> int:
    """The stream's shadow: one challenger run per same-shaped group of already decoded inputs,
    predictions stored in one transaction. Returns how many were stored; never raises."""
    from keeneye.pipelines.runner import finish

    if not items:
        return 0
    manifest = model.bundle.manifest
    try:
        inputs = [(obs_id, prepare_for(manifest, p)) for obs_id, p in items]
        groups: dict[tuple[tuple[int, ...], str], list[tuple[str, Prepared]]] = {}
        for obs_id, p in inputs:
            groups.setdefault((tuple(p.tensor.shape), str(p.tensor.dtype)), []).append((obs_id, p))
        rows = []
        for group in groups.values():
            t0 = time.perf_counter()
            outputs = model.model.run(np.stack([p.tensor for _, p in group]))
            per_item_ms = (time.perf_counter() - t0) * 1000 / len(group)
            for j, (obs_id, p) in enumerate(group):
                result = finish(spec, manifest, model.ref, p, [out[j] for out in outputs])
                rows.append(_prediction_row(obs_id, spec, model, result, per_item_ms))
        _insert_predictions(db, rows)
    except Exception as exc:
        log.warning("shadow batch of %s v%s failed: %s", spec.name, model.ref.version, _one_line(exc))
        return 0
    metrics.variant_predictions.labels(spec.name, Variant.shadow.value).inc(len(rows))
    return len(rows)


# ==================================================================================================
# Agreement between two answers to the same input
# ==================================================================================================

AGREEMENT_IOU = 0.5


def answers_agree(kind: str, champion: Mapping[str, Any], challenger: Mapping[str, Any]) -> bool:
    """``classify``: same class; ``ok-defect``: same decision; ``instances``: mean IoU ≥ 0.5."""
    if kind == "classify":
        return champion.get("predicted_class") == challenger.get("predicted_class")
    if kind == "ok-defect":
        return champion.get("decision") == challenger.get("decision")
    return mean_instance_iou(champion, challenger) >= AGREEMENT_IOU


def mean_instance_iou(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Greedy one-to-one pairing of same-class instances by IoU (mask when both have outlines, box
    otherwise); the mean over ``max(len(a), len(b))``, so a missing or extra instance counts 0.
    Two empty answers agree fully (1.0)."""
    from keeneye.models.postprocess import box_iou
    from keeneye.monitoring.quality import predicted_shapes, shape_iou

    sa, sb = predicted_shapes(a), predicted_shapes(b)
    if not sa and not sb:
        return 1.0
    if not sa or not sb:
        return 0.0
    boxes = box_iou(np.asarray([s.box for s in sa]), np.asarray([s.box for s in sb]))
    free = set(range(len(sa)))
    total = 0.0
    for j in sorted(range(len(sb)), key=lambda k: -sb[k].score):
        best, best_iou = -1, 0.0
        for i in free:
            if sa[i].class_name != sb[j].class_name or boxes[i, j] <= 0:
                continue  # disjoint boxes: disjoint masks, no need to rasterise
            iou = shape_iou(sa[i], sb[j])
            if iou > best_iou:
                best, best_iou = i, iou
        if best >= 0:
            free.discard(best)
            total += best_iou
    return total / max(len(sa), len(sb))


# ==================================================================================================
# Evaluation: what the controller measures, and its verdict
# ==================================================================================================


@dataclass(frozen=True)
class RolloutPolicy:
    """When the controller moves a rollout on its own (see docs/rollout.md for each comparison)."""

    agreement_threshold: float = 0.9  # shadow → canary at this share of agreeing answers
    min_canary_seconds: float = 600.0  # a canary runs at least this long before promotion
    auto_shadow: bool = True  # a new challenger alias starts a shadow run
    auto_canary: bool = True
    auto_promote: bool = True
    auto_rollback: bool = True
    latency_tolerance: float = 0.25  # challenger p95 may exceed the champion's by 25 % …
    latency_slack_ms: float = 5.0  # … plus this much (noise on very fast models)
    error_tolerance: float = 0.01  # absolute: challenger error rate ≤ champion's + 1 point
    quality_metric: str = "f1"  # online metric compared from feedback (both need min_feedback labels)
    quality_tolerance: float = 0.02  # absolute
    rollback_min_samples: int = 50  # challenger answers needed before a comparison can roll back
    min_answer_ratio: float = 0.5  # challenger answers below this × canary share → rollback
    window_limit: int = 2000  # newest challenger predictions an evaluation reads


@dataclass(frozen=True)
class VariantStats:
    variant: str
    version: str | None
    predictions: int  # in the evaluation window (capped: see window_limit)
    latency_p95_ms: float | None
    failed: int  # stream observations that ended failed, attributed by the routing hash (canary only)
    quality: float | None  # the policy's online metric from feedback, when there were enough labels
    quality_n: int

    @property
    def error_rate(self) -> float | None:
        attempts = self.predictions + self.failed
        return self.failed / attempts if attempts else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "version": self.version,
            "predictions": self.predictions,
            "latency_p95_ms": _round(self.latency_p95_ms),
            "failed": self.failed,
            "error_rate": _round(self.error_rate, 6),
            "quality": _round(self.quality, 6),
            "quality_n": self.quality_n,
        }


@dataclass(frozen=True)
class Agreement:
    n: int
    agreeing: int

    @property
    def share(self) -> float | None:
        return self.agreeing / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "agreeing": self.agreeing, "share": _round(self.share, 6)}


@dataclass(frozen=True)
class Evaluation:
    state: RolloutState
    window_start: datetime | None
    elapsed_seconds: float
    champion: VariantStats
    challenger: VariantStats | None
    agreement: Agreement | None
    quality_metric: str
    quality_min_feedback: int

    @property
    def challenger_share(self) -> float | None:
        if self.challenger is None:
            return None
        total = self.champion.predictions + self.challenger.predictions
        return self.challenger.predictions / total if total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "window_start": _iso(self.window_start),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "variants": [v.to_dict() for v in (self.champion, self.challenger) if v is not None],
            "challenger_share": _round(self.challenger_share, 6),
            "agreement": self.agreement.to_dict() if self.agreement else None,
            "quality_metric": self.quality_metric,
            "quality_min_feedback": self.quality_min_feedback,
        }


@dataclass(frozen=True)
class Verdict:
    """What the controller does next: ``wait``, ``shadow``, ``canary``, ``promote`` or ``rollback``,
    and why."""

    action: Literal["wait", "shadow", "canary", "promote", "rollback"]
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "reasons": list(self.reasons)}


def _quality_worse(ev: Evaluation, policy: RolloutPolicy) -> str | None:
    chal = ev.challenger
    if chal is None or chal.quality is None or ev.champion.quality is None:
        return None
    if chal.quality < ev.champion.quality - policy.quality_tolerance:
        return (
            f"online {policy.quality_metric} {chal.quality:.3f} on {chal.quality_n} labels is below the "
            f"champion's {ev.champion.quality:.3f} by more than {policy.quality_tolerance:g}"
        )
    return None


def judge_shadow(ev: Evaluation, policy: RolloutPolicy, min_samples: int) -> Verdict:
    """Canary once ``min_samples`` shadow answers agree with the champion at ≥ the threshold and the
    challenger is not worse on feedback. Disagreement alone never ends a shadow: the challenger may be
    the one that is right; a person decides (abort) or the feedback does (canary quality)."""
    agreement = ev.agreement or Agreement(0, 0)
    if agreement.n < min_samples:
        return Verdict("wait", (f"{agreement.n} of {min_samples} shadow answers compared",))
    worse = _quality_worse(ev, policy)
    share = agreement.share or 0.0
    if share < policy.agreement_threshold:
        return Verdict(
            "wait",
            (f"agreement {share:.3f} on {agreement.n} answers is below {policy.agreement_threshold:g}",),
        )
    if worse:
        return Verdict("wait", (worse,))
    return Verdict(
        "canary",
        (f"agreement {share:.3f} on {agreement.n} answers ≥ {policy.agreement_threshold:g}",),
    )


def judge_canary(ev: Evaluation, policy: RolloutPolicy, min_samples: int, canary_share: float) -> Verdict:
    """Rollback as soon as the challenger is measurably worse; promote after ``min_samples``
    challenger answers and ``min_canary_seconds`` when it is not."""
    chal, champ = ev.challenger, ev.champion
    assert chal is not None
    worse: list[str] = []
    if chal.predictions + chal.failed >= policy.rollback_min_samples:
        ce, he = chal.error_rate or 0.0, champ.error_rate or 0.0
        if ce > he + policy.error_tolerance:
            worse.append(
                f"error rate {ce:.3%} ({chal.failed} failed) above the champion's {he:.3%} "
                f"by more than {policy.error_tolerance:.1%}"
            )
    if (
        chal.predictions >= policy.rollback_min_samples
        and champ.predictions >= policy.rollback_min_samples
        and chal.latency_p95_ms is not None
        and champ.latency_p95_ms is not None
    ):
        limit = champ.latency_p95_ms * (1 + policy.latency_tolerance) + policy.latency_slack_ms
        if chal.latency_p95_ms > limit:
            worse.append(
                f"p95 latency {chal.latency_p95_ms:.1f} ms above {limit:.1f} ms "
                f"(champion {champ.latency_p95_ms:.1f} ms + {policy.latency_tolerance:.0%} + "
                f"{policy.latency_slack_ms:g} ms)"
            )
    quality = _quality_worse(ev, policy)
    if quality:
        worse.append(quality)
    total = chal.predictions + champ.predictions
    share = ev.challenger_share
    if total >= min_samples and share is not None and share < canary_share * policy.min_answer_ratio:
        worse.append(
            f"the challenger answered {share:.1%} of {total} inputs, expected about {canary_share:.1%}: "
            "its answers are failing"
        )
    if worse:
        return Verdict("rollback", tuple(worse))
    waiting = []
    if chal.predictions < min_samples:
        waiting.append(f"{chal.predictions} of {min_samples} challenger answers")
    if ev.elapsed_seconds < policy.min_canary_seconds:
        waiting.append(f"{ev.elapsed_seconds:.0f} of {policy.min_canary_seconds:.0f} s in canary")
    if waiting:
        return Verdict("wait", tuple(waiting))
    return Verdict(
        "promote",
        (
            f"{chal.predictions} challenger answers over {ev.elapsed_seconds:.0f} s, not worse than the "
            "champion on error rate, p95 latency and online quality",
        ),
    )


# ==================================================================================================
# The controller: manual moves (CLI, API) and the scheduler's tick
# ==================================================================================================


@dataclass(frozen=True)
class TickResult:
    pipeline: str
    before: RolloutState
    after: RolloutState
    verdict: Verdict


class RolloutController:
    """Moves rollouts: :meth:`apply` for people, :meth:`tick` for the scheduler.

    ``clock`` gives "now" for the time a canary has run (tests pass a fake one); audit timestamps and
    the row's ``updated_at`` are always wall time.
    """

    def __init__(
        self,
        settings: Settings,
        db: ResultsDB,
        registry: ModelRegistry,
        catalog: PipelineCatalog,
        metrics: Metrics,
        clock: Callable[[], datetime] = utcnow,
        *,
        policy: RolloutPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.catalog = catalog
        self.metrics = metrics
        self.clock = clock
        self.policy = policy or RolloutPolicy()

    # --- reading -----------------------------------------------------------------------------------

    def status(self, pipeline: str) -> RolloutRecord:
        """The pipeline's rollout; NotFound for an unknown pipeline."""
        spec = self.catalog.get(pipeline)
        return read_rollout(self.db, spec.name) or RolloutRecord.implicit(spec)

    def report(self, pipeline: str, *, events: int = 10) -> dict[str, Any]:
        """Everything ``GET …/rollout`` and ``keeneye models rollout P --status`` show."""
        spec = self.catalog.get(pipeline)
        record = self.status(pipeline)
        champion = self.registry.resolve(spec.model_name, CHAMPION)
        challenger = self.registry.resolve(spec.model_name, CHALLENGER)
        out = record.to_dict()
        out["registry"] = {
            "model": spec.model_name,
            "champion": champion.version if champion else None,
            "challenger": challenger.version if challenger else None,
        }
        out["min_samples"] = spec.rollout.min_samples
        out["earliest_promotion"] = _iso(canary_deadline(record, self.policy))
        if record.active:
            evaluation = self.evaluate(record, spec)
            verdict = self._judge(record, spec, evaluation)
            out["evaluation"] = evaluation.to_dict()
            out["next"] = verdict.to_dict()
        else:
            out["evaluation"] = None
            out["next"] = None
        out["events"] = [
            {
                "event": e.event,
                "model_version": e.model_version,
                "from_version": e.from_version,
                "actor": e.actor,
                "reason": e.reason,
                "created_at": _iso(e.created_at),
            }
            for e in self.db.model_events(spec.name, limit=events * 3)
            if e.event.startswith("rollout_")
        ][:events]
        return out

    # --- manual moves ------------------------------------------------------------------------------

    def apply(
        self,
        pipeline: str,
        action: str,
        *,
        actor: str,
        reason: str = "",
        share: float | None = None,
        sample: float | None = None,
        version: str | None = None,
        force: bool = False,
    ) -> RolloutRecord:
        """One manual move by name (what the CLI and the API call)."""
        if action == "shadow":
            if share is not None:
                raise _bad("share is for canary; shadow takes sample")
            return self.start_shadow(
                pipeline, sample=sample, version=version, actor=actor, reason=reason, force=force
            )
        if action == "canary":
            if sample is not None:
                raise _bad("sample is for shadow; canary takes share")
            return self.start_canary(
                pipeline, share=share, version=version, actor=actor, reason=reason, force=force
            )
        if share is not None or sample is not None or version is not None:
            raise _bad(f"{action} takes no share, sample or version")
        if action == "promote":
            return self.promote(pipeline, actor=actor, reason=reason, force=force)
        if action == "abort":
            return self.abort(pipeline, actor=actor, reason=reason)
        raise _bad(f"unknown action {action[:40]!r}; use one of {', '.join(ACTIONS)}")

    def start_shadow(
        self,
        pipeline: str,
        *,
        sample: float | None = None,
        version: str | None = None,
        actor: str,
        reason: str = "",
        force: bool = False,
    ) -> RolloutRecord:
        """stable → shadow. ``version`` first gives that version the challenger alias (gates apply)."""
        spec = self.catalog.get(pipeline)
        before = self.status(pipeline)
        if before.active:
            raise _wrong_state(before, "shadow", "abort it first, or move on with --canary")
        sample = spec.rollout.shadow_sample if sample is None else _fraction("sample", sample)
        champion, challenger = self._versions(spec, version, actor=actor, reason=reason, force=force)
        return self._move(
            before,
            "rollout_shadow",
            state=RolloutState.shadow,
            champion_version=champion,
            challenger_version=challenger,
            shadow_sample=sample,
            canary_share=spec.rollout.canary_share,
            started_at=self.clock(),
            actor=actor,
            reason=reason or "shadow started",
            details={"sample": sample, "forced": force},
        )

    def start_canary(
        self,
        pipeline: str,
        *,
        share: float | None = None,
        version: str | None = None,
        actor: str,
        reason: str = "",
        force: bool = False,
        evaluation: Evaluation | None = None,
    ) -> RolloutRecord:
        """shadow → canary, or a new share for a running canary. From stable it needs ``force``
        (skipping the shadow skips the agreement check) and a reason."""
        spec = self.catalog.get(pipeline)
        before = self.status(pipeline)
        share = spec.rollout.canary_share if share is None else _fraction("share", share)
        if share <= 0:
            raise _bad("a canary share must be above 0", fix="e.g. --canary 10 (percent) or share 0.1")
        details: dict[str, Any] = {"share": share, "forced": force}
        if evaluation is not None:
            details["evaluation"] = evaluation.to_dict()
        if before.state is RolloutState.canary:
            if version is not None and version != before.challenger_version:
                raise _wrong_state(before, "canary with another version", "abort the running one first")
            details["from_share"] = before.canary_share
            return self._move(
                before,
                "rollout_canary",
                canary_share=share,
                actor=actor,
                reason=reason or f"canary share {before.canary_share:g} → {share:g}",
                details=details,
            )
        if before.state is RolloutState.shadow:
            if version is not None and version != before.challenger_version:
                raise _wrong_state(before, "canary with another version", "abort the shadow first")
            champion, challenger = before.champion_version, before.challenger_version
            details["shadow_started_at"] = _iso(before.started_at)
        else:
            if not force:
                raise InvalidInput(
                    "skips_shadow",
                    f"pipeline {spec.name} is stable: a canary normally follows a shadow run",
                    status=409,
                    fix="start with --shadow, or skip it with --force --reason TEXT",
                )
            _need_reason(reason, "skipping the shadow run")
            champion, challenger = self._versions(spec, version, actor=actor, reason=reason, force=force)
        return self._move(
            before,
            "rollout_canary",
            state=RolloutState.canary,
            champion_version=champion,
            challenger_version=challenger,
            canary_share=share,
            started_at=self.clock(),
            actor=actor,
            reason=reason or f"canary with {share:.0%} of traffic",
            details=details,
        )

    def promote(
        self,
        pipeline: str,
        *,
        actor: str,
        reason: str = "",
        force: bool = False,
        evaluation: Evaluation | None = None,
    ) -> RolloutRecord:
        """canary → stable with the challenger as champion (the registry's promote moves the alias)."""
        spec = self.catalog.get(pipeline)
        before = self.status(pipeline)
        if before.state is RolloutState.stable or (before.state is RolloutState.shadow and not force):
            fix = (
                "run a canary first (--canary), or promote from shadow with --force --reason TEXT"
                if before.active
                else "start a rollout with --shadow"
            )
            raise _wrong_state(before, "promote", fix)
        if before.state is RolloutState.shadow:
            _need_reason(reason, "promoting without a canary")
        assert before.challenger_version is not None
        reason = reason or "challenger promoted"
        with _refusals():
            self.registry.promote(
                spec.model_name, before.challenger_version, actor=actor, reason=reason, force=force
            )
        details: dict[str, Any] = {
            "promoted": {
                "version": before.challenger_version,
                "previous": before.champion_version,
                "at": _iso(utcnow()),
            },
            "from_state": before.state.value,
            "forced": force,
        }
        if evaluation is not None:
            details["evaluation"] = evaluation.to_dict()
        return self._move(
            before,
            "rollout_promoted",
            state=RolloutState.stable,
            champion_version=before.challenger_version,
            challenger_version=None,
            started_at=None,
            actor=actor,
            reason=reason,
            details=details,
        )

    def abort(
        self,
        pipeline: str,
        *,
        actor: str,
        reason: str = "",
        evaluation: Evaluation | None = None,
        rolled_back: bool = False,
    ) -> RolloutRecord:
        """shadow/canary → stable with the champion unchanged (the challenger alias is removed). On a
        stable pipeline whose last move was a promotion, the registry's rollback undoes it.

        ``rolled_back`` (the controller found the challenger worse) records ``rollout_rolled_back``
        instead of ``rollout_aborted``.
        """
        spec = self.catalog.get(pipeline)
        before = self.status(pipeline)
        if before.state is RolloutState.stable:
            return self._undo_promotion(spec, before, actor=actor, reason=reason)
        self._drop_challenger_alias(spec, before, actor=actor, reason=reason or "rollout aborted")
        details: dict[str, Any] = {"from_state": before.state.value, "challenger": before.challenger_version}
        if evaluation is not None:
            details["evaluation"] = evaluation.to_dict()
        return self._move(
            before,
            "rollout_rolled_back" if rolled_back else "rollout_aborted",
            state=RolloutState.stable,
            challenger_version=None,
            started_at=None,
            actor=actor,
            reason=reason or "rollout aborted",
            details=details,
        )

    # --- the scheduler's tick ----------------------------------------------------------------------

    def tick(self) -> list[TickResult]:
        """Evaluate every active rollout once and move the ones whose verdict says so; start a shadow
        run for a new challenger (e.g. one retraining registered); publish the ``rollout_state`` gauges
        of every pipeline. One pipeline's failure never stops the others."""
        results: list[TickResult] = []
        rows = {r.pipeline: r for r in rollout_rows(self.db)}
        for name in self.catalog.names():
            record = rows.get(name)
            state = record.state if record else RolloutState.stable
            try:
                result = self._tick_one(record) if record and record.active else self._auto_shadow(name)
            except KeeneyeError as exc:
                log.warning("rollout of %s not evaluated: %s", name, exc.one_line())
                result = None
            except Exception:
                log.exception("rollout of %s not evaluated", name)
                result = None
            if result is None:
                self._publish_state(name, state)
            else:
                results.append(result)
        return results

    def _auto_shadow(self, pipeline: str) -> TickResult | None:
        """A stable pipeline whose registry has a challenger (not the champion) starts its shadow run."""
        spec = self.catalog.get(pipeline)
        if not self.policy.auto_shadow or spec.model.alias != CHAMPION:
            return None
        challenger = self.registry.resolve(spec.model_name, CHALLENGER)
        champion = self.registry.resolve(spec.model_name, CHAMPION)
        if challenger is None or champion is None or challenger.version == champion.version:
            return None
        why = f"new challenger v{challenger.version}"
        after = self.start_shadow(pipeline, actor=CONTROLLER, reason=why)
        return TickResult(pipeline, RolloutState.stable, after.state, Verdict("shadow", (why,)))

    def _tick_one(self, record: RolloutRecord) -> TickResult:
        spec = self.catalog.get(record.pipeline)
        reconciled = self._reconcile(spec, record)
        if reconciled is not None:
            return reconciled
        evaluation = self.evaluate(record, spec)
        if record.state is RolloutState.shadow and evaluation.agreement and evaluation.agreement.n:
            self.metrics.shadow_agreement.labels(spec.name).set(evaluation.agreement.share or 0.0)
        verdict = self._judge(record, spec, evaluation)
        after = record.state
        p = self.policy
        if verdict.action == "canary" and p.auto_canary:
            after = self.start_canary(
                spec.name, actor=CONTROLLER, reason=verdict.reason, evaluation=evaluation
            ).state
        elif verdict.action == "promote" and p.auto_promote:
            after = self.promote(
                spec.name, actor=CONTROLLER, reason=verdict.reason, evaluation=evaluation
            ).state
        elif verdict.action == "rollback" and p.auto_rollback:
            after = self.abort(
                spec.name, actor=CONTROLLER, reason=verdict.reason, evaluation=evaluation, rolled_back=True
            ).state
        else:
            self._publish_state(spec.name, record.state)
        if after is not record.state:
            log.info("rollout of %s: %s → %s (%s)", spec.name, record.state, after, verdict.reason)
        return TickResult(spec.name, record.state, after, verdict)

    def _reconcile(self, spec: PipelineSpec, record: RolloutRecord) -> TickResult | None:
        """End a rollout whose versions were moved outside it (``models promote`` by hand, or a move
        that stored the alias but lost the race for the row)."""
        champion = self.registry.resolve(spec.model_name, CHAMPION)
        current = champion.version if champion else None
        if current == record.champion_version:
            return None
        if current is not None and current == record.challenger_version:
            event, why = "rollout_promoted", f"the challenger v{current} became champion outside the rollout"
        else:
            event, why = "rollout_aborted", f"the champion moved to v{current} outside the rollout"
        self._move(
            record,
            event,
            state=RolloutState.stable,
            champion_version=current,
            challenger_version=None,
            started_at=None,
            actor=CONTROLLER,
            reason=why,
            details={"reconciled": True, "from_state": record.state.value},
        )
        return TickResult(spec.name, record.state, RolloutState.stable, Verdict("wait", (why,)))

    def _judge(self, record: RolloutRecord, spec: PipelineSpec, evaluation: Evaluation) -> Verdict:
        if record.state is RolloutState.shadow:
            return judge_shadow(evaluation, self.policy, spec.rollout.min_samples)
        return judge_canary(evaluation, self.policy, spec.rollout.min_samples, record.canary_share)

    # --- evaluation ---------------------------------------------------------------------------------

    def evaluate(self, record: RolloutRecord, spec: PipelineSpec) -> Evaluation:
        """Measure an active rollout over its window (bounded: see :class:`RolloutPolicy`)."""
        now = self.clock()
        since = record.started_at or now
        limit = max(self.policy.window_limit, spec.rollout.min_samples)
        model = spec.model_name
        chal_variant = record.challenger_variant
        chal_lat = self._latencies(spec.name, model, record.challenger_version, chal_variant, since, limit)
        # With more than `limit` challenger answers, the window shrinks to the time they cover, and the
        # champion is measured over the same time.
        window_start = chal_lat[-1][1] if len(chal_lat) >= limit else since
        champ_lat = self._latencies(
            spec.name, model, record.champion_version, Variant.champion, window_start, limit
        )
        champ_count = self._count(
            spec.name, model, record.champion_version, Variant.champion, window_start, limit * 50
        )
        failed = {Variant.champion: 0, Variant.canary: 0}
        if record.state is RolloutState.canary:
            for obs_id in self._failed_ids(spec.name, window_start, limit * 50):
                failed[choose_variant(record, obs_id)] += 1
        quality = self._quality(spec, since, now)
        champion = VariantStats(
            Variant.champion.value,
            record.champion_version,
            champ_count,
            _p95(v for v, _ in champ_lat),
            failed[Variant.champion],
            *quality.get((record.champion_version, Variant.champion.value), (None, 0)),
        )
        challenger = VariantStats(
            chal_variant.value,
            record.challenger_version,
            len(chal_lat),
            _p95(v for v, _ in chal_lat),
            failed[Variant.canary] if chal_variant is Variant.canary else 0,
            *quality.get((record.challenger_version, chal_variant.value), (None, 0)),
        )
        agreement = self._agreement(spec, record, since, limit) if chal_variant is Variant.shadow else None
        return Evaluation(
            state=record.state,
            window_start=window_start,
            elapsed_seconds=max(0.0, (now - since).total_seconds()),
            champion=champion,
            challenger=challenger,
            agreement=agreement,
            quality_metric=self.policy.quality_metric,
            quality_min_feedback=self.settings.monitoring.quality_min_feedback,
        )

    def _where(
        self, pipeline: str, model: str, version: str | None, variant: Variant, since: datetime
    ) -> list[Any]:
        return [
            Prediction.pipeline == pipeline,
            Prediction.created_at >= since,
            Prediction.model_name == model,
            Prediction.model_version == (version or ""),
            Prediction.variant == variant.value,
        ]

    def _latencies(
        self, pipeline: str, model: str, version: str | None, variant: Variant, since: datetime, limit: int
    ) -> list[tuple[float, datetime]]:
        """``(latency_ms, created_at)`` of the newest ``limit`` predictions, newest first."""
        stmt = (
            select(Prediction.latency_ms, Prediction.created_at)
            .where(*self._where(pipeline, model, version, variant, since))
            .order_by(Prediction.created_at.desc())
            .limit(limit)
        )
        with self.db.session() as s:
            return [(float(r.latency_ms), r.created_at) for r in s.execute(stmt)]

    def _count(
        self, pipeline: str, model: str, version: str | None, variant: Variant, since: datetime, cap: int
    ) -> int:
        inner = (
            select(Prediction.id).where(*self._where(pipeline, model, version, variant, since)).limit(cap)
        ).subquery()
        with self.db.session() as s:
            return int(s.execute(select(func.count()).select_from(inner)).scalar_one())

    def _failed_ids(self, pipeline: str, since: datetime, cap: int) -> list[str]:
        """Observations that ended ``failed`` in the window (the reconciler's index)."""
        stmt = (
            select(Observation.id)
            .where(
                Observation.pipeline == pipeline,
                Observation.status == ObservationStatus.failed.value,
                Observation.updated_at >= since,
            )
            .limit(cap)
        )
        with self.db.session() as s:
            return list(s.scalars(stmt))

    def _quality(
        self, spec: PipelineSpec, since: datetime, now: datetime
    ) -> dict[tuple[str | None, str], tuple[float | None, int]]:
        """``(version, variant) → (metric, labels)`` from feedback since the rollout started; the
        metric is None below ``quality_min_feedback`` labels."""
        from keeneye.monitoring.quality import online_quality

        monitoring = self.settings.monitoring
        windows = online_quality(
            self.db,
            spec.name,
            spec=spec,
            window_seconds=max(1.0, (now - since).total_seconds()),
            reference_for=lambda _version: {},
            min_feedback=monitoring.quality_min_feedback,
            drop=monitoring.quality_drop,
            now=now,
        )
        out: dict[tuple[str | None, str], tuple[float | None, int]] = {}
        for w in windows:
            value = w.metrics.get(self.policy.quality_metric)
            enough = w.n >= monitoring.quality_min_feedback and value is not None
            out[(w.model_version, w.variant)] = (float(value) if enough and value is not None else None, w.n)
        return out

    def _agreement(self, spec: PipelineSpec, record: RolloutRecord, since: datetime, limit: int) -> Agreement:
        """Shadow answers compared with the champion's answers to the same observations."""
        from keeneye.monitoring.quality import quality_kind

        kind = quality_kind(spec)
        stmt = (
            select(Prediction.observation_id, Prediction.result, Prediction.decision)
            .where(*self._where(spec.name, spec.model_name, record.challenger_version, Variant.shadow, since))
            .order_by(Prediction.created_at.desc())
            .limit(limit)
        )
        with self.db.session() as s:
            shadow = {r.observation_id: _with_decision(r.result, r.decision) for r in s.execute(stmt)}
        ids = list(shadow)
        n = agreeing = 0
        for i in range(0, len(ids), PREDICTION_CHUNK):
            chunk = ids[i : i + PREDICTION_CHUNK]
            stmt = select(Prediction.observation_id, Prediction.result, Prediction.decision).where(
                Prediction.observation_id.in_(chunk),
                Prediction.model_name == spec.model_name,
                Prediction.model_version == (record.champion_version or ""),
                Prediction.variant == Variant.champion.value,
            )
            with self.db.session() as s:
                rows = s.execute(stmt).all()
            for row in rows:
                n += 1
                champion = _with_decision(row.result, row.decision)
                agreeing += answers_agree(kind, champion, shadow[row.observation_id])
        return Agreement(n, agreeing)

    # --- moving the row ------------------------------------------------------------------------------

    def _versions(
        self, spec: PipelineSpec, version: str | None, *, actor: str, reason: str, force: bool
    ) -> tuple[str, str]:
        """(champion, challenger) for a new rollout; ``version`` becomes the challenger first."""
        if spec.model.alias != CHAMPION:
            raise InvalidInput(
                "not_champion_served",
                f"pipeline {spec.name} serves the alias {spec.model.alias!r}; "
                f"a rollout promotes {CHAMPION!r}",
                status=409,
                fix=f"serve {CHAMPION!r} (model.alias in the spec), or move aliases with keeneye models",
            )
        model = spec.model_name
        champion = self.registry.resolve(model, CHAMPION)
        if champion is None:
            raise InvalidInput(
                "no_champion",
                f"{model} has no champion to compare a challenger with",
                status=409,
                fix=f"promote a first version: keeneye models promote {spec.name} VERSION",
            )
        if version is not None:
            if str(version) == champion.version:
                raise _same_version(model, champion.version)
            with _refusals():
                info = self.registry.set_alias(
                    model,
                    CHALLENGER,
                    str(version),
                    actor=actor,
                    reason=reason or "rollout challenger",
                    force=force,
                )
            return champion.version, info.version
        challenger = self.registry.resolve(model, CHALLENGER)
        if challenger is None:
            raise InvalidInput(
                "no_challenger",
                f"{model} has no challenger",
                status=409,
                fix="name one with --version V, or register it with --alias challenger",
            )
        if challenger.version == champion.version:
            raise _same_version(model, champion.version)
        return champion.version, challenger.version

    def _drop_challenger_alias(
        self, spec: PipelineSpec, record: RolloutRecord, *, actor: str, reason: str
    ) -> None:
        """A rejected challenger loses its alias (so nothing starts it again by accident)."""
        current = self.registry.resolve(spec.model_name, CHALLENGER)
        if current is not None and current.version == record.challenger_version:
            with contextlib.suppress(NotFound):
                self.registry.delete_alias(spec.model_name, CHALLENGER, actor=actor, reason=reason)

    def _undo_promotion(
        self, spec: PipelineSpec, before: RolloutRecord, *, actor: str, reason: str
    ) -> RolloutRecord:
        promoted = before.details.get("promoted")
        champion = self.registry.resolve(spec.model_name, CHAMPION)
        if (
            not isinstance(promoted, Mapping)
            or champion is None
            or champion.version != promoted.get("version")
        ):
            raise InvalidInput(
                "nothing_to_abort",
                f"pipeline {spec.name} is stable and its last move was no rollout promotion",
                status=409,
                fix="start one with --shadow, or roll the champion back: "
                f"keeneye models rollback {spec.name}",
            )
        _need_reason(reason, "rolling back a promotion")
        with _refusals():
            info = self.registry.rollback(spec.model_name, actor=actor, reason=reason)
        return self._move(
            before,
            "rollout_rolled_back",
            champion_version=info.version,
            actor=actor,
            reason=reason,
            details={"undid_promotion": dict(promoted), "champion": info.version},
            from_version=str(promoted.get("version")),
            model_version=info.version,
        )

    def _move(
        self,
        before: RolloutRecord,
        event: str,
        *,
        actor: str,
        reason: str,
        details: Mapping[str, Any],
        model_version: str | None = None,
        from_version: str | None = None,
        **changes: Any,
    ) -> RolloutRecord:
        """Write the new row (compare-and-set on the old one) and its audit event in one transaction."""
        now = utcnow()
        after = replace(before, **changes, details=dict(details), updated_at=now)
        try:
            with self.db.session() as s:
                if before.updated_at is None:
                    if s.get(Rollout, before.pipeline) is not None:
                        raise _conflict(before.pipeline)
                    s.add(Rollout(**after.values()))
                else:
                    stmt = (
                        update(Rollout)
                        .where(
                            Rollout.pipeline == before.pipeline,
                            Rollout.state == before.state.value,
                            Rollout.updated_at == before.updated_at,
                        )
                        .values(**after.values())
                    )
                    if s.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
                        raise _conflict(before.pipeline)
                s.add(
                    ModelEvent(
                        pipeline=before.pipeline,
                        event=event,
                        model_version=model_version or after.challenger_version or after.champion_version,
                        from_version=from_version or before.champion_version,
                        alias=None,
                        actor=actor,
                        reason=reason,
                        details={**dict(details), "state": after.state.value, "from": before.state.value},
                        created_at=now,
                    )
                )
        except IntegrityError as exc:  # another process inserted the first row at the same time
            raise _conflict(before.pipeline) from exc
        log.info(
            "rollout event %s: %s %s → %s by %s: %s",
            event,
            before.pipeline,
            before.state,
            after.state,
            actor,
            reason,
        )
        self._publish_state(after.pipeline, after.state)
        return after

    def _publish_state(self, pipeline: str, state: RolloutState) -> None:
        for s in RolloutState:
            self.metrics.rollout_state.labels(pipeline, s.value).set(1 if s is state else 0)


# ==================================================================================================
# Helpers
# ==================================================================================================


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The registry refuses a move (failed gates) with a plain KeeneyeError: a 409, not a 500."""
    try:
        yield
    except KeeneyeError as exc:
        if type(exc) is not KeeneyeError:
            raise
        raise InvalidInput("refused", exc.message, status=409, fix=exc.fix) from exc


def _p95(values: Iterable[float]) -> float | None:
    data = list(values)
    return float(np.percentile(np.asarray(data, dtype=np.float64), 95)) if data else None


def _with_decision(result: Mapping[str, Any] | None, decision: str | None) -> dict[str, Any]:
    out = dict(result or {})
    if decision is not None:
        out.setdefault("decision", decision)
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _one_line(exc: BaseException) -> str:
    text = exc.one_line() if isinstance(exc, KeeneyeError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


def _bad(message: str, *, fix: str | None = None) -> InvalidInput:
    return InvalidInput("bad_rollout", message, status=422, fix=fix)


def _fraction(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise _bad(
            f"{name} must be a fraction between 0 and 1, got {value!r}", fix=f"e.g. {name} 0.1 for 10 %"
        )
    return float(value)


def _need_reason(reason: str, what: str) -> None:
    if not reason.strip():
        raise InvalidInput("reason_required", f"{what} needs a reason", fix="add --reason TEXT")


def _wrong_state(record: RolloutRecord, action: str, fix: str) -> InvalidInput:
    versions = f" (champion v{record.champion_version}, challenger v{record.challenger_version})"
    return InvalidInput(
        "wrong_state",
        f"cannot {action}: pipeline {record.pipeline} is in {record.state.value}"
        + (versions if record.active else ""),
        status=409,
        fix=fix,
    )


def _same_version(model: str, version: str) -> InvalidInput:
    return InvalidInput(
        "same_version",
        f"{model} v{version} is already the champion; a challenger must be another version",
        status=409,
        fix="register the new model and name it with --version",
    )


def _conflict(pipeline: str) -> InvalidInput:
    return InvalidInput(
        "rollout_conflict",
        f"the rollout of {pipeline} changed while this move was being made",
        status=409,
        fix=f"check it with `keeneye models rollout {pipeline} --status` and try again",
    )


def canary_deadline(record: RolloutRecord, policy: RolloutPolicy) -> datetime | None:
    """When a canary may be promoted at the earliest (for display)."""
    if record.state is not RolloutState.canary or record.started_at is None:
        return None
    return record.started_at + timedelta(seconds=policy.min_canary_seconds)


__all__ = [
    "ACTIONS",
    "ACTIVE",
    "Agreement",
    "Evaluation",
    "RolloutController",
    "RolloutPolicy",
    "RolloutRecord",
    "RolloutState",
    "ShadowRunner",
    "TickResult",
    "VariantStats",
    "Verdict",
    "answers_agree",
    "choose_variant",
    "in_shadow_sample",
    "judge_canary",
    "judge_shadow",
    "mean_instance_iou",
    "prepare_for",
    "read_rollout",
    "rollout_rows",
    "run_shadow_batch",
]
