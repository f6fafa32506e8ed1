"""PSI, KS and MMD against hand-computed values, brute-force sums and SciPy on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from keeneye.monitoring import stats

UNIFORM_Q = np.linspace(0.0, 1.0, 21)  # the quantiles of U(0, 1) at every 5 %


def test_quantile_bins_of_a_continuous_reference_hold_five_percent_each() -> None:
    edges, shares = stats.quantile_bins(UNIFORM_Q)
    assert edges.tolist() == pytest.approx(UNIFORM_Q[1:-1].tolist())  # outer bins open-ended
    assert shares.tolist() == pytest.approx([0.05] * 20)


@pytest.mark.parametrize(
    ("quantiles", "edges", "shares"),
    [
        ([1.0] * 21, [1.0], [1.0, 0.0]),  # a constant: everything at or below it
        # 10 % of the reference exactly at its minimum 0, then evenly spread: one (-inf, 0] bin of 10 %.
        (
            [0.0] * 3 + [0.05 * k for k in range(3, 21)],
            [0.0] + [0.05 * k for k in range(3, 20)],
            [0.1] + [0.05] * 18,
        ),
        ([0, 0, 1, 1, 2], [0.0, 1.0], [0.25, 0.5, 0.25]),  # 5 levels: 0, .25, .5, .75, 1
    ],
)
def test_quantile_bins_merge_repeated_quantiles(
    quantiles: list[float], edges: list[float], shares: list[float]
) -> None:
    got_edges, got_shares = stats.quantile_bins(quantiles)
    assert got_edges.tolist() == pytest.approx(edges)
    assert got_shares.tolist() == pytest.approx(shares)
    assert got_shares.sum() == pytest.approx(1.0)


def test_psi_of_identical_data_is_about_zero() -> None:
    data = np.random.default_rng(1).normal(5.0, 2.0, 10_000)
    assert stats.psi(np.quantile(data, UNIFORM_Q), data) == pytest.approx(0.0, abs=1e-3)
    assert stats.psi([1.0] * 21, np.ones(300)) == 0.0  # a constant that stays constant


def test_psi_of_a_one_bin_shift_matches_the_hand_computation() -> None:
    # One value in each of bins 2..20 of U(0, 1) and one beyond the maximum (the open last bin):
    # bin 1 empties, bin 20 doubles, bins 2..19 keep their 5 %.
    current = [0.05 * k + 0.025 for k in range(1, 20)] + [1.5]
    eps = 1e-4
    expected = (eps - 0.05) * math.log(eps / 0.05) + (0.10 - 0.05) * math.log(0.10 / 0.05)
    assert expected == pytest.approx(0.34477, abs=1e-5)
    assert stats.psi(UNIFORM_Q, current, eps=eps) == pytest.approx(expected, rel=1e-12)


def test_psi_separates_same_from_shifted_normals() -> None:
    rng = np.random.default_rng(7)
    reference = np.quantile(rng.normal(0, 1, 5000), UNIFORM_Q)
    same = stats.psi(reference, rng.normal(0, 1, 500))
    shifted = stats.psi(reference, rng.normal(0.5, 1, 500))
    assert same < 0.1 and not stats.psi_alarm(same)
    assert shifted > 0.2 and stats.psi_alarm(shifted)


def test_category_psi_matches_the_hand_computation_and_sees_new_classes() -> None:
    expected = 0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5)
    assert stats.category_psi({"a": 0.5, "b": 0.5}, {"a": 80, "b": 20}) == pytest.approx(expected)
    assert stats.category_psi({"a": 0.5, "b": 0.5}, {"a": 5, "b": 5}) == 0.0
    assert stats.category_psi({"a": 1.0}, {"a": 9, "new": 1}) > 0.2


@pytest.mark.parametrize(
    ("quantiles", "current", "message"),
    [
        (UNIFORM_Q, [], "no finite value"),
        (UNIFORM_Q, [float("nan")], "no finite value"),
        (UNIFORM_Q[::-1], [0.5], "non-decreasing"),
        ([0.0, 1.0], [0.5], "at least 3"),
    ],
)
def test_psi_refuses_unusable_input(quantiles: list[float], current: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stats.psi(quantiles, current)


def test_ks_matches_the_exact_small_sample_value_and_scipy() -> None:
    # Disjoint samples of 3 and 3: D = 1; exact two-sided p = 2 / C(6, 3) = 0.1.
    assert stats.ks([1, 2, 3], [4, 5, 6]) == pytest.approx((1.0, 0.1))
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(0, 1, 500), rng.normal(0, 1, 500), rng.normal(0.5, 1, 500)
    same, shifted = stats.ks(a, b), stats.ks(a, c)
    reference = ks_2samp(a, c)
    assert shifted == pytest.approx((reference.statistic, reference.pvalue))
    assert not stats.ks_alarm(*same) and same[1] > 0.05
    assert stats.ks_alarm(*shifted) and shifted[0] > 0.1 and shifted[1] < 1e-6


@pytest.mark.parametrize(
    ("statistic", "p", "alarm"),
    [(0.11, 0.01, True), (0.09, 0.001, False), (0.5, 0.06, False), (0.1, 0.01, False)],
)
def test_ks_alarm_needs_both_a_large_statistic_and_a_small_p(statistic: float, p: float, alarm: bool) -> None:
    assert stats.ks_alarm(statistic, p) is alarm


def _brute_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook unbiased MMD² with explicit sums, σ = median pairwise distance of the pool."""
    pool = np.concatenate([x, y])
    dists = [np.linalg.norm(pool[i] - pool[j]) for i in range(len(pool)) for j in range(i + 1, len(pool))]
    sigma = float(np.median(dists))

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-float(np.sum((a - b) ** 2)) / (2 * sigma**2))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_equals_the_brute_force_unbiased_estimate() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(0, 1, (5, 2)), rng.normal(0.7, 1, (6, 2))
    mmd, p = stats.mmd_rbf(x, y, permutations=50, rng=np.random.default_rng(0))
    assert mmd == pytest.approx(_brute_mmd2(x, y), rel=1e-9)
    assert 1 / 51 <= p <= 1.0


