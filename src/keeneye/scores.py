"""Pure scores shared by training, monitoring and lifecycle: confusion matrix, precision / recall /
F1 (per class, macro, binary), the precision-recall curve and its average precision. numpy only; no I/O.

Conventions: a zero denominator counts as 0 in per-class and macro scores (scikit-learn's
``zero_division=0``); a binary precision or recall with nothing to count is None (undefined, not
zero), so a subgroup without defects neither passes nor fails a gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

AnyArray = npt.NDArray[Any]


class ClassScores(TypedDict):
    precision: float
    recall: float
    f1: float
    support: int


class ClassificationScores(TypedDict):
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]
    labels: list[str]


class BinaryScores(TypedDict):
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    recall: float | None
    f1: float | None
    accuracy: float


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.int64]:
    """``cm[t, p]`` = how many items of true class ``t`` were predicted ``p``."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def classification_metrics(cm: AnyArray, class_names: Sequence[str]) -> ClassificationScores:
    """Per-class and macro precision / recall / F1 and accuracy from a confusion matrix.

    Macro averages run over the classes that occur in the truth or the predictions (scikit-learn's
    ``labels`` default); a zero denominator counts as 0.
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    pred_count = cm.sum(axis=0)
    true_count = cm.sum(axis=1)
    per_class: dict[str, ClassScores] = {}
    present: list[str] = []
    for i, name in enumerate(class_names):
        p = _div(tp[i], pred_count[i])
        r = _div(tp[i], true_count[i])
        per_class[name] = {
            "precision": p,
            "recall": r,
            "f1": _div(2 * p * r, p + r),
            "support": int(true_count[i]),
        }
        if pred_count[i] or true_count[i]:
            present.append(name)

    def macro(key: Literal["precision", "recall", "f1"]) -> float:
        return float(np.mean([per_class[n][key] for n in present])) if present else 0.0

    return {
        "accuracy": _div(tp.sum(), cm.sum()),
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "macro_f1": macro("f1"),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(class_names),
    }


def binary_metrics(truth: Sequence[bool], predicted: Sequence[bool]) -> BinaryScores:
    """Counts and precision / recall / F1 of a binary decision (positive = True).

    ``precision`` is None when nothing was predicted positive, ``recall`` None when nothing is
    positive: undefined, not zero — so a subgroup without defects neither passes nor fails a gate.
    """
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall
        else (0.0 if precision is not None and recall is not None else None)
    )
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": _div(tp + tn, len(t)),
    }


def pr_curve(scores: Sequence[float], labels: Sequence[bool]) -> tuple[AnyArray, AnyArray]:
    """Precision and recall at every score threshold (descending scores); empty when no positives."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if not y.any():
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(y[order])
    fp = np.cumsum(~y[order])
    return tp / (tp + fp), tp / y.sum()


def average_precision(precision: AnyArray, recall: AnyArray) -> float:
    """The average precision of a :func:`pr_curve`: the sum of (Rₖ − Rₖ₋₁) · Pₖ, each precision
    weighted by the recall it adds (scikit-learn's ``average_precision_score`` when no scores tie);
    0.0 for an empty curve (no positives)."""
    r = np.asarray(recall, dtype=np.float64)
    if r.size == 0:
        return 0.0
    steps = np.diff(np.concatenate([[0.0], r]))
    return float((steps * np.asarray(precision, dtype=np.float64)).sum())
