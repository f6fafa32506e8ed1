"""line-inspection: synthetic product-surface frames with defect instance masks.

Surfaces per SKU — brushed metal (directional streaks), fabric (woven sinusoid), painted (smooth with
orange-peel noise) — and four defect kinds as COCO instances: ``scratch`` (thin polyline), ``dent``
(shaded ellipse), ``crack`` (branching random walk) and ``contamination`` (irregular blob of another
colour). ``defect_rate`` of the frames are defective (default 1.5 %, like a real line; use e.g. 0.5
for training sets), spread over the batches: a batch of ``m`` frames holds ``defect_rate × m`` of
them, rounded up or down at random (so the share is right on average and, once ``defect_rate × m ≥
1``, every batch — hence every split of a grouped split — has defective frames). Frames come in
batches of ``batch_size`` that share line, camera, SKU and lighting, with increasing ``captured_at`` —
so grouped and time splits have something to group by.
Lossless PNG, BGR→RGB, ``size``×``size``.

``frame_size=(width, height)`` (the CLI's ``--size 1024x768``, its default) renders what a line
camera sends instead: a JPEG (quality 90, ≈ 150 KB at 1024×768) of a part surface filling the frame —
fine-grained texture at camera scale, a lamp's gradient and vignetting, sensor noise — with defects
of **absolute** pixel sizes, not scaled with the frame: scratches 2–5 px wide and 40–300 px long,
cracks 2–3 px wide, dents of 8–30 px radius, contamination spots of 5–25 px. Same metadata, same
COCO masks (at the frame's full size).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.domain import InvalidInput
from keeneye.training.coco import CocoCategory
from keeneye.training.synth.common import (
    F32,
    U8,
    Drift,
    LineFrameMeta,
    Progress,
    SynthInfo,
    SynthResult,
    SynthWriter,
    blob_mask,
    check_params,
    child_rngs,
    encode_jpeg,
    encode_png,
    epoch_plus,
    parse_drift,
    photometric,
    prepare_out_dir,
    sensor_effects,
    smooth_noise,
    to_u8,
)

GENERATOR = "line-inspection"
DEFECTS: tuple[str, ...] = ("scratch", "dent", "crack", "contamination")
NOVEL_DEFECT = "burn"  # only with drift "new-class"
DEFAULT_DEFECT_RATE = 0.015  # a real line's share
# a training set's share (`keeneye synth`, the demo): every split of a grouped split holds defects
TRAINING_DEFECT_RATE = 0.5
Surface = Literal["brushed_metal", "fabric", "painted"]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Sku:
    code: str
    surface: Surface
    colour: tuple[float, float, float]  # BGR


SKUS: tuple[Sku, ...] = (
    Sku("MTL-1040", "brushed_metal", (160.0, 160.0, 165.0)),
    Sku("MTL-2210", "brushed_metal", (120.0, 135.0, 150.0)),
    Sku("FAB-3300", "fabric", (150.0, 110.0, 60.0)),
    Sku("FAB-3410", "fabric", (120.0, 170.0, 190.0)),
    Sku("PNT-5120", "painted", (40.0, 40.0, 170.0)),
    Sku("PNT-5300", "painted", (200.0, 200.0, 195.0)),
)
LIGHTING: dict[str, tuple[float, float, float]] = {  # BGR channel gains of the line's lamps
    "led-5000k": (1.0, 1.0, 1.0),
    "led-6500k": (1.06, 1.0, 0.94),
    "halogen-3200k": (0.88, 0.98, 1.1),
}
LINES: tuple[str, ...] = ("L1", "L2", "L3", "L4")
# A line camera's frames (``frame_size``): JPEG quality, the smallest side that renders as one.
FRAME_JPEG_QUALITY = 94
MIN_FRAME_SIDE = 128
MAX_FRAME_SIDE = 4096


def categories(include_novel: bool = False) -> list[CocoCategory]:
    cats: list[CocoCategory] = [
        {"id": i + 1, "name": name, "supercategory": "defect"} for i, name in enumerate(DEFECTS)
    ]
    if include_novel:
        cats.append({"id": len(DEFECTS) + 1, "name": NOVEL_DEFECT, "supercategory": "defect", "novel": True})
    return cats


# --------------------------------------------------------------------------------------------------
# Surfaces
# --------------------------------------------------------------------------------------------------


def render_surface(rng: np.random.Generator, sku: Sku, size: int) -> F32:
    """A defect-free surface as float32 BGR 0..255."""
    base = np.asarray(sku.colour, np.float32) * rng.uniform(0.93, 1.07)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if sku.surface == "brushed_metal":
        # Streaks: white noise smeared along the brushing direction.
        noise = rng.standard_normal((size, size)).astype(np.float32)
        streaks: npt.NDArray[Any] = cv2.blur(noise, (max(3, size // 3), 1))
        streaks = streaks / max(float(streaks.std()), 1e-6)
        lum = 14.0 * streaks + 3.0 * rng.standard_normal((size, size)).astype(np.float32)
        lum += 10.0 * np.sin(xx / size * np.pi * rng.uniform(0.5, 1.5))  # broad sheen
    elif sku.surface == "fabric":
        period = rng.uniform(4.5, 6.5) * size / 128
        f = 2 * np.pi / period
        weave = np.sin(f * xx) * np.sign(np.sin(f * yy / 2)) + np.sin(f * yy) * np.sign(np.cos(f * xx / 2))
        lum = 12.0 * weave + 5.0 * smooth_noise(rng, (size, size), size / 16)
    else:  # painted: orange peel
        lum = 4.0 * smooth_noise(rng, (size, size), 1.5 * size / 128) + 6.0 * smooth_noise(
            rng, (size, size), size / 6
        )
    return (base[None, None, :] + lum[..., None]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Defects: each draws itself into ``img`` (in place) and returns its mask
# --------------------------------------------------------------------------------------------------


def _point(rng: np.random.Generator, size: int, margin: float = 0.12) -> tuple[float, float]:
    lo, hi = margin * size, (1 - margin) * size
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _scratch(rng: np.random.Generator, img: F32, size: int) -> Mask:
    m = np.zeros((size, size), np.uint8)
    x, y = _point(rng, size)
    angle = rng.uniform(0, 2 * np.pi)
    pts = [(x, y)]
    for _ in range(int(rng.integers(1, 4))):
        angle += rng.normal(0, 0.25)
        step = rng.uniform(0.1, 0.25) * size
        x = float(np.clip(x + step * np.cos(angle), 1, size - 2))
        y = float(np.clip(y + step * np.sin(angle), 1, size - 2))
        pts.append((x, y))
    poly = np.round(np.asarray(pts)).astype(np.int32)
    cv2.polylines(m, [poly], False, 1, int(rng.integers(1, 3)))
    mask = m.astype(bool)
    # Bright (burnished) or dark, but always against the surface, so the label stays visible.
    bright = rng.random() < 0.5 if 70.0 < float(img[mask].mean()) < 150.0 else float(img[mask].mean()) <= 70.0
    img[mask] = img[mask] * 0.5 + (120.0 if bright else 0.0)
    return mask


def _dent(rng: np.random.Generator, img: F32, size: int) -> Mask:
    cx, cy = _point(rng, size)
    r = rng.uniform(4, 10) * size / 128
    m = np.zeros((size, size), np.uint8)
    axes = (max(2, round(r)), max(2, round(r * rng.uniform(0.6, 1.0))))
    cv2.ellipse(m, (round(cx), round(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    mask = m.astype(bool)
    # Shading: lit on one side, shadowed on the other, like a dimple under a directional lamp.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - cx) * np.cos(light) + (yy - cy) * np.sin(light)) / max(r, 1.0)
    img[mask] += (55.0 * ramp[mask] - 25.0)[:, None]
    return mask


def _crack(rng: np.random.Generator, img: F32, size: int) -> Mask:
    m = np.zeros((size, size), np.uint8)

    def walk(x: float, y: float, angle: float, steps: int) -> list[tuple[float, float, float]]:
        path = [(x, y, angle)]
        for _ in range(steps):
            angle += rng.normal(0, 0.35)
            x = float(np.clip(x + 1.5 * np.cos(angle), 0, size - 1))
            y = float(np.clip(y + 1.5 * np.sin(angle), 0, size - 1))
            path.append((x, y, angle))
        return path

    x, y = _point(rng, size)
    main = walk(x, y, float(rng.uniform(0, 2 * np.pi)), int(rng.integers(20, 45) * size / 128))
    paths = [main]
    if rng.random() < 0.6 and len(main) > 4:  # one branch
        bx, by, ba = main[int(rng.integers(len(main) // 4, len(main)))]
        paths.append(
            walk(bx, by, ba + float(rng.choice([-1.0, 1.0])) * rng.uniform(0.5, 1.1), len(main) // 2)
        )
    for path in paths:
        pts = np.round(np.asarray([(p[0], p[1]) for p in path])).astype(np.int32)
        cv2.polylines(m, [pts], False, 1, 1)
    mask = m.astype(bool)
    img[mask] *= 0.3
    return mask


def _contamination(rng: np.random.Generator, img: F32, size: int) -> Mask:
    mask = blob_mask(rng, (size, size), _point(rng, size), rng.uniform(4, 10) * size / 128)
    colour = np.asarray(
        [(20, 35, 55), (205, 205, 200), (30, 75, 150)][int(rng.integers(0, 3))], np.float32
    )  # oil, dust, rust
    texture = 8.0 * smooth_noise(rng, (size, size), 1.0)
    img[mask] = img[mask] * 0.15 + 0.85 * colour + texture[mask][:, None]
    return mask


def _burn(rng: np.random.Generator, img: F32, size: int) -> Mask:
    cx, cy = _point(rng, size)
    r = rng.uniform(5, 11) * size / 128
    mask = blob_mask(rng, (size, size), (cx, cy), r, roughness=0.2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.clip(np.hypot(xx - cx, yy - cy) / max(r, 1.0), 0, 1)
    scorch = np.asarray((15, 40, 70), np.float32)  # dark centre, brown rim
    k = (1.0 - 0.6 * d[mask])[:, None]
    img[mask] = img[mask] * (1 - k) + scorch * k
    return mask


_DRAW = {"scratch": _scratch, "dent": _dent, "crack": _crack, "contamination": _contamination, "burn": _burn}


def render_line_image(
    rng: np.random.Generator,
    sku: Sku,
    lighting: str,
    defects: list[str],
    size: int = 128,
    drift: Drift | None = None,
) -> tuple[U8, list[tuple[str, Mask]]]:
    """One frame: (BGR uint8, [(defect kind, visible mask)]) — later defects occlude earlier ones."""
    img = render_surface(rng, sku, size)
    instances: list[tuple[str, Mask]] = []
    for kind in defects:
        mask = _DRAW[kind](rng, img, size)
        instances = [(k, m & ~mask) for k, m in instances]
        instances.append((kind, mask))
    gain = float(rng.uniform(0.92, 1.08))
    gamma = 1.0
    cast = np.asarray(LIGHTING[lighting])
    noise, blur, resample = float(rng.uniform(1.5, 3.5)), 0.0, 1.0
    if drift is Drift.lighting:  # a lamp ageing / daylight through a window: darker, uneven, warmer
        gain *= 0.65
        gamma = 1.25
        cast = cast * np.array([0.85, 0.97, 1.12])
        yy = np.linspace(0.7, 1.15, size, dtype=np.float32)
        img = img * yy[None, :, None]
    elif drift is Drift.sensor:  # a replaced camera
        noise += 9.0
        blur = 1.1
        resample = 0.5
        cast = cast * np.array([1.12, 1.0, 0.9])
    img = photometric(img, gain=gain, gamma=gamma, channel_gains=cast.tolist())
    img = sensor_effects(img, rng, blur_sigma=blur, noise_sigma=noise, resample=resample)
    return to_u8(img), [(k, m) for k, m in instances if m.any()]


# --------------------------------------------------------------------------------------------------
# Line-camera frames (``frame_size``): camera-scale texture, lamp gradient, defects of absolute size
# --------------------------------------------------------------------------------------------------


def render_frame_surface(rng: np.random.Generator, sku: Sku, width: int, height: int) -> F32:
    """A defect-free part surface filling a ``width``×``height`` frame, float32 BGR 0..255: the same
    three surfaces as :func:`render_surface` at a camera's scale (texture a few pixels fine)."""
    shape = (height, width)
    base = np.asarray(sku.colour, np.float32) * rng.uniform(0.93, 1.07)
    if sku.surface == "brushed_metal":
        noise = rng.standard_normal(shape).astype(np.float32)
        streaks: npt.NDArray[Any] = cv2.blur(noise, (int(rng.integers(40, 120)), 1))
        streaks = streaks / max(float(streaks.std()), 1e-6)
        lum = 7.0 * streaks + 2.5 * smooth_noise(rng, shape, 0.8) + 4.0 * smooth_noise(rng, shape, 60.0)
    elif sku.surface == "fabric":
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        f = 2 * np.pi / rng.uniform(7.0, 11.0)
        weave = np.sin(f * xx) * np.sign(np.sin(f * yy / 2)) + np.sin(f * yy) * np.sign(np.cos(f * xx / 2))
        lum = 6.0 * weave + 3.0 * smooth_noise(rng, shape, 12.0)
    else:  # painted plastic: orange peel
        lum = 3.0 * smooth_noise(rng, shape, 2.5) + 4.0 * smooth_noise(rng, shape, 80.0)
    out: F32 = (base[None, None, :] + lum[..., None]).astype(np.float32)
    return out


