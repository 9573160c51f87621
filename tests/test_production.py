"""Production monitoring: staleness 60 / 90 days, calibration drift > 0.10, weekly score stability."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt
import pytest

from governance.contract.comparison import WindowSnapshot
from governance.policy.checks import GateResult
from governance.policy.document import Policy, load_policy
from governance.policy.gates import evaluate_production
from governance.policy.production import daily_mean_score
from tests.governance_factory import BINS, T0, histogram, key, policy_with, snapshot

NOW = T0 + timedelta(days=15)
POLICY = load_policy()


def _day(i: int, scores: npt.NDArray[np.float64]) -> WindowSnapshot:
    end = NOW - timedelta(days=i - 1)
    return WindowSnapshot(
        key=key(), window=f"day-{i}", start=end - timedelta(days=1), end=end, metrics={"sample_count": scores.size},
        score_counts_production=histogram(scores), score_counts_candidate=histogram(scores), latest_event_ts=end,
    )


def _week(offsets: list[float], n: int = 5000, seed: int = 1) -> tuple[list[WindowSnapshot], list[float]]:
    """Daily windows whose production scores are Beta(2, 5) shifted by ``offsets``; also the raw daily means."""
    rng = np.random.default_rng(seed)
    days, raw_means = [], []
    for i, offset in enumerate(offsets, start=1):
        scores = np.clip(rng.beta(2.0, 5.0, n) + offset, 0.0, 1.0 - 1e-12)
        days.append(_day(i, scores))
        raw_means.append(float(scores.mean()))
    return days, raw_means


STABLE = [0.0, 0.005, -0.004, 0.002, 0.0, -0.003, 0.001]


def _production(
    snap: WindowSnapshot | None = None,
    daily: list[WindowSnapshot] | None = None,
    trained: datetime | None = NOW - timedelta(days=10),
    policy: Policy = POLICY,
) -> GateResult:
    week = daily if daily is not None else _week(STABLE)[0]
    return evaluate_production(policy, snap or snapshot(), week, trained, NOW)


def test_a_healthy_production_model() -> None:
    result = _production()
    assert result.verdict == "READY", [c.message for c in result.checks]
    assert [c.name for c in result.checks] == [
        "staleness_warning_days", "staleness_limit_days", "calibration_drift", "score_stability_sigma", "source_fresh",
    ]
    assert all(c.outcome == "PASS" for c in result.checks)


# Spec 2.1: "Model Staleness < 90 days, WARNING at 60 days". The shipped policy warns from day 60 and again
# from the 90-day limit and never blocks; a BLOCK at 90 exists only where a policy file writes it.
BLOCK_AT_90 = policy_with(**{"production.staleness_limit_days.enforcement": "BLOCK"})


@pytest.mark.parametrize(
    ("age", "warning", "limit", "limit_if_blocking"),
    [
        (timedelta(days=60) - timedelta(seconds=1), "PASS", "PASS", "PASS"),
        (timedelta(days=60), "WARN", "PASS", "PASS"),
        (timedelta(days=60, seconds=1), "WARN", "PASS", "PASS"),
        (timedelta(days=90) - timedelta(seconds=1), "WARN", "PASS", "PASS"),
        (timedelta(days=90), "WARN", "WARN", "FAIL"),
        (timedelta(days=90, seconds=1), "WARN", "WARN", "FAIL"),
    ],
)
def test_staleness_warns_at_60_and_90_days_and_blocks_only_by_policy_choice(
    age: timedelta, warning: str, limit: str, limit_if_blocking: str
) -> None:
    result = _production(trained=NOW - age)
    assert result.check("staleness_warning_days").outcome == warning
    assert result.check("staleness_limit_days").outcome == limit
    assert result.check("staleness_limit_days").enforcement == "WARNING"
    assert result.verdict == "READY"
    chosen = _production(trained=NOW - age, policy=BLOCK_AT_90)
    assert chosen.check("staleness_limit_days").outcome == limit_if_blocking
    assert chosen.verdict == ("BLOCKED" if limit_if_blocking == "FAIL" else "READY")


def test_unknown_or_future_training_date() -> None:
    unknown = _production(trained=None)
    assert unknown.check("staleness_limit_days").outcome == "WARN"  # a WARNING is never INCONCLUSIVE
    assert "not measured" in unknown.check("staleness_limit_days").message
    assert _production(trained=None, policy=BLOCK_AT_90).check("staleness_limit_days").outcome == "INCONCLUSIVE"
    assert _production(trained=NOW + timedelta(days=1)).check("staleness_limit_days").outcome == "ERROR"


# Spec 2.1 "Calibration Drift < 0.10": a strict bound, so a drift of exactly 0.10 (slope 1.10 or 0.90) breaches.
@pytest.mark.parametrize(
    ("slope", "expected"),
    [(1.0, "PASS"), (1.10, "FAIL"), (0.90, "FAIL"), (1.10 - 1e-9, "PASS"), (0.90 + 1e-9, "PASS"),
     (1.10 + 1e-9, "FAIL"), (0.90 - 1e-9, "FAIL"), (1.3, "FAIL"), (1.0999, "PASS")],
)
def test_calibration_drift_of_ten_percent_or_more_requests_recalibration(slope: float, expected: str) -> None:
    result = _production(snapshot(production_calibration_slope=slope))
    check = result.check("calibration_drift")
    assert check.outcome == expected
    assert check.value == pytest.approx(abs(slope - 1.0), abs=1e-12)
    assert (check.enforcement, check.comparator, check.threshold) == ("RECALIBRATE", ">=", 0.10)
    assert result.verdict == "READY"  # re-calibration is requested, promotion is not at stake


def test_calibration_drift_needs_labels() -> None:
    assert _production(snapshot(label_count=499)).check("calibration_drift").outcome == "INCONCLUSIVE"
    assert _production(snapshot(production_calibration_slope=None)).check("calibration_drift").outcome == "INCONCLUSIVE"


def test_daily_mean_is_within_half_a_bin_of_the_raw_mean() -> None:
    days, raw_means = _week(STABLE)
    for day, raw in zip(days, raw_means, strict=True):
        mean = daily_mean_score(day, "production")
        assert mean is not None and abs(mean - raw) <= 0.5 / BINS


def test_score_stability_sigma_equals_numpy_and_its_boundary() -> None:
    days, raw_means = _week([0.0, 0.08, -0.06, 0.07, -0.05, 0.04, -0.07])
    midpoints = (np.arange(BINS) + 0.5) / BINS
    expanded = [np.repeat(midpoints, np.asarray(d.score_counts_production)) for d in days]
    expected = float(np.std([values.mean() for values in expanded], ddof=1))
    check = _production(daily=days).check("score_stability_sigma")
    assert check.value == pytest.approx(expected, rel=1e-9)
    assert check.value == pytest.approx(float(np.std(raw_means, ddof=1)), abs=1e-3)
    assert (check.outcome, check.enforcement) == ("WARN", "WARNING")
    at = policy_with(**{"production.score_stability_sigma.threshold": check.value})
    assert _production(daily=days, policy=at).check("score_stability_sigma").outcome == "WARN"
    above = policy_with(**{"production.score_stability_sigma.threshold": math.nextafter(check.value, 1.0)})
    assert _production(daily=days, policy=above).check("score_stability_sigma").outcome == "PASS"


def test_score_stability_needs_a_full_week_of_enough_scores() -> None:
    days, _ = _week(STABLE)
    assert _production(daily=days[:6]).check("score_stability_sigma").outcome == "INCONCLUSIVE"
    thin, _ = _week(STABLE, n=999)
    assert _production(daily=thin).check("score_stability_sigma").outcome == "INCONCLUSIVE"
    assert _production(daily=days).check("score_stability_sigma").outcome == "PASS"


def test_stale_production_source_blocks() -> None:
    stale = _production(snapshot(latest_event_ts=NOW - timedelta(seconds=301)))
    assert (stale.check("source_fresh").outcome, stale.verdict) == ("FAIL", "BLOCKED")
