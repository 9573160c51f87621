"""Policy as code: every threshold, duration and trigger of the lifecycle spec, validated and hashed.

The shipped default (``default_policy.yaml`` beside this module) encodes the tables of
``model-lifecycle-policy-v2.md`` sections 1.2, 2.1, 3.1, 3.2, 6.4 and 8.1. :func:`load_policy` reads a
YAML file into :class:`Policy` and fails closed: an unknown key, a duplicated key, a wrong type (strict
mode: ``"0.1"`` is not a number) or an impossible value (a P95 limit above the P99 one, a negative
duration, a canary share outside (0, 1], a minimum above its maximum) raises
:class:`~governance.errors.ConfigError` with a one-line message naming the key path, e.g.
``shadow.p95_abs_delta.threshold``.

Comparison direction is part of the data: an upper limit breaches when ``value >= threshold`` (or ``>``
where ``fails_when`` says so), a lower limit when ``value <= threshold``; a range breaches strictly
outside ``[low, high]``. The type of each key fixes which directions are allowed.

Guarantees: a :class:`Policy` is immutable; :meth:`Policy.hash` is the SHA-256 of the canonical JSON of
the validated model (sorted keys, no whitespace), so two files that differ only in comments, key order
or number spelling (``0.10`` vs ``0.1``) hash equal, and any change of value changes the hash.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from governance.contract.findings import Action, AlertSeverity, Enforcement, Severity
from governance.contract.stages import ModelType
from governance.contract.yamlfile import load_strict_yaml
from governance.errors import ConfigError

__all__ = [
    "Policy",
    "Range",
    "RangeTrigger",
    "StageDuration",
    "ThresholdTrigger",
    "TriggerFallback",
    "UnitLowerLimit",
    "UnitUpperLimit",
    "UpperLimit",
    "load_policy",
    "parse_policy",
    "window_seconds",
]

DriftMetric = Literal["mean_abs_delta", "p95_abs_delta", "p99_abs_delta", "kl_divergence", "psi", "js_divergence"]
# The signature algorithms governance.crypto implements (ML-DSA-65 is the spec's Dilithium-3).
SigningAlgorithm = Literal["ML-DSA-65", "SLH-DSA-SHA2-128f"]

_NonNeg = Annotated[float, Field(ge=0)]
_Unit = Annotated[float, Field(ge=0, le=1)]
_Name = Annotated[str, Field(min_length=1, max_length=64)]


class _KeyError(ValueError):
    """A cross-field violation that knows the key path (relative to the model that raised it)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class UpperLimit(_Strict):
    """A metric that must stay low: breaches when ``value >= threshold`` (or ``>``)."""

    threshold: _NonNeg
    fails_when: Literal[">=", ">"] = ">="
    enforcement: Enforcement


class UnitUpperLimit(UpperLimit):
    """An upper limit on a probability or a score difference, so within [0, 1]."""

    threshold: _Unit


class UnitLowerLimit(_Strict):
    """A metric that must stay high: breaches when ``value <= threshold`` (or ``<``)."""

    threshold: _Unit
    fails_when: Literal["<=", "<"] = "<="
    enforcement: Enforcement


class Range(_Strict):
    """Breaches when the value is strictly outside ``[low, high]``."""

    low: float
    high: float
    enforcement: Enforcement

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low > self.high:
            raise _KeyError("low", f"low {self.low} is above high {self.high}; swap them")
        return self


class StageDuration(_Strict):
    """Minimum (and optional maximum, guidance) days a model spends in one lifecycle state."""

    min_days: Annotated[int, Field(ge=0)]
    max_days: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_days is not None and self.max_days < self.min_days:
            raise _KeyError("max_days", f"max_days {self.max_days} is below min_days {self.min_days}")
        return self


class Lifecycle(_Strict):
    """Section 1.2, keyed by stage name; and two lifecycle switches (docs/gates.md).

    ``shadow_review_required``: SHADOW -> STAGING also waits for ALEX's (GID-08) signed review (section 9.2
    ``alex_review: required``); a team turns it off only explicitly. ``scheduled_rollback_after_s``: how long
    after a ``scheduled`` rollback trigger (section 8.1, calibration drift) the governance consumer carries
    the rollback out, unless it is cancelled first.
    """

    PROPOSAL: StageDuration
    PROTOTYPE: StageDuration
    TRAINING: StageDuration
    SHADOW: StageDuration
    STAGING: StageDuration
    PRODUCTION: StageDuration
    RETIRED: StageDuration
    shadow_review_required: bool = True
    scheduled_rollback_after_s: Annotated[int, Field(ge=0)] = 86_400


class ShadowRequirement(_Strict):
    """Section 3.1: minimum shadow duration and sample size for one model type."""

    min_duration_days: Annotated[int, Field(ge=0)]
    min_samples: Annotated[int, Field(ge=1)]


