"""The line dashboard's figures (``GET /v1/lines``), from what the edge runners stored.

Per line and camera, over a window (default 60 minutes):

* **counts** of parts by PLC result — OK (1), DEFECT (2), fail-safe DEFECT (3) — in total and per SKU,
  and the **defect rate** = (DEFECT + fail-safe) / parts: every part the line rejected;
* **latency** (trigger → decision) p50 / p95 / max over the camera's newest ``latency_sample`` parts in
  the window, against the pipeline's deadline, and the same parts as the latency chart's series;
* **throughput**: parts per second over the last ``rate_seconds`` of trigger times before the newest
  part (so a finished replay still shows the rate it ran at; ``last_part_at`` says when that was);
* the **PLC link** as the sink reported it when the newest part was stored (``state`` ``up`` / ``down``;
  ``stopped`` when the runner stopped and closed it; ``unknown`` for parts of a runner that did not
  record it), and the last acknowledged write;
* the newest DEFECT / fail-safe parts with their image URL and the model's instances (outlines).

Everything comes from :class:`keeneye.store.ResultsDB` queries bounded by the window and a limit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from keeneye.domain import JsonObject
from keeneye.store import ResultsDB
from keeneye.store.lines import LineCount, LinePart

RESULT_NAMES = {1: "ok", 2: "defect", 3: "failsafe"}


@dataclass(frozen=True)
class LineQuery:
    """What to show: the pipeline, the window, how many defects, which line (all when None)."""

    pipeline: str
    minutes: int = 60
    defects: int = 12
    line: str | None = None
    latency_sample: int = 2000
    series_points: int = 300
    rate_seconds: float = 10.0


def _iso(ts: float | datetime | None) -> str | None:
    if ts is None:
        return None
    if isinstance(ts, datetime):
        return ts.astimezone(UTC).isoformat()
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _tally(counts: list[LineCount]) -> JsonObject:
    ok = sum(c.count for c in counts if c.result_code == 1)
    defect = sum(c.count for c in counts if c.result_code == 2)
    failsafe = sum(c.count for c in counts if c.result_code == 3)
    parts = ok + defect + failsafe
    return {
        "parts": parts,
        "ok": ok,
        "defect": defect,
        "failsafe": failsafe,
        "defect_rate": round((defect + failsafe) / parts, 6) if parts else None,
    }


def latency_figures(latencies: list[float], deadline_ms: float) -> JsonObject:
    """p50 / p95 / max of ``latencies`` (ms) and how they stand against the deadline."""
    if not latencies:
        return {
            "p50": None,
            "p95": None,
            "max": None,
            "samples": 0,
            "over_deadline": 0,
            "within_deadline": None,
        }
    lat = np.asarray(latencies, dtype=float)
    p95 = float(np.percentile(lat, 95))
    return {
        "p50": round(float(np.percentile(lat, 50)), 2),
        "p95": round(p95, 2),
        "max": round(float(lat.max()), 2),
        "samples": int(lat.size),
        "over_deadline": int((lat > deadline_ms).sum()),
        "within_deadline": p95 <= deadline_ms,
    }


def throughput(parts: list[LinePart], rate_seconds: float) -> float | None:
    """Parts per second over the ``rate_seconds`` of trigger times up to the newest part."""
    times = sorted(p.triggered_at for p in parts if p.triggered_at is not None)
    if len(times) < 2:
        return None
    newest = times[-1]
    recent = [t for t in times if t >= newest - rate_seconds]
    if len(recent) < 2 or recent[-1] <= recent[0]:
        return None
    return round((len(recent) - 1) / (recent[-1] - recent[0]), 3)


def plc_link(parts: list[LinePart], last_ack: float | None, now: datetime) -> JsonObject:
    """The PLC link as stored with the newest part that recorded it."""
    newest = next((p for p in parts if p.plc is not None), None)
    link: dict[str, Any] = dict(newest.plc) if newest is not None and newest.plc is not None else {}
    acked = link.get("last_ack_at")
    candidates = [t for t in (acked, last_ack) if isinstance(t, int | float)]
    last = max(candidates) if candidates else None
    connected = link.get("connected")
    if link.get("stopped") is True:
        state = "stopped"  # the runner closed the link itself when it stopped (end of a replay, Ctrl-C)
    elif isinstance(connected, bool):
        state = "up" if connected else "down"
    else:
        state = "unknown"
    as_of = newest.created_at if newest is not None else None
    return {
        "state": state,
        "sink": link.get("sink"),
        "last_ack_at": _iso(last),
        "seconds_since_ack": None if last is None else round(now.timestamp() - last, 1),
        "consecutive_failures": link.get("consecutive_failures"),
        "last_error": link.get("last_error") or "",
        "as_of": _iso(as_of),
    }


def _defect(observation: Any, prediction: Any) -> JsonObject:
    meta = observation.metadata
    result = prediction.result if prediction is not None else {}
    instances = [
        {k: i[k] for k in ("class", "label", "score", "box", "polygon", "area_px") if k in i}
        for i in result.get("instances", [])
        if isinstance(i, dict)
    ]
    image = result.get("image") if isinstance(result.get("image"), dict) else None
    fmt = (image or {}).get("format") or observation.content_type.removeprefix("image/")
    return {
        "observation_id": observation.id,
        "at": _iso(meta.get("triggered_at") if isinstance(meta.get("triggered_at"), int | float) else None)
        or _iso(observation.created_at),
        "line": meta.get("line"),
        "camera": meta.get("camera"),
        "sku": meta.get("sku") or "",
        "sequence": meta.get("sequence"),
        "result_code": meta.get("result_code"),
        "failsafe": meta.get("result_code") == 3,
        "reason": observation.reason,
        "class": meta.get("class_name") or next((i["class"] for i in instances), None),
        "confidence": meta.get("confidence", prediction.confidence if prediction is not None else None),
        "latency_ms": meta.get("latency_ms"),
        "sink": meta.get("sink"),
        "image_url": f"/v1/observations/{observation.id}/image" if observation.object_key else None,
        "format": fmt,
        "image": None if image is None else {"width": image.get("width"), "height": image.get("height")},
        "instances": instances,
    }


def lines_summary(
    db: ResultsDB, query: LineQuery, *, deadline_ms: float, now: datetime | None = None
) -> dict[str, Any]:
    """The whole ``GET /v1/lines`` document (module docstring)."""
    now = now or datetime.now(UTC)
    since = now - timedelta(minutes=query.minutes)
    counts = [c for c in db.line_counts(query.pipeline, since) if query.line in (None, c.line)]
    by_camera: dict[tuple[str, str], list[LineCount]] = defaultdict(list)
    for c in counts:
        by_camera[(c.line, c.camera)].append(c)
    lines: dict[str, list[Any]] = defaultdict(list)
    for (line, camera), cam_counts in sorted(by_camera.items()):
        parts = db.recent_line_parts(query.pipeline, line, camera, since, query.latency_sample)
        latencies = [p.latency_ms for p in parts if p.latency_ms is not None]
        by_sku: dict[str, list[LineCount]] = defaultdict(list)
        for c in cam_counts:
            by_sku[c.sku].append(c)
        series = sorted(
            (
                p
                for p in parts[: query.series_points]
                if p.triggered_at is not None and p.latency_ms is not None
            ),
            key=lambda p: p.triggered_at or 0.0,
        )
        newest = max((p.triggered_at for p in parts if p.triggered_at is not None), default=None)
        lines[line].append(
            {
                "camera": camera,
                **_tally(cam_counts),
                "skus": [{"sku": sku, **_tally(cs)} for sku, cs in sorted(by_sku.items())],
                "throughput_fps": throughput(parts, query.rate_seconds),
                "last_part_at": _iso(newest),
                "last_sequence": next((p.sequence for p in parts), None),
                "latency_ms": latency_figures(latencies, deadline_ms),
                "plc": plc_link(parts, db.last_line_ack(query.pipeline, line, camera, since), now),
                "series": {
                    "t": [round(p.triggered_at or 0.0, 3) for p in series],
                    "latency_ms": [round(p.latency_ms or 0.0, 2) for p in series],
                    "result": [p.result_code for p in series],
                },
            }
        )
    defects = (
        db.recent_line_defects(query.pipeline, since, query.defects, line=query.line) if query.defects else []
    )
    return {
        "pipeline": query.pipeline,
        "window_minutes": query.minutes,
        "deadline_ms": deadline_ms,
        "generated_at": now.isoformat(),
        "totals": _tally(counts),
        "lines": [{"line": name, "cameras": cams} for name, cams in sorted(lines.items())],
        "defects": [_defect(o, p) for o, p in defects],
    }


__all__ = ["RESULT_NAMES", "LineQuery", "latency_figures", "lines_summary", "plc_link", "throughput"]
