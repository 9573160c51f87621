"""``governance.lifecycle.handler.handle`` without servers: rollbacks (spec 8), replays and duplicates.

An immediate RollbackTrigger or a rollback command becomes a RollbackPlan, executed here by the real
``execute_rollback`` on an in-memory routing topic; scheduled and manual-review triggers are recorded, not
executed; a replayed input is refused at intake.

Each test hands ``handle`` a verified input (built as intake would), checks the exact audit entry it
produces (outcome, facts in order with their ids ``<input id>#<n>``, gate record, blocked rules, rejection)
and then the state after the entry is sealed with a real ML-DSA-65 key and folded
(``governance.lifecycle.state.fold``), as the consumer does (harness: tests/handler_kit.py).

Expected values come from the spec (1.2 minimum durations and exit criteria, 3.1 shadow duration by model
type, 4.2 metadata, 5.2 feature linkage, 7.1 gates, 8.1 trigger actions, 8.2 rollback, 9 documents) and the
shipped policy, which encodes the spec's tables; the messages are the rule texts the entry must carry.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from governance.contract.kafkaio import Record
from governance.contract.stages import Stage
from governance.crypto.keys import TrustStore
from governance.crypto.signing import Signer
from governance.lifecycle.audit import EntryBody, Rejection
from governance.lifecycle.commands import Approve, Escalate, Rollback, sign_command
from governance.lifecycle.handler import RollbackPlan, rejected
from governance.lifecycle.identities import Trust
from governance.lifecycle.intake import Received, Refused, intake
from tests.handler_kit import (
    AUTOMATED,
    DAY,
    HOUR,
    MODEL,
    NEW,
    OLD,
    OTHER,
    START,
    MemoryRouting,
    Run,
    at_,
    history,
    journey,
    key,
    moved,
    rollback_trigger,
)


@pytest.fixture(scope="module")
def keys() -> tuple[Signer, TrustStore]:
    return key()


@pytest.fixture(scope="module")
def worlds(keys: tuple[Signer, TrustStore]) -> dict[str, Run]:
    return history(*keys)


@pytest.fixture
def world(worlds: dict[str, Run], request: pytest.FixtureRequest) -> Run:
    return worlds[request.param].fork()


# ------------------------------------------------------------------------------------------------ rollback


def _plan(run: Run, received: Received, now: datetime, **expected: Any) -> Any:
    """Handle ``received``; its entry must be the bare input (the rollback's execution fills it in)."""
    plan = run.decide(received, now)
    assert plan.body == EntryBody(at=now, input=received.input, outcome="applied")
    assert plan.rollback == RollbackPlan(started_at=now, model=MODEL, **expected)
    return plan


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
def test_rollback_trigger_restores_the_previous_production_version(world: Run) -> None:
    now = at_(world) + HOUR
    trigger = rollback_trigger("error-spike", now, NEW, OLD)  # spec 8.1: error rate > 1 % for 5 min: immediate
    eid = str(trigger.event_id)
    reason = "error rate 3.1 % > 1 % for 5 min"
    fact = moved(f"{eid}#0", now, AUTOMATED, Stage.PRODUCTION, Stage.RETIRED, reason, rollback=True, restored=OLD)
    plan = _plan(world, world.event(trigger), now, from_version=NEW, to_version=OLD, reason=reason,
                 initiated_by=AUTOMATED, trigger=f"error_rate (RollbackTrigger {eid})", fact=fact, error=None,
                 action="immediate")
    routing = MemoryRouting(world.rules.signer, world.store)
    body = world.roll_back(plan, now, routing)
    assert (body.outcome, body.facts, body.rollback and body.rollback.status) == ("applied", [fact], "COMPLETED")
    assert world.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.RETIRED}
    assert (world.line.production, world.line.previous_production) == (OLD, [])
    assert [(a.production, a.canary, a.shadow) for a in routing.published(now)] == [(OLD, None, [])]
    assert world.state.rollbacks == [body.rollback]


