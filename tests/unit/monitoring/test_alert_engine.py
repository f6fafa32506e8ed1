"""The rules engine on a fake clock, a real SQLite results database and real metrics registries.

Values of rate_ratio / increase / quantile / compare are computed by hand in the comments, with
Prometheus' extrapolation: samples every 60 s and a 5 m window evaluated at t0+300 s see the five
samples t0+60 … t0+300 (range ``(t0, t0+300]``); the first is 60 s < 1.1 × 60 s from the range start,
so the increase between them (240 s) is extrapolated by 300/240 = 1.25.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from keeneye.domain import InvalidInput
from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.channels import Notification
from keeneye.monitoring.alerts.engine import (
    AlertState,
    RulesEngine,
    bucket_quantile,
    extrapolated_delta,
    render,
)
from keeneye.monitoring.alerts.rules import AlertRule, load_rules, parse_rules
from keeneye.monitoring.alerts.source import (
    MetricsUnavailable,
    MultiprocessSource,
    RegistrySource,
    Sample,
    ScrapeSource,
    default_source,
)
from keeneye.monitoring.alerts.store import AlertStore
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import AlertingSettings, ChannelSettings, Settings
from keeneye.store import ResultsDB
from keeneye.store.schema import AlertNotificationRow, AlertRow
from tests.services import free_port
from tests.unit.monitoring.alert_support import smtp_receiver, webhook_receiver

T0 = 1_800_000_000.0
DEFAULTS = {r.name: r for r in load_rules()}

SPECS = {
    "alpha.yaml": """
        name: alpha
        task: classify
        slo: {p95_latency_ms: 200}
        alerts:
          WorkerLoadHigh: {threshold: 0.95, for: 1m}
    """,
    "beta.yaml": """
        name: beta
        task: classify
        alerts:
          WorkerLoadHigh: {enabled: false}
    """,
    "gamma.yaml": """
        name: gamma
        task: classify
        slo: {p95_latency_ms: 500}
    """,
}


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Recorder:
    """A channel that keeps what it was given (for the engine's own logic; real servers below)."""

    def __init__(self, name: str = "log") -> None:
        self.name = name
        self.sent: list[Notification] = []

    def send(self, notification: Notification) -> None:
        self.sent.append(notification)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    specs = tmp_path / "specs"
    specs.mkdir()
    for name, text in SPECS.items():
        (specs / name).write_text(textwrap.dedent(text))
    return Settings(home=tmp_path / "home", pipelines={"dirs": [specs]})


@pytest.fixture
def db(settings: Settings) -> Iterator[ResultsDB]:
    settings.home.mkdir(parents=True, exist_ok=True)
    with ResultsDB(settings.database_url) as results:
        results.ensure_schema()
        yield results


class Rig:
    """One engine over a test ``Metrics()`` with a fake clock."""

    def __init__(
        self,
        settings: Settings,
        db: ResultsDB,
        rules: list[AlertRule],
        *,
        alerting: AlertingSettings | None = None,
        channels: dict[str, Any] | None = None,
    ) -> None:
        self.metrics = Metrics()
        self.clock = FakeClock()
        self.db = db
        self.recorder = Recorder()
        self.alerting = alerting or AlertingSettings(interval_seconds=60)
        self.engine = RulesEngine(
            rules,
            PipelineCatalog(settings),
            db,
            channels if channels is not None else {"log": self.recorder},
            self.alerting,
            metrics=self.metrics,
            clock=self.clock,
            source=RegistrySource(self.metrics.registry),
        )

    def tick(self, after: float = 0.0) -> list[AlertState]:
        self.clock.advance(after)
        return self.engine.evaluate()

    def value(self, rule: str, **labels: str) -> float:
        hits = [
            r for r in self.engine.last_results[rule] if all(r.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(hits) == 1, self.engine.last_results[rule]
        return hits[0].value

    def rows(self, rule: str) -> list[AlertRow]:
        with self.db.session() as s:
            return list(s.scalars(select(AlertRow).where(AlertRow.rule == rule).order_by(AlertRow.id)))

    def notifications(self) -> list[AlertNotificationRow]:
        with self.db.session() as s:
            return list(s.scalars(select(AlertNotificationRow).order_by(AlertNotificationRow.id)))


def rules(*names: str) -> list[AlertRule]:
    return [DEFAULTS[n] for n in names]


def one_rule(yaml_text: str) -> list[AlertRule]:
    return parse_rules(textwrap.dedent(yaml_text), source="test")


# --------------------------------------------------------------------------------------------------
# PromQL functions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "start", "end", "is_rate", "expected"),
    [
        # steady counter, first sample 60 s after the range start: × 300/240
        ([(60, 100), (120, 110), (180, 120), (240, 130), (300, 140)], 0, 300, False, 50.0),
        ([(60, 100), (120, 110), (180, 120), (240, 130), (300, 140)], 0, 300, True, 50.0 / 300),
        # a reset (7 → 2) adds the 7 before it: 1 + 7 = 8, × 1.25
        ([(60, 5), (120, 7), (180, 2), (240, 4), (300, 6)], 0, 300, False, 10.0),
        # no extrapolation below the counter's zero: starts at 0 → factor (240+0)/240
        ([(60, 0), (120, 2), (180, 4), (240, 6), (300, 8)], 0, 300, False, 8.0),
        # samples far from the range start are extrapolated by half an interval: (60+30)/60 × 6
        ([(240, 10), (300, 16)], 0, 300, False, 9.0),
        # one sample: no value
        ([(300, 16)], 0, 300, False, None),
    ],
)
def test_extrapolated_delta_matches_prometheus(
    points: list[tuple[float, float]], start: float, end: float, is_rate: bool, expected: float | None
) -> None:
    got = extrapolated_delta(points, start, end, is_counter=True, is_rate=is_rate)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # 100 observations: 50 ≤ 0.1, 90 ≤ 0.2, all ≤ 0.5. p95 = rank 95 → 0.2 + 0.3 × (5/10)
        (0.95, [(0.1, 50), (0.2, 90), (0.5, 100), (float("inf"), 100)], 0.35),
        # p50 = rank 50 in the first bucket: 0 + 0.1 × 50/50
        (0.5, [(0.1, 50), (0.2, 90), (0.5, 100), (float("inf"), 100)], 0.1),
        # the rank falls in +Inf: the highest finite bound
        (0.99, [(0.1, 50), (0.2, 90), (float("inf"), 100)], 0.2),
        # no +Inf bucket or no observations: no value
        (0.95, [(0.1, 5), (0.2, 9)], None),
        (0.95, [(0.1, 0), (float("inf"), 0)], None),
    ],
)
def test_bucket_quantile_interpolates_like_histogram_quantile(
    q: float, buckets: list[tuple[float, float]], expected: float | None
) -> None:
    got = bucket_quantile(q, buckets)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_templates_render_labels_and_value() -> None:
    text = "{{ $labels.pipeline }}: {{$value}} ({{ $labels.missing }})"
    assert render(text, {"pipeline": "alpha"}, 0.8333333333) == "alpha: 0.833333 ()"


