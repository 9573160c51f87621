"""Status of every model version: stage, time in stage, serving role, and what blocks its next step.

:func:`status` is what ``shadowgate model status`` prints. For a version that can still move forward it
runs the same decision the consumer would make (:func:`governance.lifecycle.promotion.decide_transition` of a
:class:`~governance.lifecycle.promotion.MoveRequest` with the recorded gate verdicts and the policy's
minimum durations) without changing anything, and lists every rule that would refuse the move. For
STAGING -> PRODUCTION the missing ProofPack is not a blocker when it can be generated (the consumer
generates it on promotion); what it needs (the metadata's ``proof_pack_id``, an artifact digest) is. The
policy's ``lifecycle.shadow_review_required`` and the artifact signature rule (spec 6.3, judged on the
manifest recorded, which the consumer verified when it was recorded) count as they do for the consumer.

A version's pending scheduled rollback (spec 8.1) is shown with its due time, and a promotion the consumer
will retry by itself (only time blocks it) with the time of the retry.

Guarantees: pure (``now`` is passed in); versions sorted by model, then registration order.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from governance.contract.stages import Stage
from governance.errors import PolicyViolation
from governance.lifecycle.artifacts import artifact_rules
from governance.lifecycle.promotion import MoveRequest, decide_transition, min_durations, next_stage
from governance.lifecycle.proofpack import build_proofpack
from governance.lifecycle.state import GovernanceState, as_verdict, latest_gate, version_key
from governance.policy.document import Policy

__all__ = ["PendingRollback", "VersionStatus", "blockers", "gate_figures", "status"]

_PROOFPACK_RULE = "[7.1] ProofPack artifact required"


class PendingRollback(BaseModel):
    """A scheduled rollback waiting for its time (spec 8.1): carried out at ``due_at`` unless cancelled first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    due_at: datetime
    trigger: str
    reason: str
    to_version: str | None
    error: str | None = None  # what its plan already found wrong (it will fail and page unless fixed)


class VersionStatus(BaseModel):
    """One row of ``shadowgate model status``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    version: str
    stage: Stage
    entered_stage_at: datetime
    time_in_stage_s: float
    role: str
    next_stage: Stage | None
    blocked_by: list[str]
    open_escalations: list[str]
    proofpack_id: str | None
    scheduled_rollback: PendingRollback | None = None
    retry_at: datetime | None = None

    @property
    def time_in_stage(self) -> str:
        """``3d 04:12`` style, for people."""
        total = timedelta(seconds=int(self.time_in_stage_s))
        hours, rest = divmod(total.seconds, 3600)
        return f"{total.days}d {hours:02d}:{rest // 60:02d}"


def blockers(state: GovernanceState, policy: Policy, model: str, version: str, now: datetime) -> list[str]:
    """Every rule that would refuse moving ``model@version`` to its next stage now ([] when it may move)."""
    record = state.registry.get(model, version)
    target = next_stage(record.stage)
    if target is None:
        return []
    move = MoveRequest(
        model,
        version,
        target,
        shadow_checklist=as_verdict(latest_gate(state, model, version, Stage.SHADOW)),
        staging_gate=as_verdict(latest_gate(state, model, version, Stage.STAGING)),
        min_duration=min_durations(policy, record.model_type),
        shadow_review_required=policy.lifecycle.shadow_review_required,
        extra_rules=tuple(artifact_rules(record, None, now, None)) if target in (Stage.STAGING, Stage.PRODUCTION)
        else (),
    )
    try:
        decide_transition(state.registry, move, event_id="status", now=now)
    except PolicyViolation as exc:
        rules = exc.rules
    else:
        return []
    if target is Stage.PRODUCTION and _PROOFPACK_RULE in rules:
        rules = [rule for rule in rules if rule != _PROOFPACK_RULE]
        try:
            build_proofpack(state, model, version, now, policy.hash(), policy.policy_id)
        except PolicyViolation as missing:
            rules += missing.rules
    return rules


def _role(state: GovernanceState, model: str, version: str, stage: Stage) -> str:
    line = state.registry.models[model]
    if line.production == version:
        return "serving"
    if version in line.previous_production:
        return "standby (previous production)"
    return {Stage.STAGING: "canary", Stage.SHADOW: "shadow"}.get(stage, "-")


def _pending(state: GovernanceState, model: str, version: str) -> PendingRollback | None:
    record = state.scheduled.get(version_key(model, version))
    if record is None or record.due_at is None:
        return None
    return PendingRollback(due_at=record.due_at, trigger=record.trigger, reason=record.reason,
                           to_version=record.to_version, error=record.error)


def _retry_at(state: GovernanceState, model: str, version: str, stage: Stage) -> datetime | None:
    retry = state.retries.get(f"{model}/{version}/{stage.value}")
    return retry.due_at if retry is not None else None


def status(state: GovernanceState, policy: Policy, now: datetime, model: str | None = None) -> list[VersionStatus]:
    """A row per registered version (of ``model`` only, when given)."""
    rows = []
    for name in sorted(state.registry.models):
        if model is not None and name != model:
            continue
        for version, record in state.registry.models[name].versions.items():
            rows.append(
                VersionStatus(
                    model=name,
                    version=version,
                    stage=record.stage,
                    entered_stage_at=record.entered_stage_at,
                    time_in_stage_s=max(0.0, (now - record.entered_stage_at).total_seconds()),
                    role=_role(state, name, version, record.stage),
                    next_stage=next_stage(record.stage),
                    blocked_by=blockers(state, policy, name, version, now),
                    open_escalations=list(record.open_escalations()),
                    proofpack_id=record.proofpack_id,
                    scheduled_rollback=_pending(state, name, version),
                    retry_at=_retry_at(state, name, version, record.stage),
                )
            )
    return rows


def gate_figures(state: GovernanceState, model: str, version: str, stage: str) -> dict[str, str | None]:
    """When the gate figures behind a version's blockers were taken: the verdict of its stage's latest gate event
    and that event's own time (event time); both None outside SHADOW and STAGING or before the first gate."""
    record = latest_gate(state, model, version, stage) if stage in ("SHADOW", "STAGING") else None
    if record is None:
        return {"gate_verdict": None, "gate_taken_at": None}
    return {"gate_verdict": "READY" if record.passed else "BLOCKED", "gate_taken_at": record.ts.isoformat()}
