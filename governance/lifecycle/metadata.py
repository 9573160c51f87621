"""The ten required model-metadata fields of spec section 4 and their validation (ALEX Rule #15).

:func:`validate_model_metadata` reproduces the spec's 4.2 function message for message (each of its
messages is the start of one of ours), and is stricter; every field is checked, and every problem is
reported, not only the first:

========================  ==================================================================
field                     rule
========================  ==================================================================
model_id                  a UUID in canonical 8-4-4-4-12 form
model_type                one of EBM, GAM, LogisticRegression, MonotoneGBDT (exact spelling);
                          black-box types (XGBoost, RandomForest, ...) refused in spec 11's words
version                   a semantic version (semver 2.0.0: ``MAJOR.MINOR.PATCH[-pre][+build]``)
training_date             ISO 8601 timestamp (or datetime) with a UTC offset of zero; naive refused
training_data_hash        SHA-256 as 64 hex digits
monotonicity_constraints  non-empty object ``{feature: "increasing" | "decreasing" | "none"}``
calibration_metrics       exactly brier, slope, intercept: finite numbers, brier in [0, 1]
explainability_method     global_feature_importance, local_shap or ebm_native
proof_pack_id             ``PP-`` followed by letters, digits, ``.``, ``_`` or ``-``
lineage                   exactly parent_model (string, or null for a first model), training_script
                          (non-empty string) and config_hash (SHA-256 hex)
========================  ==================================================================

Unknown fields are refused (a misspelt field would otherwise pass as "missing" plus noise).
:class:`ModelMetadata` is the typed form; it cannot be constructed from invalid data.

Guarantees: pure functions, no clock (a training date in the future is not detected here); messages
come in a fixed order (the spec's checks in the spec's order, then the other fields in field order), so
the same input always gives the same list.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, TypeGuard

from pydantic import BaseModel, ConfigDict, model_validator

from governance.errors import PolicyViolation

__all__ = [
    "ALLOWED_MODEL_TYPES",
    "BLACK_BOX_MODEL_TYPES",
    "CALIBRATION_KEYS",
    "EXPLAINABILITY_METHODS",
    "LINEAGE_KEYS",
    "MONOTONICITY_DIRECTIONS",
    "REQUIRED_METADATA_FIELDS",
    "CalibrationMetrics",
    "Lineage",
    "ModelMetadata",
    "parse_model_metadata",
    "validate_model_metadata",
]

REQUIRED_METADATA_FIELDS: tuple[str, ...] = (
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
)
ALLOWED_MODEL_TYPES: tuple[str, ...] = ("EBM", "GAM", "LogisticRegression", "MonotoneGBDT")
# Spec 11 names XGBoost and RandomForest "etc."; these are the usual members of that family, matched on
# the lower-cased name without punctuation, so "xgb_classifier" and "Random Forest" are caught too.
BLACK_BOX_MODEL_TYPES: tuple[str, ...] = (
    "XGBoost",
    "RandomForest",
    "LightGBM",
    "CatBoost",
    "GradientBoosting",
    "ExtraTrees",
    "AdaBoost",
    "IsolationForest",
    "NeuralNetwork",
    "MLP",
    "DNN",
    "SVM",
    "KNN",
)
_BLACK_BOX_TOKENS: tuple[str, ...] = (
    "xgb",
    "randomforest",
    "lightgbm",
    "lgbm",
    "catboost",
    "gradientboost",
    "gbdt",
    "gbm",
    "extratrees",
    "adaboost",
    "isolationforest",
    "neuralnet",
    "mlp",
    "dnn",
    "deeplearning",
    "svm",
    "svc",
    "knn",
    "kneighbors",
)
EXPLAINABILITY_METHODS: tuple[str, ...] = ("global_feature_importance", "local_shap", "ebm_native")
MONOTONICITY_DIRECTIONS: tuple[str, ...] = ("increasing", "decreasing", "none")
CALIBRATION_KEYS: tuple[str, ...] = ("brier", "slope", "intercept")
LINEAGE_KEYS: tuple[str, ...] = ("parent_model", "training_script", "config_hash")

# semver.org's recommended expression, unchanged.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_PROOF_PACK = re.compile(r"^PP-[A-Za-z0-9][A-Za-z0-9._-]*$")
_ALNUM = re.compile(r"[^0-9a-z]+")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_model_id(value: object) -> list[str]:
    if isinstance(value, str):
        try:
            if str(uuid.UUID(value)) == value.lower():
                return []
        except ValueError:
            pass
    return [f"model_id {value!r} is not a UUID; use the canonical 8-4-4-4-12 form, e.g. str(uuid.uuid4())"]


def _check_model_type(value: object) -> list[str]:
    if value in ALLOWED_MODEL_TYPES:
        return []
    messages = [f"Invalid model_type: {value}. Allowed: {list(ALLOWED_MODEL_TYPES)}"]
    key = _ALNUM.sub("", value.lower()) if isinstance(value, str) else ""
    spelled = [t for t in ALLOWED_MODEL_TYPES if _ALNUM.sub("", t.lower()) == key]
    if spelled:
        messages[0] += f" (did you mean {spelled[0]!r}? the spelling must be exact)"
    elif any(token in key for token in _BLACK_BOX_TOKENS):
        messages.append(
            f"model_type {value!r} is a black-box model: black-box models (XGBoost, RandomForest, etc.) "
            f"cannot be used (spec 11); retrain as a glass-box type: {', '.join(ALLOWED_MODEL_TYPES)}"
        )
    return messages


def _check_version(value: object) -> list[str]:
    if isinstance(value, str) and _SEMVER.match(value):
        return []
    return [f"version {value!r} is not a semantic version; use MAJOR.MINOR.PATCH such as '0.3.0'"]


def _check_training_date(value: object) -> list[str]:
    moment: object = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return [f"training_date {value!r} is not ISO 8601; use e.g. '2025-12-01T09:30:00Z'"]
    if not isinstance(moment, datetime):
        return [f"training_date {value!r} is not a timestamp; use ISO 8601 UTC, e.g. '2025-12-01T09:30:00Z'"]
    offset = moment.utcoffset()
    if offset is None:
        return [f"training_date {value!s} has no timezone; give it in UTC, e.g. '2025-12-01T09:30:00Z'"]
    if offset != timedelta(0):
        return [f"training_date {value!s} is not UTC (offset {offset}); convert it to UTC"]
    return []


def _check_training_data_hash(value: object) -> list[str]:
    if isinstance(value, str) and _SHA256.match(value):
        return []
    return [f"training_data_hash {value!r} is not a SHA-256 digest; give the 64 hex digits of the dataset"]


def _check_monotonicity(value: object) -> list[str]:
    if not isinstance(value, Mapping):
        if not value:
            return ["monotonicity_constraints cannot be empty"]
        return [f"monotonicity_constraints must be an object {{feature: direction}}, not {value!r}"]
    if not value:
        return ["monotonicity_constraints cannot be empty"]
    messages = []
    for feature, direction in value.items():
        if not isinstance(feature, str) or not feature:
            messages.append(f"monotonicity_constraints key {feature!r} must be a feature name")
        if direction not in MONOTONICITY_DIRECTIONS:
            messages.append(
                f"monotonicity_constraints[{feature!r}] = {direction!r}; use one of {list(MONOTONICITY_DIRECTIONS)}"
            )
    return messages


def _check_exact_keys(field: str, value: Mapping[Any, object], keys: tuple[str, ...]) -> list[str]:
    return [f"{field} has unknown key {key!r}; allowed keys: {list(keys)}" for key in value if key not in keys]


def _check_calibration(value: object) -> list[str]:
    metrics: Mapping[Any, object] = value if isinstance(value, Mapping) else {}
    missing = [m for m in CALIBRATION_KEYS if m not in metrics]
    messages = [f"Missing calibration metrics: {missing}"] if missing else []
    if not isinstance(value, Mapping):
        return [
            *messages,
            f"calibration_metrics must be an object with {list(CALIBRATION_KEYS)}, not {value!r}",
        ]
    messages += _check_exact_keys("calibration_metrics", value, CALIBRATION_KEYS)
    for key in CALIBRATION_KEYS:
        if key in value and not _is_number(value[key]):
            messages.append(f"calibration_metrics[{key!r}] = {value[key]!r} must be a finite number")
    brier = value.get("brier")
    if _is_number(brier) and not 0.0 <= brier <= 1.0:
        messages.append(f"calibration_metrics['brier'] = {brier!r} must lie in [0, 1]")
    return messages


def _check_explainability(value: object) -> list[str]:
    if value in EXPLAINABILITY_METHODS:
        return []
    return [f"explainability_method {value!r} is not one of {list(EXPLAINABILITY_METHODS)}"]


def _check_proof_pack_id(value: object) -> list[str]:
    if isinstance(value, str) and _PROOF_PACK.match(value):
        return []
    return [f"Invalid proof_pack_id format: {value} (must be 'PP-' followed by letters, digits, '.', '_' or '-')"]


def _check_lineage(value: object) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"lineage must be an object with {list(LINEAGE_KEYS)}, not {value!r}"]
    messages = [
        f"lineage lacks {key!r}; record it (parent_model may be null)" for key in LINEAGE_KEYS if key not in value
    ]
    messages += _check_exact_keys("lineage", value, LINEAGE_KEYS)
    parent = value.get("parent_model")
    if "parent_model" in value and parent is not None and not (isinstance(parent, str) and parent):
        messages.append(f"lineage['parent_model'] = {parent!r} must be a model reference or null")
    script = value.get("training_script")
    if "training_script" in value and not (isinstance(script, str) and script.strip()):
        messages.append(f"lineage['training_script'] = {script!r} must name the training script")
    config_hash = value.get("config_hash")
    if "config_hash" in value and not (isinstance(config_hash, str) and _SHA256.match(config_hash)):
        messages.append(f"lineage['config_hash'] = {config_hash!r} must be a SHA-256 digest (64 hex digits)")
    return messages


_CHECKS: Mapping[str, Callable[[object], list[str]]] = {
    "model_id": _check_model_id,
    "model_type": _check_model_type,
    "version": _check_version,
    "training_date": _check_training_date,
    "training_data_hash": _check_training_data_hash,
    "monotonicity_constraints": _check_monotonicity,
    "calibration_metrics": _check_calibration,
    "explainability_method": _check_explainability,
    "proof_pack_id": _check_proof_pack_id,
    "lineage": _check_lineage,
}
# Fields the spec's 4.2 function judges even when they are absent (it reads them with .get()), in its order.
_JUDGED_WHEN_ABSENT = ("model_type", "calibration_metrics", "monotonicity_constraints", "proof_pack_id")


def validate_model_metadata(metadata: object) -> tuple[bool, list[str]]:
    """``(valid, violations)`` for a metadata object, as spec 4.2 and stricter (see module docstring).

    For an absent field the spec's own messages are kept ("Missing required fields: [...]" and, for
    the four fields 4.2 reads with a default, its message about that default).
    """
    if not isinstance(metadata, Mapping):
        return False, [f"metadata must be an object with the fields {list(REQUIRED_METADATA_FIELDS)}"]
    violations: list[str] = []
    missing = [f for f in REQUIRED_METADATA_FIELDS if f not in metadata]
    if missing:
        violations.append(f"Missing required fields: {missing}")
    defaults: dict[str, object] = {"model_type": None, "calibration_metrics": {}, "proof_pack_id": ""}
    for field in (*_JUDGED_WHEN_ABSENT, *(f for f in REQUIRED_METADATA_FIELDS if f not in _JUDGED_WHEN_ABSENT)):
        if field in metadata:
            violations += _CHECKS[field](metadata[field])
        elif field in _JUDGED_WHEN_ABSENT:
            violations += _CHECKS[field](defaults.get(field, {}))
    violations += [
        f"unknown metadata field {key!r}; the schema has exactly these fields: {list(REQUIRED_METADATA_FIELDS)}"
        for key in metadata
        if key not in _CHECKS
    ]
    return not violations, violations


class CalibrationMetrics(BaseModel):
    """Calibration proof: Brier score, calibration slope and intercept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    brier: float
    slope: float
    intercept: float


