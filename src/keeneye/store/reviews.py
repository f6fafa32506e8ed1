"""The review queue: observations worth a person's look, one item per (observation, reason).

Items are unique on (observation, reason), so queueing is idempotent (``ON CONFLICT DO NOTHING``);
an item is resolved when feedback for its observation arrives (:mod:`keeneye.store.feedback`).
Reads page through the ``(pipeline, resolved_at, priority)`` index, never the whole table.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import TypedDict

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from keeneye.domain import JsonObject, NotFound
from keeneye.store.engine import Database, insert_ignoring_conflicts, utcnow
from keeneye.store.records import NewReviewItem, ReviewItemRecord
from keeneye.store.schema import FeedbackRow, ReviewItemRow

REVIEW_KEY = ("observation_id", "reason")
CHUNK = 500  # items per statement


class _ReviewItemValues(TypedDict):
    """The column values of one ``review_items`` row to insert."""

    observation_id: str
    pipeline: str
    reason: str
    priority: float
    details: JsonObject
    created_at: datetime
    resolved_at: datetime | None


def _rows(items: Sequence[NewReviewItem]) -> list[_ReviewItemValues]:
    now = utcnow()
    return [
        {
            "observation_id": i.observation_id,
            "pipeline": i.pipeline,
            "reason": str(i.reason),
            "priority": float(i.priority),
            "details": dict(i.details),
            "created_at": now,
            "resolved_at": None,
        }
        for i in items
    ]


class ReviewRepository(Database):
    """Review queue reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def enqueue_review(self, observation_id: str, items: Sequence[NewReviewItem]) -> int:
        """Queue items of one observation unless it already has feedback; how many are new.

        Raises :class:`NotFound` for an unknown observation.
        """
        rows = _rows(items)
        if not rows:
            return 0
        answered = select(FeedbackRow.id).where(FeedbackRow.observation_id == observation_id).limit(1)
        try:
            with self.session() as s:
                if s.execute(answered).first() is not None:
                    return 0
                return insert_ignoring_conflicts(s, ReviewItemRow, rows, REVIEW_KEY)
        except IntegrityError as exc:  # the foreign key: no such observation
            raise NotFound(f"observation {observation_id} does not exist") from exc

    def queue_reviews(self, items: Sequence[NewReviewItem]) -> int:
        """Queue items of fresh answers (no feedback to look for) in one transaction; how many are new."""
        rows = _rows(items)
        if not rows:
            return 0
        with self.session() as s:
            return sum(
                insert_ignoring_conflicts(s, ReviewItemRow, rows[i : i + CHUNK], REVIEW_KEY)
                for i in range(0, len(rows), CHUNK)
            )

    def review_items(
        self, pipeline: str, *, limit: int, page: int, include_resolved: bool
    ) -> dict[str, list[ReviewItemRecord]]:
        """Items of the first ``limit`` observations of the pipeline's queue, by observation in queue
        order: open items by priority (highest first, oldest first on ties), then — with
        ``include_resolved`` — the most recently resolved; read ``page`` rows at a time. Each listed
        observation comes with all its items (open ones only, unless ``include_resolved``)."""
        grouped: dict[str, list[ReviewItemRow]] = {}
        base = select(ReviewItemRow).where(ReviewItemRow.pipeline == pipeline)
        phases = [
            base.where(ReviewItemRow.resolved_at.is_(None)).order_by(
                ReviewItemRow.priority.desc(), ReviewItemRow.id
            )
        ]
        if include_resolved:
            resolved = base.where(ReviewItemRow.resolved_at.is_not(None))
            phases.append(resolved.order_by(ReviewItemRow.resolved_at.desc(), ReviewItemRow.id.desc()))
        with self.session() as s:
            for stmt in phases:
                _collect(s, stmt, grouped, limit, page)
            # Reasons of the listed observations that sorted below the page (a low-priority audit item).
            if grouped:
                seen = {r.id for rows in grouped.values() for r in rows}
                extra = select(ReviewItemRow).where(ReviewItemRow.observation_id.in_(list(grouped)))
                for row in s.scalars(extra):
                    if row.id not in seen and (include_resolved or row.resolved_at is None):
                        grouped[row.observation_id].append(row)
            return {k: [ReviewItemRecord.of(r) for r in rows] for k, rows in grouped.items()}

    def review_items_of(self, observation_ids: Collection[str]) -> dict[str, list[ReviewItemRecord]]:
        """Every item (open or resolved) of these observations, by observation."""
        ids = sorted(set(observation_ids))
        out: dict[str, list[ReviewItemRecord]] = {}
        if not ids:
            return out
        with self.session() as s:
            for i in range(0, len(ids), CHUNK):
                stmt = select(ReviewItemRow).where(ReviewItemRow.observation_id.in_(ids[i : i + CHUNK]))
                for row in s.scalars(stmt):
                    out.setdefault(row.observation_id, []).append(ReviewItemRecord.of(row))
        return out


def _collect(
    s: Session,
    stmt: Select[ReviewItemRow],
    grouped: dict[str, list[ReviewItemRow]],
    limit: int,
    page: int,
) -> None:
    """Add rows of ``stmt`` page by page until ``grouped`` holds ``limit`` observations."""
    offset = 0
    while len(grouped) < limit:
        rows = list(s.scalars(stmt.offset(offset).limit(page)))
        for row in rows:
            if row.observation_id in grouped or len(grouped) < limit:
                grouped.setdefault(row.observation_id, []).append(row)
        if len(rows) < page:
            return
        offset += page
