"""``objects``: segments where objects of the classes a request names are in view.

A frame's score is the highest confidence of a detection of one of the request's classes (0 when
there is none). The detector is either

* **a keeneye detector** — any model bundle whose ``output_format`` is ``yolo-detect`` or
  ``yolo-segment``: a detection pipeline's champion from the registry, or a bundle folder. Frames go
  through the bundle's own input spec (:func:`keeneye.imaging.prepare_input`) and post-processing
  (:func:`keeneye.models.postprocess`, the manifest's thresholds and NMS), exactly as the API answers;
* **OpenCV's HOG people detector** (the default, no model needed): class ``person`` only; a
  detection's SVM margin ``w`` becomes the confidence ``w / (1 + w)``.

The classes travel per request (docs/smartcut.md → "Request options"): the backend adds
``"options": {"classes": [...]}`` to each ``objects-new-files`` message (an extra key the seed's
parsers ignore) and the plugin announces the classes its detector knows as an extra ``classes`` key
of its ``started-plugins`` message. No classes means every class the detector knows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import cv2
import numpy as np

from keeneye.imaging import Image, prepare_input
from keeneye.models import ModelBundle, ModelManifest, OnnxModel, postprocess
from keeneye.settings import Settings
from keeneye.video.errors import UNKNOWN_CLASS, VideoRejected
from keeneye.video.messages import RequestOptions, StartedPlugin
from keeneye.video.recommender import FrameScorer, Recommender, register
from keeneye.video.sampling import shrink
from keeneye.video.segments import SegmentPolicy

log = logging.getLogger(__name__)

DETECTOR_FORMATS = ("yolo-detect", "yolo-segment")
HOG_CLASSES = ("person",)
HOG_MIN_HEIGHT = 128  # the people detector's window is 64×128: smaller people are not found


class Detector(Protocol):
    """What the ``objects`` recommender needs of a detector."""

    @property
    def description(self) -> str: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    def detect(self, image: np.ndarray) -> list[tuple[int, float]]:
        """(class index into :attr:`classes`, confidence 0…1) per detection in an RGB uint8 image."""
        ...


class HogPeopleDetector:
    """OpenCV's HOG + linear SVM pedestrian detector (Dalal & Triggs), on the frame as sampled."""

    description = "OpenCV HOG people detector"
    classes: tuple[str, ...] = HOG_CLASSES

    def __init__(self, scale: float = 1.05, min_margin: float = 0.0) -> None:
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32))
        self.scale = scale
        self.min_margin = min_margin

    def detect(self, image: np.ndarray) -> list[tuple[int, float]]:
        if image.shape[0] < HOG_MIN_HEIGHT or image.shape[1] < HOG_MIN_HEIGHT // 2:
            return []
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        _, margins = self.hog.detectMultiScale(bgr, winStride=(8, 8), padding=(8, 8), scale=self.scale)
        return [(0, m / (1.0 + m)) for m in np.ravel(margins).tolist() if m > self.min_margin]


class OnnxDetector:
    """A keeneye detection bundle run with its manifest's input spec and post-processing."""

    def __init__(self, bundle: ModelBundle, model: Any, description: str) -> None:
        manifest: ModelManifest = bundle.manifest
        if manifest.output_format not in DETECTOR_FORMATS:
            raise VideoRejected(
                "not_a_detector",
                f"{description} is a {manifest.output_format} model, not a detector",
                fix=f"use a bundle whose output_format is one of {', '.join(DETECTOR_FORMATS)}",
            )
        self.manifest = manifest
        self.model = model  # an OnnxModel, or anything with run(batch) → outputs
        self.description = description
        by_id = {c.id: c.name for c in manifest.classes}
        self.classes = tuple(by_id.get(i, str(i)) for i in range(max(by_id, default=-1) + 1))

    def detect(self, image: np.ndarray) -> list[tuple[int, float]]:
        frame = Image(pixels=image, bands=("red", "green", "blue"), format="array", content_hash="")
        tensor, _ = prepare_input(frame, self.manifest.input)
        outputs = [o[0] for o in self.model.run(np.expand_dims(tensor, 0))]
        found = postprocess(self.manifest, outputs)
        return [
            (int(c), float(s)) for c, s in zip(found.class_ids.tolist(), found.scores.tolist(), strict=True)
        ]


def load_detector(settings: Settings, ref: str) -> Detector:
    """``ref``: empty → HOG; an existing folder → that bundle; else a pipeline name → its champion
    (the alias its spec serves) from the registry. Refusals name the fix."""
    if not ref:
        return HogPeopleDetector()
    path = Path(ref).expanduser()
    if path.is_dir():
        bundle = ModelBundle.load(path)
        description = f"bundle {path}"
    else:
        # Imported here, not at the top: the registry pulls in MLflow, which a process running the
        # built-in motion/scene plugins never needs (start-up time), not to dodge a layer.
        from keeneye.pipelines import PipelineCatalog
        from keeneye.registry import ModelRegistry

        spec = PipelineCatalog(settings).get(ref)  # NotFound names the known pipelines
        registry = ModelRegistry(settings)
        info = registry.resolve(spec.model_name, spec.model.alias)
        if info is None:
            raise VideoRejected(
                "no_detector",
                f"pipeline {ref!r} has no model with alias {spec.model.alias!r}",
                fix=f"train or register one for {ref}, or pass a bundle folder",
            )
        bundle = registry.download(spec.model_name, str(info.version))
        description = f"{ref} v{info.version}"
    return OnnxDetector(bundle, OnnxModel(bundle, settings.inference), description)


class ObjectScorer:
    """Per video: the highest confidence among detections of the wanted classes."""

    def __init__(self, detector: Detector, wanted: Sequence[int], img_size: int) -> None:
        self.detector = detector
        self.wanted = frozenset(wanted)
        self.img_size = img_size

    def __call__(self, image: np.ndarray) -> float:
        found = self.detector.detect(shrink(image, self.img_size))
        return max((score for cls, score in found if cls in self.wanted), default=0.0)


@register
class ObjectsRecommender(Recommender):
    """Segments where a person (HOG), or an object of the requested classes (a keeneye detector), is seen."""

    name: ClassVar[str] = "objects"
    label: ClassVar[str] = "Objects"
    img_size: ClassVar[int] = 640
    default_policy: ClassVar[SegmentPolicy] = SegmentPolicy(high=0.5, low=0.3)

    def __init__(self, policy: SegmentPolicy | None = None, detector: Detector | None = None) -> None:
        super().__init__(policy)
        self.detector: Detector = detector or HogPeopleDetector()

    def announcement(self) -> StartedPlugin:
        return {**super().announcement(), "classes": list(self.detector.classes)}

    def class_ids(self, classes: Sequence[str] | None) -> list[int]:
        """Indices of ``classes`` (all when empty); ``unknown_class`` names the detector's classes."""
        known = self.detector.classes
        if not classes:
            return list(range(len(known)))
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise VideoRejected(
                UNKNOWN_CLASS,
                f"{self.detector.description} does not detect {', '.join(map(repr, unknown))}",
                fix=f"choose among: {', '.join(known)}",
            )
        return [known.index(c) for c in classes]

    def scorer(self) -> FrameScorer:
        return ObjectScorer(self.detector, self.class_ids(None), self.img_size)

    def scorer_for(self, options: Mapping[str, object] | RequestOptions | None) -> FrameScorer:
        raw = (options or {}).get("classes")
        classes = [str(c) for c in raw] if isinstance(raw, list) else None
        return ObjectScorer(self.detector, self.class_ids(classes), self.img_size)
