"""Stream workers: the pipeline worker that consumes ``.in``.

:class:`~keeneye.workers.WorkerBase` (shared by every long-running loop) gives the worker
``setup`` / ``run_loop`` / ``teardown``, a stop event set by SIGTERM/SIGINT (drain: the batch in hand
is finished, then the loop exits), a busy-fraction gauge and a status file
``<home>/run/workers/<name>-<pid>.json`` (:func:`status_dir`) that the supervisor and
``GET /v1/system`` read without importing the worker.

:class:`PipelineWorker` — per batch of messages from ``keeneye.<pipeline>.in``: parse (malformed →
DLQ) → claim the observation (``queued|processing → processing``; already finished → skip) → load the
bytes (inline or object store) → decode + validate (invalid → ``rejected``, bytes quarantined) → one
model run for the whole batch → post-process → prediction + ``done`` in one transaction → cache →
``keeneye.<pipeline>.out`` (flushed) → ack. Anything else that fails is retried: the message is
published again and the observation re-queued, with exponential backoff; after
``settings.stream.max_attempts`` (the observation's ``attempts`` column, since Kafka cannot count
deliveries) it goes to the DLQ and the observation to ``failed``.

A crop-health orthomosaic (a GeoTIFF over the pipeline's upload or pixel limit, queued by ``keeneye
ingest``) is never loaded whole: the worker reads the stored object as a local file (in place for a
``file://`` store, streamed to a temporary file from S3) and its model thread answers it block by
block (:mod:`keeneye.pipelines.mosaic_jobs`), storing the index maps as COGs for the index routes
before the answer is stored like any other (prediction, ``done``, field history). A mosaic holds
its batch's results until it is answered (minutes for 20,000² px); meanwhile the worker keeps what it
holds claimed (:meth:`PipelineWorker._keep_alive`, every third of the shortest of the SQLite lease,
Kafka's poll interval and the reconciler's ``stale_after_seconds``), so no other worker answers the
same mosaic again while this one is alive — and one does once it dies.

The model runs on threads of its own (ONNX Runtime releases the GIL), ``model_runs`` batches at a time
(2 by default, each on an equal share of the cores): while it works, the worker's thread takes in the
next batch (poll, claim, decode) and settles the oldest (post-process, store, publish, ack). Two
concurrent runs keep the cores busy where one run would stall at its own barriers while the worker's
thread holds a core — on 2 cores, about a quarter more images/s than one run on both (docs/streams.md,
Performance). Every bus and database call stays on the worker's thread and batches settle in the order
they were polled, so the guarantees do not change: nothing is acked before it is stored, and an
observation held by a batch at the model is skipped if it arrives again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

from keeneye.answering import Answering, StoredAnswer
from keeneye.domain import InvalidInput, JsonObject, KeeneyeError, NotFound, ObservationStatus, Variant
from keeneye.imaging import content_hash, sniff_format
from keeneye.metrics import Metrics
from keeneye.models.manifest import ModelManifest
from keeneye.monitoring.drift import DriftMonitors
from keeneye.pipelines import (
    LoadedModel,
    ModelNotReady,
    ModelRuntime,
    PipelineCatalog,
    content_type_of,
    finish,
    observation_key,
    prepare,
    prepare_for,
    quarantine_key,
    run_tiles_sync,
)
from keeneye.pipelines.mosaic_jobs import (
    answer_mosaic,
    check_mosaic,
    is_mosaic_object,
    local_object,
    store_index_maps,
    upload_limit_of,
)
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings
from keeneye.store import (
    Cache,
    Completion,
    ObjectStore,
    ObservationRecord,
    ResultsDB,
    open_cache,
    open_object_store,
    open_results_db,
)
from keeneye.stream.batches import Batch, BatchItem
from keeneye.stream.bus import Bus, Consumer, Message, Outgoing, keep_alive_seconds, open_bus
from keeneye.stream.messages import (
    MalformedMessage,
    ObservationMessage,
    dead_letter,
    input_topic,
    output_topic,
    parse_observation,
    result_payload,
)
from keeneye.stream.reconciler import Reconciler
from keeneye.stream.threads import MODEL_RUNS, model_threads
from keeneye.workers import WorkerBase

log = logging.getLogger(__name__)

DEFAULT_GROUP = "keeneye-workers"
CLAIMABLE = (ObservationStatus.queued, ObservationStatus.processing)
_BACKOFF_BASE_SECONDS = 0.1
# Where a worker's time goes (``PipelineWorker.stage_seconds``); ``wait``: waiting for the model.
WORKER_STAGES = ("claim", "decode", "infer", "wait", "post", "store", "publish", "ack")


def status_dir(settings: Settings) -> Path:
    """Where workers write their status files (the supervisor reads them)."""
    return settings.home / "run" / "workers"


# --------------------------------------------------------------------------------------------------
# The pipeline worker
# --------------------------------------------------------------------------------------------------


class _OnePipeline(PipelineCatalog):
    """The catalog seen by a worker's model runtime: only its pipeline, so it loads only that model."""

    def __init__(self, settings: Settings, pipeline: str) -> None:
        super().__init__(settings)
        self._only = pipeline

    def names(self) -> list[str]:
        return [self._only]


