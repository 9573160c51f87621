"""What one verified input does to the governance state: the audit entry it produces (pure decisions).

=====================  ========================================================================================
input                  entry
=====================  ========================================================================================
register / propose     the facts (Registered, MetadataRecorded, FeaturesRecorded with the catalog linkage
                       verdict, DocumentRecorded) and the artifact digest; refused as a whole if any is refused
approve                ApprovalRecorded by the signing identity; a GID-08 approval of a STAGING version then
                       tries the automatic promotion to PRODUCTION
escalate / resolve     EscalationRaised / EscalationResolved
advance                the Transitioned fact decided by
                       :func:`~governance.lifecycle.promotion.decide_transition` with the recorded gate
                       verdicts and the policy's minimum durations; to PRODUCTION through
                       :func:`promote_to_production`
rollback, and          a :class:`RollbackPlan` (a rollback needs the routing I/O of :mod:`governance.service.rollback`);
RollbackTrigger        ``scheduled`` / ``manual_review`` triggers are recorded and alerted, not executed
GateReady/GateBlocked  the gate record; a GateReady of a SHADOW version promotes it to STAGING without a
                       person, a GateReady of the canary tries the promotion to PRODUCTION
Escalation (event)     EscalationRaised with the event id as escalation id
=====================  ========================================================================================

Automatic steps that are not allowed yet leave the entry ``recorded`` with the rules that blocked them in
``blocked``; a command the rules refuse is ``rejected`` with reason ``refused`` and every broken rule.

Promotion to PRODUCTION (spec 7.1): the staging gate passed (latest STAGING decision READY), GID-08
approved and a ProofPack exists. The ProofPack is generated here, only when every other rule passes, with
the metadata's ``proof_pack_id``; it and the Transitioned fact go into the same entry.

Guarantees: pure and deterministic apart from the ProofPack signature; facts get ids
``<input id>#<n>``, so the same input always yields the same facts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from governance.contract.events import Escalation, GateBlocked, GateReady, GovernanceEvent, RollbackTrigger
from governance.contract.stages import ModelType, Stage
from governance.crypto.signing import Signer
from governance.errors import EventValidationError, PolicyViolation
from governance.lifecycle.audit import ArtifactDigest, EntryBody, EntryOutcome, GateRecord, Rejection
from governance.lifecycle.commands import Advance, Approve, Command, Escalate, Propose, Register, Resolve
from governance.lifecycle.intake import Received, Refused
from governance.lifecycle.ledger import (
    ApprovalRecorded,
    DocumentRecorded,
    EscalationRaised,
    EscalationResolved,
    Event,
    FeaturesRecorded,
    LifecycleEvent,
    MetadataRecorded,
    ProofPackRecorded,
    Registered,
    Transitioned,
)
from governance.lifecycle.machine import APPROVER_GOVERNANCE, FORWARD, Assessment
from governance.lifecycle.promotion import MoveRequest, decide_transition
from governance.lifecycle.proofpack import build_proofpack, sign_proofpack
from governance.lifecycle.registry import Registry, apply
from governance.lifecycle.state import GovernanceState, as_verdict, latest_gate
from governance.policy.catalog import FeatureCatalog, validate_feature_linkage
from governance.policy.document import Policy

__all__ = ["AUTOMATED", "Rules", "RollbackPlan", "handle", "min_durations", "next_stage", "promote_to_production",
           "rejected"]

AUTOMATED = "ALEX_AUTOMATED"
_PROOFPACK_RULE = "[7.1] ProofPack artifact required"
_EDITABLE = (Stage.PROPOSAL, Stage.PROTOTYPE, Stage.TRAINING)


@dataclass(frozen=True)
class Rules:
    """What decisions depend on besides the state: policy, catalog, canary share, the ProofPack signer."""

    policy: Policy
    catalog: FeatureCatalog
    canary_share: float
    signer: Signer


@dataclass(frozen=True)
class RollbackPlan:
    """A decided rollback, executed by :func:`governance.service.rollback.execute_rollback` (``fact`` None: refused)."""

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


@dataclass(frozen=True)
class Plan:
    """The entry an input produces, and the rollback to execute before it is sealed (if any)."""

    body: EntryBody
    rollback: RollbackPlan | None = None


def min_durations(policy: Policy, model_type: ModelType) -> Mapping[Stage, timedelta]:
    """Each stage's minimum duration under ``policy`` (SHADOW: the larger of the stage and model-type minimum)."""
    days = {stage: getattr(policy.lifecycle, stage.value).min_days for stage in Stage}
    requirement = policy.shadow.model_types.get(model_type)
    if requirement is not None:
        days[Stage.SHADOW] = max(days[Stage.SHADOW], requirement.min_duration_days)
    return {stage: timedelta(days=value) for stage, value in days.items()}


