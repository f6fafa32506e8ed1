"""Evaluation of an exported bundle on labelled images, through the serving code path.

Each test image is decoded, prepared with the bundle's own :class:`InputSpec`, run in ONNX Runtime
(:class:`keeneye.models.OnnxModel`) and post-processed by :func:`keeneye.models.postprocess` — so the
numbers describe what serving answers, thresholds included, not what the torch model did.

Metrics (pure functions, table-tested):

* classification: precision / recall / F1 per class and macro (zero division → 0, like scikit-learn),
  accuracy, confusion matrix;
* instances (segment / detect): COCO mAP@0.5 and mAP@[.5:.95] for boxes and masks (pycocotools);
* line-inspection (``decision.kind: ok-defect``): image-level OK/DEFECT precision and recall, DEFECT
  being the positive class (``decide_ok_defect``, exactly as serving decides);
* zones (segment without a decision, crop-health): per-class pixel IoU accumulated over the test
  set, ``mean_iou`` = mean over the disease classes present in the ground truth; ``precision`` /
  ``recall`` of the diseased area (any disease class vs none);
* subgroup metrics by metadata keys (field / crop / region, line / SKU …) and latency per image.

:class:`Evaluation` renders a markdown report and PNG plots (confusion matrix, PR curve); its JSON
(``evaluation.json``) carries the PR curves as points too, thinned to :data:`MAX_CURVE_POINTS`, with
their average precision, so a page can draw them without the images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import numpy.typing as npt

from keeneye.domain import Decision, Instances, Task
from keeneye.imaging import prepare_input
from keeneye.models import ModelBundle, OnnxModel, decide_ok_defect, ok_class_names, postprocess
from keeneye.pipelines import PipelineSpec
from keeneye.scores import (
    average_precision,
    binary_metrics,
    classification_metrics,
    confusion_matrix,
    pr_curve,
)
from keeneye.training.datasets import DatasetImage
from keeneye.training.torchdata import class_map, load_image

log = logging.getLogger(__name__)

AnyArray = npt.NDArray[Any]
# Metadata keys whose groups are reported when present (PRODUCT.md: field / crop / region, line / SKU).
SUBGROUP_KEYS = ("field_id", "crop", "region", "line_id", "sku", "camera_id", "lighting")
MAX_GROUPS = 50
# Points kept per PR curve in evaluation.json (the PNG plots every one).
MAX_CURVE_POINTS = 200


# --------------------------------------------------------------------------------------------------
# Pure metric functions (confusion matrix and P/R/F1: keeneye.scores)
# --------------------------------------------------------------------------------------------------


def instances_to_class_map(
    inst: Instances, shape: tuple[int, int], background: int = 0
) -> npt.NDArray[np.int64]:
    """Paint instance masks into a per-pixel class map, best score painted last (it wins overlaps)."""
    out = np.full(shape, background, dtype=np.int64)
    if inst.masks is None:
        return out
    for k in np.argsort(inst.scores, kind="stable"):
        out[inst.masks[k]] = int(inst.class_ids[k])
    return out


@dataclass
class ZoneAccumulator:
    """Per-class pixel intersection / union / counts accumulated over many images."""

    num_classes: int
    intersection: AnyArray = field(init=False)
    union: AnyArray = field(init=False)
    truth: AnyArray = field(init=False)
    confusion: AnyArray = field(init=False)

    def __post_init__(self) -> None:
        self.intersection = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)
        self.truth = np.zeros(self.num_classes, dtype=np.int64)
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def add(self, gt: npt.NDArray[np.int64], pred: npt.NDArray[np.int64]) -> None:
        self.confusion = self.confusion + confusion_matrix(gt.ravel(), pred.ravel(), self.num_classes)
        for c in range(self.num_classes):
            g, p = gt == c, pred == c
            self.intersection[c] += int((g & p).sum())
            self.union[c] += int((g | p).sum())
            self.truth[c] += int(g.sum())


class ZoneMetrics(TypedDict):
    """:func:`zone_metrics`: IoU per zone class and their mean, pixel precision / recall of "any zone"
    (None where undefined), and the pixel confusion matrix (truth rows, predicted columns)."""

    mean_iou: float | None
    iou_per_class: dict[str, float | None]
    pixel_precision: float | None
    pixel_recall: float | None
    confusion_matrix: list[list[int]]


def zone_metrics(
    acc: ZoneAccumulator, class_names: Sequence[str], zone_classes: Sequence[int]
) -> ZoneMetrics:
    """IoU per zone class, ``mean_iou`` over the zone classes present in the truth (None if none),
    and the precision / recall of "any zone" vs background at pixel level."""
    per_class = {
        class_names[c]: (float(acc.intersection[c] / acc.union[c]) if acc.union[c] else None)
        for c in zone_classes
    }
    present = [c for c in zone_classes if acc.truth[c] > 0]
    mean_iou = float(np.mean([acc.intersection[c] / acc.union[c] for c in present])) if present else None
    zone = np.zeros(acc.num_classes, dtype=bool)
    zone[list(zone_classes)] = True
    cm = acc.confusion
    tp = int(cm[np.ix_(zone, zone)].sum())
    fp = int(cm[np.ix_(~zone, zone)].sum())
    fn = int(cm[np.ix_(zone, ~zone)].sum())
    return {
        "mean_iou": mean_iou,
        "iou_per_class": per_class,
        "pixel_precision": tp / (tp + fp) if tp + fp else None,
        "pixel_recall": tp / (tp + fn) if tp + fn else None,
        "confusion_matrix": cm.tolist(),
    }


class _PycocoRle(TypedDict):
    """A mask as ``pycocotools.mask.encode`` returns it (compressed counts as bytes)."""

    size: list[int]
    counts: bytes


class _EvalImage(TypedDict):
    id: int
    height: int
    width: int


class _EvalTruth(TypedDict):
    """A ground-truth annotation as ``pycocotools.coco.COCO`` reads it."""

    id: int
    image_id: int
    category_id: int
    bbox: list[float]
    iscrowd: int
    segmentation: NotRequired[_PycocoRle]
    area: float


class _EvalDetection(TypedDict):
    """A detection as ``COCO.loadRes`` reads it: a mask for ``segm``, a box for ``bbox``."""

    image_id: int
    category_id: int
    score: float
    segmentation: NotRequired[_PycocoRle]
    bbox: NotRequired[list[float]]


def coco_map(
    truth: Sequence[Instances],
    predictions: Sequence[Instances],
    *,
    class_ids: Sequence[int],
    iou_type: str = "segm",
) -> dict[str, float | None]:
    """COCO mAP@[.5:.95] (``map``) and mAP@0.5 (``map50``) with pycocotools, for ``bbox`` or ``segm``.

    ``truth`` and ``predictions`` are per image, in the same (original) pixel coordinates; masks are
    needed for ``segm``. Values are None when the truth has no instance of the given classes.
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    wanted = set(int(c) for c in class_ids)
    images: list[_EvalImage] = []
    gt_anns: list[_EvalTruth] = []
    dets: list[_EvalDetection] = []

    def encode(m: AnyArray) -> _PycocoRle:
        rle: _PycocoRle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        return rle

    for image_id, (gt, pr) in enumerate(zip(truth, predictions, strict=True), start=1):
        if gt.masks is not None:
            h, w = gt.masks.shape[1:]
        elif pr.masks is not None:
            h, w = pr.masks.shape[1:]
        else:
            x2 = max([1.0, *gt.boxes[:, 2].tolist(), *pr.boxes[:, 2].tolist()])
            y2 = max([1.0, *gt.boxes[:, 3].tolist(), *pr.boxes[:, 3].tolist()])
            h, w = int(np.ceil(y2)), int(np.ceil(x2))
        images.append({"id": image_id, "height": int(h), "width": int(w)})
        for k in range(len(gt)):
            cls = int(gt.class_ids[k])
            if cls not in wanted:
                continue
            x1, y1, x2, y2 = (float(v) for v in gt.boxes[k])
            ann: _EvalTruth = {
                "id": len(gt_anns) + 1,
                "image_id": image_id,
                "category_id": cls,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "iscrowd": 0,
                "area": (x2 - x1) * (y2 - y1),
            }
            if iou_type == "segm":
                assert gt.masks is not None, "segm mAP needs ground-truth masks"
                ann["segmentation"] = encode(gt.masks[k])
                ann["area"] = float(gt.masks[k].sum())
            gt_anns.append(ann)
        for k in range(len(pr)):
            cls = int(pr.class_ids[k])
            if cls not in wanted:
                continue
            x1, y1, x2, y2 = (float(v) for v in pr.boxes[k])
            det: _EvalDetection = {"image_id": image_id, "category_id": cls, "score": float(pr.scores[k])}
            if iou_type == "segm":
                assert pr.masks is not None, "segm mAP needs predicted masks"
                det["segmentation"] = encode(pr.masks[k])
            else:
                det["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            dets.append(det)
    if not gt_anns:
        return {"map": None, "map50": None}
    if not dets:
        return {"map": 0.0, "map50": 0.0}
    gt_coco = COCO()
    gt_coco.dataset = {
        "images": images,
        "annotations": gt_anns,
        "categories": [{"id": c} for c in sorted(wanted)],
    }
    # pycocotools prints its progress and trips numpy 2's __array__ deprecation; neither is news.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        gt_coco.createIndex()
        dt_coco = gt_coco.loadRes(dets)
        ev = COCOeval(gt_coco, dt_coco, iouType=iou_type)
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    return {
        "map": float(stats[0]) if stats[0] >= 0 else None,
        "map50": float(stats[1]) if stats[1] >= 0 else None,
    }


def latency_stats(ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(ms, dtype=np.float64)
    if arr.size == 0:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0}
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "mean_ms": float(arr.mean()),
    }


