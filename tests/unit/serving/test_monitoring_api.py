"""The monitoring summary (SQLite and PostgreSQL) and its API: exact counts, percentiles, drift, alerts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from keeneye.monitoring.summary import QualityInputs, nearest_rank, pipeline_summary
from keeneye.pipelines import PipelineCatalog, PipelineSpec
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_results_db
from keeneye.store.schema import DriftReportRow, FeedbackRow, ObservationRow, PredictionRow
from tests.serving_support import LiveServer, fast_registry_store, live_server

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
PIPELINE = "species-id"


# ------------------------------------------------------------------------------------------------ seeding


def seed_predictions(
    db: ResultsDB,
    at: datetime,
    latencies: Sequence[float],
    *,
    pipeline: str = PIPELINE,
    variant: str = "champion",
    version: str = "1",
    results: Sequence[dict[str, Any]] | None = None,
) -> list[str]:
    """One ``done`` observation and one prediction per latency, all created at ``at``; their ids."""
    ids = []
    with db.session() as s:
        for i, latency in enumerate(latencies):
            obs_id = uuid.uuid4().hex
            ids.append(obs_id)
            s.add(_observation(obs_id, pipeline, "done", at))
            s.flush()
            s.add(
                PredictionRow(
                    observation_id=obs_id,
                    pipeline=pipeline,
                    model_name=pipeline,
                    model_version=version,
                    variant=variant,
                    task="classify",
                    result=results[i] if results is not None else {},
                    decision=None,
                    confidence=0.9,
                    latency_ms=float(latency),
                    timings={},
                    created_at=at,
                )
            )
    return ids


def seed_observations(db: ResultsDB, at: datetime, status: str, n: int, *, pipeline: str = PIPELINE) -> None:
    with db.session() as s:
        for _ in range(n):
            s.add(_observation(uuid.uuid4().hex, pipeline, status, at))


def _observation(obs_id: str, pipeline: str, status: str, at: datetime) -> ObservationRow:
    return ObservationRow(
        id=obs_id,
        pipeline=pipeline,
        status=status,
        reason="undecodable image" if status == "rejected" else None,
        content_hash=obs_id * 2,
        object_key=None,
        content_type="image/jpeg",
        size_bytes=100,
        metadata_={},
        source="api",
        attempts=1,
        created_at=at,
        updated_at=at,
    )


DRIFT_FEATURES: dict[str, Any] = {
    "contrast": {"psi": 0.05, "ks": 0.03, "ks_p": 0.6, "alarm": False},
    "brightness": {
        "psi": 0.35,
        "ks": 0.21,
        "ks_p": 0.001,
        "alarm": True,
        "n": 480,
        "reference": {"quantiles": [0.1, 0.5, 0.9]},
        "current": {"quantiles": [0.3, 0.7, 0.95], "sample": [0.5] * 50},
    },
    "ndvi_mean": {"ks": 0.02, "ks_p": 0.9, "alarm": False},  # no PSI: listed last
}


def seed_drift(
    db: ResultsDB,
    end: datetime,
    *,
    alarm: bool,
    features: dict[str, Any] | None = None,
    pipeline: str = PIPELINE,
) -> None:
    with db.session() as s:
        s.add(
            DriftReportRow(
                pipeline=pipeline,
                model_version="1",
                window_start=end - timedelta(minutes=30),
                window_end=end,
                n=500,
                alarm=alarm,
                features=features if features is not None else DRIFT_FEATURES,
                embedding={"source": "pca", "dim": 16, "mmd": 0.08, "p_value": 0.01, "alarm": True},
                source="test:1",
                created_at=end,
            )
        )


def seed_alerts(db: ResultsDB, pipeline: str = PIPELINE) -> None:
    """One firing alert for ``pipeline``, one resolved for it, one firing for another pipeline."""
    db.upsert_alert(
        "LatencyHigh",
        f"fp-latency-{pipeline}",
        severity="critical",
        state="firing",
        labels={"pipeline": pipeline},
        annotations={"summary": f"{pipeline}: p95 above the SLO"},
        value=612.5,
    )
    drift = f"fp-drift-{pipeline}"
    db.upsert_alert("DriftAlarm", drift, severity="warning", state="firing", labels={"pipeline": pipeline})
    db.upsert_alert("DriftAlarm", drift, severity="warning", state="resolved")
    other = {"pipeline": "line-inspection"}
    db.upsert_alert("LatencyHigh", "fp-other", severity="critical", state="firing", labels=other)


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultsDB]:
    """The same queries on both backends: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    results = ResultsDB(url)
    results.ensure_schema()
    yield results
    results.close()


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return PipelineCatalog(Settings()).get(PIPELINE)


