"""One drift window and its tests: the reference profile parsed once per monitor, bounded reservoirs
(Algorithm R, seeded) of the live values, and the comparison of a closed window with the reference —
PSI on the reference's quantile bins and a KS test per feature, PSI over the class mix
(:mod:`keeneye.monitoring.stats`). Memory stays bounded whatever the traffic; each observation costs
O(features).
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import threading
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
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
SHARE_VERSION: Final = 1  # the format of a window shared through drift_partials (Window.to_json)
MAX_SHARED_KEPT: Final = 100_000  # values one shared reservoir may hold: a bigger share is refused
MAX_SHARED_NAMES: Final = 1_000  # features or classes one share may name
_DTYPES: Final = {"float64": np.float64, "float32": np.float32}


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
    if _prewarmed:  # the common case, once per observation past half-way: no lock
        return
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


class ReservoirJson(TypedDict):
    """A reservoir in a shared window: its kept values, exact, as little-endian base64."""

    seen: int
    kept: int
    dtype: str
    shape: list[int]
    data: str


class WindowJson(TypedDict):
    """One process's share of an open window, as ``drift_partials.payload`` holds it."""

    version: int
    n: int
    start: float | None
    values: dict[str, ReservoirJson]
    classes: dict[str, int]
    embeddings: ReservoirJson | None


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
    """Algorithm R: a uniform sample of at most ``capacity`` of the values offered so far.

    ``kept`` is ``min(seen, capacity)`` for a reservoir fed by :meth:`offer`; a merged one
    (:func:`merge_reservoirs`) may keep fewer when a share kept fewer than it saw.
    """

    __slots__ = ("buffer", "capacity", "kept", "seen")

    def __init__(self, capacity: int, shape: tuple[int, ...] = (), dtype: Any = np.float64) -> None:
        self.capacity = capacity
        self.buffer = np.empty((capacity, *shape), dtype=dtype)
        self.seen = 0
        self.kept = 0

    def offer(self, value: Any, rng: random.Random) -> None:
        if self.seen < self.capacity:
            self.buffer[self.seen] = value
            self.kept = self.seen + 1
        else:
            j = rng.randrange(self.seen + 1)
            if j < self.capacity:
                self.buffer[j] = value
        self.seen += 1

    def values(self) -> npt.NDArray[Any]:
        return self.buffer[: self.kept]

    def to_json(self) -> ReservoirJson:
        kept = np.ascontiguousarray(self.values(), dtype=self.buffer.dtype.newbyteorder("<"))
        return {
            "seen": self.seen,
            "dtype": str(self.buffer.dtype),
            "shape": list(self.buffer.shape[1:]),
            "kept": self.kept,
            "data": base64.b64encode(kept.tobytes()).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Any, *, shape: tuple[int, ...] | None = None) -> _Reservoir:
        """A reservoir as :meth:`to_json` wrote it; :class:`ValueError` for anything else (a corrupt,
        foreign or oversized share is refused, never half-read). ``shape``: what each value must be."""
        if not isinstance(data, Mapping):
            raise ValueError("a reservoir must be an object")
        dtype = data.get("dtype")
        if dtype not in _DTYPES:
            raise ValueError(f"reservoir dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        raw_shape = data.get("shape")
        if not isinstance(raw_shape, list) or not all(
            isinstance(d, int) and 0 < d <= 4096 for d in raw_shape
        ):
            raise ValueError("reservoir shape must be a list of 1…4096")
        item_shape = tuple(raw_shape)
        if shape is not None and item_shape != shape:
            raise ValueError(f"reservoir values have shape {item_shape}, expected {shape}")
        seen, kept, encoded = data.get("seen"), data.get("kept"), data.get("data")
        if not isinstance(seen, int) or not isinstance(kept, int) or not 0 <= kept <= seen:
            raise ValueError("reservoir counts must satisfy 0 ≤ kept ≤ seen")
        if kept > MAX_SHARED_KEPT:
            raise ValueError(f"reservoir keeps {kept} values, more than {MAX_SHARED_KEPT}")
        if not isinstance(encoded, str):
            raise ValueError("reservoir data must be base64 text")
        np_dtype = np.dtype(_DTYPES[dtype]).newbyteorder("<")
        size = kept * int(np.prod(item_shape, dtype=np.int64)) * np_dtype.itemsize
        if len(encoded) != 4 * ((size + 2) // 3):
            raise ValueError("reservoir data does not match its kept count")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"reservoir data is not base64 ({exc})") from exc
        values = np.frombuffer(raw, dtype=np_dtype).reshape((kept, *item_shape))
        if not np.all(np.isfinite(values)):
            raise ValueError("reservoir values must be finite")
        out = cls(max(kept, 1), item_shape, _DTYPES[dtype])
        out.buffer[:kept] = values
        out.seen, out.kept = seen, kept
        return out


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

    def to_json(self) -> WindowJson:
        """This window as one process's share in ``drift_partials`` (exact values, base64)."""
        return {
            "version": SHARE_VERSION,
            "n": self.n,
            "start": self.start,
            "values": {name: r.to_json() for name, r in self.values.items()},
            "classes": dict(self.classes),
            "embeddings": self.embeddings.to_json() if self.embeddings is not None else None,
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        *,
        capacity: int,
        embedding_capacity: int,
        rng: random.Random,
        embedding_shape: tuple[int, ...] | None = None,
        features: Collection[str] | None = None,
    ) -> Window:
        """A share as :meth:`to_json` wrote it; :class:`ValueError` for a corrupt or foreign one.
        ``features``: the only feature names accepted (the reference's); others are dropped."""
        if data.get("version") != SHARE_VERSION:
            raise ValueError(f"share format {data.get('version')!r}, expected {SHARE_VERSION}")
        n, start = data.get("n"), data.get("start")
        if not isinstance(n, int) or n < 0:
            raise ValueError("share n must be a count")
        if start is not None and (not isinstance(start, int | float) or not np.isfinite(start)):
            raise ValueError("share start must be a timestamp")
        raw_values, raw_classes = data.get("values"), data.get("classes")
        if not isinstance(raw_values, Mapping) or not isinstance(raw_classes, Mapping):
            raise ValueError("share values and classes must be objects")
        if len(raw_values) > MAX_SHARED_NAMES or len(raw_classes) > MAX_SHARED_NAMES:
            raise ValueError(f"share names more than {MAX_SHARED_NAMES} features or classes")
        values = {
            str(k): _Reservoir.from_json(v, shape=())
            for k, v in raw_values.items()
            if features is None or k in features
        }
        if any(r.seen > n for r in values.values()):
            raise ValueError("a share's reservoir saw more values than the share has observations")
        classes: Counter[str] = Counter()
        for k, v in raw_classes.items():
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"class count of {k!r} must be a count")
            classes[str(k)] = v
        raw_emb = data.get("embeddings")
        embeddings = None if raw_emb is None else _Reservoir.from_json(raw_emb, shape=embedding_shape)
        if embeddings is not None and embeddings.seen > n:
            raise ValueError("a share's embeddings outnumber its observations")
        return cls(
            capacity,
            embedding_capacity,
            rng,
            start=float(start) if start is not None else None,
            n=n,
            values=values,
            classes=classes,
            embeddings=embeddings,
        )


