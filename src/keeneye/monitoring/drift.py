"""Drift monitoring: live traffic in windows, compared with the served model's reference profile.

Every successful prediction becomes a :class:`DriftSample` — its image-quality features (brightness,
contrast, per-band means, sharpness, NDVI …, already in ``result["image"]["quality"]``), its output
features (confidence, instance count, mean instance area, predicted classes) and an embedding.
A :class:`DriftMonitor` (one per pipeline and model version) collects them in a *window*: reservoir
samples (Algorithm R, seeded) of at most ``drift_reservoir`` values per feature and
``drift_embedding_reservoir`` embeddings, so memory stays bounded whatever the traffic, and each
observation costs O(features).

A window closes after ``drift_window_size`` observations, or after ``drift_window_seconds`` once it
holds ``drift_min_samples`` (a quiet window keeps accumulating). Closing compares it with the
reference profile that training stored in the model manifest (``reference_profile``, see
:func:`keeneye.training.export.reference_profile`): PSI on the reference's quantile bins and a KS test
per feature, PSI over the class mix, MMD with a permutation test on embeddings
(:mod:`keeneye.monitoring.stats`). The result is one ``drift_reports`` row and the
``keeneye_drift_score`` / ``keeneye_drift_alarm`` / ``keeneye_drift_windows`` metrics, which the
``DriftDetected`` alert rule watches.

Embeddings must be of the same kind on both sides: the model's pooled-feature output when the
profile says ``source: "model:<output>"`` and the served bundle exposes that output, or
:func:`keeneye.imaging.embedding_projection` of the image when the profile says
:data:`PROJECTION_SOURCE`. Both are reduced to at most :data:`MAX_EMBEDDING_DIM` dimensions by one
fixed seeded random projection, applied identically to the reference and to live embeddings.

:class:`DriftMonitors` is the per-process registry the API and the stream workers call once per
prediction (:meth:`DriftMonitors.observe`); it follows model-version changes and never raises into
the request path.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
from sqlalchemy import select

from keeneye.imaging import Image, embedding_projection
from keeneye.monitoring import stats
from keeneye.store.db import DriftReport

if TYPE_CHECKING:
    from keeneye.models.manifest import ModelManifest
    from keeneye.models.session import OnnxModel
    from keeneye.monitoring.metrics import Metrics
    from keeneye.pipelines.runtime import LoadedModel
    from keeneye.settings import MonitoringSettings, Settings
    from keeneye.store.db import ResultsDB

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
Clock = Callable[[], float]

PROJECTION_SOURCE: Final = "image:projection"
"""Profile embedding source meaning ":func:`~keeneye.imaging.embedding_projection` of the image"."""
MODEL_SOURCE_PREFIX: Final = "model:"
MAX_EMBEDDING_DIM: Final = 64
REDUCTION_SEED: Final = 1729
REPORT_SAMPLE: Final = 200  # current values stored per feature, for plots
MAX_REPORTS: Final = 200  # the most reports one query returns
CLASS_MIX: Final = "class_mix"
EMBEDDING: Final = "embedding"
_DIGITS: Final = 6


def _r(value: float) -> float:
    return round(float(value), _DIGITS)


def _rl(values: npt.ArrayLike) -> list[float]:
    out: list[float] = np.round(np.asarray(values, dtype=np.float64), _DIGITS).tolist()
    return out


_PREWARM = threading.Lock()
_prewarmed = False


def prewarm() -> None:
    """Import SciPy's statistics in a background thread, once per process.

    Its import takes a second or more; without this, the first window to close would pay it inside
    the request that closed it. Monitors call it when their window is half-way to closing, so
    processes that never close a window (a one-shot ``keeneye predict``) never pay it.
    """
    global _prewarmed
    with _PREWARM:
        if _prewarmed:
            return
        _prewarmed = True

    def load() -> None:
        try:
            import scipy.stats  # noqa: F401
        except Exception:  # the first window close will report the real error
            log.warning("could not import scipy.stats for drift tests", exc_info=True)

    threading.Thread(target=load, name="keeneye-drift-prewarm", daemon=True).start()


def default_source() -> str:
    """Which process closed a window: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