def bucket_mid(i: int, *, window: float = 3600, buckets: int = 60) -> datetime:
    """The middle of bucket ``i`` of the window ending at NOW."""
    width = window / buckets
    return NOW - timedelta(seconds=window) + timedelta(seconds=width * i + width / 2)


# ------------------------------------------------------------------------------------------------ summary


def test_traffic_latency_drift_and_alerts_are_exact(db: ResultsDB, spec: PipelineSpec) -> None:
    seed_predictions(db, bucket_mid(10), range(10, 201, 10))  # 20 predictions: 10, 20, … 200 ms
    seed_predictions(db, bucket_mid(59), range(1, 81))  # 80 predictions: 1 … 80 ms
    seed_predictions(db, bucket_mid(59), [9999], variant="shadow")  # never served: not traffic
    seed_predictions(db, bucket_mid(59), [5000], pipeline="line-inspection")
    seed_predictions(db, NOW - timedelta(seconds=3700), [7000])  # before the window
    seed_observations(db, bucket_mid(5), "rejected", 3)
    seed_observations(db, bucket_mid(59), "failed", 2)
    seed_observations(db, NOW - timedelta(hours=2), "rejected", 4)  # before the window
    seed_observations(db, bucket_mid(5), "rejected", 6, pipeline="line-inspection")
    seed_observations(db, bucket_mid(6), "queued", 1)  # not an error
    seed_drift(db, NOW - timedelta(hours=2), alarm=False, features={"contrast": {"psi": 0.01}})
    seed_drift(db, NOW - timedelta(hours=1), alarm=False)
    seed_drift(db, NOW - timedelta(minutes=5), alarm=True)
    seed_drift(db, NOW, alarm=False, pipeline="line-inspection")
    seed_alerts(db)

    out = pipeline_summary(db, PIPELINE, now=NOW, spec=spec, served_version="3")

    assert out["window"]["start"] == (NOW - timedelta(hours=1)).isoformat()
    assert out["window"]["bucket_seconds"] == 60
    series = out["traffic"]["series"]
    assert len(series["t"]) == 60 and series["t"][10] == (NOW - timedelta(minutes=50)).isoformat()
    assert series["predictions"] == [20 if i == 10 else 80 if i == 59 else 0 for i in range(60)]
    assert series["rejected"] == [3 if i == 5 else 0 for i in range(60)]
    assert series["failed"] == [2 if i == 59 else 0 for i in range(60)]
    assert out["traffic"]["totals"] == {"predictions": 100, "rejected": 3, "failed": 2}
    assert out["traffic"]["rate_now_per_second"] == pytest.approx(80 / 60)
    assert out["traffic"]["error_share"] == pytest.approx(5 / 105)

    latency = out["latency"]
    # Nearest rank over {1…80} ∪ {10, 20, … 200}: the 50th, 95th and 99th smallest of 100 values.
    assert (latency["p50_ms"], latency["p95_ms"], latency["p99_ms"]) == (46.0, 150.0, 190.0)
    assert latency["n"] == latency["n_sampled"] == 100 and latency["sampled"] is False
    assert latency["series"]["p95_ms"] == [190.0 if i == 10 else 76.0 if i == 59 else None for i in range(60)]
    assert latency["slo_ms"] == 500.0 and latency["within_slo"] is True
    assert out["slo"] == {"p95_latency_ms": 500.0}
    assert out["model"] == {"served_version": "3"}

    drift = out["drift"]
    assert drift["status"] == "alarm"
    assert drift["thresholds"] == {"psi": 0.2, "ks": 0.1, "ks_p": 0.05}
    latest = drift["latest"]
    assert latest["window_end"] == (NOW - timedelta(minutes=5)).isoformat() and latest["n"] == 500
    assert [f["name"] for f in latest["features"]] == ["brightness", "contrast", "ndvi_mean"]
    assert latest["features"][0] == {
        "name": "brightness",
        "psi": 0.35,
        "ks": 0.21,
        "ks_p": 0.001,
        "alarm": True,
        "n": 480,
    }
    assert latest["features"][2]["psi"] is None
    assert latest["alarming"] == ["brightness"]
    assert latest["embedding"] == {"source": "pca", "dim": 16, "mmd": 0.08, "p_value": 0.01, "alarm": True}
    assert [w["alarm"] for w in drift["windows"]] == [False, False, True]  # oldest first, this pipeline only

    assert [(a["rule"], a["severity"], a["state"]) for a in out["alerts"]] == [
        ("LatencyHigh", "critical", "firing")
    ]
    alert = out["alerts"][0]
    assert alert["value"] == 612.5 and alert["summary"] == "species-id: p95 above the SLO"
    assert alert["labels"] == {"pipeline": PIPELINE} and alert["acked_by"] is None


