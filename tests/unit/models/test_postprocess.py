"""Post-processing per output format, checked against hand-computed numbers."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from keeneye.domain import Decision, Instances, InvalidInput, Task
from keeneye.geometry import box_iou
from keeneye.models import (
    ModelManifest,
    Thresholds,
    batched_nms,
    classify_logits,
    decide_ok_defect,
    nms,
    postprocess,
    seg_logits_to_instances,
    sigmoid,
    softmax,
    yolo_detect,
    yolo_segment,
)
from keeneye.models.testing import yolo_rows

# --------------------------------------------------------------------------------------------------
# softmax / sigmoid / classification
# --------------------------------------------------------------------------------------------------


def _softmax_by_hand(x: list[float]) -> np.ndarray:
    e = np.exp(np.array(x, dtype=np.float64))
    return e / e.sum()


@pytest.mark.parametrize(
    "logits",
    [[1.0, 2.0, 3.0], [0.0, 0.0], [-5.0, 10.0, 0.5, 3.0], [2.0, 2.0, 1.0, -1.0, 7.0]],
)
def test_softmax_matches_hand_computation(logits: list[float]) -> None:
    np.testing.assert_allclose(softmax(np.array(logits)), _softmax_by_hand(logits), rtol=1e-6)


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = softmax(np.array([1000.0, 0.0, -1000.0]))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, [1.0, 0.0, 0.0], atol=1e-7)


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0.0, 0.5), (2.0, 1 / (1 + np.exp(-2.0))), (-3.0, 1 / (1 + np.exp(3.0))), (-1000.0, 0.0), (1000.0, 1.0)],
)
def test_sigmoid(x: float, expected: float) -> None:
    assert sigmoid(np.array([x]))[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("logits", "top_k", "expected_ids"),
    [
        ([1.0, 3.0, 2.0, 0.0], 3, [1, 2, 0]),
        ([1.0, 3.0, 2.0, 0.0], 1, [1]),
        ([5.0, -1.0], 3, [0, 1]),  # top_k larger than the class count
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 2, [5, 4]),
    ],
)
def test_classify_logits_top_k(logits: list[float], top_k: int, expected_ids: list[int]) -> None:
    result = classify_logits(np.array([logits], dtype=np.float32), image_size=(24, 32), top_k=top_k)
    probs = _softmax_by_hand(logits)
    assert result.class_ids.tolist() == expected_ids
    np.testing.assert_allclose(result.scores, probs[expected_ids], rtol=1e-6)
    assert result.class_probabilities is not None
    np.testing.assert_allclose(result.class_probabilities, probs, rtol=1e-6)
    np.testing.assert_array_equal(result.boxes, np.tile([0, 0, 32, 24], (len(expected_ids), 1)))
    assert result.class_ids.dtype == np.int64 and result.scores.dtype == np.float32


def test_classify_outputs_already_probabilities_are_not_softmaxed() -> None:
    result = classify_logits(np.array([0.1, 0.7, 0.2]), image_size=(8, 8), top_k=2, probabilities=True)
    np.testing.assert_allclose(result.scores, [0.7, 0.2], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# seg-logits → connected-component instances
# --------------------------------------------------------------------------------------------------

HIGH = 10.0
P_HIGH = float(np.exp(HIGH) / (np.exp(HIGH) + 2))  # winner's probability with two rivals at logit 0


def _seg_logits(blobs: list[tuple[int, slice, slice]], shape: tuple[int, int] = (20, 30)) -> np.ndarray:
    """Three-class logits (0 = background): each blob sets its class's logit to HIGH over a region."""
    logits = np.zeros((3, *shape), dtype=np.float32)
    logits[0] = 1.0  # background wins where nothing is painted
    for cls, rows, cols in blobs:
        logits[cls, rows, cols] = HIGH
        logits[0, rows, cols] = 0.0
    return logits


THREE_BLOBS = [
    (1, slice(2, 6), slice(3, 8)),  # rows 2..5, cols 3..7 → box (3, 2, 8, 6), area 20
    (1, slice(10, 15), slice(20, 28)),  # box (20, 10, 28, 15), area 40
    (2, slice(15, 19), slice(2, 5)),  # box (2, 15, 5, 19), area 12
]


