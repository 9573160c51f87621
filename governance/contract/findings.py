"""Findings: the vocabulary of decisions every process shares (checks, verdicts, statistics, severities).

The policy layer computes findings (``governance.policy``); the worker signs and publishes them inside
governance events (:mod:`governance.contract.events`); the lifecycle records them in the audit log and the
ProofPack. They live here, below all three, so that reading an event needs no policy code.

A :class:`Check` is one threshold applied to one value. Its outcome (:data:`CheckOutcome`) is

* PASS - enough data, within the limit;
* FAIL - breached a BLOCK or RECALIBRATE limit (only BLOCK failures stop promotion);
* WARN - breached a WARNING limit;
* INCONCLUSIVE - the value is missing (None) or rests on fewer samples than the policy's minimum:
  never a pass;
* ERROR - the value cannot be judged (NaN, infinite, inconsistent inputs).

A gate's :data:`GateVerdict` is READY, BLOCKED, INCONCLUSIVE or ERROR (``governance.policy.checks.verdict_of``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from governance.contract.comparison import WindowSnapshot

__all__ = [
    "Action",
    "AlertSeverity",
    "Check",
    "CheckOutcome",
    "Comparator",
    "Enforcement",
    "GateVerdict",
    "Severity",
    "StatResult",
    "WindowRef",
]

Enforcement = Literal["BLOCK", "WARNING", "RECALIBRATE"]
Severity = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
Action = Literal["immediate", "scheduled", "manual_review"]
AlertSeverity = Literal["info", "warning", "critical"]
CheckOutcome = Literal["PASS", "FAIL", "WARN", "INCONCLUSIVE", "ERROR"]
GateVerdict = Literal["READY", "BLOCKED", "INCONCLUSIVE", "ERROR"]
# The failing condition: ">=" means "breaches when value >= threshold"; "outside" means value < threshold
# or value > upper_threshold; "not in" is a categorical check whose value is an ordinal.
Comparator = Literal[">=", ">", "<=", "<", "outside", "not in"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Check(_Frozen):
    """One threshold applied to one value, with the numbers that justify the outcome."""

    name: str
    outcome: CheckOutcome
    value: float | None
    threshold: float | None
    upper_threshold: float | None = None
    comparator: Comparator
    enforcement: Enforcement
    samples: int | None = None
    message: str

    @property
    def blocks(self) -> bool:
        """True when this check keeps the verdict from READY."""
        return (self.outcome == "FAIL" and self.enforcement == "BLOCK") or self.outcome in (
            "INCONCLUSIVE",
            "ERROR",
        )


class WindowRef(_Frozen):
    """Where the evidence came from: window bounds, newest event and the Kafka offsets folded in."""

    window: str
    start: AwareDatetime
    end: AwareDatetime
    first_event_ts: AwareDatetime | None = None
    latest_event_ts: AwareDatetime | None = None
    offsets: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, snapshot: WindowSnapshot) -> WindowRef:
        return cls(
            window=snapshot.window,
            start=snapshot.start,
            end=snapshot.end,
            first_event_ts=snapshot.first_event_ts,
            latest_event_ts=snapshot.latest_event_ts,
            offsets=dict(snapshot.offsets),
        )


class StatResult(BaseModel):
    """One test: statistic, p-value or interval, and the sample sizes it rests on."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    test: Literal["ks_2samp", "paired_t", "mean_abs_delta_ci"]
    n: int
    n_other: int | None = None
    statistic: float | None
    p_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    note: str = ""