class Conclusive(_Strict):
    """Below these counts a check is INCONCLUSIVE, never PASS."""

    min_pairs: Annotated[int, Field(ge=2)]
    min_labels: Annotated[int, Field(ge=2)]


class ShadowPolicy(_Strict):
    """Section 2.1 SHADOW table, the 3.1 duration table and the 3.2 checklist parameters."""

    brier_score: UnitUpperLimit
    precision_at_10: UnitLowerLimit
    auc_roc: UnitLowerLimit
    calibration_slope: Range
    mean_abs_delta: UnitUpperLimit
    p95_abs_delta: UnitUpperLimit
    p99_abs_delta: UnitUpperLimit
    p99_latency_ms: UpperLimit
    model_types: Annotated[dict[ModelType, ShadowRequirement], Field(min_length=1)]
    acceptable_drift: Annotated[list[Severity], Field(min_length=1)]
    lookback_days: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.p95_abs_delta.threshold > self.p99_abs_delta.threshold:
            raise _KeyError(
                "p95_abs_delta.threshold",
                f"{self.p95_abs_delta.threshold} is above p99_abs_delta.threshold "
                f"{self.p99_abs_delta.threshold}; a P95 limit cannot exceed the P99 one",
            )
        if len(set(self.acceptable_drift)) != len(self.acceptable_drift):
            raise _KeyError("acceptable_drift", f"{self.acceptable_drift} lists a severity twice")
        return self


class ShareRange(_Strict):
    """A traffic share range within (0, 1]."""

    min: Annotated[float, Field(gt=0, le=1)]
    max: Annotated[float, Field(gt=0, le=1)]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise _KeyError("min", f"min {self.min} is above max {self.max}")
        return self


class StagingPolicy(_Strict):
    """Section 2.1 STAGING table; ``feature_drift`` applies to every feature separately."""

    p99_latency_ms: UpperLimit
    error_rate: UnitUpperLimit
    kl_divergence: UpperLimit
    feature_drift: UpperLimit
    canary_traffic_share: ShareRange


class ProductionPolicy(_Strict):
    """Section 2.1 PRODUCTION table.

    ``calibration_drift`` is ``|calibration_slope - 1|`` of the monitored model over the
    ``windows.production`` window; ``score_stability_sigma`` is the sample standard deviation of the
    daily mean scores over the last ``stability_days`` days.
    """

    staleness_warning_days: UpperLimit
    staleness_limit_days: UpperLimit
    calibration_drift: UpperLimit
    score_stability_sigma: UpperLimit
    stability_days: Annotated[int, Field(ge=2)]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.staleness_warning_days.threshold > self.staleness_limit_days.threshold:
            raise _KeyError(
                "staleness_warning_days.threshold",
                f"{self.staleness_warning_days.threshold} is above staleness_limit_days.threshold "
                f"{self.staleness_limit_days.threshold}; the warning must come first",
            )
        return self


class DriftBands(_Strict):
    """A metric at or above a floor raises the drift severity to that band (MEDIUM < HIGH < CRITICAL).

    A band left out (None) is one this metric never reaches: e.g. score KL, a WARNING in the spec (2.1),
    has a MEDIUM floor only, so it can never make the severity HIGH. At least one band must be given.
    """

    medium: _NonNeg | None = None
    high: _NonNeg | None = None
    critical: _NonNeg | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        given = [(band.lower(), value) for band, value in self.floors() if value is not None]
        if not given:
            raise _KeyError("medium", "give at least one of medium, high, critical")
        for (low_name, low), (high_name, high) in zip(given, given[1:], strict=False):
            if high < low:
                raise _KeyError(high_name, f"{high_name} {high} is below {low_name} {low}")
        return self

    def floors(self) -> tuple[tuple[Severity, float | None], ...]:
        """(band, floor) from MEDIUM up; a None floor is a band this metric never reaches."""
        return (("MEDIUM", self.medium), ("HIGH", self.high), ("CRITICAL", self.critical))


_WINDOW = re.compile(r"^([1-9][0-9]*)([smhd])$")
_WINDOW_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(name: str) -> int | None:
    """The length of a rolling window named like ``1m``, ``1h``, ``1d`` (the store's names); None otherwise."""
    match = _WINDOW.match(name)
    return int(match.group(1)) * _WINDOW_UNIT_S[match.group(2)] if match else None


_Window = Annotated[str, Field(pattern=_WINDOW.pattern)]


class ThresholdTrigger(_Strict):
    """Section 8.1: fires when ``value <fires_when> threshold`` holds for ``sustain_s`` of event time.

    Whether it holds is decided with the policy's ``triggers.confidence`` (see
    :mod:`governance.policy.triggers`), not on the point estimate alone.
    """

    window: _Window
    threshold: _NonNeg
    fires_when: Literal[">", ">="] = ">"
    sustain_s: Annotated[int, Field(ge=0)] = 0
    action: Action
    alert: bool
    severity: AlertSeverity
    runbook: _Name


