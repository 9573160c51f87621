"""Emit-on-change evaluation of one comparison: snapshots in, governance events out.

:func:`evaluate` is what the worker's evaluator timer (and ``shadowgate replay``) calls for each
comparison: it reads the comparison's snapshots keyed by window name, steps the rollback triggers,
evaluates the gate of the comparison's stage, and returns the events to publish with the new state.

Windows read (names from ``policy.windows`` and ``policy.triggers``; the default policy's in brackets):

* the stage gate: ``windows.stage`` [``stage``], the whole current stage so far;
* production monitoring: ``windows.production`` [``1d``] and ``<windows.daily_prefix>1`` ...
  ``<daily_prefix>N`` [``day-1`` ... ``day-7``], the last whole days (1 = most recent);
* each trigger: its own ``window`` [``1m`` error rate and latency, ``1h`` KL and integrity, ``1d``
  calibration]. A window absent from the mapping reads as no data (INCONCLUSIVE / unknown).

The rollback triggers are judged in event time when the caller passes ``minutes``: for every whole
minute ``T`` of event time closed since the last call (:func:`minutes_due` names them), a
:class:`~governance.policy.triggers.MinuteClose` holding each trigger window ending at ``T``. Without it
they are judged once per call on the rolling windows at ``now`` (sustain timed between calls).

Events, and when:

* ``GateReady`` / ``GateBlocked`` (SHADOW and STAGING) when the verdict differs from the last one
  emitted, or the policy hash changed (a new policy deserves a fresh decision); the first evaluation
  always emits; with ``republish_s`` a decision other than READY is emitted again once the last one is
  that old in event time (its figures current);
* ``RollbackTrigger`` when a trigger fires (once per breach episode, see :mod:`governance.policy.triggers`), and
  an ``Alert`` too when the trigger's policy says ``alert`` (always for SOURCE_UNHEALTHY, which never
  rolls back);
* PRODUCTION: for each check whose outcome changed to WARN or FAIL, an ``Alert``, or a
  ``RecalibrationRequested`` for the RECALIBRATE check (calibration drift).

An ``Alert`` whose dedup key was emitted less than ``alerts.dedup_s`` (of event time) before it is
dropped. Guarantees: pure (``now`` is the event-time watermark, passed in); deterministic, including
event ids (UUID5 of the decision and its event time), so a replay of the same traffic yields the same
events as the live worker, and with ``minutes`` a backlog processed in one call yields the same trigger
events (same ids, same ``ts``: the minute that completed the evidence) as a worker stepping every second;
events come in event-time order (``ts`` is the decision's event time: ``now`` for gate, source and
production events, the firing minute for a trigger stepped on minutes; within one instant: source alert,
rollbacks and their alerts in trigger order, gate decision, production alerts); a ``now`` older than the
previous call's changes nothing and emits nothing. :class:`EvaluatorState` round-trips through JSON.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from governance.contract.comparison import ComparisonKey, WindowSnapshot
from governance.contract.events import (
    Alert,
    Evidence,
    GateBlocked,
    GateReady,
    GovernanceEvent,
    RecalibrationRequested,
    RollbackTrigger,
    Versions,
)
from governance.contract.findings import AlertSeverity, Check, CheckOutcome, GateVerdict, WindowRef
from governance.contract.stages import GatedStage
from governance.policy.checks import GateResult
from governance.policy.document import Policy
from governance.policy.gates import evaluate_production, evaluate_shadow_completion, evaluate_staging_gate
from governance.policy.triggers import (
    MAX_MINUTES,
    SOURCE_UNHEALTHY,
    MinuteClose,
    TriggerFiring,
    TriggerInputs,
    TriggerState,
    minute_ends,
    step,
    step_minutes,
)

__all__ = [
    "ContextSource",
    "EvaluationContext",
    "EvaluatorState",
    "MinuteClose",
    "Monitor",
    "current_gate",
    "evaluate",
    "minutes_due",
]

# Fixed namespace: event ids are UUID5(namespace, decision), identical in replay and live evaluation.
_NAMESPACE = uuid.UUID("5f1d3c2e-8a4b-5c6d-9e7f-0a1b2c3d4e5f")


@dataclass(frozen=True)
class EvaluationContext:
    """Facts about the comparison that the windows do not hold (from the lifecycle state and the CLI).

    SHADOW needs ``stage_started_at`` and ``model_type``; STAGING needs ``stage_started_at`` (and the
    assigned ``canary_share``, else that check is INCONCLUSIVE); PRODUCTION uses ``trained_at`` for
    staleness and ``rollback_to`` as the target of a production rollback. The integrity-violation and
    escalation counts cover the last ``policy.shadow.lookback_days`` days.
    """

    key: ComparisonKey
    stage: GatedStage
    stage_started_at: datetime | None = None
    model_type: str | None = None
    integrity_violations_7d: int | None = None
    escalations_7d: int | None = None
    canary_share: float | None = None
    trained_at: datetime | None = None
    rollback_to: str | None = None

    def __post_init__(self) -> None:
        if self.stage in ("SHADOW", "STAGING") and self.stage_started_at is None:
            raise ValueError(f"EvaluationContext for {self.key.as_id()}: stage {self.stage} needs stage_started_at")
        if self.stage == "SHADOW" and self.model_type is None:
            raise ValueError(f"EvaluationContext for {self.key.as_id()}: stage SHADOW needs model_type")


# Where the evaluator gets a comparison's lifecycle facts: its candidate side (given the first event time,
# None: not judged) and its serving production side (None: not monitored).
ContextSource = Callable[[ComparisonKey, datetime | None], EvaluationContext | None]
Monitor = Callable[[ComparisonKey], EvaluationContext | None]


class EvaluatorState(BaseModel):
    """What one comparison's evaluator remembers between calls (JSON-serialisable)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    verdict: GateVerdict | None = None
    policy_hash: str | None = None
    outcomes: dict[str, CheckOutcome] = Field(default_factory=dict)
    triggers: TriggerState = Field(default_factory=TriggerState)
    alerts: dict[str, AwareDatetime] = Field(default_factory=dict)
    gate_at: AwareDatetime | None = None  # event time of the last gate decision emitted

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> EvaluatorState:
        return cls.model_validate_json(data)


