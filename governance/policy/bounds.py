"""One-sided confidence bounds behind the rollback triggers' statistical decisions (spec 8.1).

A trigger fires when the data show its threshold is crossed with the policy's confidence ``c``
(``triggers.confidence``), never on a point estimate alone. Each function below gives the bound for one
kind of measurement; the trigger compares it with the threshold (:mod:`governance.policy.triggers`).

* :func:`rate_lower_bound` - exact Clopper-Pearson lower bound of a binomial proportion:
  ``beta.ppf(1 - c, x, n - x + 1)`` (0 when ``x`` = 0). ``bound > theta`` is the exact one-sided binomial
  test of ``p <= theta`` at level ``1 - c`` (``scipy.stats.binomtest(x, n, theta, "greater")``), so on
  data of a model whose true rate is at most ``theta`` it fires with probability at most ``1 - c``.
  Used for the error rate (errors among requests) and for P99 latency as an order-statistic bound: the
  P99 is above ``T`` exactly when more than 1 % of requests take longer than ``T``, so the P99 trigger
  bounds the share of requests slower than ``T`` from below.
* :func:`kl_estimate` - the plug-in KL divergence of two binned samples (floored and renormalised bin
  probabilities, as the worker computes it) with its bias and standard error from a smoothed parametric
  bootstrap (seeded from the counts: deterministic). The lower bound is ``KL - bias - z_c * se``. A
  first-order (delta-method) formula was tried and dropped: with a bin empty by chance on the production
  side it errs far above ``1 - c`` on a few hundred pairs, and where production is truly almost empty it
  cannot show anything at all; the bootstrap stays at or below ``1 - c`` (beta-shaped and tail-heavy
  shifts, 30 to 600,000 pairs, ``tests/test_bounds.py``) and fires on a smooth shift to KL 0.5 from about
  600 pairs. Where production has almost no mass, no bound can show KL > 0.25 on a few thousand pairs
  (the data cannot tell a rare bin from an empty one), and none does.
* :func:`logistic_slope_se` - standard error of the slope of the grouped logistic calibration fit, from
  the label-joined counts per score bin (the inverse Fisher information at the fitted parameters); the
  calibration trigger fires when the Wald interval ``slope +- z_c * se`` lies wholly outside the band.
* :func:`normal_lower_bound` / :func:`normal_upper_bound` - ``estimate -+ z_c * se``.

Pure numpy / scipy and deterministic; O(bins), except :func:`kl_estimate`: O(resamples x bins), about a
millisecond for 20 bins.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats as _sps

__all__ = [
    "KLEstimate",
    "kl_estimate",
    "logistic_slope_se",
    "normal_lower_bound",
    "normal_upper_bound",
    "rate_lower_bound",
    "z_value",
]

_RESAMPLES = 400


def _confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def z_value(confidence: float) -> float:
    """The one-sided standard normal quantile ``z_c`` (2.326 at c = 0.99)."""
    return float(_sps.norm.ppf(_confidence(confidence)))


def rate_lower_bound(successes: int, trials: int, confidence: float) -> float:
    """Exact (Clopper-Pearson) one-sided lower confidence bound of a binomial proportion.

    ``successes`` out of ``trials``; raises ValueError when ``trials`` < 1 or ``successes`` is outside
    ``[0, trials]``.
    """
    _confidence(confidence)
    if trials < 1:
        raise ValueError(f"a rate bound needs at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside [0, {trials}]")
    if successes == 0:
        return 0.0
    return float(_sps.beta.ppf(1.0 - confidence, successes, trials - successes + 1))


def normal_lower_bound(estimate: float, se: float, confidence: float) -> float:
    """``estimate - z_c * se``."""
    return estimate - z_value(confidence) * se


def normal_upper_bound(estimate: float, se: float, confidence: float) -> float:
    """``estimate + z_c * se``."""
    return estimate + z_value(confidence) * se


@dataclass(frozen=True)
class KLEstimate:
    """A plug-in KL divergence with its first-order bias and delta-method standard error."""

    value: float
    bias: float
    se: float

    def lower_bound(self, confidence: float) -> float:
        """``value - bias - z_c * se``: below the true divergence with probability about ``c``."""
        return self.value - self.bias - z_value(confidence) * self.se


def _probabilities(counts: npt.NDArray[np.float64], floor: float) -> npt.NDArray[np.float64]:
    """Rows of bin counts to floored, renormalised probabilities (the worker's KL convention)."""
    p = np.maximum(counts / counts.sum(axis=-1, keepdims=True), floor)
    result: npt.NDArray[np.float64] = p / p.sum(axis=-1, keepdims=True)
    return result


def _kl_rows(cand: npt.NDArray[np.float64], prod: npt.NDArray[np.float64], floor: float) -> npt.NDArray[np.float64]:
    q, p = _probabilities(cand, floor), _probabilities(prod, floor)
    result: npt.NDArray[np.float64] = np.sum(q * np.log(q / p), axis=-1)
    return result


def _seed(*arrays: npt.NDArray[np.float64]) -> int:
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a, dtype=np.float64).tobytes() for a in arrays)).digest()
    return int.from_bytes(digest[:8], "big")


