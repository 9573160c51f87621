"""The model lifecycle state machine of spec section 1, with the stage gates of section 7.1.

The only moves a model version can make (:data:`ALLOWED_TRANSITIONS`)::

    PROPOSAL -> PROTOTYPE -> TRAINING -> SHADOW -> STAGING -> PRODUCTION     forward, gated
                                         SHADOW -> RETIRED                     rollback of a shadow
                                                   STAGING -> RETIRED          rollback of a canary
                                                              PRODUCTION -> RETIRED
                                                              (rollback or decommission; the registry
                                                              restores the previous production version)

Anything else (a skip, a step back, a self-loop, leaving RETIRED, retiring before SHADOW) is refused.

A forward move must satisfy, all at once (each broken rule is named, tagged with its spec section):

* the minimum duration of the stage being left (spec 1.2; for SHADOW by model type, spec 3.1);
* no open escalation on the version (an escalation blocks promotion);
* the documentation of the stage being left is complete (spec 9, see :mod:`governance.lifecycle.documents`);
* the gate of the target stage (spec 7.1):

  ============  ==================================================================================
  target        gate
  ============  ==================================================================================
  PROTOTYPE     proposal document; GID-02 (Maggie) approval
  TRAINING      metrics baseline established (the PROTOTYPE document ``baseline_metrics``)
  SHADOW        training approved by GID-02 (Maggie, spec 1.2 "Training approved"); metadata complete and
                valid (spec 4.2); training-data hash; glass-box model type; feature-catalog linkage validated
                and passing (spec 5.2)
  STAGING       the shadow completion checklist verdict (spec 3.2); ALEX's (GID-08) shadow review (spec
                9.2 ``alex_review: required``) unless the policy turns it off
  PRODUCTION    the staging gate verdict (spec 2.1); GID-08 (ALEX) approval; an existing ProofPack,
                matching the metadata's proof_pack_id; PRODUCTION documentation (runbook, rollback
                procedure, on-call contacts) complete before serving traffic
  ============  ==================================================================================

A move into RETIRED needs a reason, and a retirement that is not a rollback also needs RETIRED's documents
(spec 9.1: retirement justification, migration notes). A rollback (spec 8.2) never waits for a minimum
duration, paperwork or an escalation to clear: its RETIRED documents are owed afterwards.

Gate verdicts computed elsewhere (the shadow checklist and staging gate of ``governance.policy.gates``, the
feature linkage of :mod:`governance.policy.catalog`) come in as :class:`Assessment`; a verdict that was not
computed (``None``) blocks, it never passes.

Guarantees: :func:`transition` is pure and deterministic: no clock (``now`` is passed in), no I/O; it
returns a new state or raises :class:`PolicyViolation` whose ``rules`` lists every rule broken, in the
order gate, duration, escalations, documentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, StrictBool, model_validator

from governance.contract.stages import MODEL_TYPES, ModelType, Stage
from governance.errors import ConfigError, EventValidationError, PolicyViolation
from governance.lifecycle.documents import find_gaps
from governance.lifecycle.metadata import ALLOWED_MODEL_TYPES, validate_model_metadata

__all__ = [
    "ALLOWED_TRANSITIONS",
    "APPROVER_GOVERNANCE",
    "APPROVER_ML",
    "APPROVER_SHADOW_REVIEW",
    "APPROVER_TRAINING",
    "FORWARD",
    "SPEC_MIN_DURATION",
    "SPEC_SHADOW_MIN_DURATION",
    "LifecycleState",
    "TransitionRequest",
    "Assessment",
    "spec_min_durations",
    "transition",
]


FORWARD: tuple[Stage, ...] = (
    Stage.PROPOSAL,
    Stage.PROTOTYPE,
    Stage.TRAINING,
    Stage.SHADOW,
    Stage.STAGING,
    Stage.PRODUCTION,
)

ALLOWED_TRANSITIONS: Mapping[Stage, frozenset[Stage]] = MappingProxyType(
    {
        Stage.PROPOSAL: frozenset({Stage.PROTOTYPE}),
        Stage.PROTOTYPE: frozenset({Stage.TRAINING}),
        Stage.TRAINING: frozenset({Stage.SHADOW}),
        Stage.SHADOW: frozenset({Stage.STAGING, Stage.RETIRED}),
        Stage.STAGING: frozenset({Stage.PRODUCTION, Stage.RETIRED}),
        Stage.PRODUCTION: frozenset({Stage.RETIRED}),
        Stage.RETIRED: frozenset(),
    }
)

APPROVER_ML = "GID-02"
APPROVER_GOVERNANCE = "GID-08"
# Who approves what (spec 1.2 exit criteria, 7.1, 9.2; the readings are in docs/governance.md).
APPROVER_TRAINING = APPROVER_ML
APPROVER_SHADOW_REVIEW = APPROVER_GOVERNANCE


# Spec 1.2 lower bounds. SHADOW's 7 days is the floor of spec 10.2; use spec_min_durations(model_type) for the
# per-type shadow duration of spec 3.1. PRODUCTION and RETIRED have no forward exit to time.
SPEC_MIN_DURATION: Mapping[Stage, timedelta] = MappingProxyType(
    {
        Stage.PROPOSAL: timedelta(days=1),
        Stage.PROTOTYPE: timedelta(days=3),
        Stage.TRAINING: timedelta(days=2),
        Stage.SHADOW: timedelta(days=7),
        Stage.STAGING: timedelta(days=3),
        Stage.PRODUCTION: timedelta(0),
        Stage.RETIRED: timedelta(0),
    }
)
SPEC_SHADOW_MIN_DURATION: Mapping[ModelType, timedelta] = MappingProxyType(
    {
        "risk_scoring": timedelta(days=14),
        "classification": timedelta(days=7),
        "anomaly_detection": timedelta(days=21),
        "ranking": timedelta(days=14),
    }
)


def spec_min_durations(model_type: ModelType) -> Mapping[Stage, timedelta]:
    """The spec's minimum duration of every stage for a model of ``model_type`` (1.2, with 3.1 for SHADOW)."""
    if model_type not in SPEC_SHADOW_MIN_DURATION:
        raise ConfigError(f"model_type {model_type!r} has no shadow duration; use one of {list(MODEL_TYPES)}")
    return MappingProxyType({**SPEC_MIN_DURATION, Stage.SHADOW: SPEC_SHADOW_MIN_DURATION[model_type]})


