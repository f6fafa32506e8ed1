"""A model as a process serves it: registry reference, bundle, ONNX session and its micro-batcher.

Its own module because both the runtime (which loads and swaps them) and routing (which runs a
challenger in shadow) work with it, and routing sits below the runtime.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from keeneye.domain import ModelRef
from keeneye.models import MicroBatcher, OnnxModel
from keeneye.models.bundle import ModelBundle


@dataclass
class LoadedModel:
    ref: ModelRef
    bundle: ModelBundle
    model: OnnxModel
    batcher: MicroBatcher
    pipeline: str
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


__all__ = ["LoadedModel"]
