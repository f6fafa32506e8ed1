"""OnnxModel: load-time validation against the manifest, and runs that match numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keeneye.domain import InvalidInput
from keeneye.models import ModelBundle, OnnxModel, postprocess, session_options
from keeneye.models.session import usable_cores
from keeneye.models.testing import (
    tiny_classifier,
    tiny_classifier_reference,
    tiny_segmenter,
    write_bundle,
    yolo_detect_model,
    yolo_rows,
    yolo_segment_model,
)
from keeneye.settings import InferenceSettings
from tests.unit.models.support import CLASSES, classifier_bundle

SETTINGS = InferenceSettings(intra_op_threads=1, inter_op_threads=1)


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("n", [1, 5])
def test_tiny_classifier_logits_match_numpy(tmp_path: Path, n: int) -> None:
    model = OnnxModel.load(classifier_bundle(tmp_path / "m"), SETTINGS)
    batch = _batch(n)
    (logits,) = model.run(batch)
    assert logits.shape == (n, len(CLASSES))
    np.testing.assert_allclose(logits, tiny_classifier_reference(batch, len(CLASSES)), atol=1e-5)
    assert model.can_batch and model.fixed_batch is None
    assert model.input_name == "images" and model.input_shape == (3, 32, 32)


def test_load_accepts_a_folder_path(tmp_path: Path) -> None:
    classifier_bundle(tmp_path / "m")
    model = OnnxModel.load(tmp_path / "m", SETTINGS)
    assert model.manifest.name == "m" and "CPUExecutionProvider" in model.providers


def test_fixed_batch_1_model_still_runs_a_batch(tmp_path: Path) -> None:
    model = OnnxModel.load(classifier_bundle(tmp_path / "m", batch=1), SETTINGS)
    assert not model.can_batch and model.fixed_batch == 1
    batch = _batch(3, seed=1)
    (logits,) = model.run(batch)
    np.testing.assert_allclose(logits, tiny_classifier_reference(batch, len(CLASSES)), atol=1e-5)


def test_fixed_batch_2_model_pads_the_last_chunk(tmp_path: Path) -> None:
    model = OnnxModel.load(classifier_bundle(tmp_path / "m", batch=2), SETTINGS)
    batch = _batch(3, seed=2)
    (logits,) = model.run(batch)
    np.testing.assert_allclose(logits, tiny_classifier_reference(batch, len(CLASSES)), atol=1e-5)


def test_embedding_output_comes_last_and_splits(tmp_path: Path) -> None:
    model = OnnxModel.load(classifier_bundle(tmp_path / "m", embedding_output="pooled"), SETTINGS)
    batch = _batch(2)
    outputs = model.run(batch)
    head, embedding = model.split(outputs)
    assert model.output_names == ["logits", "pooled"] and model.head_output_names == ["logits"]
    assert len(head) == 1 and head[0].shape == (2, len(CLASSES))
    assert embedding is not None
    np.testing.assert_allclose(embedding, batch.mean(axis=(2, 3)), atol=1e-5)
    # postprocess of one item ignores the trailing embedding
    result = postprocess(model.manifest, [o[0] for o in outputs])
    assert result.class_ids[0] == int(np.argmax(head[0][0]))


def test_warmup_runs_once_on_zeros(tmp_path: Path) -> None:
    model = OnnxModel.load(classifier_bundle(tmp_path / "m", batch=1), SETTINGS)
    assert not model.warm
    model.warmup()
    assert model.warm


def test_run_casts_float64_input(tmp_path: Path) -> None:
    model = OnnxModel.load(classifier_bundle(tmp_path / "m"), SETTINGS)
    batch = _batch(2)
    (logits,) = model.run(batch.astype(np.float64))
    np.testing.assert_allclose(logits, tiny_classifier_reference(batch, len(CLASSES)), atol=1e-5)


def test_run_refuses_a_3d_tensor(tmp_path: Path) -> None:
    model = OnnxModel.load(classifier_bundle(tmp_path / "m"), SETTINGS)
    with pytest.raises(InvalidInput) as err:
        model.run(np.zeros((3, 32, 32), dtype=np.float32))
    assert err.value.reason == "bad_input"


def test_session_options_from_settings() -> None:
    opts = session_options(InferenceSettings(intra_op_threads=3, inter_op_threads=2))
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 2)
    defaults = session_options(InferenceSettings())
    assert (
        defaults.intra_op_num_threads == usable_cores()
    )  # every CPU this process may use, not ORT's physical-core count
    # Pool threads sleep between runs unless asked to spin (spinning takes the decode threads' cores).
    assert defaults.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(InferenceSettings(allow_spinning=True))
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert spinning.get_session_config_entry("session.inter_op.allow_spinning") == "1"


# --------------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------------


def _raw_bundle(path: Path, onnx_bytes: bytes, **manifest: Any) -> ModelBundle:
    manifest.setdefault("output_format", "logits")
    manifest.setdefault("input", {"width": 32, "height": 32})
    manifest.setdefault("classes", CLASSES)
    return write_bundle(path, onnx_bytes, **manifest)


@pytest.mark.parametrize(
    "payload", [b"", b"this is not an onnx model", b"\x89PNG\r\n\x1a\n" + bytes(range(256))]
)
def test_non_onnx_bytes_are_bad_model(tmp_path: Path, payload: bytes) -> None:
    with pytest.raises(InvalidInput) as err:
        OnnxModel.load(_raw_bundle(tmp_path / "m", payload), SETTINGS)
    assert err.value.reason == "bad_model"
    assert err.value.message.startswith("model.onnx is not an ONNX model: ")


@pytest.mark.parametrize(
    ("onnx_bytes", "manifest", "expected"),
    [
        (
            tiny_classifier(4),
            {"input": {"width": 32, "height": 32, "channels": ["red", "green", "blue", "nir"]}},
            "model.onnx input 'images' has 3 channels (NCHW shape ['N', 3, 32, 32]) but the manifest lists 4 "
            "(red, green, blue, nir)",
        ),
        (
            tiny_classifier(4),
            {"input": {"width": 32, "height": 64}},
            "has height 32 but the manifest says 64",
        ),
        (tiny_classifier(4), {"input": {"width": 16, "height": 32}}, "has width 32 but the manifest says 16"),
        (
            tiny_classifier(4),
            {"input": {"width": 32, "height": 32, "name": "pixels"}},
            "model.onnx has no input 'pixels' (inputs: images)",
        ),
        (
            tiny_classifier(4),
            {"input": {"width": 32, "height": 32, "dtype": "uint8"}},
            "is float32 but the manifest",
        ),
        (tiny_classifier(4), {"input": {"width": 32, "height": 32, "layout": "NHWC"}}, "has 32 channels"),
        (tiny_classifier(4), {"classes": ["a", "b"]}, "has 4 classes, the manifest 2"),
        (
            tiny_classifier(4),
            {"embedding_output": "features"},
            "embedding_output 'features' is not an output",
        ),
        (
            tiny_classifier(4),
            {"output_format": "seg-logits", "task": "segment"},
            "needs exactly one output (N, classes, H, W)",
        ),
        (
            tiny_classifier(4),
            {"output_format": "yolo-segment", "task": "segment"},
            "needs two outputs",
        ),
        (
            yolo_detect_model(np.zeros((4 + 4, 10)), size=32),
            {"output_format": "yolo-detect", "task": "detect", "classes": ["a", "b"]},
            "no axis of size 4 + 2 classes = 6",
        ),
        (
            tiny_segmenter(3),
            {"output_format": "seg-logits", "task": "segment", "classes": ["bg", "a", "b", "c"]},
            "output has 3 class channels, the manifest 4 classes",
        ),
    ],
)
def test_manifest_model_mismatch_is_bad_model(
    tmp_path: Path, onnx_bytes: bytes, manifest: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        OnnxModel.load(_raw_bundle(tmp_path / "m", onnx_bytes, **manifest), SETTINGS)
    assert err.value.reason == "bad_model"
    assert expected in err.value.message


# --------------------------------------------------------------------------------------------------
# end to end through ORT + postprocess for the other formats
# --------------------------------------------------------------------------------------------------


def test_tiny_segmenter_predicts_painted_regions(tmp_path: Path) -> None:
    bundle = write_bundle(
        tmp_path / "seg",
        tiny_segmenter(3),
        output_format="seg-logits",
        input={"width": 32, "height": 32},
        classes=["background", "scratch", "dent"],
        background_class=0,
    )
    model = OnnxModel.load(bundle, SETTINGS)
    image = np.zeros((3, 32, 32), dtype=np.float32)
    image[0, 4:10, 5:12] = 1.0  # channel 0 → class 1
    image[1, 20:30, 20:24] = 1.0  # channel 1 → class 2
    image[0, 25:27, 2:4] = 1.0  # a second class-1 blob
    (logits,) = model.run(image[None])
    result = postprocess(bundle.manifest, [logits[0]])
    got = sorted(zip(result.class_ids.tolist(), result.boxes.tolist(), result.areas.tolist(), strict=True))
    assert got == [
        (1, [2.0, 25.0, 4.0, 27.0], 4.0),
        (1, [5.0, 4.0, 12.0, 10.0], 42.0),
        (2, [20.0, 20.0, 24.0, 30.0], 40.0),
    ]


@pytest.mark.parametrize("transposed", [False, True])
def test_yolo_detect_export_end_to_end(tmp_path: Path, transposed: bool) -> None:
    rows = yolo_rows([(10, 10, 8, 8), (11, 10, 8, 8), (40, 40, 10, 10)], [(0.9, 0.0), (0.8, 0.0), (0.0, 0.7)])
    bundle = write_bundle(
        tmp_path / "det",
        yolo_detect_model(rows, size=64, transposed=transposed),
        output_format="yolo-detect",
        input={"width": 64, "height": 64},
        classes=["scratch", "dent"],
    )
    model = OnnxModel.load(bundle, SETTINGS)
    (out,) = model.run(np.zeros((2, 3, 64, 64), dtype=np.float32))
    for item in out:
        result = postprocess(bundle.manifest, [item])
        assert result.class_ids.tolist() == [0, 1]
        np.testing.assert_allclose(result.boxes, [[6, 6, 14, 14], [35, 35, 45, 45]])


def test_yolo_segment_export_end_to_end(tmp_path: Path) -> None:
    protos = np.full((2, 16, 16), 4.0, dtype=np.float32)
    rows = yolo_rows([(16, 16, 8, 6)], [(0.9,)], [(1.0, 0.0)])
    bundle = write_bundle(
        tmp_path / "segm",
        yolo_segment_model(rows, protos, size=64),
        output_format="yolo-segment",
        input={"width": 64, "height": 64},
        classes=["scratch"],
    )
    model = OnnxModel.load(bundle, SETTINGS)
    assert model.head_output_names == ["output0", "output1"]
    outputs = model.run(np.zeros((1, 3, 64, 64), dtype=np.float32))
    result = postprocess(bundle.manifest, [o[0] for o in outputs])
    assert result.masks is not None and result.masks.shape == (1, 64, 64)
    assert int(result.masks.sum()) == 8 * 6  # a constant positive mask, cropped to its 8×6 box