# --------------------------------------------------------------------------------------------------
# States: pending → firing → resolved, de-duplication, restart
# --------------------------------------------------------------------------------------------------


def test_a_5_minute_rule_is_pending_at_4m59_and_fires_at_5m(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("WorkerLoadHigh"))
    rig.metrics.worker_utilization.labels("gamma", "stream", "max").set(0.9)
    rig.metrics.worker_utilization.labels("gamma", "stream", "mean").set(0.9)  # stat=mean is not matched

    [first] = rig.tick()
    assert (first.state, first.labels) == (
        "pending",
        {"pipeline": "gamma", "kind": "stream", "stat": "max", "group": "worker_load"},
    )
    assert [a.state for a in rig.tick(240)] == ["pending"]
    assert [a.state for a in rig.tick(59)] == ["pending"]  # 4 min 59 s
    assert rig.recorder.sent == []
    [fired] = rig.tick(1)  # 5 min
    assert fired.state == "firing" and fired.value == pytest.approx(0.9)
    assert fired.annotations["summary"] == "gamma: a replica (stream) is over 80% busy for 5 minutes"
    assert fired.annotations["description"].startswith("Busiest stream replica at 0.9.")
    assert fired.fired_at is not None and fired.fired_at.timestamp() == T0 + 300
    assert [(n.kind, n.level) for n in rig.recorder.sent] == [("firing", 0)]

    # Still firing: the same row, no second notification (repeat is 4 h away).
    rig.tick(60)
    assert len(rig.rows("WorkerLoadHigh")) == 1
    assert len(rig.recorder.sent) == 1

    rig.metrics.worker_utilization.labels("gamma", "stream", "max").set(0.5)
    [resolved] = rig.tick(60)
    assert resolved.state == "resolved" and resolved.resolved_at is not None
    [row] = rig.rows("WorkerLoadHigh")
    assert row.state == "resolved" and row.resolved_at is not None and row.resolved_at.timestamp() == T0 + 420
    assert [(n.kind, n.level) for n in rig.recorder.sent] == [("firing", 0), ("resolved", 0)]
    assert rig.tick(60) == []


def test_the_load_rule_fires_for_any_replica_of_any_kind(settings: Settings, db: ResultsDB) -> None:
    """An API process over 80 % fires WorkerLoadHigh while the stream workers are idle, and the
    other way round on another pipeline (delta: no spec, so no override): one alert per pipeline
    and kind, the kind named in the summary."""
    rig = Rig(settings, db, rules("WorkerLoadHigh"))
    rig.metrics.worker_utilization.labels("gamma", "api", "max").set(0.85)
    rig.metrics.worker_utilization.labels("gamma", "stream", "max").set(0.1)
    rig.metrics.worker_utilization.labels("delta", "api", "max").set(0.2)
    rig.metrics.worker_utilization.labels("delta", "stream", "max").set(0.9)
    assert sorted((a.labels["pipeline"], a.labels["kind"], a.state) for a in rig.tick()) == [
        ("delta", "stream", "pending"),
        ("gamma", "api", "pending"),
    ]
    fired = sorted(rig.tick(300), key=lambda a: a.labels["pipeline"])
    assert [(a.labels["pipeline"], a.labels["kind"], a.state) for a in fired] == [
        ("delta", "stream", "firing"),
        ("gamma", "api", "firing"),
    ]
    assert fired[1].annotations["summary"] == "gamma: a replica (api) is over 80% busy for 5 minutes"
    assert fired[1].value == pytest.approx(0.85)
    assert sorted((n.kind, n.level) for n in rig.recorder.sent) == [("firing", 0), ("firing", 0)]