class Assessment(BaseModel):
    """A gate's outcome computed elsewhere: passed, or failed with the name of every failure.

    An assessment that contradicts itself (passed with failures, failed without any) is refused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: StrictBool
    failures: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Assessment:
        if self.passed and self.failures:
            raise ValueError(f"verdict says passed but lists failures {list(self.failures)}")
        if not self.passed and not self.failures:
            raise ValueError("verdict says failed but names no failure; list what failed")
        return self


def _require_utc(value: datetime, name: str) -> None:
    if value.utcoffset() != timedelta(0):
        raise EventValidationError(f"{name} {value.isoformat()} must be timezone-aware UTC", field=name)


@dataclass(frozen=True)
class LifecycleState:
    """Where one model version is: its stage and when it entered it (aware UTC)."""

    stage: Stage
    entered_stage_at: datetime

    def __post_init__(self) -> None:
        _require_utc(self.entered_stage_at, "entered_stage_at")


@dataclass(frozen=True)
class TransitionRequest:
    """A request to move a version to ``target``, with the evidence its gates judge.

    ``approvals`` are the approver ids that approved this version's move to ``target``;
    ``documents`` maps stage to {document name: Markdown}; ``proofpack_id`` is the ProofPack
    recorded for the version (None when none exists). ``open_escalations`` are unresolved,
    ``held_escalations`` resolved ones whose ``until`` is still ahead (id, until). ``rollback`` marks a
    rollback (spec 8.2), which retires without paperwork; ``shadow_review_required`` is the policy's
    ``lifecycle.shadow_review_required``.
    """

    target: Stage
    reason: str = ""
    approvals: frozenset[str] = frozenset()
    open_escalations: tuple[str, ...] = ()
    held_escalations: tuple[tuple[str, datetime], ...] = ()
    rollback: bool = False
    shadow_review_required: bool = True
    documents: Mapping[Stage, Mapping[str, str]] = field(default_factory=dict)
    metadata: Mapping[str, object] | None = None
    feature_linkage: Assessment | None = None
    shadow_checklist: Assessment | None = None
    staging_gate: Assessment | None = None
    proofpack_id: str | None = None


def _documentation(stage: Stage, request: TransitionRequest, covered: frozenset[str] = frozenset()) -> list[str]:
    gaps = find_gaps(stage, request.documents.get(stage, {}))
    # A whole document a gate already names (the proposal, the baseline) is not reported twice.
    return [
        f"[9] {gap.message()}"
        for gap in gaps
        if not (gap.section is None and gap.problem == "missing" and gap.document in covered)
    ]


def _has_document(request: TransitionRequest, stage: Stage, name: str) -> bool:
    return bool(request.documents.get(stage, {}).get(name, "").strip())


def _gate_prototype(request: TransitionRequest) -> list[str]:
    rules = []
    if not _has_document(request, Stage.PROPOSAL, "proposal"):
        rules.append("[7.1] Model proposal document required: record the PROPOSAL document 'proposal'")
    if APPROVER_ML not in request.approvals:
        rules.append(f"[7.1] Maggie ({APPROVER_ML}) approval required for PROTOTYPE")
    return rules


def _gate_training(request: TransitionRequest) -> list[str]:
    if _has_document(request, Stage.PROTOTYPE, "baseline_metrics"):
        return []
    return ["[1.2] Metrics baseline required: record the PROTOTYPE document 'baseline_metrics'"]


def _gate_shadow(request: TransitionRequest) -> list[str]:
    metadata: Mapping[str, object] = request.metadata or {}
    rules = []
    if APPROVER_TRAINING not in request.approvals:
        rules.append(f"[1.2] Training approval required: Maggie ({APPROVER_TRAINING}) approves the training run "
                     "(approve the move to SHADOW while in TRAINING)")
    _, violations = validate_model_metadata(metadata)
    rules += [f"[4.2] {violation}" for violation in violations]
    if not metadata.get("training_data_hash"):
        rules.append("[7.1] Training data hash required")
    if metadata.get("model_type") not in ALLOWED_MODEL_TYPES:
        rules.append("[7.1] Model type must be glass-box (EBM/GAM/LogReg)")
    if request.feature_linkage is None:
        rules.append("[5.2] Feature catalog linkage not validated: check the features against the catalog")
    else:
        rules += [f"[5.2] {failure}" for failure in request.feature_linkage.failures]
    return rules


def _gate_staging(request: TransitionRequest) -> list[str]:
    if request.shadow_checklist is None:
        rules = ["[3.2] Shadow completion checklist not evaluated: no verdict, so no promotion"]
    elif request.shadow_checklist.passed:
        rules = []
    else:
        rules = [f"[7.1] Shadow completion failed: {list(request.shadow_checklist.failures)}"]
    if request.shadow_review_required and APPROVER_SHADOW_REVIEW not in request.approvals:
        rules.append(f"[9.2] ALEX ({APPROVER_SHADOW_REVIEW}) shadow review required: ALEX approves the move to "
                     "STAGING while in SHADOW")
    return rules


def _gate_production(request: TransitionRequest) -> list[str]:
    rules = []
    if request.staging_gate is None:
        rules.append("[2.1] Staging gate not evaluated: no verdict, so no promotion")
    else:
        rules += [f"[2.1] {failure}" for failure in request.staging_gate.failures]
    if APPROVER_GOVERNANCE not in request.approvals:
        rules.append(f"[7.1] ALEX ({APPROVER_GOVERNANCE}) production approval required")
    if not request.proofpack_id:
        rules.append("[7.1] ProofPack artifact required")
    else:
        expected = (request.metadata or {}).get("proof_pack_id")
        if expected is not None and expected != request.proofpack_id:
            rules.append(
                f"[4] ProofPack {request.proofpack_id!r} is not the metadata's proof_pack_id {expected!r}; "
                "record the ProofPack the metadata names"
            )
    rules += _documentation(Stage.PRODUCTION, request)
    return rules


_GATES = {
    Stage.PROTOTYPE: (_gate_prototype, frozenset({"proposal"})),
    Stage.TRAINING: (_gate_training, frozenset({"baseline_metrics"})),
    Stage.SHADOW: (_gate_shadow, frozenset[str]()),
    Stage.STAGING: (_gate_staging, frozenset[str]()),
    Stage.PRODUCTION: (_gate_production, frozenset[str]()),
}


def _duration(state: LifecycleState, now: datetime, min_duration: Mapping[Stage, timedelta]) -> list[str]:
    if state.stage not in min_duration:
        raise ConfigError(f"min_duration has no entry for {state.stage}; give every stage a duration")
    required = min_duration[state.stage]
    elapsed = now - state.entered_stage_at
    if elapsed >= required:
        return []
    earliest = (state.entered_stage_at + required).isoformat()
    return [
        f"[1.2] minimum duration in {state.stage} not met: {elapsed} elapsed of {required}; "
        f"the earliest exit is {earliest}"
    ]


def transition(
    state: LifecycleState,
    request: TransitionRequest,
    now: datetime,
    *,
    min_duration: Mapping[Stage, timedelta] = SPEC_MIN_DURATION,
) -> LifecycleState:
    """The state after moving ``state`` to ``request.target`` at ``now``, or :class:`PolicyViolation`.

    ``min_duration`` maps each stage to the least time a version must spend in it (the policy's
    values; defaults to the spec's, with SHADOW at its 7-day floor). A stage missing from it raises
    :class:`ConfigError` (fail closed). The new state entered ``request.target`` at ``now``.
    """
    _require_utc(now, "now")
    source, target = state.stage, request.target
    if target not in ALLOWED_TRANSITIONS[source]:
        allowed = ", ".join(s for s in Stage if s in ALLOWED_TRANSITIONS[source]) or "none, RETIRED is final"
        rule = f"[1.1] transition {source} -> {target} is not allowed; allowed from {source}: {allowed}"
        raise PolicyViolation(f"{source} -> {target} refused: {rule}", [rule])
    if target is Stage.RETIRED:
        rules = [] if request.reason.strip() else ["[8.2] a rollback or retirement needs a reason"]
        if not request.rollback:
            rules += _documentation(Stage.RETIRED, request)
    else:
        gate, covered = _GATES[target]
        rules = gate(request)
        rules += _duration(state, now, min_duration)
        if request.open_escalations:
            rules.append(
                f"[escalation] open escalation(s) {list(request.open_escalations)} block promotion; resolve them first"
            )
        if request.held_escalations:
            held = ", ".join(f"{escalation} until {until.isoformat()}"
                             for escalation, until in request.held_escalations)
            rules.append(f"[escalation] resolved escalation(s) still block promotion until their blocks_until: {held}")
        rules += _documentation(source, request, covered)
    if rules:
        raise PolicyViolation(f"{source} -> {target} refused, {len(rules)} rule(s) broken: " + "; ".join(rules), rules)
    return LifecycleState(stage=target, entered_stage_at=now)