def test_seg_logits_three_blobs_exact_boxes_areas_scores() -> None:
    result = seg_logits_to_instances(
        _seg_logits(THREE_BLOBS), thresholds=Thresholds(score=0.5, mask=0.5), background_class=0
    )
    assert len(result) == 3
    got = sorted(
        zip(result.class_ids.tolist(), result.boxes.tolist(), result.areas.tolist(), strict=True),
        key=lambda r: r[1],
    )
    assert got == [
        (2, [2.0, 15.0, 5.0, 19.0], 12.0),
        (1, [3.0, 2.0, 8.0, 6.0], 20.0),
        (1, [20.0, 10.0, 28.0, 15.0], 40.0),
    ]
    np.testing.assert_allclose(result.scores, P_HIGH, rtol=1e-5)
    assert result.masks is not None and result.masks.shape == (3, 20, 30)
    # each mask is exactly its blob
    for mask, box in zip(result.masks, result.boxes.astype(int), strict=True):
        x1, y1, x2, y2 = box
        assert mask[y1:y2, x1:x2].all() and mask.sum() == (x2 - x1) * (y2 - y1)


def test_seg_logits_background_is_never_an_instance() -> None:
    result = seg_logits_to_instances(_seg_logits([]), thresholds=Thresholds(), background_class=0)
    assert len(result) == 0 and result.masks is not None and result.masks.shape == (0, 20, 30)
    # without a background class the whole frame is one class-0 instance
    whole = seg_logits_to_instances(_seg_logits([]), thresholds=Thresholds(), background_class=None)
    assert whole.class_ids.tolist() == [0] and whole.boxes.tolist() == [[0, 0, 30, 20]]


def test_seg_logits_min_area_drops_tiny_blob() -> None:
    blobs = [*THREE_BLOBS, (2, slice(0, 1), slice(28, 30))]  # a 2-pixel blob
    kept_all = seg_logits_to_instances(_seg_logits(blobs), thresholds=Thresholds(), background_class=0)
    kept = seg_logits_to_instances(_seg_logits(blobs), thresholds=Thresholds(min_area=3), background_class=0)
    assert len(kept_all) == 4
    assert len(kept) == 3 and 2.0 not in kept.areas.tolist()


def test_seg_logits_diagonal_pixels_are_one_component() -> None:
    logits = _seg_logits([(1, slice(0, 1), slice(0, 1)), (1, slice(1, 2), slice(1, 2))])
    result = seg_logits_to_instances(logits, thresholds=Thresholds(), background_class=0)
    assert result.boxes.tolist() == [[0, 0, 2, 2]] and result.areas.tolist() == [2.0]


def test_seg_logits_score_threshold_and_max_instances_keep_the_best() -> None:
    logits = _seg_logits(THREE_BLOBS)
    logits[1, 2:6, 3:8] = 1.5  # first blob: prob e^1.5/(e^1.5+2) ≈ 0.69
    weak = float(np.exp(1.5) / (np.exp(1.5) + 2))
    all3 = seg_logits_to_instances(logits, thresholds=Thresholds(score=0.5), background_class=0)
    assert sorted(all3.scores.tolist())[0] == pytest.approx(weak, rel=1e-5)
    strict = seg_logits_to_instances(logits, thresholds=Thresholds(score=0.9), background_class=0)
    assert len(strict) == 2 and [3.0, 2.0, 8.0, 6.0] not in strict.boxes.tolist()
    capped = seg_logits_to_instances(logits, thresholds=Thresholds(max_instances=1), background_class=0)
    assert len(capped) == 1 and capped.scores[0] == pytest.approx(P_HIGH, rel=1e-5)
    # the mask threshold also cuts pixels: at 0.8 the weak blob's pixels are not confident
    no_weak = seg_logits_to_instances(logits, thresholds=Thresholds(mask=0.8), background_class=0)
    assert len(no_weak) == 2


