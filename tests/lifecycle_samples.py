"""Sample data for the lifecycle, metadata, documents and registry tests, written from the spec by hand.

The spec's tables are restated here independently of governance/ so that a wrong table in the code
makes a test fail instead of agreeing with itself.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

# Spec 1.1: the forward path and the three rollback/retire arrows, nothing else.
SPEC_FORWARD = ["PROPOSAL", "PROTOTYPE", "TRAINING", "SHADOW", "STAGING", "PRODUCTION"]
SPEC_LEGAL = {(a, b) for a, b in zip(SPEC_FORWARD, SPEC_FORWARD[1:], strict=False)} | {
    ("SHADOW", "RETIRED"),
    ("STAGING", "RETIRED"),
    ("PRODUCTION", "RETIRED"),
}

# Spec 9.2 required sections, and the headings a person would write for them.
SPEC_SECTIONS = {
    "proposal": ["objective", "business_justification", "technical_approach", "risk_assessment", "success_criteria"],
    "training": [
        "training_data_description",
        "feature_list",
        "hyperparameters",
        "validation_strategy",
        "training_metrics",
    ],
    "shadow": ["drift_analysis", "statistical_tests", "integrity_violations_review", "recommendation"],
    "production": ["deployment_runbook", "monitoring_dashboard_link", "rollback_procedure", "on_call_contacts"],
}
HEADINGS = {
    "objective": "Objective",
    "business_justification": "Business Justification",
    "technical_approach": "Technical Approach",
    "risk_assessment": "Risk Assessment",
    "success_criteria": "Success Criteria",
    "training_data_description": "Training Data Description",
    "feature_list": "Feature List",
    "hyperparameters": "Hyperparameters",
    "validation_strategy": "Validation Strategy",
    "training_metrics": "Training Metrics",
    "drift_analysis": "Drift Analysis",
    "statistical_tests": "Statistical Tests",
    "integrity_violations_review": "Integrity Violations Review",
    "recommendation": "Recommendation",
    "deployment_runbook": "Deployment Runbook",
    "monitoring_dashboard_link": "Monitoring Dashboard Link",
    "rollback_procedure": "Rollback Procedure",
    "on_call_contacts": "On-Call Contacts",
}


def markdown(title: str, sections: list[str], skip: str | None = None) -> str:
    """A document with a body under every section heading but ``skip``."""
    parts = [f"# {title}", "", "Summary paragraph.", ""]
    for section in sections:
        if section != skip:
            parts += [f"## {HEADINGS[section]}", "", f"Content about {section.replace('_', ' ')}.", ""]
    return "\n".join(parts)


def complete_documents() -> dict[str, dict[str, str]]:
    """Every stage's documents (spec 9.1), complete (spec 9.2), keyed by stage name."""
    return {
        "PROPOSAL": {"proposal": markdown("Fraud model v2 proposal", SPEC_SECTIONS["proposal"])},
        "PROTOTYPE": {
            "feature_analysis": "# Feature analysis\n\nIV and PSI of the 12 candidate features.\n",
            "baseline_metrics": "# Baseline\n\nAUC 0.81, Brier 0.071 on the 2025-Q3 holdout.\n",
        },
        "TRAINING": {
            "training": markdown("Training report", SPEC_SECTIONS["training"]),
            "training_config": "# Config\n\n```yaml\nlearning_rate: 0.05\n```\n",
        },
        "SHADOW": {"shadow": markdown("Shadow report", SPEC_SECTIONS["shadow"])},
        "STAGING": {
            "canary_results": "# Canary\n\n5 % traffic for 4 days, no degradation.\n",
            "performance_report": "# Performance\n\nP99 212 ms, error rate 0.01 %.\n",
        },
        "PRODUCTION": {"production": markdown("Production", SPEC_SECTIONS["production"])},
        "RETIRED": {
            "retirement_justification": "# Why\n\nSuperseded by v3.\n",
            "migration_notes": "# Migration\n\nClients need no change.\n",
        },
    }


def valid_metadata(
    version: str = "1.4.0", proof_pack_id: str = "PP-2026-0001", trained_at: datetime | None = None
) -> dict[str, Any]:
    """A complete, valid metadata object (spec 4.1) in its JSON form.

    ``training_date`` is 2026-01-02T18:30:00Z (three days before :data:`T0`) unless ``trained_at`` is given:
    tests that run against the wall clock pass a time relative to it, so staleness does not grow with the date.
    """
    trained = "2026-01-02T18:30:00Z" if trained_at is None else trained_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "model_id": "3f1c2a9e-8b7d-4c61-9a0e-5d2f7b3c1e44",
        "model_type": "EBM",
        "version": version,
        "training_date": trained,
        "training_data_hash": hashlib.sha256(b"training-set-2025q4.parquet").hexdigest(),
        "monotonicity_constraints": {"transaction_amount_usd": "increasing", "account_age_days": "decreasing"},
        "calibration_metrics": {"brier": 0.071, "slope": 0.97, "intercept": -0.01},
        "explainability_method": "ebm_native",
        "proof_pack_id": proof_pack_id,
        "lineage": {
            "parent_model": "fraud-risk@1.3.2",
            "training_script": "train/fraud_ebm.py",
            "config_hash": hashlib.sha256(b"config-v14").hexdigest(),
        },
    }


MODEL_FEATURES = {"transaction_amount_usd": "float64", "account_age_days": "int64", "card_present": "bool"}
