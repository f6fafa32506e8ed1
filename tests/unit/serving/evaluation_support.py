"""Registered versions with an evaluation report logged the way ``keeneye train`` logs it.

The report is computed by training's own code (``compute_metrics``, ``check_gates``,
``Evaluation.write``) from fixed per-image results — no training, no ONNX run — so the numbers are
known in advance; the files go to the version's MLflow run under ``evaluation/`` and ``run/``, and
the bundle's manifest carries the gate result, the data version and the split sizes, as
``training/run.py`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keeneye.domain import Instances
from keeneye.models import ModelBundle, ModelManifest
from keeneye.models.testing import tiny_classifier, tiny_segmenter
from keeneye.pipelines import PipelineCatalog
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import open_results_db
from keeneye.training.datasets import DatasetImage
from keeneye.training.evaluate import (
    Evaluation,
    ImageResult,
    compute_metrics,
    latency_stats,
    subgroup_metrics,
)
from keeneye.training.gates import check_gates
from tests.serving_support import SPECIES, fast_registry_store, species_manifest

# species-id: truth and predicted class of ten test images (class indices into SPECIES).
SPECIES_TRUTH = [0, 0, 0, 1, 1, 1, 2, 2, 3, 4]
SPECIES_PREDICTED = [0, 0, 1, 1, 1, 0, 2, 2, 3, 3]
SPLITS = [70, 15, 10]
SIZE = 8  # segment test images are 8×8


@dataclass(frozen=True)
class Evaluated:
    version: str
    evaluation: Evaluation
    data_version: str


def _image(k: int, tmp: Path, metadata: dict[str, str]) -> DatasetImage:
    return DatasetImage(k, f"images/{k:03d}.png", tmp / f"{k:03d}.png", SIZE, SIZE, metadata)


def _whole(cls: int, score: float, probabilities: list[float] | None = None) -> Instances:
    return Instances(
        boxes=np.asarray([[0, 0, SIZE, SIZE]], np.float32),
        scores=np.asarray([score], np.float32),
        class_ids=np.asarray([cls], np.int64),
        class_probabilities=None if probabilities is None else np.asarray(probabilities, np.float32),
    )


def species_results(tmp: Path) -> list[ImageResult]:
    """Predicted class gets 0.6, every other 0.1: class 2 is ranked perfectly (AP 1), the one bream
    (class 4, read as zander) comes last (AP 0.1)."""
    out = []
    for k, (t, p) in enumerate(zip(SPECIES_TRUTH, SPECIES_PREDICTED, strict=True)):
        probs = [0.6 if c == p else 0.1 for c in range(len(SPECIES))]
        out.append(
            ImageResult(
                image=_image(k, tmp, {"camera_id": f"cam{k % 2}"}),
                truth=_whole(t, 1.0),
                predicted=_whole(p, 0.6, probs),
                latency_ms=10.0 + k,
                true_class=t,
            )
        )
    return out


def _mask_instances(mask_map: np.ndarray, score: float) -> Instances:
    classes = [int(c) for c in np.unique(mask_map) if c]
    masks = np.stack([mask_map == c for c in classes]) if classes else np.zeros((0, SIZE, SIZE), bool)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return Instances(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.full(len(classes), score, np.float32),
        class_ids=np.asarray(classes, np.int64),
        masks=masks,
    )


def segment_results(tmp: Path, zone_classes: int, n: int, key: str, ok_defect: bool) -> list[ImageResult]:
    """``n`` 8×8 images: every third has no zone; a 4×4 square of class 1 + k mod ``zone_classes``
    otherwise, predicted exactly, shifted by one pixel (every fourth) or missed (every fifth)."""
    out = []
    for k in range(n):
        cls = 0 if k % 3 == 0 else 1 + k % zone_classes
        truth = np.zeros((SIZE, SIZE), np.int64)
        truth[2:6, 2:6] = cls
        predicted = truth.copy()
        if k % 4 == 1:
            predicted = np.zeros_like(truth)
            predicted[2:6, 3:7] = cls
        if k % 5 == 2:
            predicted = np.zeros_like(truth)
        pred = _mask_instances(predicted, 0.5 + 0.04 * k)
        res = ImageResult(
            image=_image(k, tmp, {key: f"{key[0].upper()}{k % 2}"}),
            truth=_mask_instances(truth, 1.0),
            predicted=pred,
            latency_ms=20.0 + k,
            truth_map=truth,
            predicted_map=predicted,
        )
        if ok_defect:
            res.true_defect = bool(cls)
            res.predicted_defect = len(pred) > 0
            res.defect_score = float(pred.scores.max()) if len(pred) else 0.0
        out.append(res)
    return out


def register_evaluated(
    settings: Settings, tmp: Path, pipeline: str, *, data_version: str = "d-42"
) -> Evaluated:
    """Register a version of ``pipeline`` whose run holds a report computed from fixed results."""
    fast_registry_store(settings)
    spec = PipelineCatalog(settings).get(pipeline)
    work = tmp / f"evaluated-{pipeline}"
    if pipeline == "species-id":
        names = [n for n, _ in SPECIES]
        results = species_results(work)
        onnx, manifest = tiny_classifier(len(SPECIES), seed=0), species_manifest()
        ok_defect = False
    else:
        names = (
            ["background", "defect"] if pipeline == "line-inspection" else ["background", "rust", "blight"]
        )
        ok_defect = pipeline == "line-inspection"
        key = "sku" if ok_defect else "field_id"
        results = segment_results(work, len(names) - 1, 12, key, ok_defect)
        onnx = tiny_segmenter(len(names), channels=3)
        manifest = ModelManifest.parse(
            {
                "name": pipeline,
                "task": "segment",
                "output_format": "seg-logits",
                "input": {"width": 32, "height": 32, "channels": ["red", "green", "blue"]},
                "classes": names,
                "background_class": 0,
            }
        )
    task = manifest.task
    metrics, details = compute_metrics(results, task, names, manifest, ok_defect, with_map=False)
    details["latency"] = latency_stats([r.latency_ms for r in results])
    metrics["latency_p95_ms"] = details["latency"]["p95_ms"]
    subgroups = subgroup_metrics(results, task, names, manifest, ok_defect, spec=spec)
    evaluation = Evaluation(pipeline, task, metrics, details, subgroups, results)
    gate = check_gates(spec.gates, metrics, subgroups=subgroups)
    manifest = manifest.model_copy(
        update={
            "metrics": {**metrics, "n_test": len(results)},
            "gates": gate.to_dict(),
            "data_version": data_version,
            "extra": {"training": {"split_sizes": SPLITS}},
        }
    )
    bundle = ModelBundle.write(work / "bundle", onnx, manifest)
    registry = ModelRegistry(settings, events=open_results_db(settings))
    info = registry.register(pipeline, bundle, gates_passed=gate.passed)
    assert info.run_id is not None
    files = evaluation.write(work / "evaluation")
    validation = work / "run" / "validation.json"
    validation.parent.mkdir(parents=True, exist_ok=True)
    counts = {n: sum(1 for r in results if n in _truth_names(r, names)) for n in names}
    validation.write_text(
        json.dumps({"ok": True, "n_images": sum(SPLITS), "n_annotations": 123, "class_counts": counts})
    )
    log_run_files(settings, info.run_id, files, [validation])
    return Evaluated(info.version, evaluation, data_version)


def _truth_names(r: ImageResult, names: list[str]) -> set[str]:
    return {names[int(c)] for c in r.truth.class_ids}


def log_run_files(settings: Settings, run_id: str, evaluation: list[Path], run: list[Path]) -> None:
    """As ``_log_run`` in ``training/run.py``: evaluation files in ``evaluation/``, others in ``run/``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.registry_uri, registry_uri=settings.registry_uri)
    for path in evaluation:
        client.log_artifact(run_id, str(path), "evaluation")
    for path in run:
        client.log_artifact(run_id, str(path), "run")
