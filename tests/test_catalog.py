"""The governed feature catalog (spec 5): loading, model linkage, leakage, schema-change protocol."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import numpy as np
import pytest

from governance.errors import ConfigError
from governance.policy.catalog import (
    FeatureCatalog,
    leaking_features,
    load_catalog,
    parse_catalog,
    schema_changes,
    validate_feature_linkage,
    validate_schema_change,
)

SHIPPED = Path(__file__).resolve().parents[1] / "governance" / "policy" / "feature_catalog.yaml"

SMALL = """
version: 2
labels: [is_fraud]
features:
  amount:
    dtype: float64
    null_handling: reject
    bins: [0, 10, 100]
  age_days:
    dtype: int64
    null_handling: impute_median
  country:
    dtype: category
  event_ts:
    dtype: timestamp
    null_handling: reject
  local_ts:
    dtype: timestamp
    timezone_utc: false
    null_handling: reject
  utc_ts:
    dtype: timestamp
    timezone_utc: true
    null_handling: reject
  refund_flag:
    dtype: bool
    null_handling: reject
    leakage: true
  fraud_score_v0:
    dtype: float64
    null_handling: native
    derived_from: [is_fraud]
  score_ratio:
    dtype: float64
    null_handling: native
    derived_from: [amount, fraud_score_v0]
  is_fraud:
    dtype: bool
    null_handling: reject
