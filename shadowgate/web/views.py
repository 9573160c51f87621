"""What the status page and its JSON API show, computed from plain values: pure, no I/O, time passed in.

* :func:`thresholds` - every policy limit a chart can draw, per metric, with its section, enforcement and the
  comparisons it applies to (a shadow comparison is judged by the SHADOW table, a canary by the STAGING one;
  the rollback triggers of 8.1 watch both sides of every comparison).
* :func:`series_document` - a comparison's metrics over time from consecutive windows of the store.
* :func:`verdict` - the verdict endpoint's answer for one model version (see :class:`Verdict`).

Guarantees: every figure comes unchanged from the function the CLI uses (``streams.fold.readout`` for windows,
``governance.lifecycle.report`` for status rows), so the page and ``shadowgate windows`` / ``model status``
cannot disagree; a missing value stays ``None`` (never drawn as 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from governance.contract.stages import Stage
from governance.lifecycle.state import GovernanceState, latest_gate
from governance.policy.document import Policy

__all__ = [
    "CHARTS",
    "Decision",
    "Threshold",
    "Verdict",
    "series_document",
    "thresholds",
    "verdict",
]

Decision = Literal["pass", "fail", "wait"]
Applies = Literal["shadow", "canary"]


class Threshold(BaseModel):
    """One limit drawn on a chart: ``value`` of ``metric``; ``kind`` gate (2.1, 3.2) or trigger (8.1)."""

    model_config = ConfigDict(frozen=True)

    metric: str
    value: float
    kind: Literal["gate", "trigger"]
    label: str
    section: str
    enforcement: str
    applies_to: tuple[Applies, ...]


#: The charts of one comparison: title, unit and the metrics drawn (``production_`` = the production side).
CHARTS: tuple[dict[str, Any], ...] = (
    {"id": "delta", "title": "|Δ| between candidate and production", "unit": "score",
     "metrics": ("mean_abs_delta", "p95_abs_delta", "p99_abs_delta")},
    {"id": "divergence", "title": "Score distribution divergence", "unit": "nats",
     "metrics": ("kl_divergence", "psi", "js_divergence")},
    {"id": "latency", "title": "P99 latency, both sides", "unit": "ms",
     "metrics": ("p99_latency_ms", "production_p99_latency_ms")},
    {"id": "errors", "title": "Error rate, both sides", "unit": "share",
     "metrics": ("error_rate", "production_error_rate")},
    {"id": "labels", "title": "Label metrics of the candidate", "unit": "",
     "metrics": ("brier_score", "auc_roc", "precision_at_10")},
    {"id": "calibration", "title": "Calibration slope of the candidate", "unit": "",
     "metrics": ("calibration_slope",)},
    {"id": "volume", "title": "Pairs and labels per point", "unit": "count",
     "metrics": ("sample_count", "label_count")},
)

SERIES_METRICS: tuple[str, ...] = tuple(name for chart in CHARTS for name in chart["metrics"])


def _limit(metric: str, value: float, kind: Literal["gate", "trigger"], label: str, section: str,
           enforcement: str, applies_to: tuple[Applies, ...]) -> Threshold:
    return Threshold(metric=metric, value=value, kind=kind, label=label, section=section, enforcement=enforcement,
                     applies_to=applies_to)


def thresholds(policy: Policy) -> list[Threshold]:
    """Every limit of ``policy`` a chart of :data:`CHARTS` can draw, gates first, then triggers."""
    s, st, t = policy.shadow, policy.staging, policy.triggers
    shadow: tuple[Applies, ...] = ("shadow",)
    canary: tuple[Applies, ...] = ("canary",)
    both: tuple[Applies, ...] = ("shadow", "canary")
    out = [
        _limit("mean_abs_delta", s.mean_abs_delta.threshold, "gate", "SHADOW mean |Δ|", "2.1",
               s.mean_abs_delta.enforcement, shadow),
        _limit("p95_abs_delta", s.p95_abs_delta.threshold, "gate", "SHADOW P95 |Δ|", "2.1",
               s.p95_abs_delta.enforcement, shadow),
        _limit("p99_abs_delta", s.p99_abs_delta.threshold, "gate", "SHADOW P99 |Δ|", "2.1",
               s.p99_abs_delta.enforcement, shadow),
        _limit("brier_score", s.brier_score.threshold, "gate", "SHADOW Brier", "2.1", s.brier_score.enforcement,
               shadow),
        _limit("auc_roc", s.auc_roc.threshold, "gate", "SHADOW AUC-ROC", "2.1", s.auc_roc.enforcement, shadow),
        _limit("precision_at_10", s.precision_at_10.threshold, "gate", "SHADOW precision@10%", "2.1",
               s.precision_at_10.enforcement, shadow),
        _limit("calibration_slope", s.calibration_slope.low, "gate", "SHADOW calibration slope low", "2.1",
               s.calibration_slope.enforcement, shadow),
        _limit("calibration_slope", s.calibration_slope.high, "gate", "SHADOW calibration slope high", "2.1",
               s.calibration_slope.enforcement, shadow),
        _limit("p99_latency_ms", s.p99_latency_ms.threshold, "gate", "SHADOW performance budget P99", "3.2",
               s.p99_latency_ms.enforcement, shadow),
        _limit("p99_latency_ms", st.p99_latency_ms.threshold, "gate", "STAGING P99 latency", "2.1",
               st.p99_latency_ms.enforcement, canary),
        _limit("error_rate", st.error_rate.threshold, "gate", "STAGING error rate", "2.1",
               st.error_rate.enforcement, canary),
        _limit("kl_divergence", st.kl_divergence.threshold, "gate", "STAGING score KL", "2.1",
               st.kl_divergence.enforcement, canary),
    ]
    for name, trig in (("error_rate", t.error_rate), ("p99_latency_ms", t.p99_latency_ms),
                       ("kl_divergence", t.kl_divergence)):
        held = f", held {trig.sustain_s // 60} min" if trig.sustain_s else ""
        out.append(_limit(name, trig.threshold, "trigger", f"rollback trigger ({trig.window} window{held}, "
                          f"{trig.action})", "8.1", trig.action, both))
    cal = t.calibration_slope
    for bound, value in (("low", cal.low), ("high", cal.high)):
        out.append(_limit("calibration_slope", value, "trigger", f"rollback trigger {bound} ({cal.window} window, "
                          f"{cal.action})", "8.1", cal.action, both))
    return out


def series_document(ends_s: Sequence[int], step_s: int, metrics: Sequence[dict[str, float | int | None]],
                    names: Sequence[str] = SERIES_METRICS) -> dict[str, Any]:
    """``{"t": [bucket end, epoch s], "step_s", "metrics": {name: [value or None per bucket]}}``.

    ``metrics[i]`` are the metrics of the window ``[ends_s[i] - step_s, ends_s[i])`` as
    :func:`streams.fold.readout.metrics_from_fields` gives them; the values are rounded like ``shadowgate windows``.
    """
    if len(ends_s) != len(metrics):
        raise ValueError(f"{len(ends_s)} bucket ends for {len(metrics)} metric sets")
    return {
        "t": list(ends_s),
        "step_s": step_s,
        "metrics": {name: [_round(m.get(name)) for m in metrics] for name in names},
    }


def _round(value: float | int | None) -> float | int | None:
    if value is None or isinstance(value, int):
        return value
    return round(float(value), 12)


class Verdict(BaseModel):
    """The verdict endpoint's answer for one model version (the contract is in ``docs/status.md``).

    ``decision``: ``pass`` (the gate of the judged stage is READY, or the version serves in PRODUCTION),
    ``fail`` (BLOCKED, ERROR, rolled back or retired, flagged for rollback, unknown version) or ``wait`` (no
    verdict yet, INCONCLUSIVE, or the version has not reached the stage asked for). ``passed`` is
    ``decision == "pass"``.
    """

    model_config = ConfigDict(frozen=True)

    model: str
    version: str
    registered: bool
    stage: Stage | None
    judged_stage: Stage | None
    gate: str | None
    verdict: str
    decision: Decision
    passed: bool
    reasons: list[str]
    gate_event_id: str | None = None
    gate_ts: datetime | None = None
    policy_hash: str | None = None
    audit_seq: int
    checked_at: datetime


_GATED = (Stage.SHADOW, Stage.STAGING)
_ORDER = list(Stage)


def verdict(state: GovernanceState, model: str, version: str, now: datetime, stage: Stage | None = None) -> Verdict:
    """Whether ``model@version`` may proceed, judged on the governance state (see :class:`Verdict`).

    ``stage`` asks about one gate (SHADOW: the shadow completion checklist, STAGING: the staging gate); without
    it the version's current stage is judged. A version past the stage asked for is judged on that stage's
    last recorded gate verdict.
    """
    base: dict[str, Any] = {"model": model, "version": version, "audit_seq": state.seq, "checked_at": now}
    record = state.registry.models.get(model)
    current = record.versions.get(version) if record is not None else None
    if current is None:
        return Verdict(**base, registered=False, stage=None, judged_stage=stage, gate=None, verdict="UNKNOWN",
                       decision="fail", passed=False, reasons=[f"{model}@{version} is not registered"])
    base.update(registered=True, stage=current.stage)
    flagged = [r for r in state.rollbacks if r.model == model and r.from_version == version]
    if current.stage is Stage.RETIRED:
        why = [f"rolled back to {r.to_version}: {r.reason}" for r in flagged if r.status == "COMPLETED"]
        return Verdict(**base, judged_stage=stage, gate=None, verdict="ROLLED_BACK" if why else "RETIRED",
                       decision="fail", passed=False, reasons=why or [f"{model}@{version} is retired"])
    pending = [r for r in flagged if r.status in ("SCHEDULED", "MANUAL_REVIEW", "FAILED")]
    if pending:
        return Verdict(**base, judged_stage=stage, gate=None, verdict="ROLLBACK_REQUESTED", decision="fail",
                       passed=False, reasons=[f"rollback {r.status} ({r.action}): {r.reason}" for r in pending])
    judged = stage or current.stage
    if judged not in _GATED:
        if current.stage is Stage.PRODUCTION and stage is None:
            serving = record is not None and record.production == version
            reasons = [] if serving else [f"{model}@{version} is in PRODUCTION but not serving"]
            return Verdict(**base, judged_stage=judged, gate=None, verdict="SERVING" if serving else "NOT_SERVING",
                           decision="pass" if serving else "fail", passed=serving, reasons=reasons)
        return Verdict(**base, judged_stage=judged, gate=None, verdict="NOT_GATED", decision="fail", passed=False,
                       reasons=[f"stage {judged.value} has no shadowgate gate; ask for SHADOW or STAGING"])
    if _ORDER.index(current.stage) < _ORDER.index(judged):
        return Verdict(**base, judged_stage=judged, gate=None, verdict="NOT_REACHED", decision="wait", passed=False,
                       reasons=[f"{model}@{version} is in {current.stage.value}, not yet in {judged.value}"])
    gate = latest_gate(state, model, version, judged)
    if gate is None:
        return Verdict(**base, judged_stage=judged, gate=None, verdict="NOT_EVALUATED", decision="wait",
                       passed=False, reasons=[f"no {judged.value} gate verdict recorded yet"])
    raw = gate.event.get("verdict")
    name = "READY" if gate.passed else (raw if isinstance(raw, str) else "BLOCKED")
    decision: Decision = "pass" if gate.passed else ("wait" if name == "INCONCLUSIVE" else "fail")
    return Verdict(**base, judged_stage=judged, gate=gate.gate, verdict=name, decision=decision,
                   passed=decision == "pass", reasons=list(gate.failures), gate_event_id=gate.event_id,
                   gate_ts=gate.ts, policy_hash=gate.policy_hash)