def test_an_empty_pipeline_gives_empty_series_not_an_error(db: ResultsDB, spec: PipelineSpec) -> None:
    seed_predictions(db, bucket_mid(30), [10, 20], pipeline="line-inspection")
    out = pipeline_summary(db, PIPELINE, now=NOW, spec=spec)
    assert out["traffic"]["series"]["predictions"] == [0] * 60
    assert out["traffic"]["series"]["rejected"] == out["traffic"]["series"]["failed"] == [0] * 60
    assert out["traffic"]["totals"] == {"predictions": 0, "rejected": 0, "failed": 0}
    assert out["traffic"]["error_share"] is None and out["traffic"]["rate_now_per_second"] == 0
    assert out["latency"]["p95_ms"] is None and out["latency"]["within_slo"] is None
    assert out["latency"]["series"]["p95_ms"] == [None] * 60
    assert out["drift"] == {
        "status": "none",
        "thresholds": {"psi": 0.2, "ks": 0.1, "ks_p": 0.05},
        "latest": None,
        "windows": [],
    }
    assert out["alerts"] == [] and out["model"] == {"served_version": None}


def test_large_windows_are_sampled_per_bucket_and_weighted_by_count(db: ResultsDB) -> None:
    # 4 buckets of 60 s, at most 8 rows read → 2 per bucket. Bucket 0 has 2 fast predictions,
    # bucket 3 has 30 slow ones: only weighting by count makes the slow ones the median.
    seed_predictions(db, bucket_mid(0, window=240, buckets=4), [5, 5])
    seed_predictions(db, bucket_mid(3, window=240, buckets=4), [100] * 30)
    out = pipeline_summary(db, PIPELINE, window_seconds=240, buckets=4, now=NOW, sample_limit=8)
    latency = out["latency"]
    assert latency["sampled"] is True and latency["n"] == 32 and latency["n_sampled"] == 4
    assert latency["p50_ms"] == 100.0  # an unweighted median of the sample [5, 5, 100, 100] would say 5
    assert latency["series"]["p95_ms"] == [5.0, None, None, 100.0]
    assert out["traffic"]["series"]["predictions"] == [2, 0, 0, 30]
    assert any("estimated from 4 of 32 predictions" in n for n in out["notes"])
    assert out["slo"] == {"p95_latency_ms": None} and out["latency"]["within_slo"] is None