def test_seg_logits_binary_single_channel_uses_sigmoid() -> None:
    logits = np.full((1, 1, 10, 10), -6.0, dtype=np.float32)
    logits[0, 0, 2:4, 5:9] = 6.0
    result = seg_logits_to_instances(logits, thresholds=Thresholds(), class_ids=[1])
    assert result.class_ids.tolist() == [1]
    assert result.boxes.tolist() == [[5, 2, 9, 4]]
    assert result.scores[0] == pytest.approx(1 / (1 + np.exp(-6.0)), rel=1e-5)


def test_seg_logits_are_resized_to_the_input_size() -> None:
    low = _seg_logits([(1, slice(2, 4), slice(4, 8))], shape=(10, 15))
    result = seg_logits_to_instances(low, thresholds=Thresholds(), background_class=0, image_size=(20, 30))
    assert result.masks is not None and result.masks.shape == (1, 20, 30)
    np.testing.assert_allclose(result.boxes[0], [8, 4, 16, 8], atol=1)


# --------------------------------------------------------------------------------------------------
# IoU and NMS
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),  # identical
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),  # half overlap
        ([0, 0, 10, 10], [0, 0, 5, 5], 25 / 100),  # contained
        ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),  # corner overlap
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # degenerate: no division by zero
        ([2.5, 2.5, 7.5, 7.5], [0, 0, 5, 5], 6.25 / 43.75),  # fractional
    ],
)
def test_box_iou_table(a: list[float], b: list[float], iou: float) -> None:
    assert box_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(iou, abs=1e-6)
    assert box_iou(np.array([b]), np.array([a]))[0, 0] == pytest.approx(iou, abs=1e-6)


def test_box_iou_is_pairwise() -> None:
    a = np.array([[0, 0, 10, 10], [5, 0, 15, 10]])
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]])
    assert box_iou(a, b).shape == (2, 3)


def _nms_by_hand(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(box_iou(boxes[i : i + 1], boxes[k : k + 1])[0, 0] <= thr for k in keep):
            keep.append(i)
    return keep


def test_nms_hand_case() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # box 3 (best) overlaps 0 with IoU 0.9 and 1 with IoU 72/118 ≈ 0.61; 2 is far away
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.65).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_reference_on_random_boxes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, size=(60, 2))
    wh = rng.uniform(5, 40, size=(60, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(size=60)
    assert nms(boxes, scores, 0.45).tolist() == _nms_by_hand(boxes, scores, 0.45)


def test_batched_nms_is_class_wise() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 1, 0])
    assert sorted(batched_nms(boxes, scores, classes, 0.5).tolist()) == [0, 2, 3]


# --------------------------------------------------------------------------------------------------
# YOLO detect
# --------------------------------------------------------------------------------------------------

# (cx, cy, w, h), (score class 0, score class 1)
DETECT_ANCHORS: list[tuple[tuple[float, ...], tuple[float, float]]] = [
    ((50, 50, 20, 20), (0.9, 0.1)),  # kept
    ((52, 50, 20, 20), (0.8, 0.0)),  # same class, IoU 360/440 ≈ 0.82 with anchor 0 → suppressed
    ((52, 50, 20, 20), (0.05, 0.85)),  # same place, other class → kept
    ((200, 200, 30, 30), (0.2, 0.1)),  # below the 0.25 score threshold
    ((300, 100, 10, 30), (0.3, 0.6)),  # kept, class 1 (300 px box)
]


def _detect_rows() -> np.ndarray:
    return yolo_rows([a[0] for a in DETECT_ANCHORS], [a[1] for a in DETECT_ANCHORS])


@pytest.mark.parametrize("layout", ["standard", "batched", "transposed", "transposed-batched"])
def test_yolo_detect_nms_threshold_and_layouts(layout: str) -> None:
    rows = _detect_rows()
    output = {
        "standard": rows,
        "batched": rows[None],
        "transposed": rows.T,
        "transposed-batched": rows.T[None],
    }[layout]
    result = yolo_detect(output, num_classes=2, thresholds=Thresholds(score=0.25, iou=0.45))
    assert result.class_ids.tolist() == [0, 1, 1]
    np.testing.assert_allclose(result.scores, [0.9, 0.85, 0.6], rtol=1e-6)
    np.testing.assert_allclose(result.boxes, [[40, 40, 60, 60], [42, 40, 62, 60], [295, 85, 305, 115]])


