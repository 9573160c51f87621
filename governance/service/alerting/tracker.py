"""The tracker: verified inputs folded into open conditions, and the notices each input yields.

=========================  =====================================================================  ===================
input                      notices                                                                clears when
=========================  =====================================================================  ===================
Alert                      one-off ``alert`` (``Shadowgate<Runbook>``), held ``hold_s``            (one-off)
RecalibrationRequested     one-off ``recalibration``                                               (one-off)
GateBlocked (verdict v)    fires ``gate_blocked`` (BLOCKED, ERROR) or ``gate_inconclusive``;       GateReady of the
                           resolves the comparison gate's other verdict                            comparison gate
GateReady                  resolves the open gate condition; none open: one-off ``gate_ready``
RollbackTrigger            fires ``rollback_triggered``                                           the consumer
                                                                                                  handled it (audit)
audit: rollback COMPLETED  one-off ``rollback_completed``; resolves failed / pending of the version
audit: rollback FAILED     fires ``rollback_failed`` (critical, P0)                                a COMPLETED rollback
audit: SCHEDULED / REVIEW  fires ``rollback_pending``                                              or a stage move of
                                                                                                  the version
audit: gate READY blocked  fires ``approval_waiting``                                              approval recorded,
  by a missing approval                                                                            stage move, gate
                                                                                                  not READY
audit: stage moved         resolves gate conditions of a stage the version left, and those of
                           comparisons against a production version that left PRODUCTION
=========================  =====================================================================  ===================

The consumer's own signed alerts about rollback outcomes (dedup keys ``<model>|MODEL_ROLLBACK_FAILED|P0`` and
``<model>|rollback|<STATUS>``) tell what the audit log's rollback record tells with more structure: when the
audit log is a source they are *superseded* (counted, not delivered twice).

Ordering: each topic is read in order, the topics interleave arbitrarily. The one condition that spans two
topics, a rollback trigger (``shadow.rollbacks``) cleared by the audit entry that handled it
(``governance.lifecycle``), is matched by the trigger's event id, so the entry may come first: the trigger
then yields one notice already resolved. A gate verdict about a version the audit log has already moved
past its stage yields nothing (stale).

Guarantees: pure (no I/O, no clock: times come from the inputs); an input seen before (same event id, or
same audit seq) yields nothing and is reported a duplicate; the open conditions after a set of inputs do not
depend on how the topics interleaved (``tests/test_alert_tracker.py`` checks it with Hypothesis).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from governance.contract.events import Alert, GateBlocked, GateReady, RecalibrationRequested, RollbackTrigger
from governance.contract.findings import AlertSeverity
from governance.contract.stages import Stage
from governance.lifecycle.audit import RollbackRecord, RollbackStatus
from governance.lifecycle.ledger import ApprovalRecorded, Transitioned
from governance.service.alerting.intake import VerifiedEntry, VerifiedEvent
from governance.service.alerting.notices import (
    RUNBOOKS,
    ConditionKind,
    Kind,
    Notice,
    Status,
    alertname_for_runbook,
    notice_id,
)

__all__ = ["Applied", "Condition", "Received", "Tracker", "is_rollback_outcome_alert"]

_STAGE_ORDER = list(Stage)
_ROLLBACK_STATUSES: tuple[RollbackStatus, ...] = ("COMPLETED", "FAILED", "SCHEDULED", "MANUAL_REVIEW")


@dataclass(frozen=True)
class Condition:
    """An open condition: the firing notice that opened it, and what it is about."""

    slot: str
    kind: ConditionKind
    notice: Notice
    version: str | None = None
    stage: str | None = None

    @property
    def since(self) -> datetime:
        return self.notice.starts_at


@dataclass(frozen=True)
class Received:
    """What one verified input was, for the ``received`` counter: its kind, severity and model."""

    kind: Kind
    severity: AlertSeverity
    model: str


@dataclass(frozen=True)
class Applied:
    """The outcome of :meth:`Tracker.apply`."""

    notices: tuple[Notice, ...] = ()
    received: Received | None = None
    duplicate: bool = False
    superseded: bool = False


def is_rollback_outcome_alert(alert: Alert) -> bool:
    """True for the consumer's alerts about a rollback outcome (the audit log's rollback record says it all)."""
    prefix = f"{alert.model}|"
    if not alert.dedup_key.startswith(prefix):
        return False
    rest = alert.dedup_key[len(prefix):]
    return rest == "MODEL_ROLLBACK_FAILED|P0" or rest in {f"rollback|{s}" for s in _ROLLBACK_STATUSES}


def _trigger_name(record: RollbackRecord) -> str:
    # "error_rate (RollbackTrigger <id>)" for a trigger, "command <id>" for a person's rollback.
    return "command" if record.trigger.startswith("command ") else record.trigger.split(" (", 1)[0]


def _versions(event: Alert | GateBlocked | GateReady | RollbackTrigger | RecalibrationRequested) -> dict[str, str]:
    labels = {"production_version": event.versions.production}
    if event.versions.candidate is not None:
        labels["candidate_version"] = event.versions.candidate
    if event.versions.role is not None:
        labels["role"] = event.versions.role
    return labels


@dataclass
class _Made:
    """Context for the notices of one input."""

    item: VerifiedEvent | VerifiedEntry
    notices: list[Notice] = field(default_factory=list)


class Tracker:
    """The fold of verified inputs (see the module docstring). One thread calls :meth:`apply`.

    ``hold_s``: how long a one-off notice stays firing at Alertmanager (``ends_at = ts + hold_s``).
    ``trigger_runbooks``: the policy's runbook per rollback trigger name. ``rollbacks_from_audit``: the audit
    log is a source, so the consumer's rollback-outcome alerts are superseded.
    """

    def __init__(self, *, hold_s: float = 3600.0, trigger_runbooks: Mapping[str, str] | None = None,
                 rollbacks_from_audit: bool = True) -> None:
        self.hold = timedelta(seconds=hold_s)
        self.trigger_runbooks = dict(trigger_runbooks or {})
        self.rollbacks_from_audit = rollbacks_from_audit
        self._open: dict[str, Condition] = {}
        self._seen: set[str] = set()
        self._handled: dict[str, tuple[datetime, int]] = {}  # trigger event id -> (entry time, audit seq)
        self._stages: dict[tuple[str, str], Stage] = {}
        self._models: set[str] = set()

    # ------------------------------------------------------------------------------------------ reading

    @property
    def open_conditions(self) -> tuple[Condition, ...]:
        """The open conditions, oldest first (a new tuple: safe to hand to another thread)."""
        return tuple(sorted(self._open.values(), key=lambda c: (c.since, c.slot)))

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self._models)

    # ------------------------------------------------------------------------------------------ folding

    def apply(self, item: VerifiedEvent | VerifiedEntry) -> Applied:
        """Fold one verified input; returns its notices (in the order to deliver them)."""
        if item.source_id in self._seen:
            return Applied(duplicate=True)
        self._seen.add(item.source_id)
        made = _Made(item)
        if isinstance(item, VerifiedEntry):
            received = self._entry(made, item)
        else:
            event = item.event
            self._models.add(event.model)
            if isinstance(event, Alert) and self.rollbacks_from_audit and is_rollback_outcome_alert(event):
                return Applied(superseded=True)
            received = self._event(made, event)
        return Applied(tuple(made.notices), received)

    def _event(self, made: _Made, event: Any) -> Received | None:
        if isinstance(event, Alert):
            labels = {"runbook": event.runbook, **_versions(event)}
            self._one_off(made, "alert", event.severity, event.model, event.dedup_key, event.ts,
                          alertname_for_runbook(event.runbook), labels,
                          {"summary": event.summary, "description": event.summary, "runbook": event.runbook})
            return Received("alert", event.severity, event.model)
        if isinstance(event, RecalibrationRequested):
            summary = f"{event.model}: re-calibration requested: {event.reason}"
            self._one_off(made, "recalibration", "warning", event.model,
                          f"recalibration|{event.model}|{event.versions.production}", event.ts,
                          "ShadowgateRecalibrationRequested", _versions(event),
                          {"summary": summary, "description": summary, "runbook": RUNBOOKS["recalibration"]})
            return Received("recalibration", "warning", event.model)
        if isinstance(event, GateBlocked | GateReady):
            return self._gate(made, event)
        if isinstance(event, RollbackTrigger):
            return self._trigger(made, event)
        return None  # an Escalation: an input of the consumer, nothing to tell

    # -------------------------------------------------------------------------------------------- gates

    def _gate(self, made: _Made, event: GateBlocked | GateReady) -> Received | None:
        candidate = event.versions.candidate or event.versions.production
        slot = (f"gate|{event.model}|{event.versions.production}|{candidate}|{event.versions.role or ''}|"
                f"{event.gate}")
        if self._moved_past(event.model, candidate, event.stage):
            return None  # a verdict about a stage the version already left: stale
        current = self._open.get(slot)
        who = f"{event.model} {candidate} ({event.versions.role or 'candidate'})"
        if isinstance(event, GateReady):
            if current is not None:
                self._resolve(made, current, event.ts, f"{who}: {event.gate} gate READY "
                              f"(was {current.notice.labels['verdict']})")
            else:
                labels = {**_versions(event), "stage": event.stage, "gate": event.gate}
                summary = f"{who}: {event.gate} gate READY"
                self._one_off(made, "gate_ready", "info", event.model, f"{slot}|READY", event.ts,
                              "ShadowgateGateReady", labels,
                              {"summary": summary, "description": summary, "runbook": RUNBOOKS["gate_ready"]})
            return Received("gate_ready", "info", event.model)
        kind: ConditionKind = "gate_inconclusive" if event.verdict == "INCONCLUSIVE" else "gate_blocked"
        severity: AlertSeverity = "info" if kind == "gate_inconclusive" else "warning"
        if current is not None and current.notice.labels["verdict"] == event.verdict:
            return Received(kind, severity, event.model)  # the same verdict again (a policy change): still open
        if current is not None:
            self._resolve(made, current, event.ts, f"{who}: {event.gate} gate now {event.verdict}")
        failing = "; ".join(check.message for check in event.failing_checks)
        summary = f"{who}: {event.gate} gate {event.verdict}: {len(event.failing_checks)} blocking check(s)"
        labels = {**_versions(event), "stage": event.stage, "gate": event.gate, "verdict": event.verdict}
        alertname = "ShadowgateGateInconclusive" if kind == "gate_inconclusive" else "ShadowgateGateBlocked"
        self._fire(made, kind, slot, f"{slot}|{event.verdict}", severity, event.model, event.ts, alertname, labels,
                   {"summary": summary[:512], "description": failing[:4000], "runbook": RUNBOOKS[kind]},
                   version=candidate, stage=event.stage)
        return Received(kind, severity, event.model)

    def _moved_past(self, model: str, version: str, stage: str) -> bool:
        known = self._stages.get((model, version))
        if known is None or stage not in Stage.__members__:
            return False
        return known is Stage.RETIRED or _STAGE_ORDER.index(known) > _STAGE_ORDER.index(Stage(stage))

    # ----------------------------------------------------------------------------------------- triggers

    def _trigger(self, made: _Made, event: RollbackTrigger) -> Received:
        severity: AlertSeverity = "critical" if event.action == "immediate" else "warning"
        slot = f"rollback_triggered|{event.event_id}"
        dedup = f"rollback_triggered|{event.model}|{event.from_version}|{event.trigger}"
        runbook = self.trigger_runbooks.get(event.trigger, RUNBOOKS["rollback_triggered"])
        labels = {**_versions(event), "from_version": event.from_version, "trigger": event.trigger,
                  "action": event.action}
        summary = (f"{event.model} {event.from_version}: rollback trigger {event.trigger} fired "
                   f"({event.action.replace('_', ' ')}, target {event.to_version or 'none'})")
        annotations = {"summary": summary, "description": event.reason, "runbook": runbook}
        handled = self._handled.get(str(event.event_id))
        if handled is not None:  # the audit entry that handled it was read first
            at, seq = handled
            annotations["description"] = f"{event.reason} (handled by the governance consumer: audit seq {seq})"
            made.notices.append(self._notice(made, "rollback_triggered", "resolved", severity, event.model, dedup,
                                             event.ts, at, "ShadowgateRollbackTriggered", labels, annotations))
        else:
            self._fire(made, "rollback_triggered", slot, dedup, severity, event.model, event.ts,
                       "ShadowgateRollbackTriggered", labels, annotations, version=event.from_version)
        return Received("rollback_triggered", severity, event.model)

    # -------------------------------------------------------------------------------------------- audit

    def _entry(self, made: _Made, item: VerifiedEntry) -> Received | None:
        entry = item.entry
        source = entry.input
        received: Received | None = None
        if source.type == "RollbackTrigger" and source.id is not None and entry.outcome != "rejected":
            self._handled[source.id] = (entry.at, entry.seq)
            handled = self._open.get(f"rollback_triggered|{source.id}")
            if handled is not None:
                self._resolve(made, handled, entry.at, f"{handled.notice.summary}: handled (audit seq {entry.seq})")
        if entry.rollback is not None:
            received = self._rollback(made, entry.rollback, entry.at)
        gate = entry.gate
        if gate is not None:
            self._models.add(gate.model)
            if gate.passed and any("approval" in rule.lower() for rule in entry.blocked):
                received = self._approval_waiting(made, gate.model, gate.version, gate.stage, gate.gate,
                                                  entry.blocked, entry.at)
            elif not gate.passed:
                self._clear(made, f"approval_waiting|{gate.model}|{gate.version}", entry.at,
                            f"{gate.model} {gate.version}: {gate.gate} gate no longer READY")
        for fact in entry.facts:
            self._models.add(fact.model)
            if isinstance(fact, ApprovalRecorded):
                self._clear(made, f"approval_waiting|{fact.model}|{fact.version}", fact.at,
                            f"{fact.model} {fact.version}: {fact.approver} approved {fact.target}")
            elif isinstance(fact, Transitioned):
                self._moved(made, fact)
        return received

    def _rollback(self, made: _Made, record: RollbackRecord, at: datetime) -> Received:
        model, version = record.model, record.from_version
        self._models.add(model)
        labels = {"from_version": version, "trigger": _trigger_name(record)}
        if record.to_version is not None:
            labels["to_version"] = record.to_version
        target = record.to_version or "none"
        steps = "\n".join(record.steps)
        if record.status == "COMPLETED":
            self._clear_rollbacks(made, model, version, at, f"{model} {version} rolled back to {target}")
            summary = f"{model} rolled back: {version} -> {target} ({record.reason})"
            self._one_off(made, "rollback_completed", "warning", model, f"rollback_completed|{model}|{version}",
                          record.started_at, "ShadowgateRollbackCompleted", labels,
                          {"summary": summary[:512], "description": steps,
                           "runbook": RUNBOOKS["rollback_completed"]})
            return Received("rollback_completed", "warning", model)
        if record.status == "FAILED":
            summary = f"P0 MODEL_ROLLBACK_FAILED: {model} {version} -> {target}: {record.error}"
            self._fire(made, "rollback_failed", f"rollback_failed|{model}|{version}",
                       f"rollback_failed|{model}|{version}", "critical", model, record.started_at,
                       "ShadowgateModelRollbackFailed", labels,
                       {"summary": summary[:512], "description": steps, "runbook": RUNBOOKS["rollback_failed"]},
                       version=version)
            return Received("rollback_failed", "critical", model)
        slot = f"rollback_pending|{model}|{version}"
        current = self._open.get(slot)
        if current is not None and current.notice.labels["status"] != record.status:
            self._resolve(made, current, at, f"{model} {version}: rollback now {record.status}")
            current = None
        if current is None:
            summary = (f"{model} {version}: {record.action.replace('_', ' ')} rollback {record.status}: "
                       f"{record.reason}")
            self._fire(made, "rollback_pending", slot, f"{slot}|{record.status}", "warning", model,
                       record.started_at, "ShadowgateRollbackPending", {**labels, "status": record.status},
                       {"summary": summary[:512], "description": steps, "runbook": RUNBOOKS["rollback_pending"]},
                       version=version)
        return Received("rollback_pending", "warning", model)

    def _approval_waiting(self, made: _Made, model: str, version: str, stage: str, gate: str, rules: list[str],
                          at: datetime) -> Received:
        slot = f"approval_waiting|{model}|{version}"
        if slot not in self._open:
            summary = f"{model} {version} passed its {gate} gate and waits for an approval"
            self._fire(made, "approval_waiting", slot, slot, "info", model, at, "ShadowgateApprovalWaiting",
                       {"version": version, "stage": stage},
                       {"summary": summary, "description": "\n".join(rules)[:4000],
                        "runbook": RUNBOOKS["approval_waiting"]},
                       version=version, stage=stage)
        return Received("approval_waiting", "info", model)

    def _moved(self, made: _Made, fact: Transitioned) -> None:
        model, version = fact.model, fact.version
        self._stages[(model, version)] = fact.to_stage
        why = f"{model} {version} moved {fact.from_stage} -> {fact.to_stage}"
        self._clear_rollbacks(made, model, version, fact.at, why)
        self._clear(made, f"approval_waiting|{model}|{version}", fact.at, why)
        left_production = fact.from_stage is Stage.PRODUCTION and fact.to_stage is not Stage.PRODUCTION
        for condition in list(self._open.values()):
            if condition.notice.model != model:
                continue
            gate = condition.kind in ("gate_blocked", "gate_inconclusive")
            if gate and left_production and condition.notice.labels.get("production_version") == version:
                # The comparison against this production version ended: the worker judges a new one.
                self._resolve(made, condition, fact.at, f"{why}: the comparison against it ended")
            elif condition.version != version:
                continue
            elif condition.kind == "rollback_triggered":
                self._resolve(made, condition, fact.at, why)
            elif gate and condition.stage is not None and self._moved_past(model, version, condition.stage):
                self._resolve(made, condition, fact.at, f"{why}: its {condition.stage} gate no longer applies")

    def _clear_rollbacks(self, made: _Made, model: str, version: str, at: datetime, why: str) -> None:
        for kind in ("rollback_failed", "rollback_pending"):
            self._clear(made, f"{kind}|{model}|{version}", at, why)

    # ------------------------------------------------------------------------------------ notice making

    def _clear(self, made: _Made, slot: str, at: datetime, why: str) -> None:
        condition = self._open.get(slot)
        if condition is not None:
            self._resolve(made, condition, at, why)

    def _resolve(self, made: _Made, condition: Condition, at: datetime, why: str) -> None:
        del self._open[condition.slot]
        opened = condition.notice
        annotations = {**opened.annotations, "summary": f"RESOLVED: {why}"[:512],
                       "description": f"{why}\n(opened: {opened.summary})"[:4000]}
        made.notices.append(self._notice(made, condition.kind, "resolved", opened.severity, opened.model,
                                         opened.dedup_key, opened.starts_at, max(at, opened.starts_at),
                                         opened.alertname, dict(opened.labels), annotations))

    def _fire(self, made: _Made, kind: ConditionKind, slot: str, dedup: str, severity: AlertSeverity, model: str,
              ts: datetime, alertname: str, labels: dict[str, str], annotations: dict[str, str], *,
              version: str | None = None, stage: str | None = None) -> None:
        notice = self._notice(made, kind, "firing", severity, model, dedup, ts, None, alertname, labels, annotations)
        self._open[slot] = Condition(slot, kind, notice, version, stage)
        made.notices.append(notice)

    def _one_off(self, made: _Made, kind: Kind, severity: AlertSeverity, model: str, dedup: str, ts: datetime,
                 alertname: str, labels: dict[str, str], annotations: dict[str, str]) -> None:
        made.notices.append(self._notice(made, kind, "firing", severity, model, dedup, ts, ts + self.hold, alertname,
                                         labels, annotations))

    def _notice(self, made: _Made, kind: Kind, status: Status, severity: AlertSeverity, model: str, dedup: str,
                starts_at: datetime, ends_at: datetime | None, alertname: str, labels: dict[str, str],
                annotations: dict[str, str]) -> Notice:
        item = made.item
        identity = {"alertname": alertname, "kind": kind, "severity": severity, "model": model, **labels}
        annotations = {**annotations, "source": item.origin.position, "signed_by": item.key_id}
        return Notice(notice_id=notice_id(item.source_id, dedup, status), dedup_key=dedup, status=status, kind=kind,
                      severity=severity, model=model, labels=identity, annotations=annotations, starts_at=starts_at,
                      ends_at=ends_at, origin=item.origin, source_id=item.source_id, key_id=item.key_id,
                      record=item.record)
