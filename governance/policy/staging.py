"""The STAGING gate (spec 2.1 STAGING table, 2.2 ``validate_staging_gate``): canary versus production.

Pure and deterministic; ``now`` is passed in. Canary-side metrics (bare names in the snapshot) are judged
against the policy's limits with the spec's directions: P99 latency >= 500 ms and error rate >= 0.1 %
block, score KL >= 0.10 and per-feature drift >= 0.05 warn. For a BLOCK check too few pairs or a missing
value is INCONCLUSIVE, never PASS (the spec's code skips a None metric; we refuse to pass it); a WARNING
check without data is a "not measured" warning and never blocks (spec 2), so a canary whose events carry
no features can be promoted, with the warning on record.
"""

from __future__ import annotations

from datetime import datetime

from governance.contract.comparison import WindowSnapshot
from governance.contract.findings import Check
from governance.policy.checks import (
    GateResult,
    duration_check,
    gate_result,
    guidance_checks,
    judge,
    metric_count,
    role_checks,
    source_fresh,
)
from governance.policy.document import Policy

__all__ = ["evaluate_staging_gate"]


def evaluate_staging_gate(
    policy: Policy,
    snapshot: WindowSnapshot,
    staging_started_at: datetime,
    canary_share: float | None,
    now: datetime,
    *,
    fresh_at: datetime | None = None,
) -> GateResult:
    """The STAGING table on canary versus production traffic, plus the stage's duration and share.

    Checks: ``min_duration_met`` (lifecycle STAGING minimum, BLOCK), ``duration_guidance`` (WARNING past
    the maximum), ``canary_traffic_share`` (the assigned share must be within the policy range, BLOCK;
    None is INCONCLUSIVE), ``p99_latency_ms``, ``error_rate``, ``kl_divergence``, one
    ``feature_drift[<name>]`` per feature (no feature reported: one ``feature_drift`` "not measured"
    warning), ``source_fresh`` (judged at ``fresh_at``, the live worker's wall clock; default ``now``).
    """
    st, c = policy.staging, policy.conclusive
    pairs = metric_count(snapshot, "sample_count")
    checks = role_checks(snapshot, "canary")
    checks.append(duration_check("min_duration_met", staging_started_at, now, policy.lifecycle.STAGING.min_days))
    checks.extend(guidance_checks("duration_guidance", staging_started_at, now, policy.lifecycle.STAGING.max_days))
    share = st.canary_traffic_share
    if canary_share is None:
        checks.append(
            Check(
                name="canary_traffic_share",
                outcome="INCONCLUSIVE",
                value=None,
                threshold=share.min,
                upper_threshold=share.max,
                comparator="outside",
                enforcement="BLOCK",
                message="canary_traffic_share: the assigned share is unknown",
            )
        )
    else:
        inside = share.min <= canary_share <= share.max
        checks.append(
            Check(
                name="canary_traffic_share",
                outcome="PASS" if inside else "FAIL",
                value=canary_share,
                threshold=share.min,
                upper_threshold=share.max,
                comparator="outside",
                enforcement="BLOCK",
                message=f"canary_traffic_share {canary_share:.4g} {'within' if inside else 'outside'} "
                f"[{share.min:.4g}, {share.max:.4g}]",
            )
        )
    m = snapshot.metric
    checks.append(judge("p99_latency_ms", m("p99_latency_ms"), st.p99_latency_ms, pairs, c.min_pairs, " ms"))
    checks.append(judge("error_rate", m("error_rate"), st.error_rate, pairs, c.min_pairs))
    checks.append(judge("kl_divergence", m("kl_divergence"), st.kl_divergence, pairs, c.min_pairs))
    if not snapshot.feature_drift:
        # No feature in the canary's events: nothing to measure. Like any check without data it is
        # INCONCLUSIVE if the policy makes it BLOCK, and a "not measured" warning if WARNING (the spec's).
        checks.append(judge("feature_drift", None, st.feature_drift))
    for feature in sorted(snapshot.feature_drift):
        checks.append(
            judge(
                f"feature_drift[{feature}]",
                snapshot.feature_drift[feature],
                st.feature_drift,
                pairs,
                c.min_pairs,
            )
        )
    checks.append(source_fresh(policy, snapshot, fresh_at or now))
    return gate_result("staging", policy, snapshot, checks, now)
