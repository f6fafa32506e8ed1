"""The rollout controller: the moves of ``stable → shadow → canary → stable`` for people (CLI, API:
:meth:`RolloutController.apply`) and for the scheduler (:meth:`RolloutController.tick`).

Each move is one transaction on the pipeline's ``rollouts`` row (compare-and-set on state and
``updated_at``) with its ``model_events`` audit row; a promotion moves the registry's ``champion``
alias, an abort right after one gives it back. :meth:`RolloutController.evaluate` measures what
:mod:`~keeneye.lifecycle.rollout.judging` judges.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from keeneye.domain import InvalidInput, JsonObject, JsonValue, KeeneyeError, NotFound
from keeneye.lifecycle.rollout.errors import (
    bad_rollout,
    conflict,
    fraction,
    need_reason,
    refusals,
    same_version,
    wrong_state,
)
from keeneye.lifecycle.rollout.judging import (
    Evaluation,
    RolloutPolicy,
    Verdict,
    canary_deadline,
    iso_or_none,
    judge_canary,
    judge_shadow,
)
from keeneye.lifecycle.rollout.measure import measure
from keeneye.metrics import Metrics
from keeneye.pipelines.spec import PipelineCatalog, PipelineSpec
from keeneye.registry import CHALLENGER, CHAMPION, ModelRegistry
from keeneye.settings import Settings
from keeneye.store import ResultsDB, RolloutRecord, RolloutState, utcnow
from keeneye.store.rollouts import read_rollout, rollout_rows

log = logging.getLogger(__name__)

ACTIONS = ("shadow", "canary", "promote", "abort")
Action = Literal["shadow", "canary", "promote", "abort"]
CONTROLLER = "controller"


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
        return read_rollout(self.db, spec.name) or RolloutRecord.implicit(
            spec.name, canary_share=spec.rollout.canary_share, shadow_sample=spec.rollout.shadow_sample
        )

    def report(self, pipeline: str, *, events: int = 10) -> JsonObject:
        """Everything ``GET …/rollout`` and ``keeneye models rollout P --status`` show."""
        spec = self.catalog.get(pipeline)
        record = self.status(pipeline)
        champion = self.registry.resolve(spec.model_name, CHAMPION)
        challenger = self.registry.resolve(spec.model_name, CHALLENGER)
        out: JsonObject = record.to_dict()
        out["registry"] = {
            "model": spec.model_name,
            "champion": champion.version if champion else None,
            "challenger": challenger.version if challenger else None,
        }
        out["min_samples"] = spec.rollout.min_samples
        out["earliest_promotion"] = iso_or_none(canary_deadline(record, self.policy))
        if record.active:
            evaluation = self.evaluate(record, spec)
            verdict = self._judge(record, spec, evaluation)
            out["evaluation"] = evaluation.to_dict()
            out["next"] = verdict.to_dict()
        else:
            out["evaluation"] = None
            out["next"] = None
        recent: list[JsonValue] = [
            {
                "event": e.event,
                "model_version": e.model_version,
                "from_version": e.from_version,
                "actor": e.actor,
                "reason": e.reason,
                "created_at": iso_or_none(e.created_at),
            }
            for e in self.db.model_events(spec.name, limit=events * 3)
            if e.event.startswith("rollout_")
        ]
        out["events"] = recent[:events]
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
                raise bad_rollout("share is for canary; shadow takes sample")
            return self.start_shadow(
                pipeline, sample=sample, version=version, actor=actor, reason=reason, force=force
            )
        if action == "canary":
            if sample is not None:
                raise bad_rollout("sample is for shadow; canary takes share")
            return self.start_canary(
                pipeline, share=share, version=version, actor=actor, reason=reason, force=force
            )
        if share is not None or sample is not None or version is not None:
            raise bad_rollout(f"{action} takes no share, sample or version")
        if action == "promote":
            return self.promote(pipeline, actor=actor, reason=reason, force=force)
        if action == "abort":
            return self.abort(pipeline, actor=actor, reason=reason)
        raise bad_rollout(f"unknown action {action[:40]!r}; use one of {', '.join(ACTIONS)}")

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
            raise wrong_state(before, "shadow", "abort it first, or move on with --canary")
        sample = spec.rollout.shadow_sample if sample is None else fraction("sample", sample)
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
        share = spec.rollout.canary_share if share is None else fraction("share", share)
        if share <= 0:
            raise bad_rollout("a canary share must be above 0", fix="e.g. --canary 10 (percent) or share 0.1")
        details: JsonObject = {"share": share, "forced": force}
        if evaluation is not None:
            details["evaluation"] = evaluation.to_dict()
        if before.state is RolloutState.canary:
            if version is not None and version != before.challenger_version:
                raise wrong_state(before, "canary with another version", "abort the running one first")
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
                raise wrong_state(before, "canary with another version", "abort the shadow first")
            champion, challenger = before.champion_version, before.challenger_version
            details["shadow_started_at"] = iso_or_none(before.started_at)
        else:
            if not force:
                raise InvalidInput(
                    "skips_shadow",
                    f"pipeline {spec.name} is stable: a canary normally follows a shadow run",
                    status=409,
                    fix="start with --shadow, or skip it with --force --reason TEXT",
                )
            need_reason(reason, "skipping the shadow run")
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
            raise wrong_state(before, "promote", fix)
        if before.state is RolloutState.shadow:
            need_reason(reason, "promoting without a canary")
        assert before.challenger_version is not None
        reason = reason or "challenger promoted"
        with refusals():
            self.registry.promote(
                spec.model_name, before.challenger_version, actor=actor, reason=reason, force=force
            )
        details: JsonObject = {
            "promoted": {
                "version": before.challenger_version,
                "previous": before.champion_version,
                "at": iso_or_none(utcnow()),
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
        details: JsonObject = {"from_state": before.state.value, "challenger": before.challenger_version}
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
        return measure(self.db, self.settings, self.policy, record, spec, now=self.clock())

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
                raise same_version(model, champion.version)
            with refusals():
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
            raise same_version(model, champion.version)
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
        need_reason(reason, "rolling back a promotion")
        with refusals():
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
        moved = self.db.move_rollout(
            before,
            after,
            event=event,
            model_version=model_version or after.challenger_version or after.champion_version,
            from_version=from_version or before.champion_version,
            actor=actor,
            reason=reason,
            details={**dict(details), "state": after.state.value, "from": before.state.value},
        )
        if not moved:
            raise conflict(before.pipeline)
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