# --------------------------------------------------------------------------------------------------
# Evaluating a bundle
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageResult:
    """What the model said about one test image, next to the truth."""

    image: DatasetImage
    truth: Instances  # class ids are manifest class indices
    predicted: Instances
    latency_ms: float
    true_class: int | None = None  # classification
    true_defect: bool | None = None  # ok-defect
    predicted_defect: bool | None = None
    defect_score: float = 0.0
    truth_map: npt.NDArray[np.int64] | None = None  # zones
    predicted_map: npt.NDArray[np.int64] | None = None


@dataclass
class Evaluation:
    """Scalar ``metrics`` (what gates and MLflow see), full ``details``, and per-image results."""

    pipeline: str
    task: Task
    metrics: dict[str, float]
    details: dict[str, Any]
    subgroups: dict[str, dict[str, dict[str, float | None]]]
    results: list[ImageResult] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "task": self.task.value,
            "metrics": self.metrics,
            "details": self.details,
            "subgroups": self.subgroups,
            "pr_curves": [curve.to_dict() for curve in pr_curves(self)],
        }

    def report_markdown(self, title: str | None = None) -> str:
        lines = [f"# {title or f'Evaluation of {self.pipeline}'}", ""]
        lines += [f"Test images: {self.details.get('n_images', 0)}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in self.metrics.items()]
        per_class = self.details.get("per_class")
        if per_class:
            lines += [
                "",
                "## Per class",
                "",
                "| class | precision | recall | f1 | support |",
                "|---|---|---|---|---|",
            ]
            for name, m in per_class.items():
                lines.append(
                    f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
                )
        ious = self.details.get("iou_per_class")
        if ious:
            lines += ["", "## IoU per zone class", "", "| class | IoU |", "|---|---|"]
            lines += [f"| {k} | {'n/a' if v is None else f'{v:.3f}'} |" for k, v in ious.items()]
        if self.subgroups:
            lines += ["", "## Subgroups"]
            for key, groups in self.subgroups.items():
                names = sorted({m for g in groups.values() for m in g})
                lines += ["", f"### by {key}", "", "| " + " | ".join([key, *names]) + " |"]
                lines.append("|" + "---|" * (len(names) + 1))
                for group, values in sorted(groups.items()):
                    cells = ["n/a" if values.get(n) is None else f"{values[n]:.3f}" for n in names]
                    lines.append("| " + " | ".join([group, *cells]) + " |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> list[Path]:
        """``evaluation.json``, ``report.md``, ``confusion_matrix.png`` and ``pr_curve.png``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / "evaluation.json", out_dir / "report.md"]
        paths[0].write_text(json.dumps(self.to_dict(), indent=2, default=str))
        paths[1].write_text(self.report_markdown())
        paths += plot_confusion(self, out_dir / "confusion_matrix.png")
        paths += plot_pr(self, out_dir / "pr_curve.png")
        return paths


def _truth_instances(image: DatasetImage, mapping: Mapping[int, int]) -> Instances:
    gt = image.instances(with_masks=True)
    keep = np.asarray([int(c) in mapping for c in gt.class_ids], dtype=bool)
    gt = gt.filter(keep)
    gt.class_ids = np.asarray([mapping[int(c)] for c in gt.class_ids], dtype=np.int64)
    return gt


def evaluate_bundle(
    bundle: ModelBundle,
    spec: PipelineSpec,
    images: Sequence[DatasetImage],
    categories: Mapping[int, str],
    *,
    max_pixels: int,
    subgroup_keys: Sequence[str] | None = None,
    on_image: Callable[[int], None] | None = None,
) -> Evaluation:
    """Run the bundle on ``images`` one at a time (as serving does) and compute every metric.

    ``categories`` maps the dataset's category ids to names; ground truth is matched to the model's
    classes by name, so a champion trained on other category ids is measured on the same truth.
    """
    model = OnnxModel.load(bundle)
    manifest = bundle.manifest
    names = manifest.class_names
    index = {n: i for i, n in enumerate(names)}
    mapping = {cid: index[n] for cid, n in categories.items() if n in index}
    ok_defect = spec.decision.kind == "ok-defect" and manifest.task is not Task.classify
    results: list[ImageResult] = []
    model.warmup()
    for k, im in enumerate(images):
        started = time.perf_counter()
        decoded = load_image(im, spec, max_pixels)
        tensor, transform = prepare_input(decoded, manifest.input)
        outputs = model.run(tensor[None])
        head, _ = model.split([o[0] for o in outputs])
        predicted = postprocess(manifest, head, transform)
        latency = (time.perf_counter() - started) * 1000
        truth = _truth_instances(im, mapping)
        res = ImageResult(image=im, truth=truth, predicted=predicted, latency_ms=latency)
        if manifest.task is Task.classify:
            res.true_class = int(truth.class_ids[0]) if len(truth) else None
        else:
            if ok_defect:
                res.true_defect = len(truth) > 0
                res.predicted_defect = decide_ok_defect(predicted, manifest) is Decision.defect
                res.defect_score = float(predicted.scores.max()) if len(predicted) else 0.0
            bg = manifest.background_class or 0
            res.truth_map = class_map(im, mapping, decoded.height, decoded.width)
            res.predicted_map = instances_to_class_map(predicted, (decoded.height, decoded.width), bg)
        results.append(res)
        if on_image is not None:
            on_image(k + 1)
    metrics, details = compute_metrics(results, manifest.task, names, manifest, ok_defect)
    details["latency"] = latency_stats([r.latency_ms for r in results])
    metrics["latency_p50_ms"] = details["latency"]["p50_ms"]
    metrics["latency_p95_ms"] = details["latency"]["p95_ms"]
    subgroups = subgroup_metrics(
        results, manifest.task, names, manifest, ok_defect, keys=subgroup_keys, spec=spec
    )
    return Evaluation(spec.name, manifest.task, metrics, details, subgroups, results)


def _zone_classes(manifest: Any, names: Sequence[str]) -> list[int]:
    ok = ok_class_names(manifest) | {"healthy"}
    return [i for i, n in enumerate(names) if i != (manifest.background_class or 0) and n.lower() not in ok]


def compute_metrics(
    results: Sequence[ImageResult],
    task: Task,
    names: Sequence[str],
    manifest: Any,
    ok_defect: bool,
    *,
    with_map: bool = True,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Scalar metrics (None values left out) and the details behind them for a set of image results."""
    details: dict[str, Any] = {"n_images": len(results)}
    scalars: dict[str, float | None] = {}
    if task is Task.classify:
        labelled = [r for r in results if r.true_class is not None]
        cm = confusion_matrix(
            [r.true_class or 0 for r in labelled],
            [int(r.predicted.class_ids[0]) if len(r.predicted) else 0 for r in labelled],
            len(names),
        )
        cls = classification_metrics(cm, names)
        details.update(cls)
        scalars.update(
            accuracy=cls["accuracy"],
            macro_precision=cls["macro_precision"],
            macro_recall=cls["macro_recall"],
            macro_f1=cls["macro_f1"],
            precision=cls["macro_precision"],
            recall=cls["macro_recall"],
            f1=cls["macro_f1"],
        )
    else:
        zone_ids = _zone_classes(manifest, names)
        if with_map:
            truth = [r.truth for r in results]
            preds = [r.predicted for r in results]
            for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
                m = coco_map(truth, preds, class_ids=zone_ids, iou_type=iou_type)
                scalars[f"{prefix}_map"] = m["map"]
                scalars[f"{prefix}_map50"] = m["map50"]
        acc = ZoneAccumulator(len(names))
        for r in results:
            assert r.truth_map is not None and r.predicted_map is not None
            acc.add(r.truth_map, r.predicted_map)
        zones = zone_metrics(acc, names, zone_ids)
        details["zones"] = zones
        details["iou_per_class"] = zones["iou_per_class"]
        scalars.update(
            mean_iou=zones["mean_iou"],
            pixel_precision=zones["pixel_precision"],
            pixel_recall=zones["pixel_recall"],
        )
        if ok_defect:
            b = binary_metrics(
                [bool(r.true_defect) for r in results], [bool(r.predicted_defect) for r in results]
            )
            details["ok_defect"] = b
            details["confusion_matrix"] = [[b["tn"], b["fp"]], [b["fn"], b["tp"]]]
            details["labels"] = [Decision.ok.value, Decision.defect.value]
            scalars.update(precision=b["precision"], recall=b["recall"], f1=b["f1"], accuracy=b["accuracy"])
        else:
            details["confusion_matrix"] = zones["confusion_matrix"]
            details["labels"] = list(names)
            scalars.update(precision=zones["pixel_precision"], recall=zones["pixel_recall"])
    details["undefined"] = sorted(k for k, v in scalars.items() if v is None)
    return {k: float(v) for k, v in scalars.items() if v is not None}, details


def subgroup_metrics(
    results: Sequence[ImageResult],
    task: Task,
    names: Sequence[str],
    manifest: Any,
    ok_defect: bool,
    *,
    keys: Sequence[str] | None = None,
    spec: PipelineSpec | None = None,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Metrics per metadata group: ``{key: {group: {metric: value or None}}}`` (no mAP: too few
    instances per group to mean much). Keys default to the gate's ``subgroup_by`` plus the usual
    field / crop / region / line / SKU keys present in the metadata."""
    wanted = list(keys) if keys is not None else list(SUBGROUP_KEYS)
    if spec is not None and spec.gates.subgroup_by and spec.gates.subgroup_by not in wanted:
        wanted.insert(0, spec.gates.subgroup_by)
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for key in wanted:
        groups: dict[str, list[ImageResult]] = {}
        for r in results:
            if key in r.image.metadata:
                groups.setdefault(str(r.image.metadata[key]), []).append(r)
        if not groups or len(groups) > MAX_GROUPS:
            continue
        out[key] = {}
        for group, members in groups.items():
            metrics, details = compute_metrics(members, task, names, manifest, ok_defect, with_map=False)
            values: dict[str, float | None] = {"n": float(len(members)), **metrics}
            for missing in details["undefined"]:
                values[missing] = None
            out[key][group] = values
    return out


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: never opens a window
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(ev: Evaluation, path: Path) -> list[Path]:
    cm = np.asarray(ev.details.get("confusion_matrix", []), dtype=np.float64)
    labels = ev.details.get("labels", [])
    if cm.size == 0:
        return []
    plt = _pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 2.5 + 0.5 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    pixel = ev.task is not Task.classify and ev.details.get("labels") != [
        Decision.ok.value,
        Decision.defect.value,
    ]
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{norm[i, j]:.2f}" if pixel else f"{int(cm[i, j])}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_title(f"{ev.pipeline}: confusion matrix" + (" (pixels, row-normalised)" if pixel else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


class PrCurveJson(TypedDict):
    """:meth:`PrCurve.to_dict`: the curve thinned to at most :data:`MAX_CURVE_POINTS` points."""

    label: str
    average_precision: float
    positives: int
    precision: list[float]
    recall: list[float]


@dataclass(frozen=True)
class PrCurve:
    """Precision and recall at every score threshold, for one class (or the image-level decision)."""

    label: str
    precision: AnyArray
    recall: AnyArray
    positives: int

    def to_dict(self) -> PrCurveJson:
        n = self.precision.size
        keep = np.unique(np.linspace(0, n - 1, min(n, MAX_CURVE_POINTS)).round().astype(np.int64))
        return {
            "label": self.label,
            "average_precision": average_precision(self.precision, self.recall),
            "positives": self.positives,
            "precision": [round(float(v), 6) for v in self.precision[keep]],
            "recall": [round(float(v), 6) for v in self.recall[keep]],
        }


def pr_curves(ev: Evaluation) -> list[PrCurve]:
    """One-vs-rest PR curve per class (classification) or the image-level DEFECT / zone PR curve;
    classes without a positive test image have none."""
    curves: list[PrCurve] = []
    if ev.task is Task.classify:
        labels = ev.details.get("labels", [])
        probs = [r.predicted.class_probabilities for r in ev.results if r.true_class is not None]
        truth = [r.true_class for r in ev.results if r.true_class is not None]
        if probs and all(p is not None for p in probs):
            mat = np.stack([np.asarray(p) for p in probs])
            for c, name in enumerate(labels):
                positive = [t == c for t in truth]
                p, r = pr_curve(mat[:, c].tolist(), positive)
                if p.size:
                    curves.append(PrCurve(name, p, r, sum(positive)))
    else:
        scores = [float(r.predicted.scores.max()) if len(r.predicted) else 0.0 for r in ev.results]
        has = [len(r.truth) > 0 for r in ev.results]
        p, r = pr_curve(scores, has)
        if p.size:
            curves.append(PrCurve("image has a defect / zone", p, r, sum(has)))
    return curves


def plot_pr(ev: Evaluation, path: Path) -> list[Path]:
    """The curves of :func:`pr_curves` in one plot."""
    curves = pr_curves(ev)
    if not curves:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for curve in curves:
        ax.plot(curve.recall, curve.precision, label=curve.label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"{ev.pipeline}: precision-recall")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
