"""Tiny, deterministic ONNX models built with ``onnx.helper`` — for tests, demos and benchmarks.

Every builder returns the serialized model (``bytes``) with a dynamic batch axis named ``N`` (unless
asked for a fixed one), opset 17 and IR version 8, which every supported ONNX Runtime loads. Weights
come from a seeded generator, and each builder documents what its outputs are so a test can recompute
them in numpy:

* :func:`tiny_classifier` — global average pool → linear layer (:func:`tiny_classifier_reference`).
* :func:`tiny_segmenter` — 1×1 conv: class ``k`` lights up where input channel ``k-1`` is bright.
* :func:`yolo_detect_model` / :func:`yolo_segment_model` — constant outputs laid out exactly like
  Ultralytics exports (build the rows with :func:`yolo_rows`).
* :func:`mobilenet_like_classifier` — strided 3×3 conv stack costing about a MobileNet (≈0.5 GFLOP).

:func:`write_bundle` writes a model and its manifest as a bundle folder in one call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from keeneye.models.bundle import ModelBundle
from keeneye.models.manifest import TASK_OF_FORMAT, ModelManifest

OPSET = 17
IR_VERSION = 8  # the IR that opset 17 was released with; loadable by every onnxruntime >= 1.12

Batch = int | str

__all__ = [
    "IR_VERSION",
    "OPSET",
    "mobilenet_like_classifier",
    "tiny_classifier",
    "tiny_classifier_reference",
    "tiny_classifier_weights",
    "tiny_segmenter",
    "write_bundle",
    "yolo_detect_model",
    "yolo_rows",
    "yolo_segment_model",
]


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    name: str,
    metadata: dict[str, str] | None = None,
) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="keeneye.models.testing"
    )
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _f32(name: str, array: npt.ArrayLike) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _image_input(name: str, batch: Batch, channels: int, height: int, width: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, channels, height, width])


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------


def tiny_classifier_weights(
    num_classes: int, channels: int = 3, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The ``(W (num_classes, channels), b (num_classes,))`` that :func:`tiny_classifier` uses."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 2.0, size=(num_classes, channels)).astype(np.float32)
    bias = rng.normal(0.0, 0.5, size=(num_classes,)).astype(np.float32)
    return weight, bias


def tiny_classifier_reference(
    batch: npt.NDArray[np.float32], num_classes: int, seed: int = 0
) -> npt.NDArray[np.float32]:
    """The logits :func:`tiny_classifier` computes for an NCHW ``batch``, in numpy."""
    weight, bias = tiny_classifier_weights(num_classes, batch.shape[1], seed)
    pooled = batch.astype(np.float64).mean(axis=(2, 3))
    logits: npt.NDArray[np.float32] = (pooled @ weight.T.astype(np.float64) + bias).astype(np.float32)
    return logits


def tiny_classifier(
    num_classes: int,
    channels: int = 3,
    size: int = 32,
    seed: int = 0,
    *,
    batch: Batch = "N",
    with_embedding: bool = False,
    input_name: str = "images",
) -> bytes:
    """GlobalAveragePool → Flatten → Gemm: input ``(batch, channels, size, size)`` → ``logits (N, nc)``.

    With ``with_embedding`` a second output ``pooled (N, channels)`` carries the pooled features
    (name it in the manifest's ``embedding_output``). ``batch=1`` builds a fixed-batch model.
    """
    weight, bias = tiny_classifier_weights(num_classes, channels, seed)
    nodes = [
        helper.make_node("GlobalAveragePool", [input_name], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "W", "b"], ["logits"], transB=1),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])]
    if with_embedding:
        outputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [batch, channels]))
    return _model(
        nodes,
        [_image_input(input_name, batch, channels, size, size)],
        outputs,
        [_f32("W", weight), _f32("b", bias)],
        "tiny_classifier",
    )


def mobilenet_like_classifier(num_classes: int = 1000, size: int = 224, seed: int = 0) -> bytes:
    """Eight strided 3×3 Conv+Relu layers, global pool and a linear head, seeded He-normal weights.

    At 224 px it costs ≈0.53 GFLOP (≈266 M multiply-adds), about MobileNetV2's 0.6 GFLOP; the exact
    figure is stored in the model's metadata as ``flops``. Input ``images (N, 3, size, size)``.
    """
    rng = np.random.default_rng(seed)
    # (out_channels, stride): the spatial size halves five times, 224 → 7.
    plan = [(16, 2), (32, 2), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1)]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    src, c_in, spatial, flops = "images", 3, size, 0
    for i, (c_out, stride) in enumerate(plan):
        weight = rng.normal(0.0, np.sqrt(2.0 / (c_in * 9)), size=(c_out, c_in, 3, 3))
        inits += [_f32(f"conv{i}.w", weight), _f32(f"conv{i}.b", np.zeros(c_out))]
        nodes.append(
            helper.make_node(
                "Conv",
                [src, f"conv{i}.w", f"conv{i}.b"],
                [f"conv{i}"],
                pads=[1, 1, 1, 1],
                strides=[stride] * 2,
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        spatial = (spatial + 2 - 3) // stride + 1
        flops += 2 * spatial * spatial * c_out * c_in * 9
        src, c_in = f"relu{i}", c_out
    head = rng.normal(0.0, np.sqrt(1.0 / c_in), size=(num_classes, c_in))
    inits += [_f32("fc.w", head), _f32("fc.b", np.zeros(num_classes))]
    flops += 2 * c_in * num_classes
    nodes += [
        helper.make_node("GlobalAveragePool", [src], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["pooled"], axis=1),
        helper.make_node("Gemm", ["pooled", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    return _model(
        nodes,
        [_image_input("images", "N", 3, size, size)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        inits,
        "mobilenet_like_classifier",
        metadata={"flops": str(flops)},
    )


# --------------------------------------------------------------------------------------------------
# Semantic segmentation
# --------------------------------------------------------------------------------------------------

SEGMENTER_GAIN = 20.0


def tiny_segmenter(num_classes: int, channels: int = 3, size: int = 32, *, batch: Batch = "N") -> bytes:
    """A 1×1 Conv: ``images (N, channels, size, size)`` in [0, 1] → ``logits (N, num_classes, size, size)``.

    Class 0 is background with logit 0 everywhere; class ``k ≥ 1`` has logit
    ``20 · (x[k-1] − 0.5)``, so it wins (probability ≈ 1) exactly where channel ``k-1`` is above 0.5
    and the other channels are dark. Paint regions of a channel with 1.0 to predict exact masks.
    """
    if not 1 <= num_classes - 1 <= channels:
        raise ValueError(f"tiny_segmenter needs 2..{channels + 1} classes, got {num_classes}")
    weight = np.zeros((num_classes, channels, 1, 1), dtype=np.float32)
    bias = np.zeros((num_classes,), dtype=np.float32)
    for k in range(1, num_classes):
        weight[k, k - 1, 0, 0] = SEGMENTER_GAIN
        bias[k] = -SEGMENTER_GAIN * 0.5
    return _model(
        [helper.make_node("Conv", ["images", "W", "b"], ["logits"], kernel_shape=[1, 1])],
        [_image_input("images", batch, channels, size, size)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes, size, size])],
        [_f32("W", weight), _f32("b", bias)],
        "tiny_segmenter",
    )


# --------------------------------------------------------------------------------------------------
# Ultralytics-layout YOLO heads with constant outputs
# --------------------------------------------------------------------------------------------------


def yolo_rows(
    boxes_cxcywh: npt.ArrayLike,
    class_scores: npt.ArrayLike,
    mask_coefficients: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float32]:
    """Lay out A anchors as an Ultralytics head does: ``(4 + nc [+ nm], A)``.

    ``boxes_cxcywh`` is (A, 4) in input pixels, ``class_scores`` (A, nc) in [0, 1] (no objectness),
    ``mask_coefficients`` (A, nm) for segmentation heads.
    """
    parts = [np.asarray(boxes_cxcywh, dtype=np.float32), np.asarray(class_scores, dtype=np.float32)]
    if mask_coefficients is not None:
        parts.append(np.asarray(mask_coefficients, dtype=np.float32))
    rows: npt.NDArray[np.float32] = np.ascontiguousarray(np.concatenate(parts, axis=1).T)
    return rows


def _constant_outputs(
    constants: dict[str, npt.NDArray[np.float32]], channels: int, size: int, name: str
) -> bytes:
    """Outputs ``const + 0 · mean(images)``: each constant, broadcast to the input's batch size."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),  # (N,)
        helper.make_node("Mul", ["mean", "zero"], ["zeros"]),
    ]
    inits = [_f32("zero", 0.0)]
    outputs = []
    for out_name, value in constants.items():
        # (N,) → (N, 1, …, 1) with the constant's rank + 1, so it broadcasts against (1, *value.shape).
        shape = np.array([-1] + [1] * value.ndim, dtype=np.int64)
        inits += [numpy_helper.from_array(shape, f"{out_name}.shape"), _f32(f"{out_name}.const", value[None])]
        nodes += [
            helper.make_node("Reshape", ["zeros", f"{out_name}.shape"], [f"{out_name}.zeros"]),
            helper.make_node("Add", [f"{out_name}.zeros", f"{out_name}.const"], [out_name]),
        ]
        outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", *value.shape]))
    return _model(nodes, [_image_input("images", "N", channels, size, size)], outputs, inits, name)


