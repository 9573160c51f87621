"""Building checks and gate results, and the rule that turns checks into a verdict.

The vocabulary (:class:`~governance.contract.findings.Check`, its outcomes, :class:`WindowRef`) is the
contract's (:mod:`governance.contract.findings`); this module applies the policy's thresholds to make them.

The verdict follows argo-rollouts' ``assessMetricStatus`` in keeping inconclusive separate from failure:
BLOCKED when any BLOCK check FAILs (a definite answer wins), else ERROR when any check errored, else
INCONCLUSIVE when any check is inconclusive, else READY. So READY means every blocking check had enough
data and none failed; warnings and re-calibration requests do not stop promotion.

A WARNING check never blocks (spec 2: "WARNING if exceeded"): when its value is missing, rests on too few
samples, or is not a finite number, it is WARN with the message "not measured (reason)" and whatever
value there was, so the gate event (and the ProofPack that copies it) records the warning and why it
could not be judged. BLOCK checks keep the rule that no data is INCONCLUSIVE, never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from governance.contract.comparison import WindowSnapshot
from governance.contract.findings import (
    Check,
    CheckOutcome,
    Comparator,
    Enforcement,
    GateVerdict,
    Severity,
    StatResult,
    WindowRef,
)
from governance.policy.document import Policy, Range, UnitLowerLimit, UpperLimit

__all__ = [
    "GateResult",
    "blocking_check",
    "duration_check",
    "gate_result",
    "guidance_checks",
    "judge",
    "judge_range",
    "metric_count",
    "role_checks",
    "source_fresh",
    "verdict_of",
]


class GateResult(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    """A gate's checks, its verdict, and the evidence it rests on (policy hash, window, statistics)."""

    gate: str
    verdict: GateVerdict
    checks: list[Check]
    evaluated_at: AwareDatetime
    policy_hash: str
    window: WindowRef | None = None
    statistics: list[StatResult] = Field(default_factory=list)
    drift_severity: Severity | None = None

    @property
    def blocking(self) -> list[Check]:
        """The checks that keep this result from READY, in check order."""
        return [check for check in self.checks if check.blocks]

    def check(self, name: str) -> Check:
        """The check called ``name``; KeyError names the checks that exist."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check {name!r} in gate {self.gate}; checks: {[c.name for c in self.checks]}")


def verdict_of(checks: Iterable[Check]) -> GateVerdict:
    """BLOCKED > ERROR > INCONCLUSIVE > READY, as the module docstring explains."""
    outcomes = list(checks)
    if any(c.outcome == "FAIL" and c.enforcement == "BLOCK" for c in outcomes):
        return "BLOCKED"
    if any(c.outcome == "ERROR" for c in outcomes):
        return "ERROR"
    if any(c.outcome == "INCONCLUSIVE" for c in outcomes):
        return "INCONCLUSIVE"
    return "READY"


def _breach_outcome(enforcement: Enforcement) -> CheckOutcome:
    return "WARN" if enforcement == "WARNING" else "FAIL"


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _screen(
    name: str,
    value: float | None,
    threshold: float | None,
    comparator: Comparator,
    enforcement: Enforcement,
    samples: int | None,
    min_samples: int | None,
    upper_threshold: float | None = None,
) -> Check | float:
    """The INCONCLUSIVE / ERROR check for a value that cannot be judged, else the (finite) value itself."""

    def _check(outcome: CheckOutcome, message: str) -> Check:
        shown = value if value is not None and math.isfinite(value) else None
        return Check(
            name=name,
            outcome=outcome,
            value=shown,
            threshold=threshold,
            upper_threshold=upper_threshold,
            comparator=comparator,
            enforcement=enforcement,
            samples=samples,
            message=message,
        )

    def _unjudged(outcome: CheckOutcome, reason: str) -> Check:
        # Spec 2: a WARNING never blocks. Without the data to judge it, it is recorded as a warning that
        # says "not measured" and why (with the thin value, if any, as evidence), not as INCONCLUSIVE.
        if enforcement == "WARNING":
            return _check("WARN", f"{name}: not measured ({reason}); a WARNING check never blocks")
        return _check(outcome, f"{name}: {reason}")

    if min_samples is not None and (samples is None or samples < min_samples):
        return _unjudged("INCONCLUSIVE", f"{samples or 0} samples, at least {min_samples} needed")
    if value is None:
        return _unjudged("INCONCLUSIVE", "no value in this window: no data")
    if not math.isfinite(value):
        return _unjudged("ERROR", f"value {value} is not a finite number")
    return value


def judge(
    name: str,
    value: float | None,
    limit: UpperLimit | UnitLowerLimit,
    samples: int | None = None,
    min_samples: int | None = None,
    unit: str = "",
) -> Check:
    """Apply an upper or lower limit; INCONCLUSIVE when ``samples < min_samples`` or ``value`` is None."""
    pending = _screen(name, value, limit.threshold, limit.fails_when, limit.enforcement, samples, min_samples)
    if isinstance(pending, Check):
        return pending
    value = pending
    breached = {
        ">=": value >= limit.threshold,
        ">": value > limit.threshold,
        "<=": value <= limit.threshold,
        "<": value < limit.threshold,
    }[limit.fails_when]
    outcome: CheckOutcome = _breach_outcome(limit.enforcement) if breached else "PASS"
    relation = limit.fails_when if breached else _negate(limit.fails_when)
    return Check(
        name=name,
        outcome=outcome,
        value=value,
        threshold=limit.threshold,
        comparator=limit.fails_when,
        enforcement=limit.enforcement,
        samples=samples,
        message=f"{name} {_fmt(value)}{unit} {relation} {_fmt(limit.threshold)}{unit}"
        + (f" ({limit.enforcement})" if breached else ""),
    )


def judge_range(
    name: str,
    value: float | None,
    limit: Range,
    samples: int | None = None,
    min_samples: int | None = None,
) -> Check:
    """Apply a ``[low, high]`` range; the value breaches strictly outside it."""
    pending = _screen(name, value, limit.low, "outside", limit.enforcement, samples, min_samples, limit.high)
    if isinstance(pending, Check):
        return pending
    value = pending
    breached = value < limit.low or value > limit.high
    where = "outside" if breached else "within"
    return Check(
        name=name,
        outcome=_breach_outcome(limit.enforcement) if breached else "PASS",
        value=value,
        threshold=limit.low,
        upper_threshold=limit.high,
        comparator="outside",
        enforcement=limit.enforcement,
        samples=samples,
        message=f"{name} {_fmt(value)} {where} [{_fmt(limit.low)}, {_fmt(limit.high)}]"
        + (f" ({limit.enforcement})" if breached else ""),
    )


def _negate(comparator: str) -> str:
    return {">=": "<", ">": "<=", "<=": ">", "<": ">="}[comparator]


def metric_count(snapshot: WindowSnapshot, name: str) -> int | None:
    """A count metric (``sample_count``, ``label_count``) as an int; None when missing or not a count."""
    value = snapshot.metric(name)
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def source_fresh(policy: Policy, snapshot: WindowSnapshot, now: datetime) -> Check:
    """SOURCE_UNHEALTHY as a blocking check: the newest event must be at most ``staleness_limit_s`` old.

    No event at all is INCONCLUSIVE; an event time ahead of ``now`` (producer clock skew) counts as age 0.
    """
    limit = float(policy.source.staleness_limit_s)
    if snapshot.latest_event_ts is None:
        return Check(
            name="source_fresh",
            outcome="INCONCLUSIVE",
            value=None,
            threshold=limit,
            comparator=">",
            enforcement="BLOCK",
            message="source_fresh: no event in the window yet",
        )
    age_s = max((now - snapshot.latest_event_ts).total_seconds(), 0.0)
    stale = age_s > limit
    return Check(
        name="source_fresh",
        outcome="FAIL" if stale else "PASS",
        value=age_s,
        threshold=limit,
        comparator=">",
        enforcement="BLOCK",
        message=(
            f"SOURCE_UNHEALTHY: newest event is {_fmt(age_s)} s old > {_fmt(limit)} s; promotion paused"
            if stale
            else f"source_fresh: newest event {_fmt(age_s)} s old <= {_fmt(limit)} s"
        ),
    )


def gate_result(
    gate: str,
    policy: Policy,
    snapshot: WindowSnapshot,
    checks: list[Check],
    now: datetime,
    statistics: list[StatResult] | None = None,
    severity: Severity | None = None,
) -> GateResult:
    """A GateResult whose verdict is :func:`verdict_of` the checks, with the policy hash and window."""
    return GateResult(
        gate=gate,
        verdict=verdict_of(checks),
        checks=checks,
        evaluated_at=now,
        policy_hash=policy.hash(),
        window=WindowRef.of(snapshot),
        statistics=statistics or [],
        drift_severity=severity,
    )


def blocking_check(
    name: str, outcome: CheckOutcome, value: float | None, threshold: float | None, message: str
) -> Check:
    """A blocking checklist item whose comparator is "breaches when value > threshold"."""
    return Check(
        name=name,
        outcome=outcome,
        value=value,
        threshold=threshold,
        comparator=">",
        enforcement="BLOCK",
        message=message,
    )


def role_checks(snapshot: WindowSnapshot, expected: str) -> list[Check]:
    """An ERROR check when the comparison is not of the role the gate judges, else nothing."""
    if snapshot.key.role == expected:
        return []
    return [
        blocking_check(
            "comparison_role",
            "ERROR",
            None,
            None,
            f"comparison {snapshot.key.as_id()} has role {snapshot.key.role}; this gate judges {expected}",
        )
    ]


def duration_check(name: str, started_at: datetime, now: datetime, min_days: int) -> Check:
    """Blocking: at least ``min_days`` of (event) time since the stage began; exactly ``min_days`` passes."""
    elapsed = now - started_at
    days = elapsed.total_seconds() / 86400.0
    if elapsed < timedelta(0):
        outcome: CheckOutcome = "ERROR"
        message = f"{name}: the stage start is after now ({days:.3f} days)"
    elif elapsed < timedelta(days=min_days):
        outcome, message = "FAIL", f"{name}: {days:.3f} days elapsed < {min_days} required"
    else:
        outcome, message = "PASS", f"{name}: {days:.3f} days elapsed >= {min_days} required"
    return Check(
        name=name,
        outcome=outcome,
        value=days,
        threshold=float(min_days),
        comparator="<",
        enforcement="BLOCK",
        message=message,
    )


def guidance_checks(name: str, started_at: datetime, now: datetime, max_days: int | None) -> list[Check]:
    """A WARNING when a stage outlives its spec guidance (e.g. STAGING 3-7 days); exactly ``max_days`` passes."""
    if max_days is None:
        return []
    days = (now - started_at).total_seconds() / 86400.0
    over = now - started_at > timedelta(days=max_days)
    return [
        Check(
            name=name,
            outcome="WARN" if over else "PASS",
            value=days,
            threshold=float(max_days),
            comparator=">",
            enforcement="WARNING",
            message=f"{name}: {days:.3f} days {'>' if over else '<='} {max_days}-day guidance",
        )
    ]