@pytest.mark.parametrize(
    ("thresholds", "expected_ids"),
    [
        (Thresholds(score=0.25, iou=0.9), [0, 1, 0, 1]),  # loose IoU: the overlapping class-0 box stays
        (Thresholds(score=0.7), [0, 1]),
        (Thresholds(score=0.1, iou=0.45), [0, 1, 1, 0]),  # the 0.2 anchor now passes
        (Thresholds(max_instances=1), [0]),
        (Thresholds(min_area=350), [0, 1]),  # the 10×30 = 300 px box dropped
        (Thresholds(score=0.95), []),
    ],
)
def test_yolo_detect_thresholds(thresholds: Thresholds, expected_ids: list[int]) -> None:
    result = yolo_detect(_detect_rows(), num_classes=2, thresholds=thresholds)
    assert result.class_ids.tolist() == expected_ids
    assert result.boxes.shape == (len(expected_ids), 4)


def test_yolo_detect_wrong_class_count_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput) as err:
        yolo_detect(_detect_rows(), num_classes=3, thresholds=Thresholds())
    assert err.value.reason == "bad_model_output" and "(7, anchors)" in err.value.message


# --------------------------------------------------------------------------------------------------
# YOLO segment
# --------------------------------------------------------------------------------------------------


def _segment_case() -> tuple[np.ndarray, np.ndarray]:
    """Two prototypes at 8×8 for a 32×32 input.

    proto 0 is +5 in proto columns 0..3 and −5 in 4..7: bilinearly upsampled ×4 it is positive in
    image columns 0..15 exactly. proto 1 is −5 everywhere (an empty mask).
    """
    protos = np.zeros((2, 8, 8), dtype=np.float32)
    protos[0, :, :4], protos[0, :, 4:] = 5.0, -5.0
    protos[1] = -5.0
    rows = yolo_rows(
        boxes_cxcywh=[(16, 8, 12, 8), (8, 24, 8, 8), (24, 24, 6.5, 4.5)],
        class_scores=[(0.9, 0.0), (0.0, 0.8), (0.7, 0.0)],
        mask_coefficients=[(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)],
    )
    return rows, protos


def test_yolo_segment_masks_are_cropped_to_boxes() -> None:
    rows, protos = _segment_case()
    result = yolo_segment(rows, protos, num_classes=2, thresholds=Thresholds(), image_size=(32, 32))
    assert result.masks is not None and result.masks.shape == (3, 32, 32)
    assert result.class_ids.tolist() == [0, 1, 0]
    # anchor 0: box (10, 4, 22, 12); the proto is positive in columns 0..15 → columns 10..15, rows 4..11
    m0 = result.masks[0]
    assert m0.sum() == 6 * 8
    assert m0[4:12, 10:16].all()
    # anchor 1: coefficients pick the all-negative prototype → empty mask
    assert result.masks[1].sum() == 0
    # anchor 2: negated proto 0 → positive in columns 16..31, cropped to box (20.75, 21.75, 27.25, 26.25):
    # columns c with 20.75 ≤ c < 27.25 → 21..27 (7), rows 22..26 (5)
    assert result.masks[2].sum() == 7 * 5
    assert result.masks[2][22:27, 21:28].all()


def test_yolo_segment_mask_threshold_and_min_area() -> None:
    rows, protos = _segment_case()
    th = Thresholds(min_area=1)
    dropped_empty = yolo_segment(rows, protos, num_classes=2, thresholds=th, image_size=(32, 32))
    assert dropped_empty.class_ids.tolist() == [0, 0]
    # sigmoid(5) ≈ 0.9933: a mask threshold above it empties every mask
    none = yolo_segment(rows, protos, num_classes=2, thresholds=Thresholds(mask=0.995), image_size=(32, 32))
    assert none.masks is not None and none.masks.sum() == 0


