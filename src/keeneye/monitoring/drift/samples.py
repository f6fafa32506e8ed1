"""What one prediction contributes to drift: a :class:`DriftSample` (image-quality features, output
features, an embedding), and the embeddings themselves.

An embedding is the model's pooled-feature output when the reference profile says
``source: "model:<output>"`` and the served bundle exposes it, else
:func:`keeneye.imaging.embedding_projection` of the image (:data:`PROJECTION_SOURCE`); both are
reduced to at most :data:`MAX_EMBEDDING_DIM` dimensions by one fixed seeded random projection
(:func:`reduce_embedding`), applied identically to the reference and to live embeddings.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from keeneye.domain import Answer, Task
from keeneye.imaging import Image, embedding_projection
from keeneye.models.manifest import ModelManifest
from keeneye.models.session import OnnxModel

FloatArray = npt.NDArray[np.float32]

PROJECTION_SOURCE: Final = "image:projection"
"""Profile embedding source meaning ":func:`~keeneye.imaging.embedding_projection` of the image"."""
MODEL_SOURCE_PREFIX: Final = "model:"
MAX_EMBEDDING_DIM: Final = 64
REDUCTION_SEED: Final = 1729
EMBEDDING: Final = "embedding"


@dataclass(frozen=True)
class DriftSample:
    """One prediction as drift monitoring sees it."""

    features: dict[str, float]
    embedding: npt.NDArray[Any] | None = None
    classes: tuple[str, ...] = ()  # the predicted class (classify) or every instance's class


def drift_sample(answer: Answer, *, embedding: npt.NDArray[Any] | None = None) -> DriftSample:
    """Quality and output features of a pipeline's answer (see :func:`keeneye.pipelines.finish`).

    Output features match how training computed the reference (``output_reference``): ``confidence``
    is the top score, 0 when nothing was found; ``instance_count`` is 1 for a classification;
    ``instance_area`` (mean area in pixels) exists only when there are instances.
    """
    features: dict[str, float] = {}
    quality = answer.image.quality if answer.image is not None else {}
    for name, value in quality.items():
        v = float(value)
        if np.isfinite(v):
            features[str(name)] = v
    classes: tuple[str, ...]
    if answer.task is Task.classify:
        features["instance_count"] = 1.0
        predicted = answer.predicted_class
        classes = (predicted,) if predicted is not None else ()
    else:
        features["instance_count"] = float(len(answer.instances))
        classes = tuple(answer.class_names)
        areas = answer.instances.areas if answer.areas_px is None else answer.areas_px
        if len(areas):
            features["instance_area"] = float(np.mean(np.asarray(areas, dtype=np.float64)))
    confidence = answer.confidence
    features["confidence"] = float(confidence) if confidence is not None else 0.0
    return DriftSample(features=features, embedding=embedding, classes=classes)


def profile_embedding(manifest: ModelManifest) -> Mapping[str, Any] | None:
    """The ``embedding`` part of the manifest's reference profile, if any."""
    profile = manifest.reference_profile or {}
    emb = profile.get(EMBEDDING)
    return emb if isinstance(emb, Mapping) and emb.get("sample") else None


def embedding_of(
    model: OnnxModel | Sequence[str],
    manifest: ModelManifest,
    outputs: Sequence[npt.NDArray[Any]],
    *,
    image: Image | None = None,
) -> FloatArray | None:
    """The live embedding of one prediction, of the same kind as the reference profile's, or None.

    ``model`` is the served :class:`~keeneye.models.OnnxModel` (or its ``output_names``) and
    ``outputs`` what it returned for this one item, in that order. A ``model:<name>`` profile takes
    that output when the model has it; a :data:`PROJECTION_SOURCE` profile projects ``image``.
    Anything else (no profile embedding, a model without that output, no image) gives None: no MMD.
    """
    ref = profile_embedding(manifest)
    if ref is None:
        return None
    source = str(ref.get("source", ""))
    if source.startswith(MODEL_SOURCE_PREFIX):
        wanted = str(ref.get("output") or source[len(MODEL_SOURCE_PREFIX) :])
        declared: Any = getattr(model, "output_names", model)  # an OnnxModel, or already its output names
        names = [str(n) for n in declared]
        if wanted not in names:
            return None
        index = names.index(wanted)
        if index >= len(outputs):
            return None
        vector: FloatArray = np.asarray(outputs[index], dtype=np.float32).reshape(-1)
        return vector
    if source == PROJECTION_SOURCE and image is not None:
        return embedding_projection(
            image, dim=int(ref.get("dim", MAX_EMBEDDING_DIM)), seed=int(ref.get("seed", 0))
        )
    return None


@functools.lru_cache(maxsize=16)
def _reduction(dim: int, out: int, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((dim, out)).astype(np.float32) / np.float32(np.sqrt(out))
    matrix.flags.writeable = False
    return matrix


def reduce_embedding(
    x: npt.ArrayLike, *, max_dim: int = MAX_EMBEDDING_DIM, seed: int = REDUCTION_SEED
) -> FloatArray:
    """``x`` (d,) or (n, d) with d > ``max_dim`` projected to ``max_dim`` by a fixed Gaussian matrix.

    The matrix depends only on (d, ``max_dim``, ``seed``), so the reference and the live embeddings
    land in the same space; distances are roughly preserved (Johnson–Lindenstrauss), which is what
    the RBF-MMD test compares.
    """
    arr = np.asarray(x, dtype=np.float32)
    dim = arr.shape[-1]
    if dim <= max_dim:
        return arr
    reduced: FloatArray = arr @ _reduction(dim, max_dim, seed)
    return reduced
