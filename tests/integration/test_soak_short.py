"""The soak's CI variant: benchmarks/soak.py's own code for about 3 minutes on ``keeneye up``.

The set-up is the tests' tiny classifier and small (320×240) distinct camera-like photos, the offered
rate capped at 10 requests/s (80 % of the measured capacity would take both cores for the whole run;
``make test`` runs serially). What a soak is for is asserted at CI scale: no file descriptor growth,
bounded RSS growth after the warm-up, no process restarted, no 5xx, no transport or ingestion error,
no 4xx, at most 1 % of the requests left unsent by the generator, every route carrying its share, and
every accepted request stored exactly once and ``done`` (rows counted). p95 flatness is computed and
reported, not asserted: a shared CI machine's latency is not the system's. A measured run's figures are
in docs/operations.md "Soak test".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.soak import SoakConfig, run_soak, table

CONFIG = SoakConfig(
    minutes=1.75,
    interval=5.0,
    warmup=30.0,
    model="tiny",
    workers=1,
    photos=24,
    width=320,
    height=240,
    capacity_seconds=2.0,
    max_clients=4,
    max_rate=10.0,
    drain_timeout=60.0,
)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_short_soak_leaks_nothing_and_loses_nothing(tmp_path: Path) -> None:
    report = run_soak(CONFIG, tmp_path / "home")
    print(table(report))  # shown when the test fails
    checks = {c["key"]: c for c in report["checks"]}

    assert report["capacity"]["api_rps"] > 0 and report["capacity"]["worker_rps"] > 0
    assert report["server_errors"] == 0, report["errors"]
    assert checks["errors"]["passed"] and checks["refused"]["passed"], report["errors"]  # no 5xx, no 4xx
    assert checks["delivered"]["passed"], checks["delivered"]
    # Every route carried its share of the offered rate for the whole run.
    offered = sum(report["rates"].values())
    assert offered == pytest.approx(min(10.0, 0.8 * report["capacity"]["mixed_rps"]), abs=0.01)
    for route, share in zip(("predict", "observations", "bus"), CONFIG.mix, strict=True):
        expected = offered * share / sum(CONFIG.mix) * CONFIG.seconds
        assert report["ok_by_route"][route] >= 0.9 * expected, (route, report["ok_by_route"], expected)

    stored = report["stored"]
    # Accepted: the soak's answered requests and the capacity ramp's (its measured 200s, its burst).
    ramp = sum(level["statuses"].get("200", 0) for level in report["capacity"]["levels"])
    assert stored["accepted"] - sum(report["ok_by_route"].values()) >= ramp + report["capacity"]["burst"]
    assert stored["accepted"] == stored["distinct"] == stored["found"] == stored["pipeline_rows"]
    assert stored["by_status"] == {"done": stored["accepted"]}
    assert report["drain_left"] == 0
    assert checks["stored"]["passed"], checks["stored"]

    assert len(report["intervals"]) == round(CONFIG.seconds / CONFIG.interval)
    assert checks["fds"]["passed"], checks["fds"]
    assert checks["rss"]["passed"], checks["rss"]
    assert checks["processes"]["passed"], checks["processes"]
    labels = set(report["intervals"][-1]["processes"])
    assert {"supervisor", "api", "scheduler", "worker-1"} <= labels, labels
    assert report["up_exit_code"] == 0