def kl_estimate(
    candidate: npt.ArrayLike, production: npt.ArrayLike, floor: float = 1e-4, resamples: int = _RESAMPLES
) -> KLEstimate | None:
    """``D_KL(candidate || production)`` of two histograms on the same bins, with its bias and standard error.

    The value is the worker's (``streams.fold.metrics.kl_divergence``: bin probabilities floored at
    ``floor`` and renormalised, natural log). Bias and standard error come from a parametric bootstrap:
    ``resamples`` pairs of multinomial samples of the two sizes, drawn from each side's counts plus half a
    count per bin (so a bin empty by chance can still be drawn), with the KL of those smoothed
    distributions as the bootstrap's truth: ``bias = mean(KL*) - KL(smoothed)``, ``se = std(KL*)``. The
    generator is seeded from the counts, so the same histograms always give the same numbers.

    None when either side is empty; ValueError on histograms of different shapes or negative counts.
    """
    cand = np.asarray(candidate, dtype=np.float64)
    prod = np.asarray(production, dtype=np.float64)
    if cand.ndim != 1 or cand.shape != prod.shape:
        raise ValueError(f"KL needs two histograms on the same bins, got shapes {cand.shape} and {prod.shape}")
    if (cand < 0).any() or (prod < 0).any() or not (np.isfinite(cand).all() and np.isfinite(prod).all()):
        raise ValueError("KL: bin counts must be finite and non-negative")
    n_c, n_p = int(round(cand.sum())), int(round(prod.sum()))
    if n_c <= 0 or n_p <= 0:
        return None
    value = float(_kl_rows(cand, prod, floor))
    smooth_c, smooth_p = (cand + 0.5) / (n_c + 0.5 * cand.size), (prod + 0.5) / (n_p + 0.5 * prod.size)
    truth = float(_kl_rows(smooth_c, smooth_p, floor))
    rng = np.random.default_rng(_seed(cand, prod))
    draws = _kl_rows(
        rng.multinomial(n_c, smooth_c, size=resamples).astype(np.float64),
        rng.multinomial(n_p, smooth_p, size=resamples).astype(np.float64),
        floor,
    )
    return KLEstimate(value=value, bias=float(draws.mean()) - truth, se=float(draws.std(ddof=1)))


def logistic_slope_se(
    negative: npt.ArrayLike,
    positive: npt.ArrayLike,
    centers: npt.ArrayLike,
    slope: float,
    intercept: float,
) -> float | None:
    """Standard error of the slope of ``y ~ sigmoid(intercept + slope * x)`` fitted on grouped labels.

    ``negative`` / ``positive`` are the label counts per bin, ``centers`` the bins' x (logit(score)), and
    ``slope`` / ``intercept`` the maximum-likelihood fit on them. The variance is the (slope, slope)
    entry of the inverse Fisher information ``sum m p (1 - p) [1 x; x x**2]``; None when it is singular.
    """
    neg = np.asarray(negative, dtype=np.float64)
    pos = np.asarray(positive, dtype=np.float64)
    x = np.asarray(centers, dtype=np.float64)
    if not neg.shape == pos.shape == x.shape:
        raise ValueError("logistic_slope_se: counts and centers must have one value per bin")
    m = neg + pos
    p = 0.5 * (1.0 + np.tanh(0.5 * (intercept + slope * x)))
    w = m * p * (1.0 - p)
    total = float(w.sum())
    if not total > 0.0:
        return None
    # Centred on the weighted mean of x, the information matrix is diagonal and its slope entry is the
    # Schur complement sum w (x - mean)**2, without the cancellation of s0 * s2 - s1**2.
    centred = x - float(np.sum(w * x)) / total
    information = float(np.sum(w * centred * centred))
    if not information > 0.0 or not math.isfinite(information):
        return None
    return 1.0 / math.sqrt(information)
