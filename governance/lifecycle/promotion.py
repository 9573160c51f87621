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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from governance.contract.stages import Stage
from governance.errors import PolicyViolation
from governance.lifecycle.ledger import Transitioned
from governance.lifecycle.machine import Assessment, LifecycleState, TransitionRequest, spec_min_durations, transition
from governance.lifecycle.registry import ModelLine, ModelVersion, Registry

__all__ = ["MoveRequest", "decide_transition"]


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