@pytest.mark.parametrize("world", ["new STAGING"], indirect=True)
def test_rollback_trigger_of_the_canary_retires_it_and_production_keeps_serving(world: Run) -> None:
    now = at_(world) + DAY
    trigger = rollback_trigger("canary-latency", now, NEW, OLD, trigger="p99_latency_ms",
                               reason="P99 1240 ms > 1000 ms", candidate=NEW)
    eid = str(trigger.event_id)
    fact = moved(f"{eid}#0", now, AUTOMATED, Stage.STAGING, Stage.RETIRED, "P99 1240 ms > 1000 ms", rollback=True)
    plan = _plan(world, world.event(trigger), now, from_version=NEW, to_version=OLD, reason="P99 1240 ms > 1000 ms",
                 initiated_by=AUTOMATED, trigger=f"p99_latency_ms (RollbackTrigger {eid})", fact=fact, error=None,
                 action="immediate")
    routing = MemoryRouting(world.rules.signer, world.store)
    body = world.roll_back(plan, now, routing)
    assert (body.outcome, body.facts, body.rollback and body.rollback.status) == ("applied", [fact], "COMPLETED")
    assert world.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.RETIRED}
    assert (world.line.production, world.line.previous_production) == (OLD, [])
    assert [(a.production, a.canary) for a in routing.published(now)] == [(OLD, None)]


@pytest.fixture(scope="module")
def three_served(worlds: dict[str, Run]) -> Run:
    """OLD and NEW served before OTHER, which serves now."""
    run = worlds["new serving"].fork()
    journey(run, OTHER, at_(run) + DAY, Stage.PRODUCTION, production=NEW)
    assert (run.line.production, run.line.previous_production) == (OTHER, [OLD, NEW])
    return run


@pytest.mark.parametrize(("named", "restored"), [(None, NEW), (OLD, OLD)], ids=["most-recent", "named"])
def test_a_trigger_restores_the_version_it_names_or_else_the_most_recent(three_served: Run, named: str | None,
                                                                          restored: str) -> None:
    run = three_served.fork()
    now = at_(run, OTHER) + HOUR
    reason = "142 integrity violations in the last hour > 100"
    trigger = rollback_trigger("integrity", now, OTHER, named, trigger="integrity_violations", reason=reason)
    eid = str(trigger.event_id)
    fact = moved(f"{eid}#0", now, AUTOMATED, Stage.PRODUCTION, Stage.RETIRED, reason, version=OTHER, rollback=True,
                 restored=restored)
    plan = _plan(run, run.event(trigger), now, from_version=OTHER, to_version=restored, reason=reason,
                 initiated_by=AUTOMATED, trigger=f"integrity_violations (RollbackTrigger {eid})", fact=fact,
                 error=None, action="immediate")
    run.roll_back(plan, now)
    assert run.line.production == restored
    assert run.line.previous_production == [v for v in (OLD, NEW) if v != restored]
    assert run.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.PRODUCTION, OTHER: Stage.RETIRED}


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
@pytest.mark.parametrize(("action", "trigger", "reason", "status"), [
    ("scheduled", "calibration_slope", "calibration slope 0.52 < 0.6", "SCHEDULED"),  # spec 8.1: scheduled rollback
    ("manual_review", "kl_divergence", "score KL 0.31 > 0.25", "MANUAL_REVIEW"),  # spec 8.1: alert + manual review
])
def test_deferred_triggers_are_recorded_not_executed(world: Run, action: Any, trigger: str, reason: str,
                                                     status: str) -> None:
    now = at_(world) + HOUR
    event = rollback_trigger(f"deferred-{action}", now, NEW, OLD, action, trigger, reason)
    eid = str(event.event_id)
    fact = moved(f"{eid}#0", now, AUTOMATED, Stage.PRODUCTION, Stage.RETIRED, reason, rollback=True, restored=OLD)
    # The shipped policy's lifecycle.scheduled_rollback_after_s: 86400 (docs/gates.md, spec 8.1).
    due_at = now + timedelta(days=1) if action == "scheduled" else None
    plan = _plan(world, world.event(event), now, from_version=NEW, to_version=OLD, reason=reason,
                 initiated_by=AUTOMATED, trigger=f"{trigger} (RollbackTrigger {eid})", fact=fact, error=None,
                 action=action, due_at=due_at)
    before = world.state.registry
    body = world.roll_back(plan, now, MemoryRouting(world.rules.signer, world.store, fail=True))
    assert (body.outcome, body.facts, body.rollback and body.rollback.status) == ("recorded", [], status)
    assert body.rollback is not None and body.rollback.due_at == due_at
    assert world.state.registry == before and world.line.production == NEW
    assert [r.status for r in world.state.rollbacks] == [status]
    assert list(world.state.scheduled) == ([f"{MODEL}/{NEW}"] if action == "scheduled" else [])