def _lamp(rng: np.random.Generator, width: int, height: int) -> F32:
    """Multiplicative illumination: a linear gradient across the part and a vignette (0.7 … 1.1)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = (xx / width - 0.5) * 2, (yy / height - 0.5) * 2
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + rng.uniform(0.05, 0.15) * (u * np.cos(angle) + v * np.sin(angle))
    vignette = 1.0 - rng.uniform(0.08, 0.18) * (u * u + v * v) / 2
    out: F32 = (gradient * vignette).astype(np.float32)
    return out


def _spot(rng: np.random.Generator, width: int, height: int, margin: int = 40) -> tuple[float, float]:
    return float(rng.uniform(margin, width - margin)), float(rng.uniform(margin, height - margin))


def _frame_scratch(rng: np.random.Generator, img: F32) -> Mask:
    height, width = img.shape[:2]
    m = np.zeros((height, width), np.uint8)
    x, y = _spot(rng, width, height)
    angle = rng.uniform(0, 2 * np.pi)
    pts = [(x, y)]
    for _ in range(int(rng.integers(1, 4))):
        angle += rng.normal(0, 0.2)
        step = rng.uniform(40, 110)
        x = float(np.clip(x + step * np.cos(angle), 4, width - 5))
        y = float(np.clip(y + step * np.sin(angle), 4, height - 5))
        pts.append((x, y))
    cv2.polylines(m, [np.round(np.asarray(pts)).astype(np.int32)], False, 1, int(rng.integers(2, 6)))
    mask = m.astype(bool)
    mean = float(img[mask].mean())
    bright = rng.random() < 0.5 if 70.0 < mean < 150.0 else mean <= 70.0
    img[mask] = img[mask] * 0.45 + (130.0 if bright else 0.0)
    return mask


def _frame_dent(rng: np.random.Generator, img: F32) -> Mask:
    height, width = img.shape[:2]
    cx, cy = _spot(rng, width, height)
    r = rng.uniform(8, 30)
    m = np.zeros((height, width), np.uint8)
    axes = (round(r), max(4, round(r * rng.uniform(0.6, 1.0))))
    cv2.ellipse(m, (round(cx), round(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    mask = m.astype(bool)
    ys, xs = np.nonzero(mask)
    light = rng.uniform(0, 2 * np.pi)
    ramp = ((xs - cx) * np.cos(light) + (ys - cy) * np.sin(light)) / r
    img[ys, xs] += (60.0 * ramp - 30.0)[:, None].astype(np.float32)
    return mask


def _frame_crack(rng: np.random.Generator, img: F32) -> Mask:
    height, width = img.shape[:2]
    m = np.zeros((height, width), np.uint8)
    x, y = _spot(rng, width, height)
    angle = float(rng.uniform(0, 2 * np.pi))
    pts = [(x, y)]
    for _ in range(int(rng.integers(25, 60))):
        angle += rng.normal(0, 0.35)
        x = float(np.clip(x + 3.0 * np.cos(angle), 2, width - 3))
        y = float(np.clip(y + 3.0 * np.sin(angle), 2, height - 3))
        pts.append((x, y))
    cv2.polylines(m, [np.round(np.asarray(pts)).astype(np.int32)], False, 1, int(rng.integers(2, 4)))
    mask = m.astype(bool)
    img[mask] *= 0.3
    return mask


def _frame_contamination(rng: np.random.Generator, img: F32) -> Mask:
    height, width = img.shape[:2]
    cx, cy = _spot(rng, width, height)
    r = float(rng.uniform(5, 25))
    # The blob is drawn in a window around it: a full-frame noise field per spot would cost ~20 ms.
    half = int(np.ceil(2 * r)) + 4
    x0, y0 = max(0, int(cx) - half), max(0, int(cy) - half)
    x1, y1 = min(width, int(cx) + half), min(height, int(cy) + half)
    local = blob_mask(rng, (y1 - y0, x1 - x0), (cx - x0, cy - y0), r)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = local
    colour = np.asarray(
        [(20, 35, 55), (215, 215, 210), (30, 75, 150)][int(rng.integers(0, 3))], np.float32
    )  # oil, dust, rust
    img[mask] = img[mask] * 0.15 + 0.85 * colour
    return mask


def _frame_burn(rng: np.random.Generator, img: F32) -> Mask:
    height, width = img.shape[:2]
    cx, cy = _spot(rng, width, height)
    r = float(rng.uniform(10, 30))
    half = int(np.ceil(2 * r)) + 4
    x0, y0 = max(0, int(cx) - half), max(0, int(cy) - half)
    x1, y1 = min(width, int(cx) + half), min(height, int(cy) + half)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = blob_mask(rng, (y1 - y0, x1 - x0), (cx - x0, cy - y0), r, roughness=0.2)
    ys, xs = np.nonzero(mask)
    k = (1.0 - 0.6 * np.clip(np.hypot(xs - cx, ys - cy) / r, 0, 1))[:, None].astype(np.float32)
    img[ys, xs] = img[ys, xs] * (1 - k) + np.asarray((15, 40, 70), np.float32) * k
    return mask


_DRAW_FRAME = {
    "scratch": _frame_scratch,
    "dent": _frame_dent,
    "crack": _frame_crack,
    "contamination": _frame_contamination,
    "burn": _frame_burn,
}


def render_line_frame(
    rng: np.random.Generator,
    sku: Sku,
    lighting: str,
    defects: list[str],
    width: int,
    height: int,
    drift: Drift | None = None,
) -> tuple[U8, list[tuple[str, Mask]]]:
    """One line-camera frame (BGR uint8, ``height``×``width``) and its ``[(defect kind, visible mask)]``."""
    img = render_frame_surface(rng, sku, width, height)
    instances: list[tuple[str, Mask]] = []
    for kind in defects:
        mask = _DRAW_FRAME[kind](rng, img)
        instances = [(k, m & ~mask) for k, m in instances]
        instances.append((kind, mask))
    img *= _lamp(rng, width, height)[..., None]
    gain, gamma = float(rng.uniform(0.92, 1.08)), 1.0
    cast = np.asarray(LIGHTING[lighting])
    noise, blur, resample = float(rng.uniform(2.0, 3.5)), 0.4, 1.0
    if drift is Drift.lighting:
        gain *= 0.65
        gamma = 1.25
        cast = cast * np.array([0.85, 0.97, 1.12])
        img = img * np.linspace(0.7, 1.15, width, dtype=np.float32)[None, :, None]
    elif drift is Drift.sensor:
        noise += 9.0
        blur = 1.4
        resample = 0.5
        cast = cast * np.array([1.12, 1.0, 0.9])
    img = photometric(img, gain=gain, gamma=gamma, channel_gains=cast.tolist())
    img = sensor_effects(img, rng, blur_sigma=blur, noise_sigma=noise, resample=resample)
    return to_u8(img), [(k, m) for k, m in instances if m.any()]


def parse_frame_size(text: str) -> int | tuple[int, int]:
    """``"1024x768"`` → (1024, 768), a line camera's frame; ``"128"`` → 128, a small square PNG tile.

    Raises :class:`InvalidInput` naming the expected form."""
    raw = text.strip().lower().replace("×", "x")
    parts = raw.split("x")
    if not all(p.isdigit() for p in parts) or len(parts) not in (1, 2):
        raise InvalidInput(
            "bad_synth",
            f"--size {text!r} is neither WIDTHxHEIGHT nor one number",
            fix="e.g. --size 1024x768 (a camera frame, JPEG) or --size 128 (a small square PNG)",
        )
    if len(parts) == 1:
        return int(parts[0])
    width, height = int(parts[0]), int(parts[1])
    for side, name in ((width, "width"), (height, "height")):
        if not MIN_FRAME_SIDE <= side <= MAX_FRAME_SIDE:
            raise InvalidInput(
                "bad_synth",
                f"--size {text}: {name} {side} is not in {MIN_FRAME_SIDE}…{MAX_FRAME_SIDE}",
                fix="e.g. --size 1024x768",
            )
    return width, height


@dataclass(frozen=True)
class _Batch:
    """What the frames of one production batch share."""

    batch: str
    line_id: str
    camera_id: str
    sku: Sku
    lighting: str


def line_batch_size(n: int) -> int:
    """Batches so that a grouped split has about 20 groups to share out: ``n / 20``, kept in 2…50.

    Fixed batches of 50 gave 60 frames two groups (50 + 10): the grouped 70/15/15 split then had an
    empty test split. Twenty groups put about three in each of validation and test.
    """
    return max(2, min(50, n // 20))


def _spread_defects(u: npt.NDArray[np.float64], rate: float, batch_size: int) -> Mask:
    """Which frames are defective: in each batch, ``rate × len`` randomly rounded (by the batch's first
    draw), picked as the frames with the smallest draws ``u`` (uniform in [0, 1))."""
    defective = np.zeros(len(u), dtype=bool)
    for start in range(0, len(u), batch_size):
        draws = u[start : start + batch_size]
        count = min(len(draws), int(np.floor(rate * len(draws) + draws[0])))
        defective[start + np.argsort(draws, kind="stable")[:count]] = True
    return defective


def generate_line(
    out_dir: str | Path,
    n: int = 500,
    *,
    seed: int = 0,
    drift: str | Drift | None = None,
    size: int = 128,
    defect_rate: float = DEFAULT_DEFECT_RATE,
    batch_size: int = 50,
    overwrite: bool = False,
    progress: Progress | None = None,
    frame_size: tuple[int, int] | None = None,
) -> SynthResult:
    """Write ``n`` frames + COCO instance masks + per-frame line metadata to ``out_dir``.

    ``frame_size=(width, height)``: line-camera JPEG frames (module docstring) instead of ``size``²
    PNG tiles."""

    kind = parse_drift(drift)
    check_params(n, size)
    if frame_size is not None:
        parse_frame_size(f"{frame_size[0]}x{frame_size[1]}")  # the same bounds as the CLI's
    if not 0.0 <= defect_rate <= 1.0:
        raise InvalidInput("bad_synth", f"--defect-rate must be in 0…1, got {defect_rate}", fix="e.g. 0.5")
    if batch_size < 1:
        raise InvalidInput("bad_synth", f"batch size must be ≥ 1, got {batch_size}", fix="e.g. 50")
    out = prepare_out_dir(out_dir, overwrite)
    novel = kind is Drift.new_class
    writer = SynthWriter(out, categories(include_novel=novel))
    master = np.random.default_rng(seed)
    n_batches = (n + batch_size - 1) // batch_size
    batches: list[_Batch] = []
    for b in range(n_batches):
        line = LINES[int(master.integers(len(LINES)))]
        batches.append(
            _Batch(
                batch=f"B{b + 1:05d}",
                line_id=line,
                camera_id=f"cam-{line.lower()}-{int(master.integers(1, 3))}",
                sku=SKUS[int(master.integers(len(SKUS)))],
                lighting=list(LIGHTING)[int(master.integers(len(LIGHTING)))],
            )
        )
    defective = _spread_defects(master.random(n), defect_rate, batch_size)
    t = 0.0
    for i, rng in enumerate(child_rngs(seed, n)):
        batch = batches[i // batch_size]
        # Frames a fraction of a second apart, a changeover pause between batches: strictly increasing.
        t += 0.2 + float(master.random()) * 0.3 + (240.0 if i and i % batch_size == 0 else 0.0)
        kinds: list[str] = []
        if defective[i]:
            pool = (
                [*DEFECTS, NOVEL_DEFECT, NOVEL_DEFECT, NOVEL_DEFECT, NOVEL_DEFECT] if novel else list(DEFECTS)
            )
            count = 1 + int(rng.random() < 0.3) + int(rng.random() < 0.1)
            kinds = [str(rng.choice(pool)) for _ in range(count)]
        sku = batch.sku
        if frame_size is None:
            img, instances = render_line_image(rng, sku, batch.lighting, kinds, size, kind)
        else:
            img, instances = render_line_frame(rng, sku, batch.lighting, kinds, *frame_size, kind)
        meta: LineFrameMeta = {
            "line_id": batch.line_id,
            "camera_id": batch.camera_id,
            "sku": sku.code,
            "surface": sku.surface,
            "batch": batch.batch,
            "lighting": batch.lighting,
            "captured_at": epoch_plus(t),
            "defective": bool(instances),
            "defects": sorted({k for k, _ in instances}),
            "source": "synthetic",
            "drift": kind.value if kind else None,
            "novel": any(k == NOVEL_DEFECT for k, _ in instances),
        }
        if frame_size is None:
            image_id = writer.add_image(f"images/frame_{i:05d}.png", encode_png(img), size, size, meta)
        else:
            data = encode_jpeg(img, FRAME_JPEG_QUALITY)
            image_id = writer.add_image(f"images/frame_{i:05d}.jpg", data, *frame_size, meta)
        for k, m in instances:
            writer.add_instance(image_id, k, m)
        if progress is not None:
            progress(i + 1)
    info: SynthInfo = {
        "generator": GENERATOR,
        "task": "segment",
        "seed": seed,
        "drift": kind.value if kind else None,
        "size": size if frame_size is None else max(frame_size),
        "defect_rate": defect_rate,
        "batch_size": batch_size,
        "classes": list(DEFECTS),
        "novel_classes": [NOVEL_DEFECT] if novel else [],
        "format": "COCO instance masks; images/*.png (lossless RGB); frames without annotations are OK",
    }
    if frame_size is not None:
        info["format"] = (
            f"COCO instance masks; images/*.jpg (JPEG quality {FRAME_JPEG_QUALITY}, "
            f"{frame_size[0]}x{frame_size[1]}); frames without annotations are OK"
        )
        info["frame_size"] = [frame_size[0], frame_size[1]]
    return writer.finish(info)