class PipelineWorker(WorkerBase):
    """Consumes ``keeneye.<pipeline>.in`` in batches; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        pipeline: str,
        *,
        group: str = DEFAULT_GROUP,
        batch_size: int | None = None,
        max_attempts: int | None = None,
        reconcile: bool = True,
        model_runs: int = MODEL_RUNS,
    ) -> None:
        super().__init__(
            pipeline,
            status_path=status_dir(settings) / f"{pipeline}-{os.getpid()}.json",
            status_interval=settings.stream.status_interval_seconds,
        )
        self.settings = settings
        self.pipeline = pipeline
        self.group = group
        self.batch_size = batch_size or settings.stream.batch_size
        self.max_attempts = max_attempts or settings.stream.max_attempts
        self.reconcile = reconcile
        self.counts = {"done": 0, "rejected": 0, "failed": 0, "dead_lettered": 0, "retried": 0, "skipped": 0}
        # Wall seconds spent per stage since start (``wait``: this thread waiting for the model), for
        # benchmarks and profiling: a large ``wait`` means the model is the limit.
        self.stage_seconds = dict.fromkeys(WORKER_STAGES, 0.0)
        self.model_runs = max(1, model_runs)
        self._in_flight: deque[Batch] = deque()  # handed to the model, not settled yet; in poll order
        self._failures = 0  # consecutive failing batches, for the backoff
        self._next_refresh = 0.0
        self._next_reconcile = 0.0
        self._next_drift_tick = 0.0
        self._warned_not_ready = False
        # While the model holds a batch this long, its messages and observations are kept claimed.
        self._keep_alive_every = min(
            keep_alive_seconds(settings.bus), settings.stream.stale_after_seconds / 3
        )
        self.kept_alive = 0  # keep-alive calls made (for tests and benchmarks)

    # -- lifecycle --------------------------------------------------------------------------------

    def setup(self) -> None:
        s = self.settings
        self.catalog = PipelineCatalog(s)
        self.spec = self.catalog.get(self.pipeline)  # NotFound for an unknown pipeline: refuse to start
        self.db: ResultsDB = open_results_db(s)
        self.objects: ObjectStore = open_object_store(s)
        self.cache: Cache = open_cache(s)
        self.bus: Bus = open_bus(s)
        self.metrics = Metrics()
        self.drift = DriftMonitors(self.db, s, self.metrics)  # the champion's input drift, per window
        self.answering = Answering(self.db, self.cache, self.metrics, self.drift)
        registry = ModelRegistry(s, events=self.db)
        model_settings = s.model_copy(update={"inference": model_threads(s.inference, self.model_runs)})
        self.runtime = ModelRuntime(model_settings, _OnePipeline(s, self.pipeline), registry, self.metrics)
        # ONNX Runtime releases the GIL: with the model on threads of its own, this one takes in the
        # next batch and settles the oldest while the model works.
        self._model_threads = ThreadPoolExecutor(self.model_runs, thread_name_prefix=f"model-{self.pipeline}")
        # The runtime is asyncio-based; a private loop drives its refresh without the alias poller.
        self._loop = asyncio.new_event_loop()
        self._refresh_models()
        # Kafka: a topic that does not exist yet is assigned only after a metadata refresh, so the
        # first messages would wait ~1 s; creating it first makes the group balance on it at once.
        try:
            self.bus.ensure_topics([input_topic(self.pipeline), output_topic(self.pipeline)])
            warm_up = getattr(self.bus, "warm_up", None)  # Kafka: start the producer before the first result
            if callable(warm_up):
                warm_up([output_topic(self.pipeline)])
        except Exception:
            log.warning("cannot create the pipeline's topics; the first publish will", exc_info=True)
        self.consumer: Consumer = self.bus.subscribe([input_topic(self.pipeline)], self.group)
        self.reconciler = Reconciler(s, self.pipeline, db=self.db, objects=self.objects, bus=self.bus)
        # Reconcile soon after start (covers an API that died between commit and publish), not at once.
        self._next_reconcile = time.monotonic() + min(5.0, s.stream.reconcile_interval_seconds)
        log.info("worker started", extra={"pipeline": self.pipeline, "group": self.group, "pid": os.getpid()})

    def teardown(self) -> None:
        try:
            self.drain()
        except Exception:  # its messages stay unacked and come back
            log.warning("cannot settle the batch in hand; it will be redelivered", exc_info=True)
        with contextlib.suppress(Exception):
            self._model_threads.shutdown(wait=True)
        with contextlib.suppress(Exception):
            self.drift.flush_all()  # a partial window (≥ drift_min_samples) still counts
        with contextlib.suppress(Exception):
            self.consumer.close()  # SQLite: unacked claims go back now; Kafka: leave the group
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self.runtime.stop())
        self._loop.close()
        with contextlib.suppress(Exception):
            self.bus.close()
        with contextlib.suppress(Exception):
            self.cache.close()

    def status(self) -> JsonObject:
        return {**super().status(), "pipeline": self.pipeline, "group": self.group, **self.counts}

    # -- the loop ---------------------------------------------------------------------------------

    def step(self) -> None:
        """Take in one batch and hand it to the model, then settle the oldest batches that are ready.

        The model holds up to ``model_runs`` batches while this thread claims and decodes the next one
        and stores, announces and acks the oldest; :meth:`drain` settles what is left.
        """
        self._housekeeping()
        try:
            loaded = self.runtime.get(self.pipeline)
        except ModelNotReady as exc:
            self.drain()
            if not self._warned_not_ready:
                log.warning("waiting for a model: %s", exc.one_line())
                self._warned_not_ready = True
            self.stop_event.wait(1.0)  # messages wait in the bus meanwhile
            return
        # With a batch at the model, take only what is there: its results must not wait for new input.
        timeout = 0.0 if self._in_flight else self.settings.stream.poll_timeout_seconds
        messages = self.consumer.poll(self.batch_size, timeout)
        if not messages and not self._in_flight:
            return
        with self.busy():
            ok = True
            if messages:
                batch = self._take(messages, loaded, at_model=self._in_flight)
                self._start_model(batch)
                self._in_flight.append(batch)
            # Settle the oldest batch once the model is done with it; wait for it when the model has
            # more than it can run at once, or when no input came (then results come first).
            while self._in_flight and (
                not messages or len(self._in_flight) > self.model_runs or self._in_flight[0].model_done()
            ):
                ok = self._settle(self._in_flight.popleft()) and ok
        self._backoff(ok)

    def drain(self) -> None:
        """Settle the batches in hand (stop, teardown): nothing is left claimed but unsettled."""
        while self._in_flight:
            with self.busy():
                self._backoff(self._settle(self._in_flight.popleft()))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self._refresh_models()
        if now >= self._next_drift_tick:
            # Publish this worker's drift samples to the pipeline-wide window (and close it when its
            # time is up) also while no message arrives; never raises.
            self._next_drift_tick = now + self.settings.monitoring.drift_publish_seconds
            self.drift.tick()
        if self.reconcile and now >= self._next_reconcile:
            self._next_reconcile = now + self.settings.stream.reconcile_interval_seconds
            try:
                self.reconciler.run_once()
            except Exception:
                log.warning("reconcile pass failed; next pass retries", exc_info=True)

    def _backoff(self, ok: bool) -> None:
        if ok:
            self._failures = 0
            return
        self._failures += 1
        delay = min(
            self.settings.stream.retry_backoff_max_seconds,
            _BACKOFF_BASE_SECONDS * 2 ** (self._failures - 1),
        )
        self.stop_event.wait(delay)

    def _refresh_models(self) -> None:
        self._next_refresh = time.monotonic() + self.settings.inference.alias_poll_seconds
        try:
            self._loop.run_until_complete(self.runtime.refresh())  # follows alias moves
        except Exception:
            log.warning("model refresh failed; keeping the model in service", exc_info=True)

    def _clock(self, stage: str, since: float) -> float:
        """Add the time since ``since`` (``perf_counter``) to ``stage``; returns it in milliseconds."""
        seconds = time.perf_counter() - since
        self.stage_seconds[stage] += seconds
        return seconds * 1000

    # -- one batch --------------------------------------------------------------------------------

    def _take(self, messages: list[Message], loaded: LoadedModel, *, at_model: deque[Batch]) -> Batch:
        """Parse (malformed → DLQ), claim, read and decode a polled batch; look up the cache.

        ``at_model``: the batches still with the model. A second message for one of their observations
        is a duplicate, acked as skipped, exactly as a duplicate within one batch is.
        """
        batch = Batch(messages, loaded)
        for message in messages:
            try:
                obs = self._parse(message)
            except MalformedMessage as exc:
                sent = self._dead_letter(message, exc.reason, f"{exc.reason}: {exc.message}")
                batch.decided.append((message, sent))
                continue
            batch.items.append(BatchItem(message, obs))
        t0 = time.perf_counter()
        self._claim_batch(batch.items, taken={i for b in at_model for i in b.claimed_ids()})
        self._clock("claim", t0)
        for item in batch.items:
            if item.record is not None and not item.ack and item.error is None:
                self._load(item, loaded.bundle.manifest)
        decoded = [
            i
            for i in batch.items
            if (i.prepared is not None or (i.mosaic is not None and not i.ack)) and i.error is None
        ]
        self._route(decoded, loaded)
        batch.todo = self._from_cache(decoded, loaded)
        return batch

    def _settle(self, batch: Batch) -> bool:
        """Post-process, store, announce and ack a batch the model has; False when something must be
        retried (then the loop backs off)."""
        self._wait_for_model(batch)
        for item in batch.todo:
            if item.mosaic is not None and isinstance(item.error, InvalidInput):
                exc, item.error = item.error, None  # read block by block, the mosaic was refused
                item.ack = self._reject(item, exc)
        self._post_process(batch.todo, batch.loaded)
        ready = [i for i in batch.items if i.answer is not None and i.error is None]
        self._complete(ready, batch.loaded)

        ok = all(ack for _, ack in batch.decided)
        for item in batch.items:
            if item.error is not None:
                item.ack = self._retry_or_fail(item)
            ok = ok and item.ack and item.error is None
        ack_of = {id(m): a for m, a in batch.decided} | {id(i.message): i.ack for i in batch.items}
        to_ack = [m for m in batch.messages if ack_of[id(m)]]  # in poll order, as both buses prefer
        if to_ack:
            t0 = time.perf_counter()
            try:
                self.consumer.ack_many(to_ack)
            except Exception as exc:
                # Effects are stored; the unacked messages come back and are skipped as finished.
                log.warning("cannot ack the batch; it will be redelivered", extra={"error": repr(exc)})
                ok = False
            self._clock("ack", t0)
        self.processed += len(ready)
        # A shadow run's challenger answers the sampled items again, after their answers are out.
        self.runtime.shadow_batch(
            self.spec, [(i.record.id, i.prepared) for i in ready if i.ack and i.record and i.prepared]
        )
        for item in batch.items:
            item.resources.close()  # a mosaic's temporary copy
        return ok

    def _parse(self, message: Message) -> ObservationMessage:
        obs = parse_observation(message)
        if obs.pipeline != self.pipeline:
            if obs.pipeline not in self.catalog:
                raise MalformedMessage("unknown_pipeline", f"pipeline {obs.pipeline!r} does not exist")
            raise MalformedMessage(
                "wrong_topic", f"message for pipeline {obs.pipeline!r} on {message.topic!r}"
            )
        return obs

    def _claim_batch(self, items: list[BatchItem], *, taken: set[str]) -> None:
        """Claim every observation of the batch in one transaction; settles those needing no work.

        Claimed items get ``record``; a second message for an observation already in this batch or in
        ``taken`` (claimed by the batch at the model) is a duplicate (redelivery or reconciler) and is
        acked as skipped — the first one does the work.
        """
        primary: dict[str, BatchItem] = {}
        for item in items:
            obs_id = item.obs.observation_id
            if obs_id in primary or obs_id in taken:
                self.counts["skipped"] += 1
                item.ack = True
            else:
                primary[obs_id] = item
        if not primary:
            return
        try:
            claimed = self.db.claim_many(list(primary), expect=CLAIMABLE)
            unclaimed = [i for i in primary if i not in claimed]
            others = self.db.get_observations(unclaimed) if unclaimed else {}
        except Exception as exc:  # database trouble: nothing claimed, the bus brings them back
            for item in primary.values():
                item.error = exc
            return
        for obs_id, item in primary.items():
            if obs_id in claimed:
                item.record = claimed[obs_id]
                continue
            try:
                record = others.get(obs_id)
                if record is None:
                    # Published by a producer outside keeneye: accept it here first (invariant 1).
                    item.record = self._adopt_and_claim(item)
                else:
                    # Finished already: a redelivery or a reconciler duplicate. Idempotent: no new
                    # work, but say the result again in case the first .out publish never made it.
                    if record.status is ObservationStatus.done:
                        self._republish_result(record)
                    self.counts["skipped"] += 1
                    item.ack = True
            except NotFound as exc:  # the bytes are gone for good: retrying cannot help
                item.ack = self._fail(item, "missing_object", f"missing_object: {exc.message}")
            except Exception as exc:
                item.error = exc

    def _adopt_and_claim(self, item: BatchItem) -> ObservationRecord | None:
        """Record an unknown observation, then claim it; ``None`` (item settled) when not claimable."""
        obs_id = item.obs.observation_id
        self._adopt(item)
        if not self.db.set_status(obs_id, ObservationStatus.processing, expect=CLAIMABLE):
            item.ack = True
            return None
        record = self.db.get_observation(obs_id)
        if record is None:  # deleted under us
            item.ack = True
        return record

    def _load(self, item: BatchItem, manifest: ModelManifest) -> None:
        """Read the bytes of a claimed item and prepare the input of the model that will run it;
        settles invalid items."""
        obs = item.obs
        record = item.record
        assert record is not None
        try:
            if record.attempts > self.max_attempts:
                # Only a crash loop gets here (failures are counted below): e.g. an input that kills
                # the process. Stop trying.
                reason = f"gave up after {record.attempts - 1} attempts (worker crashes?)"
                item.ack = self._fail(item, "crash_loop", reason)
                return
            key = obs.object_key or record.object_key
            if obs.data is not None:
                item.data = obs.data
            elif key is None:
                raise NotFound(f"observation {obs.observation_id} has no object key")
            elif self.spec.input.geo and record.size_bytes > upload_limit_of(self.spec, self.settings):
                item.mosaic = item.resources.enter_context(local_object(self.objects, key))
            else:
                item.data = self.objects.get(key)
            over_limit = item.mosaic is None and is_mosaic_object(item.data, self.spec, self.settings)
            if over_limit and key is not None:  # a header over max_pixels: the mosaic path too
                item.mosaic = item.resources.enter_context(local_object(self.objects, key))
        except NotFound as exc:  # the bytes are gone for good: retrying cannot help
            item.ack = self._fail(item, "missing_object", f"missing_object: {exc.message}")
            return
        except Exception as exc:
            item.error = exc
            return
        t0 = time.perf_counter()
        try:
            if item.mosaic is not None:
                check_mosaic(item.mosaic, self.spec, obs.metadata)  # the header; blocks on the model thread
            else:
                item.prepared = prepare(self.spec, manifest, item.data, self.settings, obs.metadata)
        except InvalidInput as exc:
            item.ack = self._reject(item, exc)
        except Exception as exc:
            item.error = exc
        item.timings["decode"] = self._clock("decode", t0)

    def _adopt(self, item: BatchItem) -> None:
        obs = item.obs
        if obs.data is None:
            data = self.objects.get(obs.object_key or "")  # NotFound: nothing to adopt
            key = obs.object_key or ""
        else:
            data = obs.data
            try:
                fmt: str | None = sniff_format(data)
            except InvalidInput:
                fmt = None  # the decode step rejects it with the precise reason
            key = observation_key(self.pipeline, content_hash(data), fmt)
            if not self.objects.exists(key):
                self.objects.put(key, data, content_type=content_type_of(fmt))
        self.db.create_observation(
            pipeline=self.pipeline,
            content_hash=content_hash(data),
            object_key=key,
            content_type=obs.content_type,
            size_bytes=len(data),
            metadata=obs.metadata,
            source=obs.source or "bus",
            status=ObservationStatus.queued,
            id=obs.observation_id,
        )

    def _route(self, items: list[BatchItem], champion: LoadedModel) -> None:
        """During a canary its share (by observation id) goes to the challenger, the same decoded image
        prepared for that model's input."""
        for item in items:
            model, variant = self.runtime.get_variant(self.pipeline, item.obs.observation_id)
            if model is champion or item.prepared is None:
                continue
            try:
                item.prepared = prepare_for(model.bundle.manifest, item.prepared)
            except Exception:  # an input the challenger cannot take: the champion answers it
                log.warning("canary cannot prepare an input; the champion answers", exc_info=True)
                continue
            item.model, item.variant = model, variant

    def _from_cache(self, items: list[BatchItem], loaded: LoadedModel) -> list[BatchItem]:
        """Give cached items their answer (same model version, same bytes); returns the others."""
        todo: list[BatchItem] = []
        for item in items:
            assert item.record is not None
            if item.mosaic is not None:  # answered afresh: its index maps are stored for this observation
                todo.append(item)
                continue
            cached = self.answering.cached(
                self.pipeline, (item.model or loaded).ref, item.record.content_hash
            )
            if cached is not None:
                item.answer = cached.answer
            else:
                todo.append(item)
        return todo

    def _start_model(self, batch: Batch) -> None:
        if batch.todo:
            batch.model_run = self._model_threads.submit(self._run_model, batch.todo, batch.loaded)

    def _wait_for_model(self, batch: Batch) -> None:
        if batch.model_run is None:
            return
        t0 = time.perf_counter()
        try:
            while True:
                try:
                    self.stage_seconds["infer"] += batch.model_run.result(timeout=self._keep_alive_every)
                    break
                except FutureTimeout:  # a long run (a mosaic): the batches in hand stay this worker's
                    self._keep_alive([batch, *self._in_flight])
        except Exception as exc:  # _run_model settles model errors itself; this is a bug: retry
            log.exception("model thread failed", extra={"pipeline": self.pipeline})
            for item in batch.todo:
                if item.outputs is None and item.error is None:
                    item.error = exc
        batch.model_run = None
        self._clock("wait", t0)

    def _run_model(self, items: list[BatchItem], loaded: LoadedModel) -> float:
        """On a model thread: one model run per group of same-shaped inputs (normally the batch);
        returns the seconds the runs took."""
        seconds = 0.0
        # One group per model (champion, or the challenger for the canary share) and input shape.
        groups: dict[tuple[int, tuple[int, ...], str], list[BatchItem]] = {}
        for item in items:
            if item.mosaic is not None:
                seconds += self._run_mosaic(item, item.model or loaded)
                continue
            assert item.prepared is not None
            if item.prepared.geo is not None:  # crop-health: its own tiles, at the model's input size
                seconds += self._run_tiles(item, item.model or loaded)
                continue
            tensor = item.prepared.tensor
            key = (id(item.model or loaded), tuple(tensor.shape), str(tensor.dtype))
            groups.setdefault(key, []).append(item)
        for group in groups.values():
            t0 = time.perf_counter()
            try:
                batch = np.stack([i.prepared.tensor for i in group if i.prepared is not None])
                outputs = (group[0].model or loaded).model.run(batch)
                for k, out in enumerate(outputs):
                    if out.ndim == 0 or out.shape[0] != len(group):
                        raise KeeneyeError(f"model output {k} has shape {out.shape}, not {len(group)} rows")
            except Exception as exc:  # a model failure is not the input's fault: retry
                log.warning("model run failed", extra={"pipeline": self.pipeline, "error": repr(exc)})
                for item in group:
                    item.error = exc
                continue
            run_seconds = time.perf_counter() - t0
            seconds += run_seconds
            self.metrics.batch_size.labels(self.pipeline).observe(len(group))
            for j, item in enumerate(group):
                item.outputs = [out[j] for out in outputs]
                item.timings["infer"] = run_seconds * 1000
        return seconds

    def _keep_alive(self, batches: list[Batch]) -> None:
        """Tell the bus and the database that this worker still works on ``batches``: their messages
        are not redelivered to another member and their observations not re-published as stale."""
        messages = [m for b in batches for m in b.messages]
        claimed = {i for b in batches for i in b.claimed_ids()}
        try:
            self.consumer.keep_alive(messages)
            self.db.keep_claimed(claimed)
        except Exception as exc:  # the next call tries again; a lost claim is redelivered and skipped
            log.warning("cannot keep the batches in hand claimed", extra={"error": repr(exc)})
            return
        self.kept_alive += 1
        log.info(
            "still working on %d messages (%d observations)",
            len(messages),
            len(claimed),
            extra={"pipeline": self.pipeline},
        )

    def _run_tiles(self, item: BatchItem, model: LoadedModel) -> float:
        """One geo item's tiles through the model (``keeneye.pipelines.crophealth``)."""
        assert item.prepared is not None and item.prepared.geo is not None
        t0 = time.perf_counter()
        try:
            item.outputs = run_tiles_sync(model.model.run, item.prepared.geo)
        except Exception as exc:  # a model failure is not the input's fault: retry
            log.warning("model run failed", extra={"pipeline": self.pipeline, "error": repr(exc)})
            item.error = exc
            return 0.0
        run_seconds = time.perf_counter() - t0
        item.timings["infer"] = run_seconds * 1000
        return run_seconds

    def _run_mosaic(self, item: BatchItem, model: LoadedModel) -> float:
        """A mosaic answered block by block and its index maps stored (``keeneye.pipelines.mosaic_jobs``);
        an InvalidInput is left in ``item.error`` for :meth:`_settle` to reject."""
        assert item.mosaic is not None and item.record is not None
        obs_id = item.record.id
        t0 = time.perf_counter()

        def progress(done: int, total: int) -> None:  # a log line per tenth of the blocks
            if done == total or done * 10 // total != (done - 1) * 10 // total:
                log.info("mosaic %s: %d/%d blocks", obs_id, done, total, extra={"observation_id": obs_id})

        try:
            with tempfile.TemporaryDirectory(prefix="keeneye-index-maps-") as maps:
                result = answer_mosaic(
                    self.spec, model, item.mosaic, item.obs.metadata, index_dir=Path(maps), progress=progress
                )
                store_index_maps(self.objects, self.pipeline, obs_id, result.mosaic.index_maps, result.answer)
        except Exception as exc:  # InvalidInput: rejected; anything else: retried
            if not isinstance(exc, InvalidInput):
                log.warning("mosaic failed", extra={"pipeline": self.pipeline, "error": repr(exc)})
            item.error = exc
            return 0.0
        item.answer = result.answer
        run_seconds = time.perf_counter() - t0
        item.timings["infer"] = run_seconds * 1000
        return run_seconds

    def _post_process(self, items: list[BatchItem], loaded: LoadedModel) -> None:
        """Model outputs → each item's answer (``finish``: instances, decision, quality features)."""
        for item in items:
            if item.outputs is None or item.prepared is None or item.error is not None:
                continue
            t0 = time.perf_counter()
            model = item.model or loaded
            try:
                item.answer = finish(self.spec, model.bundle.manifest, model.ref, item.prepared, item.outputs)
            except Exception as exc:
                item.error = exc
            else:
                self.answering.observe_drift(
                    self.pipeline,
                    model,
                    item.answer,
                    item.outputs,
                    item.prepared.image,
                    champion=model is loaded,
                )
            item.timings["post"] = self._clock("post", t0)

    def _complete(self, items: list[BatchItem], loaded: LoadedModel) -> None:
        """Predictions + ``done`` for the whole batch (one transaction), cache, ``.out`` (one flush)."""
        if not items:
            return
        completions: list[Completion] = []
        now = time.time()
        for item in items:
            assert item.record is not None and item.answer is not None
            completions.append(
                self.answering.completion(
                    item.record.id,
                    self.pipeline,
                    item.model or loaded,
                    item.variant,
                    item.answer,
                    (now - item.record.created_at.timestamp()) * 1000,
                    item.timings,
                )
            )
        t0 = time.perf_counter()
        try:
            stored = self.db.complete_many(completions)
        except Exception as exc:  # nothing stored (one transaction): retry every item
            for item in items:
                item.error = exc
            return
        store_ms = self._clock("store", t0)
        stored_at = time.time()
        t0 = time.perf_counter()
        done: list[BatchItem] = []
        for item in items:
            assert item.record is not None and item.answer is not None
            if item.record.id not in stored:
                item.error = NotFound(f"observation {item.record.id} does not exist")
                continue
            if not stored[item.record.id]:
                # Finished meanwhile by another worker that held the same message (a rebalance moved
                # its partition): that answer stands; say it again, as for any redelivery.
                self._republish_result(item.record)
                self.counts["skipped"] += 1
                item.ack = True
                continue
            item.timings["store"] = store_ms
            done.append(item)
            self.metrics.observation_seconds.labels(self.pipeline).observe(
                stored_at - item.record.created_at.timestamp()
            )
            self.answering.remember(
                self.pipeline, (item.model or loaded).ref, item.record.content_hash, item.answer
            )
        self.counts["done"] += len(done)
        self.metrics.observations.labels(self.pipeline, "done").inc(len(done))
        # Uncertain answers → the review queue (never raises), per-variant counts. Mosaics are not
        # queued: a reviewer's page cannot show 20,000² px (their zones are on the fields page).
        for mosaics in (False, True):
            answers = [
                StoredAnswer(i.record.id, i.answer, i.variant)
                for i in done
                if i.record and i.answer and (i.mosaic is not None) == mosaics
            ]
            if answers:
                self.answering.stored(self.spec, answers, review=not mosaics)
        if not done:
            return
        out = []
        for i in done:
            assert i.record is not None
            ref = (i.model or loaded).ref
            assert i.answer is not None
            payload = result_payload(i.record.id, self.pipeline, ref.name, ref.version, i.answer.to_json())
            out.append(Outgoing(payload, key=i.record.id))
        try:
            self.bus.publish_many(output_topic(self.pipeline), out)
            self.bus.flush()
        except Exception as exc:
            # Stored and done, but not announced: leave unacked; the redelivery re-publishes it.
            log.warning("results not published; messages stay unacked", extra={"error": repr(exc)})
            return
        finally:
            self._clock("publish", t0)
        for item in done:
            item.ack = True

    # -- settling ---------------------------------------------------------------------------------

    def _reject(self, item: BatchItem, exc: InvalidInput) -> bool:
        assert item.record is not None
        reason = f"{exc.reason}: {exc.message}"
        try:
            if item.mosaic is None:  # a mosaic stays at its observation key: no copy of gigabytes
                self.objects.put(quarantine_key(self.pipeline, item.record.content_hash), item.data)
            self.db.set_status(
                item.record.id, ObservationStatus.rejected, reason, expect=[ObservationStatus.processing]
            )
        except Exception as err:
            item.error = err
            return False
        self.metrics.rejections.labels(self.pipeline, exc.reason).inc()
        self.metrics.observations.labels(self.pipeline, "rejected").inc()
        self.counts["rejected"] += 1
        log.info("observation rejected", extra={"observation_id": item.record.id, "reason": reason})
        return True

    def _fail(self, item: BatchItem, code: str, reason: str) -> bool:
        """Dead-letter the message and mark the observation ``failed``; returns whether to ack."""
        if not self._dead_letter(item.message, code, reason):
            return False
        try:
            self.db.set_status(item.obs.observation_id, ObservationStatus.failed, reason, expect=CLAIMABLE)
        except Exception:
            log.warning("cannot mark an observation failed", exc_info=True)
            return False
        self.counts["failed"] += 1
        self.metrics.observations.labels(self.pipeline, "failed").inc()
        log.error("observation failed", extra={"observation_id": item.obs.observation_id, "reason": reason})
        return True

    def _retry_or_fail(self, item: BatchItem) -> bool:
        """A transient failure: publish the message again (re-queued) or, at the limit, fail it."""
        error = item.error
        assert error is not None
        what = _one_line(error)
        if item.record is None:
            return False  # never claimed (database trouble): the bus or the reconciler brings it back
        attempts = item.record.attempts
        if attempts >= self.max_attempts:
            return self._fail(item, "max_attempts", f"failed after {attempts} attempts: {what}")
        try:
            self.db.set_status(
                item.record.id,
                ObservationStatus.queued,
                f"attempt {attempts} failed: {what}",
                expect=[ObservationStatus.processing],
            )
            # Publish again rather than leave it unacked: Kafka redelivers only on a rebalance, and an
            # unacked offset would hold back every later commit of its partition.
            self.bus.publish(
                input_topic(self.pipeline),
                item.message.value,
                key=item.message.key,
                headers=item.message.headers,
            )
            self.bus.flush()
        except Exception:
            log.warning("cannot re-queue a failed observation; the reconciler will", exc_info=True)
            return False
        self.counts["retried"] += 1
        log.warning(
            "observation will be retried",
            extra={"observation_id": item.record.id, "attempt": attempts, "error": what},
        )
        return True

    def _dead_letter(self, message: Message, code: str, reason: str) -> bool:
        """Publish ``message`` to the DLQ with ``reason``, a one-line text; ``code`` is the reason's
        stable label in ``keeneye_dead_letters`` (a :class:`MalformedMessage` reason, ``missing_object``,
        ``max_attempts`` or ``crash_loop``). Returns whether it is there."""
        try:
            dead_letter(self.bus, self.pipeline, message, reason)
            self.bus.flush()
        except Exception:
            log.warning("cannot publish to the dead-letter topic", exc_info=True)
            return False
        self.counts["dead_lettered"] += 1
        self.metrics.dead_letters.labels(self.pipeline, code).inc()
        log.warning("message dead-lettered", extra={"pipeline": self.pipeline, "reason": reason})
        return True

    def _republish_result(self, record: ObservationRecord) -> None:
        answered = (Variant.champion, Variant.canary)  # never a shadow's: it was not the answer
        preds = [p for p in self.db.predictions_for(record.id) if p.variant in answered]
        if not preds:
            return
        p = preds[-1]
        with contextlib.suppress(Exception):
            self.bus.publish(
                output_topic(self.pipeline),
                result_payload(record.id, self.pipeline, p.model_name, p.model_version, p.result),
                key=record.id,
            )
            self.bus.flush()


def _one_line(exc: BaseException) -> str:
    text = exc.one_line() if isinstance(exc, KeeneyeError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]
