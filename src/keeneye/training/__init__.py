"""Training data and models: datasets (COCO, ImageFolder), validation, versions, splits, synthetic data."""

from keeneye.training.coco import CocoLayout, CocoWriter
from keeneye.training.datasets import (
    ANNOTATIONS_FILE,
    DATASET_INFO_FILE,
    Annotation,
    Category,
    Dataset,
    DatasetImage,
    Problem,
    ValidationReport,
    dataset_manifest,
    dataset_version,
    load_coco,
    load_imagefolder,
    to_imagefolder,
    validate,
)
from keeneye.training.splits import Split, SplitItem, split
from keeneye.training.synth import DRIFT_KINDS, GENERATORS, Drift, SynthResult, generate

__all__ = [
    "ANNOTATIONS_FILE",
    "DATASET_INFO_FILE",
    "DRIFT_KINDS",
    "GENERATORS",
    "Annotation",
    "Category",
    "CocoLayout",
    "CocoWriter",
    "Dataset",
    "DatasetImage",
    "Drift",
    "Problem",
    "Split",
    "SplitItem",
    "SynthResult",
    "ValidationReport",
    "dataset_manifest",
    "dataset_version",
    "generate",
    "load_coco",
    "load_imagefolder",
    "split",
    "to_imagefolder",
    "validate",
]

# --- trainers, export, evaluation, gates and the end-to-end run -----------------------------------
# They need the ``train`` extra (torch, timm, smp …), so they load on first use: datasets and synthetic
# data keep working without it, and `import keeneye.training` stays fast.
_LAZY_EXPORTS: dict[str, str] = {
    "EpochStats": "keeneye.training.trainers",
    "FitResult": "keeneye.training.trainers",
    "ProgressCallback": "keeneye.training.trainers",
    "ProgressEvent": "keeneye.training.trainers",
    "SearchResult": "keeneye.training.trainers",
    "TrainConfig": "keeneye.training.trainers",
    "WithEmbedding": "keeneye.training.trainers",
    "build_model": "keeneye.training.trainers",
    "fit": "keeneye.training.trainers",
    "search": "keeneye.training.trainers",
    "TensorImageDataset": "keeneye.training.torchdata",
    "augment_batch": "keeneye.training.torchdata",
    "prepare_images": "keeneye.training.torchdata",
    "ExportResult": "keeneye.training.export",
    "ParityReport": "keeneye.training.export",
    "check_parity": "keeneye.training.export",
    "export_bundle": "keeneye.training.export",
    "export_onnx": "keeneye.training.export",
    "reference_profile": "keeneye.training.export",
    "Evaluation": "keeneye.training.evaluate",
    "binary_metrics": "keeneye.scores",
    "classification_metrics": "keeneye.scores",
    "coco_map": "keeneye.training.evaluate",
    "evaluate_bundle": "keeneye.training.evaluate",
    "zone_metrics": "keeneye.training.evaluate",
    "GateCheck": "keeneye.training.gates",
    "GateResult": "keeneye.training.gates",
    "check_gates": "keeneye.training.gates",
    "RichProgress": "keeneye.training.run",
    "TrainResult": "keeneye.training.run",
    "evaluate_version": "keeneye.training.run",
    "train_pipeline": "keeneye.training.run",
}
__all__ += sorted(_LAZY_EXPORTS)


def __getattr__(name: str) -> object:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keeneye.training' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
