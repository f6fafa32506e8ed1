"""The synchronous prediction path, shared by the HTTP API and ``keeneye predict``.

bytes → content hash → cache? → decode + validate → model input → micro-batched inference →
post-processing (+ one drift observation) → answer → object + observation + prediction stored → cache.
Storing is a group commit (:class:`~keeneye.store.GroupCommit`): concurrent requests' images and rows
are made durable together, one flush and one transaction per group, and each request is answered
only once its own rows and image are stored.
What follows the model's answer (cache, drift, storage record, review queue, per-variant counts) is
:mod:`keeneye.answering`, shared with the stream workers.
Bad input raises :class:`~keeneye.domain.InvalidInput` before anything is written except the
quarantined bytes and a ``rejected`` observation (one complete record, never half of one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from keeneye.answering import Answering, StoredAnswer
from keeneye.domain import Answer, AnswerJson, InvalidInput, JsonObject, ObservationStatus, Variant
from keeneye.imaging import content_hash, sniff_format
from keeneye.metrics import Metrics
from keeneye.models import BatcherClosed
from keeneye.monitoring.drift import DriftMonitors
from keeneye.pipelines import (
    LoadedModel,
    ModelRuntime,
    PipelineCatalog,
    PipelineSpec,
    answer_key,
    content_type_of,
    finish,
    observation_key,
    prepare,
    quarantine_key,
    run_model,
)
from keeneye.settings import Settings
from keeneye.store import Cache, GroupCommit, NewObject, NewObservation, ObjectStore, ResultsDB

log = logging.getLogger(__name__)
T = TypeVar("T")
# How often one request follows a model swap (alias moves come seconds apart, so one is the rule).
SWAP_RETRIES = 3
EARLY_STORE_MAX_IN_FLIGHT = 2  # requests in flight up to which images are stored while the model runs


class PredictionJson(AnswerJson, total=False):
    """The API's answer to one image: the answer's JSON and where it came from."""

    pipeline: str
    model_name: str
    model_version: str
    observation_id: str
    cached: bool
    processing_time_ms: float
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class _StoreJob:
    """One answered request waiting for the group commit."""

    spec: PipelineSpec
    loaded: LoadedModel
    variant: Variant
    data: bytes
    digest: str
    fmt: str | None
    metadata: JsonObject
    source: str
    answer: Answer
    latency_ms: float
    timings: dict[str, float]
    cached: bool = False  # the same bytes were answered (and queued for review) before
    object_stored: bool = False  # staged while the model ran (PredictionService._stage_image)

    @property
    def key(self) -> str:
        return observation_key(self.spec.name, self.digest, self.fmt)


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
        self.answering = Answering(db, cache, metrics, self.drift)
        self.writer: GroupCommit[_StoreJob, str] = GroupCommit(
            self._store_group,
            name="keeneye-store",
            max_group=settings.serving.store_group_max,
            on_group=lambda size, _seconds: metrics.store_group_size.observe(size),
        )
        self._in_flight = 0  # predict calls between arrival and answer, this process

    def close(self) -> None:
        """Store what is queued and stop the writer (at shutdown, after the last request)."""
        self.writer.close()

    async def _timed(self, pipeline: str, stage: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(fn)
        finally:
            self.metrics.observe_stage(pipeline, stage, time.perf_counter() - start)

    async def predict(
        self, pipeline: str, data: bytes, metadata: JsonObject | None = None, *, source: str = "http"
    ) -> PredictionJson:
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
        self._in_flight += 1
        try:
            return await self._predict(spec, data, digest, metadata, source, started)
        finally:
            self._in_flight -= 1

    async def _predict(
        self,
        spec: PipelineSpec,
        data: bytes,
        digest: str,
        metadata: JsonObject,
        source: str,
        started: float,
    ) -> PredictionJson:
        pipeline = spec.name
        staging = self._stage_image(spec, digest, data)
        # The content hash routes: a canary answers its share of inputs, a retry keeps its variant.
        loaded, variant = self.runtime.get_variant(pipeline, digest)
        key = answer_key(spec, digest, metadata)  # a geo pipeline's band map and CRS are in the key
        cached = self.answering.cached(pipeline, loaded.ref, key)
        timings: dict[str, float] = {}
        answer: Answer
        if cached is not None:
            answer, fmt = cached.answer, cached.format
        else:
            try:
                answer, fmt, timings, loaded, variant = await self._infer_current(
                    spec, digest, loaded, variant, data, metadata
                )
            except InvalidInput as exc:
                self.metrics.rejections.labels(pipeline, exc.reason).inc()
                await self._unstage(staging)
                await asyncio.to_thread(self._quarantine, spec, data, digest, metadata, source, exc)
                raise
            except Exception:
                if variant is Variant.champion:
                    raise
                # A failing canary never costs the client its answer: the champion gives it, and the
                # canary's missing answers roll it back (docs/rollout.md).
                log.warning("canary %s v%s failed; the champion answers", pipeline, loaded.ref.version)
                loaded, variant = self.runtime.get(pipeline), Variant.champion
                answer, fmt, timings = await self._infer(spec, loaded, data, metadata)
            self.answering.remember(pipeline, loaded.ref, key, answer)
        t_store = time.perf_counter()
        staged_key = await self._staged_key(staging)
        observation_id = await self.writer.submit(
            _StoreJob(
                spec,
                loaded,
                variant,
                data,
                digest,
                fmt,
                metadata,
                source,
                answer,
                (time.perf_counter() - started) * 1000,
                timings,
                cached is not None,
                object_stored=staged_key is not None and staged_key == observation_key(pipeline, digest, fmt),
            )
        )
        self.runtime.shadow(spec, digest, observation_id, data, metadata)  # in the background, when sampled
        timings["store"] = (time.perf_counter() - t_store) * 1000
        self.metrics.observe_stage(pipeline, "store", timings["store"] / 1000)
        total_ms = (time.perf_counter() - started) * 1000
        self.metrics.request_seconds.labels(pipeline).observe(total_ms / 1000)
        response: PredictionJson = {
            **answer.to_json(),
            "pipeline": pipeline,
            "model_name": loaded.ref.name,
            "model_version": loaded.ref.version,
            "observation_id": observation_id,
            "cached": cached is not None,
            "processing_time_ms": round(total_ms, 2),
            "timings_ms": {k: round(v, 2) for k, v in timings.items()},
        }
        return response

    async def _infer_current(
        self,
        spec: PipelineSpec,
        digest: str,
        loaded: LoadedModel,
        variant: Variant,
        data: bytes,
        metadata: JsonObject | None = None,
    ) -> tuple[Answer, str, dict[str, float], LoadedModel, Variant]:
        """:meth:`_infer` on the model that serves now: when an alias move or a rollout swapped
        ``loaded`` out while this request was on its way to it (its batcher closed), the runtime
        already serves the successor, which answers instead, so a switch fails no request."""
        for _ in range(SWAP_RETRIES):
            try:
                answer, fmt, timings = await self._infer(spec, loaded, data, metadata)
                return answer, fmt, timings, loaded, variant
            except BatcherClosed:
                successor, successor_variant = self.runtime.get_variant(spec.name, digest)
                if successor is loaded:
                    raise  # closing for good (shutdown), not swapped
                loaded, variant = successor, successor_variant
        answer, fmt, timings = await self._infer(spec, loaded, data, metadata)
        return answer, fmt, timings, loaded, variant

    async def _infer(
        self, spec: PipelineSpec, loaded: LoadedModel, data: bytes, metadata: JsonObject | None = None
    ) -> tuple[Answer, str, dict[str, float]]:
        manifest = loaded.bundle.manifest
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        prepared = await self._timed(
            spec.name, "decode", lambda: prepare(spec, manifest, data, self.settings, metadata)
        )
        timings["decode"] = (time.perf_counter() - t0) * 1000

        t1 = time.perf_counter()
        outputs = await run_model(loaded.batcher, prepared)  # one submit, or one per tile (geo)
        infer_ms = (time.perf_counter() - t1) * 1000
        timings["infer"] = infer_ms  # includes the wait for batch company (queue)
        self.metrics.observe_stage(spec.name, "infer", infer_ms / 1000)

        def post() -> Answer:
            answer = finish(spec, manifest, loaded.ref, prepared, outputs)
            # O(features) per call; never raises. A closing drift window (once per window) runs here too.
            champion = loaded is not self.runtime.challenger(spec.name)
            self.answering.observe_drift(
                spec.name, loaded, answer, outputs, prepared.image, champion=champion
            )
            return answer

        t2 = time.perf_counter()
        answer = await self._timed(spec.name, "post", post)
        timings["post"] = (time.perf_counter() - t2) * 1000
        return answer, prepared.image.format, timings

    # --- persistence (runs in a worker thread) ------------------------------------------------------

    def _store_group(self, jobs: Sequence[_StoreJob]) -> list[str]:
        """Images first (all durable together), then every observation and prediction in one
        transaction, then the review queue: a row never points at an image that is not there."""
        new: dict[str, NewObject] = {}
        for job in jobs:
            key = job.key
            if not job.object_stored and key not in new and not self.objects.exists(key):
                new[key] = NewObject(key, job.data, content_type_of(job.fmt))
        if new:
            self.objects.put_many(list(new.values()))
        ids = self.db.record_predictions(
            [
                (
                    NewObservation(
                        pipeline=job.spec.name,
                        content_hash=job.digest,
                        object_key=job.key,
                        content_type=content_type_of(job.fmt),
                        size_bytes=len(job.data),
                        metadata=job.metadata,
                        source=job.source,
                    ),
                    self.answering.prediction_record(
                        job.loaded, job.variant, job.answer, job.latency_ms, job.timings
                    ),
                )
                for job in jobs
            ]
        )
        # Review queue and per-variant counts, per pipeline; an image answered from the cache was
        # queued for review with its first observation already, so it is not queued twice.
        groups: dict[tuple[str, bool], list[StoredAnswer]] = {}
        for job, observation_id in zip(jobs, ids, strict=True):
            groups.setdefault((job.spec.name, job.cached), []).append(
                StoredAnswer(observation_id, job.answer, job.variant)
            )
        specs = {job.spec.name: job.spec for job in jobs}
        for (name, cached), answers in groups.items():
            self.answering.stored(specs[name], answers, review=not cached)
        return ids

    def _stage_image(
        self, spec: PipelineSpec, digest: str, data: bytes
    ) -> asyncio.Task[tuple[str, bool]] | None:
        """At low load, store the image while the model runs, so a request's answer waits only for
        its row: the image's fsyncs overlap decode and inference instead of following them. Under
        load the group commit writes images together instead (fewer fsyncs per request, no threads
        parked on the disk). Not for geo pipelines, whose band map comes with the request: elsewhere
        the bytes alone decide whether a request is refused, so a refused request's image, taken back
        by :meth:`_unstage`, is one no concurrent request with the same bytes can be storing a row for."""
        if spec.input.geo or self._in_flight > EARLY_STORE_MAX_IN_FLIGHT:
            return None
        try:
            fmt = sniff_format(data)
        except InvalidInput:
            return None  # refused by prepare, with its reason
        key = observation_key(spec.name, digest, fmt)
        return asyncio.get_running_loop().create_task(
            asyncio.to_thread(self._put_new, key, data, content_type_of(fmt)), name="keeneye-stage-image"
        )

    def _put_new(self, key: str, data: bytes, content_type: str) -> tuple[str, bool]:
        """``data`` stored at ``key`` unless it is there already: the key, and whether this call wrote it."""
        if self.objects.exists(key):
            return key, False
        self.objects.put(key, data, content_type=content_type)
        return key, True

    async def _staged_key(self, staging: asyncio.Task[tuple[str, bool]] | None) -> str | None:
        """The key the staged image is durable at, or None (not staged, or the write failed: the group
        commit writes it then, as for any request)."""
        if staging is None:
            return None
        try:
            key, _wrote = await staging
        except Exception:
            log.warning("staging an image failed; the group commit stores it", exc_info=True)
            return None
        return key

    async def _unstage(self, staging: asyncio.Task[tuple[str, bool]] | None) -> None:
        """Take back the image staged for a request that was then refused (no row points at it)."""
        if staging is None:
            return
        try:
            key, wrote = await staging
        except Exception:
            return  # nothing was stored
        if wrote:
            await asyncio.to_thread(self.objects.delete, key)

    def _quarantine(
        self,
        spec: PipelineSpec,
        data: bytes,
        digest: str,
        metadata: JsonObject,
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
