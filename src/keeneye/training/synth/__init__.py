"""Synthetic data generators, one per blueprint, all writing a COCO folder reproducible from a seed.

``generate("species-id" | "line-inspection" | "crop-health", out_dir, n, seed=…, drift=…)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from keeneye.domain import InvalidInput
from keeneye.training.synth.common import DRIFT_KINDS, Drift, SynthResult, parse_drift
from keeneye.training.synth.crop import generate_crop
from keeneye.training.synth.line import generate_line
from keeneye.training.synth.species import generate_species

GENERATORS: dict[str, Callable[..., SynthResult]] = {
    "species-id": generate_species,
    "line-inspection": generate_line,
    "crop-health": generate_crop,
}


def generate(name: str, out_dir: str | Path, n: int, **params: Any) -> SynthResult:
    """Run the generator of blueprint ``name``; unknown names → ``InvalidInput("unknown_generator")``."""
    try:
        fn = GENERATORS[name]
    except KeyError:
        raise InvalidInput(
            "unknown_generator",
            f"no synthetic generator {name!r}",
            fix="use one of: " + ", ".join(GENERATORS),
        ) from None
    return fn(out_dir, n, **params)


__all__ = [
    "DRIFT_KINDS",
    "GENERATORS",
    "Drift",
    "SynthResult",
    "generate",
    "generate_crop",
    "generate_line",
    "generate_species",
    "parse_drift",
]
