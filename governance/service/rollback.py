"""Executing a rollback as spec 8.2 prescribes, with the routing as the switch that serving obeys.

Steps, each noted in the :class:`~governance.service.auditlog.RollbackRecord` of the audit entry:

1. disable the current version: it leaves the model's serving assignment;
2. check the target exists and is valid: a previous production version of the model, still frozen in
   PRODUCTION (for a shadow or canary rollback, the serving production version stays);
3. enable the target: the new assignment (current disabled and target serving, one signed record, so
   scoring services never see a model with nothing to serve) is published to the routing topic;
4. verify the routing: the record is read back from its offset, its signature verified and its content
   compared with what was published;
5. alert: the consumer publishes the outcome on the alerts topic (warning when completed, critical P0
   page "MODEL_ROLLBACK_FAILED" when failed);
6. record: the audit entry carries the record (status COMPLETED, with the Transitioned fact, or FAILED
   with the error and no fact).

Deviation from the spec's listing, on purpose: the target is checked (2) before anything is disabled (1),
because disabling first would leave the model with no serving version when the target is invalid; in
that case the record is FAILED and the current version keeps serving. When publishing or verifying the
routing fails, the previous assignment is republished (best effort) and the record is FAILED.

``manual_review`` triggers (spec 8.1: score distribution shift) are recorded (status MANUAL_REVIEW) and
alerted, not executed: a person runs ``shadowgate model rollback``. ``scheduled`` triggers (calibration
drift) are recorded (status SCHEDULED, with ``due_at``) and alerted; the consumer's timer carries them out
at ``due_at`` (a plan with ``run_now``, executed as above; see :mod:`governance.lifecycle.timers`) unless a
CANCELLED record comes first. A deferred record keeps the error its plan already found (e.g. no previous
production version to restore), so the failure is known before the rollback is due.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from governance.errors import ShadowgateError
from governance.lifecycle.audit import EntryBody, RollbackRecord, RollbackStatus
from governance.lifecycle.handler import RollbackPlan
from governance.lifecycle.identities import Trust
from governance.lifecycle.registry import apply
from governance.lifecycle.routing import Assignment, RoutingPublisher, assignment_for
from governance.lifecycle.state import GovernanceState

__all__ = ["execute_rollback"]

_DEFERRED: dict[str, RollbackStatus] = {"scheduled": "SCHEDULED", "manual_review": "MANUAL_REVIEW"}


def _record(plan: RollbackPlan, status: RollbackStatus, steps: list[str], finished_at: datetime,
            error: str | None = None, offset: int | None = None) -> RollbackRecord:
    return RollbackRecord(
        model=plan.model, from_version=plan.from_version, to_version=plan.to_version, reason=plan.reason,
        initiated_by=plan.initiated_by, trigger=plan.trigger, action=plan.action, status=status, error=error,
        steps=steps, started_at=plan.started_at, finished_at=finished_at, routing_offset=offset, due_at=plan.due_at,
    )


def execute_rollback(
    plan: RollbackPlan,
    body: EntryBody,
    state: GovernanceState,
    canary_share: float,
    routing: RoutingPublisher,
    trust: Trust,
    clock: Callable[[], datetime],
) -> tuple[EntryBody, Assignment | None]:
    """Run ``plan``; returns the entry body to seal and the assignment now on the routing topic (if changed)."""
    if plan.action in _DEFERRED and not plan.run_now:
        if plan.action == "scheduled" and plan.due_at is not None:
            steps = [f"scheduled rollback recorded and alerted: carried out at {plan.due_at.isoformat()} unless "
                     f"{plan.model}@{plan.from_version} is replaced first or GID-08 cancels it "
                     f"(`shadowgate model cancel-rollback {plan.model} {plan.from_version} --reason ...`)"]
        else:
            steps = [f"{plan.action} rollback requested: recorded and alerted; run `shadowgate model rollback "
                     f"{plan.model} {plan.from_version} --reason ...` to execute it"]
        if plan.error is not None:
            steps.append(f"check target {plan.to_version}: FAILED already: {plan.error}")
        record = _record(plan, _DEFERRED[plan.action], steps, clock(), error=plan.error)
        return body.model_copy(update={"outcome": "recorded", "rollback": record}), None
    if plan.fact is None:
        steps = [f"check target {plan.to_version}: FAILED: {plan.error}",
                 f"{plan.from_version} left serving as it was (nothing disabled without a valid target)"]
        record = _record(plan, "FAILED", steps, clock(), error=plan.error)
        return body.model_copy(update={"outcome": "recorded", "rollback": record}), None
    seq = state.seq + 1
    before = assignment_for(state.registry, plan.model, canary_share, seq, plan.started_at)
    after = assignment_for(apply(state.registry, plan.fact), plan.model, canary_share, seq, plan.started_at)
    steps = [
        f"check target: {plan.to_version or 'none'} exists and is valid "
        + ("(previous production, frozen)" if plan.fact.restored_version else "(production keeps serving)"),
        f"disable {plan.from_version}: removed from the serving assignment",
    ]
    offset: int | None = None
    try:
        partition, offset = routing.publish(after, clock())
        steps.append(f"enable {after.production or 'nothing'}: assignment published at "
                     f"{routing.topic}[{partition}]@{offset}")
        now = clock()
        back = routing.read_back(partition, offset, trust.system, now, trust.phase(now))
        if not back.same_routing(after) or back.seq != after.seq:
            raise ShadowgateError(f"routing read back {back.model_dump(mode='json')} differs from what was published")
        steps.append(f"routing verified: production={back.production}, "
                     f"canary={back.canary.version if back.canary else None}, shadow={back.shadow}")
    except ShadowgateError as exc:
        error = f"routing step failed: {exc}"
        try:
            routing.publish(before, clock())
            steps.append("previous assignment republished")
        except ShadowgateError as again:
            steps.append(f"previous assignment could not be republished: {again}")
        record = _record(plan, "FAILED", steps, clock(), error=error, offset=offset)
        return body.model_copy(update={"outcome": "recorded", "rollback": record}), before
    record = _record(plan, "COMPLETED", steps, clock(), offset=offset)
    return body.model_copy(update={"outcome": "applied", "rollback": record, "facts": [plan.fact]}), after