def test_a_pending_alert_that_clears_is_forgotten_and_the_next_one_is_new(
    settings: Settings, db: ResultsDB
) -> None:
    rig = Rig(settings, db, rules("WorkerLoadHigh"))
    rig.metrics.worker_utilization.labels("gamma", "stream", "max").set(0.9)
    rig.tick()
    rig.metrics.worker_utilization.labels("gamma", "stream", "max").set(0.1)
    assert rig.tick(120) == []
    assert rig.rows("WorkerLoadHigh") == []
    rig.metrics.worker_utilization.labels("gamma", "stream", "max").set(0.9)
    rig.tick(60)
    # The 5 minutes start again from here, not from the first pending.
    assert [a.state for a in rig.tick(299)] == ["pending"]
    assert [a.state for a in rig.tick(1)] == ["firing"]
    assert rig.recorder.sent[0].kind == "firing"


def test_one_row_per_fingerprint_and_a_restarted_engine_continues(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("DriftDetected", "WorkerLoadHigh"))
    rig.metrics.drift_alarm.labels("alpha").set(1)
    rig.metrics.drift_alarm.labels("gamma").set(1)
    rig.metrics.worker_utilization.labels("gamma", "stream", "max").set(0.9)
    for _ in range(3):
        rig.tick(15)
    drift = rig.rows("DriftDetected")
    assert sorted(r.labels["pipeline"] for r in drift) == ["alpha", "gamma"]
    assert {r.state for r in drift} == {"firing"}
    assert len(rig.recorder.sent) == 2  # one per alert, not per tick

    # A new engine (the scheduler restarted) on the same database: the pending WorkerLoadHigh keeps
    # its start time and fires 5 minutes after it, and firing alerts are not notified again.
    restarted = Rig(settings, db, rules("DriftDetected", "WorkerLoadHigh"))
    restarted.metrics = rig.metrics
    restarted.engine.source = RegistrySource(rig.metrics.registry)
    restarted.clock.t = rig.clock.t - 30 + 300  # the pending started at the first tick (t - 30)
    states = {a.rule + a.labels["pipeline"]: a for a in restarted.tick()}
    assert states["WorkerLoadHighgamma"].state == "firing"
    assert len(restarted.rows("WorkerLoadHigh")) == 1 and len(restarted.rows("DriftDetected")) == 2
    assert [n.rule for n in restarted.recorder.sent] == ["WorkerLoadHigh"]


def test_metrics_unavailable_changes_nothing(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("DriftDetected"))
    rig.metrics.drift_alarm.labels("alpha").set(1)
    rig.tick()
    rig.engine.source = ScrapeSource([f"http://127.0.0.1:{free_port()}/metrics"], timeout=2)
    with pytest.raises(MetricsUnavailable, match="cannot read metrics"):
        rig.tick(60)
    [row] = rig.rows("DriftDetected")
    assert row.state == "firing"  # an unreachable API does not resolve anything


