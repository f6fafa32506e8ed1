"""One pipeline's health on one page: traffic, errors, latency vs SLO, drift, quality and alerts.

The monitoring page (and ``GET /v1/pipelines/{name}/monitoring``) must work without Prometheus or
Grafana, so everything here is read from the results database. The database may hold millions of
rows, so every query is bounded:

* per-bucket counts are one ``GROUP BY`` over an index range — ``predictions (pipeline, created_at)``
  and ``observations (pipeline, status, updated_at)`` — never a table scan and never rows in memory;
* latency percentiles read at most ``sample_limit`` rows. When the window holds more, each bucket
  contributes its newest ``sample_limit // buckets`` rows, weighted by the bucket's true count (a
  stratified sample), and the payload says so;
* drift reads the newest report plus the alarm flags of the last few windows
  (``drift_reports (pipeline, window_end)``); alerts read at most :data:`ALERT_LIMIT` open rows.

Percentiles are nearest-rank (the smallest latency with at least q of the traffic at or below it),
so a reported p95 is always a latency that some request really had.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import importlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, NotRequired, TypedDict

import numpy as np

from keeneye.domain import JsonObject, JsonValue, KeeneyeError, ObservationStatus, Variant
from keeneye.monitoring.stats import KS_ALARM, KS_P_ALARM, PSI_ALARM
from keeneye.pipelines import PipelineSpec
from keeneye.store import DriftReportRecord, ResultsDB

log = logging.getLogger(__name__)

SAMPLE_LIMIT = 20_000
DRIFT_HISTORY = 24
ALERT_LIMIT = 100
RATE_NOW_SECONDS = 60.0
QUANTILES = {"p50_ms": 0.50, "p95_ms": 0.95, "p99_ms": 0.99}
# Shadow predictions are never returned to a client: they are not traffic and not served latency.
SERVED_VARIANTS = (Variant.champion.value, Variant.canary.value)
ERROR_STATUSES = (ObservationStatus.rejected.value, ObservationStatus.failed.value)
# Per-feature drift numbers shown on the page; the stored quantiles and samples stay in the database.
FEATURE_FIELDS = ("psi", "ks", "ks_p", "alarm", "n")
EMBEDDING_FIELDS = ("source", "dim", "n_reference", "n_current", "mmd", "p_value", "permutations", "alarm")


# The payload of pipeline_summary, part by part (its top level stays a plain dict: the API route
# and the overview page read it as such).
JsonScalar = str | int | float | bool | None


class TrafficSeriesJson(TypedDict):
    t: list[str]
    predictions: list[int]
    rejected: list[int]
    failed: list[int]


class TrafficTotalsJson(TypedDict):
    predictions: int
    rejected: int
    failed: int


class TrafficJson(TypedDict):
    series: TrafficSeriesJson
    totals: TrafficTotalsJson
    rate_now_per_second: float
    rate_now_seconds: float
    error_share: float | None


class LatencyJson(TypedDict):
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    n: int
    n_sampled: int
    sampled: bool
    sample_limit: int
    method: str
    series: dict[str, list[float | None]]
    slo_ms: NotRequired[float | None]  # set by pipeline_summary (needs the spec)
    within_slo: NotRequired[bool | None]


class DriftWindowJson(TypedDict):
    window_start: str
    window_end: str
    alarm: bool
    n: int
    model_version: str


class DriftReportJson(TypedDict):
    id: int
    model_version: str
    window_start: str
    window_end: str
    n: int
    alarm: bool
    features: list[JsonObject]  # name and FEATURE_FIELDS, most drifted first
    alarming: list[JsonValue]
    embedding: JsonObject | None  # EMBEDDING_FIELDS present in the report


class DriftJson(TypedDict):
    status: str
    thresholds: dict[str, float]
    latest: DriftReportJson | None
    windows: list[DriftWindowJson]


class AlertSummaryJson(TypedDict):
    id: int
    rule: str
    severity: str
    state: str
    value: JsonScalar
    summary: str
    labels: JsonObject
    started_at: str
    fired_at: str | None
    acked_by: str | None
    silenced: bool


class QualityJson(TypedDict):
    available: bool
    note: str | None
    window_seconds: float | None
    windows: list[JsonValue]


@dataclass(frozen=True)
class QualityInputs:
    """What :func:`keeneye.monitoring.quality.online_quality` needs beyond the database."""

    reference_for: Callable[[str], Mapping[str, float]]
    window_seconds: float
    min_feedback: int
    drop: float


@dataclass(frozen=True)
class Buckets:
    """``count`` equal time buckets ending at ``end``; ``edges`` has ``count + 1`` instants."""

    end: datetime
    seconds: float
    count: int

    @property
    def bucket_seconds(self) -> float:
        return self.seconds / self.count

    @property
    def start(self) -> datetime:
        return self.edges[0]

    @cached_property
    def edges(self) -> list[datetime]:
        step = timedelta(seconds=self.bucket_seconds)
        first = self.end - timedelta(seconds=self.seconds)
        return [first + step * i for i in range(self.count)] + [self.end]

    def index(self, at: datetime) -> int:
        """The bucket holding ``at`` — the boundaries of the SQL ``CASE`` in ``keeneye.store``."""
        return min(max(bisect.bisect_right(self.edges, at) - 1, 0), self.count - 1)


def pipeline_summary(
    db: ResultsDB,
    pipeline: str,
    *,
    window_seconds: float = 3600,
    buckets: int = 60,
    now: datetime | None = None,
    spec: PipelineSpec | None = None,
    served_version: str | None = None,
    quality: QualityInputs | None = None,
    sample_limit: int = SAMPLE_LIMIT,
    drift_history: int = DRIFT_HISTORY,
) -> dict[str, Any]:
    """The monitoring payload of ``pipeline`` over the last ``window_seconds`` (JSON-ready).

    ``spec`` supplies the SLO reference line and is needed for online quality (with ``quality``);
    ``served_version`` is what this process serves (the database does not know).
    """
    if window_seconds <= 0 or buckets < 1 or sample_limit < 1:
        raise ValueError("window_seconds must be > 0, buckets >= 1 and sample_limit >= 1")
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass a timezone-aware 'now'")
    grid = Buckets(end=now.astimezone(UTC), seconds=float(window_seconds), count=buckets)
    notes: list[str] = []
    traffic = _traffic(db, pipeline, grid)
    latency = _latency(db, pipeline, grid, traffic["series"]["predictions"], sample_limit)
    drift = _drift(db, pipeline, drift_history)
    alerts = _alerts(db, pipeline, grid.end)
    if latency["sampled"]:
        notes.append(
            f"latency percentiles estimated from {latency['n_sampled']} of {latency['n']} predictions "
            f"(at most {_per_bucket_cap(sample_limit, buckets)} per bucket, weighted by the bucket's count)"
        )
    slo_ms = spec.slo.p95_latency_ms if spec is not None else None
    latency["slo_ms"] = slo_ms
    p95 = latency["p95_ms"]
    latency["within_slo"] = None if slo_ms is None or p95 is None else p95 <= slo_ms
    quality_section = _quality(db, pipeline, spec, quality, grid.end)
    if not quality_section["available"] and quality_section["note"] is not None:
        notes.append(quality_section["note"])
    return {
        "pipeline": pipeline,
        "generated_at": grid.end.isoformat(),
        "window": {
            "seconds": grid.seconds,
            "start": grid.start.isoformat(),
            "end": grid.end.isoformat(),
            "buckets": grid.count,
            "bucket_seconds": grid.bucket_seconds,
        },
        "model": {"served_version": served_version},
        "slo": {"p95_latency_ms": slo_ms},
        "traffic": traffic,
        "latency": latency,
        "drift": drift,
        "quality": quality_section,
        "alerts": alerts,
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------------
# traffic and errors
# --------------------------------------------------------------------------------------------------


def _traffic(db: ResultsDB, pipeline: str, grid: Buckets) -> TrafficJson:
    predictions = db.prediction_counts(pipeline, SERVED_VARIANTS, grid.edges)
    errors = db.observation_counts(pipeline, ERROR_STATUSES, grid.edges)
    rejected = errors.get(ObservationStatus.rejected.value, [0] * grid.count)
    failed = errors.get(ObservationStatus.failed.value, [0] * grid.count)
    rate_seconds = min(RATE_NOW_SECONDS, grid.seconds)
    recent = db.count_predictions_between(
        pipeline, SERVED_VARIANTS, grid.end - timedelta(seconds=rate_seconds), grid.end
    )
    n, n_rejected, n_failed = sum(predictions), sum(rejected), sum(failed)
    attempts = n + n_rejected + n_failed
    return {
        "series": {
            "t": [e.isoformat() for e in grid.edges[:-1]],
            "predictions": predictions,
            "rejected": rejected,
            "failed": failed,
        },
        "totals": {"predictions": n, "rejected": n_rejected, "failed": n_failed},
        "rate_now_per_second": int(recent) / rate_seconds,
        "rate_now_seconds": rate_seconds,
        "error_share": (n_rejected + n_failed) / attempts if attempts else None,
    }


# --------------------------------------------------------------------------------------------------
# latency
# --------------------------------------------------------------------------------------------------


def nearest_rank(values: Sequence[float], weights: Sequence[float] | None, q: float) -> float | None:
    """The smallest value whose cumulative weight reaches ``q`` of the total (nearest-rank percentile)."""
    if len(values) == 0:
        return None
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    cumulative = np.cumsum(w[order])
    total = float(cumulative[-1])
    # The tolerance keeps q·total = 95.0 from landing on 94.999… and picking the rank below.
    i = int(np.searchsorted(cumulative, q * total - 1e-9 * total, side="left"))
    return float(v[order][min(i, len(v) - 1)])


def _per_bucket_cap(sample_limit: int, buckets: int) -> int:
    return max(1, sample_limit // buckets)


def _latency(
    db: ResultsDB, pipeline: str, grid: Buckets, counts: Sequence[int], sample_limit: int
) -> LatencyJson:
    total = sum(counts)
    per_bucket: list[list[float]] = [[] for _ in range(grid.count)]
    weights: list[float] = [1.0] * grid.count
    sampled = total > sample_limit
    if not sampled and total:
        rows = db.prediction_latencies(pipeline, SERVED_VARIANTS, grid.start, grid.end, limit=sample_limit)
        for created_at, latency_ms in rows:
            per_bucket[grid.index(created_at)].append(latency_ms)
    elif sampled:
        cap = _per_bucket_cap(sample_limit, grid.count)
        edges = grid.edges
        for i, count in enumerate(counts):
            if not count:
                continue
            newest = db.prediction_latencies(
                pipeline, SERVED_VARIANTS, edges[i], edges[i + 1], limit=cap, newest_first=True
            )
            per_bucket[i] = [latency_ms for _, latency_ms in newest]
            weights[i] = count / len(per_bucket[i]) if per_bucket[i] else 0.0
    values = [v for bucket in per_bucket for v in bucket]
    value_weights = [weights[i] for i, bucket in enumerate(per_bucket) for _ in bucket]
    by = value_weights if sampled else None
    return {
        "p50_ms": nearest_rank(values, by, QUANTILES["p50_ms"]),
        "p95_ms": nearest_rank(values, by, QUANTILES["p95_ms"]),
        "p99_ms": nearest_rank(values, by, QUANTILES["p99_ms"]),
        "n": total,
        "n_sampled": len(values),
        "sampled": sampled,
        "sample_limit": sample_limit,
        "method": "nearest-rank",
        "series": {"p95_ms": [nearest_rank(b, None, 0.95) for b in per_bucket]},
    }


# --------------------------------------------------------------------------------------------------
# drift
# --------------------------------------------------------------------------------------------------


def _drift(db: ResultsDB, pipeline: str, history: int) -> DriftJson:
    # The thresholds that set each feature's ``alarm`` flag when the window closed (monitoring.stats).
    thresholds = {"psi": PSI_ALARM, "ks": KS_ALARM, "ks_p": KS_P_ALARM}
    newest = db.latest_drift_reports(pipeline, 1)
    latest = newest[0] if newest else None
    rows = db.drift_windows(pipeline, history)
    windows: list[DriftWindowJson] = [
        {
            "window_start": r.window_start.isoformat(),
            "window_end": r.window_end.isoformat(),
            "alarm": bool(r.alarm),
            "n": int(r.n),
            "model_version": r.model_version,
        }
        for r in reversed(rows)
    ]
    status = "none" if latest is None else ("alarm" if latest.alarm else "ok")
    return {
        "status": status,
        "thresholds": thresholds,
        "latest": _drift_report(latest) if latest is not None else None,
        "windows": windows,
    }


def _drift_report(row: DriftReportRecord) -> DriftReportJson:
    features: list[JsonObject] = []
    for name, stats in (row.features or {}).items():
        stats = stats if isinstance(stats, Mapping) else {}
        entry: JsonObject = {"name": str(name)}
        for key in FEATURE_FIELDS:
            entry[key] = _scalar(stats.get(key))
        entry["alarm"] = bool(entry["alarm"])
        features.append(entry)
    # Most drifted first (no PSI last): the page's bar chart and table read top-down.
    features.sort(key=_most_drifted)
    embedding: JsonObject = {
        k: _scalar(row.embedding.get(k)) for k in EMBEDDING_FIELDS if k in (row.embedding or {})
    }
    return {
        "id": row.id,
        "model_version": row.model_version,
        "window_start": row.window_start.isoformat(),
        "window_end": row.window_end.isoformat(),
        "n": row.n,
        "alarm": bool(row.alarm),
        "features": features,
        "alarming": [f["name"] for f in features if f["alarm"]],
        "embedding": embedding or None,
    }


def _most_drifted(feature: JsonObject) -> tuple[bool, float, str]:
    psi, name = feature["psi"], feature["name"]
    assert isinstance(psi, int | float | None) and isinstance(name, str)  # _drift_report made them
    return (psi is None, -(psi or 0.0), name)


def _scalar(value: object) -> JsonScalar:
    """JSON-safe scalar: NaN/inf become None (JSON has no NaN), other non-scalars None."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


