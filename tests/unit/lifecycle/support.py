"""Observations with real stored answers for the labelling-loop tests.

Answers are made the way the serving path makes them: ``Instances`` (masks) → ``answer_of`` →
stored with ``ResultsDB.record_prediction``; the image bytes go to the object store under the key the
API uses. Nothing is faked: a SQLite file database and a directory object store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from keeneye.domain import Answer, Decision, Instances, ModelRef, Prediction, Task, Variant
from keeneye.models import ModelManifest
from keeneye.pipelines import PipelineSpec, answer_of, observation_key
from keeneye.store import NewObservation, NewPrediction, ObjectStore, ResultsDB
from tests.serving_support import SPECIES, jpeg, species_manifest

LINE_CLASSES = ["background", "scratch", "dent"]
SIZE = 64


def line_manifest() -> ModelManifest:
    return ModelManifest.parse(
        {
            "name": "line-inspection",
            "task": "segment",
            "output_format": "seg-logits",
            "input": {"width": SIZE, "height": SIZE},
            "classes": LINE_CLASSES,
            "background_class": 0,
            "thresholds": {"score": 0.5, "mask": 0.5},
        }
    )


def crop_manifest() -> ModelManifest:
    return ModelManifest.parse(
        {
            "name": "crop-health",
            "task": "segment",
            "output_format": "seg-logits",
            "input": {"width": SIZE, "height": SIZE, "channels": ["nir", "red_edge", "red", "green"]},
            "classes": ["healthy", "rust", "drought"],
            "background_class": 0,
        }
    )


def species_result(probabilities: list[float], *, width: int = 48, height: int = 48) -> dict[str, Any]:
    """A classify answer as ``Answer.to_json`` writes it: classes by descending probability."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:3]
    top = [
        {"class": SPECIES[i][0], "label": SPECIES[i][1], "probability": round(float(probabilities[i]), 6)}
        for i in order
    ]
    return {
        "task": "classify",
        "predicted_class": top[0]["class"],
        "predicted_label": top[0]["label"],
        "confidence": top[0]["probability"],
        "top_3_predictions": top,
        "image": {"width": width, "height": height, "format": "jpeg"},
    }


def segment_result(
    spec: PipelineSpec, manifest: ModelManifest, regions: list[tuple[int, tuple[int, int, int, int], float]]
) -> dict[str, Any]:
    """An answer with one instance per (class id, filled ellipse in box x1,y1,x2,y2, score)."""
    masks = []
    for _, (x1, y1, x2, y2), _ in regions:
        m = np.zeros((SIZE, SIZE), np.uint8)
        cv2.ellipse(m, ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, 1, -1)
        masks.append(m.astype(bool))
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    n = len(regions)
    instances = Instances(
        boxes=np.asarray(boxes, np.float32).reshape(n, 4),
        scores=np.asarray([s for *_, s in regions], np.float32),
        class_ids=np.asarray([c for c, *_ in regions], np.int64),
        masks=np.stack(masks) if masks else np.zeros((0, SIZE, SIZE), bool),
    )
    prediction = Prediction(instances, ModelRef(manifest.name, "1"), Task.segment)
    result: dict[str, Any] = dict(answer_of(prediction, manifest, spec).to_json())
    result["image"] = {"width": SIZE, "height": SIZE, "format": "png"}
    return result


def as_answer(result: dict[str, Any]) -> Answer:
    """A stored answer read back, as the review queue, agreement and quality take it."""
    return Answer.from_stored(result)


def png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    assert ok
    return bytes(buf)


@dataclass(frozen=True)
class Stored:
    observation_id: str
    content_hash: str
    result: dict[str, Any]


def store_answer(
    db: ResultsDB,
    objects: ObjectStore,
    pipeline: str,
    result: dict[str, Any],
    data: bytes,
    *,
    model_name: str | None = None,
    version: str = "1",
    fmt: str = "png",
) -> Stored:
    """An observation (``done``), its image in the object store and the champion's answer."""
    content_hash = hashlib.sha256(data).hexdigest()
    key = observation_key(pipeline, content_hash, fmt)
    content_type = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff"}[fmt]
    objects.put(key, data, content_type=content_type)
    decision = result.get("decision")
    obs_id = db.record_prediction(
        NewObservation(
            pipeline=pipeline,
            content_hash=content_hash,
            object_key=key,
            content_type=content_type,
            size_bytes=len(data),
            metadata={},
            source="test",
        ),
        NewPrediction(
            model_name=model_name or pipeline,
            model_version=version,
            variant=Variant.champion,
            task=result["task"],
            result=result,
            decision=Decision(decision) if decision else None,
            confidence=result.get("confidence"),
            latency_ms=1.0,
        ),
    )
    return Stored(obs_id, content_hash, result)


def species_jpeg(seed: int) -> bytes:
    return jpeg((40 * seed % 255, 120, 30), seed=seed)


__all__ = [
    "LINE_CLASSES",
    "SPECIES",
    "Stored",
    "crop_manifest",
    "line_manifest",
    "png_bytes",
    "segment_result",
    "species_jpeg",
    "species_manifest",
    "species_result",
    "store_answer",
]