def test_a_rule_that_fails_keeps_its_alerts_and_the_others_go_on(
    settings: Settings, db: ResultsDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = Rig(settings, db, rules("DriftDetected", "QualityDrop"))
    rig.metrics.drift_alarm.labels("alpha").set(1)
    rig.metrics.quality_drop.labels("alpha", "3").set(1)
    assert sorted(a.rule for a in rig.tick()) == ["DriftDetected", "QualityDrop"]
    original = rig.engine.evaluate_rule

    def drift_breaks(rule: AlertRule, now: float, current: Any) -> Any:
        if rule.name == "DriftDetected":
            raise ZeroDivisionError("a bug in one rule")
        return original(rule, now, current)

    monkeypatch.setattr(rig.engine, "evaluate_rule", drift_breaks)
    rig.metrics.drift_alarm.labels("alpha").set(0)
    rig.metrics.quality_drop.labels("alpha", "3").set(0)
    states = {a.rule: a.state for a in rig.tick(15)}
    assert states == {"DriftDetected": "firing", "QualityDrop": "resolved"}


def test_the_alerts_gauge_counts_open_alerts(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("DriftDetected"))
    gauge = rig.metrics.registry.get_sample_value
    rig.metrics.drift_alarm.labels("alpha").set(1)
    rig.metrics.drift_alarm.labels("gamma").set(1)
    rig.tick()
    labels = {"rule": "DriftDetected", "severity": "warning", "state": "firing"}
    assert gauge("keeneye_alerts", labels) == 2
    rig.metrics.drift_alarm.labels("alpha").set(0)
    rig.metrics.drift_alarm.labels("gamma").set(0)
    rig.tick(15)
    assert gauge("keeneye_alerts", labels) == 0


# --------------------------------------------------------------------------------------------------
# Values of each kind, on known sequences
# --------------------------------------------------------------------------------------------------


def test_rate_ratio_on_known_counters(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("ApiErrorRateHigh"))
    ok, err = rig.metrics.requests.labels("gamma", "200"), rig.metrics.requests.labels("gamma", "503")
    other = rig.metrics.requests.labels("gamma", "404")  # not 5xx: only in the denominator
    ok.inc(1000)
    err.inc(100)
    other.inc(1000)
    rig.tick()
    for _ in range(5):  # per minute: 90 OK, 5 × 503, 5 × 404
        ok.inc(90)
        err.inc(5)
        other.inc(5)
        rig.tick(60)
    # Every series gets the same ×1.25, so the ratio is 20 / (360 + 20 + 20).
    assert rig.value("ApiErrorRateHigh", pipeline="gamma") == pytest.approx(20 / 400)
    [alert] = rig.engine.evaluate()  # same time, same answer; 0.05 > 0.01 → pending (for: 5m)
    assert alert.state == "pending" and alert.value == pytest.approx(0.05)


def test_rate_ratio_without_denominator_traffic_has_no_value(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("ApiErrorRateHigh"))
    rig.metrics.requests.labels("gamma", "200").inc(10)
    rig.metrics.requests.labels("gamma", "500").inc(10)
    for _ in range(3):
        rig.tick(60)  # no new requests: rates are 0 → 0/0 → no value, nothing pending
    assert rig.engine.last_results["ApiErrorRateHigh"] == []


def test_increase_handles_a_counter_reset(settings: Settings, db: ResultsDB) -> None:
    rule = one_rule(
        """
        rules:
          - name: DeadLetters5m
            kind: increase
            metric: keeneye_dead_letters_total
            window: 5m
            op: ">"
            threshold: 9
    """
    )
    rig = Rig(settings, db, rule)
    counter = rig.metrics.dead_letters
    current = 3
    counter.labels("gamma", "corrupt").inc(current)
    rig.tick()
    for value in (5, 7, 2, 4, 6):  # t0+60 … t0+300; 7 → 2 is a worker restart
        if value < current:
            counter.remove("gamma", "corrupt")
            current = 0
        counter.labels("gamma", "corrupt").inc(value - current)
        current = value
        rig.tick(60)
    # (6 - 5) + 7 (reset) = 8, × 1.25 = 10 > 9
    assert rig.value("DeadLetters5m", pipeline="gamma") == pytest.approx(10.0)
    assert [a.state for a in rig.engine.evaluate()] == ["firing"]


def test_the_first_dead_letter_of_a_pipeline_alerts(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("DeadLettersGrowing"))
    rig.tick()  # no dead letters yet: the series does not exist
    rig.metrics.dead_letters.labels("gamma", "corrupt_image").inc()
    [alert] = rig.tick(60)
    # The new series counts from 0 at the previous tick: increase = 1 (no extrapolation below zero).
    assert alert.state == "firing" and alert.value == pytest.approx(1.0)
    assert alert.annotations["description"] == "1 in the last 10 minutes."


def test_quantile_and_the_slo_threshold_per_pipeline(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("ApiLatencyAboveSlo"))
    hist = rig.metrics.request_seconds

    def batch() -> None:
        for pipeline in ("alpha", "gamma"):
            for _ in range(90):
                hist.labels(pipeline).observe(0.05)  # bucket le=0.05
            for _ in range(10):
                hist.labels(pipeline).observe(0.45)  # bucket (0.4, 0.49]

    batch()
    rig.tick()
    for _ in range(5):
        batch()
        rig.tick(60)
    # Over the window: 360 ≤ 0.05 … 0.4, 400 ≤ 0.49. Rank 0.95 × 400 = 380 lies in (0.4, 0.49]:
    # 0.4 + 0.09 × (380 − 360) / (400 − 360) = 0.445 s.
    assert rig.value("ApiLatencyAboveSlo", pipeline="alpha") == pytest.approx(0.445)
    assert rig.value("ApiLatencyAboveSlo", pipeline="gamma") == pytest.approx(0.445)
    by_pipeline = {r.labels["pipeline"]: r for r in rig.engine.last_results["ApiLatencyAboveSlo"]}
    assert by_pipeline["alpha"].threshold == pytest.approx(0.2) and by_pipeline["alpha"].active  # 200 ms
    assert by_pipeline["gamma"].threshold == pytest.approx(0.5) and not by_pipeline["gamma"].active
    [alert] = rig.engine.evaluate()
    assert alert.labels == {"pipeline": "alpha"} and alert.state == "pending"


def test_compare_fires_when_replicas_reach_the_maximum(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("ReplicasAtMax"))
    for pipeline, replicas in (("alpha", 6), ("gamma", 3)):
        rig.metrics.replicas.labels(pipeline).set(replicas)
        rig.metrics.max_replicas.labels(pipeline).set(6)
    rig.metrics.replicas.labels("nomax").set(4)  # no right-hand series: no match
    rig.tick()
    results = {r.labels["pipeline"]: r for r in rig.engine.last_results["ReplicasAtMax"]}
    assert set(results) == {"alpha", "gamma"}
    assert (results["alpha"].value, results["alpha"].threshold, results["alpha"].active) == (6, 6, True)
    assert results["gamma"].active is False
    assert [a.state for a in rig.tick(599)] == ["pending"]
    assert [a.state for a in rig.tick(1)] == ["firing"]


# --------------------------------------------------------------------------------------------------
# Pipeline overrides
# --------------------------------------------------------------------------------------------------


def test_pipeline_overrides_disable_and_change_threshold_and_for(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("WorkerLoadHigh"))
    for pipeline in ("alpha", "beta", "gamma"):
        rig.metrics.worker_utilization.labels(pipeline, "stream", "max").set(0.9)
    rig.tick()
    # beta: disabled; alpha: threshold 0.95 → 0.9 is fine; gamma: the default 0.8.
    assert {r.labels["pipeline"] for r in rig.engine.last_results["WorkerLoadHigh"]} == {"alpha", "gamma"}
    assert [(a.labels["pipeline"], a.state) for a in rig.tick(1)] == [("gamma", "pending")]
    rig.metrics.worker_utilization.labels("alpha", "stream", "max").set(0.97)
    rig.tick(1)
    states = {a.labels["pipeline"]: a.state for a in rig.tick(60)}  # alpha: for 1m instead of 5m
    assert states == {"alpha": "firing", "gamma": "pending"}


# --------------------------------------------------------------------------------------------------
# Silences, escalation, broken channels
# --------------------------------------------------------------------------------------------------


def test_a_silence_suppresses_notifications_but_not_state(settings: Settings, db: ResultsDB) -> None:
    from datetime import UTC, datetime, timedelta

    rig = Rig(settings, db, rules("DriftDetected"))
    now = datetime.fromtimestamp(T0, UTC)
    AlertStore(db).silence(
        ["DriftDetected"], rule="DriftDetected", matchers={"pipeline": "alpha"}, duration="1h",
        reason="re-labelling the camera", by="test", now=now,
    )  # fmt: skip
    rig.metrics.drift_alarm.labels("alpha").set(1)
    rig.metrics.drift_alarm.labels("gamma").set(1)
    states = {a.labels["pipeline"]: a for a in rig.tick()}
    assert states["alpha"].state == states["gamma"].state == "firing"
    assert states["alpha"].silenced and not states["gamma"].silenced
    assert [n.labels["pipeline"] for n in rig.recorder.sent] == ["gamma"]
    alpha = next(r for r in rig.rows("DriftDetected") if r.labels["pipeline"] == "alpha")
    assert alpha.silenced_until == now + timedelta(hours=1)

    # After the silence ends, the still-firing alert is notified.
    rig.tick(3600)
    assert sorted(n.labels["pipeline"] for n in rig.recorder.sent) == ["alpha", "gamma"]


def test_silences_need_a_rule_or_labels_and_a_valid_duration(db: ResultsDB) -> None:
    from datetime import UTC, datetime

    store, now = AlertStore(db), datetime.now(UTC)
    with pytest.raises(InvalidInput, match="needs a rule or at least one label"):
        store.silence(["X"], rule=None, matchers={}, duration="1h", reason="r", by="t", now=now)
    with pytest.raises(InvalidInput, match="unknown rule 'Nope'; known: X"):
        store.silence(["X"], rule="Nope", matchers={}, duration="1h", reason="r", by="t", now=now)
    with pytest.raises(InvalidInput, match="is not a duration"):
        store.silence(["X"], rule="X", matchers={}, duration="2 hours", reason="r", by="t", now=now)


def _critical_rig(settings: Settings, db: ResultsDB, hook_url: str, smtp_port: int) -> Rig:
    alerting = AlertingSettings(
        interval_seconds=60,
        channels=[
            ChannelSettings(name="hook", kind="webhook", url=hook_url, timeout_seconds=2),
            ChannelSettings(
                name="mail",
                kind="email",
                smtp_host="127.0.0.1",
                smtp_port=smtp_port,
                recipients=["oncall@example.org"],
                timeout_seconds=5,
            ),
        ],
        route=["hook", "mail"],
        escalate_after_minutes=15,
        repeat_minutes=240,
    )
    from keeneye.monitoring.alerts.channels import build_channels

    rig = Rig(settings, db, rules("QualityDrop"), alerting=alerting, channels=dict(build_channels(alerting)))
    rig.metrics.quality_drop.labels("alpha", "3").set(1)
    return rig


def test_a_critical_alert_escalates_from_webhook_to_email_when_not_acknowledged(
    settings: Settings, db: ResultsDB
) -> None:
    with webhook_receiver() as hook, smtp_receiver() as smtp:
        rig = _critical_rig(settings, db, hook.url, smtp.port)
        [alert] = rig.tick()
        assert alert.state == "firing"
        [body] = hook.bodies
        assert body["status"] == "firing" and body["level"] == 0
        assert body["alerts"][0]["labels"] == {
            "alertname": "QualityDrop", "severity": "critical", "pipeline": "alpha", "version": "3",
        }  # fmt: skip
        assert body["alerts"][0]["annotations"]["description"].startswith("Version 3;")
        assert smtp.messages == []

        rig.tick(14 * 60)
        assert smtp.messages == []  # 14 minutes: not yet
        rig.tick(60)  # 15 minutes, not acknowledged → level 1
        [mail] = smtp.messages
        assert mail["Subject"].startswith("[FIRING/escalated:critical] QualityDrop: alpha:")
        assert smtp.recipients == [["oncall@example.org"]]
        assert f"keeneye alerts ack {alert.id}" in mail.get_payload(decode=True).decode()
        assert len(hook.bodies) == 1  # the webhook is not told again
        assert rig.rows("QualityDrop")[0].escalation_level == 1

        rig.metrics.quality_drop.labels("alpha", "3").set(0)
        rig.tick(60)
        assert hook.bodies[-1]["status"] == "resolved" and hook.bodies[-1]["level"] == 0
        assert smtp.messages[-1]["Subject"].startswith("[RESOLVED:critical] QualityDrop")
        sent = [(n.channel, n.level, n.kind, n.ok) for n in rig.notifications()]
        assert sent == [
            ("hook", 0, "firing", True),
            ("mail", 1, "escalated", True),
            ("hook", 0, "resolved", True),
            ("mail", 1, "resolved", True),
        ]


def test_an_acknowledged_critical_alert_is_not_escalated(settings: Settings, db: ResultsDB) -> None:
    from datetime import UTC, datetime

    with webhook_receiver() as hook, smtp_receiver() as smtp:
        rig = _critical_rig(settings, db, hook.url, smtp.port)
        [alert] = rig.tick()
        rig.tick(10 * 60)
        AlertStore(db).ack(alert.id, "alice", datetime.now(UTC))
        rig.tick(5 * 60)
        rig.tick(30 * 60)
        assert smtp.messages == []
        assert len(hook.bodies) == 1
        [row] = rig.rows("QualityDrop")
        assert (row.acked_by, row.escalation_level) == ("alice", 0)


def test_a_broken_channel_is_recorded_and_the_engine_goes_on(settings: Settings, db: ResultsDB) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: connection refused
    with smtp_receiver() as smtp:
        rig = _critical_rig(settings, db, closed, smtp.port)
        [alert] = rig.tick()
        assert alert.state == "firing"
        [attempt] = rig.notifications()
        assert (attempt.channel, attempt.ok) == ("hook", False)
        assert attempt.error is not None and "webhook hook: POST" in attempt.error
        failures = {"channel": "hook", "ok": "false"}
        assert rig.metrics.registry.get_sample_value("keeneye_alert_notifications_total", failures) == 1
        # The engine keeps evaluating, and escalation reaches the channel that works.
        rig.tick(15 * 60)
        [mail] = smtp.messages
        assert "QualityDrop" in mail["Subject"]
        assert [(n.channel, n.ok) for n in rig.notifications()] == [("hook", False), ("mail", True)]


def test_repeat_reminds_the_channels_reached_so_far(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("DriftDetected"), alerting=AlertingSettings(repeat_minutes=60))
    rig.metrics.drift_alarm.labels("alpha").set(1)
    rig.tick()
    rig.tick(59 * 60)
    assert [n.kind for n in rig.recorder.sent] == ["firing"]
    rig.tick(60)
    assert [n.kind for n in rig.recorder.sent] == ["firing", "repeat"]


def test_notifications_with_no_route_channel_are_recorded_as_failures(
    settings: Settings, db: ResultsDB
) -> None:
    rig = Rig(settings, db, rules("DriftDetected"), channels={})
    rig.metrics.drift_alarm.labels("alpha").set(1)
    rig.tick()
    [attempt] = rig.notifications()
    assert attempt.ok is False and attempt.error is not None and "no channel named 'log'" in attempt.error


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


def test_registry_source_uses_exposition_names() -> None:
    m = Metrics()
    m.requests.labels("alpha", "200").inc(3)
    m.request_seconds.labels("alpha").observe(0.03)
    samples = RegistrySource(m.registry).samples()
    total = [s for s in samples if s.name == "keeneye_requests_total"]
    assert [(s.labels, s.value) for s in total] == [({"pipeline": "alpha", "status": "200"}, 3.0)]
    buckets = {s.labels["le"]: s.value for s in samples if s.name == "keeneye_request_seconds_bucket"}
    assert buckets["0.025"] == 0 and buckets["0.05"] == 1 and buckets["+Inf"] == 1


@pytest.fixture
def two_metrics_servers() -> Iterator[tuple[list[str], list[Metrics]]]:
    servers, threads, urls, metrics = [], [], [], []
    for _ in range(2):
        m = Metrics()

        class Handler(BaseHTTPRequestHandler):
            registry_metrics = m

            def do_GET(self) -> None:
                body = self.registry_metrics.render()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append(server)
        threads.append(thread)
        urls.append(f"http://127.0.0.1:{server.server_address[1]}/metrics")
        metrics.append(m)
    yield urls, metrics
    for server in servers:
        server.shutdown()
        server.server_close()


def test_scrape_source_reads_every_url_and_labels_the_instance(
    two_metrics_servers: tuple[list[str], list[Metrics]],
) -> None:
    urls, metrics = two_metrics_servers
    metrics[0].drift_alarm.labels("alpha").set(1)
    metrics[1].drift_alarm.labels("alpha").set(0)
    down = f"http://127.0.0.1:{free_port()}/metrics"
    samples = ScrapeSource([*urls, down], timeout=2).samples()
    alarms = {s.labels["instance"]: s.value for s in samples if s.name == "keeneye_drift_alarm"}
    assert alarms == {urls[0].split("/")[2]: 1.0, urls[1].split("/")[2]: 0.0}
    single = ScrapeSource([urls[0]]).samples()
    assert [s.labels for s in single if s.name == "keeneye_drift_alarm"] == [{"pipeline": "alpha"}]


def test_multiprocess_source_reads_what_other_processes_wrote(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    child = (
        "from keeneye.metrics import Metrics\n"
        "m = Metrics()\n"
        "m.dead_letters.labels('alpha', 'corrupt').inc(4)\n"
        "m.drift_alarm.labels('alpha').set(1)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    for _ in range(2):  # two processes: counters add up
        subprocess.run([sys.executable, "-c", child], env=env, check=True, timeout=60)
    samples = MultiprocessSource(folder).samples()
    [dead] = [s for s in samples if s.name == "keeneye_dead_letters_total"]
    assert dead.value == 8.0 and dead.labels["pipeline"] == "alpha"
    assert any(s.name == "keeneye_drift_alarm" and s.value == 1.0 for s in samples)
    with pytest.raises(MetricsUnavailable, match="is not a folder"):
        MultiprocessSource(tmp_path / "gone").samples()


def test_default_source_follows_the_environment(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    wildcard = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"host": "0.0.0.0"})}
    )
    source = default_source(wildcard)
    assert isinstance(source, ScrapeSource) and source.urls == ["http://127.0.0.1:8000/metrics"]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert isinstance(default_source(settings), MultiprocessSource)


