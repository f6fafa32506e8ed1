"""species-id: synthetic fish photos for whole-image classification.

Five species differ in what a small CNN can learn from scratch — body shape (aspect, tail, fins),
colour and pattern (spots, bars, plain, gradient) — while every image varies in what it must ignore:
background (water gradient, noise texture, gravel), pose (rotation, flip), scale, position, lighting
(gain, gamma, colour cast), blur and sensor noise. One COCO annotation per image: the fish's box and
outline; the category is the classification label. JPEG (quality 90), ``size``×``size`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.training.coco import CocoCategory
from keeneye.training.synth.common import (
    F32,
    U8,
    Drift,
    Progress,
    SpeciesPhotoMeta,
    SynthResult,
    SynthWriter,
    check_params,
    child_rngs,
    encode_jpeg,
    epoch_plus,
    parse_drift,
    photometric,
    prepare_out_dir,
    sensor_effects,
    smooth_noise,
    to_u8,
)

GENERATOR = "species-id"
Pattern = Literal["spots", "bars", "plain", "gradient", "mottled"]
Tail = Literal["fork", "square", "round"]
Dorsal = Literal["normal", "spiny", "back", "long"]
BGR = tuple[int, int, int]


@dataclass(frozen=True)
class Species:
    name: str
    label: str
    aspect: float  # body length / body height
    tail: Tail
    dorsal: Dorsal
    back: BGR  # colours are OpenCV BGR
    belly: BGR
    fins: BGR
    pattern: Pattern
    mark: BGR  # colour of spots / bars / blotches


SPECIES: tuple[Species, ...] = (
    Species("salmo_trutta", "Brown trout", 3.6, "square", "normal",
            (40, 95, 140), (120, 200, 230), (50, 100, 140), "spots", (25, 25, 60)),
    Species("esox_lucius", "Northern pike", 6.0, "round", "back",
            (50, 110, 55), (160, 215, 220), (60, 120, 90), "spots", (150, 225, 210)),
    Species("perca_fluviatilis", "European perch", 3.0, "fork", "spiny",
            (40, 165, 150), (200, 235, 235), (30, 80, 215), "bars", (25, 55, 35)),
    Species("sander_lucioperca", "Zander", 4.6, "fork", "spiny",
            (95, 85, 75), (225, 225, 220), (130, 120, 110), "gradient", (60, 55, 50)),
    Species("abramis_brama", "Common bream", 2.1, "fork", "long",
            (110, 140, 160), (190, 205, 215), (90, 100, 110), "plain", (110, 140, 160)),
)  # fmt: skip

# Only ever drawn for drift kind "new-class": a species the model has never seen.
NOVEL_SPECIES = Species(
    "silurus_glanis", "Wels catfish", 7.0, "round", "normal", (45, 50, 55), (150, 160, 170), (40, 45, 50),
    "mottled", (20, 25, 25),
)  # fmt: skip
NOVEL_FRACTION = 0.3


def categories(include_novel: bool = False) -> list[CocoCategory]:
    species = [*SPECIES, NOVEL_SPECIES] if include_novel else list(SPECIES)
    cats: list[CocoCategory] = []
    for i, s in enumerate(species):
        cat: CocoCategory = {"id": i + 1, "name": s.name, "supercategory": "fish", "label": s.label}
        if s is NOVEL_SPECIES:
            cat["novel"] = True
        cats.append(cat)
    return cats


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, colour: BGR, amount: float = 0.08) -> np.ndarray[Any, Any]:
    return np.asarray(colour, dtype=np.float32) * rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> tuple[F32, str]:
    kind = str(rng.choice(["water", "texture", "gravel"]))
    yy = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    img: npt.NDArray[Any]
    if kind == "water":
        top = rng.uniform([90, 100, 20], [190, 170, 90])
        bottom = rng.uniform([40, 60, 10], [130, 120, 60])
        img = top * (1 - yy) + bottom * yy + np.zeros((size, size, 3), np.float32)
        img += 12.0 * smooth_noise(rng, (size, size), size / 16)[..., None]
    elif kind == "texture":
        base = rng.uniform(70, 170) * rng.uniform(0.8, 1.2, 3)
        img = np.broadcast_to(base, (size, size, 3)).astype(np.float32).copy()
        img += rng.uniform(10, 25) * smooth_noise(rng, (size, size), rng.uniform(1.5, 5.0))[..., None]
        img += rng.uniform(-8, 8, 3) * smooth_noise(rng, (size, size), size / 8)[..., None]
    else:  # gravel
        grey = float(rng.uniform(70, 140))
        img = np.full((size, size, 3), grey, np.float32) * rng.uniform(0.9, 1.1, 3)
        for _ in range(int(size * size / 220)):
            c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            axes = (int(rng.integers(2, max(3, size // 18))), int(rng.integers(2, max(3, size // 24))))
            shade = (grey * rng.uniform(0.6, 1.4)) * rng.uniform(0.9, 1.1, 3)
            cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, shade.tolist(), -1, cv2.LINE_AA)
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
    return img.astype(np.float32), kind


def _poly(canvas: np.ndarray[Any, Any], pts: Any, value: float, line_type: int = cv2.LINE_8) -> None:
    """Fill a polygon given in float pixel coordinates (4 bits of sub-pixel precision)."""
    cv2.fillPoly(
        canvas, [np.round(np.asarray(pts, dtype=np.float64) * 16).astype(np.int32)], value, line_type, shift=4
    )


def _body_polygon(cx: float, cy: float, length: float, height: float, n: int = 24) -> np.ndarray[Any, Any]:
    """Fish body facing +x: blunt head, widest a third from the head, tapering to the peduncle."""
    t = np.linspace(-1.0, 1.0, n)
    half = 0.5 * height * np.sqrt(np.clip(1 - t**2, 0, 1)) * (0.55 + 0.45 * (t + 1) / 2) ** 0.6
    half = np.maximum(half, 0.08 * height)
    x = cx + 0.5 * length * t
    upper = np.stack([x, cy - half], axis=1)
    lower = np.stack([x[::-1], cy + half[::-1]], axis=1)
    return np.concatenate([upper, lower]).astype(np.float32)


def _draw_fish(rng: np.random.Generator, sp: Species, canvas: int) -> tuple[F32, F32]:
    """Render one fish on a transparent ``canvas``² sprite: (BGR float32, alpha float32 0..1)."""
    s = canvas / 128.0  # sizes below are designed for 128 px
    colour: npt.NDArray[Any] = np.zeros((canvas, canvas, 3), np.float32)
    body = np.zeros((canvas, canvas), np.uint8)
    fins = np.zeros((canvas, canvas), np.uint8)
    length = canvas * rng.uniform(0.58, 0.66)
    height = min(length / (sp.aspect * rng.uniform(0.92, 1.08)), canvas * 0.42)
    cx, cy = canvas * 0.54, canvas * 0.5
    poly = _body_polygon(cx, cy, length, height)
    _poly(body, poly, 1)

    # Tail at the left end of the body.
    x0 = cx - 0.5 * length + 2 * s
    tl = length * 0.2
    span = min(height * 0.95, canvas * 0.3)
    if sp.tail == "fork":
        tail = [(x0, cy - 0.1 * height), (x0 - tl, cy - span / 2), (x0 - 0.55 * tl, cy)]
        tail += [(x0 - tl, cy + span / 2), (x0, cy + 0.1 * height)]
    elif sp.tail == "square":
        tail = [(x0, cy - 0.1 * height), (x0 - tl, cy - 0.42 * span)]
        tail += [(x0 - tl, cy + 0.42 * span), (x0, cy + 0.1 * height)]
    else:  # round fan
        a = np.linspace(-0.9, 0.9, 9)
        fan = [(x0 - tl * float(np.cos(v)), cy + 0.45 * span * float(np.sin(v))) for v in a]
        tail = [(x0, cy - 0.1 * height), *fan, (x0, cy + 0.1 * height)]
    _poly(fins, tail, 1)

    # Dorsal fin(s) on the back, pelvic / anal fins below.
    top = cy - 0.5 * height
    if sp.dorsal == "spiny":
        for k in range(6):
            bx = cx - 0.05 * length + k * 0.05 * length
            spine = [
                (bx, top + 2 * s),
                (bx + 0.02 * length, top - 0.28 * height),
                (bx + 0.05 * length, top + 2 * s),
            ]
            _poly(fins, spine, 1)
    else:
        start, width, rise = {
            "normal": (-0.05, 0.18, 0.3),
            "back": (-0.38, 0.12, 0.35),
            "long": (-0.15, 0.3, 0.22),
        }[sp.dorsal]
        bx = cx + start * length
        tri = [
            (bx, top + 3 * s),
            (bx + 0.3 * width * length, top - rise * height),
            (bx + width * length, top + 3 * s),
        ]
        _poly(fins, tri, 1)
    bottom = cy + 0.5 * height
    for fx in (0.05, -0.25):
        bx = cx + fx * length
        tri = [
            (bx, bottom - 3 * s),
            (bx - 0.06 * length, bottom + 0.22 * height),
            (bx + 0.06 * length, bottom - 3 * s),
        ]
        _poly(fins, tri, 1)

    # Body colour: back-to-belly gradient, then the species pattern.
    yy = np.clip((np.arange(canvas, dtype=np.float32) - top) / max(height, 1.0), 0, 1)[:, None, None]
    back, belly = _jitter(rng, sp.back), _jitter(rng, sp.belly)
    grad_pow = 2.0 if sp.pattern == "gradient" else 1.0
    colour[:] = back * (1 - yy**grad_pow) + belly * yy**grad_pow
    mark = _jitter(rng, sp.mark)
    pattern = np.zeros((canvas, canvas), np.float32)
    if sp.pattern == "spots":
        for _ in range(int(rng.integers(14, 24))):
            px = cx + rng.uniform(-0.45, 0.45) * length
            py = cy + rng.uniform(-0.38, 0.25) * height
            radius = round(rng.uniform(1.3, 2.6) * s * 16)
            cv2.circle(pattern, (round(px * 16), round(py * 16)), radius, 1.0, -1, cv2.LINE_AA, shift=4)
        if sp.name == "salmo_trutta":  # a few red spots with pale rings, the trout's mark
            for _ in range(int(rng.integers(3, 7))):
                px, py = cx + rng.uniform(-0.3, 0.35) * length, cy + rng.uniform(-0.1, 0.15) * height
                cv2.circle(
                    colour, (round(px), round(py)), max(1, round(1.6 * s)), (40, 40, 200), -1, cv2.LINE_AA
                )
    elif sp.pattern == "bars":
        n_bars = int(rng.integers(5, 8))
        for k in range(n_bars):
            bx = cx - 0.38 * length + k * 0.72 * length / (n_bars - 1)
            w = length * rng.uniform(0.035, 0.055)
            bar = [
                (bx - w, top),
                (bx + w, top),
                (bx + 0.6 * w, cy + 0.3 * height),
                (bx - 0.6 * w, cy + 0.3 * height),
            ]
            _poly(pattern, bar, 1.0, cv2.LINE_AA)
    elif sp.pattern == "gradient":  # zander: faint dark saddles on a graded body
        for k in range(int(rng.integers(6, 10))):
            bx = cx - 0.4 * length + k * 0.1 * length
            axes = (max(1, round(2 * s)), max(1, round(0.2 * height)))
            cv2.ellipse(
                pattern, (round(bx), round(top + 0.25 * height)), axes, 0, 0, 360, 0.5, -1, cv2.LINE_AA
            )
    elif sp.pattern == "mottled":
        pattern = np.clip(smooth_noise(rng, (canvas, canvas), 2.0 * s), 0, 1) * 0.8
    colour = colour * (1 - pattern[..., None]) + mark * pattern[..., None]
    colour[fins > 0] = _jitter(rng, sp.fins)

    # Eye near the head, and a soft top-lit shading so the body looks round.
    ex, ey = round(cx + 0.38 * length), round(cy - 0.12 * height)
    cv2.circle(colour, (ex, ey), max(2, round(2.4 * s)), (225, 225, 225), -1, cv2.LINE_AA)
    cv2.circle(colour, (ex, ey), max(1, round(1.3 * s)), (10, 10, 10), -1, cv2.LINE_AA)
    if sp is NOVEL_SPECIES:  # barbels
        p1, p2 = (round(cx + 0.5 * length), round(cy)), (round(cx + 0.62 * length), round(cy + 0.5 * height))
        cv2.line(colour, p1, p2, (30, 30, 30), max(1, round(s)), cv2.LINE_AA)
        cv2.line(fins, p1, p2, 1, max(1, round(s)))
    shade = 1.0 + 0.12 * (0.5 - yy)
    colour = colour * shade
    # Blurred coverage = anti-aliased edge for compositing.
    alpha = np.asarray(cv2.GaussianBlur(np.maximum(body, fins).astype(np.float32), (0, 0), 0.6), np.float32)
    return colour.astype(np.float32), alpha


def render_species_image(
    rng: np.random.Generator, species: Species, size: int = 128, drift: Drift | None = None
) -> tuple[U8, np.ndarray[Any, np.dtype[np.bool_]], SpeciesPhotoMeta]:
    """One photo: (BGR uint8 image, fish mask, metadata about the nuisance parameters)."""
    background_img, background = _background(rng, size)
    img: npt.NDArray[Any] = background_img
    sprite, alpha = _draw_fish(rng, species, size)
    angle = float(rng.uniform(-30, 30))
    flipped = bool(rng.random() < 0.5)
    scale = float(rng.uniform(0.8, 1.1))
    shift = rng.uniform(-0.1, 0.1, 2) * size
    m: npt.NDArray[np.float64] = np.asarray(
        cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale), np.float64
    )
    if flipped:  # mirror about the vertical centre line first
        flip = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        m = m @ flip
    m[:, 2] += shift
    warped = cv2.warpAffine(sprite, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    a = cv2.warpAffine(alpha, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    img = img * (1 - a) + warped * a
    mask = a[..., 0] > 0.5

    gain, gamma = float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.85, 1.2))
    cast = rng.uniform(0.92, 1.08, 3)
    blur = float(rng.uniform(0.0, 0.9)) if rng.random() < 0.5 else 0.0
    noise = float(rng.uniform(1.0, 5.0))
    resample = 1.0
    if drift is Drift.lighting:  # dusk / overcast season: darker, warmer, flatter
        gain *= 0.62
        gamma *= 1.3
        cast = cast * np.array([0.8, 0.95, 1.15])
    elif drift is Drift.sensor:  # a cheaper camera: noisier, softer, a different colour response
        noise += 10.0
        blur += 1.2
        resample = 0.5
        cast = cast * np.array([1.15, 1.0, 0.85])
    img = photometric(img, gain=gain, gamma=gamma, channel_gains=cast.tolist())
    img = sensor_effects(img, rng, blur_sigma=blur, noise_sigma=noise, resample=resample)
    meta: SpeciesPhotoMeta = {
        "species": species.name,
        "label": species.label,
        "background": background,
        "angle_deg": round(angle, 2),
        "flipped": flipped,
        "scale": round(scale, 3),
        "gain": round(gain, 3),
        "gamma": round(gamma, 3),
        "blur_sigma": round(blur, 3),
        "noise_sigma": round(noise, 3),
    }
    return to_u8(img), mask, meta


def generate_species(
    out_dir: str | Path,
    n: int = 500,
    *,
    seed: int = 0,
    drift: str | Drift | None = None,
    size: int = 128,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SynthResult:
    """Write ``n`` fish photos + COCO annotations to ``out_dir``. Classes are balanced (round-robin in
    a seeded shuffled order), so every class appears once ``n`` ≥ the number of classes."""
    kind = parse_drift(drift)
    check_params(n, size)
    out = prepare_out_dir(out_dir, overwrite)
    novel = kind is Drift.new_class
    writer = SynthWriter(out, categories(include_novel=novel))
    master = np.random.default_rng(seed)
    order = np.concatenate([master.permutation(len(SPECIES)) for _ in range(n // len(SPECIES) + 1)])[:n]
    is_novel = master.random(n) < NOVEL_FRACTION if novel else np.zeros(n, dtype=bool)
    for i, rng in enumerate(child_rngs(seed, n)):
        sp = NOVEL_SPECIES if is_novel[i] else SPECIES[int(order[i])]
        img, mask, meta = render_species_image(rng, sp, size, kind)
        meta["captured_at"] = epoch_plus(i * 37.0)
        meta["source"] = "synthetic"
        meta["drift"] = kind.value if kind else None
        meta["novel"] = bool(is_novel[i])
        file_name = f"images/fish_{i:05d}.jpg"
        image_id = writer.add_image(file_name, encode_jpeg(img, 90), size, size, meta)
        writer.add_instance(image_id, sp.name, mask)
        if progress is not None:
            progress(i + 1)
    return writer.finish(
        {
            "generator": GENERATOR,
            "task": "classify",
            "seed": seed,
            "drift": kind.value if kind else None,
            "size": size,
            "classes": [s.name for s in SPECIES],
            "labels": {s.name: s.label for s in SPECIES},
            "novel_classes": [NOVEL_SPECIES.name] if novel else [],
            "format": "COCO; images/*.jpg (JPEG q90, BGR→sRGB), one annotation per image = the class",
        }
    )
