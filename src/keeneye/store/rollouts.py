"""Rollout state per pipeline, as stored in ``rollouts``: the record, and the reads the serving path needs.

One row per pipeline that ever rolled out (``stable → shadow → canary → stable``). The serving path
(``keeneye.pipelines.routing``) reads it at every alias poll to route keys and sample shadows; the
rollout controller (``keeneye.lifecycle.rollout``) moves it. ``updated_at`` is the row's
compare-and-set token; it is None only for the implicit stable state of a pipeline without a row.

Shadow predictions are written here too (:func:`insert_shadow_predictions`): a redelivered input
leaves the stored prediction as it is.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from keeneye.domain import JsonObject, Variant
from keeneye.store.engine import Database, insert_ignoring_conflicts, rowcount
from keeneye.store.predictions import PREDICTION_KEY
from keeneye.store.schema import ModelEventRow, PredictionRow, RolloutRow


class RolloutState(enum.StrEnum):
    stable = "stable"
    shadow = "shadow"
    canary = "canary"


ACTIVE = frozenset({RolloutState.shadow, RolloutState.canary})


class RolloutValues(TypedDict):
    """The columns of a ``rollouts`` row (:class:`RolloutRow` attributes)."""

    pipeline: str
    state: str
    champion_version: str | None
    challenger_version: str | None
    canary_share: float
    shadow_sample: float
    started_at: datetime | None
    details: JsonObject
    updated_at: datetime | None


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
    def implicit(cls, pipeline: str, *, canary_share: float, shadow_sample: float) -> RolloutRecord:
        """The stable state of a pipeline that never rolled out (its spec's shares)."""
        return cls(
            pipeline=pipeline,
            state=RolloutState.stable,
            champion_version=None,
            challenger_version=None,
            canary_share=canary_share,
            shadow_sample=shadow_sample,
            started_at=None,
            details={},
            updated_at=None,
        )

    @classmethod
    def from_row(cls, row: RolloutRow) -> RolloutRecord:
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

    def values(self) -> RolloutValues:
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

    def to_dict(self) -> JsonObject:
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


class RolloutRepository(Database):
    """Rollout state reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def read_rollout(self, pipeline: str) -> RolloutRecord | None:
        """The pipeline's row, None when it never had a rollout (one primary-key lookup)."""
        with self.session() as s:
            row = s.get(RolloutRow, pipeline)
            return None if row is None else RolloutRecord.from_row(row)

    def rollout_rows(self) -> list[RolloutRecord]:
        """Every row: one per pipeline that ever rolled out, as small as the catalog."""
        with self.session() as s:
            return [
                RolloutRecord.from_row(r) for r in s.scalars(select(RolloutRow).order_by(RolloutRow.pipeline))
            ]

    def move_rollout(
        self,
        before: RolloutRecord,
        after: RolloutRecord,
        *,
        event: str,
        model_version: str | None,
        from_version: str | None,
        actor: str,
        reason: str,
        details: Mapping[str, Any],
    ) -> bool:
        """Write ``after`` (compare-and-set on ``before``: its state and ``updated_at``, or that no row
        exists yet) and its ``model_events`` audit row in one transaction. ``False`` when another actor
        moved the row first (nothing is written)."""
        try:
            with self.session() as s:
                if before.updated_at is None:
                    if s.get(RolloutRow, before.pipeline) is not None:
                        return False
                    s.add(RolloutRow(**after.values()))
                else:
                    stmt = (
                        update(RolloutRow)
                        .where(
                            RolloutRow.pipeline == before.pipeline,
                            RolloutRow.state == before.state.value,
                            RolloutRow.updated_at == before.updated_at,
                        )
                        .values(**after.values())
                    )
                    if rowcount(s.execute(stmt)) != 1:
                        raise _Moved
                s.add(
                    ModelEventRow(
                        pipeline=before.pipeline,
                        event=event,
                        model_version=model_version,
                        from_version=from_version,
                        alias=None,
                        actor=actor,
                        reason=reason,
                        details=dict(details),
                        created_at=after.updated_at,
                    )
                )
        except _Moved:  # rolled back: the row changed under us
            return False
        except IntegrityError:  # another process inserted the first row at the same time
            return False
        return True

    def insert_shadow_predictions(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Many prediction rows in one transaction; one already stored (a redelivery) is left as it is."""
        with self.session() as s:
            return insert_ignoring_conflicts(s, PredictionRow, rows, PREDICTION_KEY)


class _Moved(Exception):
    """The compare-and-set found the row changed (raised to roll the transaction back)."""


def read_rollout(db: RolloutRepository, pipeline: str) -> RolloutRecord | None:
    """:meth:`RolloutRepository.read_rollout` as a function (the runtime polls it in a thread)."""
    return db.read_rollout(pipeline)


def rollout_rows(db: RolloutRepository) -> list[RolloutRecord]:
    return db.rollout_rows()


def insert_shadow_predictions(db: RolloutRepository, rows: Sequence[Mapping[str, Any]]) -> None:
    db.insert_shadow_predictions(rows)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


__all__ = [
    "ACTIVE",
    "RolloutRecord",
    "RolloutRepository",
    "RolloutState",
    "insert_shadow_predictions",
    "read_rollout",
    "rollout_rows",
]
