"""Pure gate evaluation: ``(policy, snapshot, ..., now) -> GateResult`` for every promotion gate of the spec.

* :func:`evaluate_shadow_gate` - ``validate_shadow_gate`` of spec 2.2 on the SHADOW table of 2.1;
* :func:`evaluate_shadow_completion` - the eight items of the spec 3.2 checklist (plus source freshness);
* :func:`evaluate_staging_gate` - the STAGING table on canary versus production traffic;
* :func:`evaluate_production` - the PRODUCTION table (re-exported from :mod:`governance.policy.production`);
* :func:`drift_severity` - LOW / MEDIUM / HIGH / CRITICAL from the policy's bands.

Guarantees: no I/O and no clock (``now`` is passed in, and is only compared with the snapshot's times);
the same inputs give the same result (deterministic, idempotent); a missing metric or too few samples is
INCONCLUSIVE and never PASS; candidate-side metrics (bare names in the snapshot) are judged, as the spec
judges the model being promoted. Thresholds and directions come only from the policy.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import get_args

from governance.contract.comparison import WindowSnapshot
from governance.contract.findings import Check, CheckOutcome, GateVerdict, Severity, StatResult
from governance.errors import SketchError
from governance.policy.checks import (
    GateResult,
    blocking_check,
    duration_check,
    gate_result,
    guidance_checks,
    judge,
    judge_range,
    metric_count,
    role_checks,
    source_fresh,
)
from governance.policy.document import Policy
from governance.policy.production import evaluate_production
from governance.policy.staging import evaluate_staging_gate
from governance.policy.stats import ks_two_sample, mean_abs_delta_ci, paired_t

__all__ = [
    "SEVERITIES",
    "drift_severity",
    "evaluate_production",
    "evaluate_shadow_completion",
    "evaluate_shadow_gate",
    "evaluate_staging_gate",
    "statistical_tests",
]

SEVERITIES: tuple[Severity, ...] = get_args(Severity)
_VERDICT_AS_OUTCOME: dict[GateVerdict, CheckOutcome] = {
    "READY": "PASS",
    "BLOCKED": "FAIL",
    "INCONCLUSIVE": "INCONCLUSIVE",
    "ERROR": "ERROR",
}


def drift_severity(policy: Policy, snapshot: WindowSnapshot) -> Severity | None:
    """The highest band any banded drift metric reaches (a value at a band's floor is in that band).

    None (unknown, never read as LOW) when the window has fewer than ``conclusive.min_pairs`` pairs, or
    when a metric that could raise the severity beyond ``shadow.acceptable_drift`` is missing or not
    finite. A metric whose highest band is acceptable (score KL: MEDIUM at most) cannot change whether
    the severity is acceptable, so its absence leaves the severity known (it is then computed without it).
    """
    pairs = metric_count(snapshot, "sample_count")
    if pairs is None or pairs < policy.conclusive.min_pairs:
        return None
    acceptable = set(policy.shadow.acceptable_drift)
    rank = 0
    for metric, bands in policy.drift_severity.items():
        reachable = [band for band, floor in bands.floors() if floor is not None]
        value = snapshot.metric(metric)
        if value is None or not math.isfinite(value):
            if any(band not in acceptable for band in reachable):
                return None
            continue
        for band, floor in bands.floors():
            if floor is not None and value >= floor:
                rank = max(rank, SEVERITIES.index(band))
    return SEVERITIES[rank]


def evaluate_shadow_gate(policy: Policy, snapshot: WindowSnapshot, now: datetime) -> GateResult:
    """Spec 2.2 ``validate_shadow_gate``: the SHADOW metric table, with the spec's exact directions.

    Label-joined metrics need ``conclusive.min_labels`` labels, delta quantiles ``conclusive.min_pairs``
    pairs; below that, or with a None metric, the check is INCONCLUSIVE (the spec's code skips a None
    delta; we refuse to pass it).
    """
    s, c = policy.shadow, policy.conclusive
    labels = metric_count(snapshot, "label_count")
    pairs = metric_count(snapshot, "sample_count")
    m = snapshot.metric
    checks = [
        judge("brier_score", m("brier_score"), s.brier_score, labels, c.min_labels),
        judge("precision_at_10", m("precision_at_10"), s.precision_at_10, labels, c.min_labels),
        judge("auc_roc", m("auc_roc"), s.auc_roc, labels, c.min_labels),
        judge_range("calibration_slope", m("calibration_slope"), s.calibration_slope, labels, c.min_labels),
        judge("mean_abs_delta", m("mean_abs_delta"), s.mean_abs_delta, pairs, c.min_pairs),
        judge("p95_abs_delta", m("p95_abs_delta"), s.p95_abs_delta, pairs, c.min_pairs),
        judge("p99_abs_delta", m("p99_abs_delta"), s.p99_abs_delta, pairs, c.min_pairs),
    ]
    return gate_result("shadow_metrics", policy, snapshot, checks, now)


def statistical_tests(policy: Policy, snapshot: WindowSnapshot) -> tuple[Check, list[StatResult]]:
    """Spec 3.2 check 8: the KS, paired-t and mean-|delta| interval, all computed on enough pairs."""
    need = policy.conclusive.min_pairs
    sums = snapshot.delta_sums
    prod, cand = snapshot.score_counts_production, snapshot.score_counts_candidate
    n = sums.n if sums is not None else 0
    if sums is None or prod is None or cand is None or n < need or min(int(prod.sum()), int(cand.sum())) < need:
        return blocking_check(
            "statistical_tests_documented",
            "INCONCLUSIVE",
            float(n),
            float(need),
            f"statistical_tests_documented: need delta sums and both score histograms with >= {need} "
            f"samples each (pairs: {n})",
        ), []
    try:
        results = [
            ks_two_sample(prod, cand),
            paired_t(sums),
            mean_abs_delta_ci(sums, policy.statistics.confidence),
        ]
    except (SketchError, ValueError) as exc:
        return blocking_check(
            "statistical_tests_documented", "ERROR", None, None, f"statistical_tests_documented: {exc}"
        ), []
    summary = ", ".join(
        f"{r.test}: stat={r.statistic if r.statistic is None else round(r.statistic, 6)}"
        + (f" p={r.p_value:.4g}" if r.p_value is not None else "")
        + (f" ci=[{r.ci_low:.6g}, {r.ci_high:.6g}]" if r.ci_low is not None and r.ci_high is not None else "")
        for r in results
    )
    return blocking_check("statistical_tests_documented", "PASS", float(n), float(need), summary), results


def _requirement_checks(
    policy: Policy, snapshot: WindowSnapshot, model_type: str, started_at: datetime, now: datetime
) -> list[Check]:
    """Checklist items 1 and 2: duration and sample size for the model type (spec 3.1)."""
    requirement = next((req for kind, req in policy.shadow.model_types.items() if kind == model_type), None)
    if requirement is None:
        known = sorted(policy.shadow.model_types)
        message = f"model_type {model_type!r} has no shadow requirement; use one of {known}"
        return [
            blocking_check(name, "ERROR", None, None, f"{name}: {message}")
            for name in ("min_duration_met", "min_samples_met")
        ]
    days = max(requirement.min_duration_days, policy.lifecycle.SHADOW.min_days)
    pairs = metric_count(snapshot, "sample_count")
    need = requirement.min_samples
    if pairs is None:
        outcome: CheckOutcome = "INCONCLUSIVE"
        message = "min_samples_met: sample_count missing"
    else:
        outcome = "FAIL" if pairs < need else "PASS"
        relation = "<" if pairs < need else ">="
        message = f"min_samples_met: {pairs} pairs {relation} {need} required for {model_type}"
    samples = Check(
        name="min_samples_met",
        outcome=outcome,
        value=None if pairs is None else float(pairs),
        threshold=float(need),
        comparator="<",
        enforcement="BLOCK",
        samples=pairs,
        message=message,
    )
    return [duration_check("min_duration_met", started_at, now, days), samples]


def _drift_check(policy: Policy, severity: Severity | None) -> Check:
    """Checklist item 3; the value is the severity's rank (LOW=0 ... CRITICAL=3)."""
    acceptable = policy.shadow.acceptable_drift
    worst_ok = float(max(SEVERITIES.index(level) for level in acceptable))
    if severity is None:
        outcome: CheckOutcome = "INCONCLUSIVE"
        message = "drift_severity_acceptable: severity unknown (too few pairs or a missing metric)"
    else:
        outcome = "PASS" if severity in acceptable else "FAIL"
        message = f"drift_severity_acceptable: {severity} {'in' if outcome == 'PASS' else 'not in'} {acceptable}"
    return Check(
        name="drift_severity_acceptable",
        outcome=outcome,
        value=None if severity is None else float(SEVERITIES.index(severity)),
        threshold=worst_ok,
        comparator="not in",
        enforcement="BLOCK",
        message=message,
    )


def _count_check(name: str, count: int | None, lookback_days: int) -> Check:
    """Checklist items 5 and 6: none in the lookback period; an unknown count is INCONCLUSIVE."""
    if count is None:
        return blocking_check(
            name, "INCONCLUSIVE", None, 0.0, f"{name}: count for the last {lookback_days} days unknown"
        )
    outcome: CheckOutcome = "FAIL" if count > 0 else "PASS"
    return blocking_check(name, outcome, float(count), 0.0, f"{name}: {count} in the last {lookback_days} days")


def evaluate_shadow_completion(
    policy: Policy,
    snapshot: WindowSnapshot,
    model_type: str,
    shadow_started_at: datetime,
    integrity_violations_7d: int | None,
    escalations_7d: int | None,
    now: datetime,
    *,
    fresh_at: datetime | None = None,
) -> GateResult:
    """Spec 3.2 ``validate_shadow_completion`` over the whole shadow window.

    ``fresh_at``: the instant the source's freshness is judged at (the live worker's wall clock); default ``now``.

    The eight checklist items, in spec order, then ``source_fresh`` (a stale source pauses promotion),
    then ``duration_guidance`` (WARNING once the shadow has run longer than spec 1.2's 14 days, or its
    model type's longer minimum: flagged in the evidence, never a block), then the metric checks of
    :func:`evaluate_shadow_gate` prefixed ``metrics.`` for the evidence (they
    are summarised by ``metrics_pass_gate``, so they never change the verdict on their own). The required
    duration is the larger of the model type's and the lifecycle's SHADOW minimum; the integrity and
    escalation counts cover the last ``shadow.lookback_days`` days (the caller counts them; None is
    INCONCLUSIVE). An unknown ``model_type`` makes the duration and sample checks ERROR.
    """
    s = policy.shadow
    checks = role_checks(snapshot, "shadow")
    checks.extend(_requirement_checks(policy, snapshot, model_type, shadow_started_at, now))
    severity = drift_severity(policy, snapshot)
    checks.append(_drift_check(policy, severity))
    metrics = evaluate_shadow_gate(policy, snapshot, now)
    failing = [c.name for c in metrics.blocking]
    summary = f"metrics_pass_gate: {metrics.verdict}" + (f" ({', '.join(failing)})" if failing else "")
    checks.append(
        blocking_check("metrics_pass_gate", _VERDICT_AS_OUTCOME[metrics.verdict], float(len(failing)), 0.0, summary)
    )
    checks.append(_count_check("no_integrity_violations", integrity_violations_7d, s.lookback_days))
    checks.append(_count_check("no_recent_escalations", escalations_7d, s.lookback_days))
    pairs = metric_count(snapshot, "sample_count")
    latency = snapshot.metric("p99_latency_ms")
    checks.append(judge("performance_budget_met", latency, s.p99_latency_ms, pairs, policy.conclusive.min_pairs, " ms"))
    stats_check, statistics = statistical_tests(policy, snapshot)
    checks.append(stats_check)
    checks.append(source_fresh(policy, snapshot, fresh_at or now))
    checks.extend(guidance_checks("duration_guidance", shadow_started_at, now, _shadow_max_days(policy, model_type)))
    checks.extend(c.model_copy(update={"name": f"metrics.{c.name}"}) for c in metrics.checks)
    return gate_result("shadow_completion", policy, snapshot, checks, now, statistics, severity)


def _shadow_max_days(policy: Policy, model_type: str) -> int | None:
    """Spec 1.2's SHADOW "7-14 days", read as guidance: the stage should be over by then.

    A model type whose own minimum is longer (3.1: anomaly detection, 21 days) cannot be expected out
    sooner than that minimum, so its guidance is the larger of the two. None: no maximum in the policy.
    """
    most = policy.lifecycle.SHADOW.max_days
    if most is None:
        return None
    requirement = next((req for kind, req in policy.shadow.model_types.items() if kind == model_type), None)
    least = policy.lifecycle.SHADOW.min_days if requirement is None else requirement.min_duration_days
    return max(most, least, policy.lifecycle.SHADOW.min_days)
