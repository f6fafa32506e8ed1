"""Feedback: ground truth for an observation, from the API, an import, or a reviewer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from keeneye.domain import NotFound
from keeneye.store.engine import Database, utcnow
from keeneye.store.records import FeedbackRecord
from keeneye.store.schema import FeedbackRow, ObservationRow, ReviewItemRow


class FeedbackRepository(Database):
    """Feedback reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def add_feedback(
        self, observation_id: str, label: Mapping[str, Any], source: str, author: str | None = None
    ) -> int:
        """Record ground truth; returns its id. Raises :class:`NotFound` for an unknown observation.

        The observation leaves the review queue (it has its answer) in the same transaction.
        """
        now = utcnow()
        row = FeedbackRow(
            observation_id=observation_id,
            label=dict(label),
            source=source,
            author=author,
            created_at=now,
            pipeline=select(ObservationRow.pipeline)
            .where(ObservationRow.id == observation_id)
            .scalar_subquery(),
        )
        try:
            # No read-before-write: the foreign key answers "does it exist" inside the insert.
            with self.session() as s:
                s.add(row)
                s.flush()
                s.execute(
                    update(ReviewItemRow)
                    .where(
                        ReviewItemRow.observation_id == observation_id, ReviewItemRow.resolved_at.is_(None)
                    )
                    .values(resolved_at=now)
                )
                return row.id
        except IntegrityError as exc:
            raise NotFound(
                f"observation {observation_id} does not exist", fix="send feedback for an id the API returned"
            ) from exc

    def withdraw_feedback(self, observation_id: str, feedback_id: int) -> FeedbackRecord:
        """Remove one feedback of an observation (a reviewer's undo); returns what was removed.

        When no other feedback of the observation is left, its review items are open again, in the
        same transaction (only feedback resolves them). Raises :class:`NotFound` when the observation
        has no feedback with that id.
        """
        with self.session() as s:
            row = s.scalars(
                select(FeedbackRow).where(
                    FeedbackRow.id == feedback_id, FeedbackRow.observation_id == observation_id
                )
            ).first()
            if row is None:
                raise NotFound(
                    f"observation {observation_id} has no feedback {feedback_id}",
                    fix="withdraw a feedback id that POST .../feedback returned for this observation",
                )
            record = FeedbackRecord.from_row(row)
            s.delete(row)
            s.flush()
            left = select(FeedbackRow.id).where(FeedbackRow.observation_id == observation_id).limit(1)
            if s.execute(left).first() is None:
                s.execute(
                    update(ReviewItemRow)
                    .where(ReviewItemRow.observation_id == observation_id)
                    .values(resolved_at=None)
                )
            return record

    def feedback_for(self, observation_id: str) -> list[FeedbackRecord]:
        with self.session() as s:
            rows = s.scalars(
                select(FeedbackRow)
                .where(FeedbackRow.observation_id == observation_id)
                .order_by(FeedbackRow.id)
            )
            return [FeedbackRecord.from_row(r) for r in rows]

    def feedback_page(
        self,
        pipeline: str,
        *,
        limit: int,
        before: tuple[datetime, int] | None = None,
        after: datetime | None = None,
        until: datetime | None = None,
    ) -> list[FeedbackRecord]:
        """One keyset page of the pipeline's feedback, newest first, on ``ix_feedback_pipeline_created_at``.

        ``before`` is the ``(created_at, id)`` of the previous page's last row; ``after`` and ``until``
        bound ``created_at`` to ``(after, until]``.
        """
        stmt = (
            select(FeedbackRow)
            .where(FeedbackRow.pipeline == pipeline)
            .order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc())
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(FeedbackRow.created_at > after)
        if until is not None:
            stmt = stmt.where(FeedbackRow.created_at <= until)
        if before is not None:
            stmt = stmt.where(
                or_(
                    FeedbackRow.created_at < before[0],
                    and_(FeedbackRow.created_at == before[0], FeedbackRow.id < before[1]),
                )
            )
        with self.session() as s:
            return [FeedbackRecord.from_row(r) for r in s.scalars(stmt)]

    def count_labelled_observations(self, pipeline: str, since: datetime, *, cap: int) -> int:
        """Distinct observations labelled after ``since``, up to ``cap`` rows (index range + LIMIT)."""
        rows = (
            select(FeedbackRow.observation_id)
            .where(FeedbackRow.pipeline == pipeline, FeedbackRow.created_at > since)
            .limit(cap)
            .subquery()
        )
        with self.session() as s:
            return int(s.execute(select(func.count(func.distinct(rows.c.observation_id)))).scalar_one())
