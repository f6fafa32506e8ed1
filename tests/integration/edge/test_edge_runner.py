"""The edge runner against a real Modbus TCP server and a real SQLite results DB: every frame decided and
written in order, the fail-safe on a stalled model / a corrupt frame with its alert and reason, and no
decided event lost to kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from keeneye.edge import FolderSource, InspectOptions, build_runner
from keeneye.metrics import Metrics
from keeneye.models import OnnxModel
from keeneye.monitoring.alerts.channels import Notification
from keeneye.monitoring.alerts.engine import RulesEngine
from keeneye.monitoring.alerts.rules import load_rules
from keeneye.monitoring.alerts.source import RegistrySource
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import AlertingSettings, ChannelSettings, Settings
from keeneye.store import ObservationFilter, ResultsDB, open_results_db
from keeneye.stream import open_bus
from tests.integration.edge.edge_support import (
    CLASS,
    RESULT,
    StallingModel,
    bundle,
    settings,
    sku_settings,
    write_frames,
)
from tests.integration.sinks.plc_servers import ModbusServer, ModbusWrite, wait_until

pytestmark = pytest.mark.integration

PIPELINE = "line-inspection"


class Channel:
    name = "team"

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def send(self, notification: Notification) -> None:
        self.sent.append(notification)


def results(modbus: ModbusServer) -> list[ModbusWrite]:
    """The result blocks (HR0-HR4) the PLC received, in arrival order."""
    return [w for w in modbus.writes() if w.fc == 16 and w.address == 0]


def events(db: ResultsDB) -> dict[int, tuple[str, str | None, dict[str, object]]]:
    page = db.find_observations(ObservationFilter(pipeline=PIPELINE), limit=1000)
    out = {}
    for o in page.observations:
        assert o.source == "edge"
        out[int(str(o.metadata["sequence"]))] = (o.status.value, o.reason, dict(o.metadata))
    return out


def options(source: Path, modbus: ModbusServer, model: Path, **extra: object) -> InspectOptions:
    return InspectOptions(
        pipeline=PIPELINE,
        source=str(source),
        line="L1",
        camera="C1",
        plc=modbus.url,
        model=model,
        sku="A-100",
        batch="B7",
        **extra,  # type: ignore[arg-type]
    )


def test_a_folder_is_decided_in_order_without_gaps_and_stored(tmp_path: Path, modbus: ModbusServer) -> None:
    kinds = [
        "ok",
        "defect",
        "ok",
        "small",
        "defect",
        "corrupt",
        "ok",
        "defect",
        "ok",
        "ok",
        "defect",
        "small",
    ]
    frames = write_frames(tmp_path / "frames", kinds)
    s = settings(tmp_path / "home")
    runner = build_runner(s, options(frames, modbus, bundle(tmp_path / "bundle").path))
    assert runner.sink.wait_connected(20)
    runner.run(handle_signals=False)

    written = results(modbus)
    assert [w.values[0] for w in written] == list(range(1, 13))  # HR0: every part, in order, no gap
    assert [w.values[1] for w in written] == [RESULT[k] for k in kinds]  # HR1: 1 OK, 2 DEFECT, 3 fail-safe
    assert [w.values[2] for w in written] == [CLASS[k] for k in kinds]  # HR2: scratch = 1
    assert all(w.values[3] >= 990 for w, k in zip(written, kinds, strict=True) if k == "defect")  # HR3 ‰

    summary = runner.summary.to_json()
    assert (summary["frames"], summary["ok"], summary["defect"]) == (12, 7, 4)
    assert summary["failsafe"] == {"unreadable_frame": 1}
    assert (summary["first_sequence"], summary["last_sequence"], summary["stored"]) == (1, 12, 12)

    stored = events(open_results_db(s))
    assert sorted(stored) == list(range(1, 13))
    status, reason, meta = stored[6]  # the corrupt frame
    assert (status, reason, meta["result_code"]) == ("rejected", "unreadable_frame", 3)
    assert str(meta["detail"]).startswith("corrupt")
    status, reason, meta = stored[2]
    assert (status, reason, meta["result_code"], meta["decision"]) == ("done", None, 2, "DEFECT")
    assert (meta["line"], meta["camera"], meta["sku"], meta["batch"], meta["sink"]) == (
        "L1", "C1", "A-100", "B7", "acked",
    )  # fmt: skip
    db = open_results_db(s)
    page = db.find_observations(ObservationFilter(pipeline=PIPELINE), limit=100)
    [second_part] = [o.id for o in page.observations if o.metadata["sequence"] == 2]
    [prediction] = db.predictions_for(second_part)
    assert prediction.decision is not None and prediction.decision.value == "DEFECT"
    assert prediction.result["count"] == 1


def test_a_per_sku_override_changes_the_decision_on_the_plc(tmp_path: Path, modbus: ModbusServer) -> None:
    frames = write_frames(tmp_path / "frames", ["small", "ok", "small"])
    s = sku_settings(tmp_path / "home", "A-100", min_area=4)  # a 9-pixel scratch counts on this SKU
    runner = build_runner(s, options(frames, modbus, bundle(tmp_path / "bundle").path))
    assert (runner.thresholds.defect_score, runner.thresholds.defect_min_area) == (0.5, 4)
    assert runner.sink.wait_connected(20)
    runner.run(handle_signals=False)
    assert [(w.values[0], w.values[1], w.values[2]) for w in results(modbus)] == [
        (1, 2, 1),
        (2, 1, 0),
        (3, 2, 1),
    ]


def test_a_stalled_model_gets_the_failsafe_in_time_and_its_late_answer_is_dropped(
    tmp_path: Path, modbus: ModbusServer
) -> None:
    frames = write_frames(tmp_path / "frames", ["defect", "ok", "ok"])
    # The margin is what the watchdog keeps for itself: generous here, where the 2 test cores are shared.
    s = settings(tmp_path / "home", decision_margin_ms=100)
    metrics = Metrics()
    stalling = StallingModel(OnnxModel.load(bundle(tmp_path / "bundle").path), stall_on=2)
    [rule] = [r for r in load_rules() if r.name == "InspectionDeadlineMissed"]
    clock = [1_800_000_000.0]
    engine = RulesEngine(
        [rule],
        PipelineCatalog(s),
        open_results_db(s),
        {"team": Channel()},
        AlertingSettings(channels=[ChannelSettings(name="team", kind="log")], route=["team"]),
        metrics=metrics,
        clock=lambda: clock[0],
        source=RegistrySource(metrics.registry),
    )
    runner = build_runner(
        s,
        options(frames, modbus, tmp_path / "bundle"),
        metrics=metrics,
        model=stalling,
        source=FolderSource(frames),
    )
    assert runner.sink.wait_connected(20)
    runner.setup()
    try:
        runner.step()  # part 1: answered
        assert engine.evaluate() == []
        runner.step()  # part 2: the model stalls
        assert stalling.entered.is_set() and not stalling.finished.is_set()
        [first, second] = [e for e in runner.journal.read(0).events]
        assert (first[1].result, second[1].result, second[1].reason) == (2, 3, "deadline_missed")
        assert second[1].latency_ms <= runner.deadline_ms  # the fail-safe itself is not late

        clock[0] += 60
        [alert] = engine.evaluate()
        assert alert.state == "firing"
        assert (alert.labels["line"], alert.labels["camera"]) == ("L1", "C1")

        stalling.release.set()  # the late answer (a DEFECT-free "OK") arrives …
        wait_until(lambda: metrics.edge_late_answers.labels(PIPELINE, "L1", "C1")._value.get() == 1)
        runner.step()  # … and part 3 is decided normally afterwards
    finally:
        runner.teardown()

    written = results(modbus)
    assert [(w.values[0], w.values[1]) for w in written] == [(1, 2), (2, 3), (3, 1)]  # 2 never rewritten
    assert written[1].values[4] <= 348  # HR4: latency ms of the fail-safe
    assert metrics.edge_failsafe.labels(PIPELINE, "L1", "C1", "deadline_missed")._value.get() == 1
    stored = events(open_results_db(s))
    assert stored[2][:2] == ("rejected", "deadline_missed")
    assert stored[2][2]["result_code"] == 3
    assert [stored[n][0] for n in (1, 3)] == ["done", "done"]


def _inspect(home: Path, source: Path, modbus: ModbusServer, model: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "keeneye", "inspect", "--source", str(source), "--line", "L1", "--camera", "C1",
        "--plc", modbus.url, "--model", str(model), *args,
    ]  # fmt: skip


def test_kill_9_loses_no_decided_event_and_the_count_goes_on(tmp_path: Path, modbus: ModbusServer) -> None:
    model = bundle(tmp_path / "bundle").path
    frames = write_frames(tmp_path / "frames", ["ok", "defect", "small"] * 100)
    home = tmp_path / "home"
    env = {
        **os.environ,
        "KEENEYE_HOME": str(home),
        "KEENEYE_EDGE__FLUSH_INTERVAL_SECONDS": "3",  # most decisions live only in the journal at the kill
        "KEENEYE_PLC__HEARTBEAT_SECONDS": "0.2",
    }
    proc = subprocess.Popen(
        _inspect(home, frames, modbus, model, "--fps", "50", "--once"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: len(results(modbus)) >= 40, timeout=90, what="40 decisions at the PLC")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    decided = {w.values[0] for w in results(modbus)}
    assert len(decided) >= 40
    assert len(events(open_results_db(Settings(home=home)))) < len(decided)  # the journal holds the rest

    # Restart with one more frame: the journal is flushed, and the count continues after the last part.
    more = write_frames(tmp_path / "more", ["defect"])
    done = subprocess.run(
        _inspect(home, more, modbus, model, "--once", "--json"),
        env={**env, "KEENEYE_EDGE__FLUSH_INTERVAL_SECONDS": "0.1"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = json.loads(done.stdout)
    last = max(decided)
    assert (summary["frames"], summary["defect"]) == (1, 1)
    assert summary["first_sequence"] == summary["last_sequence"] >= last + 1
    assert results(modbus)[-1].values[:2] == [summary["first_sequence"], 2]

    stored = events(open_results_db(Settings(home=home)))
    assert decided <= set(stored)  # every part the PLC got is in the DB …
    assert len(stored) == len(set(stored)) and summary["last_sequence"] in stored  # … once

    bus = open_bus(Settings(home=home))  # … and announced on the bus, keyed line_id/camera_id
    consumer = bus.subscribe(["keeneye.line-inspection.out"], "edge-test")
    announced: list[int] = []
    while batch := consumer.poll(max_messages=500, timeout=0.5):
        assert {m.key for m in batch} == {b"L1/C1"}
        announced += [json.loads(m.value)["sequence"] for m in batch]
    bus.close()
    assert decided <= set(announced) and summary["last_sequence"] in announced
