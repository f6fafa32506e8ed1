"""Image → model input tensor, and model-space geometry → original image (pure numpy / OpenCV).

:func:`prepare_input` does, in this order: pick the bands the model names (computing spectral indices on
the fly), resize (stretch, or letterbox keeping the aspect ratio), convert to float32 and apply
``scale``, normalise by ``mean`` / ``std``, lay out as CHW or HWC and cast to the model dtype.

Copies, on purpose and only these: the resize writes a new (smaller, usually) array in the source dtype;
the float32 tensor is allocated once in its final layout and every band is converted *into* it (dtype
conversion and scale fused in one pass); a float16 / uint8 model costs one more cast. No
transpose-then-copy: NCHW tensors are built channel by channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from keeneye.domain import InvalidInput
from keeneye.imaging.decode import Image, PixelArray, canonical_band_name
from keeneye.imaging.spectral import SPECTRAL_INDICES, normalized_difference

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

# Raw-range scale per source dtype when the spec leaves ``scale`` unset (→ 0..1).
_UNIT_SCALE: Final[dict[str, float]] = {"uint8": 1 / 255, "uint16": 1 / 65535, "float32": 1.0}
# Same for uint8 models, which take 0..255 values.
_BYTE_SCALE: Final[dict[str, float]] = {"uint8": 1.0, "uint16": 255 / 65535, "float32": 255.0}
_GRAY_SUBSTITUTES: Final = frozenset({"red", "green", "blue"})


class InputSpec(BaseModel):
    """How an image becomes the model's input tensor (the ``input`` section of a model manifest).

    Defined here, beside the code that applies it, so imaging needs nothing from ``keeneye.models``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="ONNX input name; the first input when omitted")
    width: int = Field(..., gt=0)
    height: int = Field(..., gt=0)
    channels: list[str] = Field(
        default_factory=lambda: ["red", "green", "blue"],
        description="band names in model order; may include spectral indices (ndvi, ndre, gndvi)",
    )
    dtype: Literal["float32", "float16", "uint8"] = "float32"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    resize: Literal["stretch", "letterbox"] = "stretch"
    pad_value: float = Field(114.0, description="letterbox padding, in input units before scaling")
    scale: float | None = Field(
        None,
        description="multiply raw values by this first; None = 1/255 for uint8, 1/65535 for uint16, 1 else",
    )
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _check_norm(self) -> InputSpec:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.channels):
                raise ValueError(f"{name} has {len(values)} values for {len(self.channels)} channels")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


_BAND_FIX: Final = (
    "set the camera's band_map in the pipeline spec so the bands are named, or send those bands"
)