def test_every_notification_attempt_is_one_row(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules("DriftDetected"))
    for p in ("alpha", "gamma"):
        rig.metrics.drift_alarm.labels(p).set(1)
    rig.tick()
    with db.session() as s:
        assert s.execute(select(func.count()).select_from(AlertNotificationRow)).scalar_one() == 2


# --------------------------------------------------------------------------------------------------
# docs/alerts.md
# --------------------------------------------------------------------------------------------------


def _selector(metric: str | None, match: dict[str, str]) -> str:
    parts = ",".join(f'{k}=~"{v[1:]}"' if v.startswith("~") else f'{k}="{v}"' for k, v in match.items())
    return f"`{metric}{{{parts}}}`" if parts else f"`{metric}`"


def _condition(r: AlertRule) -> str:
    if r.kind == "compare":
        assert r.other is not None
        return f"{_selector(r.metric, r.match)} {r.op} {_selector(r.other.metric, r.other.match)}"
    t = "SLO p95 of the pipeline" if r.threshold_from else f"{r.threshold:g}"
    if r.kind == "threshold":
        return f"{_selector(r.metric, r.match)} {r.op} {t}"
    if r.kind == "quantile":
        assert r.quantile is not None
        return f"p{round(r.quantile * 100)} of {_selector(r.metric, r.match)} over {r.window} {r.op} {t}"
    if r.kind == "rate_ratio":
        assert r.numerator is not None and r.denominator is not None
        ratio = f"{_selector(r.numerator.metric, r.numerator.match)} / "
        ratio += _selector(r.denominator.metric, r.denominator.match)
        return f"{ratio} over {r.window} {r.op} {t}"
    return f"increase of {_selector(r.metric, r.match)} over {r.window} {r.op} {t}"


