"""``governance.lifecycle.handler.handle`` without servers: GateReady and GateBlocked, entry by entry.

A verified GateReady of a SHADOW version promotes it to STAGING, one of the canary tries PRODUCTION; a
GateBlocked, and a READY that is not allowed yet, is recorded with the rules that blocked it.

Each test hands ``handle`` a verified input (built as intake would), checks the exact audit entry it
produces (outcome, facts in order with their ids ``<input id>#<n>``, gate record, blocked rules, rejection)
and then the state after the entry is sealed with a real ML-DSA-65 key and folded
(``governance.lifecycle.state.fold``), as the consumer does (harness: tests/handler_kit.py).

Expected values come from the spec (1.2 minimum durations and exit criteria, 3.1 shadow duration by model
type, 4.2 metadata, 5.2 feature linkage, 7.1 gates, 8.1 trigger actions, 8.2 rollback, 9 documents) and the
shipped policy, which encodes the spec's tables; the messages are the rule texts the entry must carry.
"""

from __future__ import annotations

import pytest

from governance.contract.events import Alert, Evidence, GateReady, Versions
from governance.contract.stages import Stage
from governance.crypto.keys import TrustStore
from governance.crypto.signing import Signer
from governance.lifecycle.audit import EntryBody, Retry
from governance.lifecycle.commands import Advance, Approve
from governance.lifecycle.intake import Received
from governance.lifecycle.ledger import ProofPackRecorded
from tests.handler_kit import (
    AUTOMATED,
    DAY,
    HOUR,
    MODEL,
    NEW,
    OLD,
    OTHER,
    PASS,
    START,
    Run,
    assert_rejected,
    at_,
    broken,
    check_proofpack,
    gate_blocked,
    gate_ready,
    gate_record,
    history,
    journey,
    key,
    moved,
    pack_id,
    refusal,
    review,
    shipped_policy_hash,
    too_early,
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


# ---------------------------------------------------------------------------------------- GateReady / Blocked


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_gate_ready_of_a_shadow_version_promotes_it_to_staging(world: Run) -> None:
    now = at_(world) + 7 * DAY  # spec 3.1: classification shadows 7 days
    review(world, NEW, at_(world) + HOUR)
    ready = gate_ready("shadow-ready", "SHADOW", now)
    received = world.event(ready)
    body = world.decide(received, now).body
    eid = str(ready.event_id)
    assert body == EntryBody(at=now, input=received.input, outcome="applied", gate=gate_record(ready), facts=[
        moved(f"{eid}#0", now, AUTOMATED, Stage.SHADOW, Stage.STAGING, f"shadow_completion READY (GateReady {eid})",
              approvals=("GID-08",), shadow=PASS)])
    world.commit(body)
    assert world.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.STAGING} and at_(world) == now
    assert world.state.verdicts[MODEL][NEW] == {"SHADOW": gate_record(ready)}


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_an_early_shadow_gate_ready_is_recorded_and_a_person_advances_later(world: Run) -> None:
    entered = at_(world)
    early = entered + 6 * DAY
    review(world, NEW, entered + HOUR)
    ready = gate_ready("shadow-ready", "SHADOW", early)
    received = world.event(ready)
    body = world.decide(received, early).body
    # Only time blocks it: a retry at the earliest exit (tests/test_timers.py carries it out).
    retry = Retry(model=MODEL, version=NEW, stage="SHADOW", due_at=entered + 7 * DAY, cause=str(ready.event_id))
    assert body == EntryBody(at=early, input=received.input, outcome="recorded", gate=gate_record(ready),
                             blocked=[too_early("SHADOW", entered, early, 7)], retry=retry)
    world.commit(body)
    assert world.record().stage is Stage.SHADOW and world.state.verdicts[MODEL][NEW]["SHADOW"] == gate_record(ready)
    now = entered + 7 * DAY
    received = world.command(Advance, "adv", "GID-08", now)
    body = world.decide(received, now).body
    assert body == EntryBody(at=now, input=received.input, outcome="applied", facts=[
        moved("adv#0", now, "GID-08", Stage.SHADOW, Stage.STAGING, approvals=("GID-08",), shadow=PASS)])
    world.commit(body)
    assert world.record().stage is Stage.STAGING