def next_stage(stage: Stage) -> Stage | None:
    """The next forward stage (None from PRODUCTION and RETIRED)."""
    if stage is Stage.RETIRED or stage is Stage.PRODUCTION:
        return None
    return FORWARD[FORWARD.index(stage) + 1]


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


def _decide(state: GovernanceState, rules: Rules, move: MoveRequest, *, event_id: str, now: datetime,
            registry: Registry | None = None) -> Transitioned:
    """:func:`decide_transition` of ``move`` on ``registry`` (default: the state's) with the state's latest gate
    verdicts and the policy's minimum durations."""
    registry = state.registry if registry is None else registry
    record = registry.get(move.model, move.version)
    judged = replace(
        move,
        shadow_checklist=as_verdict(latest_gate(state, move.model, move.version, Stage.SHADOW)),
        staging_gate=as_verdict(latest_gate(state, move.model, move.version, Stage.STAGING)),
        min_duration=min_durations(rules.policy, record.model_type),
    )
    return decide_transition(registry, judged, event_id=event_id, now=now)


def promote_to_production(
    state: GovernanceState, rules: Rules, move: MoveRequest, *, now: datetime, new_id: Callable[[], str],
    registry: Registry | None = None,
) -> tuple[list[Event], dict[str, Any] | None]:
    """Facts (and the signed ProofPack) of ``move`` STAGING -> PRODUCTION, or PolicyViolation with every rule.

    ``move.target`` must be PRODUCTION; its gate verdicts and durations are the state's and the policy's.
    ``registry`` (default: the state's) is the registry to decide on, e.g. one with a just-recorded approval.
    """
    if move.target is not Stage.PRODUCTION:
        raise ValueError(f"promote_to_production moves to PRODUCTION, not to {move.target}")
    registry = registry if registry is not None else state.registry
    evidence = state.model_copy(update={"registry": registry})
    model, version = move.model, move.version
    if registry.get(model, version).proofpack_id is not None:
        return [_decide(state, rules, move, event_id=new_id(), now=now, registry=registry)], None
    try:
        _decide(state, rules, move, event_id="dry-run", now=now, registry=registry)
    except PolicyViolation as exc:
        others = [rule for rule in exc.rules if rule != _PROOFPACK_RULE]
        if others:
            try:
                build_proofpack(evidence, model, version, now, rules.policy.hash())
            except PolicyViolation as missing:
                others += missing.rules
            raise PolicyViolation(f"{model}@{version} STAGING -> PRODUCTION refused: " + "; ".join(others),
                                  others) from None
    pack = build_proofpack(evidence, model, version, now, rules.policy.hash())
    signed = sign_proofpack(pack, rules.signer, now)
    recorded = ProofPackRecorded(event_id=new_id(), at=now, actor=move.actor, model=model, version=version,
                                 proofpack_id=pack.proofpack_id)
    moved = _decide(state, rules, move, event_id=new_id(), now=now, registry=apply(registry, recorded))
    return [recorded, moved], signed


def _linkage(rules: Rules, features: dict[str, str]) -> Assessment:
    ok, violations = validate_feature_linkage(rules.catalog, features)
    return Assessment(passed=ok, failures=tuple(violations))


def _evidence(state: GovernanceState, received: Received, command: Register | Propose, rules: Rules,
              now: datetime) -> Plan:
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
    # Evidence facts never change the stage, so the artifact rule can judge the registry after them.
    after = _apply_all(state.registry, facts)
    artifact = None
    if command.artifact_sha256 is not None:
        if after.get(command.model, command.version).stage not in _EDITABLE:
            rule = "[4] the artifact is settled once the version left TRAINING; register a new version instead"
            raise PolicyViolation(rule, [rule])
        artifact = ArtifactDigest(model=command.model, version=command.version, sha256=command.artifact_sha256)
    return Plan(_body(received, now, facts=facts, artifact=artifact))


def _approve(state: GovernanceState, received: Received, command: Approve, rules: Rules, now: datetime) -> Plan:
    new_id = _Ids(command.command_id)
    fact = _fact(ApprovalRecorded, command, new_id(), now, approver=command.identity, target=command.target)
    after = apply(state.registry, fact)
    facts: list[Event] = [fact]
    blocked: list[str] = []
    pack = None
    if (command.target is Stage.PRODUCTION and command.identity == APPROVER_GOVERNANCE
            and after.get(command.model, command.version).stage is Stage.STAGING):
        move = MoveRequest(command.model, command.version, Stage.PRODUCTION, AUTOMATED,
                           f"{APPROVER_GOVERNANCE} approval completed the production gate")
        try:
            more, pack = promote_to_production(state, rules, move, now=now, new_id=new_id, registry=after)
            facts += more
        except PolicyViolation as exc:
            blocked = exc.rules
    return Plan(_body(received, now, facts=facts, proofpack=pack, blocked=blocked))


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
    return Plan(_body(received, now, facts=[_decide(state, rules, move, event_id=new_id(), now=now)]))


