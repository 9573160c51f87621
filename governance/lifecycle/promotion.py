"""Deciding a stage move against the registry: a request becomes a :class:`Transitioned` fact or is refused.

:func:`decide_transition` takes a :class:`MoveRequest` (who asks which version to move where, and the
gate verdicts computed elsewhere), gathers the version's evidence from the registry (documents, metadata,
feature linkage, approvals for the target stage, open escalations, ProofPack), runs
:func:`governance.lifecycle.machine.transition` on it, and adds the rules only the registry can judge:

* one canary per model: SHADOW -> STAGING is refused while another version is in STAGING (1.2);
* metadata of the version it describes: its ``version`` field must be the registered version, and its
  monotonicity constraints may only name features the model uses (4);
* rollback (8.2): a rollback always ends in RETIRED; retiring the serving production version restores
  the previous production version (the most recent, or ``restore_version`` if it is one of them); a
  rollback with no version to restore is refused ("Target model not found"), a decommission is not.

Gate verdicts computed from the streams (the shadow completion checklist, the staging gate) are passed
in; the consumer computes them with ``governance.policy.gates`` and the policy.

Guarantees: pure and deterministic (``now`` is the decision time and becomes the fact's ``at``); the
registry is not changed (apply the returned fact with :func:`governance.lifecycle.registry.apply`); a refusal
names every broken rule, the lifecycle's first. It does not look at ``registry.applied``: check
``registry.is_applied(event_id)`` before deciding on a redelivered command.

On the governance state (what the handler and the consumer's timers call): :func:`decide` fills a move's
verdicts from the state's latest gates, the policy's minimum durations (:func:`min_durations`) and, for
STAGING and PRODUCTION, the artifact rules (spec 6.3) under the :class:`Rules`; :func:`promote_to_production`
adds the ProofPack (spec 7.1), generated and signed only when every other rule passes; :func:`attempt_promotion`
is the automatic move by ALEX_AUTOMATED, which returns the blocking rules and, when only time blocks it, the
:class:`~governance.lifecycle.audit.Retry` at the earliest time it passes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from governance.contract.stages import ModelType, Stage
from governance.crypto.signing import Signer
from governance.errors import PolicyViolation
from governance.lifecycle.artifacts import artifact_rules
from governance.lifecycle.audit import Retry
from governance.lifecycle.identities import Trust
from governance.lifecycle.ledger import Event, ProofPackRecorded, Transitioned
from governance.lifecycle.machine import (
    FORWARD,
    Assessment,
    LifecycleState,
    TransitionRequest,
    spec_min_durations,
    transition,
)
from governance.lifecycle.proofpack import build_proofpack, sign_proofpack
from governance.lifecycle.registry import ModelLine, ModelVersion, Registry, apply
from governance.lifecycle.state import GovernanceState, as_verdict, latest_gate
from governance.policy.catalog import FeatureCatalog
from governance.policy.document import Policy

__all__ = ["AUTOMATED", "MoveRequest", "Rules", "attempt_promotion", "decide", "decide_transition", "min_durations",
           "next_stage", "promote_to_production"]


@dataclass(frozen=True)
class MoveRequest:
    """``actor`` asks to move ``model@version`` to ``target`` for ``reason``, with the verdicts judged elsewhere.

    ``rollback`` marks an automatic or manual rollback (section 8); ``restore_version`` picks which previous
    production version a retired serving version hands over to. ``shadow_checklist`` and ``staging_gate``
    are the gate verdicts computed from the streams (None: not evaluated, which blocks); ``min_duration``
    is the policy's per-stage minimum (None: the spec's for the version's model type);
    ``shadow_review_required`` the policy's ``lifecycle.shadow_review_required``; ``extra_rules`` are rules
    broken outside the registry's view (e.g. an artifact manifest that does not verify, spec 6.3).
    """

    model: str
    version: str
    target: Stage
    actor: str = "system"
    reason: str = ""
    rollback: bool = False
    restore_version: str | None = None
    shadow_checklist: Assessment | None = None
    staging_gate: Assessment | None = None
    min_duration: Mapping[Stage, timedelta] | None = None
    shadow_review_required: bool = True
    extra_rules: tuple[str, ...] = ()


def _restore_target(line: ModelLine, record: ModelVersion, move: MoveRequest) -> tuple[str | None, list[str]]:
    retiring_serving = (
        move.target is Stage.RETIRED and record.stage is Stage.PRODUCTION and line.production == record.version
    )
    if not retiring_serving:
        if move.restore_version is not None:
            return None, ["[8.2] restore_version applies only when retiring the serving production version"]
        return None, []
    candidates = line.previous_production
    if move.restore_version is not None:
        if move.restore_version not in candidates:
            return None, [
                f"[8.2] Target model {move.restore_version} not found among the previous production "
                f"versions {candidates}; name one of them"
            ]
        return move.restore_version, []
    if candidates:
        return candidates[-1], []
    if move.rollback:
        return None, [f"[8.2] Target model not found: {record.model} has no previous production version to restore"]
    return None, []


def _registry_rules(line: ModelLine, record: ModelVersion, move: MoveRequest) -> list[str]:
    rules: list[str] = []
    target = move.target
    if move.rollback and target is not Stage.RETIRED:
        rules.append(f"[8.2] a rollback moves the version to RETIRED, not to {target}")
    if target is Stage.STAGING:
        canary = next((v for v, r in line.versions.items() if r.stage is Stage.STAGING), None)
        if canary is not None:
            rules.append(f"[1.2] version {canary} of {record.model} is already the canary; retire or promote it first")
    if target is Stage.SHADOW:
        declared = record.metadata.get("version")
        if declared is not None and declared != record.version:
            rules.append(f"[4] metadata version {declared!r} is not the registered version {record.version!r}")
        constraints = record.metadata.get("monotonicity_constraints")
        if isinstance(constraints, dict) and record.features:
            stray = sorted(set(constraints) - set(record.features))
            if stray:
                rules.append(f"[4] monotonicity_constraints name features the model does not use: {stray}")
    return rules


def _evidence(record: ModelVersion, move: MoveRequest, now: datetime) -> TransitionRequest:
    """The machine's view of the move: the registry's evidence for ``record`` and the verdicts of ``move``."""
    return TransitionRequest(
        target=move.target,
        reason=move.reason,
        approvals=record.approvers_for(move.target),
        open_escalations=record.open_escalations(),
        held_escalations=record.held_escalations(now),
        rollback=move.rollback,
        shadow_review_required=move.shadow_review_required,
        documents=record.documents,
        metadata=record.metadata,
        feature_linkage=record.feature_linkage,
        shadow_checklist=move.shadow_checklist,
        staging_gate=move.staging_gate,
        proofpack_id=record.proofpack_id,
    )


def decide_transition(registry: Registry, move: MoveRequest, *, event_id: str, now: datetime) -> Transitioned:
    """The fact "``move.model``@``move.version`` moved to ``move.target`` at ``now``", or :class:`PolicyViolation`.

    ``event_id`` becomes the fact's id and ``now`` its ``at`` (see the module guarantees).
    """
    record = registry.get(move.model, move.version)
    line = registry.models[move.model]
    restored, rules = _restore_target(line, record, move)
    rules += _registry_rules(line, record, move) + list(move.extra_rules)
    request = _evidence(record, move, now)
    durations = move.min_duration if move.min_duration is not None else spec_min_durations(record.model_type)
    try:
        transition(LifecycleState(record.stage, record.entered_stage_at), request, now, min_duration=durations)
    except PolicyViolation as exc:
        rules = exc.rules + rules
    if rules:
        raise PolicyViolation(
            f"{move.model}@{move.version} {record.stage} -> {move.target} refused, {len(rules)} rule(s) broken: "
            + "; ".join(rules),
            rules,
        )
    return Transitioned(
        event_id=event_id,
        at=now,
        actor=move.actor,
        model=move.model,
        version=move.version,
        from_stage=record.stage,
        to_stage=move.target,
        reason=move.reason,
        rollback=move.rollback,
        restored_version=restored,
        approvals=tuple(sorted(request.approvals)),
        shadow_checklist=move.shadow_checklist,
        staging_gate=move.staging_gate,
    )


AUTOMATED = "ALEX_AUTOMATED"
_PROOFPACK_RULE = "[7.1] ProofPack artifact required"
_SIGNED_STAGES = (Stage.STAGING, Stage.PRODUCTION)


@dataclass(frozen=True)
class Rules:
    """What decisions depend on besides the state: policy, catalog, canary share, the ProofPack signer, and the
    trust (system trust store, PQC phase) artifact manifests are verified against (None: none can be, so a
    manifest is refused and no version reaches STAGING or PRODUCTION, spec 6.3)."""

    policy: Policy
    catalog: FeatureCatalog
    canary_share: float
    signer: Signer
    trust: Trust | None = None


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


def decide(state: GovernanceState, rules: Rules, move: MoveRequest, *, event_id: str, now: datetime,
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
        shadow_review_required=rules.policy.lifecycle.shadow_review_required,
        extra_rules=tuple(_artifact_rules(record, rules, now)) if move.target in _SIGNED_STAGES else (),
    )
    return decide_transition(registry, judged, event_id=event_id, now=now)


def _artifact_rules(record: ModelVersion, rules: Rules, now: datetime) -> list[str]:
    if rules.trust is None:
        if record.artifact is not None and record.artifact.manifest is not None:
            return [f"[6.3] the artifact manifest of {record.model}@{record.version} cannot be verified: the "
                    "governance consumer has no trust store"]
        return artifact_rules(record, None, now, None)
    return artifact_rules(record, rules.trust.system, now, rules.trust.phase(now))


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
        return [decide(state, rules, move, event_id=new_id(), now=now, registry=registry)], None
    try:
        decide(state, rules, move, event_id="dry-run", now=now, registry=registry)
    except PolicyViolation as exc:
        others = [rule for rule in exc.rules if rule != _PROOFPACK_RULE]
        if others:
            try:
                build_proofpack(evidence, model, version, now, rules.policy.hash(), rules.policy.policy_id)
            except PolicyViolation as missing:
                others += missing.rules
            raise PolicyViolation(f"{model}@{version} STAGING -> PRODUCTION refused: " + "; ".join(others),
                                  others) from None
    pack = build_proofpack(evidence, model, version, now, rules.policy.hash(), rules.policy.policy_id)
    signed = sign_proofpack(pack, rules.signer, now)
    recorded = ProofPackRecorded(event_id=new_id(), at=now, actor=move.actor, model=model, version=version,
                                 proofpack_id=pack.proofpack_id)
    moved = decide(state, rules, move, event_id=new_id(), now=now, registry=apply(registry, recorded))
    return [recorded, moved], signed


def attempt_promotion(state: GovernanceState, rules: Rules, model: str, version: str, target: Stage, reason: str, *,
                      now: datetime, new_id: Callable[[], str], cause: str, registry: Registry | None = None,
                      ) -> tuple[list[Event], dict[str, Any] | None, list[str], Retry | None]:
    """An automatic promotion of ``model@version`` to ``target`` (STAGING or PRODUCTION) by ALEX_AUTOMATED.

    Returns ``(facts, signed ProofPack or None, blocked rules, retry)``: the facts when every rule passes; else
    the rules, and a :class:`Retry` at the earliest time they all pass when only time blocks the move (the
    same decision taken at that time, on the same evidence, succeeds).
    """
    registry = state.registry if registry is None else registry
    move = MoveRequest(model, version, target, AUTOMATED, reason)
    try:
        if target is Stage.PRODUCTION:
            facts, pack = promote_to_production(state, rules, move, now=now, new_id=new_id, registry=registry)
            return facts, pack, [], None
        return [decide(state, rules, move, event_id=new_id(), now=now, registry=registry)], None, [], None
    except PolicyViolation as exc:
        blocked = exc.rules
    record = registry.get(model, version)
    times = [record.entered_stage_at + min_durations(rules.policy, record.model_type)[record.stage],
             *(until for _, until in record.held_escalations(now))]
    due = max(times)
    if due <= now:
        return [], None, blocked, None
    try:
        if target is Stage.PRODUCTION:
            promote_to_production(state, rules, move, now=due, new_id=_dry_run_ids(), registry=registry)
        else:
            decide(state, rules, move, event_id="dry-run", now=due, registry=registry)
    except PolicyViolation:
        return [], None, blocked, None  # something other than time blocks it too: the next input decides
    return [], None, blocked, Retry(model=model, version=version, stage=record.stage.value, due_at=due, cause=cause)


def _dry_run_ids() -> Callable[[], str]:
    """Fact ids ``dry-run#0``, ``#1``, ... for a decision taken only to see whether it would pass."""
    counter = itertools.count()
    return lambda: f"dry-run#{next(counter)}"
