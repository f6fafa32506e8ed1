"""Pure geometry shared by every package: box and mask IoU, polygons ↔ masks, COCO RLE, outlines,
and instance matching by IoU. numpy + OpenCV only (pycocotools when installed); no I/O.

Conventions (one for all of keeneye):

* boxes are ``x1, y1, x2, y2`` in pixel-edge coordinates — pixel ``(col, row)`` covers
  ``[col, col+1) × [row, row+1)``;
* a *polygon* is COCO's flat ``[x1, y1, x2, y2, …]`` in pixel-edge coordinates; an instance may have
  several (``Polygons``);
* an *outline* is what an answer shows: ``[[x, y], …]`` through pixel indices (:func:`mask_outline`);
  read back (``Answer.from_stored``) it becomes a polygon 0.5 px on, on pixel centres in edge
  coordinates;
* masks are (H, W) bool arrays.

Matching compares :class:`~keeneye.domain.Instances` of one class vocabulary (``class_ids`` index the
same list on both sides): mask IoU when both sides have masks, polygon IoU when both have polygons,
box IoU otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.domain import BoolArray, FloatArray, Instances, Outline, Polygons

AnyArray = npt.NDArray[Any]

IOU_THRESHOLD = 0.5  # an instance counts as found at IoU ≥ 0.5 (COCO's AP50 criterion)
MAX_CROP_PIXELS = 16_000_000  # polygon IoU is computed on at most this many pixels (scaled down above)


class Rle(TypedDict):
    """COCO run-length encoding: ``counts`` compressed (str) or uncompressed (list)."""

    size: list[int]
    counts: str | list[int]


# --------------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------------


def box_iou(a: AnyArray, b: AnyArray) -> FloatArray:
    """Pairwise IoU of ``a (N, 4)`` and ``b (M, 4)`` xyxy boxes → ``(N, M)``; empty boxes give 0."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou: FloatArray = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def mask_iou(a: AnyArray, b: AnyArray) -> float:
    """IoU of two same-sized masks; two empty masks give 0."""
    ma, mb = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = int((ma | mb).sum())
    return int((ma & mb).sum()) / union if union else 0.0


def polygon_iou(a: Polygons, b: Polygons) -> float:
    """Mask IoU of two instances given as COCO polygons, rasterised on the pair's bounding crop."""
    xs = [v for p in (*a, *b) for v in p[0::2]]
    ys = [v for p in (*a, *b) for v in p[1::2]]
    if not xs or not ys:
        return 0.0
    x0, y0 = math.floor(min(xs)), math.floor(min(ys))
    w, h = max(1, math.ceil(max(xs)) - x0), max(1, math.ceil(max(ys)) - y0)
    scale = min(1.0, math.sqrt(MAX_CROP_PIXELS / (w * h)))  # IoU is scale-free; memory is not

    def raster(polys: Polygons) -> BoolArray:
        shifted = [[(v - (x0 if i % 2 == 0 else y0)) * scale for i, v in enumerate(p)] for p in polys]
        return polygons_to_mask(shifted, max(1, math.ceil(h * scale)), max(1, math.ceil(w * scale)))

    return mask_iou(raster(a), raster(b))


def instance_iou(a: Instances, b: Instances) -> npt.NDArray[np.float64]:
    """Pairwise IoU ``(len(a), len(b))`` of same-class instances (0 across classes): masks when both
    sides have them, polygons when both have them, boxes otherwise. Disjoint boxes are 0 without
    rasterising (disjoint boxes hold disjoint shapes)."""
    iou = box_iou(a.boxes, b.boxes).astype(np.float64)
    same = a.class_ids[:, None] == b.class_ids[None, :]
    iou[~same] = 0.0
    masks = a.masks is not None and b.masks is not None
    polygons = a.polygons is not None and b.polygons is not None
    if not masks and not polygons:
        return iou
    for i, j in zip(*np.nonzero(iou > 0), strict=True):
        if a.masks is not None and b.masks is not None:
            iou[i, j] = mask_iou(a.masks[i], b.masks[j])
        elif a.polygons is not None and b.polygons is not None and a.polygons[i] and b.polygons[j]:
            iou[i, j] = polygon_iou(a.polygons[i], b.polygons[j])
    return iou


# --------------------------------------------------------------------------------------------------
# Instance matching
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchCounts:
    tp: int
    fp: int
    fn: int


def match_instances(
    truth: Instances, predicted: Instances, iou_threshold: float = IOU_THRESHOLD
) -> MatchCounts:
    """Greedy COCO-style matching: predictions by descending score each take the unmatched truth of
    the same class with the highest IoU ≥ ``iou_threshold``. Unmatched predictions are false
    positives, unmatched truths false negatives."""
    if not len(truth) or not len(predicted):
        return MatchCounts(0, len(predicted), len(truth))
    iou = instance_iou(truth, predicted)
    matched = np.zeros(len(truth), dtype=bool)
    tp = 0
    for j in np.argsort(-predicted.scores.astype(np.float64), kind="stable"):
        candidates = np.where(matched, -1.0, iou[:, j])
        i = int(np.argmax(candidates))
        if candidates[i] >= iou_threshold:
            matched[i] = True
            tp += 1
    return MatchCounts(tp, len(predicted) - tp, len(truth) - tp)