def test_online_quality_is_summarised_against_the_versions_test_metrics(
    db: ResultsDB, spec: PipelineSpec
) -> None:
    said = ["salmo_trutta", "salmo_trutta", "esox_lucius", "esox_lucius"]
    truth = ["salmo_trutta", "esox_lucius", "esox_lucius", "esox_lucius"]
    ids = seed_predictions(
        db, NOW - timedelta(hours=2), [10] * 4, results=[{"predicted_class": c} for c in said]
    )
    with db.session() as s:
        for obs_id, label in zip(ids, truth, strict=True):
            s.add(
                FeedbackRow(
                    observation_id=obs_id,
                    label={"class": label},
                    source="api",
                    author="qa",
                    created_at=NOW - timedelta(hours=1),
                    pipeline=PIPELINE,
                )
            )
    asked: list[str] = []

    def reference_for(version: str) -> dict[str, float]:
        asked.append(version)
        return {"accuracy": 0.95}

    quality = QualityInputs(reference_for=reference_for, window_seconds=86400, min_feedback=4, drop=0.1)
    out = pipeline_summary(db, PIPELINE, now=NOW, spec=spec, quality=quality)["quality"]
    assert out["available"] is True and out["note"] is None and out["window_seconds"] == 86400
    assert asked == ["1"]
    [window] = out["windows"]
    assert (window["model_version"], window["variant"], window["n"]) == ("1", "champion", 4)
    assert window["metrics"]["accuracy"] == pytest.approx(0.75)
    assert window["reference"] == {"accuracy": 0.95}
    assert window["drop"] is True  # 0.75 is 21 % below 0.95, more than the 10 % allowed


def test_quality_without_a_spec_is_left_out_with_a_note(db: ResultsDB) -> None:
    out = pipeline_summary(db, PIPELINE, now=NOW)
    assert out["quality"] == {
        "available": False,
        "note": "online quality needs the pipeline spec and its reference metrics",
        "window_seconds": None,
        "windows": [],
    }
    assert out["quality"]["note"] in out["notes"]


@pytest.mark.parametrize(
    ("values", "weights", "q", "expected"),
    [
        ([], None, 0.95, None),
        ([7.0], None, 0.5, 7.0),
        ([float(v) for v in range(1, 101)], None, 0.95, 95.0),
        ([float(v) for v in range(1, 101)], None, 0.99, 99.0),
        ([float(v) for v in range(1, 21)], None, 0.95, 19.0),
        ([3.0, 1.0, 2.0], None, 0.5, 2.0),
        ([1.0, 2.0], [3.0, 1.0], 0.5, 1.0),
        ([1.0, 2.0], [1.0, 3.0], 0.5, 2.0),
    ],
)
def test_nearest_rank(
    values: list[float], weights: list[float] | None, q: float, expected: float | None
) -> None:
    assert nearest_rank(values, weights, q) == expected


def test_naive_now_and_bad_sizes_are_refused(db: ResultsDB) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        pipeline_summary(db, PIPELINE, now=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="window_seconds must be > 0"):
        pipeline_summary(db, PIPELINE, window_seconds=0)


# ------------------------------------------------------------------------------------------------ HTTP


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, ResultsDB]]:
    tmp = tmp_path_factory.mktemp("monitoring")
    settings = Settings(home=tmp / "home")
    fast_registry_store(settings)
    db = open_results_db(settings)
    now = datetime.now(UTC)
    seed_predictions(db, now - timedelta(seconds=90), range(10, 101, 10))  # 10 predictions, 10 … 100 ms
    seed_observations(db, now - timedelta(seconds=90), "rejected", 1)
    seed_drift(db, now - timedelta(minutes=2), alarm=True)
    seed_alerts(db)
    with live_server(settings) as server:
        yield server, db


