"""What one verified input does to the governance state: the audit entry it produces (pure decisions).

=====================  ========================================================================================
input                  entry
=====================  ========================================================================================
register / propose     the facts (Registered, MetadataRecorded, FeaturesRecorded with the catalog linkage
                       verdict, DocumentRecorded, ArtifactRecorded with its verified signed manifest); refused
                       as a whole if any is refused, and when the metadata given is not valid (spec 4.2:
                       every violation named)
approve                ApprovalRecorded by the signing identity; a GID-08 approval of a STAGING version then
                       tries the automatic promotion to PRODUCTION, of a SHADOW version (the shadow review,
                       spec 9.2) the automatic promotion to STAGING
cancel_rollback        GID-08 overrides a pending scheduled rollback: a CANCELLED rollback record
escalate / resolve     EscalationRaised / EscalationResolved
advance                the Transitioned fact decided by
                       :func:`~governance.lifecycle.promotion.decide_transition` with the recorded gate
                       verdicts and the policy's minimum durations; to PRODUCTION through
                       :func:`~governance.lifecycle.promotion.promote_to_production`
rollback, and          a :class:`RollbackPlan` (a rollback needs the routing I/O of :mod:`governance.service.rollback`);
RollbackTrigger        ``scheduled`` triggers are recorded with their ``due_at`` and carried out then by the
                       consumer's timer (:mod:`governance.lifecycle.timers`); ``manual_review`` ones are
                       recorded and alerted; a deferred plan keeps the error its plan found
GateReady/GateBlocked  the gate record; a GateReady of a SHADOW version promotes it to STAGING (once ALEX
                       reviewed it, unless the policy turns the review off), a GateReady of the canary tries
                       the promotion to PRODUCTION. A gate judged under another policy hash is refused; one
                       about a stage the version left, or against a production version that no longer
                       serves, is recorded but does not count as the stage's verdict
Escalation (event)     EscalationRaised with the event id as escalation id and ``until`` its ``blocks_until``
=====================  ========================================================================================

Automatic steps that are not allowed yet leave the entry ``recorded`` with the rules that blocked them in
``blocked``; when only time blocks them (a minimum duration, an escalation's ``blocks_until``) the entry
carries a :class:`~governance.lifecycle.audit.Retry` at the earliest time they pass, which the consumer's
timer tries then. A command the rules refuse is ``rejected`` with reason ``refused`` and every broken
rule; an input whose facts are already applied is ``rejected`` as ``replayed`` (a duplicate that got past
intake is never applied twice).

Promotion to STAGING and PRODUCTION also needs the version's artifact signed by a trusted key (spec 6.3,
:mod:`governance.lifecycle.artifacts`), verified again at the moment of the move.

Promotion to PRODUCTION (spec 7.1): the staging gate passed (latest STAGING decision READY), GID-08
approved and a ProofPack exists. The ProofPack is generated here, only when every other rule passes, with
the metadata's ``proof_pack_id``; it and the Transitioned fact go into the same entry.

Guarantees: pure and deterministic apart from the ProofPack signature; facts get ids
``<input id>#<n>``, so the same input always yields the same facts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from governance.contract.events import Escalation, GateBlocked, GateReady, GovernanceEvent, RollbackTrigger
from governance.contract.stages import Stage
from governance.errors import EventValidationError, PolicyViolation, VerificationError
from governance.lifecycle.artifacts import verify_manifest
from governance.lifecycle.audit import EntryBody, EntryOutcome, GateRecord, Input, Rejection
from governance.lifecycle.commands import (
    Advance,
    Approve,
    CancelRollback,
    Command,
    Escalate,
    Propose,
    Register,
    Resolve,
)
from governance.lifecycle.intake import Received, Refused
from governance.lifecycle.ledger import (
    ApprovalRecorded,
    ArtifactRecorded,
    DocumentRecorded,
    EscalationRaised,
    EscalationResolved,
    Event,
    FeaturesRecorded,
    LifecycleEvent,
    MetadataRecorded,
    Registered,
    Transitioned,
)
from governance.lifecycle.machine import APPROVER_GOVERNANCE, Assessment
from governance.lifecycle.metadata import validate_model_metadata
from governance.lifecycle.promotion import (
    AUTOMATED,
    MoveRequest,
    Rules,
    attempt_promotion,
    decide,
    decide_transition,
    next_stage,
    promote_to_production,
)
from governance.lifecycle.registry import ModelVersion, Registry, apply
from governance.lifecycle.state import GovernanceState, version_key
from governance.policy.catalog import validate_feature_linkage

__all__ = ["Plan", "RollbackPlan", "handle", "rejected", "rollback_plan"]

@dataclass(frozen=True)
class RollbackPlan:
    """A decided rollback, executed by :func:`governance.service.rollback.execute_rollback` (``fact`` None: refused,
    ``error`` says why). A ``scheduled`` plan is recorded with its ``due_at``; ``run_now``: its time came (the
    consumer's timer), so it is executed like an immediate one."""

    model: str
    from_version: str
    to_version: str | None
    reason: str
    initiated_by: str
    trigger: str
    fact: Transitioned | None
    error: str | None
    started_at: datetime
    action: str = "immediate"
    due_at: datetime | None = None
    run_now: bool = False


@dataclass(frozen=True)
class Plan:
    """The entry an input produces, and the rollback to execute before it is sealed (if any)."""

    body: EntryBody
    rollback: RollbackPlan | None = None


def rejected(refusal: Refused, now: datetime) -> EntryBody:
    """The entry of an input refused at intake."""
    return EntryBody(at=now, input=refusal.input, outcome="rejected", rejection=refusal.rejection)


class _Ids:
    """Fact ids ``<input id>#0``, ``#1``, ... in the order facts are made."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.count = prefix, 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.prefix}#{self.count - 1}"


_F = TypeVar("_F", bound=LifecycleEvent)


def _fact(kind: type[_F], command: Command, event_id: str, now: datetime, **fields: Any) -> _F:
    base = {"event_id": event_id, "at": now, "actor": command.identity, "model": command.model,
            "version": command.version}
    return kind.model_validate({**base, **fields})


def _body(received: Received, now: datetime, outcome: EntryOutcome = "applied", **fields: Any) -> EntryBody:
    return EntryBody.model_validate({"at": now, "input": received.input, "outcome": outcome, **fields})


def _apply_all(registry: Registry, facts: list[Event]) -> Registry:
    for fact in facts:
        registry = apply(registry, fact)
    return registry


def _linkage(rules: Rules, features: dict[str, str]) -> Assessment:
    ok, violations = validate_feature_linkage(rules.catalog, features)
    return Assessment(passed=ok, failures=tuple(violations))


def _metadata_rules(command: Register | Propose) -> list[str]:
    """Spec 4.2 violations of the metadata a command records (none given: nothing to judge yet)."""
    metadata = command.metadata
    if not metadata:
        return []
    _, violations = validate_model_metadata(metadata)
    rules = [f"[4.2] {violation}" for violation in violations]
    declared = metadata.get("version")
    if "version" in metadata and declared != command.version:
        rules.append(f"[4] metadata version {declared!r} is not the registered version {command.version!r}")
    return rules


def _artifact_fact(command: Register | Propose, rules: Rules, new_id: Callable[[], str], now: datetime) -> Event:
    """The artifact digest and, when given, its signed manifest verified now against the system trust store."""
    sha256, manifest = command.artifact_sha256, command.artifact_manifest
    key_id = signed_at = None
    if manifest is not None:
        where = f"{command.model}@{command.version}"
        if rules.trust is None:
            rule = f"[6.3] the artifact manifest of {where} cannot be verified: the consumer has no trust store"
            raise PolicyViolation(rule, [rule])
        try:
            key_id, signed_at = verify_manifest(manifest, str(sha256), rules.trust.system, now,
                                                rules.trust.phase(now))
        except VerificationError as exc:
            rule = f"[6.3] the artifact manifest of {where} does not verify: {exc}"
            raise PolicyViolation(rule, [rule]) from None
    return _fact(ArtifactRecorded, command, new_id(), now, sha256=sha256, manifest=manifest, key_id=key_id,
                 signed_at=signed_at)


def _evidence(state: GovernanceState, received: Received, command: Register | Propose, rules: Rules,
              now: datetime) -> Plan:
    invalid = _metadata_rules(command)
    if invalid:
        raise PolicyViolation(f"metadata of {command.model}@{command.version} refused, {len(invalid)} violation(s): "
                              + "; ".join(invalid), invalid)
    new_id = _Ids(command.command_id)
    facts: list[Event] = []
    if isinstance(command, Register):
        linkage = _linkage(rules, command.features) if command.features else None
        facts.append(_fact(Registered, command, new_id(), now, model_type=command.model_type,
                           metadata=command.metadata, features=command.features, feature_linkage=linkage))
    else:
        if command.metadata is not None:
            facts.append(_fact(MetadataRecorded, command, new_id(), now, metadata=command.metadata))
        if command.features is not None:
            facts.append(_fact(FeaturesRecorded, command, new_id(), now, features=command.features,
                               feature_linkage=_linkage(rules, command.features)))
        facts += [_fact(DocumentRecorded, command, new_id(), now, stage=d.stage, name=d.name, text=d.text)
                  for d in command.documents]
    if command.artifact_sha256 is not None:
        facts.append(_artifact_fact(command, rules, new_id, now))
    _apply_all(state.registry, facts)  # the registry's refusals (a settled artifact, closed documents) refuse it all
    return Plan(_body(received, now, facts=facts))


def _approve(state: GovernanceState, received: Received, command: Approve, rules: Rules, now: datetime) -> Plan:
    new_id = _Ids(command.command_id)
    fact = _fact(ApprovalRecorded, command, new_id(), now, approver=command.identity, target=command.target)
    after = apply(state.registry, fact)
    stage = after.get(command.model, command.version).stage
    facts: list[Event] = [fact]
    blocked: list[str] = []
    pack, retry = None, None
    automatic = {(Stage.PRODUCTION, Stage.STAGING): "production gate",
                 (Stage.STAGING, Stage.SHADOW): "shadow review (spec 9.2)"}.get((command.target, stage))
    if command.identity == APPROVER_GOVERNANCE and automatic is not None:
        more, pack, blocked, retry = attempt_promotion(
            state, rules, command.model, command.version, command.target,
            f"{APPROVER_GOVERNANCE} approval completed the {automatic}", now=now, new_id=new_id,
            cause=command.command_id, registry=after)
        facts += more
    return Plan(_body(received, now, facts=facts, proofpack=pack, blocked=blocked, retry=retry))


def _advance(state: GovernanceState, received: Received, command: Advance, rules: Rules, now: datetime) -> Plan:
    new_id = _Ids(command.command_id)
    record = state.registry.get(command.model, command.version)
    target = command.target or next_stage(record.stage)
    if target is None:
        rule = f"[1.1] {record.stage} has no next stage; to retire it use `--to RETIRED --reason ...`"
        raise PolicyViolation(rule, [rule])
    move = MoveRequest(command.model, command.version, target, command.identity, command.reason)
    if target is Stage.PRODUCTION and record.stage is Stage.STAGING:
        facts, pack = promote_to_production(state, rules, move, now=now, new_id=new_id)
        return Plan(_body(received, now, facts=facts, proofpack=pack))
    return Plan(_body(received, now, facts=[decide(state, rules, move, event_id=new_id(), now=now)]))


def _command(state: GovernanceState, received: Received, command: Command, rules: Rules, now: datetime) -> Plan:
    if isinstance(command, Register | Propose):
        return _evidence(state, received, command, rules, now)
    if isinstance(command, Approve):
        return _approve(state, received, command, rules, now)
    if isinstance(command, Advance):
        return _advance(state, received, command, rules, now)
    if isinstance(command, CancelRollback):
        return _cancel(state, received, command, now)
    new_id = _Ids(command.command_id)
    if isinstance(command, Escalate):
        fact: Event = _fact(EscalationRaised, command, new_id(), now, escalation_id=command.escalation_id,
                            reason=command.reason)
    elif isinstance(command, Resolve):
        fact = _fact(EscalationResolved, command, new_id(), now, escalation_id=command.escalation_id,
                     resolution=command.resolution)
    else:
        move = MoveRequest(command.model, command.version, Stage.RETIRED, command.identity, command.reason,
                           rollback=True, restore_version=command.restore_version)
        return _rollback_plan(state, received.input, move, trigger=f"command {command.command_id}", now=now,
                              new_id=new_id)
    apply(state.registry, fact)
    return Plan(_body(received, now, facts=[fact]))


def _cancel(state: GovernanceState, received: Received, command: CancelRollback, now: datetime) -> Plan:
    """ALEX's signed override of a pending scheduled rollback (spec 8.1): a CANCELLED record ends it."""
    from governance.lifecycle.audit import RollbackRecord

    where = f"{command.model}@{command.version}"
    if command.identity != APPROVER_GOVERNANCE:
        rule = f"[8.1] only ALEX ({APPROVER_GOVERNANCE}) may override a scheduled rollback, not {command.identity}"
        raise PolicyViolation(rule, [rule])
    pending = state.scheduled.get(version_key(command.model, command.version))
    if pending is None:
        rule = f"[8.1] {where} has no scheduled rollback pending; nothing to cancel"
        raise PolicyViolation(rule, [rule])
    record = RollbackRecord.model_validate({
        **pending.model_dump(), "status": "CANCELLED", "started_at": now, "finished_at": now, "error": None,
        "steps": [f"scheduled rollback due {pending.due_at.isoformat() if pending.due_at else '?'} overridden by "
                  f"{command.identity} (command {command.command_id}): {command.reason}"],
        "routing_offset": None})
    return Plan(_body(received, now, "recorded", rollback=record))


def rollback_plan(state: GovernanceState, source: Input, move: MoveRequest, *, trigger: str, now: datetime,
                  new_id: Callable[[], str], action: str = "immediate", due_at: datetime | None = None,
                  run_now: bool = False) -> Plan:
    """The rollback of ``move`` (to RETIRED, by ``move.actor``), for an entry whose input is ``source``; its
    ``restore_version`` counts only when the version is the serving production version."""
    return _rollback_plan(state, source, move, trigger=trigger, now=now, new_id=new_id, action=action,
                          due_at=due_at, run_now=run_now)


def _rollback_plan(state: GovernanceState, source: Input, move: MoveRequest, *, trigger: str, now: datetime,
                   new_id: Callable[[], str], action: str = "immediate", due_at: datetime | None = None,
                   run_now: bool = False) -> Plan:
    registry = state.registry
    record = registry.get(move.model, move.version)
    line = registry.models[move.model]
    serving = line.production == move.version and record.stage is Stage.PRODUCTION
    if serving:
        target = move.restore_version or (line.previous_production[-1] if line.previous_production else None)
    else:  # a shadow or canary rollback: the serving production version stays, nothing is restored
        target = line.production
        move = replace(move, restore_version=None)
    fact, error = None, None
    try:
        fact = decide_transition(registry, move, event_id=new_id(), now=now)
    except PolicyViolation as exc:
        error = "; ".join(exc.rules) or str(exc)
    plan = RollbackPlan(model=move.model, from_version=move.version, to_version=target, reason=move.reason,
                        initiated_by=move.actor, trigger=trigger, fact=fact, error=error, started_at=now,
                        action=action, due_at=due_at, run_now=run_now)
    return Plan(EntryBody(at=now, input=source, outcome="applied"), rollback=plan)


def _stale(state: GovernanceState, event: GateReady | GateBlocked, record: ModelVersion) -> list[str]:
    """Why a verified gate decision is no verdict of its stage now ([]: it is)."""
    notes = []
    if record.stage is not Stage(event.stage):
        notes.append(f"gate {event.gate} is for {event.stage} but {event.model}@{record.version} is in "
                     f"{record.stage}: recorded, it does not replace the {event.stage} verdict")
    line = state.registry.models[event.model]
    judged_against = event.versions.production
    if judged_against != line.production and (line.production is not None or judged_against in line.versions):
        notes.append(f"gate {event.gate} compared {record.version} with production {judged_against}, but "
                     f"{line.production or 'no version'} serves {event.model} now: recorded, not a verdict")
    return notes


def _gate(state: GovernanceState, received: Received, event: GateReady | GateBlocked, rules: Rules,
          now: datetime) -> Plan:
    version = event.versions.candidate
    if version is None:
        raise EventValidationError(f"{event.type} {event.event_id} names no candidate version", field="versions")
    record = state.registry.get(event.model, version)
    policy = rules.policy
    if event.evidence.policy_hash != policy.hash():
        rule = (f"[policy] {event.type} {event.event_id} was judged under policy hash {event.evidence.policy_hash}, "
                f"not the consumer's {policy.policy_id} {policy.version} (hash {policy.hash()}): run the worker "
                "and the consumer on the same policy file")
        raise PolicyViolation(rule, [rule])
    failures = [] if isinstance(event, GateReady) else [check.message for check in event.failing_checks]
    gate = GateRecord(event_id=str(event.event_id), model=event.model, version=version,
                      production_version=event.versions.production, stage=event.stage, gate=event.gate,
                      passed=isinstance(event, GateReady), failures=failures, ts=event.ts,
                      policy_hash=event.evidence.policy_hash, event=event.model_dump(mode="json"))
    stale = _stale(state, event, record)
    if stale:
        return Plan(_body(received, now, "recorded", gate=gate.model_copy(update={"counts": False}), blocked=stale))
    if not gate.passed:
        return Plan(_body(received, now, "recorded", gate=gate))
    versions = dict(state.verdicts.get(event.model, {}))
    versions[version] = {**versions.get(version, {}), event.stage: gate}
    judged = state.model_copy(update={"verdicts": {**state.verdicts, event.model: versions}})
    target = Stage.STAGING if record.stage is Stage.SHADOW else Stage.PRODUCTION
    facts, pack, blocked, retry = attempt_promotion(
        judged, rules, event.model, version, target, f"{event.gate} READY ({event.type} {event.event_id})", now=now,
        new_id=_Ids(str(event.event_id)), cause=str(event.event_id))
    if blocked:
        return Plan(_body(received, now, "recorded", gate=gate, blocked=blocked, retry=retry))
    return Plan(_body(received, now, gate=gate, facts=facts, proofpack=pack))


def _event(state: GovernanceState, received: Received, event: GovernanceEvent, rules: Rules, now: datetime) -> Plan:
    if isinstance(event, GateReady | GateBlocked):
        return _gate(state, received, event, rules, now)
    new_id = _Ids(str(event.event_id))
    if isinstance(event, RollbackTrigger):
        record = state.registry.get(event.model, event.from_version)
        if record.stage is Stage.RETIRED:
            note = f"{event.model}@{event.from_version} is already RETIRED; nothing to roll back"
            return Plan(_body(received, now, "recorded", blocked=[note]))
        due_at = None
        if event.action == "scheduled":
            pending = state.scheduled.get(version_key(event.model, event.from_version))
            if pending is not None and pending.due_at is not None:
                note = (f"a rollback of {event.model}@{event.from_version} is already scheduled for "
                        f"{pending.due_at.isoformat()} ({pending.trigger}); this trigger adds nothing")
                return Plan(_body(received, now, "recorded", blocked=[note]))
            due_at = now + timedelta(seconds=rules.policy.lifecycle.scheduled_rollback_after_s)
        serving = state.registry.models[event.model].production == event.from_version
        restore = event.to_version if serving and event.to_version != event.from_version else None
        move = MoveRequest(event.model, event.from_version, Stage.RETIRED, AUTOMATED, event.reason, rollback=True,
                           restore_version=restore)
        return _rollback_plan(state, received.input, move,
                              trigger=f"{event.trigger} ({event.type} {event.event_id})", now=now, new_id=new_id,
                              action=event.action, due_at=due_at)
    if not isinstance(event, Escalation):
        raise EventValidationError(f"{event.type} is not an input of the governance consumer", field="type")
    raised = EscalationRaised(event_id=new_id(), at=now, actor=AUTOMATED, model=event.model,
                              version=event.versions.candidate or event.versions.production,
                              escalation_id=str(event.event_id), until=event.blocks_until,
                              reason=f"{event.reason} (raised by {event.raised_by}, until "
                                     f"{event.blocks_until.isoformat()})")
    apply(state.registry, raised)
    return Plan(_body(received, now, facts=[raised]))


def _duplicate(state: GovernanceState, received: Received) -> Rejection | None:
    """A rejection for an input whose id was already handled or whose first fact is already applied."""
    input_id = received.input.id
    if input_id is None:
        return None
    if input_id in state.seen or state.registry.is_applied(f"{input_id}#0"):
        where = state.seen.get(input_id)
        return Rejection(reason="replayed", message=f"{received.input.type} {input_id} was already handled"
                         + (f" (audit seq {where})" if where is not None else " (its facts are applied)")
                         + "; it is not applied twice")
    return None


def handle(state: GovernanceState, received: Received, rules: Rules, now: datetime) -> Plan:
    """The entry (and rollback plan, if any) for ``received``; a refused command becomes a rejected entry."""
    duplicate = _duplicate(state, received)
    if duplicate is not None:
        return Plan(EntryBody(at=now, input=received.input, outcome="rejected", rejection=duplicate))
    try:
        if received.command is not None:
            return _command(state, received, received.command, rules, now)
        if received.event is None:
            raise EventValidationError("input carries neither a command nor an event", field="<input>")
        return _event(state, received, received.event, rules, now)
    except (PolicyViolation, EventValidationError) as exc:
        rule_list = exc.rules if isinstance(exc, PolicyViolation) else [str(exc)]
        rejection = Rejection(reason="refused", message=str(exc), rules=rule_list)
        return Plan(EntryBody(at=now, input=received.input, outcome="rejected", rejection=rejection))
