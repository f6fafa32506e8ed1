"""Quality targets (``gates.targets``): reported beside the gates with their gap, never blocking."""

from __future__ import annotations

from pathlib import Path

from keeneye.pipelines import GatesSection, PipelineCatalog
from keeneye.settings import Settings
from keeneye.training.gates import check_gates


def test_targets_are_reported_not_gated() -> None:
    gates = GatesSection(
        metrics={"recall": 0.95},
        targets={"recall": 0.965, "precision": 0.982, "mask_map50": 0.62},
    )
    result = check_gates(gates, {"recall": 0.96, "precision": 0.99, "mask_map50": 0.5})
    assert result.passed is True and result.reasons == []
    targets = [c for c in result.checks if c.kind == "target"]
    assert [(c.metric, c.value, c.threshold, c.passed) for c in targets] == [
        ("recall", 0.96, 0.965, False),
        ("precision", 0.99, 0.982, True),
        ("mask_map50", 0.5, 0.62, False),
    ]
    assert targets[0].message == "target recall = 0.9600 is below 0.9650 (short by 0.0050)"
    assert targets[1].message == "target precision = 0.9900 ≥ 0.9820"
    assert result.targets_met is False
    assert [c["kind"] for c in result.to_dict()["checks"]] == ["absolute", "target", "target", "target"]

    met = check_gates(gates, {"recall": 0.97, "precision": 0.99, "mask_map50": 0.7})
    assert met.targets_met is True
    unmeasured = check_gates(gates, {"recall": 0.97, "precision": 0.99})
    assert unmeasured.passed is True and unmeasured.targets_met is False
    assert unmeasured.checks[-1].message == "target mask_map50 = not measured is below 0.6200"
    assert check_gates(GatesSection(metrics={"recall": 0.9}), {"recall": 0.95}).targets_met is None


def test_the_line_spec_reports_the_seed_targets(tmp_path: Path) -> None:
    spec = PipelineCatalog(Settings(home=tmp_path)).get("line-inspection")
    assert spec.gates.targets == {"recall": 0.965, "precision": 0.982, "mask_map50": 0.62}
