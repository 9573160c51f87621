"""Inputs for the alert-delivery tests: governance events and audit entries, unsigned (pure tests) or signed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

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
from governance.contract.findings import Check
from governance.lifecycle.audit import AuditEntry, EntryBody, GateRecord, Input, RollbackRecord, RollbackStatus
from governance.lifecycle.ledger import ApprovalRecorded, Event, Transitioned
from governance.service.alerting.intake import Origin, Source, VerifiedEntry, VerifiedEvent

POLICY_HASH = "ab" * 32
T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _envelope(model: str, ts: datetime, production: str, candidate: str | None, role: str | None) -> dict[str, Any]:
    return {"event_id": uuid.uuid4(), "ts": ts, "expires_at": ts + timedelta(hours=24), "model": model,
            "versions": Versions(production=production, candidate=candidate, role=role),  # type: ignore[arg-type]
            "evidence": Evidence(policy_hash=POLICY_HASH)}


def failing(name: str = "mean_abs_delta", value: float = 0.3, threshold: float = 0.15) -> Check:
    return Check(name=name, outcome="FAIL", value=value, threshold=threshold, comparator=">=", enforcement="BLOCK",
                 message=f"{name} {value} >= {threshold}")


def alert(model: str = "fraud", *, ts: datetime = T0, severity: str = "warning", runbook: str = "review-score-shift",
          dedup_key: str | None = None, summary: str = "KL 2.04 > 0.25: manual review",
          candidate: str | None = "2.0.0") -> Alert:
    role = "shadow" if candidate else None
    key = dedup_key or f"{model}|1.0.0|{candidate}|{role}|kl_divergence"
    return Alert(**_envelope(model, ts, "1.0.0", candidate, role), severity=severity,  # type: ignore[arg-type]
                 dedup_key=key, summary=summary, runbook=runbook)


def recalibration(model: str = "fraud", *, ts: datetime = T0) -> RecalibrationRequested:
    return RecalibrationRequested(**_envelope(model, ts, "1.0.0", None, None), calibration_drift=0.12,
                                  threshold=0.1, reason="calibration drift 0.12 > 0.10")


def blocked(model: str = "fraud", candidate: str = "2.0.0", *, verdict: str = "BLOCKED", ts: datetime = T0,
            stage: str = "SHADOW", gate: str = "shadow_completion") -> GateBlocked:
    role = "shadow" if stage == "SHADOW" else "canary"
    return GateBlocked(**_envelope(model, ts, "1.0.0", candidate, role), gate=gate, stage=stage,  # type: ignore[arg-type]
                       verdict=verdict, failing_checks=[failing()])


def ready(model: str = "fraud", candidate: str = "2.0.0", *, ts: datetime = T0, stage: str = "SHADOW",
          gate: str = "shadow_completion") -> GateReady:
    role = "shadow" if stage == "SHADOW" else "canary"
    return GateReady(**_envelope(model, ts, "1.0.0", candidate, role), gate=gate, stage=stage)  # type: ignore[arg-type]


def trigger(model: str = "fraud", from_version: str = "2.0.0", to_version: str | None = "1.0.0", *,
            ts: datetime = T0, name: str = "error_rate", action: str = "immediate") -> RollbackTrigger:
    return RollbackTrigger(**_envelope(model, ts, from_version, None, None), trigger=name,
                           action=action, reason="error rate 3.1 % > 1 % for 300 s",  # type: ignore[arg-type]
                           from_version=from_version, to_version=to_version)


def verified(event: GovernanceEvent, source: Source = "alerts", offset: int = 0) -> VerifiedEvent:
    return VerifiedEvent(Origin(source, f"shadow.{source}", 0, offset), event, "mldsa65-test",
                         {"payload": event.model_dump(mode="json"), "signature": {"key_id": "mldsa65-test"}})


def entry(seq: int, *, when: datetime = T0, outcome: str = "recorded", source: Input | None = None,
          rollback: RollbackRecord | None = None, gate: GateRecord | None = None, facts: list[Event] | None = None,
          blocked_rules: list[str] | None = None) -> VerifiedEntry:
    source = source or Input(topic="governance.commands", partition=0, offset=seq, digest="0" * 64, kind="command",
                             id=f"cmd-{seq}", type="advance", actor="GID-08")
    body = EntryBody(at=when, input=source, outcome=outcome, rollback=rollback, gate=gate,  # type: ignore[arg-type]
                     facts=facts or [], blocked=blocked_rules or [])
    audit = AuditEntry(**dict(body), seq=seq, prev_hash="0" * 64)
    return VerifiedEntry(Origin("audit", "governance.lifecycle", 0, seq), audit, "mldsa65-test",
                         {"payload": audit.model_dump(mode="json"), "signature": {"key_id": "mldsa65-test"}})


def handled(seq: int, event: RollbackTrigger, status: RollbackStatus, *, when: datetime = T0,
            outcome: str = "recorded") -> VerifiedEntry:
    """The audit entry of the consumer handling ``event``, with its rollback record."""
    source = Input(topic="shadow.rollbacks", partition=0, offset=seq, digest="1" * 64, kind="event",
                   id=str(event.event_id), type="RollbackTrigger", actor="mldsa65-test")
    record = rollback(event.model, event.from_version, event.to_version, status, when=when,
                      trigger=f"{event.trigger} (RollbackTrigger {event.event_id})", action=event.action)
    facts: list[Event] = []
    if status == "COMPLETED":
        facts = [moved(event.model, event.from_version, "PRODUCTION", "RETIRED", when=when, rollback_=True)]
    return entry(seq, when=when, outcome="applied" if status == "COMPLETED" else outcome, source=source,
                 rollback=record, facts=facts)


def rollback(model: str, from_version: str, to_version: str | None, status: RollbackStatus, *,
             when: datetime = T0, trigger: str = "command c-1", action: str = "immediate") -> RollbackRecord:
    return RollbackRecord(model=model, from_version=from_version, to_version=to_version, reason="error rate 3.1 %",
                          initiated_by="ALEX_AUTOMATED", trigger=trigger, action=action, status=status,
                          error="Target model not found" if status == "FAILED" else None,
                          steps=["check target", "disable"], started_at=when, finished_at=when)


def moved(model: str, version: str, from_stage: str, to_stage: str, *, when: datetime = T0,
          rollback_: bool = False) -> Transitioned:
    return Transitioned(event_id=f"{model}-{version}-{to_stage}-{uuid.uuid4().hex[:6]}", at=when, model=model,
                        version=version, from_stage=from_stage, to_stage=to_stage,  # type: ignore[arg-type]
                        rollback=rollback_)


def approved(model: str, version: str, *, when: datetime = T0) -> ApprovalRecorded:
    return ApprovalRecorded(event_id=f"{model}-{version}-approval", at=when, actor="GID-08", model=model,
                            version=version, approver="GID-08", target="PRODUCTION")  # type: ignore[arg-type]


def gate_record(model: str, version: str, *, passed: bool = True, stage: str = "STAGING",
                when: datetime = T0) -> GateRecord:
    return GateRecord(event_id=str(uuid.uuid4()), model=model, version=version, production_version="1.0.0",
                      stage=stage, gate="staging", passed=passed, failures=[], ts=when, policy_hash=POLICY_HASH,
                      event={})
