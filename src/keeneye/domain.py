"""The shared vocabulary of keeneye: plain types and errors, no I/O.

Every package may import this module (and ``settings``); nothing here imports another keeneye
package. Stages pass :class:`Instances` between them instead of inventing their own dicts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

# --------------------------------------------------------------------------------------------------
# Errors. Each carries a one-line message for the user and, where there is one, the fix.
# --------------------------------------------------------------------------------------------------


class KeeneyeError(Exception):
    """Base class for every error keeneye raises on purpose (user or environment errors)."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        """The message and the fix on one line, as the CLI prints it."""
        return f"{self.message} — {self.fix}" if self.fix else self.message


class ConfigError(KeeneyeError):
    """A setting is malformed or names something that cannot be used."""

    def __init__(self, setting: str, message: str, *, fix: str | None = None) -> None:
        super().__init__(f"{setting}: {message}", fix=fix)
        self.setting = setting


class BackendUnavailable(KeeneyeError):
    """A configured backend (database, bus, object store, cache, registry) cannot be reached."""

    def __init__(self, setting: str, url: str, message: str, *, fix: str | None = None) -> None:
        super().__init__(f"{setting} ({url}): {message}", fix=fix)
        self.setting = setting
        self.url = url


class InvalidInput(KeeneyeError):
    """An input was refused. ``reason`` is a stable machine-readable code (e.g. ``corrupt_image``).

    ``status`` is the HTTP status the API answers with; workers record ``reason`` as the
    ``rejected`` reason of the observation.
    """

    def __init__(self, reason: str, message: str, *, status: int = 422, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.reason = reason
        self.status = status


class NotFound(KeeneyeError):
    """A named thing (pipeline, model version, observation, object key) does not exist."""


class MessageTooLarge(KeeneyeError):
    """A message or object exceeds the configured size limit."""

    def __init__(self, what: str, size: int, limit: int, *, setting: str) -> None:
        super().__init__(
            f"{what} is {size} bytes, over the limit of {limit} bytes",
            fix=f"send it by reference through the object store, or raise {setting}",
        )
        self.size = size
        self.limit = limit
        self.setting = setting


# --------------------------------------------------------------------------------------------------
# Core enums
# --------------------------------------------------------------------------------------------------


class ObservationStatus(enum.StrEnum):
    queued = "queued"
    processing = "processing"
    done = "done"
    rejected = "rejected"
    failed = "failed"


class Task(enum.StrEnum):
    classify = "classify"
    detect = "detect"
    segment = "segment"


class Decision(enum.StrEnum):
    """Image-level verdict of line-inspection; DEFECT is also the fail-safe answer."""

    ok = "OK"
    defect = "DEFECT"


class Variant(enum.StrEnum):
    """Which model answered: the champion, the canary challenger, or the silent shadow."""

    champion = "champion"
    canary = "canary"
    shadow = "shadow"


# --------------------------------------------------------------------------------------------------
# Instances: the one result type for classification, detection and segmentation
# --------------------------------------------------------------------------------------------------

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class Instances:
    """N predicted instances in original-image pixel coordinates.

    * ``boxes``: (N, 4) float32 ``x1, y1, x2, y2``; for classification the whole image.
    * ``scores``: (N,) float32 confidence.
    * ``class_ids``: (N,) int64 index into the model's class list.
    * ``masks``: optional (N, H, W) bool, H×W the original image size.
    * ``class_probabilities``: optional (C,) float32 for whole-image classification (softmax).
    """

    boxes: FloatArray
    scores: FloatArray
    class_ids: IntArray
    masks: BoolArray | None = None
    class_probabilities: FloatArray | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4):
            raise ValueError(f"boxes must be ({n}, 4), got {self.boxes.shape}")
        if self.class_ids.shape != (n,):
            raise ValueError(f"class_ids must be ({n},), got {self.class_ids.shape}")
        if self.masks is not None and (self.masks.ndim != 3 or self.masks.shape[0] != n):
            raise ValueError(f"masks must be ({n}, H, W), got {self.masks.shape}")

    @classmethod
    def empty(cls, image_shape: tuple[int, int] | None = None) -> Instances:
        masks = None if image_shape is None else np.zeros((0, *image_shape), dtype=np.bool_)
        return cls(
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros((0,), dtype=np.float32),
            class_ids=np.zeros((0,), dtype=np.int64),
            masks=masks,
        )

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def areas(self) -> FloatArray:
        """Mask pixel counts when masks exist, otherwise box areas."""
        if self.masks is not None:
            counts: FloatArray = self.masks.reshape(len(self), -1).sum(axis=1).astype(np.float32)
            return counts
        w = np.clip(self.boxes[:, 2] - self.boxes[:, 0], 0, None)
        h = np.clip(self.boxes[:, 3] - self.boxes[:, 1], 0, None)
        box_areas: FloatArray = (w * h).astype(np.float32)
        return box_areas

    def filter(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.int64]) -> Instances:
        return Instances(
            boxes=self.boxes[keep],
            scores=self.scores[keep],
            class_ids=self.class_ids[keep],
            masks=None if self.masks is None else self.masks[keep],
            class_probabilities=self.class_probabilities,
        )


@dataclass(frozen=True)
class ModelRef:
    """A registered model version: ``models:/<name>/<version>``; ``alias`` when resolved from one."""

    name: str
    version: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass
class Prediction:
    """What one model said about one image, with where the time went."""

    instances: Instances
    model: ModelRef
    task: Task
    variant: Variant = Variant.champion
    timings_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendHealth:
    """What ``keeneye doctor`` reports for one configured backend."""

    setting: str
    url: str  # secrets masked
    reachable: bool
    version: str = ""
    detail: str = ""
    fix: str = ""