class Lineage(BaseModel):
    """Where the model came from: parent model (None for a first model), script and config digest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parent_model: str | None
    training_script: str
    config_hash: str


class ModelMetadata(BaseModel):
    """The ten fields of spec 4.1, valid by construction (:func:`validate_model_metadata` runs first)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    model_type: Literal["EBM", "GAM", "LogisticRegression", "MonotoneGBDT"]
    version: str
    training_date: datetime
    training_data_hash: str
    monotonicity_constraints: dict[str, Literal["increasing", "decreasing", "none"]]
    calibration_metrics: CalibrationMetrics
    explainability_method: Literal["global_feature_importance", "local_shap", "ebm_native"]
    proof_pack_id: str
    lineage: Lineage

    @model_validator(mode="before")
    @classmethod
    def _validate(cls, data: Any) -> Any:
        ok, violations = validate_model_metadata(data)
        if not ok:
            raise ValueError("; ".join(violations))
        return data


def parse_model_metadata(metadata: object) -> ModelMetadata:
    """The typed metadata, or :class:`PolicyViolation` whose ``rules`` are every violation."""
    ok, violations = validate_model_metadata(metadata)
    if not ok:
        raise PolicyViolation(
            f"model metadata refused, {len(violations)} violation(s): " + "; ".join(violations), violations
        )
    return ModelMetadata.model_validate(metadata)
