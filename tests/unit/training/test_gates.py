"""Quality gates: absolute floors, regression against the champion, subgroup floors (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from keeneye.pipelines import GatesSection
from keeneye.training.gates import check_gates

LINE = GatesSection(
    metrics={"precision": 0.97, "recall": 0.95},
    primary_metric="recall",
    max_regression=0.005,
    subgroup_by="sku",
    subgroup_floor=0.9,
)
GOOD = {"precision": 0.99, "recall": 0.97}
GOOD_GROUPS = {"sku": {"A": {"precision": 0.98, "recall": 0.96}, "B": {"precision": 1.0, "recall": 0.95}}}


@pytest.mark.parametrize(
    ("case", "metrics", "champion", "subgroups", "passed", "reasons"),
    [
        ("all pass, no champion", GOOD, None, GOOD_GROUPS, True, []),
        ("all pass, beats champion", GOOD, {"precision": 0.98, "recall": 0.97}, GOOD_GROUPS, True, []),
        (
            "absolute precision fail",
            {"precision": 0.96, "recall": 0.97},
            None,
            GOOD_GROUPS,
            False,
            ["precision = 0.9600 is below the floor 0.9700"],
        ),
        (
            "metric not measured",
            {"precision": 0.99},
            None,
            GOOD_GROUPS,
            False,
            ["recall = not measured is below the floor 0.9500"],
        ),
        (
            "regression vs champion",
            GOOD,
            {"precision": 0.99, "recall": 0.99},
            GOOD_GROUPS,
            False,
            [
                "recall = 0.9700 vs champion v3 0.9900 on the same test split: worse than the allowed "
                "regression of 0.005 (threshold 0.9850)"
            ],
        ),
        (
            "subgroup floor",
            GOOD,
            None,
            {"sku": {"A": {"precision": 0.98, "recall": 0.85}, "B": {"precision": 1.0, "recall": None}}},
            False,
            ["sku=A: recall = 0.8500 is below the subgroup floor 0.9000"],
        ),
    ],
)
def test_gate_table(
    case: str,
    metrics: dict[str, float],
    champion: dict[str, float] | None,
    subgroups: Any,
    passed: bool,
    reasons: list[str],
) -> None:
    result = check_gates(LINE, metrics, champion_metrics=champion, champion_version="3", subgroups=subgroups)
    assert result.passed is passed, case
    assert result.reasons == reasons, case


def test_regression_within_tolerance_passes() -> None:
    result = check_gates(
        LINE, {"precision": 0.99, "recall": 0.9951}, champion_metrics={"precision": 0.99, "recall": 1.0}
    )
    assert result.passed
    kinds = sorted({c.kind for c in result.checks})
    assert kinds == ["absolute", "regression"]


def test_notes_explain_skipped_checks() -> None:
    groups = {"sku": {"A": {"precision": None, "recall": None}}}
    result = check_gates(LINE, GOOD, subgroups=groups)
    assert result.passed
    assert "no champion yet: regression check skipped" in result.notes
    assert "sku=A: recall undefined (too few cases); skipped" in result.notes


def test_missing_subgroup_key_is_noted_not_failed() -> None:
    result = check_gates(LINE, GOOD, subgroups={})
    assert result.passed
    assert any("no test images carry metadata 'sku'" in n for n in result.notes)


def test_champion_without_metric_is_noted() -> None:
    result = check_gates(LINE, GOOD, champion_metrics={"precision": 0.9})
    assert result.passed
    assert any(n.startswith("recall: the champion has no value") for n in result.notes)


def test_result_to_dict_is_json_ready() -> None:
    import json

    gates = GatesSection(metrics={"macro_f1": 0.75})
    result = check_gates(gates, {"macro_f1": 0.5})
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is False
    assert data["checks"][0] == {
        "kind": "absolute",
        "metric": "macro_f1",
        "value": 0.5,
        "threshold": 0.75,
        "passed": False,
        "message": "macro_f1 = 0.5000 is below the floor 0.7500",
        "group": None,
    }


def test_no_gates_means_pass() -> None:
    assert check_gates(GatesSection(), {}).passed
