"""The line dashboard's data (``GET /v1/lines``) on events the edge recorder really stored.

Events go the runner's way: a :class:`Journal` gets the decided events and the PLC outcomes, the
:class:`EventRecorder` copies them into a real results DB (SQLite; PostgreSQL under ``integration``)
and the frames into a file object store. The figures are then checked value by value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from keeneye.domain import AnswerJson
from keeneye.edge import DecidedEvent, EventRecorder, Journal, RecorderLabels
from keeneye.monitoring.lines import LineQuery, lines_summary
from keeneye.settings import EdgeSettings, Settings
from keeneye.sinks import FailReason, PlcDecision, ResultCode, SinkOutcome, SinkState, SinkStatus
from keeneye.store import ResultsDB, open_object_store, open_results_db
from tests.serving_support import live_server

PIPELINE = "line-inspection"
DEADLINE = 348.0
W, H = 64, 48


@dataclass(frozen=True)
class Part:
    code: int  # 1 OK, 2 DEFECT, 3 fail-safe
    sku: str
    latency_ms: float
    acked: bool = True


def frame(i: int, code: int) -> bytes:
    bgr = np.full((H, W, 3), 40 + i % 50, dtype=np.uint8)
    if code == 2:
        bgr[10:16, 20:26, 2] = 255
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    return png.tobytes()


def answer(code: int, score: float) -> AnswerJson:
    doc: AnswerJson = {
        "task": "segment",
        "instances": [],
        "count": 0,
        "confidence": score,
        "decision": "OK",
        "image": {"width": W, "height": H, "bands": ["r", "g", "b"], "format": "png", "quality": {}},
    }
    if code == 2:
        doc["instances"] = [
            {
                "class": "scratch",
                "label": "Scratch",
                "score": score,
                "box": [20.0, 10.0, 26.0, 16.0],
                "area_px": 36.0,
                "polygon": [[20, 10], [25, 10], [25, 15], [20, 15]],
            }
        ]
        doc["count"] = 1
        doc["decision"] = "DEFECT"
    return doc


def record(
    settings: Settings,
    db: ResultsDB,
    line: str,
    camera: str,
    parts: list[Part],
    *,
    start: float,
    step: float,
    link: SinkState | None,
) -> list[DecidedEvent]:
    """Journal ``parts`` (trigger times ``start + i * step``) with their PLC outcomes and store them."""
    journal = Journal(settings.home / "edge", line, camera)
    events = []
    for i, p in enumerate(parts):
        data = frame(i, p.code)
        digest = f"{line}-{camera}-{i:04d}".ljust(64, "0")
        event = DecidedEvent(
            epoch=journal.epoch,
            sequence=i + 1,
            line=line,
            camera=camera,
            sku=p.sku,
            batch="B1",
            frame=f"f{i}.png",
            triggered_at=start + i * step,
            latency_ms=p.latency_ms,
            result=p.code,
            decision="OK" if p.code == 1 else "DEFECT",
            class_id=1 if p.code == 2 else 0,
            class_name="scratch" if p.code == 2 else "",
            confidence=0.91 if p.code == 2 else (0.0 if p.code == 3 else 0.97),
            content_hash=digest,
            size_bytes=len(data),
            image_format="png",
            model_name=PIPELINE,
            model_version="3",
            task="segment",
            reason="deadline_missed" if p.code == 3 else None,
            detail="no answer within 348 ms" if p.code == 3 else "",
            answer=None if p.code == 3 else answer(p.code, 0.91 if p.code == 2 else 0.03),
        )
        journal.append(event)
        journal.spool_image(digest, data)
        decision = PlcDecision(event.sequence, ResultCode(p.code), line, camera, event.triggered_at)
        at = event.triggered_at + 0.01
        if p.acked:
            journal.record_outcome(SinkOutcome(decision, SinkStatus.acked, at))
        else:
            journal.record_outcome(SinkOutcome(decision, SinkStatus.failed, at, FailReason.plc_unreachable))
        events.append(event)
    recorder = EventRecorder(
        journal,
        db,
        open_object_store(settings),
        RecorderLabels(PIPELINE, line, camera),
        EdgeSettings(),
        link=None if link is None else (lambda: link),
    )
    assert recorder.flush(final=True) == len(parts)
    journal.close()
    return events


# 30 parts of L1/cam-1 at 10 per second: every tenth from the fourth a DEFECT, part 18 a fail-safe at 334
# ms, SKU A-100 for the first 20 and B-7 after; the PLC went away for the last three.
CAM1 = [
    Part(
        code=3 if i == 17 else (2 if i % 10 == 3 else 1),
        sku="A-100" if i < 20 else "B-7",
        latency_ms=334.0 if i == 17 else 20.0 + i,
        acked=i < 27,
    )
    for i in range(30)
]
CAM9 = [Part(1, "", 12.0 + i) for i in range(5)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def seeded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, ResultsDB, float]]:
    if request.param == "sqlite":
        settings = Settings(home=tmp_path / "home")
    else:
        url = request.getfixturevalue("postgres_url")
        settings = Settings(home=tmp_path / "home", database_url=url)
    db = open_results_db(settings)
    start = time.time() - 60
    down = SinkState(
        "modbus", "modbus://plc", False, start + 26 * 0.1 + 0.01, 3, 27, 3, 0, 40, "connection refused"
    )
    record(settings, db, "L1", "cam-1", CAM1, start=start, step=0.1, link=down)
    record(settings, db, "L2", "cam-9", CAM9, start=start + 10, step=0.5, link=None)
    yield settings, db, start


def test_the_summary_counts_rates_latency_and_plc_of_each_camera(
    seeded: tuple[Settings, ResultsDB, float],
) -> None:
    _, db, start = seeded
    doc = lines_summary(db, LineQuery(PIPELINE), deadline_ms=DEADLINE)

    assert doc["totals"] == {
        "parts": 35,
        "ok": 31,
        "defect": 3,
        "failsafe": 1,
        "defect_rate": round(4 / 35, 6),
    }
    assert [line["line"] for line in doc["lines"]] == ["L1", "L2"]
    [cam1] = doc["lines"][0]["cameras"]
    assert cam1["camera"] == "cam-1"
    assert (cam1["parts"], cam1["ok"], cam1["defect"], cam1["failsafe"]) == (30, 26, 3, 1)
    assert cam1["defect_rate"] == round(4 / 30, 6)
    assert cam1["skus"] == [
        {"sku": "A-100", "parts": 20, "ok": 17, "defect": 2, "failsafe": 1, "defect_rate": 0.15},
        {"sku": "B-7", "parts": 10, "ok": 9, "defect": 1, "failsafe": 0, "defect_rate": 0.1},
    ]
    assert cam1["throughput_fps"] == 10.0  # 29 gaps of 0.1 s
    assert cam1["last_sequence"] == 30
    # latencies 20…49 ms with part 18's 37 replaced by 334: p50 of the 30 = 34.5, p95 = 48.55 (linear)
    assert cam1["latency_ms"] == {
        "p50": 34.5, "p95": 48.55, "max": 334.0, "samples": 30, "over_deadline": 0, "within_deadline": True,
    }  # fmt: skip
    plc = cam1["plc"]
    assert (plc["state"], plc["sink"], plc["consecutive_failures"], plc["last_error"]) == (
        "down", "modbus", 3, "connection refused",
    )  # fmt: skip
    assert datetime.fromisoformat(plc["last_ack_at"]).timestamp() == pytest.approx(start + 2.61, abs=1e-3)
    assert cam1["series"]["latency_ms"][:3] == [20.0, 21.0, 22.0]
    assert cam1["series"]["result"][17] == 3
    assert len(cam1["series"]["t"]) == 30

    [cam9] = doc["lines"][1]["cameras"]
    assert (cam9["parts"], cam9["ok"], cam9["defect_rate"], cam9["throughput_fps"]) == (5, 5, 0.0, 2.0)
    assert cam9["plc"]["state"] == "unknown"  # stored without the sink's state
    acked = datetime.fromisoformat(cam9["plc"]["last_ack_at"]).timestamp()
    assert acked == pytest.approx(start + 10 + 4 * 0.5 + 0.01, abs=1e-3)  # from the parts' own acks
    assert cam9["skus"] == [{"sku": "", "parts": 5, "ok": 5, "defect": 0, "failsafe": 0, "defect_rate": 0.0}]

    # newest first: parts 24, 18 (fail-safe), 14, 4 of cam-1
    defects = doc["defects"]
    assert [(d["camera"], d["sequence"], d["result_code"]) for d in defects] == [
        ("cam-1", 24, 2), ("cam-1", 18, 3), ("cam-1", 14, 2), ("cam-1", 4, 2),
    ]  # fmt: skip
    top = defects[0]
    assert (top["class"], top["confidence"], top["sku"], top["sink"]) == ("scratch", 0.91, "B-7", "acked")
    assert top["image"] == {"width": W, "height": H}
    assert top["instances"][0]["polygon"] == [[20, 10], [25, 10], [25, 15], [20, 15]]
    assert top["image_url"] == f"/v1/observations/{top['observation_id']}/image"
    failsafe = defects[1]
    assert (failsafe["failsafe"], failsafe["reason"], failsafe["instances"]) == (True, "deadline_missed", [])


def test_the_window_line_filter_and_defect_limit(seeded: tuple[Settings, ResultsDB, float]) -> None:
    _, db, _ = seeded
    later = datetime.now(UTC) + timedelta(minutes=90)
    assert lines_summary(db, LineQuery(PIPELINE, minutes=60), deadline_ms=DEADLINE, now=later)["lines"] == []
    assert (
        lines_summary(db, LineQuery(PIPELINE, minutes=120), deadline_ms=DEADLINE, now=later)["totals"][
            "parts"
        ]
        == 35
    )
    only = lines_summary(db, LineQuery(PIPELINE, line="L2", defects=2), deadline_ms=DEADLINE)
    assert [line["line"] for line in only["lines"]] == ["L2"]
    assert only["defects"] == []
    two = lines_summary(db, LineQuery(PIPELINE, defects=2), deadline_ms=DEADLINE)
    assert [d["sequence"] for d in two["defects"]] == [24, 18]


def test_the_api_serves_it_and_refuses_bad_input(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    db = open_results_db(settings)
    start = time.time() - 30
    record(settings, db, "L1", "cam-1", CAM1[:10], start=start, step=0.1, link=None)
    with live_server(settings) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        body = client.get("/v1/lines", params={"minutes": 15}).json()
        assert body["deadline_ms"] == DEADLINE and body["window_minutes"] == 15
        assert body["totals"]["parts"] == 10 and body["totals"]["defect"] == 1
        [defect] = body["defects"]
        image = client.get(defect["image_url"])
        assert image.status_code == 200 and image.content == frame(3, 2)

        not_line = client.get("/v1/lines", params={"pipeline": "species-id"})
        assert not_line.status_code == 400
        assert "line-inspection" in not_line.json()["fix"]
        assert client.get("/v1/lines", params={"pipeline": "nope"}).status_code == 404
        assert client.get("/v1/lines", params={"minutes": 0}).status_code == 422
        page = client.get("/lines")
        assert page.status_code == 200 and 'data-deadline="348' in page.text
