"""What every synthetic generator shares: drift kinds, seeding, the dataset writer, image effects.

Reproducibility: a generator draws everything from ``np.random.SeedSequence(seed)``; image ``i`` uses
the ``i``-th spawned child, so the same seed gives byte-identical files (no wall clock, no global
random state) and an image does not depend on how many came before it.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.domain import InvalidInput
from keeneye.training.coco import CocoCategory, CocoWriter
from keeneye.training.datasets import (
    ANNOTATIONS_FILE,
    DATASET_INFO_FILE,
    mask_box_xywh,
    mask_to_segmentation,
)

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
Progress = Callable[[int], None]  # called with the number of images finished so far

# Synthetic capture times start here so files never depend on the wall clock.
EPOCH = datetime(2024, 5, 6, 6, 0, 0, tzinfo=UTC)


class Drift(enum.StrEnum):
    """How a drifted data set differs from the training distribution."""

    lighting = "lighting"  # season / illumination: gain, gamma, colour temperature (crop: scale, soil)
    sensor = "sensor"  # camera change: noise, blur, per-channel response, resolution resample
    new_class = "new-class"  # a class the model never saw (flagged ``novel`` in metadata)


DRIFT_KINDS: tuple[str, ...] = tuple(d.value for d in Drift)


def parse_drift(kind: str | Drift | None) -> Drift | None:
    """``None``/``""``/``"none"`` → no drift; an unknown name → ``InvalidInput("unknown_drift")``."""
    if kind is None or isinstance(kind, Drift):
        return kind
    if kind in {"", "none"}:
        return None
    try:
        return Drift(kind)
    except ValueError:
        raise InvalidInput(
            "unknown_drift",
            f"unknown drift kind {kind!r}",
            fix="use one of: " + ", ".join(DRIFT_KINDS),
        ) from None


def check_params(n: int, size: int, *, min_size: int = 32, max_size: int = 2048) -> None:
    if n < 0:
        raise InvalidInput(
            "bad_synth", f"--n must be ≥ 0, got {n}", fix="ask for a positive number of images"
        )
    if not min_size <= size <= max_size:
        raise InvalidInput(
            "bad_synth",
            f"--size must be in {min_size}…{max_size}, got {size}",
            fix=f"e.g. --size {min_size * 4}",
        )


def child_rngs(seed: int, n: int) -> list[np.random.Generator]:
    """One independent generator per image (plus nothing shared), all from ``seed``."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def prepare_out_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Create ``out_dir/images``; refuse a folder that already holds a dataset unless ``overwrite``."""
    out = Path(out_dir)
    if (out / ANNOTATIONS_FILE).exists() or (out / "images").exists():
        if not overwrite:
            raise InvalidInput(
                "output_exists",
                f"{out} already holds a dataset",
                fix="choose an empty folder or pass --overwrite",
            )
        shutil.rmtree(out / "images", ignore_errors=True)
        for name in (ANNOTATIONS_FILE, DATASET_INFO_FILE, "metadata.jsonl"):
            (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    return out


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_plus(seconds: float) -> str:
    return iso(EPOCH + timedelta(seconds=seconds))


class SynthInfo(TypedDict):
    """``dataset.json`` of a synthetic folder, as a generator hands it to :meth:`SynthWriter.finish`
    (which adds ``n``); the keys after ``novel_classes`` belong to one generator each."""

    generator: str
    task: str
    seed: int
    drift: str | None
    size: int
    classes: list[str]
    labels: NotRequired[dict[str, str]]  # species-id
    novel_classes: list[str]
    defect_rate: NotRequired[float]  # line-inspection
    batch_size: NotRequired[int]  # line-inspection
    frame_size: NotRequired[list[int]]  # line-inspection camera frames: [width, height]
    bands: NotRequired[list[str]]  # crop-health
    epsg: NotRequired[int]  # crop-health
    gsd_m: NotRequired[float]  # crop-health
    format: NotRequired[str]


class LineFrameMeta(TypedDict):
    """Metadata of one line-inspection frame."""

    line_id: str
    camera_id: str
    sku: str
    surface: str
    batch: str
    lighting: str
    captured_at: str
    defective: bool
    defects: list[str]
    source: str
    drift: str | None
    novel: bool


class CropTileMeta(TypedDict):
    """Metadata of one crop-health tile."""

    field_id: str
    crop: str
    region: str
    flight_time: str
    captured_at: str
    tile_row: int
    tile_col: int
    epsg: int
    gsd_m: float
    geotransform: list[float]
    band_order: list[str]
    diseases: list[str]
    source: str
    drift: str | None
    novel: bool


class SpeciesPhotoMeta(TypedDict):
    """Metadata of one species-id photo: the nuisance parameters drawn while rendering, then where the
    photo sits in the data set (added by the generator)."""

    species: str
    label: str
    background: str
    angle_deg: float
    flipped: bool
    scale: float
    gain: float
    gamma: float
    blur_sigma: float
    noise_sigma: float
    captured_at: NotRequired[str]
    source: NotRequired[str]
    drift: NotRequired[str | None]
    novel: NotRequired[bool]


ImageMeta = LineFrameMeta | CropTileMeta | SpeciesPhotoMeta


class SynthResultJson(TypedDict):
    """:meth:`SynthResult.to_dict` (``keeneye synth … --json``)."""

    generator: str
    out_dir: str
    n_images: int
    n_annotations: int
    seconds: float
    images_per_second: float
    classes: list[str]
    class_counts: dict[str, int]
    drift: str | None
    seed: int


@dataclass
class SynthResult:
    """What a generator wrote."""

    generator: str
    out_dir: Path
    n_images: int
    n_annotations: int
    seconds: float
    classes: list[str]
    drift: str | None
    seed: int
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> SynthResultJson:
        return {
            "generator": self.generator,
            "out_dir": str(self.out_dir),
            "n_images": self.n_images,
            "n_annotations": self.n_annotations,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
            "classes": self.classes,
            "class_counts": self.class_counts,
            "drift": self.drift,
            "seed": self.seed,
        }


class SynthWriter:
    """Writes a synthetic dataset: the image files, ``annotations.json`` (through the one
    :class:`~keeneye.training.coco.CocoWriter`, compact), ``metadata.jsonl`` and ``dataset.json``
    (deterministic JSON: no timestamps of the run itself)."""

    def __init__(self, out_dir: Path, categories: Sequence[CocoCategory]) -> None:
        self.out_dir = out_dir
        self.coco = CocoWriter(categories)
        self._metadata: list[tuple[str, ImageMeta]] = []  # (file name, metadata) per image, in order
        self._t0 = time.perf_counter()

    def add_image(self, file_name: str, data: bytes, width: int, height: int, metadata: ImageMeta) -> int:
        """Write the image bytes and register it; returns the image id (1-based)."""
        (self.out_dir / file_name).write_bytes(data)
        self._metadata.append((file_name, metadata))
        return self.coco.add_image(file_name, width, height, metadata=metadata)

    def add_instance(self, image_id: int, category: str, mask: npt.NDArray[Any]) -> None:
        """One instance from its mask: bbox, pixel area, polygons (or RLE for thin / holed masks)."""
        area = int(np.count_nonzero(mask))
        if area == 0:
            return
        self.coco.add_annotation(
            image_id,
            self.coco.category_id(category),
            mask_box_xywh(mask),
            float(area),
            mask_to_segmentation(mask),
        )

    def finish(self, info: SynthInfo) -> SynthResult:
        coco = self.coco
        coco.write(
            self.out_dir / ANNOTATIONS_FILE,
            {"description": f"keeneye synthetic {info['generator']}", "version": "1"},
        )
        with (self.out_dir / "metadata.jsonl").open("w", encoding="utf-8") as fh:
            for file_name, metadata in self._metadata:
                fh.write(json.dumps({"file_name": file_name, **metadata}, sort_keys=True) + "\n")
        _write_json(self.out_dir / DATASET_INFO_FILE, {**info, "n": len(coco.images)}, indent=2)
        result = SynthResult(
            generator=str(info["generator"]),
            out_dir=self.out_dir,
            n_images=len(coco.images),
            n_annotations=len(coco.annotations),
            seconds=time.perf_counter() - self._t0,
            classes=list(info.get("classes", [])),
            drift=info.get("drift"),
            seed=int(info["seed"]),
            class_counts=coco.class_counts(),
        )
        log.info(
            "synthetic dataset written",
            extra={"generator": result.generator, "out_dir": str(self.out_dir), "n_images": result.n_images},
        )
        return result


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Encoding and photometric effects on uint8 BGR images
# --------------------------------------------------------------------------------------------------


def encode_jpeg(img: U8, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 array
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf.tobytes())


def encode_png(img: U8) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return bytes(buf.tobytes())


def to_u8(img: npt.NDArray[Any]) -> U8:
    out: U8 = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def photometric(
    img: npt.NDArray[Any],
    *,
    gain: float = 1.0,
    gamma: float = 1.0,
    channel_gains: Sequence[float] = (1.0, 1.0, 1.0),
    offset: float = 0.0,
) -> F32:
    """Lighting in linear-ish terms: per-channel gain (colour cast / temperature), gamma, offset."""
    x: npt.NDArray[Any] = np.asarray(img, dtype=np.float32) / 255.0
    x = np.clip(x * np.asarray(channel_gains, dtype=np.float32) * gain + offset / 255.0, 0.0, 1.0)
    if gamma != 1.0:
        x = x**gamma
    out: F32 = (x * 255.0).astype(np.float32)
    return out


def sensor_effects(
    img: npt.NDArray[Any],
    rng: np.random.Generator,
    *,
    blur_sigma: float = 0.0,
    noise_sigma: float = 0.0,
    resample: float = 1.0,
) -> F32:
    """Optics and sensor: Gaussian blur, down/up resample (lost resolution), additive Gaussian noise."""
    x: npt.NDArray[Any] = np.asarray(img, dtype=np.float32)
    h, w = x.shape[:2]
    if resample < 1.0:
        small = cv2.resize(
            x, (max(1, int(w * resample)), max(1, int(h * resample))), interpolation=cv2.INTER_AREA
        )
        x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if blur_sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), blur_sigma)
    if noise_sigma > 0:
        x = x + rng.normal(0.0, noise_sigma, size=x.shape).astype(np.float32)
    out: F32 = x.astype(np.float32)
    return out


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> F32:
    """Gaussian-blurred white noise rescaled to zero mean, unit std (low-frequency texture)."""
    n: npt.NDArray[Any] = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    std = float(n.std())
    out: F32 = ((n - n.mean()) / (std if std > 1e-8 else 1.0)).astype(np.float32)
    return out


def blob_mask(
    rng: np.random.Generator,
    shape: tuple[int, int],
    center: tuple[float, float],
    radius: float,
    roughness: float = 0.35,
) -> npt.NDArray[np.bool_]:
    """An irregular blob: an ellipse whose boundary is perturbed by smooth noise."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ax = radius * rng.uniform(0.7, 1.3)
    ay = radius * rng.uniform(0.6, 1.1)
    dx, dy = xx - center[0], yy - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / ax
    v = (-dx * s + dy * c) / ay
    r = np.sqrt(u * u + v * v)
    noise = smooth_noise(rng, shape, max(1.0, radius / 3.0))
    return np.asarray(r + roughness * noise < 1.0, dtype=np.bool_)
