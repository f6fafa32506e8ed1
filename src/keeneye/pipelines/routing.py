"""Which model answers an input during a rollout, and the challenger's runs on the side (shadow).

Routing is a pure function of a key, so every process (API replicas, stream workers) sends the same
input to the same variant without talking to each other: the key's SHA-256, salted with the pipeline
and the challenger version, mapped to ``[0, 1)`` and compared with the share. Stream workers use the
observation id; the synchronous API uses the image's content hash (the observation id does not exist
before the answer is stored), so a retried request stays on its variant.

A shadow run stores the challenger's prediction as variant ``shadow`` and never returns it: the API
runs it in bounded background tasks after the client has its answer (:class:`ShadowRunner`), a stream
worker in one batch after settling (:func:`run_shadow_batch`). The rollout state comes from the
``rollouts`` row (``keeneye.store.rollouts``); the controller that moves it is
``keeneye.lifecycle.rollout``, above this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TypedDict

import numpy as np

from keeneye.domain import Answer, AnswerJson, JsonObject, KeeneyeError, Variant
from keeneye.imaging import Transform, prepare_input
from keeneye.metrics import Metrics
from keeneye.models.manifest import ModelManifest
from keeneye.pipelines.crophealth import run_tiles_sync, tile_input
from keeneye.pipelines.loaded import LoadedModel
from keeneye.pipelines.runner import Prepared, finish, prepare, run_model
from keeneye.pipelines.spec import PipelineSpec
from keeneye.settings import Settings
from keeneye.store import ResultsDB, utcnow
from keeneye.store.rollouts import RolloutRecord, RolloutState, insert_shadow_predictions

log = logging.getLogger(__name__)

SHADOW_QUEUE = 64  # shadow runs waiting or running per API process; more are skipped and counted


# ==================================================================================================
# Routing: a stable hash of the key decides, the same in every process
# ==================================================================================================


def _unit(*parts: str) -> float:
    """A uniform number in ``[0, 1)`` from the SHA-256 of ``parts`` (64 bits of it)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose_variant(rollout: RolloutRecord | None, key: str) -> Variant:
    """``canary`` for the keys in the canary share of an active canary, else ``champion``.

    Salted with the challenger version: each rollout gives its canary another slice of the inputs,
    while one key keeps its variant for the whole rollout.
    """
    if rollout is None or rollout.state is not RolloutState.canary or not rollout.challenger_version:
        return Variant.champion
    bucket = _unit("canary", rollout.pipeline, rollout.challenger_version, key)
    return Variant.canary if bucket < rollout.canary_share else Variant.champion


def in_shadow_sample(rollout: RolloutRecord | None, key: str) -> bool:
    """Whether the challenger also runs, in shadow, on this key's input."""
    if rollout is None or rollout.state is not RolloutState.shadow or not rollout.challenger_version:
        return False
    return _unit("shadow", rollout.pipeline, rollout.challenger_version, key) < rollout.shadow_sample


# ==================================================================================================
# Running the challenger on the side (shadow)
# ==================================================================================================


def prepare_for(manifest: ModelManifest, prepared: Prepared) -> Prepared:
    """The same decoded image as the input of another model (no second decode; a geo raster is
    cut again into that model's tiles)."""
    if prepared.geo is not None:
        geo = tile_input(prepared.geo.raster, manifest, prepared.geo.request)
        return replace(prepared, transform=Transform.fit(*geo.raster.shape, manifest.input), geo=geo)
    tensor, transform = prepare_input(prepared.image, manifest.input)
    return Prepared(prepared.image, tensor, transform)


class ShadowPredictionRow(TypedDict):
    """One shadow model's answer, as a ``predictions`` row (``variant`` = shadow)."""

    observation_id: str
    pipeline: str
    model_name: str
    model_version: str
    variant: str
    task: str
    result: AnswerJson
    decision: str | None
    confidence: float | None
    latency_ms: float
    timings: dict[str, float]
    created_at: datetime


def _prediction_row(
    observation_id: str, spec: PipelineSpec, model: LoadedModel, answer: Answer, latency_ms: float
) -> ShadowPredictionRow:
    result = answer.to_json()
    return {
        "observation_id": observation_id,
        "pipeline": spec.name,
        "model_name": model.ref.name,
        "model_version": model.ref.version,
        "variant": Variant.shadow.value,
        "task": model.bundle.manifest.task.value,
        "result": result,
        "decision": result.get("decision"),
        "confidence": result.get("confidence"),
        "latency_ms": float(latency_ms),
        "timings": {"shadow": round(latency_ms, 3)},
        "created_at": utcnow(),
    }


