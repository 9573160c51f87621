"""Model metadata (spec 4): the spec's own 4.2 function as an oracle, and the stricter field rules."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.errors import PolicyViolation
from governance.lifecycle.metadata import ModelMetadata, parse_model_metadata, validate_model_metadata
from tests.lifecycle_samples import valid_metadata

FIELDS = [
    "model_id",
    "model_type",
    "version",
    "training_date",
    "training_data_hash",
    "monotonicity_constraints",
    "calibration_metrics",
    "explainability_method",
    "proof_pack_id",
    "lineage",
]


def spec_validate(metadata: dict[str, Any]) -> tuple[bool, list[str]]:
    """Spec 4.2's validate_model_metadata, verbatim apart from formatting."""
    violations = []
    missing = [f for f in FIELDS if f not in metadata]
    if missing:
        violations.append(f"Missing required fields: {missing}")
    allowed = ["EBM", "GAM", "LogisticRegression", "MonotoneGBDT"]
    if metadata.get("model_type") not in allowed:
        violations.append(f"Invalid model_type: {metadata.get('model_type')}. Allowed: {allowed}")
    cal_metrics = metadata.get("calibration_metrics", {})
    missing_cal = [m for m in ["brier", "slope", "intercept"] if m not in cal_metrics]
    if missing_cal:
        violations.append(f"Missing calibration metrics: {missing_cal}")
    mono = metadata.get("monotonicity_constraints", {})
    if not mono:
        violations.append("monotonicity_constraints cannot be empty")
    proof_id = metadata.get("proof_pack_id", "")
    if not proof_id.startswith("PP-"):
        violations.append(f"Invalid proof_pack_id format: {proof_id}")
    return len(violations) == 0, violations


def violations_of(**changes: Any) -> list[str]:
    metadata = valid_metadata() | changes
    ok, violations = validate_model_metadata(metadata)
    assert ok == (not violations)
    return violations


def test_valid_metadata_passes_and_parses() -> None:
    assert validate_model_metadata(valid_metadata()) == (True, [])
    parsed = parse_model_metadata(valid_metadata())
    assert parsed.training_date == datetime(2026, 1, 2, 18, 30, tzinfo=UTC)
    assert parsed.calibration_metrics.brier == 0.071
    again = ModelMetadata.model_validate(parsed.model_dump(mode="json"))
    assert again == parsed


@pytest.mark.parametrize("field", FIELDS)
def test_each_missing_field(field: str) -> None:
    metadata = valid_metadata()
    del metadata[field]
    ok, violations = validate_model_metadata(metadata)
    assert not ok
    assert violations[0] == f"Missing required fields: ['{field}']"
    _, spec = spec_validate(metadata)
    # Every message of the spec's function is (the start of) one of ours, and we add none for an absent
    # field that the spec does not add.
    assert len(violations) == len(spec)
    for message in spec:
        assert any(v.startswith(message) for v in violations), message


def test_all_fields_missing_reproduces_the_spec() -> None:
    ok, violations = validate_model_metadata({})
    _, spec = spec_validate({})
    assert not ok and len(violations) == len(spec) == 5
    assert all(v.startswith(s) for v, s in zip(violations, spec, strict=True))


@pytest.mark.parametrize("black_box", ["XGBoost", "RandomForest", "xgb_classifier", "Random Forest", "LightGBM", "MLP"])
def test_black_box_types_refused_in_spec_11_words(black_box: str) -> None:
    violations = violations_of(model_type=black_box)
    assert violations[0] == (
        f"Invalid model_type: {black_box}. Allowed: ['EBM', 'GAM', 'LogisticRegression', 'MonotoneGBDT']"
    )
    assert len(violations) == 2
    assert "black-box models (XGBoost, RandomForest, etc.) cannot be used (spec 11)" in violations[1]
    assert repr(black_box) in violations[1]


@pytest.mark.parametrize("glass_box", ["EBM", "GAM", "LogisticRegression", "MonotoneGBDT"])
def test_glass_box_types_pass(glass_box: str) -> None:
    assert violations_of(model_type=glass_box) == []


def test_misspelt_glass_box_is_refused_with_a_hint() -> None:
    violations = violations_of(model_type="monotone_gbdt")
    assert len(violations) == 1 and "did you mean 'MonotoneGBDT'?" in violations[0]
    assert violations_of(model_type=None)[0].startswith("Invalid model_type: None.")


@pytest.mark.parametrize("bad", ["PP-", "pp-123", "PP 123", "XX-PP-1", "PP-a b", ""])
def test_bad_proof_pack_ids(bad: str) -> None:
    violations = violations_of(proof_pack_id=bad)
    assert len(violations) == 1 and violations[0].startswith(f"Invalid proof_pack_id format: {bad} (must be")


def test_non_string_proof_pack_id() -> None:
    assert violations_of(proof_pack_id=42)[0].startswith("Invalid proof_pack_id format: 42")
    assert violations_of(proof_pack_id="PP-2025.12_fraud-01") == []


def test_monotonicity_constraints() -> None:
    assert violations_of(monotonicity_constraints={}) == ["monotonicity_constraints cannot be empty"]
    assert violations_of(monotonicity_constraints=None) == ["monotonicity_constraints cannot be empty"]
    assert violations_of(monotonicity_constraints={"a": "none"}) == []
    bad = violations_of(monotonicity_constraints={"a": "up", "b": "increasing"})
    assert bad == ["monotonicity_constraints['a'] = 'up'; use one of ['increasing', 'decreasing', 'none']"]
    assert len(violations_of(monotonicity_constraints=["a"])) == 1


