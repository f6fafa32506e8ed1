"""Trainers: a timm classifier and a segmentation-models-pytorch U-Net, one fitting loop for both.

* :func:`build_model` makes the network (no download ever: ``pretrained=False`` / ``encoder_weights=None``
  unless a local weights file is given).
* :func:`fit` trains on prepared tensors (see :mod:`keeneye.training.torchdata`) with AdamW + OneCycle,
  per-batch augmentation, early stopping on the validation metric, CUDA + mixed precision when a GPU
  is present (fp32 on CPU), and reports each epoch through a ``progress`` callback.
* :func:`search` runs an Optuna study (learning rate, batch size, augmentation strength) on a tiny
  budget per trial; the best parameters are then used for the final :func:`fit`.

The validation metric is macro-F1 for classification and the mean IoU of the foreground classes for
segmentation — the same quantities the gates look at, so early stopping optimises what is gated. An
OK/DEFECT segmenter (``image_decision``, line-inspection) is gated on image-level precision and
recall instead, so its epochs are scored on that ranking (:func:`decision_metric`).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from keeneye.domain import KeeneyeError, Task
from keeneye.models.session import usable_cores
from keeneye.training.torchdata import augment_batch

log = logging.getLogger(__name__)

DEFAULT_CLASSIFY_BACKBONE = "resnet10t"
DEFAULT_SEGMENT_ENCODER = "resnet18"
LIGHT_DECODER = (128, 64, 32, 16, 16)
# ``backbone: lite<N>`` (``architecture: unet``): keeneye's own small U-Net for line cameras at 60 fps
# on two CPU cores (docs/line-inspection.md, *The model*): four stride-2 stages of N, 2N, 4N, 8N
# channels (two 3×3 conv + batch-norm + ReLU each), a decoder back to half the input resolution
# (4N, 2N, N channels) and a 1×1 head upsampled ×2 — ~0.1 GMAC at 256² for lite8, no pretrained weights.
LITE_PREFIX = "lite"
ONE_CYCLE_WARMUP = 0.2  # share of the steps in which OneCycle raises the rate to its peak


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long job, for a progress bar: ``stage`` names it, ``done``/``total`` measure it."""

    stage: str  # load | search | train | export | calibrate | evaluate | register | done
    message: str = ""
    done: int | None = None
    total: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def _emit(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    if progress is not None:
        progress(event)


# --------------------------------------------------------------------------------------------------
# Configuration and results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one fit. ``device`` None = CUDA when available, else CPU."""

    task: Task
    num_classes: int
    in_channels: int
    backbone: str = DEFAULT_CLASSIFY_BACKBONE
    architecture: str = "unet"
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    augment_strength: float = 0.5
    patience: int = 5
    seed: int = 0
    weights: Path | None = None  # local pretrained weights; never downloaded
    device: str | None = None
    spectral_jitter: bool = False
    max_seconds: float | None = None  # stop after the epoch that crosses this budget
    # segment: score epochs on the image-level OK/DEFECT ranking (:func:`decision_metric`), what
    # an ok-defect pipeline's gates judge, instead of the per-class pixel mIoU
    image_decision: bool = False

    def to_params(self) -> dict[str, str | int | float | bool]:
        """Flat, MLflow-friendly parameters."""
        out = asdict(self)
        out["task"] = self.task.value
        out["weights"] = str(self.weights) if self.weights else ""
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    val_metric: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    model: nn.Module
    best_epoch: int
    best_val_metric: float
    history: list[EpochStats]
    seconds: float
    device: str
    stopped_early: bool


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


class _TimmKwargs(TypedDict):
    """What :func:`build_model` passes to ``timm.create_model`` besides the name and ``pretrained``."""

    num_classes: int
    in_chans: int
    pretrained_cfg_overlay: NotRequired[dict[str, str]]  # {"file": local weights}


def build_model(config: TrainConfig) -> nn.Module:
    """A classifier (timm) or a U-Net-family segmenter (smp); nothing is ever downloaded."""
    if config.task is Task.classify:
        import timm

        kwargs: _TimmKwargs = {"num_classes": config.num_classes, "in_chans": config.in_channels}
        if config.weights is not None:
            if not config.weights.is_file():
                raise KeeneyeError(
                    f"pretrained weights {config.weights} do not exist",
                    fix="point at a local .pth/.safetensors file",
                )
            kwargs["pretrained_cfg_overlay"] = {"file": str(config.weights)}
        try:
            model: nn.Module = timm.create_model(
                config.backbone, pretrained=config.weights is not None, **kwargs
            )
        except RuntimeError as exc:  # timm: unknown model name
            raise KeeneyeError(
                f"unknown classification backbone {config.backbone!r}: {exc}",
                fix="use a timm model name, e.g. resnet10t, resnet18, mobilenetv3_small_100, efficientnet_b0",
            ) from exc
        return model
    if config.backbone.startswith(LITE_PREFIX):
        return _build_lite(config)
    import segmentation_models_pytorch as smp

    archs = {
        "unet": smp.Unet,
        "unetplusplus": smp.UnetPlusPlus,
        "fpn": smp.FPN,
        "deeplabv3plus": smp.DeepLabV3Plus,
    }
    arch = archs.get(config.architecture.lower())
    if arch is None:
        raise KeeneyeError(
            f"unknown segmentation architecture {config.architecture!r}",
            fix="use one of: " + ", ".join(archs),
        )
    seg_kwargs = {}
    if arch in (smp.Unet, smp.UnetPlusPlus):
        # The full-resolution end of the decoder dominates the cost on CPU; half smp's default widths
        # train 1.5x faster at the same accuracy on these small inputs.
        seg_kwargs["decoder_channels"] = LIGHT_DECODER
    try:
        seg: nn.Module = arch(
            encoder_name=config.backbone,
            encoder_weights=None,
            in_channels=config.in_channels,
            classes=config.num_classes,
            **seg_kwargs,
        )
    except (KeyError, ValueError) as exc:
        raise KeeneyeError(
            f"unknown segmentation encoder {config.backbone!r}",
            fix="use an encoder name such as resnet18, resnet34 or mobilenet_v2",
        ) from exc
    if config.weights is not None:
        state = torch.load(config.weights, map_location="cpu", weights_only=True)
        # smp's ResNet encoders override load_state_dict and return None instead of the key lists.
        loaded = seg.encoder.load_state_dict(state, strict=False)  # type: ignore[union-attr]
        missing = list(getattr(loaded, "missing_keys", []))
        log.info("loaded encoder weights from %s (%d missing keys)", config.weights, len(missing))
    return seg


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LiteEncoder(nn.Module):
    """Stride-2 stages; returns ``[input, 1/2, 1/4, 1/8, 1/16]`` maps like an smp encoder."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        chans = (in_channels, *widths)
        self.stages = nn.ModuleList(_conv_block(a, b, 2) for a, b in itertools.pairwise(chans))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = [x]
        for stage in self.stages:
            maps.append(stage(maps[-1]))
        return maps


class LiteDecoder(nn.Module):
    """From the deepest map up to 1/2 resolution: upsample, concatenate the skip, one 3×3 conv."""

    def __init__(self, widths: tuple[int, ...], out: tuple[int, ...]) -> None:
        super().__init__()
        ups = []
        cin = widths[-1]
        for skip, cout in zip(reversed(widths[:-1]), out, strict=True):
            ups.append(
                nn.Sequential(
                    nn.Conv2d(cin + skip, cout, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )
            )
            cin = cout
        self.ups = nn.ModuleList(ups)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        x = maps[-1]
        for up, skip in zip(self.ups, reversed(maps[1:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], 1))
        return x


class LiteHead(nn.Module):
    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="bilinear", align_corners=False)


class LiteUnet(nn.Module):
    """``backbone: lite<N>``: the small U-Net described at :data:`LITE_PREFIX` (smp's attribute names,
    so export, checkpoints and fine-tuning treat it as any other segmenter)."""

    def __init__(self, in_channels: int, classes: int, base: int) -> None:
        super().__init__()
        widths = (base, 2 * base, 4 * base, 8 * base)
        out = (4 * base, 2 * base, base)
        self.encoder = LiteEncoder(in_channels, widths)
        self.decoder = LiteDecoder(widths, out)
        self.segmentation_head = LiteHead(out[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.segmentation_head(self.decoder(self.encoder(x)))
        return logits


def _build_lite(config: TrainConfig) -> nn.Module:
    width = config.backbone.removeprefix(LITE_PREFIX)
    if config.task is not Task.segment or not width.isdigit() or not 4 <= int(width) <= 64:
        raise KeeneyeError(
            f"backbone {config.backbone!r}: the lite U-Net segments, with a base width 4-64",
            fix="use e.g. backbone lite8 (line cameras at 60 fps) with task segment",
        )
    model = LiteUnet(config.in_channels, config.num_classes, int(width))
    if config.weights is not None:
        state = torch.load(config.weights, map_location="cpu", weights_only=True)
        model.encoder.load_state_dict(state, strict=False)
    return model


class WithEmbedding(nn.Module):
    """Wraps a trained model for export: returns ``(head output, pooled features)``.

    The pooled features are the drift embedding (``embedding_output`` of the manifest): the
    classifier's pre-logits vector, or the global average of the segmenter's deepest encoder map.
    The head output is computed exactly as in the wrapped model's own forward (eval mode).
    """

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m: Any = self.model
        if self.task is Task.classify:
            features = m.forward_head(m.forward_features(x), pre_logits=True)
            return m.get_classifier()(features), features.flatten(1)
        maps = m.encoder(x)
        logits = m.segmentation_head(m.decoder(maps))
        return logits, maps[-1].mean(dim=(2, 3))


# --------------------------------------------------------------------------------------------------
# Losses and metrics
# --------------------------------------------------------------------------------------------------


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor,
    foreground_weight: torch.Tensor | None = None,
    *,
    image_decision: bool = False,
) -> torch.Tensor:
    """Weighted cross-entropy + soft Dice over the foreground classes + a foreground-vs-background term.

    Defects and disease zones cover a few percent of the pixels, and plain cross-entropy would happily
    predict background everywhere. The per-class terms must also tell four defect kinds apart, which a
    model learns late; the OK/DEFECT decision only needs "anything here?". So the foreground union
    (log-odds ``logsumexp(foreground logits) − background logit``) gets its own binary cross-entropy,
    with ``foreground_weight`` as positive weight, and its own soft Dice: a short training then
    already finds every defect, even before it names the kind right.

    ``image_decision`` (OK/DEFECT pipelines) adds that question at the image level: the binary
    cross-entropy of the image's most foreground pixel (the max of the union's log-odds) against
    "the frame has a defect". Pixel terms average over ~16 k pixels, so one stray blob on an OK
    frame costs them almost nothing — yet it is a false reject, which the gates allow none of. This
    term spends a whole image's loss on it. Measured on the documented 300 frames (seed 0, lite16):
    the OK test frames' highest defect probability fell from up to 0.53 to at most 0.05.
    """
    ce = F.cross_entropy(logits, target, weight=class_weights)
    logits = logits.float()
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (probs * one_hot).sum(dims)
    denom = probs.sum(dims) + one_hot.sum(dims)
    dice = 1.0 - (2 * inter + 1.0) / (denom + 1.0)
    loss = ce + dice[1:].mean()
    if logits.shape[1] > 1:
        fg_truth = (target > 0).float()
        fg_logit = torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]
        loss = loss + F.binary_cross_entropy_with_logits(fg_logit, fg_truth, pos_weight=foreground_weight)
        fg_prob = 1.0 - probs[:, 0]
        fg_dice = 1.0 - (2 * (fg_prob * fg_truth).sum() + 1.0) / (fg_prob.sum() + fg_truth.sum() + 1.0)
        loss = loss + fg_dice
        if image_decision:
            defective = fg_truth.flatten(1).amax(dim=1)
            loss = loss + F.binary_cross_entropy_with_logits(fg_logit.flatten(1).amax(dim=1), defective)
    return loss


def macro_f1_from_labels(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Macro-F1 over the classes present in target or prediction (zero division → 0)."""
    cm = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
    tp = cm.diag().double()
    fp = cm.sum(0).double() - tp
    fn = cm.sum(1).double() - tp
    present = (cm.sum(0) + cm.sum(1)) > 0
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    return float(f1[present].mean()) if bool(present.any()) else 0.0


