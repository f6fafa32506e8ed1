"""``backbone: lite<N>``, the line recipe's small U-Net: smp's attribute names (export, checkpoints and
fine-tuning treat it like any segmenter), input-size logits, refused for other tasks or widths."""

from __future__ import annotations

import pytest
import torch

from keeneye.domain import KeeneyeError, Task
from keeneye.training.trainers import LiteUnet, TrainConfig, WithEmbedding, build_model


def config(backbone: str = "lite8", task: Task = Task.segment) -> TrainConfig:
    return TrainConfig(task=task, num_classes=5, in_channels=3, backbone=backbone)


def test_lite_unet_shapes_and_parts() -> None:
    model = build_model(config())
    assert isinstance(model, LiteUnet)
    assert sum(p.numel() for p in model.parameters()) == 110_293
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)
        maps = model.encoder(x)
        head, embedding = WithEmbedding(model, Task.segment)(x)
    assert logits.shape == (2, 5, 64, 96)
    assert [tuple(m.shape[1:]) for m in maps] == [
        (3, 64, 96),
        (8, 32, 48),
        (16, 16, 24),
        (32, 8, 12),
        (64, 4, 6),
    ]
    assert torch.equal(head, logits) and embedding.shape == (2, 64)


def test_lite_unet_refusals() -> None:
    for backbone, task in (("lite3", Task.segment), ("litex", Task.segment), ("lite8", Task.classify)):
        with pytest.raises(KeeneyeError) as err:
            build_model(config(backbone, task))
        assert "lite" in str(err.value) and err.value.fix is not None
