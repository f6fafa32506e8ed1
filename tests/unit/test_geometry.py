"""keeneye.geometry: IoU of boxes, masks and polygons, outlines, the COCO RLE codec, instance matching.

Every expected value is computed by hand in the comment or the id beside it.
"""

from __future__ import annotations

import numpy as np
import pytest

from keeneye.domain import Instances, Polygons
from keeneye.geometry import (
    box_iou,
    counts_to_string,
    decode_rle,
    encode_rle,
    mask_iou,
    mask_outline,
    mask_to_polygons,
    match_instances,
    mean_pair_iou,
    polygon_iou,
    polygons_box,
    polygons_to_mask,
    rle_counts,
    string_to_counts,
)


def _instances(*items: tuple[int, list[float], float, Polygons | None]) -> Instances:
    """(class id, box, score, polygons) per instance; polygons for all or for none."""
    with_polygons = any(p is not None for *_, p in items)
    return Instances(
        boxes=np.asarray([b for _, b, _, _ in items], np.float32).reshape(-1, 4),
        scores=np.asarray([s for _, _, s, _ in items], np.float32),
        class_ids=np.asarray([c for c, *_ in items], np.int64),
        polygons=[p or [] for *_, p in items] if with_polygons else None,
    )


def _box(cls: int, x1: float, x2: float, score: float = 1.0) -> tuple[int, list[float], float, None]:
    return (cls, [x1, 0.0, x2, 10.0], score, None)


SQUARE_40 = [[0.0, 0.0, 40.0, 0.0, 40.0, 40.0, 0.0, 40.0]]
STRIP_14 = [[0.5, 0.5, 14.5, 0.5, 14.5, 39.5, 0.5, 39.5]]


# --------------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),  # overlap 5×10, union 100 + 100 − 50
        ([0, 0, 10, 10], [0, 0, 5, 5], 25 / 100),  # inside: 25 / 100
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges share no pixel
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # empty boxes: 0, not a division by zero
    ],
)
def test_box_iou(a: list[float], b: list[float], iou: float) -> None:
    assert box_iou(np.asarray([a]), np.asarray([b]))[0, 0] == pytest.approx(iou, abs=1e-6)
    assert box_iou(np.asarray([b]), np.asarray([a]))[0, 0] == pytest.approx(iou, abs=1e-6)


def test_box_iou_is_pairwise() -> None:
    assert box_iou(np.zeros((2, 4)), np.zeros((3, 4))).shape == (2, 3)


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((slice(0, 4), slice(0, 4)), (slice(0, 4), slice(0, 4)), 1.0),
        ((slice(0, 4), slice(0, 4)), (slice(0, 4), slice(2, 6)), 8 / 24),  # 4×2 shared, 16 + 16 − 8
        ((slice(0, 2), slice(0, 2)), (slice(4, 6), slice(4, 6)), 0.0),
        ((slice(0, 0), slice(0, 0)), (slice(0, 0), slice(0, 0)), 0.0),  # both empty
    ],
)
def test_mask_iou(a: tuple[slice, slice], b: tuple[slice, slice], iou: float) -> None:
    ma, mb = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    ma[a], mb[b] = True, True
    assert mask_iou(ma, mb) == pytest.approx(iou)


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        (SQUARE_40, SQUARE_40, 1.0),
        (SQUARE_40, [[0.0, 0.0, 20.0, 0.0, 20.0, 40.0, 0.0, 40.0]], 0.5),  # the left half: 800 / 1600
        (SQUARE_40, [[1000.0, 1000.0, 1040.0, 1000.0, 1040.0, 1040.0, 1000.0, 1040.0]], 0.0),
    ],
)
def test_polygon_iou(a: Polygons, b: Polygons, iou: float) -> None:
    assert polygon_iou(a, b) == pytest.approx(iou, abs=0.02)


