"""The three drift tests, pure numpy/SciPy: PSI on reference quantile bins, two-sample KS, RBF-MMD.

* :func:`psi` — Population Stability Index of a current sample against a reference described only by
  its quantiles (what a model's reference profile stores). The bins are the reference quantile
  edges, so each reference bin holds a known share (5 % for the profile's 21 quantile levels) and no
  reference sample is needed. Robust to any scale; alarm above :data:`PSI_ALARM` (0.2, the usual
  "significant shift" rule of thumb).
* :func:`ks` — two-sample Kolmogorov–Smirnov (SciPy) against the reference sample; alarm when the
  statistic is above :data:`KS_ALARM` *and* the p-value below :data:`KS_P_ALARM` (large windows make
  tiny, harmless differences "significant"; the statistic threshold keeps them quiet).
* :func:`mmd_rbf` — unbiased squared Maximum Mean Discrepancy between two sets of vectors
  (embeddings) with a Gaussian kernel, bandwidth by the median heuristic, and a permutation p-value;
  alarm below :data:`MMD_P_ALARM`. Multivariate: it sees changes of image *content* that no single
  scalar feature shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

PSI_ALARM: Final = 0.2
KS_ALARM: Final = 0.1
KS_P_ALARM: Final = 0.05
MMD_P_ALARM: Final = 0.05
PSI_EPS: Final = 1e-4
MIN_PER_BIN: Final = 25  # current values expected per PSI bin, see coarsen()
# MMD costs O((m + n)² · permutations): both sides are subsampled to at most this many vectors.
MMD_MAX_SAMPLES: Final = 500


def _finite(values: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    out: FloatArray = arr[np.isfinite(arr)]
    return out


def quantile_bins(
    reference_quantiles: Sequence[float], levels: Sequence[float] | None = None
) -> tuple[FloatArray, FloatArray]:
    """The PSI bins of a reference given as quantiles: ``(edges, reference shares)``.

    ``reference_quantiles[i]`` is the reference's quantile at ``levels[i]`` (default: evenly spaced
    from 0 to 1, e.g. 21 quantiles = every 5 %). The inner quantiles are the bin edges and the two
    outer bins are open-ended — ``(-inf, q1]``, ``(q1, q2]``, …, ``(q_last-1, +inf)`` — so a value
    beyond the reference's range still lands in a bin, and each bin holds ``levels[i+1] - levels[i]``
    of the reference.

    Repeated quantiles (a discrete feature, a constant) collapse into one edge whose reference share
    is the cumulative level of the *highest* quantile equal to it (including the minimum and the
    maximum): a feature that is always 1.0 gets the bins ``(-inf, 1.0]`` with share 1 and
    ``(1.0, +inf)`` with share 0, so an unchanged constant has PSI 0.
    """
    q = np.asarray(reference_quantiles, dtype=np.float64)
    if q.ndim != 1 or q.size < 3 or not np.all(np.isfinite(q)):
        raise ValueError("reference_quantiles must be at least 3 finite numbers (minimum, …, maximum)")
    if np.any(np.diff(q) < 0):
        raise ValueError("reference_quantiles must be non-decreasing")
    lv = np.linspace(0.0, 1.0, q.size) if levels is None else np.asarray(levels, dtype=np.float64)
    if lv.shape != q.shape:
        raise ValueError(f"{q.size} quantiles but {lv.size} levels")
    inner = np.unique(q[1:-1])
    # The reference CDF at each edge: the highest level whose quantile is ≤ the edge.
    cdf = lv[np.searchsorted(q, inner, side="right") - 1]
    shares = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return inner, np.clip(shares, 0.0, 1.0)


def coarsen(
    quantiles: Sequence[float], levels: Sequence[float], n: int, *, min_per_bin: int = MIN_PER_BIN
) -> tuple[list[float], list[float]]:
    """Every k-th reference quantile (and level), so that ``n`` current values fill each bin with
    ``min_per_bin`` on average; k divides the number of intervals, so the minimum and maximum stay.

    PSI is biased upwards by sampling noise: for ``n`` values from the very distribution of the
    reference it is about ``χ²(bins - 1) / n`` — 20 bins and 50 values average ≈ 0.38, an alarm on
    unchanged data. Fewer, wider bins (each still a known share of the reference) keep small windows
    honest: with 25 values per bin, unchanged data exceeds 0.2 in well under 1 % of windows of any
    size from 50 up, and a full window of 500 keeps all 20 bins.
    """
    intervals = len(quantiles) - 1
    steps = [k for k in range(1, intervals // 2 + 1) if intervals % k == 0]  # at least 2 bins remain
    if len(levels) != len(quantiles) or not steps:
        return [float(q) for q in quantiles], [float(v) for v in levels]
    step = next((k for k in steps if n * k >= min_per_bin * intervals), steps[-1])
    idx = range(0, intervals + 1, step)
    return [float(quantiles[i]) for i in idx], [float(levels[i]) for i in idx]


def bin_shares(edges: FloatArray, values: npt.ArrayLike) -> FloatArray:
    """Share of ``values`` in each bin ``(-inf, e0], (e0, e1], …, (e_last, +inf)``."""
    arr = _finite(values)
    counts = np.bincount(np.searchsorted(edges, arr, side="left"), minlength=edges.size + 1)
    shares: FloatArray = counts / max(arr.size, 1)
    return shares


def psi_of_shares(reference: npt.ArrayLike, current: npt.ArrayLike, *, eps: float = PSI_EPS) -> float:
    """``Σ (c - r) · ln(c / r)`` over bins, each share floored at ``eps`` (an empty bin is not ∞)."""
    r = np.maximum(np.asarray(reference, dtype=np.float64), eps)
    c = np.maximum(np.asarray(current, dtype=np.float64), eps)
    return float(np.sum((c - r) * np.log(c / r)))


def psi(
    reference_quantiles: Sequence[float],
    current: npt.ArrayLike,
    *,
    eps: float = PSI_EPS,
    levels: Sequence[float] | None = None,
) -> float:
    """PSI of ``current`` against a reference given by its quantiles (see :func:`quantile_bins`).

    0 for the same distribution (up to sampling noise: about ``bins / len(current)``), above
    :data:`PSI_ALARM` for a shift worth acting on. ``current`` must hold at least one finite value.
    """
    edges, ref_shares = quantile_bins(reference_quantiles, levels)
    if _finite(current).size == 0:
        raise ValueError("current holds no finite value")
    return psi_of_shares(ref_shares, bin_shares(edges, current), eps=eps)


def category_psi(
    reference: Mapping[str, float], current: Mapping[str, float], *, eps: float = PSI_EPS
) -> float:
    """PSI over categories (e.g. the predicted class mix): shares or counts, normalised here.

    A category the reference never saw counts with share ``eps`` there, so a new class raises PSI.
    """
    names = sorted(set(reference) | set(current))
    r = np.array([max(float(reference.get(n, 0.0)), 0.0) for n in names])
    c = np.array([max(float(current.get(n, 0.0)), 0.0) for n in names])
    if r.sum() <= 0 or c.sum() <= 0:
        raise ValueError("both class mixes need a positive total")
    return psi_of_shares(r / r.sum(), c / c.sum(), eps=eps)


def ks(reference_sample: npt.ArrayLike, current: npt.ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov–Smirnov (two-sided): ``(statistic, p-value)``."""
    from scipy.stats import ks_2samp  # SciPy's import is slow; only the closing of a window needs it

    ref, cur = _finite(reference_sample), _finite(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("both samples need at least one finite value")
    result: Any = ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def psi_alarm(value: float, *, threshold: float = PSI_ALARM) -> bool:
    return value > threshold


def ks_alarm(
    statistic: float, p_value: float, *, threshold: float = KS_ALARM, alpha: float = KS_P_ALARM
) -> bool:
    return statistic > threshold and p_value < alpha


def mmd_alarm(p_value: float, *, alpha: float = MMD_P_ALARM) -> bool:
    return p_value < alpha


# --------------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------------


def _squared_distances(z: FloatArray) -> FloatArray:
    sq = np.einsum("ij,ij->i", z, z)
    d2: FloatArray = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d2, 0.0, out=d2)  # rounding can make a distance of 0 slightly negative
    return d2