def mean_pair_iou(a: Instances, b: Instances) -> float:
    """Greedy one-to-one pairing of same-class instances (``b`` by descending score takes the free
    ``a`` of highest IoU > 0); the mean IoU over ``max(len(a), len(b))``, so a missing or extra
    instance counts 0. Two empty sets agree fully (1.0)."""
    if not len(a) and not len(b):
        return 1.0
    if not len(a) or not len(b):
        return 0.0
    iou = instance_iou(a, b)
    free = set(range(len(a)))
    total = 0.0
    for j in sorted(range(len(b)), key=lambda k: -float(b.scores[k])):
        best, best_iou = -1, 0.0
        for i in free:
            if iou[i, j] > best_iou:
                best, best_iou = i, float(iou[i, j])
        if best >= 0:
            free.discard(best)
            total += best_iou
    return total / max(len(a), len(b))


# --------------------------------------------------------------------------------------------------
# Polygons, outlines and masks
# --------------------------------------------------------------------------------------------------


def mask_outline(mask: AnyArray, tolerance: float = 1.0) -> Outline:
    """The outline of the largest region of a mask, simplified, as ``[[x, y], …]`` in pixels."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    largest = max(contours, key=cv2.contourArea)
    approx = cv2.approxPolyDP(largest, tolerance, True)
    return [[float(x), float(y)] for x, y in approx.reshape(-1, 2)]


def polygons_box(polygons: Polygons) -> tuple[float, float, float, float]:
    """The ``x1, y1, x2, y2`` bounds of COCO polygons."""
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return (min(xs), min(ys), max(xs), max(ys))


def mask_to_polygons(mask: AnyArray, min_points: int = 3) -> list[list[float]]:
    """Outer contours of a mask as COCO polygons ``[x1, y1, x2, y2, …]`` in pixel-edge coordinates
    (pixel ``(x, y)`` covers ``[x, x+1) × [y, y+1)``, as COCO tools rasterise them).

    Contours are traced on a 2× nearest-neighbour upscale so the outline runs a quarter pixel inside
    the boundary pixels' edges instead of through their centres; through the centres, COCO
    rasterisation loses half of every boundary pixel (IoU ≈ 0.85 on a 128 px object instead of ≈ 1).
    """
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys: list[list[float]] = []
    for c in contours:
        if len(c) < min_points:
            continue
        pts = (c.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
        polys.append([round(float(v), 2) for v in pts.reshape(-1)])
    return polys


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> BoolArray:
    """Rasterise COCO polygons; pycocotools when installed (the mAP reference), else OpenCV."""
    valid = [list(map(float, p)) for p in polygons if len(p) >= 6]
    if not valid:
        return np.zeros((height, width), dtype=bool)
    try:
        from pycocotools import mask as mask_utils  # optional extra, not a cycle
    except ImportError:  # pragma: no cover - depends on the installed extra
        canvas = np.zeros((height, width), dtype=np.uint8)
        # OpenCV fills pixels whose centres the outline passes through: shift edge → centre coordinates.
        pts = [np.round(np.asarray(p, dtype=np.float64).reshape(-1, 2) - 0.5).astype(np.int32) for p in valid]
        cv2.fillPoly(canvas, pts, 1)
        return canvas.astype(bool)
    rles = mask_utils.frPyObjects(valid, height, width)
    decoded = mask_utils.decode(mask_utils.merge(rles))
    return np.asarray(decoded, dtype=bool)


# --------------------------------------------------------------------------------------------------
# COCO RLE codec (column-major run lengths, starting with a run of zeros), as pycocotools writes it
# --------------------------------------------------------------------------------------------------


def rle_counts(mask: AnyArray) -> list[int]:
    """Run lengths of a 2-D mask in column-major order, the first run counting zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs: list[int] = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def counts_to_string(counts: Sequence[int]) -> str:
    """COCO's compact RLE string (LEB128-like, 5 bits per char, deltas from two runs back)."""
    out: list[str] = []
    for i, raw in enumerate(counts):
        x = int(raw) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_counts(s: str) -> list[int]:
    """Inverse of :func:`counts_to_string`."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = 0
        k = 0
        more = True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle(mask: AnyArray) -> Rle:
    """A compressed COCO RLE ``{"size": [h, w], "counts": str}``."""
    h, w = mask.shape[:2]
    return {"size": [int(h), int(w)], "counts": counts_to_string(rle_counts(mask))}


def decode_rle(rle: Mapping[str, Any]) -> BoolArray:
    """Decode compressed (string) or uncompressed (list) COCO RLE to an (h, w) bool mask."""
    h, w = (int(v) for v in rle["size"])
    counts: Any = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != h * w:
        raise ValueError(f"RLE counts sum to {sum(runs)}, expected {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    mask: BoolArray = flat.reshape((h, w), order="F")
    return mask
