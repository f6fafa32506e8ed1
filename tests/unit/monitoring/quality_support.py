"""Helpers for the feedback / online-quality tests: answered observations and registered models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keeneye.domain import Decision, Variant
from keeneye.models.bundle import ModelBundle
from keeneye.models.manifest import ModelManifest
from keeneye.models.testing import tiny_classifier
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import NewObservation, NewPrediction, ResultsDB, open_results_db
from tests.serving_support import SPECIES, fast_registry_store, species_manifest

LINE_CLASSES = ["background", "scratch", "dent"]
IMAGE = {"width": 64, "height": 48, "bands": ["red", "green", "blue"], "format": "png"}


def answered(
    db: ResultsDB,
    pipeline: str,
    result: dict[str, Any],
    *,
    version: str = "1",
    variant: Variant = Variant.champion,
    model_name: str | None = None,
) -> str:
    """A ``done`` observation with one prediction (what ``POST /predict`` stores); returns its id."""
    decision = result.get("decision")
    return db.record_prediction(
        NewObservation(
            pipeline=pipeline,
            content_hash=f"h-{pipeline}-{version}-{len(result)}",
            object_key=None,
            content_type="image/png",
            size_bytes=10,
            metadata={},
            source="test",
        ),
        NewPrediction(
            model_name=model_name or pipeline,
            model_version=version,
            variant=variant,
            task=str(result.get("task", "classify")),
            result=result,
            decision=None if decision is None else Decision(decision),
            confidence=None,
            latency_ms=1.0,
        ),
    )


def also_answered(
    db: ResultsDB,
    observation_id: str,
    pipeline: str,
    result: dict[str, Any],
    *,
    version: str,
    variant: Variant,
) -> None:
    """A second model's prediction for the same observation (a shadow or a canary)."""
    decision = result.get("decision")
    db.save_prediction(
        observation_id,
        pipeline,
        pipeline,
        version,
        variant,
        str(result.get("task", "classify")),
        result,
        None if decision is None else Decision(decision),
        None,
        1.0,
    )


def species_result(cls: str) -> dict[str, Any]:
    return {"task": "classify", "predicted_class": cls, "confidence": 0.9, "image": IMAGE}


def line_result(decision: str, instances: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    items = instances or []
    return {"task": "segment", "instances": items, "count": len(items), "decision": decision, "image": IMAGE}


def line_manifest(**extra: Any) -> ModelManifest:
    return ModelManifest.model_validate(
        {
            "name": "line-inspection",
            "task": "segment",
            "output_format": "seg-logits",
            "input": {"width": 32, "height": 32},
            "classes": LINE_CLASSES,
            "background_class": 0,
            **extra,
        }
    )


def register_model(settings: Settings, tmp: Path, manifest: ModelManifest, *, alias: str | None) -> str:
    """Register a tiny (real, valid) ONNX model with this manifest; returns the version."""
    fast_registry_store(settings)
    classes = len(manifest.classes)
    bundle = ModelBundle.write(tmp / f"bundle-{manifest.name}-{alias}", tiny_classifier(classes), manifest)
    db = open_results_db(settings)
    info = ModelRegistry(settings, events=db).register(manifest.name, bundle, alias=alias, gates_passed=True)
    return str(info.version)


def register_species(settings: Settings, tmp: Path, **metrics: float) -> str:
    return register_model(settings, tmp, species_manifest(metrics=metrics), alias="champion")


SPECIES_NAMES = [name for name, _ in SPECIES]
