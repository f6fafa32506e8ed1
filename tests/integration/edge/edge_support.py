"""What the edge runner tests share: a tiny segmentation bundle, frames it decides predictably, fast
settings, and a model whose answer can be held back (a stalled GPU, a deadlocked driver)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from keeneye.models import ModelBundle, ModelManifest
from keeneye.models.testing import tiny_segmenter, write_bundle
from keeneye.settings import EdgeSettings, Settings, SkuThresholds
from tests.integration.sinks.sink_support import FAST

SIZE = 32
# Each frame's expected PLC result: tiny_segmenter(2) lights class 1 ("scratch") where red is bright.
# "defect" is a 6×6 red square (36 px), "small" a 3×3 one (9 px: under defect_min_area 16), "corrupt"
# a PNG cut short.
RESULT = {"ok": 1, "defect": 2, "small": 1, "corrupt": 3}
CLASS = {"ok": 0, "defect": 1, "small": 0, "corrupt": 0}


def bundle(path: Path) -> ModelBundle:
    return write_bundle(
        path,
        tiny_segmenter(2, size=SIZE),
        name="line-inspection",
        output_format="seg-logits",
        input={"width": SIZE, "height": SIZE},
        classes=["background", "scratch"],
        background_class=0,
    )


def frame_png(kind: str) -> bytes:
    bgr = np.full((SIZE, SIZE, 3), 40, dtype=np.uint8)
    if kind == "defect":
        bgr[10:16, 10:16, 2] = 255
    elif kind == "small":
        bgr[4:7, 4:7, 2] = 255
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    data = png.tobytes()
    return data[: len(data) // 2] if kind == "corrupt" else data


def write_frames(folder: Path, kinds: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(kinds):
        (folder / f"frame-{i:04d}-{kind}.png").write_bytes(frame_png(kind))
    return folder


def settings(home: Path, **edge: Any) -> Settings:
    return Settings(
        home=home,
        plc=FAST,
        edge=EdgeSettings(flush_interval_seconds=0.05, outcome_wait_seconds=5.0, **edge),
    )


def sku_settings(home: Path, sku: str, min_area: int) -> Settings:
    return settings(home, sku_thresholds={sku: SkuThresholds(defect_min_area=min_area)})


class StallingModel:
    """Wraps a model; its ``stall_on``-th run blocks until :attr:`release` is set."""

    def __init__(self, inner: Any, stall_on: int) -> None:
        self.inner = inner
        self.stall_on = stall_on
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    @property
    def manifest(self) -> ModelManifest:
        manifest: ModelManifest = self.inner.manifest
        return manifest

    def run(self, batch: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        self.calls += 1
        if self.calls == self.stall_on:
            self.entered.set()
            self.release.wait(60)
            out: list[npt.NDArray[Any]] = self.inner.run(batch)
            self.finished.set()
            return out
        result: list[npt.NDArray[Any]] = self.inner.run(batch)
        return result