class RangeTrigger(_Strict):
    """Section 8.1: fires when the value is strictly outside ``[low, high]`` for ``sustain_s``."""

    window: _Window
    low: float
    high: float
    sustain_s: Annotated[int, Field(ge=0)] = 0
    action: Action
    alert: bool
    severity: AlertSeverity
    runbook: _Name

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low > self.high:
            raise _KeyError("low", f"low {self.low} is above high {self.high}; swap them")
        return self


class TriggerFallback(_Strict):
    """What the KL and calibration triggers need when their window carries no standard error.

    A worker that does not report ``kl_divergence_se`` / ``calibration_slope_se`` leaves those two
    triggers without an interval; they then judge the point estimate, and only on at least this many
    pairs / labels (fewer: unknown, never a breach). The rate triggers never need it: their bounds come
    from counts every window has.
    """

    min_pairs: Annotated[int, Field(ge=1)]
    min_labels: Annotated[int, Field(ge=1)]


class TriggerPolicy(_Strict):
    """Rollback triggers; ``rearm_s`` of recovered observations end a breach episode.

    ``confidence`` is the one-sided confidence with which the data must show a threshold crossed before a
    trigger fires (so a model exactly at a threshold fires on at most ``1 - confidence`` of evaluations).
    """

    error_rate: ThresholdTrigger
    p99_latency_ms: ThresholdTrigger
    kl_divergence: ThresholdTrigger
    integrity_violations: ThresholdTrigger
    calibration_slope: RangeTrigger
    rearm_s: Annotated[int, Field(ge=0)]
    confidence: Annotated[float, Field(ge=0.5, lt=1)]
    fallback: TriggerFallback

    @model_validator(mode="after")
    def _rate(self) -> Self:
        if self.error_rate.threshold > 1:
            raise _KeyError("error_rate.threshold", f"{self.error_rate.threshold} is above 1 (a rate)")
        return self


class SourcePolicy(_Strict):
    """A window whose newest event is older than ``staleness_limit_s`` is SOURCE_UNHEALTHY."""

    staleness_limit_s: Annotated[int, Field(ge=1)]
    severity: AlertSeverity
    runbook: _Name


class StatisticsPolicy(_Strict):
    confidence: Annotated[float, Field(gt=0, lt=1)]


class SigningPolicy(_Strict):
    """Section 6.4 model_signing."""

    algorithm: SigningAlgorithm
    key_rotation_days: Annotated[int, Field(ge=1)]


class EventPolicy(_Strict):
    ttl_s: Annotated[int, Field(ge=1)]


class AlertPolicy(_Strict):
    dedup_s: Annotated[int, Field(ge=0)]


class WindowNames(_Strict):
    """Which window of the store feeds which evaluation (the names the window store uses)."""

    stage: _Name
    production: _Name
    daily_prefix: _Name


class Policy(_Strict):
    """The whole policy; see the module docstring for the guarantees."""

    policy_id: _Name
    version: _Name
    conclusive: Conclusive
    statistics: StatisticsPolicy
    lifecycle: Lifecycle
    shadow: ShadowPolicy
    drift_severity: Annotated[dict[DriftMetric, DriftBands], Field(min_length=1)]
    staging: StagingPolicy
    production: ProductionPolicy
    triggers: TriggerPolicy
    source: SourcePolicy
    signing: SigningPolicy
    events: EventPolicy
    alerts: AlertPolicy
    windows: WindowNames

    _hash: str | None = PrivateAttr(default=None)

    def canonical_json(self) -> bytes:
        """Sorted-key compact JSON of the validated values: what :meth:`hash` digests."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    def hash(self) -> str:
        """Hex SHA-256 of :meth:`canonical_json`; computed once per instance (the model is frozen)."""
        if self._hash is None:
            self._hash = hashlib.sha256(self.canonical_json()).hexdigest()
        return self._hash


def _describe(error: Any) -> str:
    loc = [str(part) for part in error["loc"] if part != "[key]"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _KeyError):
        loc.append(cause.path)
        return f"{'.'.join(loc)}: {cause}"
    path = ".".join(loc) or "<top level>"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key; remove it or fix its spelling"
    if kind == "missing":
        return f"{path}: required key is missing"
    return f"{path}: {error['msg']} (got {error['input']!r})"


def parse_policy(data: object, source: str = "<policy>") -> Policy:
    """Validate already-parsed YAML/JSON data; raises ConfigError naming every offending key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a policy must be a mapping of sections, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ConfigError(f"{source}: invalid policy: {problems}") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file; ``None`` loads the shipped default (the spec's tables)."""
    if path is None:
        source = "governance/policy/default_policy.yaml"
        text = importlib.resources.files("governance.policy").joinpath("default_policy.yaml").read_text("utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"policy file {source}: cannot read it ({exc.strerror})") from None
    try:
        data = load_strict_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_policy(data, source)
