"""The synchronous prediction path, shared by the HTTP API and ``keeneye predict``.

bytes → content hash → cache? → decode + validate → model input → micro-batched inference →
post-processing (+ one drift observation) → result → object + observation + prediction stored → cache.
Bad input raises :class:`~keeneye.domain.InvalidInput` before anything is written except the
quarantined bytes and a ``rejected`` observation (one complete record, never half of one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from keeneye.domain import InvalidInput, ObservationStatus, Variant
from keeneye.imaging import content_hash
from keeneye.lifecycle.labels import queue_answers
from keeneye.monitoring.drift import DriftMonitors
from keeneye.monitoring.metrics import Metrics
from keeneye.pipelines import (
    LoadedModel,
    ModelRuntime,
    PipelineCatalog,
    PipelineSpec,
    content_type_of,
    finish,
    observation_key,
    prepare,
    quarantine_key,
)
from keeneye.settings import Settings
from keeneye.store import Cache, ObjectStore, ResultsDB

log = logging.getLogger(__name__)
T = TypeVar("T")


class PredictionService:
    def __init__(
        self,
        settings: Settings,
        catalog: PipelineCatalog,
        runtime: ModelRuntime,
        db: ResultsDB,
        objects: ObjectStore,
        cache: Cache,
        metrics: Metrics,
        drift: DriftMonitors | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.runtime = runtime
        self.db = db
        self.objects = objects
        self.cache = cache
        self.metrics = metrics
        self.drift = drift if drift is not None else DriftMonitors(db, settings, metrics)

    async def _timed(self, pipeline: str, stage: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(fn)
        finally:
            self.metrics.observe_stage(pipeline, stage, time.perf_counter() - start)

    async def predict(
        self, pipeline: str, data: bytes, metadata: dict[str, Any] | None = None, *, source: str = "http"
    ) -> dict[str, Any]:
        """Answer one image; raises InvalidInput (with an HTTP status) for anything refused."""
        started = time.perf_counter()
        spec = self.catalog.get(pipeline)
        metadata = metadata or {}
        if not data:
            raise InvalidInput(
                "empty",
                "the request carries no image bytes",
                status=400,
                fix="send the image as multipart field 'file' or as the raw body",
            )
        digest = content_hash(data)
        # The content hash routes: a canary answers its share of inputs, a retry keeps its variant.
        loaded, variant = self.runtime.get_variant(pipeline, digest)
        cache_key = f"pred:{pipeline}:{loaded.ref.name}:{loaded.ref.version}:{digest}"
        cached = self.cache.get(cache_key)
        timings: dict[str, float] = {}
        if cached is not None:
            self.metrics.cache.labels(pipeline, "hit").inc()
            result: dict[str, Any] = json.loads(cached)
            fmt = result.pop("_format", None)
        else:
            self.metrics.cache.labels(pipeline, "miss").inc()
            try:
                result, fmt, timings = await self._infer(spec, loaded, data)
            except InvalidInput as exc:
                self.metrics.rejections.labels(pipeline, exc.reason).inc()
                await asyncio.to_thread(self._quarantine, spec, data, digest, metadata, source, exc)
                raise
            except Exception:
                if variant is Variant.champion:
                    raise
                # A failing canary never costs the client its answer: the champion gives it, and the
                # canary's missing answers roll it back (docs/rollout.md).
                log.warning("canary %s v%s failed; the champion answers", pipeline, loaded.ref.version)
                loaded, variant = self.runtime.get(pipeline), Variant.champion
                cache_key = f"pred:{pipeline}:{loaded.ref.name}:{loaded.ref.version}:{digest}"
                result, fmt, timings = await self._infer(spec, loaded, data)
            self.cache.set(cache_key, json.dumps({**result, "_format": fmt}).encode())
        t_store = time.perf_counter()
        observation_id = await asyncio.to_thread(
            self._store,
            spec,
            loaded,
            variant,
            data,
            digest,
            fmt,
            metadata,
            source,
            result,
            (time.perf_counter() - started) * 1000,
            timings,
        )
        self.metrics.variant_predictions.labels(pipeline, variant.value).inc()
        self.runtime.shadow(spec, digest, observation_id, data)  # in the background, when sampled
        timings["store"] = (time.perf_counter() - t_store) * 1000
        self.metrics.observe_stage(pipeline, "store", timings["store"] / 1000)
        total_ms = (time.perf_counter() - started) * 1000
        self.metrics.request_seconds.labels(pipeline).observe(total_ms / 1000)
        return {
            **result,
            "pipeline": pipeline,
            "model_name": loaded.ref.name,
            "model_version": loaded.ref.version,
            "observation_id": observation_id,
            "cached": cached is not None,
            "processing_time_ms": round(total_ms, 2),
            "timings_ms": {k: round(v, 2) for k, v in timings.items()},
        }

    async def _infer(
        self, spec: PipelineSpec, loaded: LoadedModel, data: bytes
    ) -> tuple[dict[str, Any], str, dict[str, float]]:
        manifest = loaded.bundle.manifest
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        prepared = await self._timed(
            spec.name, "decode", lambda: prepare(spec, manifest, data, self.settings)
        )
        timings["decode"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        outputs = await loaded.batcher.submit(prepared.tensor)
        infer_ms = (time.perf_counter() - t1) * 1000
        timings["infer"] = infer_ms  # includes the wait for batch company (queue)
        self.metrics.observe_stage(spec.name, "infer", infer_ms / 1000)

        def post() -> dict[str, Any]:
            result = finish(spec, manifest, loaded.ref, prepared, outputs)
            # O(features) per call; never raises. A closing drift window (once per window) runs here too.
            # Drift follows the champion only: one monitor per pipeline, and a canary would replace it.
            if loaded is not self.runtime.challenger(spec.name):
                self.drift.observe(spec.name, loaded, result, outputs, prepared.image)
            return result

        t2 = time.perf_counter()
        result = await self._timed(spec.name, "post", post)
        timings["post"] = (time.perf_counter() - t2) * 1000
        return result, prepared.image.format, timings

    # --- persistence (runs in a worker thread) ------------------------------------------------------

    def _store(
        self,
        spec: PipelineSpec,
        loaded: LoadedModel,
        variant: Variant,
        data: bytes,
        digest: str,
        fmt: str | None,
        metadata: dict[str, Any],
        source: str,
        result: dict[str, Any],
        latency_ms: float,
        timings: dict[str, float],
    ) -> str:
        key = observation_key(spec.name, digest, fmt)
        if not self.objects.exists(key):
            self.objects.put(key, data, content_type=content_type_of(fmt))
        observation_id = self.db.record_prediction(
            pipeline=spec.name,
            content_hash=digest,
            object_key=key,
            content_type=content_type_of(fmt),
            size_bytes=len(data),
            metadata=metadata,
            source=source,
            model_name=loaded.ref.name,
            model_version=loaded.ref.version,
            variant=variant,
            task=loaded.bundle.manifest.task.value,
            result=result,
            decision=result.get("decision"),
            confidence=result.get("confidence"),
            latency_ms=latency_ms,
            timings=timings,
        )
        queue_answers(self.db, spec, [(observation_id, result)])  # uncertain answers → review queue
        return observation_id

    def _quarantine(
        self,
        spec: PipelineSpec,
        data: bytes,
        digest: str,
        metadata: dict[str, Any],
        source: str,
        exc: InvalidInput,
    ) -> None:
        """Keep refused bytes for inspection, with one complete ``rejected`` observation."""
        key = quarantine_key(spec.name, digest)
        try:
            self.objects.put(key, data)
            self.db.create_observation(
                pipeline=spec.name,
                content_hash=digest,
                object_key=key,
                content_type="application/octet-stream",
                size_bytes=len(data),
                metadata=metadata,
                source=source,
                status=ObservationStatus.rejected,
                reason=f"{exc.reason}: {exc.message}",
            )
        except Exception:  # quarantine is best effort; the client still gets its precise 4xx
            log.exception("could not quarantine a refused input for pipeline %s", spec.name)
