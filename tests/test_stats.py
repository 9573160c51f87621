"""Statistical tests from histograms and sums, against scipy on the raw samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from governance.contract.comparison import DeltaSums
from governance.errors import SketchError
from governance.policy.stats import ks_two_sample, mean_abs_delta_ci, paired_t
from tests.governance_factory import histogram, sample_pair, sums_of


def _quantized(rng: np.random.Generator, n: int, bins: int, a: float, b: float) -> np.ndarray:
    """Scores at bin midpoints: binning loses nothing, so binned and raw KS must agree exactly."""
    index = np.clip((rng.beta(a, b, size=n) * bins).astype(int), 0, bins - 1)
    midpoints: np.ndarray = (index + 0.5) / bins
    return midpoints


@pytest.mark.parametrize(("n_a", "n_b", "bins", "shape_b"), [(3000, 2000, 100, 2.2), (20_000, 15_000, 1000, 2.05),
                                                            (500, 5000, 50, 2.0)])
def test_ks_equals_scipy_asymptotic_on_quantized_scores(n_a: int, n_b: int, bins: int, shape_b: float) -> None:
    rng = np.random.default_rng(n_a + n_b)
    a = _quantized(rng, n_a, bins, 2.0, 5.0)
    b = _quantized(rng, n_b, bins, shape_b, 5.0)
    expected = stats.ks_2samp(a, b, method="asymp")
    result = ks_two_sample(histogram(a, bins), histogram(b, bins))
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12, abs=1e-15)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert (result.n, result.n_other) == (n_a, n_b)


def test_ks_detects_a_shift_and_accepts_identical_distributions() -> None:
    production, candidate = sample_pair(20_000, shift=0.03)
    shifted = ks_two_sample(histogram(production), histogram(candidate))
    assert shifted.p_value is not None and shifted.p_value < 1e-6
    rng = np.random.default_rng(3)
    same = ks_two_sample(histogram(rng.beta(2, 5, 20_000)), histogram(rng.beta(2, 5, 20_000)))
    assert same.p_value is not None and same.p_value > 0.001


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_a=st.integers(50, 3000),
    n_b=st.integers(50, 3000),
    bins=st.sampled_from([20, 100, 1000]),
    shift=st.floats(-0.1, 0.1),
)
def test_binned_ks_bounds_the_raw_statistic(seed: int, n_a: int, n_b: int, bins: int, shift: float) -> None:
    # The documented binning effect: D_binned <= D_raw <= D_binned + largest bin mass, and so p_binned >= p_raw.
    rng = np.random.default_rng(seed)
    a = rng.beta(2.0, 5.0, n_a)
    b = np.clip(rng.beta(2.0, 5.0, n_b) + shift, 0.0, 1.0 - 1e-12)
    ha, hb = histogram(a, bins), histogram(b, bins)
    raw = stats.ks_2samp(a, b, method="asymp")
    binned = ks_two_sample(ha, hb)
    assert binned.statistic is not None and binned.p_value is not None
    mass = max(ha.max() / n_a, hb.max() / n_b)
    assert binned.statistic <= raw.statistic + 1e-12
    assert raw.statistic <= binned.statistic + mass + 1e-12
    assert binned.p_value >= raw.pvalue - 1e-12


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [([1, 2], [1, 2, 3], "identical bins"), ([0, 0], [1, 1], "non-empty"), ([1, -1], [1, 1], "non-negative")],
)
def test_ks_refuses_incompatible_histograms(a: list[int], b: list[int], match: str) -> None:
    with pytest.raises(SketchError, match=match):
        ks_two_sample(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64))


@pytest.mark.parametrize(("n", "shift"), [(2, 0.0), (30, 0.0), (1000, 0.002), (50_000, 0.0005)])
def test_paired_t_equals_scipy_ttest_rel(n: int, shift: float) -> None:
    production, candidate = sample_pair(n, seed=n, shift=shift)
    expected = stats.ttest_rel(candidate, production)
    result = paired_t(sums_of(production, candidate))
    # Tolerance: the sums lose a little to rounding (relative error ~ n * 1e-16 in the variance).
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-8)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-7, abs=1e-12)
    assert result.n == n


@settings(max_examples=40, deadline=None)
@given(deltas=st.lists(st.floats(-1, 1, allow_nan=False), min_size=3, max_size=200), seed=st.integers(0, 1000))
def test_paired_t_property(deltas: list[float], seed: int) -> None:
    d = np.array(deltas)
    if np.ptp(d) < 1e-6:  # near-constant samples: the variance from sums is all rounding
        return
    production = np.random.default_rng(seed).uniform(0, 1, d.size)
    candidate = production + d
    expected = stats.ttest_rel(candidate, production)
    result = paired_t(sums_of(production, candidate))
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-6, abs=1e-9)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-9)


def test_paired_t_zero_variance() -> None:
    zero = paired_t(DeltaSums(n=10, sum_delta=0.0, sum_delta_sq=0.0, sum_abs_delta=0.0, sum_abs_delta_sq=0.0))
    assert (zero.statistic, zero.p_value) == (None, 1.0)
    constant = paired_t(DeltaSums(n=4, sum_delta=0.4, sum_delta_sq=0.04, sum_abs_delta=0.4, sum_abs_delta_sq=0.04))
    assert (constant.statistic, constant.p_value) == (None, 0.0)


@pytest.mark.parametrize(("n", "confidence"), [(2, 0.95), (40, 0.9), (5000, 0.95), (20_000, 0.99)])
def test_mean_abs_delta_ci_equals_scipy_t_interval(n: int, confidence: float) -> None:
    production, candidate = sample_pair(n, seed=n)
    abs_d = np.abs(candidate - production)
    low, high = stats.t.interval(confidence, n - 1, loc=abs_d.mean(), scale=stats.sem(abs_d))
    result = mean_abs_delta_ci(sums_of(production, candidate), confidence)
    assert result.statistic == pytest.approx(abs_d.mean(), rel=1e-12)
    assert result.ci_low == pytest.approx(low, rel=1e-8)
    assert result.ci_high == pytest.approx(high, rel=1e-8)
    assert (result.n, result.confidence) == (n, confidence)


def test_mean_abs_delta_ci_covers_the_true_mean() -> None:
    # |N(0, 0.05)| has mean 0.05 * sqrt(2 / pi); a 95 % interval must cover it in about 95 % of 400 runs.
    rng = np.random.default_rng(11)
    truth = 0.05 * np.sqrt(2 / np.pi)
    covered = 0
    for _ in range(400):
        production = rng.uniform(0.2, 0.8, 200)
        result = mean_abs_delta_ci(sums_of(production, production + rng.normal(0, 0.05, 200)), 0.95)
        assert result.ci_low is not None and result.ci_high is not None
        covered += result.ci_low <= truth <= result.ci_high
    assert 0.92 <= covered / 400 <= 0.98


def test_sums_tests_need_two_pairs() -> None:
    one = DeltaSums(n=1, sum_delta=0.1, sum_delta_sq=0.01, sum_abs_delta=0.1, sum_abs_delta_sq=0.01)
    with pytest.raises(SketchError, match="at least 2 pairs"):
        paired_t(one)
    with pytest.raises(SketchError, match="at least 2 pairs"):
        mean_abs_delta_ci(one, 0.95)
    with pytest.raises(ValueError, match="confidence"):
        mean_abs_delta_ci(DeltaSums(3, 0.1, 0.1, 0.1, 0.1), 1.0)
