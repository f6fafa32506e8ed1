"""Served models: load each pipeline's champion from the registry, keep it warm, follow alias moves.

A new version is downloaded, loaded and warmed in a thread while the old one keeps answering; only
then does the pipeline switch, so an alias move never fails a request. The old batcher drains its
queue before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from keeneye.domain import KeeneyeError, ModelRef
from keeneye.models import MicroBatcher, OnnxModel
from keeneye.models.bundle import ModelBundle
from keeneye.monitoring.metrics import Metrics
from keeneye.pipelines.spec import PipelineCatalog, PipelineSpec
from keeneye.registry import ModelRegistry
from keeneye.settings import Settings

log = logging.getLogger(__name__)


class ModelNotReady(KeeneyeError):
    """The pipeline has no served model yet (nothing registered, or still loading)."""


@dataclass
class LoadedModel:
    ref: ModelRef
    bundle: ModelBundle
    model: OnnxModel
    batcher: MicroBatcher
    pipeline: str
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class ModelRuntime:
    """The models a process serves, one per pipeline, swapped atomically on alias moves."""

    def __init__(
        self, settings: Settings, catalog: PipelineCatalog, registry: ModelRegistry, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.registry = registry
        self.metrics = metrics
        self._loaded: dict[str, LoadedModel] = {}
        self._errors: dict[str, str] = {}
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._started = False
        self._pending: set[str] = set()  # pipelines whose new version is loading

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
        for loaded in self._loaded.values():
            await loaded.batcher.aclose()
        self._loaded.clear()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.inference.alias_poll_seconds)
            try:
                await self.refresh()
            except Exception:  # keep serving the old model whatever the registry does
                log.exception("alias poll failed; keeping the models in service")

    async def refresh(self) -> None:
        """Check every pipeline's alias; load and swap in the versions that moved."""
        async with self._lock:
            for name in self.catalog.names():
                spec = self.catalog.get(name)
                try:
                    await self._refresh_one(spec)
                except KeeneyeError as exc:
                    self._errors[name] = exc.one_line()
                    log.warning("pipeline %s: %s", name, exc.one_line())
                    self._pending.discard(name)

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
