"""What every peer server runs per image, written the way a user of that server would: OpenCV decode,
resize to the model's size, ImageNet normalisation, ONNX Runtime with 2 intra-op threads, top-3.

Self-contained (numpy, OpenCV, ONNX Runtime only): the peers run in their own virtualenvs, without
keeneye installed. Configured by environment: ``BENCH_MODEL`` (ONNX path), ``BENCH_SIZE`` (pixels),
``BENCH_THREADS`` (intra-op threads, default 2).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import onnxruntime as ort

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class Classifier:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "2"))
        self.session = ort.InferenceSession(
            os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        self.size = int(os.environ.get("BENCH_SIZE", "224"))

    def preprocess(self, data: bytes) -> np.ndarray:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("not an image")
        rgb = cv2.cvtColor(
            cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
        )
        return ((rgb.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)

    def infer(self, batch: np.ndarray) -> list[list[dict[str, float]]]:
        logits = self.session.run(None, {self.input: batch})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        top = np.argsort(-probs, axis=1)[:, :3]
        return [
            [{"class": int(k), "score": float(p[k])} for k in row] for row, p in zip(top, probs, strict=True)
        ]