# --------------------------------------------------------------------------------------------------
# Instance matching
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("truth", "predicted", "expected"),
    [
        pytest.param([_box(0, 0, 10)], [_box(0, 0, 20)], (1, 0, 0), id="iou-exactly-0.5-matches"),
        pytest.param([_box(0, 0, 10)], [_box(0, 0, 20.5)], (0, 1, 1), id="iou-0.49-does-not"),
        pytest.param([_box(0, 0, 10)], [_box(1, 0, 10)], (0, 1, 1), id="class-must-agree"),
        pytest.param([], [_box(0, 0, 10)], (0, 1, 0), id="nothing-there"),
        pytest.param([_box(0, 0, 10)], [], (0, 0, 1), id="nothing-found"),
        pytest.param(
            [_box(0, 0, 10)],
            [_box(0, 0, 10, 0.5), _box(0, 1, 10, 0.9)],
            (1, 1, 0),
            id="one-truth-matched-once",
        ),
        # The higher score takes the truth it overlaps most (T2, IoU .82) although T1 (.54) would have
        # let the second prediction match too: COCO's greedy rule, not an optimal assignment.
        pytest.param(
            [_box(0, 0, 10), _box(0, 4, 14)],
            [_box(0, 3, 13, 0.9), _box(0, 5, 15, 0.4)],
            (1, 1, 1),
            id="greedy-by-score",
        ),
        # Boxes agree exactly, shapes do not (a strip of the square, IoU 14/40): shapes decide.
        pytest.param(
            [(0, [0, 0, 40, 40], 1.0, SQUARE_40)],
            [(0, [0, 0, 40, 40], 1.0, STRIP_14)],
            (0, 1, 1),
            id="mask-iou-beats-box-iou",
        ),
    ],
)
def test_match_instances(
    truth: list[tuple[int, list[float], float, Polygons | None]],
    predicted: list[tuple[int, list[float], float, Polygons | None]],
    expected: tuple[int, int, int],
) -> None:
    counts = match_instances(_instances(*truth), _instances(*predicted))
    assert (counts.tp, counts.fp, counts.fn) == expected


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ([], [], 1.0),  # two empty answers agree fully
        ([_box(0, 0, 10, 0.9)], [], 0.0),
        ([_box(0, 0, 10, 0.9)], [_box(0, 0, 10, 0.8)], 1.0),
        ([_box(0, 0, 10, 0.9)], [_box(0, 5, 15, 0.8)], 1 / 3),
        ([_box(0, 0, 10, 0.9)], [_box(1, 0, 10, 0.8)], 0.0),  # another class never pairs
        ([_box(0, 0, 10, 0.9)], [_box(0, 0, 10, 0.9), _box(1, 20, 30, 0.7)], 0.5),  # (1 + 0) / 2
    ],
)
def test_mean_pair_iou(
    a: list[tuple[int, list[float], float, None]], b: list[tuple[int, list[float], float, None]], iou: float
) -> None:
    assert mean_pair_iou(_instances(*a), _instances(*b)) == pytest.approx(iou, abs=1e-6)
    assert mean_pair_iou(_instances(*b), _instances(*a)) == pytest.approx(iou, abs=1e-6)


def test_masks_decide_when_both_sides_have_them() -> None:
    left, right = np.zeros((1, 10, 10), bool), np.zeros((1, 10, 10), bool)
    left[0, :, :5], right[0, :, 2:7] = True, True  # 3 shared columns of 10, 7 in the union
    box = np.asarray([[0, 0, 10, 10]], np.float32)
    one = np.ones(1, np.float32)
    a = Instances(box, one, np.zeros(1, np.int64), masks=left)
    b = Instances(box, one, np.zeros(1, np.int64), masks=right)
    assert mean_pair_iou(a, b) == pytest.approx(30 / 70)


# --------------------------------------------------------------------------------------------------
# Outlines, polygons, masks
# --------------------------------------------------------------------------------------------------


def test_mask_outline_traces_pixel_indices() -> None:
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True  # rows 2..4, columns 3..6
    assert mask_outline(mask) == [[3.0, 2.0], [3.0, 4.0], [6.0, 4.0], [6.0, 2.0]]
    assert mask_outline(np.zeros((4, 4), bool)) == []


def test_mask_to_polygons_runs_a_quarter_pixel_inside_the_edges() -> None:
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True  # edges x 3..7, y 2..5
    assert mask_to_polygons(mask) == [[3.25, 2.25, 3.25, 4.75, 6.75, 4.75, 6.75, 2.25]]
    assert np.array_equal(polygons_to_mask(mask_to_polygons(mask), 8, 10), mask)


@pytest.mark.parametrize(
    ("polygons", "box"),
    [
        (SQUARE_40, (0.0, 0.0, 40.0, 40.0)),
        ([[1.0, 2.0, 5.0, 2.0, 3.0, 9.0], [10.0, 0.0, 12.0, 1.0, 11.0, 3.0]], (1.0, 0.0, 12.0, 9.0)),
    ],
)
def test_polygons_box(polygons: Polygons, box: tuple[float, float, float, float]) -> None:
    assert polygons_box(polygons) == box


def test_polygons_to_mask_without_polygons_is_empty() -> None:
    assert not polygons_to_mask([], 4, 5).any() and polygons_to_mask([], 4, 5).shape == (4, 5)


# --------------------------------------------------------------------------------------------------
# COCO RLE
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "counts", "text"),
    [
        ([[False, True], [True, True]], [1, 3], "13"),  # column-major F,T,T,T: 1 zero, 3 ones
        ([[True, True], [True, True]], [0, 4], "04"),  # starts with a one: an empty run of zeros first
        ([[False, False], [False, False]], [4], "4"),
        ([[False, True], [False, True]], [2, 2], "22"),
    ],
)
def test_rle(rows: list[list[bool]], counts: list[int], text: str) -> None:
    mask = np.asarray(rows)
    assert rle_counts(mask) == counts
    assert counts_to_string(counts) == text and string_to_counts(text) == counts
    assert encode_rle(mask) == {"size": [2, 2], "counts": text}
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": text}), mask)
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": counts}), mask)


def test_rle_counts_must_cover_the_mask() -> None:
    with pytest.raises(ValueError, match="RLE counts sum to 3, expected 4"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})


def test_rle_round_trip_of_a_large_mask() -> None:
    mask = np.random.default_rng(0).random((37, 53)) > 0.5
    assert np.array_equal(decode_rle(encode_rle(mask)), mask)
