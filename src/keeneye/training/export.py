"""Trained torch model → ONNX bundle: export, parity check, manifest and drift reference profile.

* :func:`export_onnx` writes ONNX (opset 17, dynamic batch axis) with two outputs: the head
  (``logits``: class logits or per-pixel seg-logits) and ``embedding`` (pooled features, for drift).
* :func:`check_parity` runs the ONNX model in ONNX Runtime on real inputs and compares it with the
  torch model; a maximum absolute difference above ``1e-3`` refuses the export (a model that serves
  something other than what was evaluated must never reach the registry).
* :func:`reference_profile` describes the training images for drift monitoring: quantiles and a
  sample of every :func:`keeneye.imaging.quality_features` value, a sample of the model's embeddings
  and of its outputs (confidence, instance count).
* :func:`export_bundle` does all of it and writes ``model.onnx`` + ``keeneye.json``.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from keeneye.domain import KeeneyeError, Task
from keeneye.imaging import Image, quality_features
from keeneye.models import (
    ClassInfo,
    InputSpec,
    ModelBundle,
    ModelManifest,
    OutputFormat,
    Thresholds,
    postprocess,
)
from keeneye.training.trainers import WithEmbedding

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
HEAD_OUTPUT = "logits"
EMBEDDING_OUTPUT = "embedding"
PARITY_TOLERANCE = 1e-3
PROFILE_MAX_EMBEDDINGS = 200
PROFILE_MAX_SAMPLE = 500
PROFILE_QUANTILES = tuple(np.linspace(0.0, 1.0, 21).tolist())  # every 5 %

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime's outputs are from torch's on the same inputs."""

    max_abs_diff: float
    per_output: dict[str, float]
    n_inputs: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "per_output": self.per_output,
            "n_inputs": self.n_inputs,
            "tolerance": self.tolerance,
        }