def foreground_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean IoU of the foreground classes present in the target (pixel level)."""
    ious = []
    for c in range(1, num_classes):
        t = target == c
        if not bool(t.any()):
            continue
        p = pred == c
        union = (p | t).sum()
        ious.append(float((p & t).sum()) / float(union))
    return float(np.mean(ious)) if ious else 0.0


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_cpu_threads() -> None:
    """Use every core, but never oversubscribe (torch's default may exceed the cgroup's quota)."""
    torch.set_num_threads(usable_cores())


def _class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(y.flatten(), minlength=num_classes).double().clamp_min(1)
    freq = counts / counts.sum()
    # Inverse square-root frequency, background pinned to 1, capped so rare classes do not dominate.
    w = (freq[0] / freq).sqrt().clamp(1.0, 20.0) if num_classes > 1 else torch.ones(1, dtype=torch.float64)
    return w.float()


def _foreground_weight(y: torch.Tensor) -> torch.Tensor:
    """Positive weight of the foreground-union term: inverse square-root frequency, 1 to 20."""
    fg = float((y > 0).sum())
    bg = float(y.numel()) - fg
    return torch.tensor(math.sqrt(bg / max(fg, 1.0))).clamp(1.0, 20.0)


@torch.no_grad()
def predict_labels(
    model: nn.Module, x: torch.Tensor, *, task: Task, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Arg-max predictions (class per image or per pixel) on CPU tensors."""
    model.eval()
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(xb)
        out.append(logits.argmax(dim=1).cpu())
    return torch.cat(out)