@pytest.mark.parametrize("world", ["old serving"], indirect=True)
@pytest.mark.parametrize("action", ["scheduled", "manual_review"])
def test_a_deferred_trigger_keeps_the_error_its_plan_found(world: Run, action: Any) -> None:
    # Defect (f): before, the record of a deferred trigger dropped the plan's error, so "nothing to restore"
    # was learnt only when someone ran the rollback.
    now = at_(world, OLD) + HOUR
    event = rollback_trigger(f"deferred-{action}", now, OLD, None, action, "calibration_slope", "slope 1.52 > 1.4")
    plan = world.decide(world.event(event), now)
    error = f"[8.2] Target model not found: {MODEL} has no previous production version to restore"
    assert plan.rollback is not None and (plan.rollback.fact, plan.rollback.error) == (None, error)
    body = world.roll_back(plan, now, MemoryRouting(world.rules.signer, world.store, fail=True))
    assert body.rollback is not None and body.rollback.error == error
    assert body.rollback.steps[-1] == f"check target None: FAILED already: {error}"
    assert world.state.rollbacks[-1].error == error


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
def test_rollback_command_restores_the_named_previous_version(world: Run) -> None:
    now = at_(world) + HOUR
    received = world.command(Rollback, "rb", "GID-08", now, reason="bad release", restore_version=OLD)
    fact = moved("rb#0", now, "GID-08", Stage.PRODUCTION, Stage.RETIRED, "bad release", rollback=True, restored=OLD)
    plan = _plan(world, received, now, from_version=NEW, to_version=OLD, reason="bad release", initiated_by="GID-08",
                 trigger="command rb", fact=fact, error=None, action="immediate")
    body = world.roll_back(plan, now)
    assert (body.outcome, body.facts) == ("applied", [fact])
    assert (world.line.production, world.record().stage) == (OLD, Stage.RETIRED)


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
def test_rollback_command_naming_a_version_that_never_served_fails(world: Run) -> None:
    now = at_(world) + HOUR
    received = world.command(Rollback, "rb", "GID-08", now, reason="bad release", restore_version="0.9.0")
    error = ("[8.2] Target model 0.9.0 not found among the previous production versions ['1.0.0']; "
             "name one of them")
    plan = _plan(world, received, now, from_version=NEW, to_version="0.9.0", reason="bad release",
                 initiated_by="GID-08", trigger="command rb", fact=None, error=error, action="immediate")
    before = world.state.registry
    body = world.roll_back(plan, now, MemoryRouting(world.rules.signer, world.store, fail=True))
    assert (body.outcome, body.facts, body.rollback and body.rollback.status) == ("recorded", [], "FAILED")
    assert body.rollback is not None and body.rollback.error == error
    assert world.state.registry == before and world.line.production == NEW


