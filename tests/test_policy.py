"""Policy as code: the default encodes the spec's tables; bad files fail closed naming the key; hash stability."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from governance.errors import ConfigError
from governance.policy.document import Policy, load_policy, parse_policy
from tests.governance_factory import default_policy_data


def _get(policy: Policy, path: str) -> Any:
    node: Any = policy
    for part in path.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


# (key path, value the spec requires): sections 1.2, 2.1, 2.2, 3.1, 3.2, 6.4 and 8.1.
SPEC_VALUES = [
    ("shadow.brier_score.threshold", 0.10), ("shadow.brier_score.fails_when", ">="),
    ("shadow.brier_score.enforcement", "BLOCK"),
    ("shadow.precision_at_10.threshold", 0.20), ("shadow.precision_at_10.fails_when", "<="),
    ("shadow.precision_at_10.enforcement", "BLOCK"),
    ("shadow.auc_roc.threshold", 0.70), ("shadow.auc_roc.fails_when", "<="), ("shadow.auc_roc.enforcement", "BLOCK"),
    ("shadow.calibration_slope.low", 0.8), ("shadow.calibration_slope.high", 1.2),
    ("shadow.calibration_slope.enforcement", "WARNING"),
    ("shadow.mean_abs_delta.threshold", 0.15), ("shadow.mean_abs_delta.fails_when", ">="),
    ("shadow.mean_abs_delta.enforcement", "BLOCK"),
    ("shadow.p95_abs_delta.threshold", 0.25), ("shadow.p95_abs_delta.fails_when", ">="),
    ("shadow.p95_abs_delta.enforcement", "WARNING"),
    ("shadow.p99_abs_delta.threshold", 0.35), ("shadow.p99_abs_delta.fails_when", ">="),
    ("shadow.p99_abs_delta.enforcement", "BLOCK"),
    ("shadow.p99_latency_ms.threshold", 750), ("shadow.p99_latency_ms.fails_when", ">="),
    ("shadow.model_types.risk_scoring.min_duration_days", 14), ("shadow.model_types.risk_scoring.min_samples", 25_000),
    ("shadow.model_types.classification.min_duration_days", 7),
    ("shadow.model_types.classification.min_samples", 10_000),
    ("shadow.model_types.anomaly_detection.min_duration_days", 21),
    ("shadow.model_types.anomaly_detection.min_samples", 50_000),
    ("shadow.model_types.ranking.min_duration_days", 14), ("shadow.model_types.ranking.min_samples", 15_000),
    ("shadow.acceptable_drift", ["LOW", "MEDIUM"]), ("shadow.lookback_days", 7),
    ("staging.p99_latency_ms.threshold", 500), ("staging.p99_latency_ms.fails_when", ">="),
    ("staging.p99_latency_ms.enforcement", "BLOCK"),
    ("staging.error_rate.threshold", 0.001), ("staging.error_rate.fails_when", ">="),
    ("staging.error_rate.enforcement", "BLOCK"),
    ("staging.kl_divergence.threshold", 0.10), ("staging.kl_divergence.enforcement", "WARNING"),
    ("staging.feature_drift.threshold", 0.05), ("staging.feature_drift.enforcement", "WARNING"),
    ("staging.canary_traffic_share.min", 0.05), ("staging.canary_traffic_share.max", 0.10),
    ("production.staleness_warning_days.threshold", 60), ("production.staleness_warning_days.enforcement", "WARNING"),
    ("production.staleness_limit_days.threshold", 90), ("production.staleness_limit_days.enforcement", "WARNING"),
    ("production.calibration_drift.threshold", 0.10), ("production.calibration_drift.fails_when", ">="),
    ("production.calibration_drift.enforcement", "RECALIBRATE"),
    ("production.score_stability_sigma.threshold", 0.05), ("production.score_stability_sigma.fails_when", ">="),
    ("production.score_stability_sigma.enforcement", "WARNING"), ("production.stability_days", 7),
    ("lifecycle.PROPOSAL.min_days", 1), ("lifecycle.PROTOTYPE.min_days", 3), ("lifecycle.TRAINING.min_days", 2),
    ("lifecycle.SHADOW.min_days", 7), ("lifecycle.SHADOW.max_days", 14),
    ("lifecycle.STAGING.min_days", 3), ("lifecycle.STAGING.max_days", 7),
    ("triggers.error_rate.threshold", 0.01), ("triggers.error_rate.fires_when", ">"),
    ("triggers.error_rate.sustain_s", 300), ("triggers.error_rate.action", "immediate"),
    ("triggers.p99_latency_ms.threshold", 1000), ("triggers.p99_latency_ms.fires_when", ">"),
    ("triggers.p99_latency_ms.action", "immediate"),
    ("triggers.kl_divergence.threshold", 0.25), ("triggers.kl_divergence.action", "manual_review"),
    ("triggers.kl_divergence.alert", True),
    ("triggers.integrity_violations.threshold", 100), ("triggers.integrity_violations.window", "1h"),
    ("triggers.integrity_violations.action", "immediate"),
    ("triggers.calibration_slope.low", 0.6), ("triggers.calibration_slope.high", 1.4),
    ("triggers.calibration_slope.action", "scheduled"), ("triggers.calibration_slope.alert", True),
    ("signing.algorithm", "ML-DSA-65"), ("signing.key_rotation_days", 90),
    # 1.2 "Drift < 0.15" is the mean |delta| of 2.1; the other bands are 2.1's own limits (docs/gates.md).
    ("drift_severity.mean_abs_delta.high", 0.15), ("drift_severity.p99_abs_delta.high", 0.35),
    ("drift_severity.p95_abs_delta.medium", 0.25), ("drift_severity.kl_divergence.medium", 0.10),
    ("drift_severity.kl_divergence.high", None), ("drift_severity.kl_divergence.critical", None),
]


@pytest.mark.parametrize(("path", "expected"), SPEC_VALUES, ids=[p for p, _ in SPEC_VALUES])
def test_default_policy_encodes_the_spec(path: str, expected: object) -> None:
    assert _get(load_policy(), path) == expected


def test_every_spec_table_row_is_covered() -> None:
    # Guards the table above against silently dropping a row: 2.1 has 7 + 4 + 3 metrics, 3.1 four types, 8.1 five.
    paths = {p.rsplit(".", 1)[0] for p, _ in SPEC_VALUES}
    for section, names in {
        "shadow": ["brier_score", "precision_at_10", "auc_roc", "calibration_slope", "mean_abs_delta",
                   "p95_abs_delta", "p99_abs_delta"],
        "staging": ["p99_latency_ms", "error_rate", "kl_divergence", "feature_drift"],
        "production": ["staleness_warning_days", "staleness_limit_days", "calibration_drift", "score_stability_sigma"],
        "triggers": ["error_rate", "p99_latency_ms", "kl_divergence", "integrity_violations", "calibration_slope"],
    }.items():
        for name in names:
            assert f"{section}.{name}" in paths


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return data


BAD_VALUES = [
    # (key path set, value, key path the message must name)
    ("shadow.p95_abs_delta.threshold", 0.40, "shadow.p95_abs_delta.threshold"),
    ("shadow.brier_score.threshold", "0.1", "shadow.brier_score.threshold"),
    ("shadow.brier_score.threshold", 1.5, "shadow.brier_score.threshold"),
    ("shadow.brier_score.threshold", float("inf"), "shadow.brier_score.threshold"),
    ("shadow.brier_score.fails_when", "<=", "shadow.brier_score.fails_when"),
    ("shadow.auc_roc.fails_when", ">=", "shadow.auc_roc.fails_when"),
    ("shadow.brier_score.enforcement", "block", "shadow.brier_score.enforcement"),
    ("shadow.calibration_slope.low", 1.3, "shadow.calibration_slope.low"),
    ("lifecycle.SHADOW.min_days", -1, "lifecycle.SHADOW.min_days"),
    ("lifecycle.STAGING.max_days", 2, "lifecycle.STAGING.max_days"),
    ("lifecycle.SHADOW.min_days", True, "lifecycle.SHADOW.min_days"),
    ("lifecycle.SHADOW.min_days", 7.5, "lifecycle.SHADOW.min_days"),
    ("staging.canary_traffic_share.min", 0.0, "staging.canary_traffic_share.min"),
    ("staging.canary_traffic_share.max", 1.5, "staging.canary_traffic_share.max"),
    ("staging.canary_traffic_share.min", 0.2, "staging.canary_traffic_share.min"),
    ("production.staleness_warning_days.threshold", 120, "production.staleness_warning_days.threshold"),
    ("triggers.error_rate.sustain_s", -300, "triggers.error_rate.sustain_s"),
    ("triggers.error_rate.threshold", 2.0, "triggers.error_rate.threshold"),
    ("triggers.calibration_slope.low", 1.5, "triggers.calibration_slope.low"),
    ("triggers.kl_divergence.action", "rollback", "triggers.kl_divergence.action"),
    ("drift_severity.kl_divergence.high", 0.05, "drift_severity.kl_divergence.high"),
    ("drift_severity.p95_abs_delta", {}, "drift_severity.p95_abs_delta.medium"),
    ("drift_severity.mean_abs_delta.critical", 0.1, "drift_severity.mean_abs_delta.critical"),
    ("triggers.confidence", 1.0, "triggers.confidence"),
    ("triggers.confidence", 0.3, "triggers.confidence"),
    ("triggers.error_rate.window", "60 seconds", "triggers.error_rate.window"),
    ("triggers.fallback.min_pairs", 0, "triggers.fallback.min_pairs"),
    ("triggers.min_samples", 50, "triggers.min_samples"),
    ("shadow.model_types.fraud_detection", {"min_duration_days": 7, "min_samples": 1}, "shadow.model_types"),
    ("shadow.model_types.ranking.min_samples", 0, "shadow.model_types.ranking.min_samples"),
    ("shadow.acceptable_drift", ["LOW", "LOW"], "shadow.acceptable_drift"),
    ("signing.algorithm", "NOT-AN-ALGORITHM", "signing.algorithm"),
    ("signing.key_rotation_days", 0, "signing.key_rotation_days"),
    ("source.staleness_limit_s", 0, "source.staleness_limit_s"),
    ("statistics.confidence", 1.0, "statistics.confidence"),
    ("conclusive.min_pairs", 1, "conclusive.min_pairs"),
    ("shadow.brier_score.colour", "red", "shadow.brier_score.colour"),
    ("staging.surprise", 1, "staging.surprise"),
]


@pytest.mark.parametrize(("path", "value", "named"), BAD_VALUES, ids=[f"{p}={v!r}" for p, v, _ in BAD_VALUES])
def test_invalid_policy_is_rejected_naming_the_key(tmp_path: Path, path: str, value: Any, named: str) -> None:
    file = _write(tmp_path, _set(default_policy_data(), path, value))
    with pytest.raises(ConfigError) as info:
        load_policy(file)
    message = str(info.value)
    assert named in message
    assert "\n" not in message
    assert str(file) in message


def test_missing_section_and_unknown_top_level_key(tmp_path: Path) -> None:
    data = default_policy_data()
    del data["triggers"]
    data["trigers"] = {}
    with pytest.raises(ConfigError) as info:
        load_policy(_write(tmp_path, data))
    assert "triggers: required key is missing" in str(info.value)
    assert "trigers: unknown key" in str(info.value)


def test_duplicate_yaml_key_is_rejected(tmp_path: Path) -> None:
    text = _write(tmp_path, default_policy_data()).read_text()
    file = tmp_path / "dup.yaml"
    file.write_text(text + "events:\n  ttl_s: 5\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'events' at line \d+"):
        load_policy(file)


@pytest.mark.parametrize(("content", "pattern"), [("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must be a mapping")])
def test_unparseable_or_non_mapping_file(tmp_path: Path, content: str, pattern: str) -> None:
    file = tmp_path / "p.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=pattern):
        load_policy(file)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_policy(tmp_path / "nope.yaml")


def test_policy_is_immutable() -> None:
    policy = load_policy()
    with pytest.raises(pydantic.ValidationError):
        policy.shadow.brier_score.threshold = 0.5


def test_hash_is_sha256_of_canonical_json() -> None:
    policy = load_policy()
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    assert policy.hash() == hashlib.sha256(canonical).hexdigest()
    assert policy.canonical_json() == canonical


def test_hash_ignores_formatting_but_not_values(tmp_path: Path) -> None:
    data = default_policy_data()
    reordered = dict(reversed(list(data.items())))
    path = tmp_path / "reordered.yaml"
    path.write_text("# a comment\n" + yaml.safe_dump(reordered, sort_keys=True, default_flow_style=True))
    assert load_policy(path).hash() == load_policy().hash()
    assert load_policy(None).hash() == load_policy().hash()
    changed = parse_policy(_set(data, "shadow.brier_score.threshold", 0.11))
    assert changed.hash() != load_policy().hash()
    assert len(load_policy().hash()) == 64


def test_spelled_differently_same_number_same_hash(tmp_path: Path) -> None:
    text = tmp_path / "p.yaml"
    source = _write(tmp_path, default_policy_data()).read_text()
    text.write_text(source.replace("threshold: 0.1\n", "threshold: 0.100\n", 1))
    assert "0.100" in text.read_text()
    assert load_policy(text).hash() == load_policy().hash()
