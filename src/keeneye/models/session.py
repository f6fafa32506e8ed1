"""ONNX Runtime session for one model bundle, validated against its manifest at load time.

:class:`OnnxModel` refuses, with ``InvalidInput("bad_model", …)``, a file that is not ONNX, an input
whose rank / channels / size contradict the manifest, and outputs that do not fit the manifest's
``output_format`` — so a wrong bundle fails at registration or startup, never on the first request.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from keeneye.domain import InvalidInput
from keeneye.models.bundle import ModelBundle
from keeneye.models.manifest import ModelManifest
from keeneye.settings import InferenceSettings

log = logging.getLogger(__name__)

AnyArray = npt.NDArray[Any]
Dim = int | str | None  # ORT reports symbolic dims as str, unknown ones as None

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8"}


def _static(dim: Dim) -> int | None:
    """The dim's size when it is fixed, else None (symbolic, unknown, or ≤ 0 placeholder)."""
    return dim if isinstance(dim, int) and dim > 0 else None


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    available = ort.get_available_providers()
    preferred = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*preferred, "CPUExecutionProvider"]


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset or taskset)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def session_options(settings: InferenceSettings) -> ort.SessionOptions:
    """Thread counts and spinning from settings, full graph optimisation. ``intra_op_threads`` 0 means
    every CPU this process may use (:func:`usable_cores`) — not ONNX Runtime's own default, which
    counts physical cores: one on a 2-vCPU machine whose vCPUs are hyperthreads, where a lone request
    then ran at half speed (benchmarks/serving.py, 1 client: infer 10.7 → 6.9 ms)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads or usable_cores()
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads spin after each run by default; beside decode and storage threads that costs
    # 35-45 % more CPU per image (benchmarks/serving.py), so they sleep unless told otherwise.
    spin = "1" if settings.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    # Parallel execution only pays off with branches to run side by side (inter-op threads > 1).
    opts.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if settings.inter_op_threads > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    return opts


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[Dim, ...]
    type: str


class OnnxModel:
    """One ``InferenceSession`` for a bundle.

    :meth:`run` takes a stacked input batch and returns the *head* outputs the manifest's
    ``output_format`` needs, in the order :func:`~keeneye.models.postprocess.postprocess` expects
    (``yolo-segment``: detections, then prototypes), followed by the embedding output when the
    manifest names one (see :meth:`split`). Thread-safe: ORT sessions allow concurrent ``run``.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        settings: InferenceSettings | None = None,
        *,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.bundle = bundle
        self.manifest: ModelManifest = bundle.manifest
        self.settings = settings or InferenceSettings()
        _check_is_onnx(bundle)
        try:
            self.session = ort.InferenceSession(
                str(bundle.onnx_path),
                sess_options=session_options(self.settings),
                providers=list(providers or default_providers()),
            )
        except Exception as exc:  # ORT raises its own exception types for every load failure
            raise InvalidInput(
                "bad_model", f"ONNX Runtime cannot load {bundle.onnx_path.name}: {exc}".strip()
            ) from exc
        inputs = [TensorInfo(i.name, tuple(i.shape), i.type) for i in self.session.get_inputs()]
        outputs = [TensorInfo(o.name, tuple(o.shape), o.type) for o in self.session.get_outputs()]
        self.input: TensorInfo = _check_input(self.manifest, inputs)
        self.input_name = self.input.name
        self.input_dtype = np.dtype(_ORT_DTYPES[self.input.type])
        self.head_output_names: list[str] = _check_outputs(self.manifest, outputs)
        self.embedding_output: str | None = self.manifest.embedding_output
        self.output_names: list[str] = [*self.head_output_names]
        if self.embedding_output is not None:
            self.output_names.append(self.embedding_output)
        # A batch axis fixed in the graph (usually 1: many exports hard-code it) cannot take stacked
        # batches; run() then feeds it that many items at a time.
        self.fixed_batch: int | None = _static(self.input.shape[0])
        self.providers: list[str] = list(self.session.get_providers())
        self._warm = threading.Event()
        log.info(
            "loaded model",
            extra={
                "model": self.manifest.name,
                "path": str(bundle.path),
                "providers": self.providers,
                "input": self.input_name,
                "input_shape": self.input.shape,
                "outputs": self.output_names,
                "fixed_batch": self.fixed_batch,
            },
        )

    @classmethod
    def load(
        cls,
        path_or_bundle: ModelBundle | Path | str,
        settings: InferenceSettings | None = None,
        *,
        providers: Sequence[str] | None = None,
    ) -> OnnxModel:
        """Open a bundle (a :class:`ModelBundle` or a folder path)."""
        bundle = (
            path_or_bundle
            if isinstance(path_or_bundle, ModelBundle)
            else ModelBundle.load(Path(path_or_bundle))
        )
        return cls(bundle, settings, providers=providers)

    @property
    def can_batch(self) -> bool:
        """False when the graph fixes the batch axis (then :meth:`run` splits batches itself)."""
        return self.fixed_batch is None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The per-item input shape (no batch axis) in the manifest's layout."""
        spec = self.manifest.input
        c = len(spec.channels)
        return (c, spec.height, spec.width) if spec.layout == "NCHW" else (spec.height, spec.width, c)

    def run(self, batch: AnyArray) -> list[AnyArray]:
        """Run a stacked batch ``(N, …)``; returns head outputs (+ embedding last), each ``(N, …)``."""
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)  # no copy when already right
        if batch.ndim != 4:
            raise InvalidInput("bad_input", f"model input must be a 4-D batch, got shape {batch.shape}")
        fixed = self.fixed_batch
        if fixed is None or batch.shape[0] == fixed:
            return self._run(batch)
        return self._run_in_chunks(batch, fixed)

    def _run(self, batch: AnyArray) -> list[AnyArray]:
        outputs: list[AnyArray] = self.session.run(self.output_names, {self.input_name: batch})
        return outputs

    def _run_in_chunks(self, batch: AnyArray, fixed: int) -> list[AnyArray]:
        n = batch.shape[0]
        parts: list[list[AnyArray]] = []
        for start in range(0, n, fixed):
            chunk = batch[start : start + fixed]
            short = fixed - chunk.shape[0]
            if short:  # pad the last chunk of a fixed-batch>1 model with zeros, trim after
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), dtype=chunk.dtype)])
            outs = self._run(chunk)
            parts.append([o[: fixed - short] for o in outs] if short else outs)
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.output_names))]

    def split(self, outputs: Sequence[AnyArray]) -> tuple[list[AnyArray], AnyArray | None]:
        """``(head outputs, embedding or None)`` of what :meth:`run` returned (batch or one item)."""
        n = len(self.head_output_names)
        return list(outputs[:n]), (outputs[n] if self.embedding_output is not None else None)

    def warmup(self) -> None:
        """One run on a zero batch of 1: ORT allocates and tunes on the first call, not a request."""
        shape = [self.fixed_batch or 1, *self.input_shape]
        self.run(np.zeros(shape, dtype=self.input_dtype))
        self._warm.set()

    @property
    def warm(self) -> bool:
        return self._warm.is_set()

    def __repr__(self) -> str:
        return (
            f"OnnxModel({self.manifest.name!r}, path={str(self.bundle.path)!r}, providers={self.providers})"
        )


