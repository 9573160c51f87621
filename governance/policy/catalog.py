"""The governed feature catalog of spec section 5, and the check that a model only uses its features.

A catalog is YAML (``feature_catalog.yaml`` beside this module ships a worked example, the default)::

    version: 3                          # raised on every schema change
    labels: [is_fraud]                  # outcome columns: a feature that is, or derives from, one leaks
    validation_rules:                   # spec 5.1; every rule must be true (they cannot be switched off)
      all_features_in_catalog: true
      null_handling_defined: true
      timezone_utc_enforced: true
      no_data_leakage_patterns: true
    schema_change_protocol:             # spec 5.1
      requires_approval: true
      approval_tag: "[ALEX-APPROVAL]"
      migration_notes_required: true
    features:
      transaction_amount_usd:
        dtype: float64                  # float64 float32 int64 int32 bool category string timestamp
        null_handling: reject           # see NULL_HANDLING; impute_constant also needs fill_value
        bins: [0, 10, 100, 1000]        # numeric only: strictly increasing edges, for drift histograms
        derived_from: [raw_amount]      # lineage; checked for label leakage, transitively
      transaction_ts:
        dtype: timestamp
        timezone_utc: true              # timestamp only; a model cannot use a non-UTC timestamp
      days_to_chargeback:
        dtype: float64
        leakage: true                   # known only after the outcome: never a model input

Loading refuses (:class:`ConfigError`, naming the key) unknown keys, duplicate keys, unknown dtypes or
null strategies, unordered bins and keys that do not fit the dtype. :func:`validate_feature_linkage`
reproduces spec 5.2 (unknown features, dtype mismatches, same wording) and adds the 5.1 rules for the
features the model uses: null handling defined, timestamps UTC, no leakage. A catalog may thus hold a
feature no model may use (an analytics-only column), but a model that uses it is refused.

Guarantees: pure functions apart from :func:`load_catalog` (reads one file); violations come in a fixed
order (unknown features, then per feature in sorted order), so the same input gives the same list.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from governance.contract.yamlfile import load_strict_yaml
from governance.errors import ConfigError

__all__ = [
    "DTYPES",
    "NULL_HANDLING",
    "NUMERIC_DTYPES",
    "FeatureCatalog",
    "FeatureSpec",
    "SchemaChangeProtocol",
    "ValidationRules",
    "leaking_features",
    "load_catalog",
    "parse_catalog",
    "schema_changes",
    "validate_feature_linkage",
    "validate_schema_change",
]

Dtype = Literal["float64", "float32", "int64", "int32", "bool", "category", "string", "timestamp"]
DTYPES: tuple[str, ...] = get_args(Dtype)
NUMERIC_DTYPES: tuple[str, ...] = ("float64", "float32", "int64", "int32")
NullHandling = Literal[
    "reject",  # a null fails the request
    "impute_constant",  # replaced by fill_value
    "impute_mean",
    "impute_median",
    "impute_mode",
    "missing_category",  # its own category (category/string features)
    "native",  # the model handles missing values itself (EBM, GBDT)
]
NULL_HANDLING: tuple[str, ...] = get_args(NullHandling)
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class FeatureSpec(_Strict):
    """One governed feature. ``null_handling`` None means undefined: no model may use the feature."""

    dtype: Dtype
    null_handling: NullHandling | None = None
    fill_value: float | int | str | bool | None = None
    description: str = ""
    source: str = ""
    bins: tuple[float, ...] | None = None
    categories: tuple[str, ...] | None = None
    timezone_utc: bool | None = None
    leakage: bool = False
    derived_from: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _lists_as_tuples(cls, data: Any) -> Any:
        # YAML gives lists; strict mode takes tuples only. Numbers in bins may be ints.
        if isinstance(data, dict):
            data = dict(data)
            for key in ("bins", "categories", "derived_from"):
                if isinstance(data.get(key), list):
                    data[key] = tuple(float(v) if key == "bins" and _is_real(v) else v for v in data[key])
        return data

    @model_validator(mode="after")
    def _fits_dtype(self) -> Self:
        if self.bins is not None:
            if self.dtype not in NUMERIC_DTYPES:
                raise ValueError(f"bins apply to numeric dtypes only, not {self.dtype}")
            if len(self.bins) < 2 or not all(math.isfinite(b) for b in self.bins):
                raise ValueError(f"bins {list(self.bins)} must be at least two finite edges")
            if any(b >= a for b, a in zip(self.bins, self.bins[1:], strict=False)):
                raise ValueError(f"bins {list(self.bins)} must be strictly increasing")
        if self.categories is not None and self.dtype != "category":
            raise ValueError(f"categories apply to dtype category only, not {self.dtype}")
        if self.timezone_utc is not None and self.dtype != "timestamp":
            raise ValueError(f"timezone_utc applies to dtype timestamp only, not {self.dtype}")
        if (self.null_handling == "impute_constant") != (self.fill_value is not None):
            raise ValueError("fill_value is required with null_handling impute_constant, and only with it")
        if self.fill_value is not None and not _fits(self.fill_value, self.dtype):
            raise ValueError(f"fill_value {self.fill_value!r} does not fit dtype {self.dtype}")
        if self.null_handling == "missing_category" and self.dtype not in ("category", "string"):
            raise ValueError(f"null_handling missing_category needs dtype category or string, not {self.dtype}")
        return self


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fits(value: object, dtype: str) -> bool:
    if dtype.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if dtype.startswith("float"):
        return _is_real(value)
    if dtype == "bool":
        return isinstance(value, bool)
    # A constant timestamp would be a made-up event time: not allowed.
    return isinstance(value, str) and dtype in ("category", "string")


class ValidationRules(_Strict):
    """Spec 5.1 validation rules. All are mandatory: a catalog that sets one false is refused."""

    all_features_in_catalog: Literal[True] = True
    null_handling_defined: Literal[True] = True
    timezone_utc_enforced: Literal[True] = True
    no_data_leakage_patterns: Literal[True] = True


class SchemaChangeProtocol(_Strict):
    """Spec 5.1: what a change to the catalog needs (see :func:`validate_schema_change`)."""

    requires_approval: bool = True
    approval_tag: Annotated[str, StringConstraints(min_length=1)] = "[ALEX-APPROVAL]"
    migration_notes_required: bool = True


class FeatureCatalog(_Strict):
    """The governed features of one scoring domain, with their label columns."""

    version: Annotated[int, Field(ge=1)]
    labels: Annotated[tuple[FeatureName, ...], Field(min_length=1)]
    features: Annotated[dict[FeatureName, FeatureSpec], Field(min_length=1)]
    validation_rules: ValidationRules = ValidationRules()
    schema_change_protocol: SchemaChangeProtocol = SchemaChangeProtocol()

    @model_validator(mode="before")
    @classmethod
    def _labels_as_tuple(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("labels"), list):
            data = {**data, "labels": tuple(data["labels"])}
        return data


def parse_catalog(text: str, source: str = "feature catalog") -> FeatureCatalog:
    """The catalog in YAML ``text``; :class:`ConfigError` naming ``source`` and every bad key otherwise."""
    try:
        data = load_strict_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping with version, labels and features")
    try:
        return FeatureCatalog.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


def load_catalog(path: str | Path | None = None) -> FeatureCatalog:
    """Read and parse the catalog file at ``path``, or the shipped one (package data) when None.

    The only I/O in this module. A relative path is resolved against the working directory and named,
    resolved, in errors, so a process started elsewhere says which file it looked for.
    """
    if path is None:
        source = "governance/policy/feature_catalog.yaml (shipped)"
        text = importlib.resources.files("governance.policy").joinpath("feature_catalog.yaml").read_text("utf-8")
        return parse_catalog(text, source)
    resolved = Path(path).expanduser().resolve()
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"feature catalog {resolved}: cannot read it ({exc.strerror}); set SHADOWGATE_CATALOG_PATH or --catalog "
            "to an existing file, or unset it for the shipped catalog"
        ) from None
    return parse_catalog(text, str(resolved))


def leaking_features(catalog: FeatureCatalog) -> Mapping[str, str]:
    """Every catalog feature that leaks the outcome, with why: flagged, a label, or derived from one.

    Derivation is followed through other catalog features (cycles are harmless).
    """
    labels = set(catalog.labels)
    reasons: dict[str, str] = {}
    for name, spec in catalog.features.items():
        if spec.leakage:
            reasons[name] = "is flagged leakage: true in the catalog"
            continue
        if name in labels:
            reasons[name] = "is a label column"
            continue
        # Breadth-first over derivations, remembering the path so the message can show it.
        seen = {name}
        frontier: list[tuple[str, tuple[str, ...]]] = [(parent, ()) for parent in spec.derived_from]
        while frontier:
            parent, via = frontier.pop(0)
            if parent in labels or (parent in catalog.features and catalog.features[parent].leakage):
                path = f" via {' -> '.join(repr(v) for v in via)}" if via else ""
                reasons[name] = f"is derived from {parent!r}{path}, which leaks the outcome"
                break
            if parent not in seen and parent in catalog.features:
                seen.add(parent)
                frontier += [(grand, (*via, parent)) for grand in catalog.features[parent].derived_from]
    return reasons


def _set_repr(names: set[str]) -> str:
    # The spec prints a Python set; sorted so the message does not change between runs.
    return "{" + ", ".join(repr(n) for n in sorted(names)) + "}"


def validate_feature_linkage(catalog: FeatureCatalog, model_features: Mapping[str, str]) -> tuple[bool, list[str]]:
    """``(linked, violations)`` for a model's features ``{name: dtype}`` against ``catalog``."""
    if not model_features:
        return False, ["Model declares no input features; list every feature with its dtype"]
    violations: list[str] = []
    unknown = set(model_features) - set(catalog.features)
    if unknown:
        violations.append(f"Model uses features not in catalog: {_set_repr(unknown)}")
    leaks = leaking_features(catalog)
    for feature in sorted(set(model_features) & set(catalog.features)):
        spec, actual = catalog.features[feature], model_features[feature]
        if spec.dtype != actual:
            violations.append(f"Feature '{feature}' dtype mismatch: catalog={spec.dtype}, model={actual}")
        if spec.null_handling is None:
            violations.append(
                f"Feature '{feature}' has no null_handling in the catalog; define one of {list(NULL_HANDLING)}"
            )
        if spec.dtype == "timestamp" and spec.timezone_utc is not True:
            violations.append(
                f"Feature '{feature}' is a timestamp not declared timezone_utc: true; timestamps must be UTC"
            )
        if feature in leaks:
            violations.append(f"Feature '{feature}' leaks the outcome: it {leaks[feature]}; remove it")
    return not violations, violations


