"""Reads for the line dashboard: what the edge runners stored, per line, camera and SKU.

The edge recorder (:mod:`keeneye.edge.recorder`) stores each decided part as an observation with
``source = 'edge'`` and the line, camera, SKU, PLC result code, latency, trigger time and PLC outcome
in its metadata (JSON). These queries read those keys with the JSON operators of both backends
(``json_extract`` on SQLite, ``->>`` on PostgreSQL); they are bounded by a time window on
``created_at`` (when the event was stored) and, for row reads, by a limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, and_, cast, func, select

from keeneye.domain import JsonObject
from keeneye.store.engine import Database
from keeneye.store.records import ObservationRecord, PredictionRecord
from keeneye.store.schema import ObservationRow, PredictionRow

EDGE_SOURCE = "edge"


def _text(key: str) -> ColumnElement[str]:
    value: ColumnElement[str] = ObservationRow.metadata_[key].as_string()
    return value


def _int(key: str) -> ColumnElement[int]:
    return cast(ObservationRow.metadata_[key].as_string(), Integer)


def _float(key: str) -> ColumnElement[float]:
    return cast(ObservationRow.metadata_[key].as_string(), Float)


@dataclass(frozen=True)
class LineCount:
    """How many parts of one line / camera / SKU got one PLC result (1 OK, 2 DEFECT, 3 fail-safe)."""

    line: str
    camera: str
    sku: str
    result_code: int
    count: int


@dataclass(frozen=True)
class LinePart:
    """One stored part of a camera, as the dashboard's latency and throughput figures need it.

    ``triggered_at`` and ``sink_at`` are Unix seconds; ``plc`` is the sink's state when the part was
    stored (``connected``, ``last_ack_at``, ``last_error``), absent for events of older runners."""

    observation_id: str
    created_at: datetime
    sequence: int | None
    triggered_at: float | None
    latency_ms: float | None
    result_code: int | None
    sink: str | None
    sink_at: float | None
    plc: JsonObject | None


class LineRepository(Database):
    """The line dashboard's reads of :class:`~keeneye.store.ResultsDB`."""

    def _edge(self, pipeline: str, since: datetime) -> list[ColumnElement[bool]]:
        return [
            ObservationRow.pipeline == pipeline,
            ObservationRow.source == EDGE_SOURCE,
            ObservationRow.created_at >= since,
        ]

    def line_counts(self, pipeline: str, since: datetime) -> list[LineCount]:
        """Parts stored since ``since``, counted per line, camera, SKU and PLC result code."""
        line, camera, sku, code = _text("line"), _text("camera"), _text("sku"), _int("result_code")
        query = (
            select(line, camera, sku, code, func.count())
            .where(*self._edge(pipeline, since))
            .group_by(line, camera, sku, code)
        )
        with self.session() as s:
            rows = s.execute(query).all()
        return [
            LineCount(str(r[0] or ""), str(r[1] or ""), str(r[2] or ""), int(r[3] or 0), int(r[4]))
            for r in rows
            if r[0] is not None and r[1] is not None
        ]

    def recent_line_parts(
        self, pipeline: str, line: str, camera: str, since: datetime, limit: int
    ) -> list[LinePart]:
        """The newest ``limit`` parts of one camera stored since ``since``, newest first."""
        query = (
            select(
                ObservationRow.id,
                ObservationRow.created_at,
                _int("sequence"),
                _float("triggered_at"),
                _float("latency_ms"),
                _int("result_code"),
                _text("sink"),
                _float("sink_at"),
                ObservationRow.metadata_["plc"],
            )
            .where(*self._edge(pipeline, since), _text("line") == line, _text("camera") == camera)
            .order_by(ObservationRow.created_at.desc(), _int("sequence").desc())
            .limit(limit)
        )
        with self.session() as s:
            rows = s.execute(query).all()
        return [
            LinePart(
                observation_id=r[0],
                created_at=r[1],
                sequence=r[2],
                triggered_at=r[3],
                latency_ms=r[4],
                result_code=r[5],
                sink=r[6],
                sink_at=r[7],
                plc=r[8] if isinstance(r[8], dict) else None,
            )
            for r in rows
        ]

    def last_line_ack(self, pipeline: str, line: str, camera: str, since: datetime) -> float | None:
        """When the PLC last acknowledged a part of this camera (Unix seconds), within the window."""
        query = select(func.max(_float("sink_at"))).where(
            *self._edge(pipeline, since),
            _text("line") == line,
            _text("camera") == camera,
            _text("sink") == "acked",
        )
        with self.session() as s:
            value: Any = s.execute(query).scalar()
        return None if value is None else float(value)

    def recent_line_defects(
        self, pipeline: str, since: datetime, limit: int, *, line: str | None = None
    ) -> list[tuple[ObservationRecord, PredictionRecord | None]]:
        """The newest ``limit`` DEFECT and fail-safe parts (result code ≥ 2) since ``since``, newest
        first, each with its champion prediction (none for a fail-safe: the model did not answer)."""
        where: list[ColumnElement[bool]] = [*self._edge(pipeline, since), _int("result_code") >= 2]
        if line is not None:
            where.append(_text("line") == line)
        query = select(ObservationRow).where(*where).order_by(ObservationRow.created_at.desc()).limit(limit)
        with self.session() as s:
            observations = [ObservationRecord.from_row(r) for r in s.scalars(query)]
            ids: Sequence[str] = [o.id for o in observations]
            predictions: dict[str, PredictionRecord] = {}
            if ids:
                rows = s.scalars(
                    select(PredictionRow).where(
                        and_(PredictionRow.observation_id.in_(ids), PredictionRow.variant == "champion")
                    )
                )
                for p in rows:
                    predictions[p.observation_id] = PredictionRecord.from_row(p)
        return [(o, predictions.get(o.id)) for o in observations]


__all__ = ["EDGE_SOURCE", "LineCount", "LinePart", "LineRepository"]
