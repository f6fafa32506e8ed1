"""BentoML with adaptive batching (up to 16 images), as its docs show for image models.

bentoml serve bentoml_service:Classifier --port PORT   (from this folder)
"""

from __future__ import annotations

import bentoml
import cv2
import numpy as np
from classifier import MEAN, STD
from classifier import Classifier as Model
from PIL.Image import Image


@bentoml.service(workers=1)
class Classifier:
    def __init__(self) -> None:
        self.model = Model()

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=2000)
    def predict(self, file: list[Image]) -> list[dict[str, object]]:
        size = self.model.size
        batch = []
        for image in file:
            rgb = cv2.resize(np.asarray(image.convert("RGB")), (size, size), interpolation=cv2.INTER_AREA)
            batch.append(((rgb.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1))
        return [{"top3": top} for top in self.model.infer(np.stack(batch))]
