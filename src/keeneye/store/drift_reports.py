"""Drift reports: one closed window of one pipeline and model version, compared with its reference.

Reads are served by the ``(pipeline, window_end)`` index: never a scan of the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select

from keeneye.store.engine import Database
from keeneye.store.records import DriftReportRecord, DriftWindow
from keeneye.store.schema import DriftReportRow


class DriftReportRepository(Database):
    """Drift report reads and writes of :class:`~keeneye.store.ResultsDB`."""

    def add_drift_report(
        self,
        *,
        pipeline: str,
        model_version: str,
        window_start: datetime,
        window_end: datetime,
        n: int,
        alarm: bool,
        features: Mapping[str, Any],
        embedding: Mapping[str, Any],
        source: str,
        created_at: datetime,
    ) -> DriftReportRecord:
        row = DriftReportRow(
            pipeline=pipeline,
            model_version=model_version,
            window_start=window_start,
            window_end=window_end,
            n=n,
            alarm=alarm,
            features=dict(features),
            embedding=dict(embedding),
            source=source,
            created_at=created_at,
        )
        with self.session() as s:
            s.add(row)
            s.flush()
            return DriftReportRecord.of(row)

    def latest_drift_reports(
        self, pipeline: str, limit: int, *, model_version: str | None = None
    ) -> list[DriftReportRecord]:
        """The pipeline's latest windows (of one model version when given), newest first."""
        query = select(DriftReportRow).where(DriftReportRow.pipeline == pipeline)
        if model_version is not None:
            query = query.where(DriftReportRow.model_version == model_version)
        query = query.order_by(DriftReportRow.window_end.desc(), DriftReportRow.id.desc()).limit(limit)
        with self.session() as s:
            return [DriftReportRecord.of(row) for row in s.scalars(query)]

    def drift_windows(self, pipeline: str, limit: int) -> list[DriftWindow]:
        """The pipeline's latest windows without their statistics (cheap), newest first."""
        query = (
            select(
                DriftReportRow.window_start,
                DriftReportRow.window_end,
                DriftReportRow.alarm,
                DriftReportRow.n,
                DriftReportRow.model_version,
            )
            .where(DriftReportRow.pipeline == pipeline)
            .order_by(DriftReportRow.window_end.desc(), DriftReportRow.id.desc())
            .limit(limit)
        )
        with self.session() as s:
            return [
                DriftWindow(r.window_start, r.window_end, bool(r.alarm), int(r.n), r.model_version)
                for r in s.execute(query)
            ]