@pytest.mark.parametrize("world", ["old serving"], indirect=True)
def test_a_rollback_with_no_previous_production_version_fails_and_production_keeps_serving(world: Run) -> None:
    now = at_(world, OLD) + HOUR
    error = f"[8.2] Target model not found: {MODEL} has no previous production version to restore"
    trigger = rollback_trigger("error-spike", now, OLD, None)
    eid = str(trigger.event_id)
    plan = _plan(world, world.event(trigger), now, from_version=OLD, to_version=None,
                 reason="error rate 3.1 % > 1 % for 5 min", initiated_by=AUTOMATED,
                 trigger=f"error_rate (RollbackTrigger {eid})", fact=None, error=error, action="immediate")
    body = world.roll_back(plan, now, MemoryRouting(world.rules.signer, world.store, fail=True))
    assert (body.outcome, body.facts, body.rollback and body.rollback.status) == ("recorded", [], "FAILED")
    received = world.command(Rollback, "rb", "GID-08", now, OLD, reason="manual")
    plan = _plan(world, received, now, from_version=OLD, to_version=None, reason="manual", initiated_by="GID-08",
                 trigger="command rb", fact=None, error=error, action="immediate")
    world.roll_back(plan, now, MemoryRouting(world.rules.signer, world.store, fail=True))
    assert (world.line.production, world.record(OLD).stage) == (OLD, Stage.PRODUCTION)
    assert [(r.status, r.error) for r in world.state.rollbacks] == [("FAILED", error), ("FAILED", error)]


@pytest.mark.parametrize("world", ["new serving"], indirect=True)
def test_a_trigger_for_a_retired_version_is_recorded_with_nothing_to_do(world: Run) -> None:
    now = at_(world) + HOUR
    world.roll_back(world.decide(world.event(rollback_trigger("first", now, NEW, OLD)), now), now)
    retired = world.state.registry
    again = world.event(rollback_trigger("second", now + HOUR, NEW, OLD))
    plan = world.decide(again, now + HOUR)
    assert plan.rollback is None
    assert plan.body == EntryBody(at=now + HOUR, input=again.input, outcome="recorded",
                                  blocked=[f"{MODEL}@{NEW} is already RETIRED; nothing to roll back"])
    world.commit(plan.body)
    assert world.state.registry == retired


# ----------------------------------------------------------------------------------- replays and duplicates


@pytest.mark.parametrize("world", ["new PROPOSAL"], indirect=True)
def test_a_replayed_input_is_rejected_at_intake_and_changes_nothing(world: Run) -> None:
    gid08, gid08_store = key()
    trust = Trust(system=world.store, identities={"GID-08": gid08_store})
    now = START + HOUR
    command = world.command(Escalate, "esc", "GID-08", now, escalation_id="E-1", reason="bias").command
    assert command is not None
    value = orjson.dumps(sign_command(command, gid08, now))
    first = intake(Record("governance.approvals", 0, 7, b"fraud", value), world.state, trust, now, "command")
    assert isinstance(first, Received) and first.command == command
    world.ok(first, now)
    handled = world.state
    replay = intake(Record("governance.approvals", 0, 8, b"fraud", value), handled, trust, now, "command")
    assert isinstance(replay, Refused)
    assert replay.rejection == Rejection(reason="replayed",
                                         message=f"escalate esc was already handled (audit seq {handled.seq})")
    body = rejected(replay, now)
    assert body == EntryBody(at=now, input=replay.input, outcome="rejected", rejection=replay.rejection)
    world.commit(body)
    assert world.state.registry == handled.registry
    assert world.state.rejections == {"replayed": 1} and world.state.seen["esc"] == handled.seq
    # A redelivery of a message whose offset the log covers is not handled at all (the consumer skips it).
    assert world.state.handled("governance.approvals", 0, 7) and world.state.handled("governance.approvals", 0, 8)
    assert not world.state.handled("governance.approvals", 0, 9)


@pytest.mark.parametrize("world", ["new STAGING ready"], indirect=True)
def test_the_same_input_on_the_same_state_gives_the_same_entry(world: Run) -> None:
    now = at_(world) + 3 * DAY
    received = world.command(Approve, "ok", "GID-08", now, target=Stage.PRODUCTION)
    one, two = world.decide(received, now), world.decide(received, now)
    assert one.body.model_copy(update={"proofpack": None}) == two.body.model_copy(update={"proofpack": None})
    assert one.body.proofpack is not None and two.body.proofpack is not None
    assert one.body.proofpack["payload"] == two.body.proofpack["payload"]  # the signature alone may differ
    assert [f.event_id for f in one.body.facts] == ["ok#0", "ok#1", "ok#2"]
