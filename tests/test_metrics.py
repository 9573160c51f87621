"""The pure metric functions against scipy and scikit-learn on the same bins, and their None cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.special import expit
from scipy.stats import entropy
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from governance.errors import SketchError
from streams.fold import metrics

FLOOR = 1e-4


def _floored(counts: np.ndarray) -> np.ndarray:
    p = counts / counts.sum()
    p = np.maximum(p, FLOOR)
    probs: np.ndarray = p / p.sum()
    return probs


def _histograms(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    edges = np.linspace(0.0, 1.0, 21)
    cand = np.histogram(rng.beta(2.0, 5.0, 5000), edges)[0]
    prod = np.histogram(rng.beta(2.5, 5.0, 8000), edges)[0]
    cand[-3:] = 0  # empty bins exercise the floor
    return cand, prod


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_divergences_match_scipy(seed: int) -> None:
    cand, prod = _histograms(seed)
    p, q = _floored(cand.astype(float)), _floored(prod.astype(float))
    assert metrics.kl_divergence(cand, prod) == pytest.approx(entropy(p, q), rel=1e-12)
    assert metrics.psi(cand, prod) == pytest.approx(entropy(p, q) + entropy(q, p), rel=1e-12)
    assert metrics.js_divergence(cand, prod) == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-9)


def test_divergences_of_identical_and_empty_histograms() -> None:
    cand, _ = _histograms(4)
    assert metrics.kl_divergence(cand, cand * 3) == pytest.approx(0.0, abs=1e-15)
    assert metrics.psi(cand, cand) == pytest.approx(0.0, abs=1e-15)
    empty = np.zeros_like(cand)
    for fn in (metrics.kl_divergence, metrics.psi, metrics.js_divergence):
        assert fn(cand, empty) is None
        assert fn(empty, cand) is None
    with pytest.raises(SketchError, match="bin both alike"):
        metrics.psi(cand, cand[:-1])
    with pytest.raises(SketchError, match="non-negative"):
        metrics.psi(cand, -cand)


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(0, 1000), min_size=1, max_size=30), fraction=st.floats(0.01, 1.0))
def test_top_selection_takes_exactly_the_fraction_from_the_top(counts: list[int], fraction: float) -> None:
    array = np.array(counts, dtype=float)
    taken = metrics.top_selection(array, fraction)
    assert taken.sum() == pytest.approx(fraction * array.sum(), abs=1e-9)
    assert np.all(taken <= array + 1e-9) and np.all(taken >= 0)
    partial = np.flatnonzero((taken > 1e-9) & (taken < array - 1e-9))
    assert partial.size <= 1
    full = np.flatnonzero(taken > 1e-9)
    if full.size:  # everything above the lowest taken bin is taken whole
        assert np.allclose(taken[full.min() + 1 :], array[full.min() + 1 :])


def _labelled(seed: int, n: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(-1.5, 1.5, n)
    y = (rng.uniform(size=n) < expit(0.4 + 0.9 * x)).astype(int)
    return x, y


def _binned(x: np.ndarray, y: np.ndarray, width: float = 0.02) -> tuple[np.ndarray, ...]:
    edges = np.arange(-12.0, 12.0 + width / 2, width)
    neg = np.histogram(x[y == 0], edges)[0]
    pos = np.histogram(x[y == 1], edges)[0]
    return neg, pos, 0.5 * (edges[:-1] + edges[1:])


@pytest.mark.parametrize("seed", [5, 6])
def test_auc_within_0_002_of_sklearn(seed: int) -> None:
    x, y = _labelled(seed)
    neg, pos, _ = _binned(x, y)
    auc = metrics.auc_roc(neg, pos)
    assert auc is not None and abs(auc - roc_auc_score(y, x)) < 0.002


def test_auc_counts_a_tie_as_half_like_sklearn() -> None:
    rng = np.random.default_rng(8)
    x = rng.choice([-2.0, -1.0, 0.0, 1.0], size=5000)  # every value a big tie
    y = (rng.uniform(size=5000) < expit(x)).astype(int)
    neg, pos, _ = _binned(x + 0.01, y)  # values sit inside bins, not on edges
    assert metrics.auc_roc(neg, pos) == pytest.approx(roc_auc_score(y, x), abs=1e-12)


def test_auc_is_none_for_one_class() -> None:
    counts = np.array([3, 0, 5])
    assert metrics.auc_roc(counts, np.zeros(3)) is None
    assert metrics.auc_roc(np.zeros(3), counts) is None


def _exact_top(x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[float, float]:
    """Precision and recall of the top fraction, a tie group at the cut taken in proportion."""
    wanted, taken, hits = fraction * x.size, 0.0, 0.0
    for value in np.unique(x)[::-1]:
        group = x == value
        share = min(1.0, max(0.0, (wanted - taken) / group.sum()))
        taken += share * group.sum()
        hits += share * y[group].sum()
    return hits / wanted, hits / y.sum()


def test_precision_recall_at_10_within_0_01() -> None:
    x, y = _labelled(9)
    neg, pos, _ = _binned(x, y)
    precision, recall = metrics.precision_recall_at(neg, pos, 0.1)
    top = np.argsort(-x)[: int(np.ceil(0.1 * x.size))]
    assert precision == pytest.approx(y[top].mean(), abs=0.01)
    assert recall == pytest.approx(y[top].sum() / y.sum(), abs=0.01)


def test_precision_recall_with_ties_at_the_cut() -> None:
    rng = np.random.default_rng(10)
    x = np.round(rng.normal(size=4000), 1) + 0.005  # a handful of values, big tie groups
    y = (rng.uniform(size=4000) < expit(x)).astype(int)
    neg, pos, _ = _binned(x, y)
    exact = _exact_top(x, y, 0.1)
    got = metrics.precision_recall_at(neg, pos, 0.1)
    assert got == pytest.approx(exact, abs=1e-9)


def test_precision_recall_edge_cases() -> None:
    assert metrics.precision_recall_at(np.zeros(4), np.zeros(4)) == (None, None)
    precision, recall = metrics.precision_recall_at(np.array([5, 5, 5, 5]), np.zeros(4))
    assert precision == 0.0 and recall is None  # all negative: nobody to recall
    precision, recall = metrics.precision_recall_at(np.zeros(4), np.array([1, 2, 3, 4]))
    assert precision == pytest.approx(1.0) and recall == pytest.approx(0.1)


def _sklearn_fit(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> tuple[float, float]:
    # C=inf is scikit-learn's spelling of penalty=None (deprecated since 1.8).
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000)
    model.fit(x[:, None], y, sample_weight=weight)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def test_calibration_is_the_grouped_maximum_likelihood_fit() -> None:
    x, y = _labelled(12, 5000)
    neg, pos, centers = _binned(x, y)
    got = metrics.logistic_calibration(neg, pos, centers)
    keep = (neg + pos) > 0
    grid = np.concatenate([centers[keep], centers[keep]])
    labels = np.concatenate([np.zeros(keep.sum(), int), np.ones(keep.sum(), int)])
    weight = np.concatenate([neg[keep], pos[keep]]).astype(float)
    exact = _sklearn_fit(grid[weight > 0], labels[weight > 0], weight[weight > 0])
    assert got == pytest.approx(exact, abs=1e-4)


@pytest.mark.parametrize("seed", [13, 14])
def test_calibration_within_0_02_of_sklearn_on_raw_values(seed: int) -> None:
    x, y = _labelled(seed)
    neg, pos, centers = _binned(x, y)
    fit = metrics.logistic_calibration(neg, pos, centers)
    assert fit is not None
    slope, intercept = fit
    exact_slope, exact_intercept = _sklearn_fit(x, y)
    assert abs(slope - exact_slope) < 0.02 and abs(intercept - exact_intercept) < 0.02


def test_calibration_is_none_when_the_fit_does_not_exist() -> None:
    centers = np.array([-1.0, 0.0, 1.0, 2.0])
    assert metrics.logistic_calibration(np.array([3, 2, 0, 0]), np.zeros(4), centers) is None
    # (quasi-)separated labels: the likelihood grows without bound
    assert metrics.logistic_calibration(np.array([3, 2, 0, 0]), np.array([0, 1, 4, 1]), centers) is None
    assert metrics.logistic_calibration(np.array([0, 0, 3, 2]), np.array([4, 1, 0, 0]), centers) is None
    # everything in one bin: no slope to estimate
    assert metrics.logistic_calibration(np.array([0, 5, 0, 0]), np.array([0, 5, 0, 0]), centers) is None
    with pytest.raises(SketchError, match="centers"):
        metrics.logistic_calibration(np.ones(4), np.ones(4), centers[:3])


def test_calibration_of_a_reversed_but_overlapping_model() -> None:
    x, y = _labelled(15, 5000)
    neg, pos, centers = _binned(-x, y)
    fit = metrics.logistic_calibration(neg, pos, centers)
    assert fit is not None
    slope = fit[0]
    assert slope == pytest.approx(_sklearn_fit(-x, y)[0], abs=0.02)
    assert slope < 0


def test_flip_rate_refuses_inconsistent_inputs() -> None:
    fine = np.array([1.0, 2.0, 0.0, 0.0])
    band = np.zeros((4, 3))
    band[0, 1], band[1, 1] = 1, 2
    joint = np.zeros((2, 2))
    assert metrics.decision_flip_rate(band, joint, fine, fine, 2, 0) == pytest.approx(
        (2 * 0.3 - 2 * 0.3 * (0.3 / 2)) / 3  # every pair in the cut bin: 0.15 selected of each, alike
    )
    with pytest.raises(SketchError, match="same pairs"):
        metrics.decision_flip_rate(band, joint, fine * 2, fine * 2, 2, 0)
    with pytest.raises(SketchError, match="band must be"):
        metrics.decision_flip_rate(np.zeros((4, 2)), joint, fine, fine, 2, 0)
    assert metrics.decision_flip_rate(np.zeros((4, 3)), joint, np.zeros(4), np.zeros(4), 2, 0) is None


@settings(max_examples=60, deadline=None)
@given(
    cand=st.lists(st.integers(0, 50), min_size=8, max_size=8),
    prod=st.lists(st.integers(0, 50), min_size=8, max_size=8),
    floor=st.sampled_from([1e-4, 1e-2, 0.0]),
)
def test_divergences_are_the_three_divergences_bit_for_bit(cand: list[int], prod: list[int], floor: float) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):  # floor 0 with empty bins: NaN or inf, on both sides
        got = metrics.divergences(np.array(cand), np.array(prod), floor)
        want = (metrics.kl_divergence(cand, prod, floor), metrics.psi(cand, prod, floor),
                metrics.js_divergence(cand, prod, floor))  # fmt: skip
    assert [repr(v) for v in got] == [repr(v) for v in want]  # repr: NaN equals NaN, -0.0 differs from 0.0
    if sum(cand) and sum(prod) and floor > 0:
        p, q = np.maximum(np.array(cand) / sum(cand), floor), np.maximum(np.array(prod) / sum(prod), floor)
        p, q = p / p.sum(), q / q.sum()
        assert got[0] == pytest.approx(entropy(p, q), rel=1e-9, abs=1e-12)
        assert got[2] == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-9, abs=1e-12)


def test_divergences_refuse_negative_counts_like_each_divergence() -> None:
    with pytest.raises(SketchError, match="non-negative"):
        metrics.divergences([1, -1], [1, 1])
