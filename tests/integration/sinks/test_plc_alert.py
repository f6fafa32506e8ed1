"""PLC down end to end: a Modbus sink loses its server → ``keeneye_plc_up`` 0 → ``PlcUnreachable``
fires (critical), escalates when nobody acknowledges it, and resolves once the sink reconnects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keeneye.metrics import Metrics
from keeneye.monitoring.alerts.channels import Notification
from keeneye.monitoring.alerts.engine import RulesEngine
from keeneye.monitoring.alerts.rules import load_rules
from keeneye.monitoring.alerts.source import RegistrySource
from keeneye.pipelines import PipelineCatalog
from keeneye.settings import AlertingSettings, ChannelSettings, Settings
from keeneye.sinks import open_sink
from keeneye.store import ResultsDB
from tests.integration.sinks.plc_servers import ModbusServer, wait_until
from tests.integration.sinks.sink_support import FAST

pytestmark = pytest.mark.integration


class Channel:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Notification] = []

    def send(self, notification: Notification) -> None:
        self.sent.append(notification)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ResultsDB]:
    with ResultsDB(f"sqlite:///{tmp_path / 'keeneye.db'}") as results:
        results.ensure_schema()
        yield results


def test_plc_unreachable_fires_escalates_and_resolves(
    modbus: ModbusServer, db: ResultsDB, tmp_path: Path
) -> None:
    metrics, clock = Metrics(), Clock()
    team, oncall = Channel("team"), Channel("oncall")
    alerting = AlertingSettings(
        channels=[ChannelSettings(name="team", kind="log"), ChannelSettings(name="oncall", kind="log")],
        route=["team", "oncall"],
        escalate_after_minutes=15,
    )
    [rule] = [r for r in load_rules() if r.name == "PlcUnreachable"]
    assert rule.severity == "critical"
    engine = RulesEngine(
        [rule],
        PipelineCatalog(Settings(home=tmp_path / "home")),
        db,
        {"team": team, "oncall": oncall},
        alerting,
        metrics=metrics,
        clock=clock,
        source=RegistrySource(metrics.registry),
    )
    with open_sink(modbus.url, line="L1", camera="C1", plc=FAST, metrics=metrics) as sink:
        assert sink.wait_connected(20)
        assert engine.evaluate() == []  # up: nothing to say

        modbus.kill()
        wait_until(lambda: not sink.state().connected, what="the sink to notice")
        [pending] = engine.evaluate()
        assert pending.state == "pending"
        clock.t += 15
        [firing] = engine.evaluate()
        assert (firing.state, firing.severity) == ("firing", "critical")
        assert firing.labels == {
            "pipeline": "line-inspection",
            "line": "L1",
            "camera": "C1",
            "sink": "modbus",
        }
        assert [n.kind for n in team.sent] == ["firing"] and oncall.sent == []
        clock.t += 15 * 60  # nobody acknowledged it: the next channel of the route is told
        engine.evaluate()
        assert [n.kind for n in oncall.sent] == ["escalated"]

        modbus.start()
        assert sink.wait_connected(20)
        clock.t += 15
        [resolved] = engine.evaluate()
        assert resolved.state == "resolved"
