"""Dataset images → model tensors for training, with the exact preprocessing serving uses.

Every image goes through :func:`keeneye.imaging.prepare_input` with the :class:`InputSpec` that is
written into the exported bundle, so the exported model sees at serving time the very tensors it was
trained on (same resize, scale, spectral indices and normalisation). The synthetic sets are small, so
the prepared tensors are cached in memory once and augmented per batch on the training device
(:func:`augment_batch`), which is far cheaper on two CPU cores than per-sample Python transforms.

Targets: a class index per image (classification) or a per-pixel class map in input geometry
(segmentation; 0 = background, category *k* of the dataset = ``k``-th foreground class).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.domain import InvalidInput, Task
from keeneye.imaging import Image, InputSpec, Transform, decode_image, prepare_input
from keeneye.models.manifest import ClassInfo
from keeneye.pipelines import PipelineSpec
from keeneye.training.datasets import Dataset, DatasetImage

if TYPE_CHECKING:  # torch is imported where it is used: evaluation and serving-side helpers need no torch
    import torch

log = logging.getLogger(__name__)

BACKGROUND = "background"
RGB_CHANNELS = ("red", "green", "blue")
# Segmentation encoders halve the resolution five times: inputs must be multiples of 32.
SEGMENT_MULTIPLE = 32


# --------------------------------------------------------------------------------------------------
# Classes and input spec
# --------------------------------------------------------------------------------------------------


def model_classes(dataset: Dataset, task: Task) -> list[ClassInfo]:
    """Manifest classes: the categories (by id) for classification, ``background`` + categories for
    segmentation (channel 0 of the seg-logits means "nothing here")."""
    cats = sorted(dataset.categories, key=lambda c: c.id)
    infos: list[ClassInfo] = []
    if task is not Task.classify:
        infos.append(ClassInfo(id=0, name=BACKGROUND, label="Background"))
    for c in cats:
        label = str(c.extra.get("label", "")) if isinstance(c.extra, Mapping) else ""
        infos.append(ClassInfo(id=len(infos), name=c.name, label=label))
    return infos


def category_to_class(dataset: Dataset, task: Task) -> dict[int, int]:
    """Dataset category id → model class index."""
    offset = 0 if task is Task.classify else 1
    return {c.id: i + offset for i, c in enumerate(sorted(dataset.categories, key=lambda c: c.id))}


def band_map_for(spec: PipelineSpec, metadata: Mapping[str, Any]) -> list[str] | None:
    """The band names of one file, in file order.

    The image's own ``band_order`` metadata (written by the synthetic generator and by exporters that
    know their camera) wins, then the spec's per-camera map (``metadata.camera``), then ``band_map``.
    """
    order = metadata.get("band_order")
    if isinstance(order, list | tuple) and order and all(isinstance(b, str) for b in order):
        return [str(b) for b in order]
    camera = metadata.get("camera")
    if isinstance(camera, str) and camera in spec.input.band_map_by_camera:
        return list(spec.input.band_map_by_camera[camera])
    return list(spec.input.band_map) if spec.input.band_map is not None else None


def model_channels(spec: PipelineSpec, band_names: Sequence[str] | None) -> list[str]:
    """Model input channels: the image's bands (RGB for photos) + the spectral indices the spec asks for."""
    bands = list(band_names) if band_names else list(RGB_CHANNELS)
    return [*bands, *spec.input.indices]