class _Emitter:
    """Builds event envelopes for one call: deterministic ids, ts / expiry, alert dedup.

    Every event carries the event time of its decision (``at``, default ``now``): a trigger that fired at
    the close of an earlier minute (a backlog processed in one call) is stamped with that minute, and its id
    is derived from it, so the live worker and a replay produce the same event for the same decision.
    """

    def __init__(self, policy: Policy, context: EvaluationContext, alerts: Mapping[str, datetime], now: datetime):
        self.policy, self.context, self.now = policy, context, now
        self.events: list[GovernanceEvent] = []
        self.dedup = timedelta(seconds=policy.alerts.dedup_s)
        self.alerts = dict(alerts)
        key = context.key
        self.envelope = {
            "model": key.model,
            "versions": Versions(production=key.production_version, candidate=key.candidate_version, role=key.role),
        }

    def _stamp(self, at: datetime | None) -> dict[str, object]:
        ts = self.now if at is None else at.astimezone(UTC)
        return {**self.envelope, "ts": ts, "expires_at": ts + timedelta(seconds=self.policy.events.ttl_s)}

    def _id(self, kind: str, detail: str, at: datetime | None = None) -> uuid.UUID:
        when = (self.now if at is None else at.astimezone(UTC)).isoformat()
        parts = (kind, self.context.key.as_id(), detail, when, self.policy.hash())
        return uuid.uuid5(_NAMESPACE, "|".join(parts))

    def kept_alerts(self, since: datetime) -> dict[str, datetime]:
        """The dedup entries that can still suppress an alert stamped at or after ``since``."""
        return {key: ts for key, ts in self.alerts.items() if since - ts < self.dedup}

    def evidence(self, checks: list[Check], windows: list[WindowRef], result: GateResult | None = None) -> Evidence:
        return Evidence(
            policy_hash=self.policy.hash(),
            checks=checks,
            windows=windows,
            statistics=list(result.statistics) if result is not None else [],
        )

    def alert(
        self,
        name: str,
        severity: AlertSeverity,
        summary: str,
        runbook: str,
        evidence: Evidence,
        at: datetime | None = None,
    ) -> None:
        dedup_key = f"{self.context.key.as_id()}|{name}"
        when = self.now if at is None else at
        last = self.alerts.get(dedup_key)
        if last is not None and timedelta(0) <= when - last < self.dedup:
            return
        self.alerts[dedup_key] = when
        self.events.append(
            Alert.model_validate(
                {
                    **self._stamp(at),
                    "event_id": self._id("Alert", name, at),
                    "evidence": evidence,
                    "severity": severity,
                    "dedup_key": dedup_key,
                    "summary": summary[:512],
                    "runbook": runbook,
                }
            )
        )

    def add(
        self,
        event: type[GovernanceEvent],
        detail: str,
        evidence: Evidence,
        at: datetime | None = None,
        **fields: object,
    ) -> None:
        payload = {**self._stamp(at), "event_id": self._id(event.__name__, detail, at), "evidence": evidence, **fields}
        self.events.append(event.model_validate(payload))