class ShadowRunner:
    """The API's shadow runs: after the client has its answer, in background tasks, bounded.

    At most ``max_pending`` runs wait or run at once per process; beyond that a run is skipped and
    counted in :attr:`skipped` (a shadow must never slow the champion down or grow without bound).
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, db: Callable[[], ResultsDB], *, max_pending: int
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._db = db
        self.max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        self.skipped: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.stored: dict[str, int] = {}

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(
        self,
        spec: PipelineSpec,
        model: LoadedModel,
        observation_id: str,
        data: bytes,
        metadata: JsonObject | None = None,
    ) -> bool:
        """Schedule one shadow run (call on the event loop); False when the queue is full. ``metadata``:
        the request's, so the challenger reads the bytes as the champion did (a crop-health band map)."""
        if len(self._tasks) >= self.max_pending:
            self.skipped[spec.name] = self.skipped.get(spec.name, 0) + 1
            log.debug("shadow queue full; skipped observation %s of %s", observation_id, spec.name)
            return False
        task = asyncio.get_running_loop().create_task(
            self._run(spec, model, observation_id, data, metadata), name=f"keeneye-shadow-{spec.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(
        self,
        spec: PipelineSpec,
        model: LoadedModel,
        observation_id: str,
        data: bytes,
        metadata: JsonObject | None,
    ) -> None:
        started = time.perf_counter()
        manifest = model.bundle.manifest
        try:
            prepared = await asyncio.to_thread(prepare, spec, manifest, data, self.settings, metadata)
            outputs = await run_model(model.batcher, prepared)  # per tile for a geo pipeline
            result = await asyncio.to_thread(finish, spec, manifest, model.ref, prepared, outputs)
            latency_ms = (time.perf_counter() - started) * 1000
            row = _prediction_row(observation_id, spec, model, result, latency_ms)
            await asyncio.to_thread(insert_shadow_predictions, self._db(), [row])
        except Exception as exc:  # a failing shadow is the challenger's problem, never the client's
            self.failed[spec.name] = self.failed.get(spec.name, 0) + 1
            log.warning("shadow run of %s v%s failed: %s", spec.name, model.ref.version, _one_line(exc))
            return
        self.stored[spec.name] = self.stored.get(spec.name, 0) + 1
        self.metrics.variant_predictions.labels(spec.name, Variant.shadow.value).inc()

    async def aclose(self) -> None:
        """Wait for the runs in flight (their results are worth keeping)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def run_shadow_batch(
    db: ResultsDB,
    metrics: Metrics,
    spec: PipelineSpec,
    model: LoadedModel,
    items: Sequence[tuple[str, Prepared]],
) -> int:
    """The stream's shadow: one challenger run per same-shaped group of already decoded inputs,
    predictions stored in one transaction. Returns how many were stored; never raises."""
    if not items:
        return 0
    manifest = model.bundle.manifest
    try:
        inputs = [(obs_id, prepare_for(manifest, p)) for obs_id, p in items]
        groups: dict[tuple[tuple[int, ...], str], list[tuple[str, Prepared]]] = {}
        rows = []
        for obs_id, p in inputs:
            if p.geo is not None:  # crop-health: its own tiles
                t0 = time.perf_counter()
                outs = run_tiles_sync(model.model.run, p.geo)
                result = finish(spec, manifest, model.ref, p, outs)
                rows.append(_prediction_row(obs_id, spec, model, result, (time.perf_counter() - t0) * 1000))
                continue
            groups.setdefault((tuple(p.tensor.shape), str(p.tensor.dtype)), []).append((obs_id, p))
        for group in groups.values():
            t0 = time.perf_counter()
            outputs = model.model.run(np.stack([p.tensor for _, p in group]))
            per_item_ms = (time.perf_counter() - t0) * 1000 / len(group)
            for j, (obs_id, p) in enumerate(group):
                result = finish(spec, manifest, model.ref, p, [out[j] for out in outputs])
                rows.append(_prediction_row(obs_id, spec, model, result, per_item_ms))
        insert_shadow_predictions(db, rows)
    except Exception as exc:
        log.warning("shadow batch of %s v%s failed: %s", spec.name, model.ref.version, _one_line(exc))
        return 0
    metrics.variant_predictions.labels(spec.name, Variant.shadow.value).inc(len(rows))
    return len(rows)


def _one_line(exc: BaseException) -> str:
    text = exc.one_line() if isinstance(exc, KeeneyeError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]


__all__ = [
    "SHADOW_QUEUE",
    "ShadowRunner",
    "choose_variant",
    "in_shadow_sample",
    "prepare_for",
    "run_shadow_batch",
]
