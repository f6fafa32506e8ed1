"""Trainers on tiny tensors: fitting, early stopping, augmentation, metrics, search, bad names."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from keeneye.domain import KeeneyeError, Task  # noqa: E402
from keeneye.training.torchdata import TensorImageDataset, augment_batch, channel_statistics, normalise  # noqa: E402
from keeneye.training.trainers import (  # noqa: E402
    ProgressEvent,
    TrainConfig,
    build_model,
    decision_metric,
    fit,
    foreground_miou,
    image_auroc,
    macro_f1_from_labels,
    search,
    segmentation_loss,
    validation_metric,
)


def _classification_set(n: int = 24, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes that differ in brightness: learnable in one or two epochs."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, size, size, generator=g) * 0.3 + (y.float() * 2 - 1)[:, None, None, None]
    return x, y


def _segmentation_set(n: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(n, size, size, dtype=torch.int64)
    y[:, 8:20, 8:20] = 1
    y[::2, 22:28, 2:10] = 2
    x = torch.randn(n, 3, size, size, generator=g) * 0.2 + y[:, None].float()
    return x, y


def test_fit_classifier_reports_epochs() -> None:
    x, y = _classification_set()
    events: list[ProgressEvent] = []
    config = TrainConfig(
        Task.classify, 2, 3, backbone="resnet10t", epochs=2, batch_size=8, learning_rate=3e-3
    )
    result = fit(config, x[:16], y[:16], x[16:], y[16:], progress=events.append)
    assert [e.epoch for e in result.history] == [1, 2]
    assert 1 <= result.best_epoch <= 2
    assert result.device == "cpu"
    assert not result.model.training  # returned in eval mode with the best weights
    epoch_events = [e for e in events if e.stage == "train" and e.done]
    assert [e.done for e in epoch_events] == [1, 2]
    assert set(epoch_events[-1].metrics) == {"loss", "val", "best"}


def test_fit_segmenter_runs() -> None:
    x, y = _segmentation_set()
    config = TrainConfig(Task.segment, 3, 3, backbone="resnet18", epochs=1, batch_size=4)
    result = fit(config, x[:6], y[:6], x[6:], y[6:])
    assert len(result.history) == 1
    with torch.no_grad():
        assert result.model(x[:1]).shape == (1, 3, 32, 32)


def test_early_stopping_stops_after_patience() -> None:
    x, y = _classification_set()
    config = TrainConfig(
        Task.classify, 2, 3, backbone="resnet10t", epochs=6, batch_size=8, patience=1, learning_rate=1e-9
    )
    # With a learning rate of ~0 the validation metric cannot improve after epoch 1; patience counts
    # from epoch 4, where OneCycle's decay has halved the rate (ceil(6 × 0.6)): the run ends after 5.
    result = fit(config, x[:16], y[:16], x[16:], y[16:])
    assert result.stopped_early
    assert len(result.history) == 5 and result.best_epoch == 1


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        ([0, 1, 2, 2], [0, 1, 2, 2], 1.0),
        ([0, 0, 1, 1], [0, 1, 1, 1], (2 / 3 + 0.8) / 2),  # f1 class0 = 2/3, class1 = 4/5
        ([1, 1], [0, 0], 0.0),
    ],
)
def test_macro_f1_from_labels(pred: list[int], target: list[int], expected: float) -> None:
    assert macro_f1_from_labels(torch.tensor(pred), torch.tensor(target), 3) == pytest.approx(expected)


def test_foreground_miou() -> None:
    target = torch.tensor([[0, 1, 1, 2]])
    pred = torch.tensor([[1, 1, 0, 2]])
    # class 1: inter 1, union 3; class 2: 1/1
    assert foreground_miou(pred, target, 3) == pytest.approx((1 / 3 + 1) / 2)


@pytest.mark.parametrize(
    ("truth", "score", "expected"),
    [
        ([True, True, False, False], [0.9, 0.8, 0.2, 0.1], 1.0),
        ([True, True, False, False], [0.1, 0.2, 0.8, 0.9], 0.0),
        ([True, False, False], [0.5, 0.5, 0.1], 0.75),  # a tie counts half
        ([True, True, False, False], [0.9, 0.3, 0.5, 0.1], 0.75),  # one of four pairs inverted
        ([True, True], [0.9, 0.1], None),  # no OK image: undefined
    ],
)
def test_image_auroc(truth: list[bool], score: list[float], expected: float | None) -> None:
    got = image_auroc(torch.tensor(truth), torch.tensor(score))
    assert got == (None if expected is None else pytest.approx(expected))


class _LogitsAreInput(torch.nn.Module):
    """A 'segmenter' whose logits are its input: the test writes the predictions directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _decision_case(swap: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4×4 frames, 3 classes: frame 0 defective (pixels (1,1) class 1 and (2,2) class 2), frame 1
    OK. Background logit 2 everywhere; one pixel of class 1 at logit 5 on frame 0 (or, ``swap``, on
    the OK frame 1)."""
    x = torch.zeros(2, 3, 4, 4)
    x[:, 0] = 2.0
    x[1 if swap else 0, 1, 1, 1] = 5.0
    y = torch.zeros(2, 4, 4, dtype=torch.int64)
    y[0, 1, 1], y[0, 2, 2] = 1, 2
    return x, y


@pytest.mark.parametrize(("swap", "expected"), [(False, 1.0 + 1 / 2), (True, 0.0 + 0 / 3)])
def test_decision_metric_is_image_auroc_plus_foreground_iou(swap: bool, expected: float) -> None:
    x, y = _decision_case(swap)
    cpu = torch.device("cpu")
    # found (1,1) of the two defect pixels: IoU 1/2; swapped: the OK frame's pixel is a false one, 0/3
    assert decision_metric(_LogitsAreInput(), x, y, batch_size=1, device=cpu) == pytest.approx(expected)
    # the class does not matter to the foreground IoU: pixel (1,1) called class 2 still counts
    x2 = x.clone()
    x2[:, [1, 2]] = x2[:, [2, 1]]
    assert decision_metric(_LogitsAreInput(), x2, y, batch_size=2, device=cpu) == pytest.approx(expected)


def test_the_image_term_charges_a_stray_blob_on_an_ok_frame() -> None:
    """``image_decision`` adds BCE(the frame's most foreground pixel, "frame has a defect")."""
    logits = torch.zeros(2, 3, 8, 8)
    logits[:, 0] = 4.0  # background everywhere …
    logits[1, 1, 5, 5] = 9.0  # … but one confident defect pixel on the OK frame 1
    target = torch.zeros(2, 8, 8, dtype=torch.int64)
    target[0, 2:4, 2:4] = 1  # frame 0 is defective, frame 1 OK
    weights = torch.ones(3)
    plain = segmentation_loss(logits, target, weights)
    with_image = segmentation_loss(logits, target, weights, image_decision=True)
    # frame 0's most foreground pixel: logsumexp(0, 0) − 4; frame 1's: logsumexp(9, 0) − 4
    top = torch.tensor(
        [torch.log(torch.tensor(2.0)) - 4.0, torch.logsumexp(torch.tensor([9.0, 0.0]), 0) - 4.0]
    )
    expected = torch.nn.functional.binary_cross_entropy_with_logits(top, torch.tensor([1.0, 0.0]))
    assert float(with_image - plain) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 2.0  # the stray pixel alone costs the OK frame ≈ 5 nats


def test_validation_metric_scores_ok_defect_segmenters_on_the_decision() -> None:
    x, y = _decision_case(swap=False)
    cpu = torch.device("cpu")
    pixel = TrainConfig(Task.segment, 3, 3, backbone="lite4")
    decision = TrainConfig(Task.segment, 3, 3, backbone="lite4", image_decision=True)
    # per-class mIoU: class 1 found (1/1), class 2 missed (0) → 0.5; the decision metric: 1 + 1/2
    assert validation_metric(_LogitsAreInput(), x, y, pixel, cpu) == pytest.approx(0.5)
    assert validation_metric(_LogitsAreInput(), x, y, decision, cpu) == pytest.approx(1.5)


def test_augmentation_keeps_image_and_mask_aligned() -> None:
    y = torch.zeros(16, 8, 8, dtype=torch.int64)
    y[:, 0:3, 0:2] = 1
    x = y[:, None].float().repeat(1, 2, 1, 1) * 10.0  # the image *is* the mask, scaled
    xa, ya = augment_batch(x, y, strength=1.0, task=Task.segment, generator=torch.Generator().manual_seed(3))
    assert xa.shape == x.shape and ya.shape == y.shape
    # Photometric noise is small next to the 0/10 contrast: thresholding the image recovers the mask.
    assert torch.equal((xa[:, 0] > 5).long(), ya)
    assert int(ya.sum()) == int(y.sum())
    assert not torch.equal(ya, y)  # something was flipped or rotated


def test_zero_strength_is_identity() -> None:
    x, y = _classification_set(4)
    xa, ya = augment_batch(x, y, strength=0.0, task=Task.classify)
    assert xa is x and ya is y


def test_normalise_matches_channel_statistics() -> None:
    from keeneye.models import InputSpec

    x = torch.randn(4, 3, 8, 8) * 5 + 2
    mean, std = channel_statistics(x)
    z = normalise(x, InputSpec(width=8, height=8, mean=mean, std=std))
    assert z.mean().abs() < 1e-4
    assert float(z.std()) == pytest.approx(1.0, abs=0.05)
    ds = TensorImageDataset(z, torch.zeros(4, dtype=torch.int64))
    assert len(ds) == 4 and ds[1][0].shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            TrainConfig(Task.classify, 2, 3, backbone="no_such_net"),
            "unknown classification backbone 'no_such_net'",
        ),
        (TrainConfig(Task.segment, 2, 3, backbone="no_such_encoder"), "unknown segmentation encoder"),
        (
            TrainConfig(Task.segment, 2, 3, backbone="resnet18", architecture="nope"),
            "unknown segmentation architecture",
        ),
    ],
)
def test_bad_model_names(config: TrainConfig, match: str) -> None:
    with pytest.raises(KeeneyeError, match=match):
        build_model(config)


def test_missing_local_weights_refused(tmp_path: object) -> None:
    from pathlib import Path

    config = TrainConfig(Task.classify, 2, 3, backbone="resnet10t", weights=Path("/nonexistent/w.pth"))
    with pytest.raises(KeeneyeError, match=r"pretrained weights /nonexistent/w\.pth do not exist"):
        build_model(config)


def test_search_returns_best_params() -> None:
    x, y = _classification_set(16, 32)
    config = TrainConfig(Task.classify, 2, 3, backbone="resnet10t", epochs=1, batch_size=8)
    result = search(config, x[:12], y[:12], x[12:], y[12:], trials=2, epochs_per_trial=1)
    assert set(result.best_params) == {"learning_rate", "batch_size", "augment_strength"}
    assert len(result.trials) == 2
    assert result.best_value == max(t["value"] for t in result.trials)
