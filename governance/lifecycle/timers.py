"""The governance consumer's timers, pure: what is due at ``now`` without any input arriving.

Two kinds of timer live in :class:`~governance.lifecycle.state.GovernanceState` (folded from the audit log, so
a restart or a rebuild knows them):

=====================  ==========================================================================================
timer                  when it acts, and what it writes (``input.kind == "system"``, ``input.id`` the timer's key)
=====================  ==========================================================================================
scheduled rollback     spec 8.1 "Alert + scheduled rollback" (calibration drift). At ``due_at``: the rollback,
(``scheduled``)        planned on the state of that moment and executed like an immediate one (COMPLETED, or
                       FAILED and paged); the record keeps ``action: scheduled``. As soon as the version no
                       longer serves (a new, recalibrated version replaced it; a rollback retired it; a canary
                       left STAGING), a CANCELLED record; GID-08's ``cancel_rollback`` command cancels it too
promotion retry        an automatic promotion (a READY gate, ALEX's approval) that only time blocked (a minimum
(``retries``)          duration, an escalation's ``blocks_until``). At ``due_at``: the same promotion tried
                       again on the latest evidence; it promotes, or records what blocks it now
=====================  ==========================================================================================

:func:`next_due` returns one plan at a time: the consumer commits it and asks again, so each plan is decided
on the state its predecessor left (two timers of one version never act on a stale view).

Guarantees: pure and deterministic in ``(state, now)``; fact ids are ``<timer key>@<due_at>#n``, so a timer
that fires twice (a crash between the commit and the fold cannot happen, but a replay can) yields the same
facts, which the registry applies once.
"""

from __future__ import annotations

from datetime import datetime

from governance.contract.stages import Stage
from governance.lifecycle.audit import EntryBody, RollbackRecord, system_input
from governance.lifecycle.handler import Plan, rollback_plan
from governance.lifecycle.promotion import AUTOMATED, MoveRequest, Rules, attempt_promotion
from governance.lifecycle.state import RETRY, SCHEDULED_ROLLBACK, GovernanceState

__all__ = ["next_due"]


class _Ids:
    def __init__(self, prefix: str) -> None:
        self.prefix, self.count = prefix, 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.prefix}#{self.count - 1}"


def _still_serving(state: GovernanceState, pending: RollbackRecord) -> str | None:
    """None while the version a scheduled rollback is for still serves; else why it no longer does."""
    line = state.registry.models.get(pending.model)
    record = line.versions.get(pending.from_version) if line is not None else None
    if line is None or record is None:
        return f"{pending.model}@{pending.from_version} is not registered"
    if record.stage is Stage.RETIRED:
        return f"{pending.model}@{pending.from_version} is already RETIRED"
    if line.production == pending.from_version or record.stage is Stage.STAGING:
        return None
    return (
        f"{pending.model}@{pending.from_version} no longer serves: {line.production or 'no version'} serves "
        f"{pending.model} now (recalibrated)"
    )


def _cancelled(pending: RollbackRecord, why: str, now: datetime) -> RollbackRecord:
    return RollbackRecord.model_validate(
        {
            **pending.model_dump(),
            "status": "CANCELLED",
            "started_at": now,
            "finished_at": now,
            "error": None,
            "routing_offset": None,
            "steps": [f"scheduled rollback cancelled before it was due: {why}"],
        }
    )


def next_due(state: GovernanceState, rules: Rules, topic: str, now: datetime) -> Plan | None:
    """The first timer due at ``now`` (cancellations first, then by due time), as a plan; None when none is."""
    return (_cancellation(state, topic, now) or _scheduled_rollback(state, topic, now)
            or _retry(state, rules, topic, now))


def _by_due(state: GovernanceState, now: datetime) -> list[tuple[str, RollbackRecord]]:
    return sorted(state.scheduled.items(), key=lambda item: (item[1].due_at or now, item[0]))


def _cancellation(state: GovernanceState, topic: str, now: datetime) -> Plan | None:
    """A scheduled rollback whose version no longer serves (recalibrated, replaced): cancelled."""
    for key, pending in _by_due(state, now):
        why = _still_serving(state, pending)
        if why is not None:
            source = system_input(topic, SCHEDULED_ROLLBACK, AUTOMATED, id=key)
            return Plan(EntryBody(at=now, input=source, outcome="recorded", rollback=_cancelled(pending, why, now)))
    return None


def _scheduled_rollback(state: GovernanceState, topic: str, now: datetime) -> Plan | None:
    """The first scheduled rollback whose time has come, carried out."""
    for key, pending in _by_due(state, now):
        if pending.due_at is None or pending.due_at > now:
            continue
        source = system_input(topic, SCHEDULED_ROLLBACK, AUTOMATED, id=key)
        line = state.registry.models[pending.model]
        serving = line.production == pending.from_version
        restore = pending.to_version if serving and pending.to_version != pending.from_version else None
        if restore is not None and restore not in line.previous_production:
            restore = None  # the target named then is gone: the most recent previous version now
        move = MoveRequest(pending.model, pending.from_version, Stage.RETIRED, AUTOMATED, pending.reason,
                           rollback=True, restore_version=restore)  # fmt: skip
        return rollback_plan(
            state,
            source,
            move,
            trigger=f"scheduled at {pending.started_at.isoformat()}: {pending.trigger}",
            now=now,
            new_id=_Ids(f"{key}@{pending.due_at.isoformat()}"),
            action="scheduled",
            due_at=pending.due_at,
            run_now=True,
        )
    return None


def _retry(state: GovernanceState, rules: Rules, topic: str, now: datetime) -> Plan | None:
    """The first promotion blocked only by time whose time has come, tried again."""
    for key, retry in sorted(state.retries.items(), key=lambda item: (item[1].due_at, item[0])):
        if retry.due_at > now:
            continue
        source = system_input(topic, RETRY, AUTOMATED, id=key)
        target = Stage.STAGING if retry.stage == Stage.SHADOW else Stage.PRODUCTION
        facts, pack, blocked, again = attempt_promotion(
            state,
            rules,
            retry.model,
            retry.version,
            target,
            f"retried at {retry.due_at.isoformat()}, when only time blocked it ({retry.cause})",
            now=now,
            new_id=_Ids(f"{key}@{retry.due_at.isoformat()}"),
            cause=retry.cause,
        )
        return Plan(
            EntryBody(at=now, input=source, outcome="recorded" if blocked else "applied", facts=facts,
                      proofpack=pack, blocked=blocked, retry=again)  # fmt: skip
        )
    return None
