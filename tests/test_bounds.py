"""The confidence bounds of the rollback triggers, against scipy and against simulation."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from governance.policy.bounds import (
    kl_estimate,
    logistic_slope_se,
    normal_lower_bound,
    normal_upper_bound,
    rate_lower_bound,
    z_value,
)
from streams.fold import metrics as fold_metrics
from streams.fold.aggregate import AggregateConfig, fold_labels

BINS = 20
FLOOR = 1e-4
EDGES = np.linspace(0.0, 1.0, BINS + 1)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
@pytest.mark.parametrize(("x", "n"), [(0, 1), (1, 1), (1, 10), (2, 10), (5, 10), (10, 10), (3, 400), (61, 1200)])
def test_rate_lower_bound_is_clopper_pearson(x: int, n: int, confidence: float) -> None:
    expected = 0.0 if x == 0 else stats.beta.ppf(1 - confidence, x, n - x + 1)
    assert rate_lower_bound(x, n, confidence) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # The two-sided exact interval at 2c - 1 has the same lower end (scipy's own Clopper-Pearson).
    low = stats.binomtest(x, n).proportion_ci(confidence_level=2 * confidence - 1, method="exact").low
    assert rate_lower_bound(x, n, confidence) == pytest.approx(low, rel=1e-9, abs=1e-15)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 5000), share=st.floats(0.0, 1.0), theta=st.floats(1e-4, 0.5),
       confidence=st.sampled_from([0.9, 0.95, 0.99]))
def test_bound_above_threshold_is_the_exact_one_sided_binomial_test(
    n: int, share: float, theta: float, confidence: float
) -> None:
    x = round(share * n)
    bound = rate_lower_bound(x, n, confidence)
    p_value = stats.binomtest(x, n, theta, alternative="greater").pvalue
    if abs(p_value - (1 - confidence)) > 1e-9:  # away from the tie the two decisions agree exactly
        assert (bound > theta) == (p_value < 1 - confidence), (x, n, theta, bound, p_value)


def test_bound_arguments_are_checked() -> None:
    for args in ((1, 0, 0.99), (-1, 10, 0.99), (11, 10, 0.99), (1, 10, 1.0), (1, 10, 0.0)):
        with pytest.raises(ValueError):
            rate_lower_bound(*args)
    assert normal_lower_bound(1.0, 0.1, 0.99) == pytest.approx(1.0 - stats.norm.ppf(0.99) * 0.1)
    assert normal_upper_bound(1.0, 0.1, 0.99) == pytest.approx(1.0 + stats.norm.ppf(0.99) * 0.1)
    assert z_value(0.95) == pytest.approx(1.6448536269514722)


def _bin_probabilities(a: float, b: float) -> npt.NDArray[np.float64]:
    p = np.diff(stats.beta.cdf(EDGES, a, b))
    return np.asarray(p / p.sum(), dtype=np.float64)


def _floored(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    q = np.maximum(p, FLOOR)
    return np.asarray(q / q.sum(), dtype=np.float64)


def _true_kl(q: npt.NDArray[np.float64], p: npt.NDArray[np.float64]) -> float:
    qf, pf = _floored(q), _floored(p)
    return float(np.sum(qf * np.log(qf / pf)))


PRODUCTION = _bin_probabilities(2.0, 5.0)


def _shifted(kl: float) -> npt.NDArray[np.float64]:
    """Beta(a, 5) bins whose KL against Beta(2, 5) is ``kl``: a smooth shift of the whole distribution."""
    a = optimize.brentq(lambda a: _true_kl(_bin_probabilities(a, 5.0), PRODUCTION) - kl, 2.0, 20.0)
    return _bin_probabilities(a, 5.0)


def _tail(kl: float) -> npt.NDArray[np.float64]:
    """Production with some mass moved to the top bin, where production has almost none."""
    def mixed(m: float) -> npt.NDArray[np.float64]:
        q = PRODUCTION * (1 - m)
        q[-1] += m
        return q
    m = optimize.brentq(lambda m: _true_kl(mixed(m), PRODUCTION) - kl, 1e-6, 0.9)
    return mixed(m)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000))
def test_kl_estimate_is_the_workers_kl(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    cand = rng.multinomial(n, _shifted(0.2))
    prod = rng.multinomial(n + 7, PRODUCTION)
    estimate = kl_estimate(cand, prod, FLOOR)
    assert estimate is not None
    expected = fold_metrics.kl_divergence(cand, prod, FLOOR)
    assert expected is not None
    assert estimate.value == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert kl_estimate(np.zeros(BINS), prod) is None
    with pytest.raises(ValueError):
        kl_estimate(cand, prod[:-1])


@pytest.mark.parametrize("target", [_shifted(0.25)], ids=["shift"])
def test_kl_bias_and_standard_error_match_the_sampling_distribution(target: npt.NDArray[np.float64]) -> None:
    # On a smooth shift the bootstrap's moments are the sampling distribution's. (Where production is almost
    # empty and the smoothing meets the floor, around 5,000 pairs for the tail shape, the bias is off but the
    # standard error is larger than the spread: the coverage test below holds there too.)
    rng = np.random.default_rng(5)
    n, runs = 5000, 800
    cand, prod = rng.multinomial(n, target, size=runs), rng.multinomial(n, PRODUCTION, size=runs)
    estimates = [kl_estimate(c, p, FLOOR) for c, p in zip(cand, prod, strict=True)]
    values = np.array([e.value for e in estimates if e is not None])
    ses = np.array([e.se for e in estimates if e is not None])
    biases = np.array([e.bias for e in estimates if e is not None])
    truth = _true_kl(target, PRODUCTION)
    # The mean error of the plug-in value is the estimated bias, to within a fifth of the spread of the value.
    assert abs((values.mean() - truth) - biases.mean()) < 0.2 * values.std()
    # The bootstrap standard error is the spread of the value, to within 15 % (never much smaller).
    assert 0.85 * values.std() < ses.mean() < 1.5 * values.std()
    # Deterministic: the same histograms give the same estimate.
    assert kl_estimate(cand[0], prod[0], FLOOR) == estimates[0]


@pytest.mark.parametrize("target", [_shifted(0.25), _tail(0.25)], ids=["shift", "tail"])
@pytest.mark.parametrize("n", [60, 600, 5000, 600_000])
def test_kl_lower_bound_errs_at_most_alpha_at_the_threshold(target: npt.NDArray[np.float64], n: int) -> None:
    """A candidate exactly at KL 0.25 must show KL > 0.25 with 99 % confidence in at most 1 % of windows."""
    confidence, runs = 0.99, 1500
    rng = np.random.default_rng(n)
    cand, prod = rng.multinomial(n, target, size=runs), rng.multinomial(n, PRODUCTION, size=runs)
    crossed = 0
    for c, p in zip(cand, prod, strict=True):
        estimate = kl_estimate(c, p, FLOOR)
        assert estimate is not None
        crossed += estimate.lower_bound(confidence) > 0.25
    alpha = 1 - confidence
    assert crossed / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), crossed


def test_a_clear_score_shift_is_shown_on_900_pairs() -> None:
    """Issue 14: KL 0.5 at 900 pairs an hour never fired (the trigger waited for 1,000 pairs)."""
    rng = np.random.default_rng(900)
    cand, prod = rng.multinomial(900, _shifted(0.5), size=300), rng.multinomial(900, PRODUCTION, size=300)
    shown = [e.lower_bound(0.99) > 0.25 for c, p in zip(cand, prod, strict=True) if (e := kl_estimate(c, p, FLOOR))]
    assert np.mean(shown) >= 0.9


def _labels(n: int, slope: float, rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Negative / positive counts per logit bin of ``n`` labels whose true calibration slope is ``slope``."""
    config = AggregateConfig()
    scores = rng.beta(2.0, 5.0, n)
    x = np.log(scores / (1 - scores))
    y = (rng.random(n) < 1 / (1 + np.exp(-slope * x))).astype(np.int8)
    fields = fold_labels(scores, scores, y, config)
    neg, pos = np.zeros(config.logit_bins, np.int64), np.zeros(config.logit_bins, np.int64)
    for key, value in fields.items():
        if key.startswith(("yc0:", "yc1:")):
            (neg if key[2] == "0" else pos)[int(key[4:])] += value
    return neg, pos