# --------------------------------------------------------------------------------------------------
# Load-time validation
# --------------------------------------------------------------------------------------------------


def _check_is_onnx(bundle: ModelBundle) -> None:
    path = bundle.onnx_path
    try:
        # Weights in external files are not needed to check the graph; don't load them twice.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidInput("bad_model", f"{path.name} is not an ONNX model: {exc}") from exc
    # Protobuf parses many byte strings leniently; a real model has a graph with inputs and outputs.
    if model.ir_version <= 0 or not model.graph.input or not model.graph.output:
        raise InvalidInput(
            "bad_model", f"{path.name} is not an ONNX model: no graph inputs/outputs or IR version"
        )


def _check_input(manifest: ModelManifest, inputs: list[TensorInfo]) -> TensorInfo:
    spec = manifest.input
    if spec.name is not None:
        found = [i for i in inputs if i.name == spec.name]
        if not found:
            names = ", ".join(i.name for i in inputs)
            raise InvalidInput(
                "bad_model",
                f"model.onnx has no input {spec.name!r} (inputs: {names})",
                fix="set input.name in keeneye.json to one of them",
            )
        info = found[0]
    else:
        info = inputs[0]
    if len(info.shape) != 4:
        raise InvalidInput(
            "bad_model", f"model.onnx input {info.name!r} has rank {len(info.shape)}, expected 4"
        )
    if info.type not in _ORT_DTYPES:
        raise InvalidInput(
            "bad_model",
            f"model.onnx input {info.name!r} has type {info.type}; keeneye feeds float32, float16 or uint8",
        )
    if _ORT_DTYPES[info.type] != spec.dtype:
        raise InvalidInput(
            "bad_model",
            f"model.onnx input {info.name!r} is {_ORT_DTYPES[info.type]} but the manifest says {spec.dtype}",
            fix=f"set input.dtype to {_ORT_DTYPES[info.type]!r}",
        )
    c_axis, h_axis, w_axis = (1, 2, 3) if spec.layout == "NCHW" else (3, 1, 2)
    channels = _static(info.shape[c_axis])
    if channels is not None and channels != len(spec.channels):
        raise InvalidInput(
            "bad_model",
            f"model.onnx input {info.name!r} has {channels} channels "
            f"({spec.layout} shape {list(info.shape)}) but the manifest lists {len(spec.channels)} "
            f"({', '.join(spec.channels)})",
            fix="make input.channels match the model, or check input.layout",
        )
    for axis, want, what in ((h_axis, spec.height, "height"), (w_axis, spec.width, "width")):
        have = _static(info.shape[axis])
        if have is not None and have != want:
            raise InvalidInput(
                "bad_model",
                f"model.onnx input {info.name!r} has {what} {have} but the manifest says {want}",
                fix=f"set input.{what} to {have}",
            )
    return info


