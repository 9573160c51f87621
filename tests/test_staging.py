"""STAGING gate (canary versus production): every boundary of the spec 2.1 STAGING table."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from governance.contract.comparison import WindowSnapshot
from governance.policy.checks import GateResult
from governance.policy.document import load_policy
from governance.policy.gates import evaluate_staging_gate
from tests.governance_factory import T0, policy_with, snapshot

NOW = T0 + timedelta(days=15)  # the factory's window end
STARTED = NOW - timedelta(days=5)
POLICY = load_policy()


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def above(x: float) -> float:
    return math.nextafter(x, math.inf)


def _staging(snap: WindowSnapshot | None = None, share: float | None = 0.05, started: datetime = STARTED) -> GateResult:
    return evaluate_staging_gate(POLICY, snap or snapshot("canary"), started, share, NOW)


def test_a_good_canary_is_ready() -> None:
    result = _staging()
    assert result.verdict == "READY", [c.message for c in result.blocking]
    assert [c.name for c in result.checks] == [
        "min_duration_met", "duration_guidance", "canary_traffic_share", "p99_latency_ms", "error_rate",
        "kl_divergence", "feature_drift[amount]", "feature_drift[country]", "source_fresh",
    ]


# (metric, boundary, at, just below, just above): spec 2.2 validate_staging_gate and the 2.1 table.
STAGING_BOUNDARIES = [
    ("p99_latency_ms", 500.0, "FAIL", "PASS", "FAIL"),
    ("error_rate", 0.001, "FAIL", "PASS", "FAIL"),
    ("kl_divergence", 0.10, "WARN", "PASS", "WARN"),
]


@pytest.mark.parametrize(("metric", "boundary", "at", "low", "high"), STAGING_BOUNDARIES)
def test_staging_boundaries(metric: str, boundary: float, at: str, low: str, high: str) -> None:
    for value, expected in ((boundary, at), (below(boundary), low), (above(boundary), high)):
        result = _staging(snapshot("canary", metrics={metric: value}))
        assert result.check(metric).outcome == expected
        assert result.verdict == ("BLOCKED" if expected == "FAIL" else "READY")


def test_feature_drift_is_judged_per_feature() -> None:
    for value, expected in ((0.05, "WARN"), (below(0.05), "PASS"), (above(0.05), "WARN")):
        result = _staging(snapshot("canary", feature_drift={"amount": value, "country": 0.0}))
        assert result.check("feature_drift[amount]").outcome == expected
        assert result.check("feature_drift[country]").outcome == "PASS"
        assert result.verdict == "READY"


def test_a_canary_without_features_can_be_promoted_with_the_warning_on_record() -> None:
    """Spec 2: feature drift is a WARNING, so a canary whose events carry no features (or a feature sent
    by one side only) is promoted; the gate records the warning as not measured."""
    none = _staging(snapshot("canary", feature_drift={}))
    check = none.check("feature_drift")
    assert (check.outcome, check.value, check.enforcement, none.verdict) == ("WARN", None, "WARNING", "READY")
    assert "not measured" in check.message
    missing = _staging(snapshot("canary", feature_drift={"amount": None, "country": 0.01}))
    assert (missing.check("feature_drift[amount]").outcome, missing.verdict) == ("WARN", "READY")
    assert missing.check("feature_drift[country]").outcome == "PASS"


@pytest.mark.parametrize("metric", ["kl_divergence"])
def test_a_missing_or_thin_warning_metric_never_blocks(metric: str) -> None:
    for snap in (snapshot("canary", metrics={metric: None}), snapshot("canary", metrics={metric: float("nan")})):
        result = _staging(snap)
        assert (result.check(metric).outcome, result.verdict) == ("WARN", "READY")
    # With too few pairs the BLOCK checks stay INCONCLUSIVE, the warning is recorded with its value.
    thin = _staging(snapshot("canary", sample_count=999, n=999))
    assert thin.check(metric).outcome == "WARN" and thin.check(metric).value == 0.01
    assert thin.verdict == "INCONCLUSIVE"


def test_a_policy_that_makes_feature_drift_block_keeps_inconclusive_never_passes() -> None:
    blocking = policy_with(**{"staging.feature_drift.enforcement": "BLOCK"})
    result = evaluate_staging_gate(blocking, snapshot("canary", feature_drift={}), STARTED, 0.05, NOW)
    assert (result.check("feature_drift").outcome, result.verdict) == ("INCONCLUSIVE", "INCONCLUSIVE")


@pytest.mark.parametrize(
    ("share", "expected"),
    [(0.05, "PASS"), (0.10, "PASS"), (0.07, "PASS"), (below(0.05), "FAIL"), (above(0.10), "FAIL"), (0.5, "FAIL"),
     (None, "INCONCLUSIVE")],
)
def test_canary_share_must_be_within_five_to_ten_percent(share: float | None, expected: str) -> None:
    assert _staging(share=share).check("canary_traffic_share").outcome == expected


def test_staging_duration_minimum_and_guidance() -> None:
    assert _staging(started=NOW - timedelta(days=3)).check("min_duration_met").outcome == "PASS"
    short = _staging(started=NOW - timedelta(days=3) + timedelta(seconds=1))
    assert (short.check("min_duration_met").outcome, short.verdict) == ("FAIL", "BLOCKED")
    assert _staging(started=NOW - timedelta(days=7)).check("duration_guidance").outcome == "PASS"
    long = _staging(started=NOW - timedelta(days=7, seconds=1))
    assert (long.check("duration_guidance").outcome, long.verdict) == ("WARN", "READY")


def test_too_few_pairs_and_wrong_role() -> None:
    few = _staging(snapshot("canary", sample_count=999, n=999))
    assert {c.name for c in few.checks if c.outcome == "INCONCLUSIVE"} >= {"p99_latency_ms", "error_rate"}
    assert few.verdict == "INCONCLUSIVE"
    wrong = _staging(snapshot("shadow"))
    assert (wrong.check("comparison_role").outcome, wrong.verdict) == ("ERROR", "ERROR")


def test_stale_canary_source_blocks() -> None:
    stale = _staging(snapshot("canary", latest_event_ts=NOW - timedelta(seconds=301)))
    assert (stale.check("source_fresh").outcome, stale.verdict) == ("FAIL", "BLOCKED")