def test_yolo_segment_with_nothing_detected() -> None:
    rows, protos = _segment_case()
    result = yolo_segment(
        rows[None], protos[None], num_classes=2, thresholds=Thresholds(score=0.99), image_size=(32, 32)
    )
    assert len(result) == 0 and result.masks is not None and result.masks.shape == (0, 32, 32)


# --------------------------------------------------------------------------------------------------
# Dispatcher, mapping, decisions
# --------------------------------------------------------------------------------------------------


def _manifest(**overrides: Any) -> ModelManifest:
    data: dict[str, Any] = {
        "name": "line",
        "task": "segment",
        "output_format": "seg-logits",
        "input": {"width": 30, "height": 20},
        "classes": ["background", "scratch", "dent"],
        "background_class": 0,
    }
    data.update(overrides)
    return ModelManifest.parse(data)


class DoubleScale:
    """A 2× upscale from model input to original image (what imaging's Transform does for a resize)."""

    def boxes_to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        return boxes_xyxy * 2

    def mask_to_original(self, mask: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)


def test_postprocess_seg_logits_with_mapper() -> None:
    outputs = [_seg_logits(THREE_BLOBS)[None]]
    plain = postprocess(_manifest(), outputs)
    mapped = postprocess(_manifest(), outputs, mapper=DoubleScale())
    np.testing.assert_array_equal(mapped.boxes, plain.boxes * 2)
    assert mapped.masks is not None and mapped.masks.shape == (3, 40, 60)
    np.testing.assert_array_equal(mapped.areas, plain.areas * 4)
    empty = postprocess(_manifest(), [_seg_logits([])], mapper=DoubleScale())
    assert empty.masks is not None and empty.masks.shape == (0, 40, 60)


def test_postprocess_logits_flag_for_probabilities() -> None:
    probs = np.array([[0.1, 0.6, 0.3]], dtype=np.float32)
    common = {"task": "classify", "output_format": "logits", "classes": ["ok", "scratch", "dent"]}
    softmaxed = postprocess(_manifest(**common), [probs])
    as_is = postprocess(_manifest(**common, extra={"outputs_are_probabilities": True}), [probs])
    np.testing.assert_allclose(as_is.scores, [0.6, 0.3, 0.1], rtol=1e-6)
    np.testing.assert_allclose(softmaxed.scores, _softmax_by_hand([0.6, 0.3, 0.1]), rtol=1e-6)


def test_postprocess_ignores_a_trailing_embedding_output() -> None:
    manifest = _manifest(
        task="detect", output_format="yolo-detect", classes=["scratch", "dent"], background_class=None
    )
    result = postprocess(manifest, [_detect_rows()[None], np.ones((1, 16))])
    assert result.class_ids.tolist() == [0, 1, 1]


def test_postprocess_binary_seg_logits_maps_to_the_foreground_class() -> None:
    logits = np.full((1, 1, 20, 30), -6.0, dtype=np.float32)
    logits[..., 3:5, 3:5] = 6.0
    result = postprocess(_manifest(classes=["background", "crack"], background_class=0), [logits])
    assert result.class_ids.tolist() == [1]


def _instances(class_ids: list[int], scores: list[float], areas: list[int] | None = None) -> Instances:
    n = len(class_ids)
    sides = np.sqrt(np.array(areas if areas is not None else [100] * n, dtype=np.float32))
    boxes = np.stack([np.zeros(n), np.zeros(n), sides, sides], axis=1).astype(np.float32)
    return Instances(boxes, np.array(scores, np.float32), np.array(class_ids, np.int64))


CLASSIFY = {"task": "classify", "output_format": "logits", "classes": ["ok", "scratch", "good"]}


