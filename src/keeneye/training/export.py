"""Trained torch model → ONNX bundle: export, parity check, manifest and drift reference profile.

* :func:`export_onnx` writes ONNX (opset 17, dynamic batch axis) with two outputs: the head
  (``logits``: class logits or per-pixel seg-logits) and ``embedding`` (pooled features, for drift).
* :func:`check_parity` runs the ONNX model in ONNX Runtime on real inputs and compares it with the
  torch model on what serving uses: the probabilities after softmax / sigmoid (``1e-3`` absolute),
  the decisions they lead to (the winning class of every image or pixel, equal wherever torch's own
  margin is not within float noise) and the raw outputs relative to their scale (``1e-3`` of the
  largest magnitude). Any of these out of bounds refuses the export (a model that serves something
  other than what was evaluated must never reach the registry).
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

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
# Tolerances, per output kind. Served scores are probabilities, compared with thresholds and shown to
# three decimals: 1e-3 absolute on them cannot move a reported score or flip a decision except for a
# value already within 1e-3 of its threshold. Raw outputs (logits, embeddings) are compared relative
# to their scale: float32 kernels that ONNX Runtime fuses differently from torch err in proportion to
# the magnitudes they sum (a trained segmentation head with logits near ±10 differs by ~2e-3 from
# rounding alone), while a wrong weight or operator errs by a share of the values themselves, far above
# 1e-3 of them. Logits are also checked raw because softmax ignores a constant shift of every class.
PARITY_TOLERANCE = 1e-3  # absolute, on probabilities
PARITY_RELATIVE_TOLERANCE = 1e-3  # of the largest magnitude of a raw output (at least 1.0)
PROFILE_MAX_EMBEDDINGS = 200
PROFILE_MAX_SAMPLE = 500
PROFILE_QUANTILES = tuple(np.linspace(0.0, 1.0, 21).tolist())  # every 5 %

FloatArray = npt.NDArray[np.float32]


class ParityReportJson(TypedDict):
    """:meth:`ParityReport.to_dict` (the manifest's ``extra.parity``, the training report's ``parity``)."""

    max_abs_diff: float
    per_output: dict[str, float]
    n_inputs: int
    tolerance: float
    limits: dict[str, float]
    max_probability_diff: float
    decision_mismatches: int
    decisions: int


class DistributionJson(TypedDict):
    """:func:`distribution`: a 1-D distribution in the drift reference profile."""

    n: int
    quantiles: list[float]
    sample: list[float]
    mean: float
    std: float


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime's outputs are from torch's on the same inputs, and whether that is allowed.

    ``per_output`` holds the largest absolute difference of each raw output and ``limits`` the bound
    it was held to; ``max_probability_diff`` compares the head's probabilities (bound ``tolerance``);
    ``decision_mismatches`` counts images (classification) or pixels (segmentation) whose winning class
    differs although torch's margin between its top two probabilities exceeded ``2 × tolerance``.
    """

    max_abs_diff: float
    per_output: dict[str, float]
    n_inputs: int
    tolerance: float
    limits: dict[str, float] = field(default_factory=dict)
    max_probability_diff: float = 0.0
    decision_mismatches: int = 0
    decisions: int = 0

    @property
    def failures(self) -> list[str]:
        """What is out of bounds, one phrase each (empty when the export may pass)."""
        out = [
            f"{name} differs by {diff:.3g} > {self.limits[name]:.3g}"
            for name, diff in self.per_output.items()
            if name in self.limits and diff > self.limits[name]
        ]
        if self.max_probability_diff > self.tolerance:
            out.append(f"probabilities differ by {self.max_probability_diff:.3g} > {self.tolerance:g}")
        if self.decision_mismatches:
            out.append(f"{self.decision_mismatches} of {self.decisions} decisions differ")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> ParityReportJson:
        return {
            "max_abs_diff": self.max_abs_diff,
            "per_output": self.per_output,
            "n_inputs": self.n_inputs,
            "tolerance": self.tolerance,
            "limits": self.limits,
            "max_probability_diff": self.max_probability_diff,
            "decision_mismatches": self.decision_mismatches,
            "decisions": self.decisions,
        }


def head_probabilities(logits: FloatArray) -> FloatArray:
    """Class probabilities of a head output ``(N, C, …)``: softmax over ``C``, sigmoid when ``C == 1``
    (as :mod:`keeneye.models.postprocess` turns logits into scores when it serves)."""
    x = logits.astype(np.float64)
    if x.shape[1] == 1:
        positive = 1.0 / (1.0 + np.exp(-x))
        probs: FloatArray = np.concatenate([1.0 - positive, positive], axis=1).astype(np.float32)
        return probs
    e = np.exp(x - x.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def _decision_mismatches(expected: FloatArray, got: FloatArray, margin: float) -> tuple[int, int]:
    """(mismatches, decisions): winning classes that differ where torch's top-2 margin > ``margin``."""
    top2 = np.sort(expected, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > margin
    differ = expected.argmax(axis=1) != got.argmax(axis=1)
    return int(np.count_nonzero(differ & decided)), int(decided.size)


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
    relative_tolerance: float = PARITY_RELATIVE_TOLERANCE,
) -> ParityReport:
    """Compare ONNX Runtime with torch on ``inputs`` (see the module docstring for what is compared);
    raise :class:`KeeneyeError` naming every bound that is exceeded."""
    wrapper = WithEmbedding(model, task).eval()
    with torch.no_grad():
        expected = [t.float().numpy() for t in wrapper(inputs.float())]
    got = onnx_outputs(onnx_bytes, inputs.float().numpy())
    names = (HEAD_OUTPUT, EMBEDDING_OUTPUT)
    per_output: dict[str, float] = {}
    limits: dict[str, float] = {}
    for name, e, g in zip(names, expected, got, strict=True):
        per_output[name] = float(np.max(np.abs(e - g))) if e.size else 0.0
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        limits[name] = relative_tolerance * max(1.0, scale)
    p_expected, p_got = head_probabilities(expected[0]), head_probabilities(got[0])
    mismatches, decisions = _decision_mismatches(p_expected, p_got, 2 * tolerance)
    report = ParityReport(
        max_abs_diff=max(per_output.values()),
        per_output=per_output,
        n_inputs=int(inputs.shape[0]),
        tolerance=tolerance,
        limits=limits,
        max_probability_diff=float(np.max(np.abs(p_expected - p_got))) if p_expected.size else 0.0,
        decision_mismatches=mismatches,
        decisions=decisions,
    )
    log.info(
        "ONNX parity: max abs diff %.3g, probabilities %.3g, %d/%d decisions differ over %d inputs",
        report.max_abs_diff, report.max_probability_diff, mismatches, decisions, report.n_inputs,
    )  # fmt: skip
    if not report.ok:
        raise KeeneyeError(
            f"ONNX export refused: outputs differ from torch by up to {report.max_abs_diff:.3g} "
            f"({'; '.join(report.failures)}; per output {per_output})",
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
) -> DistributionJson:
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