def _close_windows(
    snapshots: Mapping[str, WindowSnapshot], minutes: Sequence[MinuteClose]
) -> Callable[[TriggerFiring], Mapping[str, WindowSnapshot]]:
    """The windows a firing's evidence cites: those of the minute it fired at (the rolling ones at now)."""
    by_end = {close.end.astimezone(UTC): close.snapshots for close in minutes}

    def windows(firing: TriggerFiring) -> Mapping[str, WindowSnapshot]:
        found = by_end.get(firing.fired_at, snapshots)
        return {} if isinstance(found, TriggerInputs) else found

    return windows


def _refs(snapshots: Mapping[str, WindowSnapshot], names: list[str]) -> list[WindowRef]:
    return [WindowRef.of(snapshots[name]) for name in names if name in snapshots]


def _firing_check(firing: TriggerFiring) -> Check:
    return Check(
        name=firing.trigger,
        outcome="FAIL",
        value=firing.value,
        threshold=firing.threshold,
        upper_threshold=firing.upper_threshold,
        comparator=firing.comparator,
        enforcement="BLOCK" if firing.action == "immediate" else "WARNING",
        message=firing.reason[:512],
    )


def _emit_firings(
    emit: _Emitter,
    firings: list[TriggerFiring],
    snapshots: Mapping[str, WindowSnapshot] | Callable[[TriggerFiring], Mapping[str, WindowSnapshot]],
    side: str,
) -> None:
    key, context = emit.context.key, emit.context
    for firing in firings:
        windows = snapshots(firing) if callable(snapshots) else snapshots
        names = sorted(windows) if firing.trigger == SOURCE_UNHEALTHY else [firing.window or ""]
        evidence = emit.evidence([_firing_check(firing)], _refs(windows, names))
        if firing.action is not None:
            from_version = key.production_version if side == "production" else key.candidate_version
            to_version = context.rollback_to if side == "production" else key.production_version
            emit.add(
                RollbackTrigger,
                firing.trigger,
                evidence,
                firing.fired_at,
                trigger=firing.trigger,
                action=firing.action,
                reason=firing.reason[:512],
                from_version=from_version,
                to_version=to_version,
            )
        if firing.alert:
            emit.alert(firing.trigger, firing.severity, firing.reason, firing.runbook, evidence, firing.fired_at)


def _missing(policy: Policy, gate: str, window: str, now: datetime) -> GateResult:
    check = Check(
        name=f"window[{window}]",
        outcome="INCONCLUSIVE",
        value=None,
        threshold=None,
        comparator=">",
        enforcement="BLOCK",
        message=f"window {window!r} is not available for this comparison yet",
    )
    return GateResult(gate=gate, verdict="INCONCLUSIVE", checks=[check], evaluated_at=now, policy_hash=policy.hash())