# --------------------------------------------------------------------------------------------------
# What one prediction contributes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftSample:
    """One prediction as drift monitoring sees it."""

    features: dict[str, float]
    embedding: npt.NDArray[Any] | None = None
    classes: tuple[str, ...] = ()  # the predicted class (classify) or every instance's class


def drift_sample(result: Mapping[str, Any], *, embedding: npt.NDArray[Any] | None = None) -> DriftSample:
    """Quality and output features of a pipeline result (see :func:`keeneye.pipelines.finish`).

    Output features match how training computed the reference (``output_reference``): ``confidence``
    is the top score, 0 when nothing was found; ``instance_count`` is 1 for a classification;
    ``instance_area`` (mean area in pixels) exists only when there are instances.
    """
    features: dict[str, float] = {}
    quality = (result.get("image") or {}).get("quality") or {}
    for name, value in quality.items():
        v = float(value)
        if np.isfinite(v):
            features[str(name)] = v
    classes: tuple[str, ...]
    if result.get("task") == "classify":
        features["instance_count"] = 1.0
        classes = (str(result["predicted_class"]),) if result.get("predicted_class") is not None else ()
    else:
        instances = result.get("instances") or []
        features["instance_count"] = float(len(instances))
        classes = tuple(str(i["class"]) for i in instances if "class" in i)
        areas = [float(i["area_px"]) for i in instances if i.get("area_px") is not None]
        if areas:
            features["instance_area"] = float(np.mean(areas))
    confidence = result.get("confidence")
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


# --------------------------------------------------------------------------------------------------
# The reference profile, parsed once per monitor
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Distribution:
    quantiles: list[float]
    levels: list[float]
    sample: npt.NDArray[np.float64]
    n: int
    mean: float
    std: float

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "quantiles": self.quantiles, "mean": _r(self.mean), "std": _r(self.std)}


@dataclass(frozen=True)
class Reference:
    """What a closed window is compared with: the parts of a reference profile drift can use."""

    distributions: dict[str, _Distribution]
    class_mix: dict[str, float] | None
    embedding: FloatArray | None  # (n, ≤ 64), already reduced
    embedding_source: str | None
    embedding_dim: int | None  # the original dimension

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> Reference:
        default_levels = profile.get("quantile_levels")
        dists: dict[str, _Distribution] = {}
        outputs = profile.get("outputs") or {}
        parts = {**(profile.get("features") or {}), **{k: v for k, v in outputs.items() if k != CLASS_MIX}}
        for name, d in parts.items():
            dist = _distribution(d, default_levels)
            if dist is not None:
                dists[str(name)] = dist
        mix = outputs.get(CLASS_MIX)
        class_mix = (
            {str(k): float(v) for k, v in mix.items()}
            if isinstance(mix, Mapping) and sum(float(v) for v in mix.values()) > 0
            else None
        )
        emb, source, dim = None, None, None
        ref_emb = profile.get(EMBEDDING)
        if isinstance(ref_emb, Mapping) and ref_emb.get("sample"):
            raw = np.asarray(ref_emb["sample"], dtype=np.float32)
            raw = raw.reshape(len(raw), -1)
            if len(raw) >= 2:
                emb, source, dim = reduce_embedding(raw), str(ref_emb.get("source", "")), int(raw.shape[1])
        return cls(dists, class_mix, emb, source, dim)


def _distribution(d: Any, default_levels: Any) -> _Distribution | None:
    if (
        not isinstance(d, Mapping)
        or not d.get("n")
        or len(d.get("quantiles") or []) < 3
        or not d.get("sample")
    ):
        return None
    quantiles = [float(q) for q in d["quantiles"]]
    levels = d.get("levels") or default_levels
    if not levels or len(levels) != len(quantiles):
        levels = np.linspace(0.0, 1.0, len(quantiles)).tolist()
    return _Distribution(
        quantiles=quantiles,
        levels=[float(v) for v in levels],
        sample=np.asarray(d["sample"], dtype=np.float64),
        n=int(d["n"]),
        mean=float(d.get("mean", 0.0)),
        std=float(d.get("std", 0.0)),
    )