def test_a_risk_scoring_model_shadows_fourteen_days(worlds: dict[str, Run]) -> None:
    run = worlds["old serving"].fork()
    entered = journey(run, OTHER, START, Stage.SHADOW, model_type="risk_scoring")
    review(run, OTHER, entered)
    now = entered + 7 * DAY  # enough for the policy's SHADOW minimum, not for spec 3.1's risk scoring
    body = run.step(run.event(gate_ready("ready-7d", "SHADOW", now, OTHER)), now)
    assert (body.outcome, body.facts) == ("recorded", [])
    assert body.blocked == [too_early("SHADOW", entered, now, 14)]
    assert body.retry is not None and body.retry.due_at == entered + 14 * DAY
    now = entered + 14 * DAY
    ready = gate_ready("ready-14d", "SHADOW", now, OTHER)
    body = run.step(run.event(ready), now)
    eid = str(ready.event_id)
    assert (body.outcome, body.blocked) == ("applied", [])
    assert body.facts == [moved(f"{eid}#0", now, AUTOMATED, Stage.SHADOW, Stage.STAGING,
                                f"shadow_completion READY (GateReady {eid})", version=OTHER, approvals=("GID-08",),
                                shadow=PASS)]
    assert run.record(OTHER).stage is Stage.STAGING


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_gate_blocked_is_recorded_and_refuses_the_move(world: Run) -> None:
    now = at_(world) + 7 * DAY
    review(world, NEW, now)
    blocked = gate_blocked("shadow-blocked", "SHADOW", now, {"mean_abs_delta": "mean_abs_delta 0.180 >= 0.15"})
    received = world.event(blocked)
    body = world.decide(received, now).body
    gate = gate_record(blocked, passed=False, failures=("mean_abs_delta 0.180 >= 0.15",))
    assert body == EntryBody(at=now, input=received.input, outcome="recorded", gate=gate)
    world.commit(body)
    assert world.record().stage is Stage.SHADOW and world.state.verdicts[MODEL][NEW]["SHADOW"] == gate
    # Spec 7.1 shadow_to_staging: "Shadow completion failed: [failures]".
    assert_rejected(world, world.command(Advance, "adv", "GID-08", now), now, broken(
        "SHADOW", "STAGING", "[7.1] Shadow completion failed: ['mean_abs_delta 0.180 >= 0.15']"))


@pytest.mark.parametrize("world", ["new STAGING"], indirect=True)
@pytest.mark.parametrize("late", ["ready", "blocked"])
def test_a_late_shadow_verdict_is_recorded_and_does_not_replace_the_one_that_promoted(world: Run, late: str) -> None:
    # Defect (b): before, a late GateBlocked about SHADOW replaced the READY verdict that promoted the version
    # (the ProofPack's shadow evidence) in state.verdicts.
    promoted_by = world.state.verdicts[MODEL][NEW]["SHADOW"]
    now = at_(world) + HOUR
    event = (gate_ready("late-shadow", "SHADOW", now) if late == "ready" else
             gate_blocked("late-shadow", "SHADOW", now, {"mean_abs_delta": "mean_abs_delta 0.180 >= 0.15"}))
    received = world.event(event)
    body = world.decide(received, now).body
    failures = () if late == "ready" else ("mean_abs_delta 0.180 >= 0.15",)
    gate = gate_record(event, passed=late == "ready", failures=failures).model_copy(update={"counts": False})
    assert body == EntryBody(at=now, input=received.input, outcome="recorded", gate=gate, blocked=[
        f"gate shadow_completion is for SHADOW but {MODEL}@{NEW} is in STAGING: recorded, it does not replace the "
        "SHADOW verdict"])
    world.commit(body)
    assert world.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.STAGING}
    assert world.state.verdicts[MODEL][NEW]["SHADOW"] == promoted_by and promoted_by.passed


def test_a_second_canary_is_blocked(worlds: dict[str, Run]) -> None:
    run = worlds["new STAGING"].fork()
    entered = journey(run, OTHER, at_(run) + HOUR, Stage.SHADOW)
    now = entered + 7 * DAY
    review(run, OTHER, now)
    ready = gate_ready("other-ready", "SHADOW", now, OTHER)
    received = run.event(ready)
    body = run.decide(received, now).body
    # Spec 1.2: the canary takes 5-10 % of traffic; one canary per model.
    assert body == EntryBody(at=now, input=received.input, outcome="recorded", gate=gate_record(ready),
                             blocked=[f"[1.2] version {NEW} of {MODEL} is already the canary; retire or promote it "
                                      "first"])
    run.commit(body)
    assert run.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.STAGING, OTHER: Stage.SHADOW}


@pytest.mark.parametrize("world", ["new STAGING"], indirect=True)
def test_gate_ready_of_the_canary_without_alex_approval_is_recorded_and_blocked(world: Run) -> None:
    now = at_(world) + 3 * DAY
    ready = gate_ready("canary-ready", "STAGING", now)
    received = world.event(ready)
    body = world.decide(received, now).body
    assert body == EntryBody(at=now, input=received.input, outcome="recorded", gate=gate_record(ready),
                             blocked=["[7.1] ALEX (GID-08) production approval required"])
    world.commit(body)
    assert world.record().stage is Stage.STAGING and world.state.verdicts[MODEL][NEW]["STAGING"] == gate_record(ready)