def export_onnx(model: nn.Module, task: Task, sample: torch.Tensor, *, opset: int = OPSET) -> bytes:
    """ONNX bytes of ``model`` (wrapped to also return its pooled embedding), batch axis dynamic."""
    wrapper = WithEmbedding(model, task).eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose
        # The classic TorchScript-based exporter: deterministic, no extra dependencies, handles
        # timm and smp models at opset 17 (the dynamo exporter needs onnxscript).
        torch.onnx.export(
            wrapper,
            (sample[:1].float(),),
            buffer,  # type: ignore[arg-type]  # a file-like object is accepted
            input_names=[INPUT_NAME],
            output_names=[HEAD_OUTPUT, EMBEDDING_OUTPUT],
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                HEAD_OUTPUT: {0: "batch"},
                EMBEDDING_OUTPUT: {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def _session(onnx_bytes: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_outputs(onnx_bytes: bytes, x: npt.NDArray[Any], *, batch_size: int = 32) -> list[FloatArray]:
    """All outputs of an ONNX model for a stacked input (run in chunks), in graph output order."""
    session = _session(onnx_bytes)
    name = session.get_inputs()[0].name
    parts: list[list[FloatArray]] = []
    for start in range(0, len(x), batch_size):
        chunk = np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)
        parts.append(session.run(None, {name: chunk}))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def check_parity(
    onnx_bytes: bytes,
    model: nn.Module,
    task: Task,
    inputs: torch.Tensor,
    *,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """Compare ONNX Runtime with torch on ``inputs``; raise :class:`KeeneyeError` above ``tolerance``."""
    wrapper = WithEmbedding(model, task).eval()
    with torch.no_grad():
        expected = [t.float().numpy() for t in wrapper(inputs.float())]
    got = onnx_outputs(onnx_bytes, inputs.float().numpy())
    per_output = {
        name: float(np.max(np.abs(e - g))) if e.size else 0.0
        for name, e, g in zip((HEAD_OUTPUT, EMBEDDING_OUTPUT), expected, got, strict=True)
    }
    report = ParityReport(max(per_output.values()), per_output, int(inputs.shape[0]), tolerance)
    log.info("ONNX parity: max abs diff %.3g over %d inputs", report.max_abs_diff, report.n_inputs)
    if not report.ok:
        raise KeeneyeError(
            f"ONNX export refused: outputs differ from torch by up to {report.max_abs_diff:.3g} "
            f"(tolerance {tolerance:g}; per output {per_output})",
            fix="an operator is exported incorrectly; try another backbone or opset, or report the model",
        )
    return report


# --------------------------------------------------------------------------------------------------
# Drift reference profile
# --------------------------------------------------------------------------------------------------


def _round(values: npt.ArrayLike, digits: int = 5) -> list[Any]:
    out: list[Any] = np.round(np.asarray(values, dtype=np.float64), digits).tolist()
    return out


def distribution(
    values: Sequence[float], *, rng: np.random.Generator, max_sample: int = PROFILE_MAX_SAMPLE
) -> dict[str, Any]:
    """Quantiles (every 5 %), mean, std and a random sample of a 1-D distribution."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"n": 0, "quantiles": [], "sample": [], "mean": 0.0, "std": 0.0}
    sample = arr if arr.size <= max_sample else rng.choice(arr, size=max_sample, replace=False)
    return {
        "n": int(arr.size),
        "quantiles": _round(np.quantile(arr, PROFILE_QUANTILES)),
        "sample": _round(sample),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
    }


def reference_profile(
    images: Sequence[Image],
    *,
    embeddings: npt.NDArray[Any] | None = None,
    confidences: Sequence[float] | None = None,
    instance_counts: Sequence[float] | None = None,
    class_mix: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The drift reference of a set of training images (see the module docstring)."""
    rng = np.random.default_rng(seed)
    per_feature: dict[str, list[float]] = {}
    for image in images:
        for name, value in quality_features(image).items():
            per_feature.setdefault(name, []).append(value)
    profile: dict[str, Any] = {
        "version": 1,
        "n_images": len(images),
        "quantile_levels": _round(PROFILE_QUANTILES, 3),
        "features": {name: distribution(vals, rng=rng) for name, vals in sorted(per_feature.items())},
    }
    if embeddings is not None and len(embeddings):
        emb = np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1)
        if len(emb) > PROFILE_MAX_EMBEDDINGS:
            emb = emb[rng.choice(len(emb), size=PROFILE_MAX_EMBEDDINGS, replace=False)]
        profile["embedding"] = {
            "source": f"model:{EMBEDDING_OUTPUT}",
            "output": EMBEDDING_OUTPUT,
            "dim": int(emb.shape[1]),
            "sample": _round(emb, 4),
        }
    outputs: dict[str, Any] = {}
    if confidences is not None:
        outputs["confidence"] = distribution(confidences, rng=rng)
    if instance_counts is not None:
        outputs["instance_count"] = distribution(instance_counts, rng=rng)
    if class_mix is not None:
        outputs["class_mix"] = {k: round(float(v), 6) for k, v in class_mix.items()}
    if outputs:
        profile["outputs"] = outputs
    return profile


def output_reference(
    manifest: ModelManifest, head: npt.NDArray[Any]
) -> tuple[list[float], list[float], dict[str, float]]:
    """Confidence, instance count and class mix of the model's outputs, through serving's postprocess."""
    confidences: list[float] = []
    counts: list[float] = []
    mix: dict[str, float] = {c.name: 0.0 for c in manifest.classes}
    for row in head:
        inst = postprocess(manifest, [row])
        confidences.append(float(inst.scores.max()) if len(inst) else 0.0)
        if manifest.task is Task.classify:
            counts.append(1.0)
            if len(inst):
                mix[manifest.classes[int(inst.class_ids[0])].name] += 1.0
        else:
            counts.append(float(len(inst)))
            for cid in inst.class_ids:
                mix[manifest.classes[int(cid)].name] += 1.0
    total = sum(mix.values())
    return confidences, counts, {k: v / total for k, v in mix.items()} if total else mix


# --------------------------------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    bundle: ModelBundle
    parity: ParityReport
    onnx_bytes: int


def output_format_for(task: Task) -> OutputFormat:
    return "logits" if task is Task.classify else "seg-logits"


def export_bundle(
    model: nn.Module,
    out_dir: Path,
    *,
    name: str,
    task: Task,
    input_spec: InputSpec,
    classes: Sequence[ClassInfo],
    parity_inputs: torch.Tensor,
    profile_inputs: torch.Tensor,
    profile_images: Sequence[Image],
    thresholds: Thresholds | None = None,
    data_version: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    gates: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export, check parity, compute the reference profile and write the bundle folder.

    ``parity_inputs`` are a few real (prepared) inputs; ``profile_inputs`` the prepared training
    inputs whose embeddings and outputs form the reference profile, ``profile_images`` the decoded
    training images whose quality features do.
    """
    model = model.cpu().eval()
    onnx_bytes = export_onnx(model, task, parity_inputs[:1])
    parity = check_parity(onnx_bytes, model, task, parity_inputs)
    manifest = ModelManifest(
        name=name,
        task=task,
        output_format=output_format_for(task),
        input=input_spec,
        classes=list(classes),
        thresholds=thresholds or Thresholds(),
        background_class=None if task is Task.classify else 0,
        embedding_output=EMBEDDING_OUTPUT,
        data_version=data_version,
        metrics=dict(metrics or {}),
        gates=dict(gates or {}),
        created_at=datetime.now(tz=UTC).isoformat(timespec="seconds"),
        extra={**dict(extra or {}), "parity": parity.to_dict(), "opset": OPSET},
    )
    rng = np.random.default_rng(seed)
    sample = profile_inputs
    if len(sample) > PROFILE_MAX_EMBEDDINGS:
        sample = sample[
            torch.as_tensor(np.sort(rng.choice(len(sample), PROFILE_MAX_EMBEDDINGS, replace=False)))
        ]
    head, embedding = onnx_outputs(onnx_bytes, sample.float().numpy())[:2]
    confidences, counts, mix = output_reference(manifest, head)
    manifest.reference_profile = reference_profile(
        profile_images,
        embeddings=embedding,
        confidences=confidences,
        instance_counts=counts,
        class_mix=mix,
        seed=seed,
    )
    bundle = ModelBundle.write(out_dir, onnx_bytes, manifest)
    log.info("exported %s to %s (%d bytes, parity %.2g)", name, out_dir, len(onnx_bytes), parity.max_abs_diff)
    return ExportResult(bundle=bundle, parity=parity, onnx_bytes=len(onnx_bytes))


def update_manifest(bundle: ModelBundle, **changes: Any) -> ModelBundle:
    """Rewrite the manifest with new fields (metrics, gates after evaluation); the ONNX is untouched."""
    manifest = bundle.manifest.model_copy(update=changes)
    ModelManifest.model_validate(manifest.model_dump())  # re-validate the merged manifest
    bundle.manifest_path.write_text(manifest.dump())
    return ModelBundle(bundle.path, manifest)
