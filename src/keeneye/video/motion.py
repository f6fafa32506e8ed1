"""``motion``: background subtraction on small frames, robust to sensor noise, lighting and shake.

Per sampled frame (DVR-Scan's job, with three things it lacks):

1. colour, downscaled to :data:`WORK_SIZE` on its longest side, blurred (noise averages out);
2. **lighting**: each channel is divided by its mean, so a slow global drift (dusk, clouds,
   auto-exposure) does not read as change;
3. **shake**: the frame is aligned to the background by phase correlation before differencing, so a
   camera that jumps a few pixels does not light up every edge; a border as wide as the largest
   accepted shift is left out of the score, and a pixel is compared with the range of the background
   over its 3×3 neighbourhood, so what alignment leaves (a pixel, interpolation at edges) is no change;
4. **noise-adaptive threshold**: a pixel is foreground when, in its most changed channel, it differs
   from the background by more than ``k`` robust standard deviations of this frame's differences
   (median / 0.6745), never less than a floor; a 3×3 opening removes isolated speckles;
5. the score is the foreground share of the frame (0…1). The background follows the scene with a
   running average, fast where nothing moves and slowly under foreground (a parked car fades in).
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from keeneye.video.recommender import FrameScorer, Recommender, register
from keeneye.video.sampling import shrink
from keeneye.video.segments import SegmentPolicy

WORK_SIZE = 160
MAX_SHIFT = 8  # pixels at WORK_SIZE; larger jumps are a scene change, not shake
_KERNEL = np.ones((3, 3), np.uint8)


class MotionScorer:
    """State for one video: the background model and the alignment window."""

    def __init__(
        self, k: float = 4.0, floor: float = 0.04, alpha: float = 0.1, alpha_foreground: float = 0.01
    ) -> None:
        self.k, self.floor = k, floor
        self.alpha, self.alpha_foreground = alpha, alpha_foreground
        self.background: np.ndarray | None = None
        self.window: np.ndarray | None = None

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        image = shrink(image, WORK_SIZE)
        work = cv2.GaussianBlur(image.astype(np.float32), (5, 5), 0)
        # Per channel: a lighting change scales each channel; an object of the background's grey
        # level still differs in colour.
        normalised: np.ndarray = work / np.maximum(work.mean(axis=(0, 1)), 1.0)
        return normalised

    def __call__(self, image: np.ndarray) -> float:
        frame = self._prepare(image)
        if self.background is None or self.background.shape != frame.shape:
            self.background = frame
            self.window = cv2.createHanningWindow(frame.shape[1::-1], cv2.CV_32F)
            return 0.0
        frame = self._align(frame)
        # Distance to the background's range over each pixel's 3×3 neighbourhood: a residual
        # misalignment of a pixel (sub-pixel shake, interpolation at hard edges) is not change.
        lo = cv2.erode(self.background, _KERNEL)
        hi = cv2.dilate(self.background, _KERNEL)
        diff = np.maximum(np.maximum(frame - hi, lo - frame), 0.0).max(axis=2)
        m = min(MAX_SHIFT, frame.shape[0] // 4, frame.shape[1] // 4)
        inner = diff[m : diff.shape[0] - m, m : diff.shape[1] - m]
        sigma = float(np.median(inner)) / 0.6745
        mask = (inner > max(self.k * sigma, self.floor)).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _KERNEL)
        full = np.zeros(diff.shape, np.float32)
        full[m : diff.shape[0] - m, m : diff.shape[1] - m] = mask
        rate = np.where(full > 0, self.alpha_foreground, self.alpha).astype(np.float32)[..., None]
        self.background += rate * (frame - self.background)
        return float(mask.mean())

    def _align(self, frame: np.ndarray) -> np.ndarray:
        assert self.background is not None
        assert self.window is not None
        # Windowed copies: cv2.phaseCorrelate applies a given window in place, to the caller's arrays.
        (dx, dy), _ = cv2.phaseCorrelate(
            self.background.mean(axis=2) * self.window, frame.mean(axis=2) * self.window
        )
        if max(abs(dx), abs(dy)) < 0.5 or max(abs(dx), abs(dy)) > MAX_SHIFT:
            return frame
        shift = np.array([[1, 0, -dx], [0, 1, -dy]], np.float32)
        return cv2.warpAffine(
            frame, shift, frame.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )


@register
class MotionRecommender(Recommender):
    """Segments where something moves in an otherwise still scene (surveillance, fixed cameras)."""

    name: ClassVar[str] = "motion"
    label: ClassVar[str] = "Motion"
    img_size: ClassVar[int] = 320
    default_policy: ClassVar[SegmentPolicy] = SegmentPolicy(high=0.004, low=0.0015)

    def scorer(self) -> FrameScorer:
        return MotionScorer()
