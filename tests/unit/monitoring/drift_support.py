"""Helpers for the drift tests: generated photos and pipeline results, the reference profile built
from them, window settings and a clock. Light imports only: spawned processes import this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keeneye.domain import Answer
from keeneye.imaging import Image, quality_features
from keeneye.monitoring.drift import DriftMonitor, drift_sample
from keeneye.settings import MonitoringSettings
from keeneye.store import ResultsDB

CLASSES = ("a", "b")
EMB_DIM = 8


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def photos(n: int, *, seed: int, shift: float = 0.0) -> list[Image]:
    """Small RGB photos: a random base colour per image (brighter by ``shift``) plus random noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = rng.normal(110.0 + shift, 20.0, size=3)
        noise = rng.normal(0.0, rng.uniform(10, 30), (24, 24, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        out.append(
            Image(pixels=pixels, bands=("red", "green", "blue"), format="array", content_hash=f"{seed}-{i}")
        )
    return out


def results(
    n: int, *, seed: int, shift: float = 0.0, classes: tuple[str, ...] = CLASSES, emb_shift: float = 0.0
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """(pipeline result, embedding) pairs as :func:`keeneye.pipelines.finish` and the model make them."""
    rng = np.random.default_rng(seed + 1000)
    out = []
    for img in photos(n, seed=seed, shift=shift):
        result = {
            "task": "classify",
            "predicted_class": str(rng.choice(classes)),
            "confidence": float(rng.beta(5, 2)),
            "image": {"quality": quality_features(img)},
        }
        out.append((result, rng.normal(emb_shift, 1.0, EMB_DIM).astype(np.float32)))
    return out


def drift_profile() -> dict[str, Any]:
    """The reference: 800 photos like :func:`photos` (seed 1), class mix a/b, 8-d N(0, 1) embeddings."""
    from keeneye.training.export import reference_profile  # imports torch: not in spawned children

    rng = np.random.default_rng(42)
    n = 800
    return reference_profile(
        photos(n, seed=1),
        embeddings=rng.normal(0.0, 1.0, (300, EMB_DIM)),
        confidences=rng.beta(5, 2, n).tolist(),
        instance_counts=[1.0] * n,
        class_mix={"a": 0.5, "b": 0.5},
        seed=0,
    )


def window_settings(**changes: Any) -> MonitoringSettings:
    base = {"drift_window_size": 500, "drift_window_seconds": 3600.0, "drift_min_samples": 50}
    return MonitoringSettings(**{**base, "drift_permutations": 100, **changes})


def feed(m: DriftMonitor, items: list[tuple[dict[str, Any], np.ndarray]]) -> list[Any]:
    return [m.add(drift_sample(Answer.from_stored(result), embedding=emb)) for result, emb in items]


def feeding_process(
    url: str, pipeline: str, profile: dict[str, Any], source: str, seed: int, barrier: Any
) -> None:
    """One OS process (a ``multiprocessing`` spawn target): its own database handle and monitor of
    ``pipeline``, fed 300 predictions in step with the other processes (``barrier``), then flushed
    once all of them are done — as at shutdown."""
    m = DriftMonitor(ResultsDB(url), window_settings(), pipeline, "1", profile, None, source=source)
    items = results(300, seed=seed)
    barrier.wait()
    feed(m, items)
    barrier.wait()
    m.flush()
