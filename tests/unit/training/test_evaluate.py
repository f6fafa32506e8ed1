"""Evaluation metrics against hand-computed values, and a bundle evaluated through the serving path."""

from __future__ import annotations

import json
from fractions import Fraction as Fr
from pathlib import Path

import numpy as np
import pytest

from keeneye.domain import Instances
from keeneye.scores import binary_metrics, classification_metrics, confusion_matrix, pr_curve
from keeneye.training.evaluate import (
    ZoneAccumulator,
    coco_map,
    instances_to_class_map,
    latency_stats,
    zone_metrics,
)

# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------

CM = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])  # rows: true class, columns: predicted


@pytest.mark.parametrize(
    ("name", "precision", "recall", "f1"),
    [
        ("a", Fr(5, 7), Fr(5, 6), Fr(10, 13)),
        ("b", Fr(3, 4), Fr(1, 2), Fr(6, 10)),
        ("c", Fr(4, 5), Fr(1, 1), Fr(8, 9)),
    ],
)
def test_per_class_precision_recall_f1(name: str, precision: Fr, recall: Fr, f1: Fr) -> None:
    m = classification_metrics(CM, ["a", "b", "c"])["per_class"][name]
    assert m["precision"] == pytest.approx(float(precision))
    assert m["recall"] == pytest.approx(float(recall))
    assert m["f1"] == pytest.approx(float(f1))


def test_macro_and_accuracy() -> None:
    m = classification_metrics(CM, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(12 / 16)
    assert m["macro_precision"] == pytest.approx(float((Fr(5, 7) + Fr(3, 4) + Fr(4, 5)) / 3))
    assert m["macro_recall"] == pytest.approx(float((Fr(5, 6) + Fr(1, 2) + 1) / 3))
    assert m["macro_f1"] == pytest.approx(float((Fr(10, 13) + Fr(6, 10) + Fr(8, 9)) / 3))
    assert m["per_class"]["b"]["support"] == 6


def test_confusion_matrix_from_labels() -> None:
    truth = [0] * 6 + [1] * 6 + [2] * 4
    pred = [0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert confusion_matrix(truth, pred, 3).tolist() == CM.tolist()


def test_absent_class_is_left_out_of_the_macro_average() -> None:
    m = classification_metrics(np.array([[2, 0, 0], [0, 2, 0], [0, 0, 0]]), ["a", "b", "never"])
    assert m["macro_f1"] == 1.0
    assert m["per_class"]["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


# --------------------------------------------------------------------------------------------------
# OK / DEFECT
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("truth", "pred", "counts", "precision", "recall"),
    [
        ([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], (2, 1, 1, 1), 2 / 3, 2 / 3),
        ([1, 1, 1, 0], [1, 1, 1, 0], (3, 0, 0, 1), 1.0, 1.0),
        ([1, 1, 0, 0], [0, 0, 0, 0], (0, 0, 2, 2), None, 0.0),  # nothing flagged: precision undefined
        ([0, 0, 0], [0, 1, 0], (0, 1, 0, 2), 0.0, None),  # no defects at all: recall undefined
        ([0, 0], [0, 0], (0, 0, 0, 2), None, None),
    ],
)
def test_ok_defect_counts(
    truth: list[int],
    pred: list[int],
    counts: tuple[int, int, int, int],
    precision: float | None,
    recall: float | None,
) -> None:
    m = binary_metrics([bool(t) for t in truth], [bool(p) for p in pred])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == counts
    assert m["precision"] == (None if precision is None else pytest.approx(precision))
    assert m["recall"] == (None if recall is None else pytest.approx(recall))


# --------------------------------------------------------------------------------------------------
# COCO mAP
# --------------------------------------------------------------------------------------------------


def _square(x: int, y: int, size: int = 10, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y : y + size, x : x + size] = True
    return m


def _instances(masks: list[np.ndarray], scores: list[float], cls: int = 1) -> Instances:
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    n = len(masks)
    return Instances(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(n, 4),
        scores=np.asarray(scores, dtype=np.float32),
        class_ids=np.full(n, cls, dtype=np.int64),
        masks=np.stack(masks) if masks else np.zeros((0, 64, 64), dtype=bool),
    )


TRUTH = _instances([_square(5, 5), _square(40, 30)], [1.0, 1.0])


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        (_instances([_square(5, 5), _square(40, 30)], [0.9, 0.8]), 1.0),
        # one of two found: precision 1 up to recall 0.5 → 51 of COCO's 101 recall points
        (_instances([_square(5, 5)], [0.9]), 51 / 101),
        (_instances([_square(20, 20, 6)], [0.9]), 0.0),  # a false positive only
    ],
)
def test_coco_map_known_answers(pred: Instances, expected: float, iou_type: str) -> None:
    m = coco_map([TRUTH], [pred], class_ids=[1], iou_type=iou_type)
    assert m["map50"] == pytest.approx(expected, abs=1e-6)
    assert m["map"] == pytest.approx(expected, abs=1e-6)