def _gate(
    policy: Policy,
    context: EvaluationContext,
    snapshots: Mapping[str, WindowSnapshot],
    now: datetime,
    clock: datetime | None = None,
) -> GateResult:
    name = policy.windows.stage
    gate = "shadow_completion" if context.stage == "SHADOW" else "staging"
    snapshot = snapshots.get(name)
    if snapshot is None:
        return _missing(policy, gate, name, now)
    started = context.stage_started_at
    if started is None:  # EvaluationContext refuses this; kept so a bypassed check cannot pass a gate
        raise ValueError(f"stage {context.stage} of {context.key.as_id()} needs stage_started_at")
    if context.stage == "SHADOW":
        return evaluate_shadow_completion(
            policy,
            snapshot,
            context.model_type or "",
            started,
            context.integrity_violations_7d,
            context.escalations_7d,
            now,
            fresh_at=clock,
        )
    return evaluate_staging_gate(policy, snapshot, started, context.canary_share, now, fresh_at=clock)


def _daily(policy: Policy, snapshots: Mapping[str, WindowSnapshot]) -> tuple[list[str], list[WindowSnapshot]]:
    days = [f"{policy.windows.daily_prefix}{i}" for i in range(policy.production.stability_days, 0, -1)]
    return days, [snapshots[name] for name in days if name in snapshots]


def current_gate(
    policy: Policy,
    context: EvaluationContext,
    snapshots: Mapping[str, WindowSnapshot],
    now: datetime,
    clock: datetime | None = None,
) -> GateResult | None:
    """The gate of the context's stage on ``snapshots`` at ``now``, as :func:`evaluate` judges it, with no state and
    nothing emitted (``shadowgate model explain``). PRODUCTION: the production checks (None without their window).
    """
    if context.stage != "PRODUCTION":
        return _gate(policy, context, snapshots, now, clock)
    snapshot = snapshots.get(policy.windows.production)
    if snapshot is None:
        return None
    return evaluate_production(policy, snapshot, _daily(policy, snapshots)[1], context.trained_at, now, fresh_at=clock)


def _emit_gate(emit: _Emitter, result: GateResult, state: EvaluatorState, republish_s: float) -> bool:
    """Emit the gate decision when it changed, or, not READY, when the last one is ``republish_s`` old (event time)."""
    unchanged = (result.verdict, emit.policy.hash()) == (state.verdict, state.policy_hash)
    due = (
        republish_s > 0
        and result.verdict != "READY"
        and (state.gate_at is None or emit.now - state.gate_at >= timedelta(seconds=republish_s))
    )
    if unchanged and not due:
        return False
    evidence = emit.evidence(result.checks, [result.window] if result.window else [], result)
    stage = emit.context.stage
    if result.verdict == "READY":
        emit.add(GateReady, result.gate + "|READY", evidence, gate=result.gate, stage=stage)
    else:
        emit.add(
            GateBlocked,
            f"{result.gate}|{result.verdict}",
            evidence,
            gate=result.gate,
            stage=stage,
            verdict=result.verdict,
            failing_checks=result.blocking,
        )
    return True


def _production(
    emit: _Emitter, snapshots: Mapping[str, WindowSnapshot], state: EvaluatorState, clock: datetime | None = None
) -> tuple[GateResult | None, dict[str, CheckOutcome]]:
    policy, context = emit.policy, emit.context
    snapshot = snapshots.get(policy.windows.production)
    if snapshot is None:
        return None, dict(state.outcomes)
    days, daily = _daily(policy, snapshots)
    result = evaluate_production(policy, snapshot, daily, context.trained_at, emit.now, fresh_at=clock)
    outcomes = dict(state.outcomes)
    for check in result.checks:
        before, outcomes[check.name] = outcomes.get(check.name), check.outcome
        # A stale source is the SOURCE_UNHEALTHY trigger's alert; no second alert for the same fact.
        if check.outcome == before or check.outcome not in ("WARN", "FAIL") or check.name == "source_fresh":
            continue
        evidence = emit.evidence([check], _refs(snapshots, [policy.windows.production, *days]), result)
        if check.enforcement == "RECALIBRATE":
            emit.add(
                RecalibrationRequested,
                check.name,
                evidence,
                calibration_drift=check.value,
                threshold=check.threshold,
                reason=check.message[:512],
            )
        else:
            severity: AlertSeverity = "critical" if check.outcome == "FAIL" else "warning"
            emit.alert(f"production.{check.name}", severity, check.message, f"production-{check.name}", evidence)
    return result, outcomes


