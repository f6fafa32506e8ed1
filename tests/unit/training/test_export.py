"""ONNX export: parity with torch, the refusal path, the dynamic batch axis, the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keeneye.domain import KeeneyeError, Task  # noqa: E402
from keeneye.imaging import Image  # noqa: E402
from keeneye.models import ClassInfo, InputSpec, ModelBundle, OnnxModel, Thresholds  # noqa: E402
from keeneye.training.export import (  # noqa: E402
    EMBEDDING_OUTPUT,
    check_parity,
    export_bundle,
    export_onnx,
    onnx_outputs,
    reference_profile,
    update_manifest,
)
from keeneye.training.trainers import TrainConfig, WithEmbedding, build_model  # noqa: E402

CASES = [
    pytest.param(Task.classify, "resnet10t", 3, id="classifier"),
    pytest.param(Task.segment, "resnet18", 3, id="unet"),
]


@pytest.fixture(scope="module")
def models() -> dict[Task, tuple[torch.nn.Module, bytes]]:
    torch.manual_seed(0)
    out = {}
    for task, backbone, classes in (p.values for p in CASES):
        model = build_model(TrainConfig(task, classes, 3, backbone=backbone)).eval()
        out[task] = (model, export_onnx(model, task, torch.randn(1, 3, 32, 32)))
    return out


@pytest.mark.parametrize(("task", "backbone", "classes"), CASES)
def test_parity_within_tolerance(
    models: dict[Task, tuple[torch.nn.Module, bytes]], task: Task, backbone: str, classes: int
) -> None:
    model, onnx_bytes = models[task]
    report = check_parity(onnx_bytes, model, task, torch.randn(3, 3, 32, 32))
    assert report.ok
    assert report.max_abs_diff <= 1e-3
    assert set(report.per_output) == {"logits", EMBEDDING_OUTPUT}
    assert report.n_inputs == 3


@pytest.mark.parametrize(("task", "backbone", "classes"), CASES)
def test_batch_axis_is_dynamic(
    models: dict[Task, tuple[torch.nn.Module, bytes]], task: Task, backbone: str, classes: int
) -> None:
    _, onnx_bytes = models[task]
    for n in (1, 5):
        head, emb = onnx_outputs(
            onnx_bytes, np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)
        )
        assert head.shape[0] == n and emb.shape[0] == n
    assert head.shape[1] == classes


def test_wrapper_head_equals_the_model_itself(models: dict[Task, tuple[torch.nn.Module, bytes]]) -> None:
    for task, (model, _) in models.items():
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(WithEmbedding(model, task)(x)[0], model(x), atol=1e-6)


def test_perturbed_onnx_is_refused(models: dict[Task, tuple[torch.nn.Module, bytes]]) -> None:
    import onnx
    from onnx import numpy_helper

    model, onnx_bytes = models[Task.classify]
    proto = onnx.load_from_string(onnx_bytes)
    # Nudge the classifier's bias (the last initializer of shape (classes,)): the exported graph no
    # longer computes what the torch model does.
    bias = next(i for i in reversed(proto.graph.initializer) if list(i.dims) == [3])
    values = numpy_helper.to_array(bias).copy() + 0.01
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    with pytest.raises(KeeneyeError, match=r"ONNX export refused: outputs differ from torch by up to 0\.01"):
        check_parity(proto.SerializeToString(), model, Task.classify, torch.randn(2, 3, 32, 32))


def test_reference_profile_shape() -> None:
    rng = np.random.default_rng(0)
    images = [Image.from_array(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(5)]
    profile = reference_profile(images, embeddings=rng.standard_normal((300, 8)), confidences=[0.5, 0.9])
    assert profile["n_images"] == 5
    assert {"brightness", "contrast", "sharpness", "mean_red"} <= set(profile["features"])
    brightness = profile["features"]["brightness"]
    assert len(brightness["quantiles"]) == 21 and len(brightness["sample"]) == 5
    assert profile["embedding"]["dim"] == 8
    assert len(profile["embedding"]["sample"]) == 200  # capped
    assert profile["outputs"]["confidence"]["n"] == 2


def test_export_bundle_writes_a_complete_manifest(
    tmp_path: Path, models: dict[Task, tuple[torch.nn.Module, bytes]]
) -> None:
    model, _ = models[Task.segment]
    spec = InputSpec(
        name="input", width=32, height=32, channels=["red", "green", "blue"], mean=[0.1] * 3, std=[0.2] * 3
    )
    classes = [
        ClassInfo(id=0, name="background"),
        ClassInfo(id=1, name="scratch"),
        ClassInfo(id=2, name="dent"),
    ]
    rng = np.random.default_rng(1)
    images = [Image.from_array(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    result = export_bundle(
        model,
        tmp_path / "bundle",
        name="line-inspection",
        task=Task.segment,
        input_spec=spec,
        classes=classes,
        parity_inputs=torch.randn(2, 3, 32, 32),
        profile_inputs=torch.randn(3, 3, 32, 32),
        profile_images=images,
        thresholds=Thresholds(score=0.5),
        data_version="abc123",
        extra={"training": {"epochs": 1}},
    )
    bundle = ModelBundle.load(tmp_path / "bundle")
    m = bundle.manifest
    assert m.input == spec  # the exact spec training used
    assert m.output_format == "seg-logits" and m.background_class == 0
    assert m.class_names == ["background", "scratch", "dent"]
    assert m.thresholds.score == 0.5 and m.data_version == "abc123" and m.created_at
    assert m.embedding_output == EMBEDDING_OUTPUT
    assert m.extra["parity"]["max_abs_diff"] == result.parity.max_abs_diff <= 1e-3
    assert m.reference_profile is not None
    assert m.reference_profile["embedding"]["dim"] == 512
    assert m.reference_profile["outputs"]["instance_count"]["n"] == 3
    OnnxModel.load(bundle)  # serving accepts it

    updated = update_manifest(bundle, metrics={"mean_iou": 0.7}, gates={"passed": True})
    again = ModelBundle.load(tmp_path / "bundle")
    assert again.manifest.metrics == {"mean_iou": 0.7} == updated.manifest.metrics
    assert again.sha256() == bundle.sha256()


# --------------------------------------------------------------------------------------------------
# What parity compares: probabilities and decisions, raw outputs relative to their scale
# --------------------------------------------------------------------------------------------------


def _confident_head(task: Task, x: torch.Tensor, largest: float = 15.0) -> torch.nn.Module:
    """A model whose largest head output on ``x`` is ``largest`` (a trained, confident head): the last
    layer's weights and bias are scaled, which scales its outputs exactly."""
    torch.manual_seed(1)
    backbone = "resnet10t" if task is Task.classify else "resnet18"
    model = build_model(TrainConfig(task, 3, 3, backbone=backbone)).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)][-1]
    with torch.no_grad():
        factor = largest / float(model(x).abs().max())
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.mul_(factor)
    return model


