"""Simulation of the rollback triggers at 10, 100 and 10,000 pairs a minute: false triggers and time to fire.

Every decision goes through the real trigger code (:func:`governance.policy.triggers.step_minutes`, one
close per minute of event time); the simulation only draws what a window would hold (seeded numpy) and
turns it into the trigger's observation, as the worker's readout would:

* error rate (1-minute window, 5-minute sustain): errors ~ Binomial(pairs, p) each minute;
* P99 latency (1-minute window): requests slower than 1,000 ms ~ Binomial(pairs, share);
* score KL (1-hour window): per-minute 20-bin histograms of Beta(2, 5) production scores and of the
  candidate's, summed over the last hour; value, bias and standard error from
  :func:`governance.policy.bounds.kl_estimate`;
* calibration slope (1-day window, labels joined at once): scores Beta(2, 5) in the worker's logit bins,
  labels ~ Bernoulli(sigmoid(slope * logit(score))); slope from the worker's grouped logistic fit, standard
  error from :func:`governance.policy.bounds.logistic_slope_se`. Evaluated once an hour.

Models: *at the threshold* (error 1 %, 1 % of requests slower than 1 s, KL 0.25, slope 1.4: the worst
model that must not fire), *healthy* (error 0.1 %, 0.1 % slow, candidate scores = production's, slope 1.0),
*broken from t = 0* (error 50 %, 90 % slow, candidate Beta(8, 2) scores, slope 0.3), the breakage starting
on a minute boundary after an hour (a day for calibration) of healthy data.

The test asserts bounds computed from ``triggers.confidence`` (alpha = 1 - confidence): the false rate per
evaluation of the at-threshold and healthy models is at most alpha plus three Monte Carlo standard errors;
a broken model fires within the sustain period plus one minute (error rate, latency) or within its
window (KL: an hour, calibration: a day) at every traffic level. ``python -m tests.test_trigger_simulation``
prints the table of docs/gates.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from governance.policy.bounds import kl_estimate, logistic_slope_se
from governance.policy.document import Policy, load_policy
from governance.policy.triggers import MinuteClose, Observation, TriggerInputs, TriggerState, step_minutes
from streams.fold.aggregate import AggregateConfig
from streams.fold.metrics import logistic_calibration

pytestmark = pytest.mark.slow

POLICY = load_policy()
LEVELS = (10, 100, 10_000)  # pairs a minute
M0 = datetime(2026, 6, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
DRIFT_EDGES = np.linspace(0.0, 1.0, 21)
CONFIG = AggregateConfig()


def _fired_minutes(policy: Policy, name: str, observations: Sequence[Observation | None], every: int = 1) -> list[int]:
    """Minutes (1-based, the close that fired) at which ``name`` fired over consecutive closes ``every`` minutes."""
    closes = []
    for i, obs in enumerate(observations, start=1):
        end = M0 + i * every * MINUTE
        closes.append(MinuteClose(end, TriggerInputs({name: obs} if obs is not None else {}, end)))
    last = closes[-1].end
    _, fired = step_minutes(policy, TriggerState(), closes, TriggerInputs({}, last), last)
    return [int((f.fired_at - M0) / MINUTE) for f in fired if f.trigger == name]


def _rate_obs(hits: int, trials: int) -> Observation:
    return Observation(hits / trials if trials else None, trials, "1m", hits, trials)


def _latency_obs(slow: int, trials: int) -> Observation:
    # The P99 of a minute with ``slow`` requests above 1 s: above the threshold iff more than 1 % are slow.
    return Observation(1500.0 if slow > 0.01 * trials else 500.0, trials, "1m", slow, trials)


@dataclass(frozen=True)
class Row:
    trigger: str
    pairs_per_min: int
    at_threshold: tuple[int, int]  # (firings, evaluations)
    healthy: tuple[int, int]
    time_to_fire_s: list[float]  # of the broken model, one per run (inf: did not fire)

    def rate(self, which: tuple[int, int]) -> float:
        return which[0] / which[1]


def _rate_row(name: str, pairs: int, p_at: float, p_ok: float, p_broken: float, runs: int, seed: int) -> Row:
    rng = np.random.default_rng(seed)
    obs = _rate_obs if name == "error_rate" else _latency_obs
    sustain_min = max(1, math.ceil(getattr(POLICY.triggers, name).sustain_s / 60))

    def evaluations(p: float) -> tuple[int, int]:
        # One evaluation per run: the first close at which a trigger could fire (a full sustain period of
        # data); runs independent, so the firings are Binomial(runs, per-evaluation false rate).
        hits = rng.binomial(pairs, p, size=(runs, sustain_min))
        fired = sum(sustain_min in _fired_minutes(POLICY, name, [obs(int(h), pairs) for h in row]) for row in hits)
        return fired, runs

    at_threshold, healthy = evaluations(p_at), evaluations(p_ok)
    times = []
    for _ in range(min(runs, 300)):
        hits = rng.binomial(pairs, p_broken, size=sustain_min + 10)
        fired = _fired_minutes(POLICY, name, [obs(int(h), pairs) for h in hits])
        times.append(fired[0] * 60.0 if fired else math.inf)
    return Row(name, pairs, at_threshold, healthy, times)


def _beta_bins(a: float, b: float) -> npt.NDArray[np.float64]:
    p = np.diff(stats.beta.cdf(DRIFT_EDGES, a, b))
    return np.asarray(p / p.sum(), dtype=np.float64)


PRODUCTION = _beta_bins(2.0, 5.0)


def _kl_of(q: npt.NDArray[np.float64], p: npt.NDArray[np.float64]) -> float:
    qf, pf = np.maximum(q, 1e-4), np.maximum(p, 1e-4)
    qf, pf = qf / qf.sum(), pf / pf.sum()
    return float(np.sum(qf * np.log(qf / pf)))


def _at_kl(kl: float) -> npt.NDArray[np.float64]:
    from scipy import optimize

    a = optimize.brentq(lambda a: _kl_of(_beta_bins(a, 5.0), PRODUCTION) - kl, 2.0, 30.0)
    return _beta_bins(a, 5.0)


def _kl_obs(cand: npt.NDArray[np.int64], prod: npt.NDArray[np.int64]) -> Observation:
    estimate = kl_estimate(cand, prod, CONFIG.probability_floor)
    assert estimate is not None
    return Observation(estimate.value, int(prod.sum()), "1h", bias=estimate.bias, se=estimate.se)


def _kl_row(pairs: int, runs: int, seed: int) -> Row:
    rng = np.random.default_rng(seed)
    hour = 60 * pairs

    def evaluations(cand_bins: npt.NDArray[np.float64]) -> tuple[int, int]:
        fired = 0
        for _ in range(runs):
            obs = _kl_obs(rng.multinomial(hour, cand_bins), rng.multinomial(hour, PRODUCTION))
            fired += bool(_fired_minutes(POLICY, "kl_divergence", [obs]))
        return fired, runs

    at_threshold, healthy = evaluations(_at_kl(0.25)), evaluations(PRODUCTION)
    broken = _beta_bins(8.0, 2.0)
    times = []
    for _ in range(10):
        prod = list(rng.multinomial(pairs, PRODUCTION, size=60))
        cand = list(rng.multinomial(pairs, PRODUCTION, size=60))
        observations: list[Observation | None] = []
        for _minute in range(75):
            prod = [*prod[1:], rng.multinomial(pairs, PRODUCTION)]
            cand = [*cand[1:], rng.multinomial(pairs, broken)]
            observations.append(_kl_obs(np.sum(cand, axis=0), np.sum(prod, axis=0)))
        fired = _fired_minutes(POLICY, "kl_divergence", observations)
        times.append(fired[0] * 60.0 if fired else math.inf)
    return Row("kl_divergence", pairs, at_threshold, healthy, times)


_LOGIT_EDGES = np.linspace(-CONFIG.logit_limit, CONFIG.logit_limit, CONFIG.logit_bins + 1)
_SCORE_BINS = np.diff(stats.beta.cdf(1 / (1 + np.exp(-_LOGIT_EDGES)), 2.0, 5.0))
_SCORE_BINS = _SCORE_BINS / _SCORE_BINS.sum()
_CENTERS = CONFIG.logit_centers()


def _labels(n: int, slope: float, rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    counts = rng.multinomial(n, _SCORE_BINS)
    pos = rng.binomial(counts, 1 / (1 + np.exp(-slope * _CENTERS)))
    return counts - pos, pos


def _slope_obs(neg: npt.NDArray[np.int64], pos: npt.NDArray[np.int64]) -> Observation | None:
    fit = logistic_calibration(neg, pos, _CENTERS)
    if fit is None:
        return None
    return Observation(fit[0], int(neg.sum() + pos.sum()), "1d", se=logistic_slope_se(neg, pos, _CENTERS, *fit))


def _calibration_row(pairs: int, runs: int, seed: int) -> Row:
    rng = np.random.default_rng(seed)
    day = 1440 * pairs

    def evaluations(slope: float) -> tuple[int, int]:
        fired = sum(bool(_fired_minutes(POLICY, "calibration_slope", [_slope_obs(*_labels(day, slope, rng))]))
                    for _ in range(runs))
        return fired, runs

    at_threshold, healthy = evaluations(1.4), evaluations(1.0)
    times = []
    for _ in range(8):
        hours = [_labels(60 * pairs, 1.0, rng) for _ in range(24)]
        observations: list[Observation | None] = []
        for _hour in range(25):
            hours = [*hours[1:], _labels(60 * pairs, 0.3, rng)]
            negative, positive = np.sum([h[0] for h in hours], axis=0), np.sum([h[1] for h in hours], axis=0)
            observations.append(_slope_obs(negative, positive))
        fired = _fired_minutes(POLICY, "calibration_slope", observations, every=60)
        times.append(fired[0] * 60.0 if fired else math.inf)
    return Row("calibration_slope", pairs, at_threshold, healthy, times)


def simulate(runs: int = 4000) -> list[Row]:
    rows: list[Row] = []
    for i, pairs in enumerate(LEVELS):
        rows.append(_rate_row("error_rate", pairs, 0.01, 0.001, 0.5, runs, seed=100 + i))
        rows.append(_rate_row("p99_latency_ms", pairs, 0.01, 0.001, 0.9, runs, seed=200 + i))
        rows.append(_kl_row(pairs, max(runs // 4, 200), seed=300 + i))
        rows.append(_calibration_row(pairs, max(runs // 4, 200), seed=400 + i))
    return rows


_SIMULATED: list[Row] = []


def _rows() -> list[Row]:
    if not _SIMULATED:
        _SIMULATED.extend(simulate())
    return _SIMULATED


def _ceiling(evaluations: int) -> float:
    alpha = 1 - POLICY.triggers.confidence
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / evaluations)


@pytest.mark.parametrize("level", LEVELS)
def test_false_triggers_stay_within_alpha(level: int) -> None:
    for row in (r for r in _rows() if r.pairs_per_min == level):
        for which in (row.at_threshold, row.healthy):
            assert row.rate(which) <= _ceiling(which[1]), (row.trigger, level, which)


@pytest.mark.parametrize("level", LEVELS)
def test_a_broken_model_fires_within_sustain_plus_a_minute_or_its_window(level: int) -> None:
    limits: dict[str, Callable[[], float]] = {
        "error_rate": lambda: POLICY.triggers.error_rate.sustain_s + 60.0,
        "p99_latency_ms": lambda: POLICY.triggers.p99_latency_ms.sustain_s + 60.0,
        "kl_divergence": lambda: 3600.0 + 60.0,
        "calibration_slope": lambda: 86400.0 + 3600.0,
    }
    for row in (r for r in _rows() if r.pairs_per_min == level):
        assert max(row.time_to_fire_s) <= limits[row.trigger](), (row.trigger, level, row.time_to_fire_s)


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def table(rows: Sequence[Row]) -> str:
    """The markdown table of docs/gates.md."""
    out = ["| trigger | pairs/min | at the threshold: fired / evaluations | healthy: fired / evaluations | "
           "broken: time to fire, median (max) |", "|---|---|---|---|---|"]
    for row in rows:
        times = sorted(row.time_to_fire_s)
        out.append(
            f"| {row.trigger} | {row.pairs_per_min:,} | {row.at_threshold[0]} / {row.at_threshold[1]:,} "
            f"({row.rate(row.at_threshold):.2%}) | {row.healthy[0]} / {row.healthy[1]:,} | "
            f"{_duration(times[len(times) // 2])} ({_duration(times[-1])}) |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    print(table(sorted(_rows(), key=lambda r: (
        ["error_rate", "p99_latency_ms", "kl_divergence", "calibration_slope"].index(r.trigger), r.pairs_per_min))))