def merge_reservoirs(
    parts: Sequence[_Reservoir], capacity: int, rng: np.random.Generator
) -> _Reservoir | None:
    """One reservoir that is a uniform sample of the union of what ``parts`` saw.

    Each part is a uniform sample of its own stream; how many values come from each is drawn from
    the multivariate hypergeometric law over the parts' ``seen`` counts (what a uniform draw from
    the union would take from each), then that many are taken uniformly from each part's kept
    values. A part that kept everything it saw is taken whole when that is the draw.
    """
    parts = [p for p in parts if p.seen > 0]
    if not parts:
        return None
    first = parts[0]
    shape, dtype = first.buffer.shape[1:], first.buffer.dtype
    total = sum(p.seen for p in parts)
    m = min(capacity, total, *(p.kept for p in parts if p.kept < p.seen))
    counts = [m] if len(parts) == 1 else rng.multivariate_hypergeometric([p.seen for p in parts], m).tolist()
    out = _Reservoir(capacity, shape, dtype)
    at = 0
    for part, count in zip(parts, counts, strict=True):
        if count == 0:
            continue
        kept = part.values()
        taken = kept if count == part.kept else kept[rng.choice(part.kept, size=count, replace=False)]
        out.buffer[at : at + count] = taken
        at += count
    out.seen, out.kept = total, at
    return out


def merge_windows(
    parts: Sequence[Window],
    *,
    capacity: int,
    embedding_capacity: int,
    rng: np.random.Generator,
    window_rng: random.Random,
) -> Window:
    """The union of ``parts`` as one window: counts and class mixes add up, reservoirs merge into
    uniform samples of the union (:func:`merge_reservoirs`), the start is the earliest."""
    starts = [p.start for p in parts if p.start is not None]
    merged = Window(capacity, embedding_capacity, window_rng, start=min(starts) if starts else None)
    merged.n = sum(p.n for p in parts)
    for p in parts:
        merged.classes.update(p.classes)
    for name in sorted({name for p in parts for name in p.values}):
        reservoir = merge_reservoirs(
            [r for p in parts if (r := p.values.get(name)) is not None], capacity, rng
        )
        if reservoir is not None:
            merged.values[name] = reservoir
    shapes = {p.embeddings.buffer.shape[1:] for p in parts if p.embeddings is not None}
    if len(shapes) == 1:  # a share of another dimension cannot be compared: the caller checked
        merged.embeddings = merge_reservoirs(
            [p.embeddings for p in parts if p.embeddings is not None], embedding_capacity, rng
        )
    return merged


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
