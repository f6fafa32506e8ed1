"""One drift window and its tests: the reference profile parsed once per monitor, bounded reservoirs
(Algorithm R, seeded) of the live values, and the comparison of a closed window with the reference —
PSI on the reference's quantile bins and a KS test per feature, PSI over the class mix
(:mod:`keeneye.monitoring.stats`). Memory stays bounded whatever the traffic; each observation costs
O(features).
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NotRequired, TypedDict

import numpy as np
import numpy.typing as npt

from keeneye.monitoring import stats
from keeneye.monitoring.drift.samples import EMBEDDING, FloatArray, reduce_embedding

log = logging.getLogger(__name__)

REPORT_SAMPLE: Final = 200  # current values stored per feature, for plots
CLASS_MIX: Final = "class_mix"
_DIGITS: Final = 6


def rounded(value: float) -> float:
    """A value as reports store it (six digits)."""
    return round(float(value), _DIGITS)


def rounded_list(values: npt.ArrayLike) -> list[float]:
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


# --------------------------------------------------------------------------------------------------
# The reference profile, parsed once per monitor
# --------------------------------------------------------------------------------------------------


class DistributionJson(TypedDict):
    """A distribution as a drift report shows it (the reference's or the window's)."""

    n: int
    quantiles: list[float]
    mean: float
    std: float


class ReferenceSummaryJson(DistributionJson):
    levels: list[float]


class CurrentSummaryJson(DistributionJson):
    sample: list[float]


class FeatureDriftJson(TypedDict):
    """One numeric feature's drift in a report (``n``: values the window saw, set by the monitor)."""

    psi: float
    bins: int
    ks: float
    ks_p: float
    ks_alpha: float
    alarm: bool
    reference: ReferenceSummaryJson
    current: CurrentSummaryJson
    n: NotRequired[int]


class ClassMixDriftJson(TypedDict):
    """The predicted-class mix's drift in a report (no KS for categories)."""

    psi: float
    ks: None
    ks_p: None
    alarm: bool
    n: int
    reference: dict[str, float]
    current: dict[str, float]


class EmbeddingDriftJson(TypedDict, total=False):
    """The embedding MMD test of a report; empty when the window or the reference has no embeddings."""

    source: str | None
    dim: int | None
    reduced_dim: int
    n_reference: int
    n_current: int
    mmd: float
    p_value: float
    permutations: int
    alpha: float
    alarm: bool


@dataclass(frozen=True)
class _Distribution:
    quantiles: list[float]
    levels: list[float]
    sample: npt.NDArray[np.float64]
    n: int
    mean: float
    std: float

    def summary(self) -> DistributionJson:
        return {
            "n": self.n,
            "quantiles": self.quantiles,
            "mean": rounded(self.mean),
            "std": rounded(self.std),
        }


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
class Window:
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


def utc_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _current_summary(
    values: npt.NDArray[np.float64], levels: Sequence[float], rng: np.random.Generator
) -> CurrentSummaryJson:
    sample = values if values.size <= REPORT_SAMPLE else rng.choice(values, size=REPORT_SAMPLE, replace=False)
    return {
        "n": int(values.size),
        "quantiles": rounded_list(np.quantile(values, levels)),
        "mean": rounded(values.mean()),
        "std": rounded(values.std()),
        "sample": rounded_list(sample),
    }


def compare_feature(
    ref: _Distribution,
    values: npt.NDArray[np.float64],
    rng: np.random.Generator,
    *,
    ks_alpha: float = stats.KS_P_ALARM,
) -> FeatureDriftJson:
    """PSI and KS of one feature's window against its reference, with what the plots need.

    ``ks_alpha`` is the KS significance level for this feature: the monitor passes 0.05 divided by
    the number of features tested together (Bonferroni), so a window of unchanged data alarms about
    5% of the time in all, not 5% per feature.
    """
    quantiles, levels = stats.coarsen(ref.quantiles, ref.levels, values.size)
    p = stats.psi(quantiles, values, levels=levels)
    d, p_value = stats.ks(ref.sample, values)
    return {
        "psi": rounded(p),
        "bins": len(quantiles) - 1,
        "ks": rounded(d),
        "ks_p": float(f"{p_value:.6g}"),
        "ks_alpha": float(f"{ks_alpha:.6g}"),
        "alarm": stats.psi_alarm(p) or stats.ks_alarm(d, p_value, alpha=ks_alpha),
        "reference": {**ref.summary(), "levels": ref.levels},
        "current": _current_summary(values, ref.levels, rng),
    }


def compare_class_mix(reference: Mapping[str, float], counts: Mapping[str, int]) -> ClassMixDriftJson:
    total = sum(counts.values())
    current = {k: v / total for k, v in sorted(counts.items())}
    p = stats.category_psi(reference, current)
    return {
        "psi": rounded(p),
        "ks": None,
        "ks_p": None,
        "alarm": stats.psi_alarm(p),
        "n": int(total),
        "reference": {k: rounded(v) for k, v in reference.items()},
        "current": {k: rounded(v) for k, v in current.items()},
    }