# --------------------------------------------------------------------------------------------------
# One window: bounded reservoirs
# --------------------------------------------------------------------------------------------------


class _Reservoir:
    """Algorithm R: a uniform sample of at most ``capacity`` of the values offered so far."""

    __slots__ = ("buffer", "capacity", "seen")

    def __init__(self, capacity: int, shape: tuple[int, ...] = (), dtype: Any = np.float64) -> None:
        self.capacity = capacity
        self.buffer = np.empty((capacity, *shape), dtype=dtype)
        self.seen = 0

    def offer(self, value: Any, rng: random.Random) -> None:
        if self.seen < self.capacity:
            self.buffer[self.seen] = value
        else:
            j = rng.randrange(self.seen + 1)
            if j < self.capacity:
                self.buffer[j] = value
        self.seen += 1

    @property
    def kept(self) -> int:
        return min(self.seen, self.capacity)

    def values(self) -> npt.NDArray[Any]:
        return self.buffer[: self.kept]


@dataclass
class _Window:
    capacity: int
    embedding_capacity: int
    rng: random.Random  # the monitor's; add() runs under the monitor's lock
    index: int = 0  # which window of the monitor: seeds the subsampling of its comparison
    start: float | None = None
    n: int = 0
    values: dict[str, _Reservoir] = field(default_factory=dict)
    classes: Counter[str] = field(default_factory=Counter)
    embeddings: _Reservoir | None = None

    def add(
        self, features: Mapping[str, float], classes: Sequence[str], embedding: FloatArray | None
    ) -> None:
        self.n += 1
        for name, value in features.items():
            reservoir = self.values.get(name)
            if reservoir is None:
                reservoir = self.values[name] = _Reservoir(self.capacity)
            reservoir.offer(value, self.rng)
        self.classes.update(classes)
        if embedding is not None:
            if self.embeddings is None:
                self.embeddings = _Reservoir(self.embedding_capacity, embedding.shape, np.float32)
            self.embeddings.offer(embedding, self.rng)


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftReportRecord:
    """One closed window as stored in ``drift_reports``."""

    id: int
    pipeline: str
    model_version: str
    window_start: datetime
    window_end: datetime
    n: int
    alarm: bool
    features: dict[str, Any]
    embedding: dict[str, Any]
    source: str
    created_at: datetime

    @property
    def alarms(self) -> list[str]:
        """Names of what alarmed: features, ``class_mix``, ``embedding``."""
        names = [name for name, f in self.features.items() if f.get("alarm")]
        return [*names, EMBEDDING] if self.embedding.get("alarm") else names

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "model_version": self.model_version,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "n": self.n,
            "alarm": self.alarm,
            "alarms": self.alarms,
            "features": self.features,
            "embedding": self.embedding,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def of(cls, row: DriftReport) -> DriftReportRecord:
        return cls(
            id=int(row.id),
            pipeline=row.pipeline,
            model_version=row.model_version,
            window_start=row.window_start,
            window_end=row.window_end,
            n=int(row.n),
            alarm=bool(row.alarm),
            features=dict(row.features or {}),
            embedding=dict(row.embedding or {}),
            source=row.source,
            created_at=row.created_at,
        )


def latest_reports(
    db: ResultsDB, pipeline: str, *, limit: int = 20, model_version: str | None = None
) -> list[DriftReportRecord]:
    """The pipeline's latest windows, newest first; at most ``min(limit, MAX_REPORTS)`` rows.

    Served by the ``(pipeline, window_end)`` index: never a scan of the table.
    """
    limit = max(1, min(int(limit), MAX_REPORTS))
    query = select(DriftReport).where(DriftReport.pipeline == pipeline)
    if model_version is not None:
        query = query.where(DriftReport.model_version == model_version)
    query = query.order_by(DriftReport.window_end.desc(), DriftReport.id.desc()).limit(limit)
    with db.session() as session:
        return [DriftReportRecord.of(row) for row in session.scalars(query)]


