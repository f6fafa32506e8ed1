"""The steps after a model answers, shared by the HTTP API (``serving/service.py``) and the stream
workers (``stream/worker.py``) so both do them the same way:

* the cache: :func:`cache_key` ``pred:{pipeline}:{model}:{version}:{digest}`` (one model version, the
  same bytes → the same answer) holding the answer's JSON plus its image format (``_format``); a
  cache that fails is a miss, never a failed answer (it is an optimisation);
* drift: one sample per answer of the **champion** only (one monitor per pipeline; a canary's answers
  would replace its window);
* the storage record: the answer's JSON, decision and confidence as the ``predictions`` row holds them
  (:meth:`Answering.prediction_record`, :meth:`Answering.completion`);
* after storing: uncertain answers into the review queue (never raises), the per-variant count, and
  for a geo pipeline (crop-health) the answer's flight joined to its field (:class:`FieldBook`:
  by ``metadata.field`` or by overlap with a boundary; never raises).

Where each caller stores (one ``record_prediction`` for the API, ``complete_many`` for a worker's
batch) and what it acknowledges stay with the caller; what is stored is decided here.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from keeneye.domain import Answer, ModelRef, Variant
from keeneye.fields import FieldBook
from keeneye.imaging import Image
from keeneye.lifecycle.labels import queue_answers
from keeneye.metrics import Metrics
from keeneye.monitoring.drift import DriftMonitors
from keeneye.pipelines import LoadedModel, PipelineSpec
from keeneye.store import Cache, Completion, NewPrediction, ResultsDB

log = logging.getLogger(__name__)

FORMAT_KEY = "_format"  # the cached payload's image format, beside the answer's JSON


def cache_key(pipeline: str, ref: ModelRef, digest: str) -> str:
    """Where the answer of model ``ref`` to the bytes with content hash ``digest`` is cached."""
    return f"pred:{pipeline}:{ref.name}:{ref.version}:{digest}"


@dataclass(frozen=True)
class CachedAnswer:
    answer: Answer
    format: str | None


@dataclass(frozen=True)
class StoredAnswer:
    """An answer that is stored: which observation, which variant answered."""

    observation_id: str
    answer: Answer
    variant: Variant


class Answering:
    """The steps after a model answers (module docstring), for one process's backends."""

    def __init__(self, db: ResultsDB, cache: Cache, metrics: Metrics, drift: DriftMonitors) -> None:
        self.db = db
        self.cache = cache
        self.metrics = metrics
        self.drift = drift
        self.fields = FieldBook(db, cache, metrics)

    # -- cache ------------------------------------------------------------------------------------

    def cached(self, pipeline: str, ref: ModelRef, digest: str) -> CachedAnswer | None:
        """The cached answer of ``ref`` to these bytes (counted as a hit or a miss); None on a miss."""
        doc = None
        try:
            raw = self.cache.get(cache_key(pipeline, ref, digest))
            doc = None if raw is None else json.loads(raw)
        except Exception:
            log.warning("cache unreadable for pipeline %s; answering without it", pipeline, exc_info=True)
        if not isinstance(doc, dict):
            self.metrics.cache.labels(pipeline, "miss").inc()
            return None
        self.metrics.cache.labels(pipeline, "hit").inc()
        fmt = doc.pop(FORMAT_KEY, None)
        answer = Answer.from_stored(doc, model=ref)
        return CachedAnswer(answer, fmt if isinstance(fmt, str) else None)

    def remember(self, pipeline: str, ref: ModelRef, digest: str, answer: Answer) -> None:
        """Cache an answer (best effort)."""
        fmt = answer.image.format if answer.image is not None else None
        payload = json.dumps({**answer.to_json(), FORMAT_KEY: fmt}).encode()
        with contextlib.suppress(Exception):  # the cache is an optimisation, never a failure
            self.cache.set(cache_key(pipeline, ref, digest), payload)

    # -- drift ------------------------------------------------------------------------------------

    def observe_drift(
        self,
        pipeline: str,
        model: LoadedModel,
        answer: Answer,
        outputs: Sequence[npt.NDArray[Any]],
        image: Image | None,
        *,
        champion: bool,
    ) -> None:
        """One drift sample when the champion answered (never raises)."""
        if champion:
            self.drift.observe(pipeline, model, answer, outputs, image)

    # -- the storage record -----------------------------------------------------------------------

    @staticmethod
    def prediction_record(
        model: LoadedModel,
        variant: Variant,
        answer: Answer,
        latency_ms: float,
        timings: Mapping[str, float],
    ) -> NewPrediction:
        """The ``predictions`` row of an answer."""
        return NewPrediction(
            model_name=model.ref.name,
            model_version=model.ref.version,
            variant=variant,
            task=model.bundle.manifest.task.value,
            result=answer.to_json(),
            decision=answer.decision,
            confidence=answer.confidence,
            latency_ms=latency_ms,
            timings=timings,
        )

    @staticmethod
    def completion(
        observation_id: str,
        pipeline: str,
        model: LoadedModel,
        variant: Variant,
        answer: Answer,
        latency_ms: float,
        timings: Mapping[str, float],
    ) -> Completion:
        """The same record for an observation that already exists (a worker's batch)."""
        record = Answering.prediction_record(model, variant, answer, latency_ms, timings)
        return Completion(observation_id, pipeline, record)

    # -- after storing ----------------------------------------------------------------------------

    def stored(self, spec: PipelineSpec, answers: Sequence[StoredAnswer], *, review: bool = True) -> None:
        """Uncertain answers → the review queue (never raises; ``review=False`` for answers whose
        image was already queued, e.g. cached ones); one count per answering variant."""
        if review:
            queue_answers(self.db, spec, [(a.observation_id, a.answer) for a in answers])
        for a in answers:
            self.metrics.variant_predictions.labels(spec.name, a.variant.value).inc()
        if spec.input.geo:
            self.join_fields(answers)

    def join_fields(self, answers: Sequence[StoredAnswer]) -> None:
        """Each crop-health answer's flight into its field's history (never raises: the answer is
        stored and acknowledged whatever happens here)."""
        for a in answers:
            geo = a.answer.parts.geo
            if geo is None:
                continue
            try:
                observation = self.db.get_observation(a.observation_id)
                if observation is None:
                    continue
                self.fields.record_answer(
                    a.observation_id, geo, observation.metadata or {}, observation.created_at
                )
            except Exception:
                log.exception("could not record observation %s in its field", a.observation_id)
