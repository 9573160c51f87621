"""Production monitoring (spec 2.1 PRODUCTION table): staleness, calibration drift, weekly score stability.

Definitions (the spec names the metrics but not their formulas, so they are fixed here):

* staleness - days from the model's training date (metadata ``training_date``) to ``now``;
  a WARNING from ``staleness_warning_days`` (60) and, from ``staleness_limit_days`` (90), whatever
  enforcement the policy gives the limit: WARNING in the shipped policy (the spec's table has no BLOCK
  for staleness), BLOCK only where a policy file says so;
* calibration drift - ``|calibration_slope - 1|`` (rounded to 12 decimals) of the monitored model over
  the given window; at or above the limit (the spec's "< 0.10" is a strict bound, so 0.10 itself
  breaches) the check FAILs with enforcement RECALIBRATE, which the evaluator turns into a
  ``RecalibrationRequested`` event. The ladder agrees with the rest of the spec: 0.10 asks for
  re-calibration, 0.20 (slope outside [0.8, 1.2]) warns at the shadow gate, 0.40 (slope outside
  [0.6, 1.4]) triggers a scheduled rollback;
* score stability - sample standard deviation (ddof=1) of the daily mean score over the last
  ``stability_days`` whole days. Daily means come from the score histograms at bin midpoints, so each is
  within half a bin width of the exact mean (0.0005 with 1,000 bins).

Pure, deterministic; time is passed in. Fewer than ``stability_days`` daily windows, or a day with
fewer than ``conclusive.min_pairs`` scores, leaves the stability check INCONCLUSIVE.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import numpy as np

from governance.contract.comparison import WindowSnapshot
from governance.contract.findings import Check, WindowRef
from governance.policy.checks import GateResult, judge, metric_count, source_fresh, verdict_of
from governance.policy.document import Policy

__all__ = ["daily_mean_score", "evaluate_production"]


def daily_mean_score(snapshot: WindowSnapshot, side: Literal["production", "candidate"]) -> float | None:
    """Mean score of one side from its histogram (bin midpoints on [0, 1]); None when empty or absent."""
    counts = snapshot.score_counts_production if side == "production" else snapshot.score_counts_candidate
    if counts is None:
        return None
    total = int(np.sum(counts))
    if total == 0:
        return None
    midpoints = (np.arange(counts.size, dtype=np.float64) + 0.5) / counts.size
    return float(np.dot(counts.astype(np.float64), midpoints) / total)


def _stability(policy: Policy, daily: Sequence[WindowSnapshot], side: Literal["production", "candidate"]) -> Check:
    limit = policy.production.score_stability_sigma
    need_days, need_n = policy.production.stability_days, policy.conclusive.min_pairs
    means: list[float] = []
    for day in daily:
        counts = day.score_counts_production if side == "production" else day.score_counts_candidate
        mean = daily_mean_score(day, side)
        if counts is not None and mean is not None and int(np.sum(counts)) >= need_n:
            means.append(mean)
    if len(means) < need_days:
        return Check(
            name="score_stability_sigma",
            outcome="INCONCLUSIVE",
            value=None,
            threshold=limit.threshold,
            comparator=limit.fails_when,
            enforcement=limit.enforcement,
            samples=len(means),
            message=f"score_stability_sigma: {len(means)} of {need_days} daily windows with >= {need_n} scores",
        )
    sigma = float(np.std(means[-need_days:], ddof=1))
    return judge("score_stability_sigma", sigma, limit, samples=len(means))


def evaluate_production(
    policy: Policy,
    snapshot: WindowSnapshot,
    daily: Sequence[WindowSnapshot],
    trained_at: datetime | None,
    now: datetime,
    side: Literal["production", "candidate"] = "production",
    *,
    fresh_at: datetime | None = None,
) -> GateResult:
    """Monitor the model on ``side`` of the comparison (the production model by default).

    ``snapshot`` is the recent window (``windows.production``, one day by default) for calibration and
    freshness; ``daily`` the last whole days, most recent last. Checks: ``staleness_warning_days``
    (WARNING), ``staleness_limit_days`` (the policy's enforcement: WARNING by default),
    ``calibration_drift`` (RECALIBRATE), ``score_stability_sigma`` (WARNING), ``source_fresh`` (BLOCK).
    ``source_fresh`` is judged at ``fresh_at`` (the live worker's wall clock; default ``now``).
    Verdict BLOCKED means the source is stale, or the model is past a staleness limit the policy made BLOCK.
    """
    p = policy.production
    checks: list[Check] = []
    for name, limit in (
        ("staleness_warning_days", p.staleness_warning_days),
        ("staleness_limit_days", p.staleness_limit_days),
    ):
        age = None if trained_at is None else (now - trained_at).total_seconds() / 86400.0
        if age is not None and age < 0:
            checks.append(
                Check(
                    name=name,
                    outcome="ERROR",
                    value=age,
                    threshold=limit.threshold,
                    comparator=limit.fails_when,
                    enforcement=limit.enforcement,
                    message=f"{name}: training date is after now",
                )
            )
        else:
            checks.append(judge(name, age, limit, unit=" days"))
    prefix = "production_" if side == "production" else ""
    slope = snapshot.metric(f"{prefix}calibration_slope")
    # Rounded to 12 decimals so slopes 1.10 and 0.90 both read as drift 0.10 (not 0.10000000000000009 and
    # 0.09999999999999998, which would fall on either side of the limit on binary rounding alone); far
    # below any meaningful precision of a slope.
    drift = None if slope is None else round(abs(slope - 1.0), 12)
    labels = metric_count(snapshot, "label_count")
    checks.append(judge("calibration_drift", drift, p.calibration_drift, labels, policy.conclusive.min_labels))
    checks.append(_stability(policy, daily, side))
    checks.append(source_fresh(policy, snapshot, fresh_at or now))
    return GateResult(
        gate="production",
        verdict=verdict_of(checks),
        checks=checks,
        evaluated_at=now,
        policy_hash=policy.hash(),
        window=WindowRef.of(snapshot),
    )
