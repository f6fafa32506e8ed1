"""The tiny ONNX builders are public (serving tests and benchmarks use them): check what they promise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from keeneye.domain import Task
from keeneye.models import ModelBundle
from keeneye.models.testing import (
    IR_VERSION,
    OPSET,
    mobilenet_like_classifier,
    tiny_classifier,
    tiny_classifier_reference,
    tiny_segmenter,
    write_bundle,
    yolo_detect_model,
    yolo_rows,
    yolo_segment_model,
)


def _session(model: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "model",
    [
        tiny_classifier(3),
        tiny_segmenter(3),
        yolo_detect_model(np.zeros((6, 4)), size=32),
        yolo_segment_model(np.zeros((8, 4)), np.zeros((2, 8, 8)), size=32),
    ],
)
def test_builders_have_opset_ir_and_a_dynamic_batch_axis(model: bytes) -> None:
    proto = onnx.load_model_from_string(model)
    assert proto.ir_version == IR_VERSION and proto.opset_import[0].version == OPSET
    session = _session(model)
    assert session.get_inputs()[0].shape[0] == "N"
    for n in (1, 3):
        outputs = session.run(None, {"images": np.zeros((n, 3, 32, 32), np.float32)})
        assert all(o.shape[0] == n for o in outputs)


def test_tiny_classifier_is_deterministic_per_seed() -> None:
    assert tiny_classifier(3, seed=1) == tiny_classifier(3, seed=1)
    assert tiny_classifier(3, seed=1) != tiny_classifier(3, seed=2)
    x = np.random.default_rng(0).uniform(size=(2, 4, 8, 8)).astype(np.float32)
    (logits,) = _session(tiny_classifier(5, channels=4, size=8, seed=3)).run(None, {"images": x})
    np.testing.assert_allclose(logits, tiny_classifier_reference(x, 5, seed=3), atol=1e-5)


def test_tiny_segmenter_lights_class_k_where_channel_k_minus_1_is_bright() -> None:
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 0, :5, :5] = 1.0
    x[0, 2, 10:, 10:] = 1.0
    (logits,) = _session(tiny_segmenter(4)).run(None, {"images": x})
    winner = logits[0].argmax(axis=0)
    expected = np.zeros((32, 32), np.int64)
    expected[:5, :5] = 1
    expected[10:, 10:] = 3
    np.testing.assert_array_equal(winner, expected)
    with pytest.raises(ValueError, match=r"needs 2\.\.4 classes"):
        tiny_segmenter(5)


def test_yolo_models_output_their_constants_in_ultralytics_layout() -> None:
    rows = yolo_rows([(10, 10, 4, 4), (20, 5, 2, 6)], [(0.9, 0.1), (0.2, 0.7)], [(1, 2, 3), (4, 5, 6)])
    assert rows.shape == (4 + 2 + 3, 2) and rows[:, 1].tolist() == pytest.approx(
        [20, 5, 2, 6, 0.2, 0.7, 4, 5, 6]
    )
    protos = np.arange(3 * 4 * 4, dtype=np.float32).reshape(3, 4, 4)
    x = np.ones((2, 3, 64, 64), np.float32)
    out0, out1 = _session(yolo_segment_model(rows, protos, size=64)).run(None, {"images": x})
    np.testing.assert_array_equal(out0, np.broadcast_to(rows, (2, *rows.shape)))
    np.testing.assert_array_equal(out1, np.broadcast_to(protos, (2, *protos.shape)))
    det = rows[:6]
    (t,) = _session(yolo_detect_model(det, size=64, transposed=True)).run(None, {"images": x})
    np.testing.assert_array_equal(t[1], det.T)


def test_mobilenet_like_costs_about_a_mobilenet() -> None:
    model = mobilenet_like_classifier(num_classes=10)
    meta = {p.key: p.value for p in onnx.load_model_from_string(model).metadata_props}
    assert 0.3e9 <= int(meta["flops"]) <= 0.6e9
    (logits,) = _session(model).run(None, {"images": np.ones((2, 3, 224, 224), np.float32)})
    assert logits.shape == (2, 10) and np.isfinite(logits).all() and np.abs(logits).max() > 0


def test_write_bundle_derives_task_and_name(tmp_path: Path) -> None:
    bundle = write_bundle(
        tmp_path / "fish",
        tiny_classifier(2),
        output_format="logits",
        input={"width": 32, "height": 32},
        classes=["pike", "perch"],
    )
    loaded = ModelBundle.load(tmp_path / "fish")
    assert loaded.manifest == bundle.manifest
    assert loaded.manifest.name == "fish" and loaded.manifest.task == Task.classify
    assert loaded.onnx_path.read_bytes() == tiny_classifier(2)
