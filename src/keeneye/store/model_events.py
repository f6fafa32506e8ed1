"""Model events: the audit log of the model lifecycle (registered, alias moves, gates, rollout).

Append-only: rows are written, never changed (invariant 5, every decision is traceable).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from keeneye.store.engine import Database, utcnow
from keeneye.store.records import ModelEventRecord
from keeneye.store.schema import ModelEventRow


class ModelEventRepository(Database):
    """Model event reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def record_model_event(
        self,
        pipeline: str,
        event: str,
        *,
        model_version: str | None = None,
        from_version: str | None = None,
        alias: str | None = None,
        actor: str,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        row = ModelEventRow(
            pipeline=pipeline,
            event=event,
            model_version=model_version,
            from_version=from_version,
            alias=alias,
            actor=actor,
            reason=reason,
            details=dict(details or {}),
            created_at=utcnow(),
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            return row.id

    def model_events(self, pipeline: str, limit: int = 100) -> list[ModelEventRecord]:
        """The pipeline's audit log, newest first."""
        stmt = (
            select(ModelEventRow)
            .where(ModelEventRow.pipeline == pipeline)
            .order_by(ModelEventRow.created_at.desc(), ModelEventRow.id.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [ModelEventRecord.from_row(r) for r in s.scalars(stmt)]