def test_coco_map_without_truth_is_undefined() -> None:
    empty = Instances.empty((64, 64))
    assert coco_map([empty], [empty], class_ids=[1]) == {"map": None, "map50": None}
    assert coco_map([TRUTH], [Instances.empty((64, 64))], class_ids=[1]) == {"map": 0.0, "map50": 0.0}


# --------------------------------------------------------------------------------------------------
# Zones (crop-health)
# --------------------------------------------------------------------------------------------------


def test_zone_iou_hand_computed() -> None:
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:2, :2] = 1  # rust, 4 px
    gt[2:, 2:] = 2  # blight, 4 px
    pred = np.zeros((4, 4), dtype=np.int64)
    pred[:2, :2] = 1
    pred[0, 2] = 1  # one background pixel called rust
    pred[3, 2:] = 2  # half of the blight zone
    acc = ZoneAccumulator(3)
    acc.add(gt, pred)
    m = zone_metrics(acc, ["background", "rust", "blight"], [1, 2])
    assert m["iou_per_class"] == {"rust": pytest.approx(4 / 5), "blight": pytest.approx(2 / 4)}
    assert m["mean_iou"] == pytest.approx((4 / 5 + 2 / 4) / 2)
    assert m["pixel_precision"] == pytest.approx(6 / 7)
    assert m["pixel_recall"] == pytest.approx(6 / 8)


def test_zone_mean_only_over_classes_present_in_truth() -> None:
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:2, :2] = 1
    acc = ZoneAccumulator(3)
    acc.add(gt, gt)
    m = zone_metrics(acc, ["background", "rust", "blight"], [1, 2])
    assert m["mean_iou"] == 1.0
    assert m["iou_per_class"]["blight"] is None


def test_instances_to_class_map_best_score_wins() -> None:
    a = _square(0, 0, 4, (8, 8))
    b = _square(2, 2, 4, (8, 8))
    inst = Instances(
        boxes=np.zeros((2, 4), np.float32),
        scores=np.array([0.9, 0.6], np.float32),
        class_ids=np.array([1, 2], np.int64),
        masks=np.stack([a, b]),
    )
    out = instances_to_class_map(inst, (8, 8))
    assert out[3, 3] == 1  # overlap goes to the higher score
    assert out[5, 5] == 2
    assert out[7, 0] == 0


# --------------------------------------------------------------------------------------------------
# Curves and latency
# --------------------------------------------------------------------------------------------------


def test_pr_curve_and_latency() -> None:
    p, r = pr_curve([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
    assert p.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert r.tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert pr_curve([0.5], [False])[0].size == 0
    lat = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert lat["p50_ms"] == 2.5
    assert lat["mean_ms"] == 2.5


# --------------------------------------------------------------------------------------------------
# A bundle through the serving path
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_bundle_writes_report_and_plots(tmp_path: Path) -> None:
    import torch

    from keeneye.domain import Task
    from keeneye.pipelines import PipelineCatalog
    from keeneye.settings import Settings
    from keeneye.training.datasets import load_coco
    from keeneye.training.evaluate import evaluate_bundle
    from keeneye.training.export import export_bundle
    from keeneye.training.synth.species import generate_species
    from keeneye.training.torchdata import (
        base_input_spec,
        category_to_class,
        load_image,
        model_classes,
        prepare_images,
    )
    from keeneye.training.trainers import TrainConfig, build_model

    torch.manual_seed(0)
    generate_species(tmp_path / "data", 10, seed=1, size=32)
    dataset = load_coco(tmp_path / "data")
    spec = PipelineCatalog(Settings(home=tmp_path / "home")).get("species-id")
    classes = model_classes(dataset, Task.classify)
    input_spec = base_input_spec(["red", "green", "blue"], 32)
    prepared = prepare_images(
        dataset.images,
        spec,
        input_spec,
        category_to_class(dataset, Task.classify),
        Task.classify,
        max_pixels=10**7,
    )
    model = build_model(TrainConfig(Task.classify, len(classes), 3, backbone="resnet10t")).eval()
    exported = export_bundle(
        model,
        tmp_path / "bundle",
        name="species-id",
        task=Task.classify,
        input_spec=input_spec,
        classes=classes,
        parity_inputs=prepared.x[:2],
        profile_inputs=prepared.x,
        profile_images=[load_image(im, spec, 10**7) for im in dataset.images],
        data_version="v-test",
    )
    ev = evaluate_bundle(
        exported.bundle, spec, dataset.images, {c.id: c.name for c in dataset.categories}, max_pixels=10**7
    )
    assert ev.details["n_images"] == 10
    assert set(ev.metrics) >= {
        "accuracy",
        "macro_f1",
        "precision",
        "recall",
        "latency_p50_ms",
        "latency_p95_ms",
    }
    assert np.asarray(ev.details["confusion_matrix"]).sum() == 10
    paths = ev.write(tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["confusion_matrix.png", "evaluation.json", "pr_curve.png", "report.md"]
    assert (tmp_path / "out" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        json.loads((tmp_path / "out" / "evaluation.json").read_text())["metrics"]["accuracy"]
        == ev.metrics["accuracy"]
    )
    assert "| macro_f1 |" in (tmp_path / "out" / "report.md").read_text()
