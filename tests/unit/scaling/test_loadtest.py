"""Load tests: the step math, the guards, the report, and real ramps over HTTP (Locust) and the bus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from keeneye.domain import ConfigError
from keeneye.scaling.loadtest import JpegSource, Sample, StepPlan, ensure_local, summarize
from keeneye.settings import Settings
from tests.serving_support import live_server, register_species_model


@pytest.mark.parametrize(
    ("start", "step", "seconds", "top", "rates", "total", "requests"),
    [
        (5, 5, 2, 15, [5, 10, 15], 6, 60),
        (10, 20, 30, 50, [10, 30, 50], 90, 2700),
        (10, 15, 10, 50, [10, 25, 40, 50], 40, 1250),  # max not on the grid: offered as the last step
        (7, 0, 5, 7, [7], 5, 35),  # flat
        (0.5, 0.5, 4, 1.5, [0.5, 1.0, 1.5], 12, 12),
    ],
)
def test_step_plan_table(
    start: float, step: float, seconds: float, top: float, rates: list[float], total: float, requests: int
) -> None:
    plan = StepPlan(start=start, step=step, step_seconds=seconds, max=top)
    assert plan.rates == rates
    assert plan.total_seconds == total
    assert plan.expected_requests == requests


@pytest.mark.parametrize(
    ("elapsed", "step", "rate"),
    [(-1, 0, 5), (0, 0, 5), (1.99, 0, 5), (2, 1, 10), (5.5, 2, 15), (6, None, None), (100, None, None)],
)
def test_step_at(elapsed: float, step: int | None, rate: float | None) -> None:
    plan = StepPlan(start=5, step=5, step_seconds=2, max=15)
    assert plan.step_at(elapsed) == step
    assert plan.rate_at(elapsed) == rate


@pytest.mark.parametrize(("rate", "users"), [(0.5, 1), (1, 1), (14.2, 15), (10**6, 5000)])
def test_users_for(rate: float, users: int) -> None:
    assert StepPlan(start=1, step=1, step_seconds=1, max=2).users_for(rate) == users


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": 0, "step": 1, "step_seconds": 1, "max": 5}, "--start/--max: rates must be above 0"),
        ({"start": 10, "step": 1, "step_seconds": 1, "max": 5}, "--start: 10 is above --max 5"),
        ({"start": 1, "step": 0, "step_seconds": 1, "max": 5}, "--step: must be above 0"),
        ({"start": 1, "step": 1, "step_seconds": 0, "max": 5}, "--step-seconds: must be above 0"),
        (
            {"start": 1, "step": 1, "step_seconds": 1, "max": 50_000},
            "--max: 50000 requests/s is over the cap",
        ),
        ({"start": 1, "step": 1, "step_seconds": 600, "max": 10}, "--step-seconds: the plan runs 6000 s"),
        ({"start": 1000, "step": 1000, "step_seconds": 300, "max": 5000}, "--max: the plan sends about"),
    ],
)
def test_step_plan_refuses_unbounded_or_malformed_plans(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        StepPlan(**kwargs)
    assert err.value.message.startswith(message)
    assert err.value.fix


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("kafka://127.0.0.1:9092,localhost:9093", True),
        ("http://10.0.0.5:8000", False),
        ("https://example.com", False),
        ("kafka://127.0.0.1:9092,broker.prod:9092", False),
    ],
)
def test_only_this_machine_unless_allowed(url: str, allowed: bool) -> None:
    if allowed:
        ensure_local(url, allow_remote=False)
    else:
        with pytest.raises(ConfigError, match="is not this machine") as err:
            ensure_local(url, allow_remote=False)
        assert err.value.fix == "pass --allow-remote if you own that system and mean to load it"
    ensure_local(url, allow_remote=True)


def test_jpeg_source_gives_distinct_decodable_images() -> None:
    source = JpegSource(pool=2, size=16)
    images = [source.next() for _ in range(50)]
    assert len(set(images)) == 50
    for data in images[:3]:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape == (16, 16, 3)


def test_summarize_per_step() -> None:
    plan = StepPlan(start=2, step=2, step_seconds=1, max=4)
    samples = [
        Sample(0.1, 0.010, "200"),
        Sample(0.6, 0.030, "200"),
        Sample(1.0, 0.020, "200"),
        Sample(1.2, 0.040, "503"),
        Sample(1.5, 0.0, "ConnectionRefusedError"),
        Sample(1.7, 0.020, "200"),
        Sample(2.5, 0.5, "ok"),  # after the plan: ignored
    ]
    first, second = summarize(plan, samples, lags=[3, None])
    assert (first.offered_rps, first.requests, first.achieved_rps, first.errors, first.lag) == (
        2,
        2,
        2.0,
        {},
        3,
    )
    assert first.p50_ms == 20.0
    assert (second.requests, second.achieved_rps) == (4, 2.0)
    assert second.errors == {"503": 1, "ConnectionRefusedError": 1}
    assert second.p99_ms == pytest.approx(20.0)


def _cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keeneye", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "KEENEYE_HOME": str(settings.home), "KEENEYE_CONFIG": os.devnull}


@pytest.mark.slow
def test_http_ramp_with_locust_achieves_the_offered_rate(settings: Settings, tmp_path: Path) -> None:
    register_species_model(settings, tmp_path)
    with live_server(settings) as server:
        result = _cli(
            ["loadtest", "--pipeline", "species-id", "--target", "http", "--url", server.url,
             "--start", "5", "--step", "5", "--step-seconds", "2", "--max", "15", "--json"],
            _env(settings),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) == {
        "target", "pipeline", "url", "step_seconds", "total_requests", "total_errors", "truncated", "steps",
    }  # fmt: skip
    assert (report["target"], report["url"]) == ("http", f"{server.url}/v1/pipelines/species-id/predict")
    assert report["total_errors"] == 0, report
    assert report["truncated"] is None
    steps = report["steps"]
    assert [s["offered_rps"] for s in steps] == [5, 10, 15]
    for s in steps:
        assert set(s) == {"step", "offered_rps", "seconds", "requests", "achieved_rps", "errors", "lag"} | {
            "p50_ms", "p95_ms", "p99_ms",
        }  # fmt: skip
        assert s["errors"] == {}
        assert s["achieved_rps"] == pytest.approx(s["offered_rps"], rel=0.25), steps
        assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert "step 3/3: 15 req/s" in result.stderr


def test_bus_ramp_publishes_through_ingestion_and_reports_lag(settings: Settings) -> None:
    result = _cli(
        ["loadtest", "--pipeline", "species-id", "--target", "bus",
         "--start", "10", "--step", "10", "--step-seconds", "1", "--max", "20", "--json"],
        _env(settings),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["target"] == "bus" and report["total_errors"] == 0
    first, second = report["steps"]
    assert first["achieved_rps"] == pytest.approx(10, rel=0.25)
    assert second["achieved_rps"] == pytest.approx(20, rel=0.25)
    # No worker is running: every accepted observation is still on the input topic.
    assert second["lag"] == first["requests"] + second["requests"]
    assert first["lag"] == first["requests"]


def test_refuses_a_remote_url_without_allow_remote(settings: Settings) -> None:
    result = _cli(
        [
            "loadtest",
            "--target",
            "http",
            "--url",
            "http://203.0.113.7:8000",
            "--max",
            "5",
            "--step-seconds",
            "1",
        ],
        _env(settings),
    )
    assert result.returncode == 2
    assert "203.0.113.7 is not this machine" in result.stderr
    assert "--allow-remote" in result.stderr