@pytest.mark.parametrize(("n", "slope"), [(3000, 1.0), (3000, 1.4), (500, 0.6)])
def test_slope_standard_error_matches_the_sampling_distribution(n: int, slope: float) -> None:
    config = AggregateConfig()
    rng = np.random.default_rng(n)
    slopes, ses = [], []
    for _ in range(600):
        neg, pos = _labels(n, slope, rng)
        fit = fold_metrics.logistic_calibration(neg, pos, config.logit_centers())
        assert fit is not None
        se = logistic_slope_se(neg, pos, config.logit_centers(), *fit)
        assert se is not None
        slopes.append(fit[0])
        ses.append(se)
    assert 0.85 * np.std(slopes) < np.mean(ses) < 1.2 * np.std(slopes)
    # The Wald interval at 99 % misses the true slope on its upper side about 1 % of the time.
    missed = np.mean(np.array(slopes) - z_value(0.99) * np.array(ses) > slope)
    assert missed <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / 600)


def test_slope_standard_error_is_none_without_information() -> None:
    centers = AggregateConfig().logit_centers()
    empty = np.zeros(centers.size)
    assert logistic_slope_se(empty, empty, centers, 1.0, 0.0) is None
    one_bin = empty.copy()
    one_bin[10] = 50
    assert logistic_slope_se(one_bin, one_bin, centers, 1.0, 0.0) is None
    with pytest.raises(ValueError):
        logistic_slope_se(empty[:-1], empty, centers, 1.0, 0.0)