def _aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"clock must be a timezone-aware UTC datetime, got naive {when.isoformat()}")


def minutes_due(
    state: EvaluatorState, now: datetime, first_event: datetime | None = None, limit: int = MAX_MINUTES
) -> list[datetime]:
    """The minute ends (event time) whose trigger windows the next :func:`evaluate` call should get.

    See :func:`governance.policy.triggers.minute_ends`: every whole minute ``T`` after the last one
    stepped, up to ``now`` (a fresh state starts after ``first_event``), at most ``limit`` of them.
    """
    return minute_ends(state.triggers, now, first_event, limit)


def evaluate(
    policy: Policy,
    snapshots: Mapping[str, WindowSnapshot],
    context: EvaluationContext,
    state: EvaluatorState,
    now: datetime,
    minutes: Sequence[MinuteClose] | None = None,
    clock: datetime | None = None,
    republish_s: float = 0.0,
    close_until: datetime | None = None,
) -> tuple[EvaluatorState, list[GovernanceEvent]]:
    """Evaluate one comparison at event time ``now``; see the module docstring for what is emitted.

    ``minutes`` are the trigger windows at each minute of event time closed since the last call (the
    ends :func:`minutes_due` names): the rollback triggers are then stepped once per minute, in event
    time, and a firing is stamped with its minute. None (the default) steps them once at ``now`` on the
    rolling windows of ``snapshots`` (sustain then timed between calls).

    ``clock`` is the wall clock of a live caller: the source's freshness (SOURCE_UNHEALTHY and the gates'
    ``source_fresh``) is judged against it, since ``now``, the newest event, never looks old. None (replay):
    judged at ``now``. Nothing else depends on it.

    ``republish_s`` > 0: a gate decision that is not READY is emitted again, with its current checks and
    figures, once the last one emitted is that old in event time (``shadowgate model status`` then shows
    figures at most that old); 0: only on change. ``close_until``: minute closes ending after ``now`` up to it
    are judged too (a stream that stopped: the minute ``now`` is in will get no more events); default ``now``.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware UTC datetime, got naive {now.isoformat()}")
    now = now.astimezone(UTC)  # one spelling of the instant, so event ids do not depend on the caller's zone
    if clock is not None:
        _aware(clock)
    if state.triggers.last_step is not None and now < state.triggers.last_step:
        return state, []
    side: Literal["candidate", "production"] = "production" if context.stage == "PRODUCTION" else "candidate"
    emit = _Emitter(policy, context, state.alerts, now)
    if minutes is None:
        triggers, firings = step(policy, state.triggers, snapshots, now, side, clock)
    else:
        triggers, firings = step_minutes(policy, state.triggers, minutes, snapshots, now, side, clock, close_until)
    _emit_firings(emit, firings, snapshots if minutes is None else _close_windows(snapshots, minutes), side)
    outcomes = dict(state.outcomes)
    gate_at = state.gate_at
    if context.stage == "PRODUCTION":
        result, outcomes = _production(emit, snapshots, state, clock)
        verdict = state.verdict if result is None else result.verdict
    else:
        result = _gate(policy, context, snapshots, now, clock)
        if _emit_gate(emit, result, state, republish_s):
            gate_at = now
        verdict = result.verdict
    # Later calls step minutes after the last one stepped here (or observations at a later now), so a
    # dedup entry older than the alert period before that can no longer suppress anything.
    horizon = min(now, triggers.last_minute) if triggers.last_minute is not None else now
    new_state = EvaluatorState(
        verdict=verdict,
        policy_hash=policy.hash(),
        outcomes=outcomes,
        triggers=triggers,
        alerts=emit.kept_alerts(horizon),
        gate_at=gate_at,
    )
    return new_state, sorted(emit.events, key=lambda event: event.ts)