def test_api_returns_the_summary_of_the_live_database(served: tuple[LiveServer, ResultsDB]) -> None:
    server, _ = served
    r = httpx.get(f"{server.url}/v1/pipelines/{PIPELINE}/monitoring")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pipeline"] == PIPELINE and body["window"]["seconds"] == 3600
    assert body["traffic"]["totals"] == {"predictions": 10, "rejected": 1, "failed": 0}
    assert body["traffic"]["series"]["predictions"][58] == 10  # 90 s ago: the last bucket but one
    assert (body["latency"]["p50_ms"], body["latency"]["p95_ms"], body["latency"]["p99_ms"]) == (
        50.0,
        100.0,
        100.0,
    )
    assert body["latency"]["slo_ms"] == 500.0 and body["latency"]["within_slo"] is True
    assert body["model"] == {"served_version": None}  # nothing registered in this home
    assert body["drift"]["latest"]["alarming"] == ["brightness"]
    assert [a["rule"] for a in body["alerts"]] == ["LatencyHigh"]
    assert body["quality"] == {
        "available": True,
        "note": "no feedback in the quality window yet",
        "window_seconds": 86400.0,
        "windows": [],
    }


def test_api_window_changes_the_bucket_width(served: tuple[LiveServer, ResultsDB]) -> None:
    server, _ = served
    body = httpx.get(f"{server.url}/v1/pipelines/{PIPELINE}/monitoring", params={"window": 600}).json()
    assert body["window"]["bucket_seconds"] == 10 and len(body["traffic"]["series"]["t"]) == 60
    assert body["traffic"]["totals"]["predictions"] == 10


def test_api_empty_pipeline_and_refusals(served: tuple[LiveServer, ResultsDB]) -> None:
    server, _ = served
    empty = httpx.get(f"{server.url}/v1/pipelines/crop-health/monitoring")
    assert empty.status_code == 200
    assert empty.json()["traffic"]["series"]["predictions"] == [0] * 60
    assert empty.json()["drift"]["latest"] is None and empty.json()["alerts"] == []

    unknown = httpx.get(f"{server.url}/v1/pipelines/no-such/monitoring")
    assert unknown.status_code == 404
    assert (
        unknown.json()["reason"] == "not_found" and "unknown pipeline 'no-such'" in unknown.json()["detail"]
    )

    too_short = httpx.get(f"{server.url}/v1/pipelines/{PIPELINE}/monitoring", params={"window": 5})
    assert too_short.status_code == 422
    assert too_short.json()["reason"] == "invalid_request"
    assert too_short.json()["errors"][0]["loc"] == ["query", "window"]


def test_page_routes(served: tuple[LiveServer, ResultsDB]) -> None:
    server, _ = served
    redirect = httpx.get(f"{server.url}/monitoring")
    assert redirect.status_code == 307 and redirect.headers["location"] == f"/pipelines/{PIPELINE}/monitoring"
    page = httpx.get(f"{server.url}/pipelines/line-inspection/monitoring")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'data-pipeline="line-inspection"' in html and "SLO 348 ms" in html
    assert '<option value="line-inspection" selected>' in html
    assert '<script src="/static/monitoring.js">' in html and "http" not in html.split("<main>")[1]
    assert httpx.get(f"{server.url}/pipelines/no-such/monitoring").status_code == 404
    for asset in ("charts.js", "monitoring.js", "monitoring.css"):
        assert httpx.get(f"{server.url}/static/{asset}").status_code == 200


def test_system_page_shows_the_fix_as_a_command(served: tuple[LiveServer, ResultsDB]) -> None:
    server, _ = served
    page = httpx.get(f"{server.url}/system")
    assert page.status_code == 200
    assert "start the whole system with <code>keeneye up</code>" in page.text
    assert "`" not in page.text.split("<main>")[1]