"""


@pytest.fixture
def small() -> FeatureCatalog:
    return parse_catalog(SMALL)


def test_shipped_catalog_is_valid_and_binned() -> None:
    catalog = load_catalog(SHIPPED)
    assert 10 <= len(catalog.features) <= 15
    assert catalog.schema_change_protocol.approval_tag == "[ALEX-APPROVAL]"
    rng = np.random.default_rng(7)
    for name, spec in catalog.features.items():
        assert spec.null_handling is not None, name
        if spec.dtype in ("float64", "float32", "int64", "int32"):
            assert spec.bins is not None, f"{name}: numeric features carry bins for the drift histograms"
            edges = np.asarray(spec.bins)
            assert np.all(np.diff(edges) > 0)
            # The drift metric can histogram values with these edges: every in-range value lands in a bin.
            counts, _ = np.histogram(rng.uniform(edges[0], edges[-1], 1000), bins=edges)
            assert counts.sum() == 1000
        if spec.dtype == "timestamp":
            assert spec.timezone_utc is True
    assert dict(leaking_features(catalog)) == {"days_to_chargeback": "is flagged leakage: true in the catalog"}


def test_shipped_catalog_accepts_a_risk_model_and_refuses_its_leak() -> None:
    catalog = load_catalog(SHIPPED)
    model = {name: spec.dtype for name, spec in catalog.features.items() if name != "days_to_chargeback"}
    assert validate_feature_linkage(catalog, model) == (True, [])
    ok, violations = validate_feature_linkage(catalog, model | {"days_to_chargeback": "float64"})
    assert not ok and violations == [
        "Feature 'days_to_chargeback' leaks the outcome: it is flagged leakage: true in the catalog; remove it"
    ]


def test_unknown_features_in_spec_wording(small: FeatureCatalog) -> None:
    ok, violations = validate_feature_linkage(small, {"amount": "float64", "zip": "string", "ip_address": "string"})
    assert not ok and len(violations) == 1
    prefix = "Model uses features not in catalog: "
    assert violations[0].startswith(prefix)
    assert ast.literal_eval(violations[0][len(prefix) :]) == {"zip", "ip_address"}


def test_dtype_mismatch_in_spec_wording(small: FeatureCatalog) -> None:
    assert validate_feature_linkage(small, {"amount": "float32", "age_days": "int64"}) == (
        False,
        ["Feature 'amount' dtype mismatch: catalog=float64, model=float32"],
    )


def test_null_handling_missing(small: FeatureCatalog) -> None:
    ok, violations = validate_feature_linkage(small, {"country": "category"})
    assert not ok and len(violations) == 1
    assert violations[0].startswith("Feature 'country' has no null_handling in the catalog; define one of")


def test_timestamps_must_be_utc(small: FeatureCatalog) -> None:
    assert validate_feature_linkage(small, {"utc_ts": "timestamp"}) == (True, [])
    for name in ("event_ts", "local_ts"):
        ok, violations = validate_feature_linkage(small, {name: "timestamp"})
        assert not ok and violations == [
            f"Feature '{name}' is a timestamp not declared timezone_utc: true; timestamps must be UTC"
        ]


def test_leakage_patterns(small: FeatureCatalog) -> None:
    leaks = leaking_features(small)
    assert leaks == {
        "refund_flag": "is flagged leakage: true in the catalog",
        "fraud_score_v0": "is derived from 'is_fraud', which leaks the outcome",
        "score_ratio": "is derived from 'is_fraud' via 'fraud_score_v0', which leaks the outcome",
        "is_fraud": "is a label column",
    }
    for name in leaks:
        ok, violations = validate_feature_linkage(small, {name: small.features[name].dtype})
        assert not ok and violations == [f"Feature '{name}' leaks the outcome: it {leaks[name]}; remove it"]


def test_every_violation_at_once(small: FeatureCatalog) -> None:
    model = {"amount": "int64", "country": "category", "event_ts": "timestamp", "is_fraud": "bool", "zip": "string"}
    ok, violations = validate_feature_linkage(small, model)
    assert not ok
    assert [v.split(" ")[1] for v in violations] == ["uses", "'amount'", "'country'", "'event_ts'", "'is_fraud'"]
    assert validate_feature_linkage(small, {}) == (
        False,
        ["Model declares no input features; list every feature with its dtype"],
    )


def test_derivation_cycles_terminate() -> None:
    catalog = parse_catalog(
        """
        version: 1
        labels: [y]
        features:
          a: {dtype: float64, null_handling: native, derived_from: [b]}
          b: {dtype: float64, null_handling: native, derived_from: [a, raw]}
        """
    )
    assert leaking_features(catalog) == {}


def _with(change: str) -> str:
    return SMALL + textwrap.indent(textwrap.dedent(change), "  ")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (_with("bad:\n  dtype: decimal\n  null_handling: reject\n"), "features.bad.dtype"),
        (_with("bad:\n  dtype: float64\n  null_handling: drop\n"), "features.bad.null_handling"),
        (_with("bad:\n  dtype: float64\n  null_handeling: reject\n"), "features.bad.null_handeling"),
        (_with("bad:\n  dtype: float64\n  bins: [0, 5, 5]\n"), "strictly increasing"),
        (_with("bad:\n  dtype: float64\n  bins: [1]\n"), "at least two finite edges"),
        (_with("bad:\n  dtype: float64\n  bins: [0, .inf]\n"), "at least two finite edges"),
        (_with("bad:\n  dtype: category\n  bins: [0, 1]\n"), "numeric dtypes only"),
        (_with("bad:\n  dtype: float64\n  timezone_utc: true\n"), "timestamp only"),
        (_with("bad:\n  dtype: int64\n  null_handling: impute_constant\n"), "fill_value is required"),
        (_with("bad:\n  dtype: int64\n  null_handling: impute_constant\n  fill_value: x\n"), "does not fit"),
        (_with("bad:\n  dtype: float64\n  null_handling: missing_category\n"), "missing_category needs"),
        (_with("amount:\n  dtype: float64\n"), "'amount' appears twice"),
        (SMALL + "validation_rules:\n  no_data_leakage_patterns: false\n", "validation_rules.no_data_leakage_patterns"),
        (SMALL + "owner: me\n", "owner"),
        ("features: [a, b]\n", "version"),
        ("- just a list\n", "must be a mapping"),
        ("features: {a: [\n", "not valid YAML"),
    ],
)
def test_bad_catalogs_are_refused_by_key(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match="^test.yaml: ") as info:
        parse_catalog(text, "test.yaml")
    assert needle in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "nope.yaml")


def test_schema_change_protocol(small: FeatureCatalog) -> None:
    assert validate_schema_change(small, small, change_note="", migration_notes=None) == (True, [])
    grown = parse_catalog(SMALL.replace("version: 2", "version: 3") + "  merchant_id:\n    dtype: string\n")
    assert schema_changes(small, grown) == ["added feature 'merchant_id'"]
    ok, violations = validate_schema_change(small, grown, change_note="add merchant id", migration_notes="")
    assert not ok and violations == [
        "schema change needs approval: put '[ALEX-APPROVAL]' in the change note",
        "schema change needs migration notes: say how consumers and models migrate",
    ]
    assert validate_schema_change(
        small, grown, change_note="[ALEX-APPROVAL] add merchant id", migration_notes="No model uses it yet."
    ) == (True, [])
    same_version = parse_catalog(SMALL.replace("bins: [0, 10, 100]", "bins: [0, 10, 1000]"))
    assert schema_changes(small, same_version) == ["changed feature 'amount': bins"]
    ok, violations = validate_schema_change(small, same_version, change_note="[ALEX-APPROVAL]", migration_notes="x")
    assert violations == ["catalog version 2 must be above 2 for a schema change"]


def test_a_change_cannot_relax_its_own_approval(small: FeatureCatalog) -> None:
    relaxed = parse_catalog(
        SMALL.replace("version: 2", "version: 3")
        + "schema_change_protocol:\n  requires_approval: false\n  migration_notes_required: false\n"
    )
    ok, violations = validate_schema_change(small, relaxed, change_note="", migration_notes=None)
    assert not ok and len(violations) == 2
    assert schema_changes(small, relaxed) == ["schema_change_protocol changed"]
