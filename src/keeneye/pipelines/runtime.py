"""Served models: load each pipeline's champion from the registry, keep it warm, follow alias moves.

A new version is downloaded, loaded and warmed in a thread while the old one keeps answering; only
then does the pipeline switch, so an alias move never fails a request. The old batcher drains its
queue before it closes.

While a pipeline's rollout (``keeneye.store.rollouts``, the ``rollouts`` row read at every alias
poll) is in shadow or canary, its challenger version is loaded and warmed beside the champion the same
way, and unloaded when the rollout ends. :meth:`ModelRuntime.get_variant` routes a key to the model
that answers it (the canary share by hash, ``keeneye.pipelines.routing``), :meth:`ModelRuntime.shadow` /
:meth:`ModelRuntime.shadow_batch` run the challenger on the side after the answer is given. A promoted
challenger becomes the champion without a second load: its warm model is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace

from keeneye.domain import JsonObject, KeeneyeError, ModelRef, Variant
from keeneye.metrics import Metrics
from keeneye.models import MicroBatcher, OnnxModel
from keeneye.pipelines.loaded import LoadedModel
from keeneye.pipelines.routing import (
    SHADOW_QUEUE,
    ShadowRunner,
    choose_variant,
    in_shadow_sample,
    run_shadow_batch,
)
from keeneye.pipelines.runner import Prepared
from keeneye.pipelines.spec import PipelineCatalog, PipelineSpec
from keeneye.registry import CHALLENGER, ModelRegistry
from keeneye.settings import Settings
from keeneye.store import ResultsDB, open_results_db
from keeneye.store.rollouts import RolloutRecord, read_rollout

log = logging.getLogger(__name__)


class ModelNotReady(KeeneyeError):
    """The pipeline has no served model yet (nothing registered, or still loading)."""


class ModelRuntime:
    """The models a process serves, one per pipeline (two during a rollout), swapped atomically.

    ``db`` is where the rollout rows are read; by default the process's results database.
    """

    def __init__(
        self,
        settings: Settings,
        catalog: PipelineCatalog,
        registry: ModelRegistry,
        metrics: Metrics,
        *,
        db: ResultsDB | None = None,
        shadow_queue: int = SHADOW_QUEUE,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.registry = registry
        self.metrics = metrics
        self._db = db
        self._loaded: dict[str, LoadedModel] = {}
        self._challengers: dict[str, LoadedModel] = {}
        self._rollouts: dict[str, RolloutRecord] = {}  # as read at the last poll
        self._errors: dict[str, str] = {}
        self._poller: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._started = False
        self._pending: set[str] = set()  # pipelines whose new version is loading
        self.shadow_runner = ShadowRunner(settings, metrics, lambda: self.db, max_pending=shadow_queue)

    @property
    def db(self) -> ResultsDB:
        if self._db is None:
            self._db = open_results_db(self.settings)
        return self._db

    # ---------------------------------------------------------------------------------------------

    def get(self, pipeline: str) -> LoadedModel:
        loaded = self._loaded.get(pipeline)
        if loaded is None:
            why = self._errors.get(pipeline, "no model is registered with the alias it serves")
            spec = self.catalog.get(pipeline)
            raise ModelNotReady(
                f"pipeline {pipeline!r} has no model ready: {why}",
                fix=f"register one: keeneye models register --pipeline {pipeline} "
                "--onnx FILE --manifest FILE "
                f"--alias {spec.model.alias}",
            )
        return loaded

    def problems(self) -> dict[str, str]:
        """Pipelines whose model could not be loaded, with why."""
        return dict(self._errors)

    def served(self) -> dict[str, ModelRef]:
        return {name: m.ref for name, m in self._loaded.items()}

    # --- rollout: the challenger beside the champion ----------------------------------------------

    def rollout(self, pipeline: str) -> RolloutRecord | None:
        """The pipeline's rollout as read at the last poll (None: never had one)."""
        return self._rollouts.get(pipeline)

    def challenger(self, pipeline: str) -> LoadedModel | None:
        """The loaded challenger of an active rollout, None when there is none (or it is loading)."""
        loaded = self._challengers.get(pipeline)
        rollout = self._rollouts.get(pipeline)
        if loaded is None or rollout is None or not rollout.active:
            return None
        return loaded if loaded.ref.version == rollout.challenger_version else None

    def challengers(self) -> dict[str, ModelRef]:
        return {name: m.ref for name in self._challengers if (m := self.challenger(name)) is not None}

    def get_variant(self, pipeline: str, key: str) -> tuple[LoadedModel, Variant]:
        """The model that answers ``key`` and how its answer is stored: the challenger for the keys in
        a canary's share (``canary``), the champion otherwise. Raises :class:`ModelNotReady` like
        :meth:`get` when there is no champion."""
        champion = self.get(pipeline)
        challenger = self.challenger(pipeline)
        if challenger is not None and choose_variant(self._rollouts.get(pipeline), key) is Variant.canary:
            return challenger, Variant.canary
        return champion, Variant.champion

    def shadow_model(self, pipeline: str, key: str) -> LoadedModel | None:
        """The challenger when ``key`` is in a shadow run's sample, else None."""
        challenger = self.challenger(pipeline)
        if challenger is None or not in_shadow_sample(self._rollouts.get(pipeline), key):
            return None
        return challenger

    def shadow(
        self,
        spec: PipelineSpec,
        key: str,
        observation_id: str,
        data: bytes,
        metadata: JsonObject | None = None,
    ) -> bool:
        """After an answer (call on the event loop): run the challenger on the same bytes and request
        metadata in the background when ``key`` is in the shadow sample. True when a run was scheduled."""
        model = self.shadow_model(spec.name, key)
        if model is None:
            return False
        return self.shadow_runner.submit(spec, model, observation_id, data, metadata)

    def shadow_batch(self, spec: PipelineSpec, items: Sequence[tuple[str, Prepared]]) -> int:
        """The stream's shadow, synchronous: ``(observation id, decoded input)`` of answered items;
        the ones in the sample (by observation id) run on the challenger. Returns how many stored."""
        rollout = self._rollouts.get(spec.name)
        model = self.challenger(spec.name)
        if model is None:
            return 0
        chosen = [(obs_id, p) for obs_id, p in items if in_shadow_sample(rollout, obs_id)]
        return run_shadow_batch(self.db, self.metrics, spec, model, chosen)

    def refresh_soon(self) -> None:
        """Follow a rollout move now rather than at the next poll (call on the event loop)."""
        task = asyncio.get_running_loop().create_task(self._refresh_quietly(), name="keeneye-refresh")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception:
            log.exception("model refresh failed; keeping the models in service")

    @property
    def ready(self) -> bool:
        """True once every pipeline that has a registered champion is loaded and warm."""
        return self._started and not self._pending

    async def start(self, *, poll: bool = True) -> None:
        await self.refresh()
        self._started = True
        if poll:
            self._poller = asyncio.create_task(self._poll_forever(), name="keeneye-alias-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.shadow_runner.aclose()
        for loaded in [*self._loaded.values(), *self._challengers.values()]:
            await loaded.batcher.aclose()
        self._loaded.clear()
        self._challengers.clear()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.inference.alias_poll_seconds)
            try:
                await self.refresh()
            except Exception:  # keep serving the old model whatever the registry does
                log.exception("alias poll failed; keeping the models in service")

    async def refresh(self) -> None:
        """Check every pipeline's alias and rollout; load and swap in the versions that moved."""
        async with self._lock:
            for name in self.catalog.names():
                spec = self.catalog.get(name)
                try:
                    await self._refresh_one(spec)
                except KeeneyeError as exc:
                    self._errors[name] = exc.one_line()
                    log.warning("pipeline %s: %s", name, exc.one_line())
                    self._pending.discard(name)
                try:
                    await self._refresh_challenger(spec)
                except Exception as exc:  # the champion serves on, whatever happens to the challenger
                    log.warning("pipeline %s: challenger not refreshed: %s", name, exc)

    async def _refresh_one(self, spec: PipelineSpec) -> None:
        info = await asyncio.to_thread(self.registry.resolve, spec.model.name, spec.model.alias)
        current = self._loaded.get(spec.name)
        if info is None:
            self._pending.discard(spec.name)
            return
        if current is not None and current.ref.version == str(info.version):
            return
        self._pending.add(spec.name)
        ref = ModelRef(spec.model.name, str(info.version), spec.model.alias)
        challenger = self._challengers.get(spec.name)
        if challenger is not None and challenger.ref.version == ref.version:
            # A promoted challenger: already loaded and warm, it simply becomes the champion.
            loaded = replace(challenger, ref=ref, tasks=set())
            del self._challengers[spec.name]
        else:
            loaded = await asyncio.to_thread(self._load, spec, ref)
        self._loaded[spec.name] = loaded  # the swap: new requests go to the warm model from here on
        self._pending.discard(spec.name)
        self._errors.pop(spec.name, None)
        self.metrics.model_info.labels(spec.name, ref.name, ref.version).set(1)
        if current is not None:
            self.metrics.model_info.labels(spec.name, current.ref.name, current.ref.version).set(0)
            self.metrics.model_reloads.labels(spec.name).inc()
            log.info(
                "pipeline %s: switched from version %s to %s", spec.name, current.ref.version, ref.version
            )
            await current.batcher.aclose()  # drains what it already accepted
        else:
            log.info("pipeline %s: serving %s version %s", spec.name, ref.name, ref.version)

    async def _refresh_challenger(self, spec: PipelineSpec) -> None:
        """Load the challenger of an active rollout (the version in its row), unload it after."""
        name = spec.name
        rollout = await asyncio.to_thread(read_rollout, self.db, name)
        want = rollout.challenger_version if rollout is not None and rollout.active else None
        champion = self._loaded.get(name)
        if champion is not None and champion.ref.version == want:
            want = None  # promoted meanwhile: the champion answers
        current = self._challengers.get(name)
        if want is not None and (current is None or current.ref.version != want):
            ref = ModelRef(spec.model_name, want, CHALLENGER)
            self._challengers[name] = await asyncio.to_thread(self._load, spec, ref)
            self.metrics.model_info.labels(name, ref.name, ref.version).set(1)
            log.info("pipeline %s: challenger %s version %s loaded", name, ref.name, ref.version)
        elif want is None:
            self._challengers.pop(name, None)
        self._set_rollout(name, rollout)  # routing follows the row once its challenger is warm
        if current is not None and current is not self._challengers.get(name):
            if champion is None or champion.ref.version != current.ref.version:
                self.metrics.model_info.labels(name, current.ref.name, current.ref.version).set(0)
            log.info("pipeline %s: challenger version %s unloaded", name, current.ref.version)
            await current.batcher.aclose()  # drains what it already accepted

    def _set_rollout(self, pipeline: str, rollout: RolloutRecord | None) -> None:
        if rollout is None:
            self._rollouts.pop(pipeline, None)
        else:
            self._rollouts[pipeline] = rollout

    def _load(self, spec: PipelineSpec, ref: ModelRef) -> LoadedModel:
        bundle = self.registry.download(ref.name, ref.version)
        model = OnnxModel(bundle, self.settings.inference)
        model.warmup()
        inf = self.settings.inference

        def on_batch(size: int, queue_ms: float, infer_ms: float) -> None:
            self.metrics.batch_size.labels(spec.name).observe(size)

        batcher = MicroBatcher(
            model.run,
            max_batch=inf.max_batch,
            max_wait_ms=inf.max_wait_ms,
            max_queue=self.settings.serving.max_inflight * 2,
            on_batch=on_batch,
        )
        return LoadedModel(ref=ref, bundle=bundle, model=model, batcher=batcher, pipeline=spec.name)
