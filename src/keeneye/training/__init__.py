"""Training data and models: datasets (COCO, ImageFolder), validation, versions, splits, synthetic data."""

from keeneye.training.datasets import (
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
    "DRIFT_KINDS",
    "GENERATORS",
    "Annotation",
    "Category",
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
