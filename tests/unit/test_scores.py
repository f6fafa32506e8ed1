"""keeneye.scores: confusion matrix, precision / recall / F1 (per class, macro, binary), PR curve.

Every expected value is computed by hand in the comment beside it.
"""

from __future__ import annotations

import numpy as np
import pytest

from keeneye.scores import (
    average_precision,
    binary_metrics,
    classification_metrics,
    confusion_matrix,
    pr_curve,
)


@pytest.mark.parametrize(
    ("truth", "predicted", "n", "expected"),
    [
        ([0, 1, 1, 2], [0, 1, 2, 2], 3, [[1, 0, 0], [0, 1, 1], [0, 0, 1]]),
        ([0, 0, 0], [1, 1, 0], 2, [[1, 2], [0, 0]]),
        ([], [], 2, [[0, 0], [0, 0]]),
    ],
)
def test_confusion_matrix(truth: list[int], predicted: list[int], n: int, expected: list[list[int]]) -> None:
    assert confusion_matrix(truth, predicted, n).tolist() == expected


def test_classification_metrics_by_hand() -> None:
    # truth a a a b b c ; predicted a a b b c c
    cm = confusion_matrix([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], 3)
    m = classification_metrics(cm, ["a", "b", "c"])
    # a: P 2/2, R 2/3, F1 0.8 · b: P 1/2, R 1/2, F1 0.5 · c: P 1/2, R 1/1, F1 2/3
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["labels"] == ["a", "b", "c"]


def test_macro_averages_skip_classes_absent_from_truth_and_predictions() -> None:
    m = classification_metrics(confusion_matrix([0, 1], [0, 1], 3), ["a", "b", "never"])
    assert m["macro_f1"] == 1.0 and m["per_class"]["never"]["f1"] == 0.0
    empty = classification_metrics(np.zeros((2, 2), np.int64), ["a", "b"])
    assert (empty["accuracy"], empty["macro_precision"]) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("truth", "predicted", "counts", "precision", "recall", "f1", "accuracy"),
    [
        # tp 2, fp 1, fn 1, tn 1: P 2/3, R 2/3, F1 2/3, accuracy 3/5
        ([1, 1, 1, 0, 0], [1, 1, 0, 1, 0], (2, 1, 1, 1), 2 / 3, 2 / 3, 2 / 3, 3 / 5),
        ([1, 0], [1, 0], (1, 0, 0, 1), 1.0, 1.0, 1.0, 1.0),
        ([0, 0], [0, 0], (0, 0, 0, 2), None, None, None, 1.0),  # nothing positive: undefined
        ([1, 1], [0, 0], (0, 0, 2, 0), None, 0.0, None, 0.0),  # nothing predicted positive
        ([0, 0], [1, 0], (0, 1, 0, 1), 0.0, None, None, 0.5),
        ([1, 0], [0, 1], (0, 1, 1, 0), 0.0, 0.0, 0.0, 0.0),  # both defined and 0: F1 0, not None
    ],
)
def test_binary_metrics(
    truth: list[int],
    predicted: list[int],
    counts: tuple[int, int, int, int],
    precision: float | None,
    recall: float | None,
    f1: float | None,
    accuracy: float,
) -> None:
    b = binary_metrics([bool(t) for t in truth], [bool(p) for p in predicted])
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == counts
    assert b["precision"] == (None if precision is None else pytest.approx(precision))
    assert b["recall"] == (None if recall is None else pytest.approx(recall))
    assert b["f1"] == (None if f1 is None else pytest.approx(f1))
    assert b["accuracy"] == pytest.approx(accuracy)


def test_pr_curve_by_hand() -> None:
    # scores .9 .8 .7 .6 with labels T F T F: precision 1, 1/2, 2/3, 2/4; recall 1/2, 1/2, 1, 1
    precision, recall = pr_curve([0.7, 0.9, 0.6, 0.8], [True, True, False, False])
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert recall.tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])
    empty_p, empty_r = pr_curve([0.5], [False])
    assert empty_p.size == 0 and empty_r.size == 0


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.9, 0.8, 0.7, 0.6], [True, False, True, False], (1 + 2 / 3) / 2),  # precision at each positive
        ([0.9, 0.8, 0.1], [True, True, False], 1.0),  # every positive first
        ([0.9, 0.8, 0.1], [False, False, True], 1 / 3),  # the only positive last
        ([0.5, 0.4], [False, False], 0.0),  # no positive: no curve
    ],
)
def test_average_precision_by_hand(scores: list[float], labels: list[bool], expected: float) -> None:
    assert average_precision(*pr_curve(scores, labels)) == pytest.approx(expected)