def image_auroc(truth: torch.Tensor, score: torch.Tensor) -> float | None:
    """Area under the ROC curve of per-image scores (ties count half); None without both classes."""
    pos, neg = score[truth], score[~truth]
    if not len(pos) or not len(neg):
        return None
    above = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return float(above.mean())


@torch.no_grad()
def decision_metric(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, device: torch.device
) -> float:
    """How well a segmenter serves an OK/DEFECT decision: image AUROC + foreground IoU (0 … 2).

    An image's score is its most probable defect pixel (the largest probability of a non-background
    class), the quantity the calibrated threshold cuts; the AUROC says whether defective frames
    outrank OK ones, which a short training reaches long before it names defect kinds, so the
    per-class mIoU sits near 0 and early stopping on it ended runs before the learning rate had
    come down. Once the ranking is right (AUROC 1 on 45 frames is common) the foreground-vs-
    background IoU keeps the choice moving toward the epochs with the cleanest masks.
    """
    model.eval()
    scores: list[torch.Tensor] = []
    inter = union = 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(xb)
        probs = logits.float().softmax(dim=1)
        scores.append(probs[:, 1:].amax(dim=(1, 2, 3)).cpu())
        said, truth = probs.argmax(dim=1) > 0, yb > 0
        inter += int((said & truth).sum())
        union += int((said | truth).sum())
    defective = (y > 0).flatten(1).any(dim=1)
    auroc = image_auroc(defective, torch.cat(scores))
    return (auroc if auroc is not None else 0.0) + inter / max(union, 1)


