"""What a stream worker carries through one batch: the polled messages, one :class:`BatchItem` per
message (its observation, bytes, prepared image, model outputs, answer, timings, who answers it) and
the model's run on the items that were not in the cache.

A :class:`Batch` is taken in (claimed, decoded), handed to a model thread, then settled (post-process,
store, publish, ack) in the order batches were polled; :meth:`Batch.claimed_ids` keeps an observation
that arrives again from being claimed twice while its batch is at the model.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keeneye.domain import Answer, Variant
from keeneye.pipelines import LoadedModel, Prepared
from keeneye.store import ObservationRecord
from keeneye.stream.bus import Message
from keeneye.stream.messages import ObservationMessage


@dataclass(eq=False)
class BatchItem:
    """One message of a batch and everything the worker learns about it on the way."""

    message: Message
    obs: ObservationMessage
    record: ObservationRecord | None = None
    data: bytes = b""
    prepared: Prepared | None = None
    outputs: list[np.ndarray] | None = None
    answer: Answer | None = None
    error: BaseException | None = None  # a transient failure: retry or fail
    ack: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    model: LoadedModel | None = None  # who answers: None = the batch's champion; else a canary's challenger
    variant: Variant = Variant.champion
    # A crop-health orthomosaic: the local file the model thread reads block by block (``data`` stays
    # empty); ``resources`` removes a temporary copy when the item is settled.
    mosaic: Path | None = None
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


@dataclass(eq=False)
class Batch:
    """One polled batch on its way through the worker: taken in, run by the model, settled."""

    messages: list[Message]
    loaded: LoadedModel
    items: list[BatchItem] = field(default_factory=list)
    decided: list[tuple[Message, bool]] = field(default_factory=list)  # settled before the model: ack?
    todo: list[BatchItem] = field(default_factory=list)  # decoded, not cached: the model's share
    model_run: Future[float] | None = None  # the model's work on ``todo`` (seconds), on a model thread

    def claimed_ids(self) -> set[str]:
        return {i.obs.observation_id for i in self.items if i.record is not None}

    def model_done(self) -> bool:
        return self.model_run is None or self.model_run.done()


__all__ = ["Batch", "BatchItem"]