def schema_changes(old: FeatureCatalog, new: FeatureCatalog) -> list[str]:
    """What changed from ``old`` to ``new``: added, removed and redefined features, labels, protocol."""
    changes = [f"added feature {name!r}" for name in sorted(set(new.features) - set(old.features))]
    changes += [f"removed feature {name!r}" for name in sorted(set(old.features) - set(new.features))]
    for name in sorted(set(old.features) & set(new.features)):
        before, after = old.features[name].model_dump(), new.features[name].model_dump()
        fields = [key for key in before if before[key] != after[key]]
        if fields:
            changes.append(f"changed feature {name!r}: {', '.join(fields)}")
    if old.labels != new.labels:
        changes.append(f"labels {list(old.labels)} -> {list(new.labels)}")
    if old.schema_change_protocol != new.schema_change_protocol:
        changes.append("schema_change_protocol changed")
    return changes


def validate_schema_change(
    old: FeatureCatalog, new: FeatureCatalog, *, change_note: str, migration_notes: str | None
) -> tuple[bool, list[str]]:
    """``(allowed, violations)`` for replacing ``old`` by ``new`` under ``old``'s change protocol.

    The protocol in force is the old catalog's, so a change cannot relax its own approval. No change at
    all needs nothing. Otherwise the version must increase, ``change_note`` must carry the approval tag
    when approval is required, and ``migration_notes`` must be written when they are required.
    """
    if not schema_changes(old, new):
        return True, []
    protocol = old.schema_change_protocol
    violations = []
    if new.version <= old.version:
        violations.append(f"catalog version {new.version} must be above {old.version} for a schema change")
    if protocol.requires_approval and protocol.approval_tag not in change_note:
        violations.append(f"schema change needs approval: put {protocol.approval_tag!r} in the change note")
    if protocol.migration_notes_required and not (migration_notes or "").strip():
        violations.append("schema change needs migration notes: say how consumers and models migrate")
    return not violations, violations
