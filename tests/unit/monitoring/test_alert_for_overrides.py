"""``alerting.for_overrides``: the built-in engine waits a configured ``for`` instead of the rule's.

For drills and tests (the operations proof shortens WorkerLoadHigh's 5 minutes to seconds) without
touching the rule: the packaged rule, its export to Prometheus and a pipeline spec's own ``for`` stay
as they are. The engine tests' rig: a fake clock, a real SQLite results database, a real registry.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from keeneye.domain import ConfigError
from keeneye.settings import AlertingSettings, Settings, load_settings
from keeneye.store import ResultsDB
from tests.unit.monitoring.test_alert_engine import Rig, db, rules, settings

__all__ = ["db", "settings"]  # the engine tests' fixtures: specs alpha (WorkerLoadHigh for 1m), gamma

LOAD = ("WorkerLoadHigh", "WorkerLoadCritical")


def _states(rig: Rig, after: float) -> dict[tuple[str, str], str]:
    return {(a.rule, str(a.labels["pipeline"])): a.state for a in rig.tick(after)}


def test_the_override_replaces_the_rules_for_and_a_pipeline_spec_still_wins(
    settings: Settings, db: ResultsDB
) -> None:
    alerting = AlertingSettings(for_overrides={"WorkerLoadHigh": "20s", "WorkerLoadCritical": "45s"})
    rig = Rig(settings, db, rules(*LOAD), alerting=alerting)
    rig.metrics.worker_utilization.labels("alpha", "stream", "max").set(0.97)  # alpha's threshold: 0.95
    rig.metrics.worker_utilization.labels("gamma", "stream", "max").set(0.9)
    pending = {(r, p): "pending" for r in LOAD for p in ("alpha", "gamma")}
    assert _states(rig, 0) == pending
    assert _states(rig, 19) == pending
    # gamma: 20 s instead of 5 m; alpha's spec says 1 m for WorkerLoadHigh, and the spec wins.
    assert _states(rig, 1) == {**pending, ("WorkerLoadHigh", "gamma"): "firing"}
    assert _states(rig, 25) == {
        ("WorkerLoadHigh", "alpha"): "pending",
        ("WorkerLoadHigh", "gamma"): "firing",
        ("WorkerLoadCritical", "alpha"): "firing",  # 45 s instead of 15 m, for every pipeline
        ("WorkerLoadCritical", "gamma"): "firing",
    }
    assert _states(rig, 15)[("WorkerLoadHigh", "alpha")] == "firing"
    # The rules themselves are unchanged (and so is what `alerts export` renders from them).
    assert [r.for_ for r in rig.engine.rules] == ["5m", "15m"]


def test_without_overrides_the_rules_for_holds(settings: Settings, db: ResultsDB) -> None:
    rig = Rig(settings, db, rules(*LOAD))
    rig.metrics.worker_utilization.labels("gamma", "api", "max").set(0.95)
    assert _states(rig, 0)[("WorkerLoadHigh", "gamma")] == "pending"
    assert _states(rig, 299)[("WorkerLoadHigh", "gamma")] == "pending"
    assert _states(rig, 1)[("WorkerLoadHigh", "gamma")] == "firing"


def test_an_override_for_a_rule_that_does_not_exist_is_refused(settings: Settings, db: ResultsDB) -> None:
    with pytest.raises(ConfigError) as err:
        Rig(settings, db, rules(*LOAD), alerting=AlertingSettings(for_overrides={"WorkerLoadHgh": "20s"}))
    assert err.value.message == "alerting.for_overrides: no alert rule named WorkerLoadHgh"
    assert err.value.fix == "use the names of the rules: WorkerLoadCritical, WorkerLoadHigh"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"WorkerLoadHigh": "20"}, "alerting.for_overrides.WorkerLoadHigh: '20' is not a duration like 30s"),
        ({"WorkerLoadHigh": "soon"}, "alerting.for_overrides.WorkerLoadHigh: 'soon' is not a duration"),
        ({"worker_load_high": "20s"}, "alerting.for_overrides: 'worker_load_high' is not a rule name"),
    ],
)
def test_malformed_overrides_are_refused_with_the_setting_named(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        AlertingSettings(for_overrides=overrides)


def test_the_override_comes_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KEENEYE_HOME", str(tmp_path))
    monkeypatch.setenv("KEENEYE_ALERTING__FOR_OVERRIDES", '{"WorkerLoadHigh": "20s"}')
    assert load_settings().alerting.for_overrides == {"WorkerLoadHigh": "20s"}
    monkeypatch.setenv("KEENEYE_ALERTING__FOR_OVERRIDES", '{"WorkerLoadHigh": "twenty"}')
    with pytest.raises(ConfigError, match="'twenty' is not a duration"):
        load_settings()