def validation_metric(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, device: torch.device
) -> float:
    batch_size = max(config.batch_size, 32)
    if config.task is Task.segment and config.image_decision:
        return decision_metric(model, x, y, batch_size=batch_size, device=device)
    pred = predict_labels(model, x, task=config.task, batch_size=batch_size, device=device)
    if config.task is Task.classify:
        return macro_f1_from_labels(pred, y, config.num_classes)
    return foreground_miou(pred, y, config.num_classes)


def fit(
    config: TrainConfig,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    progress: ProgressCallback | None = None,
    stage: str = "train",
) -> FitResult:
    """Train a fresh model; returns the weights of the best validation epoch (early stopping)."""
    if x_train.shape[0] < 2:
        raise KeeneyeError("need at least 2 training images", fix="add images or change the split fractions")
    set_cpu_threads()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    device = pick_device(config.device)
    amp = device.type == "cuda"
    model = build_model(config).to(device)
    n = x_train.shape[0]
    batch_size = max(2, min(config.batch_size, n))
    steps_per_epoch = max(1, n // batch_size)  # drop_last: a batch of 1 breaks batch-norm
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    total_steps = config.epochs * steps_per_epoch
    scheduler: torch.optim.lr_scheduler.LRScheduler
    settled = 0  # the epoch from which early stopping may count (see below)
    if total_steps >= 10:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=total_steps, pct_start=ONE_CYCLE_WARMUP
        )
        # While the rate is high the validation metric jumps from epoch to epoch and the best weights
        # are still to come (they come as it anneals): patience counts from the epoch where the
        # cosine decay has halved the rate. Counting from the start stopped a 30-epoch line-inspection
        # run at epoch 18 with the weights of epoch 13 (test recall 0.913, refused).
        settled = math.ceil(config.epochs * (ONE_CYCLE_WARMUP + (1 - ONE_CYCLE_WARMUP) / 2))
    else:  # OneCycle cannot split a handful of steps into warm-up and decay: keep the rate constant
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    weights = (
        _class_weights(y_train, config.num_classes).to(device) if config.task is not Task.classify else None
    )
    fg_weight = _foreground_weight(y_train).to(device) if config.task is not Task.classify else None
    has_val = x_val.shape[0] > 0

    best_state = copy.deepcopy(model.state_dict())
    best_metric, best_epoch = -math.inf, 0
    history: list[EpochStats] = []
    started = time.perf_counter()
    stopped_early = False
    _emit(progress, ProgressEvent(stage, f"training {config.backbone}", 0, config.epochs))
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            xb, yb = x_train[idx], y_train[idx]
            xb, yb = _augment(xb, yb, config, gen)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=amp):
                logits = model(xb)
                if config.task is Task.classify:
                    loss = F.cross_entropy(logits, yb, label_smoothing=0.05)
                else:
                    assert weights is not None
                    loss = segmentation_loss(
                        logits, yb, weights, fg_weight, image_decision=config.image_decision
                    )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total_loss += float(loss.detach())
        train_loss = total_loss / steps_per_epoch
        metric = validation_metric(model, x_val, y_val, config, device) if has_val else -train_loss
        stats = EpochStats(
            epoch, train_loss, metric, float(scheduler.get_last_lr()[0]), time.perf_counter() - t0
        )
        history.append(stats)
        improved = metric > best_metric + 1e-6
        if improved:
            best_metric, best_epoch = metric, epoch
            best_state = copy.deepcopy(model.state_dict())
        log.info(
            "epoch %d/%d loss=%.4f val=%.4f (%.1fs)", epoch, config.epochs, train_loss, metric, stats.seconds
        )
        _emit(
            progress,
            ProgressEvent(
                stage,
                f"epoch {epoch}/{config.epochs}",
                epoch,
                config.epochs,
                {"loss": train_loss, "val": metric, "best": best_metric},
            ),
        )
        if epoch - max(best_epoch, settled) >= config.patience:
            stopped_early = True
            log.info("early stop after epoch %d: no improvement for %d epochs", epoch, config.patience)
            break
        if config.max_seconds is not None and time.perf_counter() - started > config.max_seconds:
            stopped_early = True
            log.info("time budget of %.0fs spent after epoch %d", config.max_seconds, epoch)
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        model=model.cpu(),
        best_epoch=best_epoch,
        best_val_metric=best_metric,
        history=history,
        seconds=time.perf_counter() - started,
        device=str(device),
        stopped_early=stopped_early,
    )


