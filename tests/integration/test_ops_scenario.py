"""Issue 20, items 1–2: the operations proof — rising load, the load alert, escalation, the replica cap.

``keeneye up`` (the benchmarks' helpers: a fresh ``KEENEYE_HOME`` whose species-id champion is a
MobileNet-sized stand-in, the rate limit lifted) runs species-id's workers autoscaled between ``MIN``
and ``MAX``.
Its alerting goes to two real webhooks on loopback (``oncall`` at level 0, ``pager`` at level 1), the
load rules' ``for`` shortened by configuration only (``alerting.for_overrides``: WorkerLoadHigh 5 s,
WorkerLoadCritical 10 s; the rules are the packaged ones), escalation after 10 s, the autoscaler's
scale-down window 15 s. Then ``keeneye loadtest --scenario ops`` — the command itself, in its own
process — offers a rising load that the workers cannot keep up with, and watches the cool-down.

Checked, from the command's ``ops.json``, the webhooks' bodies and the API's alert rows:

* the load alert went pending, then firing once it had held for its (shortened) ``for``, and reached
  the ``oncall`` webhook; the critical one, not acknowledged, was escalated to ``pager``;
* the replicas rose to the maximum and never beyond — not in any look, not in the worker processes
  alive, not in what the autoscaler wanted — while the lag asked for more than the maximum;
* after the load ended the system came back to rest: replicas at the minimum, the alerts resolved
  (and the webhooks told), nothing queued.

On the SQLite bus (the load over HTTP, ``--async``: 202 and the queue) and on Kafka (tansu; the load
through the bus's ingestion path). ``MIN`` → ``MAX`` is 2 → 3, not the ops profile's 4 → 6: the test
machine has 2 cores shared with other jobs, and six workers, the API, the scheduler and the load
generator would make the run minutes longer without proving more. The measured 4 → 6 run with the
real 5 minutes is in docs/operations.md. What is asserted are the guaranteed properties, with
generous waits; no latency or rate is compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from benchmarks.serving import CLASSES, prepare_keeneye
from benchmarks.soak import keeneye_up, up_env

from keeneye.models.testing import mobilenet_like_classifier
from keeneye.settings import Settings
from tests import services
from tests.serving_support import with_species_limits
from tests.unit.monitoring.alert_support import webhook_receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MIN, MAX = 2, 3
FOR = {"WorkerLoadHigh": "5s", "WorkerLoadCritical": "10s"}
FOR_SECONDS = {"WorkerLoadHigh": 5.0, "WorkerLoadCritical": 10.0}
ESCALATE_AFTER_S = 10.0
LAG_PER_REPLICA_TARGET = 100  # the autoscaler's default target
LOAD = "WorkerLoadHigh[stream]"
# The ramp: 10 → 70 requests/s in 15 s steps (105 s, about 4,200 requests). The model is a MobileNet-
# like stand-in at 768 px (about 6 GFLOP, ≈40 ms an input on one core: two cores serve at most ≈45/s
# whatever the replicas): a worker's cost per input is the model's, while accepting an input only
# stores it, so the workers fall behind, the queue grows and every worker stays busy until it drains.
# At 320 px (≈7 ms) two workers on an idle machine kept up with 70/s and the replicas never rose.
MODEL_SIZE = 768
RAMP = ["--start", "10", "--step", "10", "--step-seconds", "15", "--max", "70"]
COOLDOWN_S = 240


@dataclass
class Proof:
    report: dict[str, Any]  # ops.json
    oncall: list[dict[str, Any]]  # webhook bodies, level 0
    pager: list[dict[str, Any]]  # level 1
    alerts: dict[str, dict[str, Any]]  # "Rule[kind]" → the alert row with its notifications
    output: str  # what the command printed


def _settings_env(oncall: str, pager: str, extra: dict[str, str]) -> dict[str, str]:
    channels = [
        {"name": "oncall", "kind": "webhook", "url": oncall},
        {"name": "pager", "kind": "webhook", "url": pager},
    ]
    return {
        "KEENEYE_ALERTING__CHANNELS": json.dumps(channels),
        "KEENEYE_ALERTING__ROUTE": json.dumps(["oncall", "pager"]),
        "KEENEYE_ALERTING__INTERVAL_SECONDS": "1",
        "KEENEYE_ALERTING__ESCALATE_AFTER_MINUTES": str(ESCALATE_AFTER_S / 60),
        "KEENEYE_ALERTING__FOR_OVERRIDES": json.dumps(FOR),
        "KEENEYE_SCALING__INTERVAL_SECONDS": "2",
        "KEENEYE_SCALING__SCALE_DOWN_WINDOW_SECONDS": "15",
        "KEENEYE_INFERENCE__INTRA_OP_THREADS": "1",  # one ONNX thread per worker: 2 cores, many processes
        # One load generator is one client address: let it hold more than the flood guard's 16 in flight.
        "KEENEYE_SERVING__MAX_INFLIGHT_PER_CLIENT": "64",
        **extra,
    }


def _alert_rows(base: str) -> dict[str, dict[str, Any]]:
    with httpx.Client(base_url=base, timeout=30) as http:
        rows = http.get("/v1/alerts", params={"state": "all"}).json()["alerts"]
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            key = f"{row['rule']}[{row['labels']['kind']}]" if "kind" in row["labels"] else row["rule"]
            if key not in out or row["id"] < out[key]["id"]:  # the first episode: the load's
                out[key] = http.get(f"/v1/alerts/{row['id']}").json()
        return out


def prove(tmp_path: Path, *, target: str, extra_env: dict[str, str], load_args: list[str]) -> Proof:
    home = tmp_path / "home"
    prepare_keeneye(
        home, mobilenet_like_classifier(CLASSES, MODEL_SIZE), MODEL_SIZE
    )  # the benchmarks' set-up
    settings = with_species_limits(Settings(home=home), home, rate_per_second=1e9, burst=10**9)
    with webhook_receiver() as oncall, webhook_receiver() as pager:
        env = _settings_env(oncall.url, pager.url, extra_env)
        with keeneye_up(settings, MIN, tmp_path / "up.log", timeout=240, max_workers=MAX, env=env) as up:
            out = tmp_path / "ops"
            command = [
                sys.executable, "-m", "keeneye", "loadtest", "--scenario", "ops", "--target", target,
                "--pipeline", "species-id", "--url", up.base, *RAMP, *load_args,
                "--interval", "1", "--cooldown", str(COOLDOWN_S), "--out", str(out),
            ]  # fmt: skip
            run = subprocess.run(
                command, env=up_env(settings, env), capture_output=True, text=True, timeout=420
            )
            output = run.stdout + run.stderr
            assert run.returncode == 0, output[-4000:]
            report = json.loads((out / "ops.json").read_text())
            assert (out / "ops.png").stat().st_size > 10_000
            alerts = _alert_rows(up.base)
        return Proof(report, list(oncall.bodies), list(pager.bodies), alerts, output)


def _sent(bodies: list[dict[str, Any]], rule: str) -> list[tuple[str, int]]:
    """(kind, level) of every notification about ``rule``, in the order received."""
    return [(b["kind"], b["level"]) for b in bodies if b["alerts"][0]["labels"]["alertname"] == rule]


def _seconds(a: str, b: str) -> float:
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def check(proof: Proof) -> None:
    report, looks = proof.report, [lk for lk in proof.report["looks"] if lk["error"] is None]
    print(proof.output)  # shown when the test fails: the timeline and the events
    assert report["min_replicas"] == MIN and report["max_replicas"] == MAX
    ramp = [r for r in report["timeline"] if r["phase"] == "ramp"]
    assert [r["offered_rps"] for r in ramp] == [10, 20, 30, 40, 50, 60, 70]
    assert all(r["served_rps"] > 0 for r in ramp), ramp

    # The replicas rose to the maximum and never beyond, while the queue asked for more.
    assert max(lk["replicas"] for lk in looks) == MAX
    assert all(lk["replicas"] <= MAX and lk["workers_alive"] <= MAX for lk in looks), looks
    assert all(lk["desired"] <= MAX for lk in looks)
    assert any(lk["replicas"] == MAX and (lk["lag"] or 0) > MAX * LAG_PER_REPLICA_TARGET for lk in looks), (
        looks
    )

    # The load alert: pending first, firing once it held for its shortened `for`, on the webhook.
    high = proof.alerts[LOAD]
    assert high["fired_at"] is not None
    assert _seconds(high["started_at"], high["fired_at"]) >= FOR_SECONDS["WorkerLoadHigh"]
    assert any(LOAD in lk["firing"] for lk in looks)  # seen by the command too
    assert _sent(proof.oncall, "WorkerLoadHigh")[0] == ("firing", 0)
    assert _sent(proof.pager, "WorkerLoadHigh") == []  # a warning is never escalated
    assert any(f"{LOAD} firing" in e["what"] for e in report["events"])

    # The critical one, not acknowledged, went from oncall to pager after escalate_after_minutes.
    critical = proof.alerts["WorkerLoadCritical[stream]"]
    assert _seconds(critical["started_at"], critical["fired_at"]) >= FOR_SECONDS["WorkerLoadCritical"]
    assert _sent(proof.oncall, "WorkerLoadCritical")[0] == ("firing", 0)
    assert _sent(proof.pager, "WorkerLoadCritical")[0] == ("escalated", 1)
    sent = {(n["channel"], n["kind"]): n["sent_at"] for n in critical["notifications"] if n["ok"]}
    assert _seconds(sent[("oncall", "firing")], sent[("pager", "escalated")]) >= ESCALATE_AFTER_S
    assert critical["escalation_level"] == 1 and critical["acked_by"] is None

    # After the load: back at rest, the alerts resolved and the channels that were told, told again.
    assert report["at_rest"], report["events"]
    last = looks[-1]
    assert last["replicas"] == MIN and not last["lag"] and not last["firing"]
    after = [lk for lk in looks if lk["t"] > report["ramp_seconds"]]
    assert any(lk["replicas"] == MAX for lk in looks if lk["t"] <= report["ramp_seconds"] + 30)
    assert after[-1]["replicas"] == MIN
    assert high["state"] == "resolved" and critical["state"] == "resolved"
    assert not any(lk["firing"] for lk in after[-1:])
    assert _sent(proof.oncall, "WorkerLoadHigh")[-1] == ("resolved", 0)
    assert _sent(proof.pager, "WorkerLoadCritical")[-1] == ("resolved", 1)
    assert "replicas" in proof.output and "WorkerLoadHigh[stream]" in proof.output  # the printed timeline


def test_the_ramp_over_http_on_the_sqlite_bus_fires_escalates_and_caps_the_replicas(tmp_path: Path) -> None:
    proof = prove(tmp_path, target="http", extra_env={}, load_args=["--async"])
    check(proof)


@pytest.mark.integration
def test_the_ramp_through_kafka_fires_escalates_and_caps_the_replicas(tmp_path: Path) -> None:
    with services.kafka_broker(tmp_path) as broker:  # a broker of its own: no other test's topics
        extra = {"KEENEYE_BUS_URL": broker.url, "KEENEYE_BUS__PARTITIONS": str(MAX)}
        proof = prove(tmp_path, target="bus", extra_env=extra, load_args=[])
    check(proof)
