"""Issue 14 point 5 and handler defects (a), (c)-(e), (g): the handler and the consumer's timers, without servers.

Timers (:mod:`governance.lifecycle.timers`) are asked with an explicit ``now``, so nothing here waits: a scheduled
rollback is carried out at its ``due_at`` (spec 8.1), cancelled by GID-08's signed override or when its version
stops serving; an automatic promotion blocked only by time is tried again when that time comes. Harness:
tests/handler_kit.py (real ML-DSA-65 keys, entries sealed and folded as the consumer does).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from governance.contract.stages import Stage
from governance.lifecycle.audit import Rejection, system_input
from governance.lifecycle.commands import Approve, CancelRollback, Escalate, Register, Resolve
from governance.lifecycle.state import RETRY, SCHEDULED_ROLLBACK
from governance.lifecycle.timers import next_due
from tests.handler_kit import (
    AUTOMATED,
    DAY,
    HOUR,
    MODEL,
    NEW,
    OLD,
    OTHER,
    PASS,
    Run,
    at_,
    escalation,
    gate_ready,
    history,
    journey,
    key,
    moved,
    refusal,
    review,
    rollback_trigger,
)

LOG = "governance.lifecycle"
SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
def worlds() -> dict[str, Run]:
    return history(*key())


@pytest.fixture
def world(worlds: dict[str, Run], request: pytest.FixtureRequest) -> Run:
    return worlds[request.param].fork()


def _schedule(run: Run, version: str, now: datetime) -> None:
    trigger = rollback_trigger(f"calibration-{version}", now, version, None, "scheduled", "calibration_slope",
                               "calibration slope 0.52 < 0.6")
    run.roll_back(run.decide(run.event(trigger), now), now)


# ------------------------------------------------------------------------------------- scheduled rollback


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
def test_a_scheduled_rollback_is_carried_out_when_due_and_not_before(world: Run) -> None:
    now = at_(world) + HOUR
    _schedule(world, NEW, now)
    due = now + timedelta(seconds=world.rules.policy.lifecycle.scheduled_rollback_after_s)
    assert world.state.scheduled[f"{MODEL}/{NEW}"].due_at == due == now + DAY  # the shipped policy: one day
    assert next_due(world.state, world.rules, LOG, due - SECOND) is None  # before: never executed at all
    plan = next_due(world.state, world.rules, LOG, due)
    assert plan is not None and plan.rollback is not None
    assert plan.body.input == system_input(LOG, SCHEDULED_ROLLBACK, AUTOMATED, id=f"{MODEL}/{NEW}")
    assert (plan.rollback.action, plan.rollback.run_now, plan.rollback.to_version) == ("scheduled", True, OLD)
    body = world.roll_back(plan, due)
    assert body.rollback is not None and (body.rollback.status, body.rollback.action) == ("COMPLETED", "scheduled")
    assert body.facts == [moved(f"{MODEL}/{NEW}@{due.isoformat()}#0", due, AUTOMATED, Stage.PRODUCTION, Stage.RETIRED,
                                "calibration slope 0.52 < 0.6", rollback=True, restored=OLD)]
    assert (world.line.production, world.record().stage) == (OLD, Stage.RETIRED)
    assert world.state.scheduled == {} and next_due(world.state, world.rules, LOG, due + DAY) is None


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
def test_gid08_overrides_a_scheduled_rollback_with_a_signed_decision(world: Run) -> None:
    now = at_(world) + HOUR
    _schedule(world, NEW, now)
    rule = "[8.1] only ALEX (GID-08) may override a scheduled rollback, not GID-02"
    body = world.step(world.command(CancelRollback, "cancel-ml", "GID-02", now, reason="recalibrated offline"), now)
    assert body.rejection == refusal(rule, rule)
    body = world.step(world.command(CancelRollback, "cancel", "GID-08", now + HOUR, reason="slope back to 0.97"),
                      now + HOUR)
    assert body.outcome == "recorded" and body.rollback is not None and body.rollback.status == "CANCELLED"
    assert "overridden by GID-08 (command cancel): slope back to 0.97" in body.rollback.steps[0]
    assert world.state.scheduled == {}
    assert next_due(world.state, world.rules, LOG, now + 2 * DAY) is None and world.line.production == NEW
    rule = f"[8.1] {MODEL}@{NEW} has no scheduled rollback pending; nothing to cancel"
    body = world.step(world.command(CancelRollback, "cancel-2", "GID-08", now + HOUR, reason="again"), now + HOUR)
    assert body.rejection == refusal(rule, rule)


@pytest.mark.parametrize("world", ["new STAGING ready"], indirect=True)
def test_a_scheduled_rollback_is_cancelled_once_a_recalibrated_version_replaces_it(world: Run) -> None:
    now = at_(world) + 3 * DAY
    _schedule(world, OLD, now)
    world.ok(world.command(Approve, "ok-production", "GID-08", now, target=Stage.PRODUCTION), now)  # NEW serves
    plan = next_due(world.state, world.rules, LOG, now + HOUR)  # well before it was due
    assert plan is not None and plan.rollback is None and plan.body.rollback is not None
    assert plan.body.rollback.status == "CANCELLED"
    assert plan.body.rollback.steps == [f"scheduled rollback cancelled before it was due: {MODEL}@{OLD} no longer "
                                        f"serves: {NEW} serves {MODEL} now (recalibrated)"]
    world.commit(plan.body)
    assert world.state.scheduled == {} and world.line.production == NEW and world.line.previous_production == [OLD]


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
def test_a_second_scheduled_trigger_does_not_move_the_due_time(world: Run) -> None:
    now = at_(world) + HOUR
    _schedule(world, NEW, now)
    trigger = rollback_trigger("calibration-again", now + HOUR, NEW, None, "scheduled", "calibration_slope", "again")
    body = world.step(world.event(trigger), now + HOUR)
    assert body.outcome == "recorded" and body.blocked[0].startswith(
        f"a rollback of {MODEL}@{NEW} is already scheduled for {(now + DAY).isoformat()}")
    assert world.state.scheduled[f"{MODEL}/{NEW}"].due_at == now + DAY


# ------------------------------------------------------------------------------------- retries (defect g)


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_a_promotion_blocked_only_by_time_is_retried_when_its_time_comes(world: Run) -> None:
    entered = at_(world)
    review(world, NEW, entered + HOUR)
    ready = gate_ready("early-ready", "SHADOW", entered + 6 * DAY)
    world.step(world.event(ready), entered + 6 * DAY)
    due = entered + 7 * DAY
    assert world.state.retries[f"{MODEL}/{NEW}/SHADOW"].due_at == due
    assert next_due(world.state, world.rules, LOG, due - SECOND) is None
    plan = next_due(world.state, world.rules, LOG, due)
    assert plan is not None and plan.body.input == system_input(LOG, RETRY, AUTOMATED, id=f"{MODEL}/{NEW}/SHADOW")
    world.commit(plan.body)
    assert (world.record().stage, at_(world)) == (Stage.STAGING, due)  # before: waited for another event
    assert world.state.retries == {}


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_a_retry_that_meets_another_block_records_it_and_stops(world: Run) -> None:
    entered = at_(world)
    review(world, NEW, entered + HOUR)
    world.step(world.event(gate_ready("early-ready", "SHADOW", entered + 6 * DAY)), entered + 6 * DAY)
    world.ok(world.command(Escalate, "esc", "GID-08", entered + 6 * DAY + HOUR, escalation_id="E-1",
                           reason="bias review"), entered + 6 * DAY + HOUR)
    plan = next_due(world.state, world.rules, LOG, entered + 7 * DAY)
    assert plan is not None and plan.body.outcome == "recorded" and plan.body.retry is None
    assert plan.body.blocked == ["[escalation] open escalation(s) ['E-1'] block promotion; resolve them first"]
    world.commit(plan.body)
    assert world.state.retries == {} and world.record().stage is Stage.SHADOW


# ------------------------------------------------------------------------------------- defects (a), (c)-(e)


@pytest.mark.parametrize("world", ["new PROPOSAL"], indirect=True)
def test_a_duplicate_that_got_past_intake_is_not_applied_twice(world: Run) -> None:
    received = world.command(Register, "reg-again", "GID-02", at_(world), OTHER, model_type="ranking")
    world.ok(received, at_(world))
    before = world.state
    for state in (before, before.model_copy(update={"seen": {}})):  # known by id, or only by its applied facts
        world.state = state
        body = world.decide(received, at_(world) + HOUR).body
        assert body.outcome == "rejected" and body.facts == [] and body.rejection is not None
        assert body.rejection.reason == "replayed" and "it is not applied twice" in body.rejection.message
    world.state = before


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_an_escalation_event_blocks_until_blocks_until_even_when_resolved(world: Run) -> None:
    entered = at_(world)
    until = entered + 9 * DAY
    event = escalation("esc-until", entered + DAY, NEW, "integrity violations under review", until)
    world.ok(world.event(event), entered + DAY)
    review(world, NEW, entered + DAY)
    world.ok(world.command(Resolve, "res", "GID-08", entered + 2 * DAY, escalation_id=str(event.event_id),
                           resolution="reviewed"), entered + 2 * DAY)
    now = entered + 7 * DAY
    body = world.step(world.event(gate_ready("ready", "SHADOW", now)), now)
    # Before: resolving it lifted the block at once and blocks_until was ignored.
    assert body.blocked == ["[escalation] resolved escalation(s) still block promotion until their blocks_until: "
                            f"{event.event_id} until {until.isoformat()}"]
    assert body.retry is not None and body.retry.due_at == until
    plan = next_due(world.state, world.rules, LOG, until)
    assert plan is not None and plan.body.outcome == "applied"
    world.commit(plan.body)
    assert world.record().stage is Stage.STAGING


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_a_gate_judged_under_another_policy_is_refused_with_its_reason(world: Run) -> None:
    now = at_(world) + 7 * DAY
    review(world, NEW, now)
    ready = gate_ready("other-policy", "SHADOW", now, policy_hash="ab" * 32)
    body = world.step(world.event(ready), now)
    policy = world.rules.policy
    rule = (f"[policy] GateReady {ready.event_id} was judged under policy hash {'ab' * 32}, not the consumer's "
            f"{policy.policy_id} {policy.version} (hash {policy.hash()}): run the worker and the consumer on the "
            "same policy file")
    assert body.rejection == Rejection(reason="refused", message=rule, rules=[rule])
    assert world.record().stage is Stage.SHADOW and "SHADOW" not in world.state.verdicts[MODEL].get(NEW, {})


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
def test_a_gate_against_a_production_version_that_no_longer_serves_does_not_promote(world: Run) -> None:
    entered = journey(world, OTHER, at_(world) + HOUR, Stage.SHADOW)
    now = entered + 7 * DAY
    review(world, OTHER, now)
    stale = gate_ready("against-old", "SHADOW", now, OTHER, production=OLD)  # OLD was replaced by NEW
    body = world.step(world.event(stale), now)
    assert (body.outcome, body.facts) == ("recorded", [])
    assert body.gate is not None and body.gate.counts is False
    assert body.blocked == [f"gate shadow_completion compared {OTHER} with production {OLD}, but {NEW} serves {MODEL} "
                            "now: recorded, not a verdict"]
    assert world.record(OTHER).stage is Stage.SHADOW and OTHER not in world.state.verdicts[MODEL]
    fresh = gate_ready("against-new", "SHADOW", now, OTHER, production=NEW)
    body = world.step(world.event(fresh), now)
    assert body.facts == [moved(f"{fresh.event_id}#0", now, AUTOMATED, Stage.SHADOW, Stage.STAGING,
                                f"shadow_completion READY (GateReady {fresh.event_id})", version=OTHER,
                                approvals=("GID-08",), shadow=PASS)]