def test_mmd_p_value_is_small_for_shifted_gaussians_and_not_for_the_same() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (150, 8))
    same = stats.mmd_rbf(x, rng.normal(0, 1, (120, 8)), permutations=200, rng=np.random.default_rng(1))
    shifted = stats.mmd_rbf(x, rng.normal(0.5, 1, (120, 8)), permutations=200, rng=np.random.default_rng(1))
    assert same[1] > 0.05 and not stats.mmd_alarm(same[1])
    assert abs(same[0]) < 0.01
    # No permutation beats the observed value: the +1-corrected minimum, never 0.
    assert shifted[1] == pytest.approx(1 / 201) and stats.mmd_alarm(shifted[1])
    assert shifted[0] > 0.05


def test_mmd_bounds_the_sample_size_and_checks_shapes() -> None:
    rng = np.random.default_rng(2)
    big = rng.normal(0, 1, (3000, 4))
    mmd, p = stats.mmd_rbf(big, rng.normal(3, 1, (40, 4)), permutations=20, rng=rng, max_samples=100)
    assert p == pytest.approx(1 / 21) and mmd > 0.1
    with pytest.raises(ValueError, match="dimensions"):
        stats.mmd_rbf(big[:5], rng.normal(0, 1, (5, 3)), permutations=5, rng=rng)
    with pytest.raises(ValueError, match="at least 2"):
        stats.mmd_rbf(big[:1], big[:5], permutations=5, rng=rng)


@pytest.mark.parametrize(("n", "bins"), [(500, 20), (2000, 20), (200, 5), (100, 4), (50, 2), (10, 2)])
def test_coarsen_keeps_25_values_per_bin_and_the_extremes(n: int, bins: int) -> None:
    quantiles, levels = stats.coarsen(UNIFORM_Q.tolist(), UNIFORM_Q.tolist(), n)
    assert len(quantiles) - 1 == bins and len(levels) == len(quantiles)
    assert (quantiles[0], quantiles[-1]) == (0.0, 1.0) and levels == pytest.approx(quantiles)


def test_small_windows_of_unchanged_data_rarely_exceed_the_psi_threshold() -> None:
    rng = np.random.default_rng(0)
    reference = np.quantile(rng.normal(0, 1, 20_000), UNIFORM_Q).tolist()
    levels = UNIFORM_Q.tolist()
    windows = [rng.normal(0, 1, 50) for _ in range(300)]
    raw = [stats.psi(reference, w) for w in windows]  # 20 bins for 50 values: noise alone alarms
    quantiles, coarse_levels = stats.coarsen(reference, levels, 50)
    coarse = [stats.psi(quantiles, w, levels=coarse_levels) for w in windows]
    assert np.mean(np.array(raw) > stats.PSI_ALARM) > 0.5
    assert np.mean(np.array(coarse) > stats.PSI_ALARM) < 0.02
