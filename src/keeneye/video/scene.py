"""``scene``: content change between consecutive sampled frames (PySceneDetect's ContentDetector idea).

The score of a frame is the mean absolute difference of its HSV channels (0…255 scale, averaged over
hue, saturation and value) from the previous sampled frame, on frames downscaled to
:data:`WORK_SIZE`. A cut or a big change of what is in view scores high; a still scene scores near the
noise level. Segments are the stretches where content keeps changing — edits, pans, busy periods —
which suits produced footage better than fixed surveillance cameras (use ``motion`` there).
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from keeneye.video.recommender import FrameScorer, Recommender, register
from keeneye.video.sampling import shrink
from keeneye.video.segments import SegmentPolicy

WORK_SIZE = 160


class ContentScorer:
    """State for one video: the previous frame in HSV."""

    def __init__(self) -> None:
        self.previous: np.ndarray | None = None

    def __call__(self, image: np.ndarray) -> float:
        image = shrink(image, WORK_SIZE)
        # A blur first: sensor noise is per pixel, content change is not.
        hsv = cv2.cvtColor(cv2.GaussianBlur(image, (5, 5), 0), cv2.COLOR_RGB2HSV).astype(np.int16)
        previous, self.previous = self.previous, hsv
        if previous is None or previous.shape != hsv.shape:
            return 0.0
        return float(np.abs(hsv - previous).mean())


@register
class SceneRecommender(Recommender):
    """Segments where the picture's content changes (cuts, pans, busy scenes)."""

    name: ClassVar[str] = "scene"
    label: ClassVar[str] = "Scene change"
    img_size: ClassVar[int] = 320
    default_policy: ClassVar[SegmentPolicy] = SegmentPolicy(high=4.0, low=2.5)

    def scorer(self) -> FrameScorer:
        return ContentScorer()
