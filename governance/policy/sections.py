"""Which section of the lifecycle policy (``spec/model-lifecycle-policy-v2.md``) each gate check enforces.

``shadowgate model explain`` prints it beside every check, so a reviewer can read a verdict against the
policy text. :func:`section_of` names the section of a check by its name (``metrics.<name>`` and
``feature_drift[<feature>]`` by their family); a name it does not know is ``"-"``, never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["SECTIONS", "section_of"]

SECTIONS: Mapping[str, str] = {
    # 3.2 shadow completion checklist, items 1-8, and 3.1's duration and sample rules by model type
    "min_duration_met": "1.2, 3.1, 3.2 item 1",
    "min_samples_met": "3.1, 3.2 item 2",
    "drift_severity_acceptable": "1.2, 3.2 item 3",
    "metrics_pass_gate": "2.1, 3.2 item 4",
    "no_integrity_violations": "3.2 item 5, 5.2",
    "no_recent_escalations": "3.2 item 6",
    "performance_budget_met": "3.2 item 7",
    "statistical_tests_documented": "3.2 item 8",
    "duration_guidance": "1.2",
    "comparison_role": "1.2",
    # 2.1 metrics (SHADOW table, in the shadow gate as metrics.<name>; STAGING table in the staging gate)
    "brier_score": "2.1, 2.2",
    "precision_at_10": "2.1, 2.2",
    "auc_roc": "2.1, 2.2",
    "calibration_slope": "2.1, 2.2",
    "mean_abs_delta": "2.1, 2.2",
    "p95_abs_delta": "2.1, 2.2",
    "p99_abs_delta": "2.1, 2.2",
    "p99_latency_ms": "2.1, 2.2",
    "error_rate": "2.1, 2.2",
    "kl_divergence": "2.1, 2.2",
    "feature_drift": "2.1, 5.2",
    "canary_traffic_share": "1.2",
    # 2.1 PRODUCTION table
    "staleness_warning_days": "2.1",
    "staleness_limit_days": "2.1",
    "calibration_drift": "2.1",
    "score_stability_sigma": "2.1",
    # a stale source pauses promotion (the SOURCE_UNHEALTHY reading of 8.1, docs/gates.md)
    "source_fresh": "8.1 (reading)",
}


def section_of(check: str) -> str:
    """The policy section(s) of the check called ``check``; ``"-"`` when unknown."""
    name = check.removeprefix("metrics.")
    if name.startswith("feature_drift["):
        name = "feature_drift"
    if name.startswith("window["):
        return "-"
    return SECTIONS.get(name, "-")