def median_bandwidth(d2: FloatArray) -> float:
    """The median heuristic: σ = median pairwise distance (off-diagonal), 1 when all points coincide."""
    upper = d2[np.triu_indices(d2.shape[0], k=1)]
    positive = upper[upper > 0]
    return float(np.sqrt(np.median(positive))) if positive.size else 1.0


def _mmd2_many(kernel: FloatArray, in_x: npt.NDArray[np.float64], m: int, n: int) -> FloatArray:
    """Unbiased MMD² for every row of ``in_x`` (P, N) — 1 where the point belongs to X, 0 to Y.

    ``kernel`` has a zero diagonal, so the quadratic forms are the sums over i ≠ j directly.
    """
    in_y = 1.0 - in_x
    kx = in_x @ kernel  # (P, N): for each point, the kernel summed over the X points
    xx = np.einsum("pn,pn->p", kx, in_x)
    xy = np.einsum("pn,pn->p", kx, in_y)
    yy = np.einsum("pn,pn->p", in_y @ kernel, in_y)
    out: FloatArray = xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)
    return out


def mmd_rbf(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    permutations: int = 200,
    rng: np.random.Generator,
    max_samples: int = MMD_MAX_SAMPLES,
) -> tuple[float, float]:
    """Unbiased MMD² between the rows of ``x`` (m, d) and ``y`` (n, d), and its permutation p-value.

    Kernel ``k(a, b) = exp(-‖a - b‖² / (2σ²))`` with σ the median pairwise distance of the pooled
    sample. The p-value is ``(1 + #{permuted MMD² ≥ observed}) / (1 + permutations)`` — never 0, and
    exact-level under the null. Each side is subsampled to ``max_samples`` rows (with ``rng``), so the
    cost is bounded: one (N, N) kernel and one (permutations, N) @ (N, N) product, N ≤ 2·max_samples.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x has {a.shape[1]} dimensions, y has {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("MMD needs at least 2 vectors on each side")
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    if len(a) > max_samples:
        a = a[rng.choice(len(a), size=max_samples, replace=False)]
    if len(b) > max_samples:
        b = b[rng.choice(len(b), size=max_samples, replace=False)]
    m, n = len(a), len(b)
    pooled = np.concatenate([a, b])
    d2 = _squared_distances(pooled)
    sigma = median_bandwidth(d2)
    kernel = np.exp(-d2 / (2.0 * sigma * sigma))
    np.fill_diagonal(kernel, 0.0)
    labels = np.zeros((permutations + 1, m + n))
    labels[0, :m] = 1.0
    for p in range(1, permutations + 1):
        labels[p, rng.permutation(m + n)[:m]] = 1.0
    stats = _mmd2_many(kernel, labels, m, n)
    observed = float(stats[0])
    p_value = (1.0 + float(np.sum(stats[1:] >= observed))) / (1.0 + permutations)
    return observed, p_value