def _augment(
    xb: torch.Tensor, yb: torch.Tensor, config: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    return augment_batch(
        xb,
        yb,
        strength=config.augment_strength,
        task=config.task,
        generator=gen,
        spectral=config.spectral_jitter,
    )


# --------------------------------------------------------------------------------------------------
# Hyper-parameter search
# --------------------------------------------------------------------------------------------------


class SearchParams(TypedDict):
    """The hyper-parameters :func:`search` tunes (``TrainConfig`` field names)."""

    learning_rate: float
    batch_size: int
    augment_strength: float


class TrialRecord(TypedDict):
    """One search trial: its number, parameters and validation metric (``search.json``)."""

    trial: int
    learning_rate: float
    batch_size: int
    augment_strength: float
    value: float


@dataclass(frozen=True)
class SearchResult:
    best_params: SearchParams
    best_value: float
    trials: list[TrialRecord]


def search(
    config: TrainConfig,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    trials: int,
    epochs_per_trial: int | None = None,
    progress: ProgressCallback | None = None,
) -> SearchResult:
    """Optuna TPE over learning rate, batch size and augmentation strength (seeded, so repeatable).

    Each trial is a short fit (``epochs_per_trial``, default a quarter of the recipe's epochs, at
    least 1) scored on the validation metric.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    per_trial = epochs_per_trial or max(1, config.epochs // 4)
    n = x_train.shape[0]
    sizes = [b for b in (8, 16, 32, 64) if b <= max(8, n // 2)]
    records: list[TrialRecord] = []

    def objective(trial: Any) -> float:
        params: SearchParams = {
            "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", sizes),
            "augment_strength": trial.suggest_float("augment_strength", 0.0, 1.0),
        }
        trial_config = replace(config, epochs=per_trial, patience=per_trial, **params)
        result = fit(trial_config, x_train, y_train, x_val, y_val)
        value = result.best_val_metric
        records.append({"trial": trial.number, **params, "value": value})
        _emit(
            progress,
            ProgressEvent(
                "search", f"trial {trial.number + 1}/{trials}", trial.number + 1, trials, {"val": value}
            ),
        )
        return value

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    _emit(progress, ProgressEvent("search", f"searching {trials} trials", 0, trials))
    study.optimize(objective, n_trials=trials)
    best = study.best_params  # optuna: the suggestions of the best trial, in the order suggested
    best_params: SearchParams = {
        "learning_rate": float(best["learning_rate"]),
        "batch_size": int(best["batch_size"]),
        "augment_strength": float(best["augment_strength"]),
    }
    return SearchResult(best_params=best_params, best_value=float(study.best_value), trials=records)