def defaults_table() -> str:
    lines = ["| rule | kind | fires when | for | severity | by |", "|---|---|---|---|---|---|"]
    for r in load_rules():
        by = "each series" if r.kind == "threshold" else ", ".join(r.by)
        lines.append(f"| `{r.name}` | {r.kind} | {_condition(r)} | {r.for_} | {r.severity} | {by} |")
    return "\n".join(lines)


def test_the_defaults_table_in_the_docs_matches_default_yaml() -> None:
    docs = (Path(__file__).parents[3] / "docs" / "alerts.md").read_text()
    start = docs.index("-->\n", docs.index("<!-- defaults-table")) + 4
    table = docs[start : docs.index("\n<!-- /defaults-table -->")]
    assert table == defaults_table(), "regenerate the table in docs/alerts.md:\n" + defaults_table()


# --------------------------------------------------------------------------------------------------
# The scheduler's round
# --------------------------------------------------------------------------------------------------


def test_a_scheduler_round_runs_rules_and_survives_a_failing_quality_job(settings: Settings) -> None:
    from keeneye.lifecycle.scheduler import Scheduler

    metrics = Metrics()
    metrics.drift_alarm.labels("alpha").set(1)
    scheduler = Scheduler(settings, source=RegistrySource(metrics.registry), metrics=metrics)
    scheduler.setup()
    calls: list[int] = []

    def broken_quality() -> None:
        calls.append(1)
        raise RuntimeError("feedback table locked")

    scheduler.quality = broken_quality
    states = scheduler.run_round()
    assert [(a.rule, a.state) for a in states] == [("DriftDetected", "firing")]
    assert calls == [1]
    assert scheduler.last_error == "online quality: feedback table locked"
    status = scheduler.status()
    assert (status["role"], status["rounds"], status["alerts_firing"]) == ("scheduler", 1, 1)

    assert scheduler.engine is not None
    scheduler.engine.source = ScrapeSource([f"http://127.0.0.1:{free_port()}/metrics"], timeout=2)
    scheduler.quality = None
    scheduler.run_round()  # metrics unreadable: logged, the round still completes
    assert scheduler.last_error is not None and scheduler.last_error.startswith("cannot read metrics")
    assert scheduler.rounds == 2