def no_report_note(
    pipeline: str,
    settings: MonitoringSettings,
    *,
    pending: int | None = None,
    has_profile: bool | None = None,
) -> str:
    """Why a pipeline has no drift report yet, in one sentence (the API and ``keeneye drift report``)."""
    if has_profile is False:
        return (
            f"no drift report for {pipeline!r}: the served model has no reference profile "
            "(models exported by `keeneye train` carry one)"
        )
    size, seconds, least = (
        settings.drift_window_size,
        settings.drift_window_seconds,
        settings.drift_min_samples,
    )
    so_far = f" ({pending} observed so far in this process)" if pending is not None else ""
    return (
        f"no drift report for {pipeline!r} yet{so_far}: reports need traffic — a window closes after "
        f"{size} predictions, or after {seconds:g} s once it holds {least} — and a served model with a "
        "reference profile (models exported by `keeneye train` carry one)"
    )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _current_summary(
    values: npt.NDArray[np.float64], levels: Sequence[float], rng: np.random.Generator
) -> dict[str, Any]:
    sample = values if values.size <= REPORT_SAMPLE else rng.choice(values, size=REPORT_SAMPLE, replace=False)
    return {
        "n": int(values.size),
        "quantiles": _rl(np.quantile(values, levels)),
        "mean": _r(values.mean()),
        "std": _r(values.std()),
        "sample": _rl(sample),
    }


def compare_feature(
    ref: _Distribution,
    values: npt.NDArray[np.float64],
    rng: np.random.Generator,
    *,
    ks_alpha: float = stats.KS_P_ALARM,
) -> dict[str, Any]:
    """PSI and KS of one feature's window against its reference, with what the plots need.

    ``ks_alpha`` is the KS significance level for this feature: the monitor passes 0.05 divided by
    the number of features tested together (Bonferroni), so a window of unchanged data alarms about
    5% of the time in all, not 5% per feature.
    """
    quantiles, levels = stats.coarsen(ref.quantiles, ref.levels, values.size)
    p = stats.psi(quantiles, values, levels=levels)
    d, p_value = stats.ks(ref.sample, values)
    return {
        "psi": _r(p),
        "bins": len(quantiles) - 1,
        "ks": _r(d),
        "ks_p": float(f"{p_value:.6g}"),
        "ks_alpha": float(f"{ks_alpha:.6g}"),
        "alarm": stats.psi_alarm(p) or stats.ks_alarm(d, p_value, alpha=ks_alpha),
        "reference": {**ref.summary(), "levels": ref.levels},
        "current": _current_summary(values, ref.levels, rng),
    }


def compare_class_mix(reference: Mapping[str, float], counts: Mapping[str, int]) -> dict[str, Any]:
    total = sum(counts.values())
    current = {k: v / total for k, v in sorted(counts.items())}
    p = stats.category_psi(reference, current)
    return {
        "psi": _r(p),
        "ks": None,
        "ks_p": None,
        "alarm": stats.psi_alarm(p),
        "n": int(total),
        "reference": {k: _r(v) for k, v in reference.items()},
        "current": {k: _r(v) for k, v in current.items()},
    }


# --------------------------------------------------------------------------------------------------
# The monitor
# --------------------------------------------------------------------------------------------------


