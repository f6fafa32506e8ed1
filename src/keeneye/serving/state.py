"""The API process's state: every backend and the served models, opened once in the app's lifespan.

:func:`open_state` is shared by the HTTP app (``create_app``) and ``keeneye predict``; routes reach the
state through the dependencies of ``serving.routes.deps``, never by importing the app module.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from keeneye.metrics import Metrics
from keeneye.pipelines import ModelRuntime, PipelineCatalog
from keeneye.registry import ModelRegistry
from keeneye.serving.limits import ConcurrencyCap, InflightLimiter, RateLimiter
from keeneye.serving.load import ApiLoad, load_dir
from keeneye.serving.service import PredictionService
from keeneye.settings import Settings
from keeneye.store import ObjectStore, ResultsDB, open_cache, open_object_store, open_results_db


def is_loopback(host: str) -> bool:
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class AppState:
    """Everything a request handler needs, built once in the lifespan.

    Routes take ``db`` / ``objects`` from here through ``serving.routes.deps`` (``DbDep``,
    ``ObjectsDep``), not through the prediction service.
    """

    settings: Settings
    catalog: PipelineCatalog
    registry: ModelRegistry
    runtime: ModelRuntime
    service: PredictionService
    db: ResultsDB
    objects: ObjectStore
    metrics: Metrics
    rate: dict[str, RateLimiter]  # per pipeline: the spec's limits, else the global settings
    inflight: dict[str, InflightLimiter]  # its utilisation is the API's load (serving/load.py)
    require_api_key: bool
    per_client: ConcurrencyCap  # requests in flight per client address, all pipelines
    per_key: ConcurrencyCap  # requests in flight per API key, all pipelines
    load: ApiLoad


async def open_state(settings: Settings, *, poll_aliases: bool = True) -> AppState:
    """Open every backend and load the served models; the API and ``keeneye predict`` share this."""
    db = open_results_db(settings)
    db.ensure_schema()
    objects = open_object_store(settings)
    cache = open_cache(settings)
    metrics = Metrics()
    catalog = PipelineCatalog(settings)
    registry = ModelRegistry(settings, events=db)
    runtime = ModelRuntime(settings, catalog, registry, metrics)
    await runtime.start(poll=poll_aliases)
    serving = settings.serving
    share = serving.processes  # `serve --workers N`: each process enforces its share of the limits
    require_key = serving.require_api_key
    if require_key is None:
        require_key = not is_loopback(serving.host)
    inflight = {
        n: InflightLimiter(max(1, (catalog.get(n).limits.max_inflight or serving.max_inflight) // share))
        for n in catalog.names()
    }
    return AppState(
        settings=settings,
        catalog=catalog,
        registry=registry,
        runtime=runtime,
        service=PredictionService(settings, catalog, runtime, db, objects, cache, metrics),
        db=db,
        objects=objects,
        metrics=metrics,
        rate={
            n: RateLimiter(
                (catalog.get(n).limits.rate_per_second or serving.rate_limit_per_second) / share,
                max(1, (catalog.get(n).limits.burst or serving.rate_limit_burst) // share),
            )
            for n in catalog.names()
        },
        inflight=inflight,
        require_api_key=require_key,
        per_client=ConcurrencyCap(max(1, serving.max_inflight_per_client // share)),
        per_key=ConcurrencyCap(max(1, serving.max_inflight_per_key // share)),
        load=ApiLoad(load_dir(settings.home), inflight, metrics),
    )


async def close_state(state: AppState) -> None:
    await asyncio.to_thread(state.service.drift.flush_all)  # a partial drift window still counts
    await state.runtime.stop()
    await asyncio.to_thread(state.service.close)  # the last group commit
    state.service.cache.close()


__all__ = ["AppState", "close_state", "is_loopback", "open_state"]