@pytest.mark.parametrize("world", ["new STAGING"], indirect=True)
def test_gate_ready_of_an_approved_canary_promotes_it_to_production(world: Run) -> None:
    entered = at_(world)
    early = entered + HOUR
    approval = world.command(Approve, "ok", "GID-08", early, target=Stage.PRODUCTION)
    body = world.step(approval, early)
    assert body.blocked == ["[2.1] Staging gate not evaluated: no verdict, so no promotion",
                            too_early("STAGING", entered, early, 3)]
    now = entered + 3 * DAY
    ready = gate_ready("canary-ready", "STAGING", now)
    received = world.event(ready)
    body = world.decide(received, now).body
    eid = str(ready.event_id)
    assert body.model_copy(update={"proofpack": None}) == EntryBody(
        at=now, input=received.input, outcome="applied", gate=gate_record(ready),
        facts=[ProofPackRecorded(event_id=f"{eid}#0", at=now, actor=AUTOMATED, model=MODEL, version=NEW,
                                 proofpack_id=pack_id(NEW)),
               moved(f"{eid}#1", now, AUTOMATED, Stage.STAGING, Stage.PRODUCTION, f"staging READY (GateReady {eid})",
                     approvals=("GID-08",), shadow=PASS, staging=PASS)])
    world.commit(body)
    assert (world.line.production, world.line.previous_production) == (NEW, [OLD])
    assert world.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.PRODUCTION}
    check_proofpack(world, body.proofpack, now, [("GID-02", "PROTOTYPE"), ("GID-02", "SHADOW"), ("GID-08", "STAGING"),
                                                 ("GID-08", "PRODUCTION")])


@pytest.mark.parametrize("world", ["new STAGING"], indirect=True)
def test_a_person_advances_the_canary_once_its_duration_passed(world: Run) -> None:
    entered = at_(world)
    # The canary gate turned READY and ALEX approved on day 1 and 2: the duration blocked both; the approval
    # leaves a retry for day 3 (the consumer's timer), but ALEX advances it by hand first.
    world.step(world.event(gate_ready("canary-ready", "STAGING", entered + DAY)), entered + DAY)
    body = world.step(world.command(Approve, "ok", "GID-08", entered + 2 * DAY, target=Stage.PRODUCTION),
                      entered + 2 * DAY)
    assert world.record().stage is Stage.STAGING and body.retry is not None
    assert body.retry.due_at == entered + 3 * DAY
    now = entered + 3 * DAY
    received = world.command(Advance, "adv", "GID-08", now, reason="canary clean for 3 days")
    body = world.decide(received, now).body
    assert body.model_copy(update={"proofpack": None}) == EntryBody(
        at=now, input=received.input, outcome="applied",
        facts=[ProofPackRecorded(event_id="adv#0", at=now, actor="GID-08", model=MODEL, version=NEW,
                                 proofpack_id=pack_id(NEW)),
               moved("adv#1", now, "GID-08", Stage.STAGING, Stage.PRODUCTION, "canary clean for 3 days",
                     approvals=("GID-08",), shadow=PASS, staging=PASS)])
    world.commit(body)
    assert world.line.production == NEW
    check_proofpack(world, body.proofpack, now, [("GID-02", "PROTOTYPE"), ("GID-02", "SHADOW"), ("GID-08", "STAGING"),
                                                 ("GID-08", "PRODUCTION")])


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_inputs_handle_cannot_judge_are_refused(world: Run) -> None:
    now = at_(world) + HOUR
    nameless = GateReady(event_id=gate_ready("x", "SHADOW", now).event_id, ts=now, expires_at=now + HOUR, model=MODEL,
                         versions=Versions(production=OLD), evidence=Evidence(policy_hash=shipped_policy_hash()),
                         gate="shadow_completion", stage="SHADOW")
    message = f"GateReady {nameless.event_id} names no candidate version"
    assert_rejected(world, world.event(nameless), now, refusal(message, message))
    unknown = gate_ready("unknown", "SHADOW", now, "9.9.9")
    rule = "model 'fraud' version '9.9.9' is not registered; register it first"
    assert_rejected(world, world.event(unknown), now, refusal(rule, rule))
    alert = Alert(event_id=gate_ready("alert", "SHADOW", now).event_id, ts=now, expires_at=now + HOUR, model=MODEL,
                  versions=Versions(production=OLD), evidence=Evidence(policy_hash=shipped_policy_hash()),
                  severity="warning", dedup_key="k", summary="s", runbook="r")
    message = "Alert is not an input of the governance consumer"
    assert_rejected(world, world.event(alert), now, refusal(message, message))  # type: ignore[arg-type]
    empty = Received(world.event(gate_ready("empty", "SHADOW", now)).input)
    message = "input carries neither a command nor an event"
    assert_rejected(world, empty, now, refusal(message, message))
