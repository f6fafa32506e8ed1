"""How many model threads a stream worker runs, and how many cores each gets.

The model runs on threads of its own (ONNX Runtime releases the GIL), :data:`MODEL_RUNS` batches at a
time; with ``intra_op_threads`` 0 (automatic) each run gets an equal share of the cores this process
may use (:func:`usable_cores`: its affinity mask, so a container's cpuset or ``taskset`` counts).
"""

from __future__ import annotations

from keeneye.models.session import usable_cores
from keeneye.settings import InferenceSettings

MODEL_RUNS = 2  # batches at the model at once


def model_threads(settings: InferenceSettings, runs: int) -> InferenceSettings:
    """The ONNX Runtime threads of a worker running ``runs`` batches at once: with
    ``intra_op_threads`` 0 (automatic) each run gets an equal share of the cores; a number set
    explicitly is kept."""
    if settings.intra_op_threads:
        return settings
    return settings.model_copy(update={"intra_op_threads": max(1, usable_cores() // runs)})


__all__ = ["MODEL_RUNS", "model_threads", "usable_cores"]
