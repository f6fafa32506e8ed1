"""Tiny real model bundles for registry and CLI tests (built with ``onnx.helper``, no files needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnx import TensorProto, helper

from keeneye.models.bundle import ModelBundle
from keeneye.models.manifest import ModelManifest


def tiny_onnx(classes: int = 3, size: int = 8) -> bytes:
    """images (N, 3, size, size) → GlobalAveragePool → Flatten → logits (N, 3)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def manifest(name: str, **extra: Any) -> ModelManifest:
    data: dict[str, Any] = {
        "name": name,
        "task": "classify",
        "output_format": "logits",
        "input": {"width": 8, "height": 8},
        "classes": ["pike", "perch", "roach"],
        "metrics": {"accuracy": 0.91, "macro_f1": 0.88},
    }
    data.update(extra)
    return ModelManifest.parse(data)


def write_bundle(path: Path, name: str, *, onnx_bytes: bytes | None = None, **extra: Any) -> ModelBundle:
    return ModelBundle.write(path, tiny_onnx() if onnx_bytes is None else onnx_bytes, manifest(name, **extra))