@dataclass(frozen=True)
class Transform:
    """How original-image pixel coordinates became input-tensor coordinates, and back.

    ``x_input = x_original * scale_x + pad_left`` (likewise y); for letterbox ``scale_x ≈ scale_y``
    and the image occupies ``resized_width × resized_height`` at (``pad_left``, ``pad_top``).
    """

    original_height: int
    original_width: int
    input_height: int
    input_width: int
    resized_height: int
    resized_width: int
    pad_top: int
    pad_left: int

    @property
    def scale_x(self) -> float:
        return self.resized_width / self.original_width

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.original_height

    @classmethod
    def fit(cls, height: int, width: int, spec: InputSpec) -> Transform:
        """The geometry that puts an ``height × width`` image into the spec's input size."""
        if spec.resize == "stretch":
            new_h, new_w = spec.height, spec.width
        else:
            ratio = min(spec.width / width, spec.height / height)
            new_w = min(spec.width, max(1, round(width * ratio)))
            new_h = min(spec.height, max(1, round(height * ratio)))
        return cls(
            original_height=height,
            original_width=width,
            input_height=spec.height,
            input_width=spec.width,
            resized_height=new_h,
            resized_width=new_w,
            pad_top=(spec.height - new_h) // 2,
            pad_left=(spec.width - new_w) // 2,
        )

    def points_to_original(self, points_xy: npt.ArrayLike) -> FloatArray:
        """(N, 2) input-space ``x, y`` → original pixel coordinates, clipped to the image."""
        pts = np.asarray(points_xy, dtype=np.float32).reshape(-1, 2)
        out = np.empty_like(pts)
        out[:, 0] = np.clip((pts[:, 0] - self.pad_left) / self.scale_x, 0, self.original_width)
        out[:, 1] = np.clip((pts[:, 1] - self.pad_top) / self.scale_y, 0, self.original_height)
        return out

    def boxes_to_original(self, boxes_xyxy: npt.ArrayLike) -> FloatArray:
        """(N, 4) input-space ``x1, y1, x2, y2`` → original pixel coordinates, clipped to the image."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        return self.points_to_original(boxes.reshape(-1, 2)).reshape(-1, 4)

    def mask_to_original(self, mask: npt.NDArray[Any], *, threshold: float = 0.5) -> BoolArray:
        """An input-space mask (H, W) or stack (N, H, W) → bool mask(s) of the original size.

        The mask may be coarser than the input (e.g. YOLO prototypes at 1/4 size): the letterbox
        padding is cut at the matching scale, then the rest resized with nearest neighbour. Float masks
        are thresholded first (``> threshold``), integer masks taken as ``!= 0``.
        """
        if mask.ndim == 3:
            out = np.empty((mask.shape[0], self.original_height, self.original_width), dtype=np.bool_)
            for k in range(mask.shape[0]):
                out[k] = self.mask_to_original(mask[k], threshold=threshold)
            return out
        if mask.ndim != 2:
            raise ValueError(f"mask must be (H, W) or (N, H, W), got shape {mask.shape}")
        binary = mask > threshold if np.issubdtype(mask.dtype, np.floating) else mask != 0
        fy = mask.shape[0] / self.input_height
        fx = mask.shape[1] / self.input_width
        top, left = round(self.pad_top * fy), round(self.pad_left * fx)
        bottom = max(top + 1, round((self.pad_top + self.resized_height) * fy))
        right = max(left + 1, round((self.pad_left + self.resized_width) * fx))
        content = binary[top:bottom, left:right].view(np.uint8)  # bool → uint8 without a copy
        # INTER_NEAREST_EXACT samples pixel centres (INTER_NEAREST is off by half a pixel).
        resized = cv2.resize(
            content, (self.original_width, self.original_height), interpolation=cv2.INTER_NEAREST_EXACT
        )
        return resized.view(np.bool_)


def resize_pixels(
    pixels: PixelArray, width: int, height: int, interpolation: int = cv2.INTER_LINEAR
) -> PixelArray:
    """Resize (H, W, C) pixels in their own dtype; always returns (height, width, C).

    Contiguous pixels with ≤ 4 bands go through one OpenCV call. A band-first (planar TIFF) view is
    resized band by band so its bands are read in place instead of OpenCV copying the whole image to
    interleave it; so are images with more than 4 bands, which some OpenCV kernels (INTER_AREA) refuse.
    """
    channels = pixels.shape[2]
    if pixels.flags.c_contiguous and channels <= 4:
        resized: PixelArray = cv2.resize(pixels, (width, height), interpolation=interpolation)
        return resized.reshape(height, width, channels)  # OpenCV drops a single channel axis
    out = np.empty((height, width, channels), dtype=pixels.dtype)
    for c in range(channels):
        out[:, :, c] = cv2.resize(pixels[:, :, c], (width, height), interpolation=interpolation)
    return out


def default_scale(dtype: np.dtype[Any], spec: InputSpec) -> float:
    """``spec.scale``, or the factor mapping the source range onto 0..1 (0..255 for uint8 models)."""
    if spec.scale is not None:
        return spec.scale
    table = _BYTE_SCALE if spec.dtype == "uint8" else _UNIT_SCALE
    return table[np.dtype(dtype).name]


def _plan_channels(image: Image, channels: Sequence[str]) -> list[tuple[str, tuple[int, ...]]]:
    """Per model channel: ("band", (i,)) or (index name, (i_a, i_b)) into ``image.pixels``."""
    plan: list[tuple[str, tuple[int, ...]]] = []
    gray_only = image.bands == ("gray",)
    for requested in channels:
        name = canonical_band_name(requested)
        if image.has_band(name):
            plan.append(("band", (image.band_position(name),)))
        elif name in SPECTRAL_INDICES:
            a, b = SPECTRAL_INDICES[name]
            if not (image.has_band(a) and image.has_band(b)):
                raise InvalidInput(
                    "wrong_band_count",
                    f"the model needs {name}, computed from bands {a} and {b}; "
                    f"the image has {', '.join(image.bands)}",
                    fix=_BAND_FIX,
                )
            plan.append((name, (image.band_position(a), image.band_position(b))))
        elif gray_only and name in _GRAY_SUBSTITUTES:
            plan.append(("band", (0,)))  # a grayscale photo feeds an RGB model as gray, gray, gray
        else:
            raise InvalidInput(
                "wrong_band_count",
                f"the model needs band {requested!r}; the image has {', '.join(image.bands)}",
                fix=_BAND_FIX,
            )
    return plan


def prepare_input(image: Image, spec: InputSpec) -> tuple[npt.NDArray[Any], Transform]:
    """The model input tensor for one image (no batch axis) and the geometry to map outputs back.

    Raw bands are multiplied by ``scale`` (default by source dtype); spectral-index channels are already
    unitless (−1..1) and are not scaled. Letterbox padding is ``pad_value`` in raw units (so
    ``pad_value × scale`` after scaling) for bands and 0 for index channels; ``mean`` / ``std`` then apply
    to every pixel, padding included — the same arithmetic training used.
    """
    plan = _plan_channels(image, spec.channels)
    # The geometry of the stored image (outputs map back to it), whatever size it was decoded at.
    transform = Transform.fit(image.full_height, image.full_width, spec)
    scale = np.float32(default_scale(image.dtype, spec))

    # Only the bands the model uses are resized; all of them in one OpenCV call when that is all bands.
    used = sorted({i for _, idx in plan for i in idx})
    size = (transform.resized_width, transform.resized_height)
    sources: dict[int, PixelArray]
    if size == (image.width, image.height):
        sources = {i: image.pixels[:, :, i] for i in used}  # views, no copy
    elif len(used) == len(image.bands):
        resized = resize_pixels(image.pixels, *size)
        sources = {i: resized[:, :, i] for i in used}
    else:
        sources = {i: cv2.resize(image.pixels[:, :, i], size, interpolation=cv2.INTER_LINEAR) for i in used}

    chw = spec.layout == "NCHW"
    n_ch = len(plan)
    shape = (n_ch, spec.height, spec.width) if chw else (spec.height, spec.width, n_ch)
    tensor = np.empty(shape, dtype=np.float32)
    t, lft = transform.pad_top, transform.pad_left
    b, r = t + transform.resized_height, lft + transform.resized_width
    padded = (transform.resized_height, transform.resized_width) != (spec.height, spec.width)

    for c, (kind, idx) in enumerate(plan):
        plane = tensor[c] if chw else tensor[:, :, c]
        content = plane[t:b, lft:r]
        if kind == "band":
            # uint8/uint16 → float32 and × scale in one pass, written straight into the tensor.
            np.multiply(sources[idx[0]], scale, out=content, dtype=np.float32, casting="unsafe")
            pad = float(spec.pad_value) * float(scale)
        else:
            normalized_difference(sources[idx[0]], sources[idx[1]], out=content)
            pad = 0.0
        if padded:  # letterbox pads one axis only; fill just the borders
            plane[:t, :] = pad
            plane[b:, :] = pad
            plane[t:b, :lft] = pad
            plane[t:b, r:] = pad

    if spec.mean is not None:
        mean = np.asarray(spec.mean, dtype=np.float32)
        tensor -= mean[:, None, None] if chw else mean
    if spec.std is not None:
        std = np.asarray(spec.std, dtype=np.float32)
        tensor /= std[:, None, None] if chw else std

    if spec.dtype == "float16":
        return tensor.astype(np.float16), transform
    if spec.dtype == "uint8":
        np.rint(tensor, out=tensor)
        np.clip(tensor, 0, 255, out=tensor)
        return tensor.astype(np.uint8), transform
    return tensor, transform


def batch(tensors: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """Stack per-image tensors into one (N, …) batch; they must share shape and dtype (one copy)."""
    if not tensors:
        raise ValueError("cannot batch zero tensors")
    first = tensors[0]
    for k, t in enumerate(tensors[1:], start=1):
        if t.shape != first.shape or t.dtype != first.dtype:
            raise ValueError(f"tensor {k} is {t.shape} {t.dtype}, tensor 0 is {first.shape} {first.dtype}")
    return np.stack(tensors)
