"""Camera-like photos for the benchmarks: what users send, not thumbnails.

Each photo is distinct (no cache answers) and compresses like a real one: smooth illumination, textured
surfaces at several scales, a few objects with edges, and sensor noise — a 640×480 JPEG at quality 90
weighs about 100 KB, like a phone or IP-camera frame of the same size (a flat or random-noise image
would be far smaller or far larger, and decode time follows the bytes).
"""

from __future__ import annotations

import cv2
import numpy as np


def _octave_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Fractal value noise in [0, 1]: random grids at doubling resolutions, upsampled smoothly."""
    out = np.zeros((height, width), np.float32)
    weight, total = 1.0, 0.0
    for cells in (4, 8, 16, 32, 64, 128, 256):
        grid = rng.random((max(2, cells * height // width), cells), dtype=np.float32)
        out += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        total += weight
        weight *= 0.75
    out /= total
    return np.clip(out, 0.0, 1.0)


def camera_photo(rng: np.random.Generator, width: int = 640, height: int = 480) -> np.ndarray:
    """One BGR uint8 photo-like frame."""
    base = np.empty((height, width, 3), np.float32)
    tint = rng.uniform(60, 200, 3).astype(np.float32)
    for c in range(3):
        base[..., c] = tint[c] * (0.5 + _octave_noise(rng, width, height))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 0.75 + 0.35 * np.cos((xx / width - rng.random()) * np.pi) * np.cos(
        (yy / height - rng.random()) * np.pi
    )
    base *= light[..., None]
    for _ in range(int(rng.integers(3, 9))):  # objects: filled shapes with their own texture and edges
        colour = tuple(float(v) for v in rng.uniform(20, 235, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(width // 20, width // 4)), int(rng.integers(height // 20, height // 4)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(base, centre, axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
        cv2.ellipse(base, centre, axes, angle, 0, 360, (0, 0, 0), 2, cv2.LINE_AA)
    base += rng.normal(0, 7.0, base.shape).astype(np.float32)  # sensor noise
    return np.clip(base, 0, 255).astype(np.uint8)


def camera_jpegs(
    n: int, width: int = 640, height: int = 480, *, quality: int = 90, seed: int = 0
) -> list[bytes]:
    """``n`` distinct JPEG photos of ``width``×``height``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ok, buf = cv2.imencode(".jpg", camera_photo(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out.append(bytes(buf))
    return out


if __name__ == "__main__":
    photos = camera_jpegs(20)
    sizes = [len(p) / 1000 for p in photos]
    print(f"20 photos 640×480: {min(sizes):.0f}–{max(sizes):.0f} KB, mean {np.mean(sizes):.0f} KB")