@pytest.mark.parametrize(
    "date",
    [datetime(2026, 1, 2, 18, 30), "2026-01-02T18:30:00", "2026-01-02"],  # noqa: DTZ001
    ids=["datetime", "iso", "date-only"],
)
def test_naive_training_date_refused(date: object) -> None:
    violations = violations_of(training_date=date)
    assert len(violations) == 1 and "has no timezone" in violations[0]


def test_training_date_must_be_utc() -> None:
    assert violations_of(training_date="2026-01-02T18:30:00+00:00") == []
    assert violations_of(training_date=datetime(2026, 1, 2, tzinfo=UTC)) == []
    shifted = violations_of(training_date="2026-01-02T18:30:00+02:00")
    assert len(shifted) == 1 and "is not UTC" in shifted[0]
    assert len(violations_of(training_date=datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=-5))))) == 1
    assert "not ISO 8601" in violations_of(training_date="yesterday")[0]
    assert "not a timestamp" in violations_of(training_date=1767380000)[0]


@pytest.mark.parametrize("version", ["0.3.0", "1.0.0-alpha.1", "1.0.0+20130313144700", "10.20.30-rc.1+build.7"])
def test_semantic_versions_accepted(version: str) -> None:
    assert violations_of(version=version) == []


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.2.3", "1.2.3-", "1.2.3-01", "1.2", "", "1.2.3.4"])
def test_non_semantic_versions_refused(version: str) -> None:
    violations = violations_of(version=version)
    assert len(violations) == 1 and "is not a semantic version" in violations[0]


def test_model_id_must_be_a_uuid() -> None:
    assert violations_of(model_id=str(uuid.uuid4())) == []
    assert violations_of(model_id=str(uuid.uuid4()).upper()) == []
    for bad in ["fraud-model", uuid.uuid4().hex, "{" + str(uuid.uuid4()) + "}", 7]:
        assert len(violations_of(model_id=bad)) == 1


def test_training_data_hash_must_be_sha256() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert violations_of(training_data_hash=digest) == []
    for bad in [digest[:63], digest + "0", "g" * 64, hashlib.md5(b"x").hexdigest(), ""]:  # noqa: S324
        assert len(violations_of(training_data_hash=bad)) == 1


def test_calibration_metrics() -> None:
    partial = violations_of(calibration_metrics={"brier": 0.05})
    assert partial == ["Missing calibration metrics: ['slope', 'intercept']"]
    assert len(violations_of(calibration_metrics={"brier": 1.5, "slope": 1, "intercept": 0})) == 1
    assert len(violations_of(calibration_metrics={"brier": float("nan"), "slope": 1, "intercept": 0})) == 1
    assert len(violations_of(calibration_metrics={"brier": 0.1, "slope": True, "intercept": 0})) == 1
    assert len(violations_of(calibration_metrics={"brier": 0.1, "slope": 1, "intercept": 0, "ece": 0.01})) == 1
    assert violations_of(calibration_metrics="good") == [
        "Missing calibration metrics: ['brier', 'slope', 'intercept']",
        "calibration_metrics must be an object with ['brier', 'slope', 'intercept'], not 'good'",
    ]


def test_explainability_method() -> None:
    for method in ["global_feature_importance", "local_shap", "ebm_native"]:
        assert violations_of(explainability_method=method) == []
    assert len(violations_of(explainability_method="lime")) == 1


def test_lineage() -> None:
    lineage = valid_metadata()["lineage"]
    assert violations_of(lineage=lineage | {"parent_model": None}) == []
    assert violations_of(lineage={k: v for k, v in lineage.items() if k != "config_hash"}) == [
        "lineage lacks 'config_hash'; record it (parent_model may be null)"
    ]
    assert len(violations_of(lineage=lineage | {"config_hash": "abc"})) == 1
    assert len(violations_of(lineage=lineage | {"training_script": " "})) == 1
    assert len(violations_of(lineage=lineage | {"parent_model": ""})) == 1
    assert len(violations_of(lineage=lineage | {"author": "me"})) == 1
    assert len(violations_of(lineage="train.py")) == 1


def test_unknown_field_and_non_object() -> None:
    assert violations_of(trainig_date="2026-01-01T00:00:00Z") == [
        f"unknown metadata field 'trainig_date'; the schema has exactly these fields: {FIELDS}"
    ]
    assert validate_model_metadata(["model_id"])[0] is False


def test_every_violation_reported_at_once() -> None:
    bad = valid_metadata() | {
        "model_type": "GAM",
        "version": "one",
        "proof_pack_id": "X",
        "monotonicity_constraints": {},
    }
    del bad["lineage"]
    _, violations = validate_model_metadata(bad)
    assert len(violations) == 4  # missing lineage, version, monotonicity, proof pack
    with pytest.raises(PolicyViolation) as info:
        parse_model_metadata(bad)
    assert info.value.rules == violations


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(
    drop=st.sets(st.sampled_from(FIELDS)),
    replace=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
)
def test_property_spec_oracle_and_model_agree(drop: set[str], replace: dict[str, Any]) -> None:
    metadata = {k: v for k, v in (valid_metadata() | replace).items() if k not in drop}
    ok, violations = validate_model_metadata(metadata)
    try:
        spec_ok, spec = spec_validate(metadata)
    except (AttributeError, TypeError):
        spec_ok, spec = False, []  # the spec's function crashes on some wrong types; we report them
    for message in spec:
        assert any(v.startswith(message) for v in violations), message
    assert not (ok and not spec_ok)
    try:
        ModelMetadata.model_validate(metadata)
        built = True
    except ValueError:
        built = False
    assert built == ok