def _check_outputs(manifest: ModelManifest, outputs: list[TensorInfo]) -> list[str]:
    """Names of the head outputs in postprocess order; raises for outputs that do not fit the format."""
    fmt = manifest.output_format
    nc = len(manifest.classes)
    if manifest.embedding_output is not None and all(o.name != manifest.embedding_output for o in outputs):
        names = ", ".join(o.name for o in outputs)
        raise InvalidInput(
            "bad_model",
            f"embedding_output {manifest.embedding_output!r} is not an output of model.onnx ({names})",
        )
    head = [o for o in outputs if o.name != manifest.embedding_output]

    def refuse(message: str) -> InvalidInput:
        shapes = ", ".join(f"{o.name}{list(o.shape)}" for o in outputs)
        return InvalidInput("bad_model", f"output_format {fmt!r}: {message} (model outputs: {shapes})")

    if fmt == "logits":
        if not head:
            raise refuse("needs at least one output with the class logits")
        logits = head[0]
        if len(logits.shape) != 2:
            raise refuse(f"logits output {logits.name!r} must be (N, classes)")
        if _static(logits.shape[1]) not in (None, nc):
            raise refuse(f"logits output {logits.name!r} has {logits.shape[1]} classes, the manifest {nc}")
        return [logits.name]
    if fmt == "seg-logits":
        if len(head) != 1 or len(head[0].shape) != 4:
            raise refuse("needs exactly one output (N, classes, H, W)")
        c = _static(head[0].shape[1])
        if c is not None and c != nc and not (c == 1 and nc <= 2):
            raise refuse(f"output has {c} class channels, the manifest {nc} classes")
        return [head[0].name]
    if fmt == "yolo-detect":
        if len(head) != 1 or len(head[0].shape) != 3:
            raise refuse("needs exactly one output (N, 4 + classes, anchors)")
        dims = [_static(d) for d in head[0].shape[1:]]
        if None not in dims and 4 + nc not in dims:
            raise refuse(f"output has no axis of size 4 + {nc} classes = {4 + nc}")
        return [head[0].name]
    # yolo-segment
    dets = [o for o in head if len(o.shape) == 3]
    protos = [o for o in head if len(o.shape) == 4]
    if len(head) != 2 or len(dets) != 1 or len(protos) != 1:
        raise refuse("needs two outputs: (N, 4 + classes + masks, anchors) and protos (N, masks, mh, mw)")
    nm = _static(protos[0].shape[1])
    dims = [_static(d) for d in dets[0].shape[1:]]
    if nm is not None and None not in dims and 4 + nc + nm not in dims:
        raise refuse(f"detections have no axis of size 4 + {nc} classes + {nm} mask coefficients")
    return [dets[0].name, protos[0].name]
