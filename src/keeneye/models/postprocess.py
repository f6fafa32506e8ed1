"""Raw model outputs → :class:`~keeneye.domain.Instances`, one function per output format.

Pure numpy + OpenCV; no ONNX Runtime here. Every function takes the outputs of **one** image
(without the batch axis; a leading axis of size 1 is accepted and dropped) and returns instances in
**model-input pixel coordinates**. :func:`postprocess` dispatches on the manifest and, given a
:class:`CoordinateMapper` (the imaging ``Transform``), maps boxes and masks to the original image.

Box convention: ``x1, y1, x2, y2`` in pixel-edge coordinates — pixel ``(col, row)`` covers
``[col, col+1) × [row, row+1)``, so a mask blob spanning columns 3..7 has ``x1 = 3, x2 = 8`` and a
box's width is its pixel count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.domain import BoolArray, Decision, FloatArray, Instances, IntArray, InvalidInput, Task
from keeneye.models.manifest import ModelManifest, Thresholds

log = logging.getLogger(__name__)

DEFAULT_OK_CLASSES = ("ok", "good", "normal")
# Ultralytics keeps at most this many candidates before NMS; bounds the O(n²) worst case.
MAX_NMS_CANDIDATES = 30_000

AnyArray = npt.NDArray[Any]


class CoordinateMapper(Protocol):
    """Maps model-input coordinates back to the original image (``imaging.Transform`` fits this)."""

    def boxes_to_original(self, boxes_xyxy: FloatArray) -> FloatArray: ...

    def mask_to_original(self, mask: BoolArray) -> BoolArray: ...


# --------------------------------------------------------------------------------------------------
# Small numeric helpers
# --------------------------------------------------------------------------------------------------


def softmax(x: AnyArray, axis: int = -1) -> FloatArray:
    """Numerically stable softmax (subtracts the max first), float32."""
    xf: FloatArray = np.asarray(x, dtype=np.float32)
    e: FloatArray = np.exp(xf - xf.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def sigmoid(x: AnyArray) -> FloatArray:
    """Logistic function without overflow warnings for large negative inputs."""
    xf: FloatArray = np.asarray(x, dtype=np.float32)
    out: FloatArray = (0.5 * (1.0 + np.tanh(0.5 * xf))).astype(np.float32, copy=False)
    return out


def nms(boxes: AnyArray, scores: AnyArray, iou_threshold: float) -> IntArray:
    """Greedy non-maximum suppression; indices of kept boxes, highest score first.

    A box is suppressed when its IoU with a higher-scoring kept box is **above** ``iou_threshold``
    (the torchvision / Ultralytics convention). One vectorised IoU row per kept box.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    order = np.argsort(-np.asarray(scores), kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: AnyArray, scores: AnyArray, class_ids: AnyArray, iou_threshold: float) -> IntArray:
    """Class-wise NMS: boxes of different classes never suppress each other.

    Shifts each class's boxes by ``class_id · (max coordinate + 1)`` so classes cannot overlap, then
    runs one :func:`nms` — the torchvision trick, one pass instead of one per class.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    offset = float(np.abs(boxes).max()) + 1.0
    shifted = boxes + (np.asarray(class_ids, dtype=np.float32) * offset)[:, None]
    return nms(shifted, scores, iou_threshold)


def cxcywh_to_xyxy(boxes: AnyArray) -> FloatArray:
    boxes = np.asarray(boxes, dtype=np.float32)
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def _drop_batch_axis(array: AnyArray, rank: int, what: str) -> AnyArray:
    array = np.asarray(array)
    if array.ndim == rank + 1 and array.shape[0] == 1:
        first: AnyArray = array[0]
        return first
    if array.ndim != rank:
        raise InvalidInput("bad_model_output", f"{what} has shape {array.shape}, expected rank {rank}")
    return array


# --------------------------------------------------------------------------------------------------
# logits (classification)
# --------------------------------------------------------------------------------------------------


def classify_logits(
    logits: AnyArray, *, image_size: tuple[int, int], top_k: int = 3, probabilities: bool = False
) -> Instances:
    """``(C,)`` logits → ``top_k`` instances sorted by probability, each boxed as the whole image.

    ``image_size`` is ``(height, width)`` of the model input. ``probabilities=True`` (manifest
    ``extra.outputs_are_probabilities``) skips the softmax for models that end in one already.
    """
    row = _drop_batch_axis(logits, 1, "logits output")
    probs = np.asarray(row, dtype=np.float32) if probabilities else softmax(row)
    k = min(top_k, probs.shape[0])
    # argpartition keeps this O(C) for big heads; only the k winners are sorted.
    top = np.argpartition(-probs, k - 1)[:k] if k < probs.shape[0] else np.arange(probs.shape[0])
    top = top[np.argsort(-probs[top], kind="stable")]
    h, w = image_size
    return Instances(
        boxes=np.tile(np.array([0, 0, w, h], dtype=np.float32), (k, 1)),
        scores=probs[top].astype(np.float32, copy=False),
        class_ids=top.astype(np.int64),
        class_probabilities=probs,
    )


# --------------------------------------------------------------------------------------------------
# seg-logits (semantic segmentation → connected-component instances)
# --------------------------------------------------------------------------------------------------


def _resize_chw(array: FloatArray, size: tuple[int, int]) -> FloatArray:
    """Bilinear-resize a (C, H, W) float array to (C, *size) with cv2 (HWC, ≤ 512 channels per call)."""
    h, w = size
    planes = [
        cv2.resize(
            np.ascontiguousarray(array[i : i + 512].transpose(1, 2, 0)),
            (w, h),
            interpolation=cv2.INTER_LINEAR,
        )
        for i in range(0, array.shape[0], 512)
    ]
    return np.concatenate([p.reshape(h, w, -1) for p in planes], axis=2).transpose(2, 0, 1)


def nothing_confident(
    arr: FloatArray, thresholds: Thresholds, background_class: int | None, class_ids: Sequence[int] | None
) -> bool:
    """The cheap OK screen of :func:`seg_logits_to_instances` (most line frames stop here): True when
    no pixel can make an instance, decided on logit margins without a softmax or a resize.

    A class's softmax probability is at most ``sigmoid(its logit − the background logit)``, and a
    bilinear resize never raises a pixel's margin above the largest one; so when every foreground
    margin is below ``logit(thresholds.mask)``, no pixel reaches the mask threshold and the answer is
    exactly "no instances". Only for a multi-class output with a background channel."""
    if arr.shape[0] < 2 or background_class is None or not 0.0 < thresholds.mask < 1.0:
        return False
    ids = list(class_ids) if class_ids is not None else list(range(arr.shape[0]))
    if background_class not in ids or len(ids) != arr.shape[0]:
        return False
    bg = ids.index(background_class)
    # channel by channel: no copy of the other channels (np.delete) on a full-resolution map
    margin = max(float((arr[c] - arr[bg]).max()) for c in range(arr.shape[0]) if c != bg)
    return margin < _logit(thresholds.mask)


def _channel_argmax(probs: FloatArray) -> tuple[npt.NDArray[np.integer], FloatArray]:
    """``probs.argmax(axis=0)`` and the winning values, plane by plane: numpy's argmax over the
    first axis walks a C-long strided row per pixel (seconds on a 2048² map); ties go to the first
    channel, as with argmax."""
    best = probs[0].copy()
    winner = np.zeros(best.shape, dtype=np.uint8 if probs.shape[0] <= 256 else np.int64)
    for c in range(1, probs.shape[0]):
        better = probs[c] > best
        np.copyto(winner, c, where=better)
        np.copyto(best, probs[c], where=better)
    return winner, best


def seg_logits_to_instances(
    logits: AnyArray,
    *,
    thresholds: Thresholds,
    background_class: int | None = None,
    class_ids: Sequence[int] | None = None,
    image_size: tuple[int, int] | None = None,
) -> Instances:
    """``(C, H, W)`` per-pixel logits → one instance per 8-connected blob of each non-background class.

    * ``C > 1``: softmax over classes; a pixel belongs to the winning class when that class's
      probability is ≥ ``thresholds.mask``. ``C == 1``: binary, sigmoid of the single channel ≥
      ``thresholds.mask``; the blob's class is ``class_ids[0]`` (default 0).
    * score = mean winning-class probability inside the blob; blobs below ``thresholds.score`` or
      with fewer than ``thresholds.min_area`` pixels are dropped; at most ``max_instances`` kept,
      best first.
    * ``image_size`` (height, width): logits of another size are bilinearly resized to it first
      (models that predict at 1/4 resolution); boxes are pixel-edge, ``x2 = last column + 1``.
    """
    arr = np.asarray(_drop_batch_axis(logits, 3, "seg-logits output"), dtype=np.float32)
    if nothing_confident(arr, thresholds, background_class, class_ids):
        height, width = image_size if image_size is not None else arr.shape[1:]
        return Instances.empty((int(height), int(width)))
    if image_size is not None and arr.shape[1:] != tuple(image_size):
        arr = _resize_chw(arr, image_size)
    height, width = arr.shape[1:]
    if arr.shape[0] == 1:
        best_prob = sigmoid(arr[0])
        winner: npt.NDArray[np.integer] = np.zeros((height, width), dtype=np.uint8)
        ids = list(class_ids) if class_ids is not None else [0]
    else:
        winner, best_prob = _channel_argmax(softmax(arr, axis=0))
        ids = list(class_ids) if class_ids is not None else list(range(arr.shape[0]))
    confident = best_prob >= thresholds.mask

    boxes: list[FloatArray] = []
    scores: list[FloatArray] = []
    classes: list[IntArray] = []
    masks: list[BoolArray] = []
    flat_prob = best_prob.ravel()
    for channel, cls in enumerate(ids):
        if cls == background_class:
            continue
        region = (confident & (winner == channel)).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8, ltype=cv2.CV_32S)
        if n <= 1:
            continue
        area = stats[1:, cv2.CC_STAT_AREA].astype(np.float32)
        prob_sum = np.bincount(labels.ravel(), weights=flat_prob, minlength=n)[1:]
        score = (prob_sum / area).astype(np.float32)
        good = np.flatnonzero((score >= thresholds.score) & (area >= thresholds.min_area))
        if good.size == 0:
            continue
        x, y = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
        w, h = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]
        box = np.stack([x, y, x + w, y + h], axis=1).astype(np.float32)
        boxes.append(box[good])
        scores.append(score[good])
        classes.append(np.full(good.size, cls, dtype=np.int64))
        masks.append(labels[None] == (good + 1)[:, None, None])
    if not scores:
        return Instances.empty((height, width))
    all_scores = np.concatenate(scores)
    order = np.argsort(-all_scores, kind="stable")[: thresholds.max_instances]
    return Instances(
        boxes=np.concatenate(boxes)[order],
        scores=all_scores[order],
        class_ids=np.concatenate(classes)[order],
        masks=np.concatenate(masks)[order],
    )


# --------------------------------------------------------------------------------------------------
# Ultralytics YOLO detect / segment
# --------------------------------------------------------------------------------------------------


def _yolo_rows(output: AnyArray, rows: int) -> AnyArray:
    """Return the head as ``(rows, A)``, accepting the transposed ``(A, rows)`` layout too."""
    out = _drop_batch_axis(output, 2, "YOLO output0")
    if out.shape[0] == rows:
        return out
    if out.shape[1] == rows:
        return out.T  # (A, rows) exports; a view, no copy
    raise InvalidInput(
        "bad_model_output",
        f"YOLO output0 has shape {out.shape}; expected ({rows}, anchors) for this manifest's classes",
    )


def _yolo_candidates(
    head: AnyArray, num_classes: int, thresholds: Thresholds
) -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
    """Best class per anchor → score filter → pre-NMS cap → class-wise NMS → max_instances.

    Returns ``(boxes_xyxy, scores, class_ids, anchor_indices)`` of the survivors, best first.
    """
    class_scores = head[4 : 4 + num_classes]
    best = class_scores.argmax(axis=0)
    score = np.take_along_axis(class_scores, best[None], axis=0)[0].astype(np.float32, copy=False)
    anchors = np.flatnonzero(score >= thresholds.score)
    if anchors.size > MAX_NMS_CANDIDATES:
        anchors = anchors[np.argsort(-score[anchors], kind="stable")[:MAX_NMS_CANDIDATES]]
    boxes = cxcywh_to_xyxy(head[:4, anchors].T)
    keep = batched_nms(boxes, score[anchors], best[anchors], thresholds.iou)[: thresholds.max_instances]
    return boxes[keep], score[anchors][keep], best[anchors][keep].astype(np.int64), anchors[keep]


def yolo_detect(output: AnyArray, *, num_classes: int, thresholds: Thresholds) -> Instances:
    """Ultralytics detect head ``(4 + nc, A)`` (cx, cy, w, h in input pixels, then class scores,
    no objectness) → NMS-ed boxes. Boxes below ``thresholds.min_area`` (w·h) are dropped."""
    head = _yolo_rows(output, 4 + num_classes)
    boxes, scores, classes, _ = _yolo_candidates(head, num_classes, thresholds)
    result = Instances(boxes=boxes, scores=scores, class_ids=classes)
    if thresholds.min_area > 0:
        result = result.filter(result.areas >= thresholds.min_area)
    return result


def _logit(p: float) -> float:
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    return float(np.log(p / (1.0 - p)))


def yolo_segment(
    output: AnyArray,
    protos: AnyArray,
    *,
    num_classes: int,
    thresholds: Thresholds,
    image_size: tuple[int, int],
) -> Instances:
    """Ultralytics segment head ``(4 + nc + nm, A)`` + prototypes ``(nm, mh, mw)`` → boxes and masks.

    Detection as in :func:`yolo_detect`; each survivor's mask is ``sigmoid(coeffs @ protos)``,
    bilinearly upsampled to ``image_size`` (height, width), zeroed outside its box (pixel ``c`` is
    inside when ``x1 ≤ c < x2``, as Ultralytics crops) and thresholded at ``thresholds.mask``.
    """
    proto = np.asarray(_drop_batch_axis(protos, 3, "YOLO protos (output1)"), dtype=np.float32)
    nm, mh, mw = proto.shape
    head = _yolo_rows(output, 4 + num_classes + nm)
    boxes, scores, classes, anchors = _yolo_candidates(head, num_classes, thresholds)
    h, w = image_size
    if anchors.size == 0:
        return Instances.empty((h, w))
    coeffs = np.asarray(head[4 + num_classes :, anchors].T, dtype=np.float32)  # (n, nm)
    mask_logits = (coeffs @ proto.reshape(nm, -1)).reshape(-1, mh, mw)
    # Threshold the upsampled logits against logit(t): same decision as sigmoid(x) > t, without a
    # full-resolution sigmoid.
    cut = _logit(thresholds.mask)
    cols = np.arange(w, dtype=np.float32)
    rows = np.arange(h, dtype=np.float32)
    masks = np.empty((anchors.size, h, w), dtype=np.bool_)
    for i in range(anchors.size):
        up = cv2.resize(mask_logits[i], (w, h), interpolation=cv2.INTER_LINEAR)
        x1, y1, x2, y2 = boxes[i]
        inside = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]
        np.logical_and(up > cut, inside, out=masks[i])
    result = Instances(boxes=boxes, scores=scores, class_ids=classes, masks=masks)
    if thresholds.min_area > 0:
        result = result.filter(result.areas >= thresholds.min_area)
    return result


# --------------------------------------------------------------------------------------------------
# Dispatcher and decision
# --------------------------------------------------------------------------------------------------


def _foreground_ids(manifest: ModelManifest, channels: int) -> list[int]:
    """Class id of each output channel; a single-channel (binary) output is the non-background class."""
    if channels != 1:
        return list(range(channels))
    candidates = [c.id for c in manifest.classes if c.id != manifest.background_class]
    return [candidates[0] if candidates else 0]


def postprocess(
    manifest: ModelManifest, outputs: Sequence[AnyArray], mapper: CoordinateMapper | None = None
) -> Instances:
    """The outputs of one image (head outputs in order, as ``OnnxModel`` returns them; extra
    trailing outputs such as an embedding are ignored) → instances, mapped to the original image
    when ``mapper`` is given."""
    fmt = manifest.output_format
    th = manifest.thresholds
    size = (manifest.input.height, manifest.input.width)
    nc = len(manifest.classes)
    if fmt == "logits":
        probabilities = bool(manifest.extra.get("outputs_are_probabilities", False))
        result = classify_logits(outputs[0], image_size=size, top_k=th.top_k, probabilities=probabilities)
    elif fmt == "seg-logits":
        channels = _drop_batch_axis(outputs[0], 3, "seg-logits output").shape[0]
        result = seg_logits_to_instances(
            outputs[0],
            thresholds=th,
            background_class=manifest.background_class,
            class_ids=_foreground_ids(manifest, channels),
            image_size=size,
        )
    elif fmt == "yolo-detect":
        result = yolo_detect(outputs[0], num_classes=nc, thresholds=th)
    elif fmt == "yolo-segment":
        if len(outputs) < 2:
            raise InvalidInput("bad_model_output", "yolo-segment needs two outputs (detections, protos)")
        dets, protos = outputs[0], outputs[1]
        if np.ndim(dets) > np.ndim(protos):  # prototypes first in the file: tell them apart by rank
            dets, protos = protos, dets
        result = yolo_segment(dets, protos, num_classes=nc, thresholds=th, image_size=size)
    else:  # pragma: no cover - the manifest's Literal makes this unreachable
        raise InvalidInput("bad_manifest", f"unknown output_format {fmt!r}")
    return result if mapper is None else map_to_original(result, mapper)


def map_to_original(instances: Instances, mapper: CoordinateMapper) -> Instances:
    """Boxes and masks from model-input to original-image coordinates."""
    boxes = np.asarray(mapper.boxes_to_original(instances.boxes), dtype=np.float32).reshape(-1, 4)
    masks = instances.masks
    if masks is not None:
        if len(masks):
            masks = np.stack([np.asarray(mapper.mask_to_original(m), dtype=np.bool_) for m in masks])
        else:
            # Learn the original size from mapping an empty input-sized mask.
            probe = np.asarray(mapper.mask_to_original(np.zeros(masks.shape[1:], dtype=np.bool_)))
            masks = np.zeros((0, *probe.shape), dtype=np.bool_)
    return Instances(
        boxes=boxes,
        scores=instances.scores,
        class_ids=instances.class_ids,
        masks=masks,
        class_probabilities=instances.class_probabilities,
    )


def ok_class_names(manifest: ModelManifest) -> frozenset[str]:
    """Class names that mean "no defect": ``extra.ok_classes`` or ok / good / normal."""
    names = manifest.extra.get("ok_classes", DEFAULT_OK_CLASSES)
    return frozenset(str(n).lower() for n in names)


def defect_class_ids(manifest: ModelManifest) -> list[int]:
    """The classes that make a part DEFECT: ``extra.defect_classes`` when the manifest names them, else
    every class that is neither an OK class (``ok_class_names``) nor the background."""
    if "defect_classes" in manifest.extra:
        wanted = {str(n).lower() for n in manifest.extra["defect_classes"]}
        return [c.id for c in manifest.classes if c.name.lower() in wanted]
    ok = ok_class_names(manifest)
    return [c.id for c in manifest.classes if c.name.lower() not in ok and c.id != manifest.background_class]


def decide_ok_defect(instances: Instances, manifest: ModelManifest) -> Decision:
    """Image-level OK / DEFECT.

    * classify: DEFECT unless the top class is an OK class (``ok_class_names``).
    * detect / segment: DEFECT when any instance of a defect class has score ≥ ``thresholds.score``
      and area ≥ ``thresholds.min_area``. Defect classes are ``extra.defect_classes`` when given,
      otherwise every class that is neither an OK class nor ``background_class``.
    * No answer at all for a classifier → DEFECT (fail-safe: a false reject beats a missed defect).
    """
    ok = ok_class_names(manifest)
    names = manifest.class_names
    if manifest.task == Task.classify:
        if len(instances) == 0:
            return Decision.defect
        top = int(instances.class_ids[int(np.argmax(instances.scores))])
        return Decision.ok if names[top].lower() in ok else Decision.defect
    defect_ids = defect_class_ids(manifest)
    if len(instances) == 0 or not defect_ids:
        return Decision.ok
    th = manifest.thresholds
    hit = (
        np.isin(instances.class_ids, defect_ids)
        & (instances.scores >= th.score)
        & (instances.areas >= th.min_area)
    )
    return Decision.defect if bool(hit.any()) else Decision.ok
