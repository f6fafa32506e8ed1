"""The OK/DEFECT decision threshold, calibrated on the validation split and written into the bundle.

A segmenter trained for a few minutes ranks frames well (defective frames get the most confident
defect pixels) long before its probabilities sit on the spec's round 0.5: with four defect kinds
sharing the probability mass, a pixel the model clearly finds defective may win its class with 0.4.
A fixed 0.5 then misses defects that a threshold of 0.3 catches without a single false reject.

:func:`calibrate_decision` therefore runs the exported ONNX model once over the validation images,
then replays serving's own decision (:func:`keeneye.models.postprocess` + :func:`decide_ok_defect`)
for a grid of thresholds ``thresholds.mask`` = ``thresholds.score`` = *t* (a pixel counts when its
winning defect class has probability ≥ *t*; a blob's score is the mean of those, so ≥ *t* too) and
``thresholds.min_area`` = *a* pixels. It keeps the candidates that reach the gate's recall on the
validation split, takes the most precise of them (of equally precise ones, those with the best
recall) and, among equals, the middle *t* of the smallest *a* — the widest margin on both sides. No
candidate reaching the recall → the best recall (fail-safe: a false reject beats a missed defect).
The test split is never looked at.

A background-logit shift (a prior shift that lets a defect class win a pixel whose defect mass is
split between kinds) was tried and dropped: on the documented 300-frame set it bought validation
recall with false rejects on SKUs the validation batches did not hold.

The chosen thresholds replace the manifest's, so serving, ``keeneye evaluate`` and the test
evaluation of the run all decide with the same numbers; ``extra.decision_calibration`` records them
with the validation figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from keeneye.domain import Decision
from keeneye.imaging import prepare_input
from keeneye.models import ModelBundle, OnnxModel, decide_ok_defect, postprocess
from keeneye.models.manifest import ModelManifest
from keeneye.pipelines import PipelineSpec
from keeneye.scores import binary_metrics
from keeneye.training.datasets import DatasetImage
from keeneye.training.torchdata import load_image

# Candidate decision thresholds (mask = score) and minimum areas in pixels.
THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))  # 0.1 … 0.9
MIN_AREAS: tuple[int, ...] = (0, 4, 16)
DEFAULT_RECALL = 0.95  # when the spec gates no recall


class CalibrationJson(TypedDict):
    """``extra.decision_calibration`` of the manifest."""

    mask: float
    score: float
    min_area: int
    val_precision: float
    val_recall: float
    val_images: int
    val_defective: int
    target_recall: float
    reached: bool


@dataclass(frozen=True)
class DecisionCalibration:
    """The chosen thresholds and what they achieved on the validation split."""

    threshold: float
    min_area: int
    precision: float
    recall: float
    images: int
    defective: int
    target_recall: float

    @property
    def reached(self) -> bool:
        return self.recall >= self.target_recall

    def to_dict(self) -> CalibrationJson:
        return {
            "mask": self.threshold,
            "score": self.threshold,
            "min_area": self.min_area,
            "val_precision": round(self.precision, 4),
            "val_recall": round(self.recall, 4),
            "val_images": self.images,
            "val_defective": self.defective,
            "target_recall": self.target_recall,
            "reached": self.reached,
        }


def _with_thresholds(manifest: ModelManifest, threshold: float, min_area: int) -> ModelManifest:
    th = manifest.thresholds.model_copy(update={"mask": threshold, "score": threshold, "min_area": min_area})
    return manifest.model_copy(update={"thresholds": th})


def choose(
    outcomes: Mapping[tuple[float, int], tuple[float, float]], target_recall: float
) -> tuple[float, int]:
    """The (threshold, min_area) to keep from ``{(t, a): (precision, recall)}`` (see the module doc)."""
    if not outcomes:
        raise ValueError("no candidate thresholds")
    reaching = {k: v for k, v in outcomes.items() if v[1] >= target_recall}
    if not reaching:
        top = max(r for _, r in outcomes.values())
        reaching = {k: v for k, v in outcomes.items() if v[1] >= top - 1e-12}
    best = max(p for p, _ in reaching.values())
    precise = {k: v for k, v in reaching.items() if v[0] >= best - 1e-12}
    most = max(r for _, r in precise.values())  # fail-safe: of equally precise ones, the best recall
    ties = [k for k, (_, r) in precise.items() if r >= most - 1e-12]
    area = min(a for _, a in ties)
    kept = sorted(t for t, a in ties if a == area)
    return kept[(len(kept) - 1) // 2], area


def calibrate_decision(
    bundle: ModelBundle,
    spec: PipelineSpec,
    images: Sequence[DatasetImage],
    categories: Mapping[int, str],
    *,
    max_pixels: int,
) -> DecisionCalibration | None:
    """Calibrate the OK/DEFECT thresholds of ``bundle`` on ``images`` (the validation split).

    None when there is nothing to calibrate on: no images, or no defective or no OK frame among them.
    """
    manifest = bundle.manifest
    known = {n for n in manifest.class_names}
    defect_ids = {cid for cid, name in categories.items() if name in known}
    truth = np.asarray(
        [any(int(c) in defect_ids for c in im.instances(with_masks=False).class_ids) for im in images],
        dtype=bool,
    )
    if not len(images) or truth.all() or not truth.any():
        return None
    model = OnnxModel.load(bundle)
    outputs = []
    for im in images:
        tensor, transform = prepare_input(load_image(im, spec, max_pixels), manifest.input)
        head, _ = model.split([o[0] for o in model.run(tensor[None])])
        outputs.append((head, transform))
    target = float(spec.gates.metrics.get("recall", DEFAULT_RECALL))
    outcomes: dict[tuple[float, int], tuple[float, float]] = {}
    for t in THRESHOLDS:
        for a in MIN_AREAS:
            candidate = _with_thresholds(manifest, t, a)
            said = [
                decide_ok_defect(postprocess(candidate, head, transform), candidate) is Decision.defect
                for head, transform in outputs
            ]
            m = binary_metrics(truth.tolist(), said)
            # Nothing called DEFECT: precision is undefined, and recall 0 rules it out anyway.
            outcomes[(t, a)] = (m["precision"] or 0.0, m["recall"] or 0.0)
    threshold, area = choose(outcomes, target)
    precision, recall = outcomes[(threshold, area)]
    return DecisionCalibration(
        threshold=threshold,
        min_area=area,
        precision=precision,
        recall=recall,
        images=len(images),
        defective=int(truth.sum()),
        target_recall=target,
    )


def calibrated_manifest_changes(
    manifest: ModelManifest, calibration: DecisionCalibration
) -> dict[str, object]:
    """The ``update_manifest`` changes that make serving decide with ``calibration``."""
    th = _with_thresholds(manifest, calibration.threshold, calibration.min_area).thresholds
    return {
        "thresholds": th,
        "extra": {**manifest.extra, "decision_calibration": calibration.to_dict()},
    }