def input_size(task: Task, image_size: int) -> int:
    """The square input side: segmentation rounds up to a multiple of 32 (the encoder's stride)."""
    if task is Task.classify:
        return image_size
    return -(-image_size // SEGMENT_MULTIPLE) * SEGMENT_MULTIPLE


def base_input_spec(channels: Sequence[str], size: int) -> InputSpec:
    """The spec before normalisation statistics are known (stretch resize, float32 NCHW)."""
    return InputSpec(name="input", width=size, height=size, channels=list(channels))


def with_normalisation(spec: InputSpec, mean: Sequence[float], std: Sequence[float]) -> InputSpec:
    return spec.model_copy(update={"mean": [float(m) for m in mean], "std": [float(s) for s in std]})


# --------------------------------------------------------------------------------------------------
# Decoding and tensors
# --------------------------------------------------------------------------------------------------


def load_image(image: DatasetImage, spec: PipelineSpec, max_pixels: int) -> Image:
    """Decode a dataset image as serving would, naming its bands by :func:`band_map_for`."""
    return decode_image(
        image.path.read_bytes(),
        band_map=band_map_for(spec, image.metadata),
        max_pixels=spec.input.max_pixels or max_pixels,
    )


def class_map(
    image: DatasetImage, mapping: Mapping[int, int], height: int, width: int
) -> npt.NDArray[np.int64]:
    """Per-pixel class index at the original size; later annotations paint over earlier ones."""
    out = np.zeros((height, width), dtype=np.int64)
    for ann in image.annotations:
        cls = mapping.get(ann.category_id)
        if cls is None:
            continue
        out[ann.mask(height, width)] = cls
    return out


def target_to_input(target: npt.NDArray[np.int64], transform: Transform) -> npt.NDArray[np.int64]:
    """An original-size class map in the model-input geometry (nearest neighbour, letterbox padding
    as background) — the inverse of what ``Transform.mask_to_original`` does at serving time."""
    resized = cv2.resize(
        target.astype(np.uint8),
        (transform.resized_width, transform.resized_height),
        interpolation=cv2.INTER_NEAREST_EXACT,
    )
    out = np.zeros((transform.input_height, transform.input_width), dtype=np.int64)
    t, left = transform.pad_top, transform.pad_left
    out[t : t + transform.resized_height, left : left + transform.resized_width] = resized
    return out


@dataclass
class PreparedImages:
    """Tensors of a list of dataset images: ``x`` (N, C, H, W) float32; ``y`` (N,) or (N, H, W) int64."""

    x: torch.Tensor
    y: torch.Tensor
    images: list[DatasetImage]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def prepare_images(
    images: Sequence[DatasetImage],
    spec: PipelineSpec,
    input_spec: InputSpec,
    mapping: Mapping[int, int],
    task: Task,
    *,
    max_pixels: int,
    on_image: Callable[[int], None] | None = None,
) -> PreparedImages:
    """Decode and prepare every image once; unlabelled classification images are left out."""
    import torch

    xs: list[npt.NDArray[np.float32]] = []
    ys: list[Any] = []
    kept: list[DatasetImage] = []
    for k, im in enumerate(images):
        if task is Task.classify:
            labels = [mapping[a.category_id] for a in im.annotations if a.category_id in mapping]
            if not labels:
                log.warning("skipping unlabelled image %s", im.file_name)
                continue
        decoded = load_image(im, spec, max_pixels)
        tensor, transform = prepare_input(decoded, input_spec)
        xs.append(np.asarray(tensor, dtype=np.float32))
        if task is Task.classify:
            ys.append(labels[0])
        else:
            ys.append(target_to_input(class_map(im, mapping, decoded.height, decoded.width), transform))
        kept.append(im)
        if on_image is not None:
            on_image(k + 1)
    if not xs:
        raise InvalidInput("bad_dataset", "no usable images to train on", fix="label the images or add more")
    x = torch.from_numpy(np.stack(xs))
    y = torch.as_tensor(np.asarray(ys), dtype=torch.int64)
    return PreparedImages(x=x, y=y, images=kept)


def channel_statistics(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) tensors (std floored so flat bands do not explode)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-3)
    return [float(v) for v in mean], [float(v) for v in std]


def normalise(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Apply ``spec.mean`` / ``spec.std`` to tensors prepared without them, with prepare_input's
    float32 arithmetic (subtract, then divide), so the result is bit-identical."""
    import torch

    out = x.clone()
    if spec.mean is not None:
        out -= torch.tensor(spec.mean, dtype=torch.float32)[None, :, None, None]
    if spec.std is not None:
        out /= torch.tensor(spec.std, dtype=torch.float32)[None, :, None, None]
    return out


class TensorImageDataset:
    """A map-style torch dataset over prepared tensors (``DataLoader`` needs only ``__len__`` and
    ``__getitem__``; augmentation happens per batch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} inputs but {y.shape[0]} targets")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


# --------------------------------------------------------------------------------------------------
# Augmentation on batches of normalised tensors
# --------------------------------------------------------------------------------------------------


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    strength: float,
    task: Task,
    generator: torch.Generator | None = None,
    spectral: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips / 90° rotations (segmentation also flips vertically and rotates, as zones and defects
    have no "up"), brightness/contrast, Gaussian noise and — for multispectral inputs — per-band gain
    jitter. Works in normalised units, so ``strength`` 0…1 means the same for every pipeline."""
    import torch

    if strength <= 0:
        return x, y
    n = x.shape[0]
    dev = x.device

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=generator).lt(p).to(dev)

    x = x.clone()
    y = y.clone()
    seg = task is not Task.classify
    flip_h = coin(0.5)
    x[flip_h] = x[flip_h].flip(-1)
    if seg:
        y[flip_h] = y[flip_h].flip(-1)
        flip_v = coin(0.5)
        x[flip_v] = x[flip_v].flip(-2)
        y[flip_v] = y[flip_v].flip(-2)
        if x.shape[-1] == x.shape[-2]:
            rot = coin(0.5)
            x[rot] = x[rot].transpose(-1, -2)
            y[rot] = y[rot].transpose(-1, -2)
    else:
        # Small random translations (circular shift by up to 1/8 of the side) for the classifier.
        max_shift = max(1, int(x.shape[-1] * 0.125 * strength))
        shifts = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)
        x = torch.roll(x, shifts=(int(shifts[0]), int(shifts[1])), dims=(-2, -1))
    gain = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.4 * strength
    bias = torch.randn(n, 1, 1, 1, generator=generator) * 0.15 * strength
    x = x * gain.to(dev) + bias.to(dev)
    if spectral:
        band_gain = 1.0 + (torch.rand(n, x.shape[1], 1, 1, generator=generator) - 0.5) * 0.2 * strength
        x = x * band_gain.to(dev)
    noise = torch.randn(x.shape, generator=generator) * 0.05 * strength
    x = x + noise.to(dev)
    return x, y
