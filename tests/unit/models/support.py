"""Shared helpers for the models tests: bundles built from the tiny ONNX builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keeneye.models import ModelBundle
from keeneye.models.testing import tiny_classifier, write_bundle

CLASSES = ["ok", "scratch", "dent", "stain"]


def classifier_bundle(path: Path, *, batch: int | str = "N", **manifest: Any) -> ModelBundle:
    """A 4-class tiny_classifier bundle (3×32×32 input), manifest fields overridable."""
    manifest.setdefault("output_format", "logits")
    manifest.setdefault("input", {"width": 32, "height": 32})
    manifest.setdefault("classes", CLASSES)
    with_embedding = manifest.get("embedding_output") == "pooled"
    return write_bundle(
        path, tiny_classifier(len(CLASSES), batch=batch, with_embedding=with_embedding), **manifest
    )
