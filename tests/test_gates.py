"""Shadow gate, shadow completion checklist and drift severity: every boundary, INCONCLUSIVE never passes."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from governance.contract.comparison import WindowSnapshot
from governance.contract.findings import Check, CheckOutcome, Enforcement
from governance.policy.checks import GateResult, verdict_of
from governance.policy.document import Policy, load_policy
from governance.policy.gates import drift_severity, evaluate_shadow_completion, evaluate_shadow_gate
from governance.policy.stats import ks_two_sample, mean_abs_delta_ci, paired_t
from tests.governance_factory import T0, policy_with, snapshot

NOW = T0 + timedelta(days=15)
POLICY = load_policy()


def below(x: float) -> float:
    return math.nextafter(x, -math.inf)


def above(x: float) -> float:
    return math.nextafter(x, math.inf)


# Spec 2.1 SHADOW table with the 2.2 code's directions, written out independently of the policy file:
# (metric, boundary, outcome at the boundary, just below, just above).
SHADOW_BOUNDARIES = [
    ("brier_score", 0.10, "FAIL", "PASS", "FAIL"),
    ("precision_at_10", 0.20, "FAIL", "FAIL", "PASS"),
    ("auc_roc", 0.70, "FAIL", "FAIL", "PASS"),
    ("calibration_slope", 0.8, "PASS", "WARN", "PASS"),
    ("calibration_slope", 1.2, "PASS", "PASS", "WARN"),
    ("mean_abs_delta", 0.15, "FAIL", "PASS", "FAIL"),
    ("p95_abs_delta", 0.25, "WARN", "PASS", "WARN"),
    ("p99_abs_delta", 0.35, "FAIL", "PASS", "FAIL"),
]


@pytest.mark.parametrize(("metric", "boundary", "at", "low", "high"), SHADOW_BOUNDARIES)
def test_shadow_gate_boundaries(metric: str, boundary: float, at: str, low: str, high: str) -> None:
    for value, expected in ((boundary, at), (below(boundary), low), (above(boundary), high)):
        result = evaluate_shadow_gate(POLICY, snapshot(metrics={metric: value}), NOW)
        check = result.check(metric)
        assert (check.outcome, check.value) == (expected, value), check.message
        # Only a blocking failure blocks; warnings leave the gate READY.
        assert result.verdict == ("BLOCKED" if expected == "FAIL" else "READY")


def test_shadow_gate_reports_threshold_comparator_and_enforcement() -> None:
    check = evaluate_shadow_gate(POLICY, snapshot(brier_score=0.12), NOW).check("brier_score")
    assert (check.threshold, check.comparator, check.enforcement, check.samples) == (0.10, ">=", "BLOCK", 5000)
    assert "0.12 >= 0.1" in check.message
    slope = evaluate_shadow_gate(POLICY, snapshot(calibration_slope=1.3), NOW).check("calibration_slope")
    assert (slope.threshold, slope.upper_threshold, slope.comparator) == (0.8, 1.2, "outside")
    assert slope.enforcement == "WARNING"


LABEL_METRICS = ["brier_score", "precision_at_10", "auc_roc", "calibration_slope"]
DELTA_METRICS = ["mean_abs_delta", "p95_abs_delta", "p99_abs_delta"]
# Spec 2.1 SHADOW table: calibration slope and P95 |delta| are WARNING, the rest BLOCK.
WARNING_METRICS = ["calibration_slope", "p95_abs_delta"]
BLOCK_METRICS = [m for m in LABEL_METRICS + DELTA_METRICS if m not in WARNING_METRICS]


@pytest.mark.parametrize("metric", BLOCK_METRICS)
def test_missing_blocking_metric_is_inconclusive_never_pass(metric: str) -> None:
    result = evaluate_shadow_gate(POLICY, snapshot(metrics={metric: None}), NOW)
    assert result.check(metric).outcome == "INCONCLUSIVE"
    assert result.verdict == "INCONCLUSIVE"


@pytest.mark.parametrize("metric", BLOCK_METRICS)
def test_nan_blocking_metric_is_an_error(metric: str) -> None:
    result = evaluate_shadow_gate(POLICY, snapshot(metrics={metric: float("nan")}), NOW)
    assert (result.check(metric).outcome, result.check(metric).value, result.verdict) == ("ERROR", None, "ERROR")


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf")])
@pytest.mark.parametrize("metric", WARNING_METRICS)
def test_a_warning_without_data_is_recorded_not_measured_and_never_blocks(metric: str, bad: float | None) -> None:
    """Spec 2: a WARNING check never blocks, also when it cannot be measured; the record says so."""
    result = evaluate_shadow_gate(POLICY, snapshot(metrics={metric: bad}), NOW)
    check = result.check(metric)
    assert (check.outcome, check.value, check.enforcement) == ("WARN", None, "WARNING")
    assert "not measured" in check.message
    assert result.verdict == "READY"
    completion = _completion(snapshot(metrics={metric: bad}))
    assert completion.verdict == "READY"
    assert completion.check(f"metrics.{metric}").outcome == "WARN"


def test_too_few_labels_or_pairs_is_inconclusive_even_with_good_values() -> None:
    few_labels = evaluate_shadow_gate(POLICY, snapshot(label_count=499), NOW)
    assert {c.name for c in few_labels.checks if c.outcome == "INCONCLUSIVE"} == set(LABEL_METRICS) - {
        "calibration_slope"}
    # The thin calibration slope is kept as evidence, flagged as not measured (a WARNING never blocks).
    slope = few_labels.check("calibration_slope")
    assert (slope.outcome, slope.value, slope.samples) == ("WARN", 1.0, 499)
    assert "not measured (499 samples, at least 500 needed)" in slope.message
    assert evaluate_shadow_gate(POLICY, snapshot(label_count=500), NOW).verdict == "READY"
    few_pairs = evaluate_shadow_gate(POLICY, snapshot(sample_count=999, n=999), NOW)
    assert {c.name for c in few_pairs.checks if c.outcome == "INCONCLUSIVE"} == set(DELTA_METRICS) - {"p95_abs_delta"}
    assert few_pairs.check("p95_abs_delta").outcome == "WARN"
    assert few_pairs.verdict == "INCONCLUSIVE"
    # A definite blocking failure still wins over inconclusive checks.
    assert evaluate_shadow_gate(POLICY, snapshot(label_count=10, mean_abs_delta=0.2), NOW).verdict == "BLOCKED"


def _check(outcome: CheckOutcome, enforcement: Enforcement = "BLOCK") -> Check:
    return Check(name="x", outcome=outcome, value=None, threshold=None, comparator=">", enforcement=enforcement,
                 message="m")


@pytest.mark.parametrize(
    ("outcomes", "verdict"),
    [
        ([("PASS", "BLOCK"), ("WARN", "WARNING")], "READY"),
        ([("FAIL", "RECALIBRATE"), ("PASS", "BLOCK")], "READY"),
        ([("WARN", "WARNING"), ("INCONCLUSIVE", "WARNING")], "INCONCLUSIVE"),
        ([("INCONCLUSIVE", "BLOCK"), ("ERROR", "BLOCK")], "ERROR"),
        ([("ERROR", "BLOCK"), ("FAIL", "BLOCK")], "BLOCKED"),
        ([], "READY"),
    ],
)
def test_verdict_rule(outcomes: list[tuple[CheckOutcome, Enforcement]], verdict: str) -> None:
    assert verdict_of([_check(o, e) for o, e in outcomes]) == verdict


CHECKLIST = [
    "min_duration_met", "min_samples_met", "drift_severity_acceptable", "metrics_pass_gate",
    "no_integrity_violations", "no_recent_escalations", "performance_budget_met", "statistical_tests_documented",
]


def _completion(
    snap: WindowSnapshot | None = None,
    model_type: str = "risk_scoring",
    started: datetime = NOW - timedelta(days=14),
    integrity: int | None = 0,
    escalations: int | None = 0,
    policy: Policy = POLICY,
) -> GateResult:
    return evaluate_shadow_completion(policy, snap or snapshot(), model_type, started, integrity, escalations, NOW)


def test_completion_passes_a_good_shadow_with_all_eight_items() -> None:
    result = _completion()
    names = [c.name for c in result.checks]
    assert names[:10] == [*CHECKLIST, "source_fresh", "duration_guidance"]
    assert all(c.outcome == "PASS" for c in result.checks), [c.message for c in result.checks if c.outcome != "PASS"]
    assert result.verdict == "READY"
    assert result.drift_severity == "LOW"
    assert result.policy_hash == POLICY.hash()
    assert result.window is not None and result.window.offsets == {"scores:0": 1234, "scores:1": 987}


@pytest.mark.parametrize(
    ("model_type", "days", "samples"),
    [("risk_scoring", 14, 25_000), ("classification", 7, 10_000), ("anomaly_detection", 21, 50_000),
     ("ranking", 14, 15_000)],
)
def test_duration_and_samples_by_model_type(model_type: str, days: int, samples: int) -> None:
    snap = snapshot(sample_count=max(samples, 30_000), n=2000)
    for elapsed, expected in ((timedelta(days=days), "PASS"), (timedelta(days=days) - timedelta(seconds=1), "FAIL"),
                              (timedelta(days=days, seconds=1), "PASS")):
        result = _completion(snap, model_type, started=NOW - elapsed)
        assert result.check("min_duration_met").outcome == expected
        assert result.verdict == ("READY" if expected == "PASS" else "BLOCKED")
    for count, expected in ((samples, "PASS"), (samples - 1, "FAIL"), (samples + 1, "PASS")):
        result = _completion(snapshot(sample_count=count, n=2000), model_type, started=NOW - timedelta(days=days))
        assert result.check("min_samples_met").outcome == expected


def test_shadow_duration_never_below_the_lifecycle_minimum() -> None:
    policy = policy_with(**{"shadow.model_types.classification.min_duration_days": 2})
    short = _completion(model_type="classification", started=NOW - timedelta(days=6), policy=policy)
    assert short.check("min_duration_met").outcome == "FAIL"
    assert short.check("min_duration_met").threshold == 7.0


def test_unknown_model_type_or_wrong_role_is_an_error() -> None:
    result = _completion(model_type="regression")
    assert result.check("min_duration_met").outcome == "ERROR"
    assert "risk_scoring" in result.check("min_samples_met").message
    assert result.verdict == "ERROR"
    assert _completion(snapshot(role="canary")).check("comparison_role").outcome == "ERROR"


def test_start_after_now_is_an_error() -> None:
    assert _completion(started=NOW + timedelta(seconds=1)).check("min_duration_met").outcome == "ERROR"


def test_integrity_violations_and_escalations_block() -> None:
    for item, result in (("no_integrity_violations", _completion(integrity=1)),
                         ("no_recent_escalations", _completion(escalations=1))):
        assert (result.check(item).outcome, result.verdict) == ("FAIL", "BLOCKED")
    for item, result in (("no_integrity_violations", _completion(integrity=None)),
                         ("no_recent_escalations", _completion(escalations=None))):
        assert (result.check(item).outcome, result.verdict) == ("INCONCLUSIVE", "INCONCLUSIVE")


def test_performance_budget_boundary() -> None:
    for value, expected in ((750.0, "FAIL"), (below(750.0), "PASS"), (above(750.0), "FAIL")):
        assert _completion(snapshot(p99_latency_ms=value)).check("performance_budget_met").outcome == expected


def test_metrics_gate_item_follows_the_shadow_gate() -> None:
    blocked = _completion(snapshot(auc_roc=0.65))
    assert blocked.check("metrics_pass_gate").outcome == "FAIL"
    assert "auc_roc" in blocked.check("metrics_pass_gate").message
    assert blocked.check("metrics.auc_roc").outcome == "FAIL"
    warned = _completion(snapshot(p95_abs_delta=0.3))
    assert (warned.check("metrics_pass_gate").outcome, warned.verdict) == ("PASS", "READY")
    assert warned.check("metrics.p95_abs_delta").outcome == "WARN"
    assert _completion(snapshot(brier_score=None)).check("metrics_pass_gate").outcome == "INCONCLUSIVE"


def test_statistical_tests_are_computed_from_the_window() -> None:
    snap = snapshot()
    result = _completion(snap)
    assert snap.delta_sums is not None and snap.score_counts_production is not None
    assert snap.score_counts_candidate is not None
    expected = [ks_two_sample(snap.score_counts_production, snap.score_counts_candidate), paired_t(snap.delta_sums),
                mean_abs_delta_ci(snap.delta_sums, 0.95)]
    assert result.statistics == expected
    assert result.check("statistical_tests_documented").outcome == "PASS"


def test_statistical_tests_need_histograms_sums_and_enough_pairs() -> None:
    missing = _completion(snapshot(with_statistics=False))
    assert missing.check("statistical_tests_documented").outcome == "INCONCLUSIVE"
    assert missing.statistics == []
    assert missing.verdict == "INCONCLUSIVE"
    few = _completion(snapshot(n=999))
    assert few.check("statistical_tests_documented").outcome == "INCONCLUSIVE"
    assert _completion(snapshot(n=1000)).check("statistical_tests_documented").outcome == "PASS"


def test_stale_source_pauses_promotion() -> None:
    limit = POLICY.source.staleness_limit_s
    fresh = snapshot(latest_event_ts=NOW - timedelta(seconds=limit))
    assert _completion(fresh).check("source_fresh").outcome == "PASS"
    stale = _completion(snapshot(latest_event_ts=NOW - timedelta(seconds=limit + 1)))
    assert (stale.check("source_fresh").outcome, stale.verdict) == ("FAIL", "BLOCKED")
    assert "SOURCE_UNHEALTHY" in stale.check("source_fresh").message
    assert _completion(snapshot(latest_event_ts=None)).check("source_fresh").outcome == "INCONCLUSIVE"


# Spec-grounded bands, written out independently of the policy file: (metric, value, severity).
# mean |delta| 0.15 and P99 |delta| 0.35 are the 2.1 BLOCK limits (1.2: "Drift < 0.15"), P95 |delta| 0.25 the
# 2.1 WARNING limit, score KL 0.10 the 2.1 STAGING WARNING; nothing else raises the severity.
SEVERITY_POINTS = [
    ("mean_abs_delta", below(0.15), "LOW"), ("mean_abs_delta", 0.15, "HIGH"), ("mean_abs_delta", 0.6, "HIGH"),
    ("p99_abs_delta", below(0.35), "LOW"), ("p99_abs_delta", 0.35, "HIGH"), ("p99_abs_delta", 0.9, "HIGH"),
    ("p95_abs_delta", below(0.25), "LOW"), ("p95_abs_delta", 0.25, "MEDIUM"), ("p95_abs_delta", 0.34, "MEDIUM"),
    ("kl_divergence", below(0.10), "LOW"), ("kl_divergence", 0.10, "MEDIUM"), ("kl_divergence", 0.25, "MEDIUM"),
    ("kl_divergence", 5.0, "MEDIUM"),
    ("psi", 0.25, "LOW"), ("psi", 3.0, "LOW"),
]


@pytest.mark.parametrize(("metric", "value", "expected"), SEVERITY_POINTS)
def test_drift_severity_is_grounded_in_the_spec(metric: str, value: float, expected: str) -> None:
    overrides = {metric: value}
    if metric == "p99_abs_delta":  # keep the P95 below its own warning band, as real quantiles would be
        overrides["p95_abs_delta"] = 0.06
    assert drift_severity(POLICY, snapshot(metrics=overrides)) == expected, (metric, value)


def test_kl_and_psi_alone_never_block_the_shadow_exit() -> None:
    """Issue 14 point 1: score KL >= 0.10 (a STAGING WARNING) and PSI >= 0.25 (not in the spec) made the
    drift severity HIGH and failed checklist item 3 of an otherwise passing shadow."""
    for overrides in ({"kl_divergence": 0.12}, {"psi": 0.3}, {"kl_divergence": 0.4, "psi": 0.6}):
        result = _completion(snapshot(metrics=overrides))
        assert result.check("drift_severity_acceptable").outcome == "PASS", overrides
        assert result.verdict == "READY", [c.message for c in result.blocking]
    # The drift of the SHADOW exit criterion, mean |delta| at 0.15, blocks (as does the 2.1 metric itself).
    drifting = _completion(snapshot(mean_abs_delta=0.15))
    assert drifting.drift_severity == "HIGH"
    assert drifting.check("drift_severity_acceptable").outcome == "FAIL"
    assert drifting.verdict == "BLOCKED"


def test_drift_severity_takes_the_worst_metric_and_is_unknown_without_data() -> None:
    assert drift_severity(POLICY, snapshot(kl_divergence=0.3, mean_abs_delta=0.2)) == "HIGH"
    assert drift_severity(POLICY, snapshot(kl_divergence=0.3, p95_abs_delta=0.3)) == "MEDIUM"
    assert drift_severity(POLICY, snapshot(mean_abs_delta=None)) is None
    assert drift_severity(POLICY, snapshot(p99_abs_delta=float("inf"))) is None
    assert drift_severity(POLICY, snapshot(sample_count=999, n=999)) is None
    # A metric that can only reach an acceptable band (KL: MEDIUM) cannot make the severity unknown.
    assert drift_severity(POLICY, snapshot(kl_divergence=None)) == "LOW"
    assert drift_severity(POLICY, snapshot(kl_divergence=float("nan"), p95_abs_delta=0.3)) == "MEDIUM"
    unknown = _completion(snapshot(mean_abs_delta=None))
    assert (unknown.check("drift_severity_acceptable").outcome, unknown.verdict) == ("INCONCLUSIVE", "INCONCLUSIVE")


def test_drift_bands_follow_the_policy_file() -> None:
    strict = policy_with(**{"drift_severity.psi": {"medium": 0.1, "high": 0.25}})
    assert drift_severity(strict, snapshot(psi=0.3)) == "HIGH"
    assert drift_severity(strict, snapshot(psi=None)) is None  # PSI could now raise it beyond acceptable


# Spec 1.2 SHADOW "7-14 days" (3.1: anomaly detection 21): past the larger of 14 days and the model type's
# minimum, the shadow is flagged with a WARNING; it never blocks.
@pytest.mark.parametrize(
    ("model_type", "guidance_days"),
    [("risk_scoring", 14), ("classification", 14), ("ranking", 14), ("anomaly_detection", 21)],
)
def test_a_shadow_past_its_maximum_is_flagged_never_blocked(model_type: str, guidance_days: int) -> None:
    snap = snapshot(sample_count=60_000, n=2000)
    for elapsed, expected in ((timedelta(days=guidance_days), "PASS"),
                              (timedelta(days=guidance_days, seconds=1), "WARN"),
                              (timedelta(days=60), "WARN")):
        result = _completion(snap, model_type, started=NOW - elapsed)
        check = result.check("duration_guidance")
        assert (check.outcome, check.enforcement, check.threshold) == (expected, "WARNING", float(guidance_days))
        assert result.verdict == "READY", (model_type, elapsed, [c.message for c in result.blocking])
    no_max = policy_with(**{"lifecycle.SHADOW": {"min_days": 7}})
    assert [c.name for c in _completion(snap, model_type, policy=no_max).checks].count("duration_guidance") == 0


def test_gates_are_pure_and_deterministic() -> None:
    snap = snapshot()
    assert _completion(snap) == _completion(snap)
    assert evaluate_shadow_gate(POLICY, snap, NOW) == evaluate_shadow_gate(POLICY, snap, NOW)