class DriftMonitor:
    """Windows of one pipeline and model version, compared with that version's reference profile.

    Thread-safe: :meth:`add` takes a lock only to update the reservoirs (O(features)); a closing window
    is swapped for a fresh one under the lock and compared/stored outside it, in the calling thread.
    """

    def __init__(
        self,
        db: ResultsDB,
        settings: MonitoringSettings,
        pipeline: str,
        model_version: str,
        profile: Mapping[str, Any] | None,
        metrics: Metrics | None = None,
        clock: Clock = time.time,
        source: str | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.db = db
        self.settings = settings
        self.pipeline = pipeline
        self.model_version = model_version
        self.metrics = metrics
        self.clock = clock
        self.source = source or default_source()
        self._rng = random.Random(seed)  # noqa: S311  # reservoir sampling, not secrets: seeded on purpose
        self._seed = seed
        self._windows = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.reference: Reference | None = None
        if profile is None:
            log.info(
                "pipeline %s, model version %s: no reference profile in the manifest, so no drift "
                "reports (models trained with `keeneye train` carry one)",
                pipeline,
                model_version,
            )
        else:
            self.reference = Reference.from_profile(profile)
        self._window = self._new_window()

    @property
    def active(self) -> bool:
        """False without a reference profile: nothing is collected, no report is ever written."""
        return self.reference is not None

    def _new_window(self) -> _Window:
        """A fresh window (called under the lock, or from ``__init__``)."""
        s = self.settings
        self._windows += 1
        return _Window(s.drift_reservoir, s.drift_embedding_reservoir, self._rng, self._windows)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _embedding(self, sample: DriftSample) -> FloatArray | None:
        ref = self.reference
        if sample.embedding is None or ref is None or ref.embedding is None:
            return None
        vector = np.asarray(sample.embedding, dtype=np.float32).reshape(-1)
        if vector.size != ref.embedding_dim:
            self._warn_once(
                "embedding_dim",
                "pipeline %s: live embeddings have %d dimensions, the reference %s: no MMD test",
                self.pipeline,
                vector.size,
                ref.embedding_dim,
            )
            return None
        return reduce_embedding(vector)

    def add(self, sample: DriftSample) -> DriftReportRecord | None:
        """Count one prediction; returns the report when this observation closed the window."""
        if self.reference is None:
            return None
        embedding = self._embedding(sample)
        known = self.reference.distributions  # a feature without a reference is not worth keeping
        features = {k: v for k, v in sample.features.items() if k in known}
        now = self.clock()
        with self._lock:
            window = self._window
            if window.start is None:
                window.start = now
            window.add(features, sample.classes, embedding)
            halfway = window.n == min(self.settings.drift_min_samples, self.settings.drift_window_size) // 2
            due = self._due(window, now)
            if due:
                self._window = self._new_window()
        if halfway:
            prewarm()  # a close is coming: load SciPy now, in the background
        return self._close(window, now) if due else None

    def _due(self, window: _Window, now: float) -> bool:
        s = self.settings
        if window.n >= s.drift_window_size:
            return True
        return (
            window.start is not None
            and now - window.start >= s.drift_window_seconds
            and (window.n >= s.drift_min_samples)
        )

    def tick(self) -> DriftReportRecord | None:
        """Close the window if its time is up (for a periodic caller: no observation needed)."""
        return self._close_if(lambda w, now: self._due(w, now))

    def flush(self) -> DriftReportRecord | None:
        """Close the window now if it holds ``drift_min_samples`` (shutdown, a model swap)."""
        return self._close_if(lambda w, _now: w.n >= self.settings.drift_min_samples)

    def _close_if(self, ready: Callable[[_Window, float], bool]) -> DriftReportRecord | None:
        if self.reference is None:
            return None
        now = self.clock()
        with self._lock:
            window = self._window
            if window.n == 0 or not ready(window, now):
                return None
            self._window = self._new_window()
        return self._close(window, now)

    def pending(self) -> int:
        """Observations in the open window."""
        with self._lock:
            return self._window.n

    def footprint(self) -> dict[str, int]:
        """What the open window holds: values kept, embeddings kept, bytes of buffers (bounded)."""
        with self._lock:
            w = self._window
            emb = w.embeddings
            return {
                "values": sum(r.kept for r in w.values.values()),
                "embeddings": emb.kept if emb else 0,
                "bytes": sum(r.buffer.nbytes for r in w.values.values()) + (emb.buffer.nbytes if emb else 0),
            }

    # -- closing --------------------------------------------------------------------------------------

    def compare(self, window: _Window) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(features, embedding)`` report parts of a window (pure: no I/O, reproducible per window)."""
        ref = self.reference
        assert ref is not None
        rng = np.random.default_rng((self._seed, window.index))  # own generator: closes may overlap
        features: dict[str, Any] = {}
        tested = {
            name: dist
            for name, dist in ref.distributions.items()
            if (r := window.values.get(name)) is not None and r.kept > 0
        }
        # Bonferroni over every test of one window (each feature's KS and the embedding's MMD), so a
        # window of unchanged data alarms about 5% of the time in all, not 5% per test.
        n_tests = len(tested) + (1 if ref.embedding is not None else 0)
        ks_alpha = stats.KS_P_ALARM / max(1, n_tests)
        for name, dist in tested.items():
            reservoir = window.values[name]
            features[name] = compare_feature(dist, reservoir.values(), rng, ks_alpha=ks_alpha)
            features[name]["n"] = reservoir.seen
        if ref.class_mix is not None and window.classes:
            features[CLASS_MIX] = compare_class_mix(ref.class_mix, window.classes)
        return features, self._compare_embeddings(window, alpha=stats.MMD_P_ALARM / max(1, n_tests))

    def _compare_embeddings(self, window: _Window, *, alpha: float = stats.MMD_P_ALARM) -> dict[str, Any]:
        ref = self.reference
        assert ref is not None
        current = window.embeddings
        if ref.embedding is None or current is None or current.kept < 2:
            return {}
        # The smallest p-value B permutations can give is 1/(B+1): enough of them that the corrected
        # level is reachable (twice over), whatever drift_permutations says.
        permutations = max(self.settings.drift_permutations, math.ceil(2 / alpha))
        mmd, p_value = stats.mmd_rbf(
            ref.embedding,
            current.values(),
            permutations=permutations,
            rng=np.random.default_rng((self._seed, window.index, 1)),
        )
        return {
            "source": ref.embedding_source,
            "dim": ref.embedding_dim,
            "reduced_dim": int(ref.embedding.shape[1]),
            "n_reference": len(ref.embedding),
            "n_current": current.kept,
            "mmd": _r(mmd),
            "p_value": float(f"{p_value:.6g}"),
            "permutations": permutations,
            "alpha": float(f"{alpha:.6g}"),
            "alarm": stats.mmd_alarm(p_value, alpha=alpha),
        }

    def _close(self, window: _Window, end: float) -> DriftReportRecord:
        features, embedding = self.compare(window)
        alarm = any(f["alarm"] for f in features.values()) or bool(embedding.get("alarm"))
        start = window.start if window.start is not None else end
        row = DriftReport(
            pipeline=self.pipeline,
            model_version=self.model_version,
            window_start=_utc(start),
            window_end=_utc(end),
            n=window.n,
            alarm=alarm,
            features=features,
            embedding=embedding,
            source=self.source,
            created_at=datetime.now(tz=UTC),
        )
        with self.db.session() as session:
            session.add(row)
            session.flush()
            record = DriftReportRecord.of(row)
        self._publish(record)
        log.info(
            "drift window closed",
            extra={
                "pipeline": self.pipeline,
                "model_version": self.model_version,
                "n": window.n,
                "alarm": alarm,
                "alarms": record.alarms,
            },
        )
        return record

    def _publish(self, record: DriftReportRecord) -> None:
        m = self.metrics
        if m is None:
            return
        p = self.pipeline
        for name, f in record.features.items():
            m.drift_score.labels(p, name, "psi").set(f["psi"])
            if f.get("ks") is not None:
                m.drift_score.labels(p, name, "ks").set(f["ks"])
        if record.embedding:
            m.drift_score.labels(p, EMBEDDING, "mmd_p").set(record.embedding["p_value"])
        m.drift_alarm.labels(p).set(1 if record.alarm else 0)
        m.drift_windows.labels(p, "true" if record.alarm else "false").inc()


# --------------------------------------------------------------------------------------------------
# Per-process registry
# --------------------------------------------------------------------------------------------------


class DriftMonitors:
    """The drift monitors of one process, one per pipeline, following the served model version.

    Call :meth:`observe` after every successful, non-cached prediction. A new model version (an alias
    move) flushes the old version's window and starts a new one with the new version's reference
    profile; late predictions of a version already replaced are ignored (they would otherwise flap
    the monitor back). Errors are logged and counted in :attr:`errors`, never raised.
    """

    _RETIRED_KEPT: Final = 16

    def __init__(
        self,
        db: ResultsDB,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        clock: Clock = time.time,
        source: str | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.source = source or default_source()
        self.errors = 0
        self._lock = threading.Lock()
        self._monitors: dict[str, tuple[DriftMonitor, weakref.ref[LoadedModel]]] = {}
        self._retired: dict[int, weakref.ref[LoadedModel]] = {}

    def get(self, pipeline: str) -> DriftMonitor | None:
        entry = self._monitors.get(pipeline)
        return entry[0] if entry else None

    def monitor_for(self, pipeline: str, loaded: LoadedModel) -> DriftMonitor | None:
        """The monitor for ``loaded``'s version (created or replaced as needed); None for a stale one."""
        version = str(loaded.ref.version)
        with self._lock:
            entry = self._monitors.get(pipeline)
            if entry is not None and entry[0].model_version == version:
                return entry[0]
            retired = self._retired.get(id(loaded))
            if retired is not None and retired() is loaded:
                return None
            monitor = DriftMonitor(
                self.db,
                self.settings.monitoring,
                pipeline,
                version,
                loaded.bundle.manifest.reference_profile,
                self.metrics,
                self.clock,
                self.source,
            )
            self._monitors[pipeline] = (monitor, weakref.ref(loaded))
            old = entry
            if old is not None:
                owner = old[1]()
                if owner is not None:
                    self._retired[id(owner)] = old[1]
                    while len(self._retired) > self._RETIRED_KEPT:
                        self._retired.pop(next(iter(self._retired)))
        if old is not None:
            self._safely(old[0].flush, pipeline)
        return monitor

    def observe(
        self,
        pipeline: str,
        loaded: LoadedModel,
        result: Mapping[str, Any],
        outputs: Sequence[npt.NDArray[Any]],
        image: Image | None = None,
    ) -> DriftReportRecord | None:
        """Count one prediction of ``loaded`` (its per-item ``outputs``, the pipeline ``result`` and the
        decoded ``image``); returns the report when this closed a window. Never raises."""
        try:
            monitor = self.monitor_for(pipeline, loaded)
            if monitor is None or not monitor.active:
                return None
            manifest = loaded.bundle.manifest
            embedding = embedding_of(loaded.model, manifest, outputs, image=image)
            return monitor.add(drift_sample(result, embedding=embedding))
        except Exception:
            self._count_error(pipeline)
            return None

    def _count_error(self, pipeline: str) -> None:
        with self._lock:
            self.errors += 1
        log.exception("drift monitoring failed for pipeline %s (the prediction is unaffected)", pipeline)

    def _safely(self, fn: Callable[[], DriftReportRecord | None], pipeline: str) -> DriftReportRecord | None:
        try:
            return fn()
        except Exception:
            self._count_error(pipeline)
            return None

    def _each(self, method: str) -> list[DriftReportRecord]:
        with self._lock:
            monitors = [(p, m) for p, (m, _) in self._monitors.items()]
        out = [self._safely(getattr(m, method), p) for p, m in monitors]
        return [r for r in out if r is not None]

    def tick(self) -> list[DriftReportRecord]:
        """Close every window whose time is up (call periodically; idle pipelines get their report)."""
        return self._each("tick")

    def flush_all(self) -> list[DriftReportRecord]:
        """Close every window holding ``drift_min_samples`` (at shutdown)."""
        return self._each("flush")