@pytest.mark.parametrize(
    ("overrides", "instances", "decision"),
    [
        # classification: the top class decides
        (CLASSIFY, _instances([0, 1], [0.7, 0.3]), Decision.ok),
        (CLASSIFY, _instances([1, 0], [0.6, 0.4]), Decision.defect),
        (CLASSIFY, _instances([2], [0.9]), Decision.ok),  # "good" is an OK name by default
        ({**CLASSIFY, "extra": {"ok_classes": ["pass"]}}, _instances([0], [0.9]), Decision.defect),
        (
            {**CLASSIFY, "classes": ["PASS", "fail"], "extra": {"ok_classes": ["pass"]}},
            _instances([0], [0.9]),
            Decision.ok,
        ),
        (CLASSIFY, Instances.empty(), Decision.defect),  # no answer → fail-safe
        # segmentation: any defect instance passing the thresholds
        ({}, _instances([1], [0.9]), Decision.defect),
        ({}, _instances([1], [0.1]), Decision.ok),  # below thresholds.score (0.25)
        ({}, _instances([0], [0.9]), Decision.ok),  # background class is never a defect
        ({}, Instances.empty(), Decision.ok),
        ({"thresholds": {"min_area": 50}}, _instances([2, 1], [0.9, 0.9], [25, 36]), Decision.ok),
        ({"thresholds": {"min_area": 50}}, _instances([2, 1], [0.9, 0.9], [25, 64]), Decision.defect),
        ({"extra": {"defect_classes": ["dent"]}}, _instances([1], [0.9]), Decision.ok),
        ({"extra": {"defect_classes": ["dent"]}}, _instances([2], [0.9]), Decision.defect),
    ],
)
def test_decide_ok_defect(overrides: dict[str, Any], instances: Instances, decision: Decision) -> None:
    manifest = _manifest(**overrides)
    assert manifest.task in (Task.classify, Task.segment)
    assert decide_ok_defect(instances, manifest) == decision


def test_every_box_convention_is_pixel_edge() -> None:
    # a single pixel at (col 4, row 7) is the box (4, 7, 5, 8): width = height = 1 pixel
    logits = _seg_logits([(1, slice(7, 8), slice(4, 5))])
    result = seg_logits_to_instances(logits, thresholds=Thresholds(), background_class=0)
    assert result.boxes.tolist() == [[4, 7, 5, 8]]
    assert list(itertools.chain(result.areas.tolist())) == [1.0]


def test_postprocess_yolo_segment_accepts_protos_first() -> None:
    rows, protos = _segment_case()
    manifest = _manifest(
        output_format="yolo-segment",
        input={"width": 32, "height": 32},
        classes=["a", "b"],
        background_class=None,
    )
    first = postprocess(manifest, [rows[None], protos[None]])
    swapped = postprocess(manifest, [protos[None], rows[None]])
    assert first.masks is not None and swapped.masks is not None
    np.testing.assert_array_equal(first.masks, swapped.masks)
    np.testing.assert_array_equal(first.boxes, swapped.boxes)


def test_seg_logits_ties_go_to_the_first_class_as_argmax() -> None:
    """The winning class per pixel is numpy's argmax over the class axis, first class on a tie."""
    logits = np.zeros((3, 6, 6), dtype=np.float32)
    logits[1, :, :3] = 4.0  # class 1 wins the west
    logits[2, :, :3] = 4.0  # … tied with class 2: the first, class 1, takes it
    logits[2, :, 3:] = 5.0  # class 2 alone in the east
    out = seg_logits_to_instances(
        logits, thresholds=Thresholds(score=0.1, mask=0.4, min_area=1), background_class=0
    )
    assert sorted(out.class_ids.tolist()) == [1, 2]
    masks = {int(c): m for c, m in zip(out.class_ids, out.masks, strict=True)}  # type: ignore[arg-type]
    assert masks[1][:, :3].all() and not masks[1][:, 3:].any()
    assert masks[2][:, 3:].all() and not masks[2][:, :3].any()
    # a tied pixel's probability: e^4 / (1 + 2 e^4) (the two winners share the mass)
    assert out.scores[out.class_ids == 1][0] == pytest.approx(np.exp(4) / (1 + 2 * np.exp(4)), rel=1e-6)
