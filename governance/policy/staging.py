"""The STAGING gate (spec 2.1 STAGING table, 2.2 ``validate_staging_gate``): canary versus production.

Pure and deterministic; ``now`` is passed in. Canary-side metrics (bare names in the snapshot) are judged
against the policy's limits with the spec's directions: P99 latency >= 500 ms and error rate >= 0.1 %
block, score KL >= 0.10 and per-feature drift >= 0.05 warn. Too few pairs or a missing value is
INCONCLUSIVE, never PASS (the spec's code skips a None metric; we refuse to pass it).
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
) -> GateResult:
    """The STAGING table on canary versus production traffic, plus the stage's duration and share.

    Checks: ``min_duration_met`` (lifecycle STAGING minimum, BLOCK), ``duration_guidance`` (WARNING past
    the maximum), ``canary_traffic_share`` (the assigned share must be within the policy range, BLOCK;
    None is INCONCLUSIVE), ``p99_latency_ms``, ``error_rate``, ``kl_divergence``, one
    ``feature_drift[<name>]`` per feature (no feature reported is INCONCLUSIVE), ``source_fresh``.
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
        checks.append(
            Check(
                name="feature_drift",
                outcome="INCONCLUSIVE",
                value=None,
                threshold=st.feature_drift.threshold,
                comparator=st.feature_drift.fails_when,
                enforcement=st.feature_drift.enforcement,
                message="feature_drift: no feature drift reported for this window",
            )
        )
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
    checks.append(source_fresh(policy, snapshot, now))
    return gate_result("staging", policy, snapshot, checks, now)