# --------------------------------------------------------------------------------------------------
# The engine and Prometheus agree (the real promtool evaluates the same series)
# --------------------------------------------------------------------------------------------------

# Six samples a minute apart (t = 0 … 5m), evaluated at 5m over a 270 s window: the range starts at
# 30 s, between two samples, so Prometheus 2 (closed ranges) and 3 (left-open) see the same samples.
AGREEMENT_SERIES = {
    'keeneye_requests_total{pipeline="alpha",status="200"}': "1000+90x5",
    'keeneye_requests_total{pipeline="alpha",status="503"}': "100+5x5",
    'keeneye_requests_total{pipeline="beta",status="200"}': "0+40x5",
    'keeneye_requests_total{pipeline="beta",status="500"}': "0+10x5",
    'keeneye_dead_letters_total{pipeline="alpha",reason="corrupt"}': "3 5 7 2 4 6",
    'keeneye_dead_letters_total{pipeline="alpha",reason="too_large"}': "0 0 1 1 1 3",
    'keeneye_request_seconds_bucket{pipeline="alpha",le="0.05"}': "90+90x5",
    'keeneye_request_seconds_bucket{pipeline="alpha",le="0.4"}': "90+90x5",
    'keeneye_request_seconds_bucket{pipeline="alpha",le="0.49"}': "100+100x5",
    'keeneye_request_seconds_bucket{pipeline="alpha",le="+Inf"}': "100+100x5",
    'keeneye_request_seconds_bucket{pipeline="beta",le="0.05"}': "0+30x5",
    'keeneye_request_seconds_bucket{pipeline="beta",le="0.4"}': "0+80x5",
    'keeneye_request_seconds_bucket{pipeline="beta",le="0.49"}': "0+97x5",
    'keeneye_request_seconds_bucket{pipeline="beta",le="+Inf"}': "0+100x5",
    'keeneye_replicas{pipeline="alpha"}': "6x5",
    'keeneye_max_replicas{pipeline="alpha"}': "6x5",
    'keeneye_replicas{pipeline="beta"}': "2x5",
    'keeneye_max_replicas{pipeline="beta"}': "6x5",
}