@pytest.mark.parametrize("task", [Task.classify, Task.segment], ids=["classifier", "unet"])
def test_rounding_noise_on_large_logits_passes(monkeypatch: pytest.MonkeyPatch, task: Task) -> None:
    """A confident head (logits ≈ ±15) differs from ONNX Runtime by more than 1e-3 in absolute terms
    from float32 rounding alone; the probabilities and decisions are the same, so it must pass."""
    import keeneye.training.export as export

    x = torch.randn(2, 3, 32, 32)
    model = _confident_head(task, x)
    with torch.no_grad():
        exact = [t.numpy() for t in WithEmbedding(model, task)(x)]
    # Rounding errs in proportion to each value: 2e-4 of it here, up to 3e-3 on the largest logits.
    rel = np.random.default_rng(0).uniform(-2e-4, 2e-4, exact[0].shape).astype(np.float32)
    monkeypatch.setattr(export, "onnx_outputs", lambda _b, _x: [exact[0] * (1 + rel), exact[1]])
    report = check_parity(b"", model, task, x)
    assert report.max_abs_diff > 1e-3  # refused before: "outputs differ 0.00239 (tolerance 0.001)"
    assert report.ok, report.failures
    assert report.max_probability_diff <= 1e-3
    assert report.decision_mismatches == 0


def test_a_different_model_is_refused(models: dict[Task, tuple[torch.nn.Module, bytes]]) -> None:
    model, _ = models[Task.segment]
    torch.manual_seed(7)
    other = build_model(TrainConfig(Task.segment, 3, 3, backbone="resnet18")).eval()
    other_onnx = export_onnx(other, Task.segment, torch.randn(1, 3, 32, 32))
    with pytest.raises(KeeneyeError, match=r"ONNX export refused: .*decisions differ") as err:
        check_parity(other_onnx, model, Task.segment, torch.randn(2, 3, 32, 32))
    assert "probabilities differ" in err.value.message


def test_decisions_count_only_where_torch_is_decided() -> None:
    from keeneye.training.export import _decision_mismatches, head_probabilities

    expected = np.array([[0.2, 0.8], [0.5004, 0.4996], [0.9, 0.1]], dtype=np.float32)
    got = np.array([[0.8, 0.2], [0.4996, 0.5004], [0.9, 0.1]], dtype=np.float32)
    # Row 1 is a near-tie (margin 8e-4 ≤ 2e-3): its flip is float noise, not a different model.
    assert _decision_mismatches(expected, got, 2e-3) == (1, 3)
    probs = head_probabilities(np.zeros((1, 1, 2, 2), dtype=np.float32))  # binary head → 2 classes
    assert probs.shape == (1, 2, 2, 2) and np.allclose(probs, 0.5)