def _command(state: GovernanceState, received: Received, command: Command, rules: Rules, now: datetime) -> Plan:
    if isinstance(command, Register | Propose):
        return _evidence(state, received, command, rules, now)
    if isinstance(command, Approve):
        return _approve(state, received, command, rules, now)
    if isinstance(command, Advance):
        return _advance(state, received, command, rules, now)
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
        return _rollback_plan(state, received, move, trigger=f"command {command.command_id}", now=now, new_id=new_id)
    apply(state.registry, fact)
    return Plan(_body(received, now, facts=[fact]))


def _rollback_plan(state: GovernanceState, received: Received, move: MoveRequest, *, trigger: str, now: datetime,
                   new_id: Callable[[], str], action: str = "immediate") -> Plan:
    """The rollback of ``move`` (to RETIRED, by ``move.actor``); its ``restore_version`` counts only when the
    version is the serving production version."""
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
                        action=action)
    return Plan(_body(received, now), rollback=plan)


def _gate(state: GovernanceState, received: Received, event: GateReady | GateBlocked, rules: Rules,
          now: datetime) -> Plan:
    version = event.versions.candidate
    if version is None:
        raise EventValidationError(f"{event.type} {event.event_id} names no candidate version", field="versions")
    record = state.registry.get(event.model, version)
    failures = [] if isinstance(event, GateReady) else [check.message for check in event.failing_checks]
    gate = GateRecord(event_id=str(event.event_id), model=event.model, version=version,
                      production_version=event.versions.production, stage=event.stage, gate=event.gate,
                      passed=isinstance(event, GateReady), failures=failures, ts=event.ts,
                      policy_hash=event.evidence.policy_hash, event=event.model_dump(mode="json"))
    if not gate.passed:
        return Plan(_body(received, now, "recorded", gate=gate))
    if record.stage is not Stage(event.stage):
        rule = f"gate {event.gate} is for {event.stage} but {event.model}@{version} is in {record.stage}"
        return Plan(_body(received, now, "recorded", gate=gate, blocked=[rule]))
    versions = dict(state.verdicts.get(event.model, {}))
    versions[version] = {**versions.get(version, {}), event.stage: gate}
    judged = state.model_copy(update={"verdicts": {**state.verdicts, event.model: versions}})
    new_id = _Ids(str(event.event_id))
    reason = f"{event.gate} READY ({event.type} {event.event_id})"
    pack = None
    target = Stage.STAGING if record.stage is Stage.SHADOW else Stage.PRODUCTION
    move = MoveRequest(event.model, version, target, AUTOMATED, reason)
    try:
        if target is Stage.STAGING:
            facts: list[Event] = [_decide(judged, rules, move, event_id=new_id(), now=now)]
        else:
            facts, pack = promote_to_production(judged, rules, move, now=now, new_id=new_id)
    except PolicyViolation as exc:
        return Plan(_body(received, now, "recorded", gate=gate, blocked=exc.rules))
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
        serving = state.registry.models[event.model].production == event.from_version
        restore = event.to_version if serving and event.to_version != event.from_version else None
        move = MoveRequest(event.model, event.from_version, Stage.RETIRED, AUTOMATED, event.reason, rollback=True,
                           restore_version=restore)
        return _rollback_plan(state, received, move, trigger=f"{event.trigger} ({event.type} {event.event_id})",
                              now=now, new_id=new_id, action=event.action)
    if not isinstance(event, Escalation):
        raise EventValidationError(f"{event.type} is not an input of the governance consumer", field="type")
    raised = EscalationRaised(event_id=new_id(), at=now, actor=AUTOMATED, model=event.model,
                              version=event.versions.candidate or event.versions.production,
                              escalation_id=str(event.event_id),
                              reason=f"{event.reason} (raised by {event.raised_by}, until "
                                     f"{event.blocks_until.isoformat()})")
    apply(state.registry, raised)
    return Plan(_body(received, now, facts=[raised]))


def handle(state: GovernanceState, received: Received, rules: Rules, now: datetime) -> Plan:
    """The entry (and rollback plan, if any) for ``received``; a refused command becomes a rejected entry."""
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