AGREEMENT_RULES = """
rules:
  - {name: Ratio, kind: rate_ratio, window: 270s, threshold: -1,
     numerator: {metric: keeneye_requests_total, match: {status: "~5.."}},
     denominator: {metric: keeneye_requests_total}}
  - {name: P95, kind: quantile, metric: keeneye_request_seconds, quantile: 0.95, window: 270s, threshold: -1}
  - {name: Dead, kind: increase, metric: keeneye_dead_letters_total, window: 270s, threshold: -1}
  - {name: AtMax, kind: compare, metric: keeneye_replicas, other: {metric: keeneye_max_replicas}, op: ">="}
"""

AGREEMENT_PROMQL = {
    "Ratio": 'sum by (pipeline) (rate(keeneye_requests_total{status=~"5.."}[270s]))'
    " / sum by (pipeline) (rate(keeneye_requests_total[270s]))",
    "P95": "histogram_quantile(0.95, sum by (le, pipeline) (rate(keeneye_request_seconds_bucket[270s])))",
    "Dead": "sum by (pipeline) (increase(keeneye_dead_letters_total[270s]))",
    "AtMax": "keeneye_replicas >= on (pipeline) keeneye_max_replicas",
}


def _expand(values: str) -> list[float]:
    """promtool's series notation (``a+bxn``, ``axn``, plain lists) → the sample values."""
    out: list[float] = []
    for part in values.split():
        if "x" in part:
            start, _, times = part.partition("x")
            base, _, step = start.partition("+")
            out += [float(base) + float(step or 0) * i for i in range(int(times) + 1)]
        else:
            out.append(float(part))
    return out


def _parse_series(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition("{")
    labels = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(","))
    return name, {k: v.strip('"') for k, v in labels.items()}


class ListSource:
    """Samples from a table of series, one column per tick (the engine reads them like an exposition)."""

    def __init__(self, series: dict[str, str]) -> None:
        self.series = [(*_parse_series(k), _expand(v)) for k, v in series.items()]
        self.tick = 0

    def samples(self) -> list[Sample]:
        out = [Sample(name, labels, values[self.tick]) for name, labels, values in self.series]
        self.tick += 1
        return out


def test_the_engine_agrees_with_promtool(settings: Settings, db: ResultsDB, tmp_path: Path) -> None:
    from tests.unit.monitoring.promtool_support import run_promtool

    source = ListSource(AGREEMENT_SERIES)
    rig = Rig(settings, db, one_rule(AGREEMENT_RULES))
    rig.engine.source = source
    rig.tick()
    for _ in range(5):
        rig.tick(60)
    expected: dict[str, list[dict[str, Any]]] = {}
    for rule, results in rig.engine.last_results.items():
        samples = []
        for r in sorted(results, key=lambda r: sorted(r.labels.items())):
            if not r.active:  # the PromQL of a compare rule filters: only what passes is a sample
                continue
            # Alert labels never carry the metric name; PromQL drops it from these results too.
            body = ",".join(f'{k}="{v}"' for k, v in sorted(r.labels.items()))
            samples.append({"labels": f"{{{body}}}", "value": r.value})
        expected[rule] = samples
    # Hand checks: 20 / (360 + 20) errors (same extrapolation both sides); (6 − 5 + 7) × 270/240 + 3.
    assert rig.value("Ratio", pipeline="alpha") == pytest.approx(20 / 380)
    assert rig.value("Ratio", pipeline="beta") == pytest.approx(0.2)
    assert rig.value("Dead", pipeline="alpha") == pytest.approx(8 * 1.125 + 3)
    assert {r.labels["pipeline"] for r in rig.engine.last_results["AtMax"] if r.active} == {"alpha"}

    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in AGREEMENT_SERIES.items()],
                "promql_expr_test": [
                    {"expr": AGREEMENT_PROMQL[rule], "eval_time": "5m", "exp_samples": expected[rule]}
                    for rule in AGREEMENT_PROMQL
                ],
            }
        ],
    }
    import yaml

    path = tmp_path / "agreement.test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = run_promtool("test", "rules", path)
    assert out.returncode == 0, out.stdout + out.stderr