# --------------------------------------------------------------------------------------------------
# alerts
# --------------------------------------------------------------------------------------------------


def _alerts(db: ResultsDB, pipeline: str, now: datetime) -> list[AlertSummaryJson]:
    out: list[AlertSummaryJson] = []
    for a in db.open_alerts_of_pipeline(pipeline, ALERT_LIMIT):
        annotations = a.annotations or {}
        out.append(
            {
                "id": a.id,
                "rule": a.rule,
                "severity": a.severity,
                "state": a.state,
                "value": _scalar(a.value),
                "summary": str(annotations.get("summary") or annotations.get("description") or a.rule),
                "labels": a.labels,
                "started_at": a.started_at.isoformat(),
                "fired_at": a.fired_at.isoformat() if a.fired_at else None,
                "acked_by": a.acked_by,
                "silenced": a.silenced_until is not None and a.silenced_until > now,
            }
        )
    return out


# --------------------------------------------------------------------------------------------------
# online quality (optional module)
# --------------------------------------------------------------------------------------------------


def _quality(
    db: ResultsDB, pipeline: str, spec: PipelineSpec | None, inputs: QualityInputs | None, now: datetime
) -> QualityJson:
    if spec is None or inputs is None:
        return _unavailable("online quality needs the pipeline spec and its reference metrics")
    try:
        module = importlib.import_module("keeneye.monitoring.quality")
    except ImportError as exc:
        log.info("online quality unavailable: %s", exc)
        return _unavailable("online quality is not available in this installation")
    try:
        windows = module.online_quality(
            db,
            pipeline,
            spec=spec,
            window_seconds=inputs.window_seconds,
            reference_for=inputs.reference_for,
            min_feedback=inputs.min_feedback,
            drop=inputs.drop,
            now=now,
        )
    except KeeneyeError as exc:
        log.warning("online quality of %s failed: %s", pipeline, exc.message)
        return _unavailable(f"online quality could not be computed: {exc.message}")
    return {
        "available": True,
        "note": None if windows else "no feedback in the quality window yet",
        "window_seconds": inputs.window_seconds,
        "windows": [_jsonable(w) for w in windows],
    }


def _unavailable(note: str) -> QualityJson:
    return {"available": False, "note": note, "window_seconds": None, "windows": []}


def _jsonable(value: object) -> JsonValue:
    """A QualityWindow (its ``to_dict``, a dataclass or a pydantic model) as plain JSON values."""
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, np.generic):
        return _scalar(value.item())
    return _scalar(value)


__all__ = ["SAMPLE_LIMIT", "Buckets", "QualityInputs", "nearest_rank", "pipeline_summary"]