def yolo_detect_model(
    rows: npt.ArrayLike, size: int = 640, channels: int = 3, *, transposed: bool = False
) -> bytes:
    """An Ultralytics YOLO detect export whose ``output0`` is the constant ``rows`` for every image.

    ``rows`` is ``(4 + nc, A)`` (see :func:`yolo_rows`); the output is ``(N, 4 + nc, A)``, or
    ``(N, A, 4 + nc)`` with ``transposed`` (some exporters and TensorRT wrappers write it that way).
    """
    value = np.asarray(rows, dtype=np.float32)
    if transposed:
        value = np.ascontiguousarray(value.T)
    return _constant_outputs({"output0": value}, channels, size, "yolo_detect")


def yolo_segment_model(
    rows: npt.ArrayLike, protos: npt.ArrayLike, size: int = 640, channels: int = 3
) -> bytes:
    """An Ultralytics YOLO segment export with constant ``output0 (N, 4+nc+nm, A)`` and
    ``output1 (N, nm, mh, mw)`` prototype masks."""
    return _constant_outputs(
        {"output0": np.asarray(rows, dtype=np.float32), "output1": np.asarray(protos, dtype=np.float32)},
        channels,
        size,
        "yolo_segment",
    )


# --------------------------------------------------------------------------------------------------
# Bundles
# --------------------------------------------------------------------------------------------------


def write_bundle(path: Path, onnx_bytes: bytes, **manifest: Any) -> ModelBundle:
    """Write ``model.onnx`` and a ``keeneye.json`` built from ``manifest`` into ``path``.

    ``task`` defaults to the one ``output_format`` produces and ``name`` to the folder name, so
    ``write_bundle(p, tiny_classifier(3), output_format="logits", input={"width": 32, "height": 32},
    classes=["ok", "scratch", "dent"])`` is a complete bundle.
    """
    manifest.setdefault("name", Path(path).name)
    if "output_format" in manifest:
        manifest.setdefault("task", TASK_OF_FORMAT[manifest["output_format"]])
    return ModelBundle.write(Path(path), onnx_bytes, ModelManifest.parse(manifest))
