"""The event-sourced registry: a full PROPOSAL -> PRODUCTION journey, rollback, replay and redelivery."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.contract.stages import Stage
from governance.errors import EventValidationError, PolicyViolation
from governance.lifecycle.ledger import (
    ApprovalRecorded,
    DocumentRecorded,
    EscalationRaised,
    EscalationResolved,
    Event,
    FeaturesRecorded,
    MetadataRecorded,
    ProofPackRecorded,
    Registered,
    Transitioned,
    parse_event,
)
from governance.lifecycle.machine import Assessment
from governance.lifecycle.promotion import MoveRequest, decide_transition
from governance.lifecycle.registry import Registry, apply, replay
from tests.lifecycle_samples import MODEL_FEATURES, T0, complete_documents, valid_metadata

MODEL = "fraud-risk"
PASS = Assessment(passed=True)
DAY = timedelta(days=1)


class Log:
    """An event log and the registry folded from it, built the way the governance consumer would."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.state = Registry()

    def add(self, event: Event) -> Event:
        self.state = apply(self.state, event)
        self.events.append(event)
        return event

    def fact(self, kind: type[Any], at: datetime, version: str, **fields: Any) -> Event:
        event_id = f"{kind.__name__}-{version}-{len(self.events)}"
        return self.add(kind(event_id=event_id, at=at, model=MODEL, version=version, **fields))

    def move(self, version: str, target: Stage, at: datetime, **options: Any) -> Transitioned:
        fact = decide_transition(self.state, MoveRequest(MODEL, version, target, actor="ci", **options),
                                 event_id=f"move-{version}-{len(self.events)}", now=at)
        self.add(fact)
        return fact

    def documents(self, version: str, stage: str, at: datetime) -> None:
        for name, text in complete_documents()[stage].items():
            self.fact(DocumentRecorded, at, version, stage=Stage(stage), name=name, text=text)

    def journey(
        self, version: str, start: datetime, proof_pack_id: str, until: Stage = Stage.PRODUCTION, **register: Any
    ) -> None:
        """Take a new ``version`` from registration to ``until``, each stage after its minimum duration."""
        register = {"model_type": "risk_scoring", "metadata": valid_metadata(version, proof_pack_id)} | register
        self.fact(Registered, start, version, **register)
        self.fact(FeaturesRecorded, start, version, features=MODEL_FEATURES, feature_linkage=PASS)
        self.documents(version, "PROPOSAL", start)
        self.fact(ApprovalRecorded, start, version, approver="GID-02", target=Stage.PROTOTYPE)
        steps = [
            (Stage.PROTOTYPE, 1, {}),
            (Stage.TRAINING, 4, {}),
            (Stage.SHADOW, 6, {}),
            (Stage.STAGING, 20, {"shadow_checklist": PASS}),  # risk scoring shadows for 14 days
            (Stage.PRODUCTION, 23, {"staging_gate": PASS}),
        ]
        for target, day, options in steps:
            at = start + day * DAY
            if target is Stage.SHADOW:  # spec 1.2: "Training approved", by GID-02
                self.fact(ApprovalRecorded, at, version, approver="GID-02", target=Stage.SHADOW)
            if target is Stage.STAGING:  # spec 9.2: the shadow stage needs ALEX's review
                self.fact(ApprovalRecorded, at, version, approver="GID-08", target=Stage.STAGING)
                self.fact(ProofPackRecorded, at, version, proofpack_id=proof_pack_id)
            if target is Stage.PRODUCTION:
                self.documents(version, "PRODUCTION", at)
                self.fact(ApprovalRecorded, at, version, approver="GID-08", target=Stage.PRODUCTION)
            self.move(version, target, at, **options)
            if target is not Stage.PRODUCTION:
                self.documents(version, target.value, at)
            if target is until:
                return


@pytest.fixture
def two_in_production() -> Log:
    log = Log()
    log.journey("1.0.0", T0, "PP-2026-0001")
    log.journey("1.5.0", T0 + 30 * DAY, "PP-2026-0002")
    return log


def test_journey_to_production(two_in_production: Log) -> None:
    state = two_in_production.state
    line = state.models[MODEL]
    assert line.production == "1.5.0" and line.previous_production == ["1.0.0"]
    v1, v2 = line.versions["1.0.0"], line.versions["1.5.0"]
    assert v1.stage is Stage.PRODUCTION and v2.stage is Stage.PRODUCTION
    assert v2.entered_stage_at == T0 + 53 * DAY
    moves = [(h.from_stage, h.to_stage) for h in v2.history if h.to_stage is not None]
    assert [b for _, b in moves] == [Stage.PROTOTYPE, Stage.TRAINING, Stage.SHADOW, Stage.STAGING, Stage.PRODUCTION]
    facts = [e for e in two_in_production.events if isinstance(e, Transitioned) and e.version == "1.5.0"]
    assert facts[0].approvals == ("GID-02",) and facts[-1].approvals == ("GID-08",)
    assert facts[-1].staging_gate == PASS


def test_rollback_restores_the_previous_production(two_in_production: Log) -> None:
    log = two_in_production
    fact = log.move("1.5.0", Stage.RETIRED, T0 + 54 * DAY, rollback=True, reason="error rate 2 % > 1 % for 5 min")
    assert fact.restored_version == "1.0.0" and fact.rollback
    line = log.state.models[MODEL]
    assert line.production == "1.0.0" and line.previous_production == []
    assert line.versions["1.5.0"].stage is Stage.RETIRED
    assert line.versions["1.0.0"].stage is Stage.PRODUCTION
    assert line.versions["1.0.0"].history[-1].detail == "restored as serving production, replacing 1.5.0"


def test_rollback_restores_the_most_recent_of_several(two_in_production: Log) -> None:
    log = two_in_production
    log.journey("2.0.0", T0 + 60 * DAY, "PP-2026-0003")
    fact = log.move("2.0.0", Stage.RETIRED, T0 + 84 * DAY, rollback=True, reason="AUC fell")
    assert fact.restored_version == "1.5.0"
    line = log.state.models[MODEL]
    assert (line.production, line.previous_production) == ("1.5.0", ["1.0.0"])


def test_rollback_without_previous_version_is_refused_but_decommission_is_not() -> None:
    log = Log()
    log.journey("1.0.0", T0, "PP-2026-0001")
    with pytest.raises(PolicyViolation) as info:
        log.move("1.0.0", Stage.RETIRED, T0 + 24 * DAY, rollback=True, reason="latency")
    assert info.value.rules == [
        "[8.2] Target model not found: fraud-risk has no previous production version to restore"
    ]
    with pytest.raises(PolicyViolation, match=r"\[9\] RETIRED document 'retirement_justification'"):
        log.move("1.0.0", Stage.RETIRED, T0 + 24 * DAY, reason="product discontinued")  # spec 9.1 RETIRED
    log.documents("1.0.0", "RETIRED", T0 + 24 * DAY)
    log.move("1.0.0", Stage.RETIRED, T0 + 24 * DAY, reason="product discontinued")
    assert log.state.models[MODEL].production is None


def test_restore_a_named_older_version_and_retire_a_standby(two_in_production: Log) -> None:
    log = two_in_production
    log.journey("2.0.0", T0 + 60 * DAY, "PP-2026-0003")
    assert log.state.models[MODEL].previous_production == ["1.0.0", "1.5.0"]
    with pytest.raises(PolicyViolation, match="Target model 0.9.0 not found"):
        log.move("2.0.0", Stage.RETIRED, T0 + 84 * DAY, rollback=True, reason="x", restore_version="0.9.0")
    log.move("2.0.0", Stage.RETIRED, T0 + 84 * DAY, rollback=True, reason="bad", restore_version="1.0.0")
    line = log.state.models[MODEL]
    assert (line.production, line.previous_production) == ("1.0.0", ["1.5.0"])
    log.documents("1.5.0", "RETIRED", T0 + 85 * DAY)
    log.move("1.5.0", Stage.RETIRED, T0 + 85 * DAY, reason="no longer a rollback target")
    assert (line := log.state.models[MODEL]).previous_production == [] and line.production == "1.0.0"
    with pytest.raises(
        PolicyViolation, match=r"Target model 1.5.0 not found among the previous production versions \[\]"
    ):
        log.move("1.0.0", Stage.RETIRED, T0 + 86 * DAY, reason="r", restore_version="1.5.0")


def test_shadow_rollback_is_immediate() -> None:
    log = Log()
    log.journey("1.0.0", T0, "PP-2026-0001")
    start = T0 + 30 * DAY
    log.journey("1.1.0", start, "PP-2026-0002", until=Stage.SHADOW)
    entered = log.state.get(MODEL, "1.1.0").entered_stage_at
    with pytest.raises(PolicyViolation, match="restore_version applies only when retiring the serving production"):
        decide_transition(log.state, MoveRequest(MODEL, "1.1.0", Stage.RETIRED, reason="r", restore_version="1.0.0"),
                          event_id="x", now=entered)
    log.move("1.1.0", Stage.RETIRED, entered, rollback=True, reason="P99 delta 0.41 >= 0.35")
    assert log.state.get(MODEL, "1.1.0").stage is Stage.RETIRED
    assert log.state.models[MODEL].production == "1.0.0"


def test_refusal_names_every_rule_and_changes_nothing() -> None:
    log = Log()
    log.fact(Registered, T0, "1.0.0", model_type="classification")
    before = log.state.model_dump()
    with pytest.raises(PolicyViolation) as info:
        log.move("1.0.0", Stage.PROTOTYPE, T0 + timedelta(hours=1))
    assert [r.split(" ")[0] for r in info.value.rules] == ["[7.1]", "[7.1]", "[1.2]"]
    assert str(info.value).startswith("fraud-risk@1.0.0 PROPOSAL -> PROTOTYPE refused, 3 rule(s) broken")
    assert log.state.model_dump() == before


def test_escalation_blocks_until_resolved() -> None:
    log = Log()
    log.fact(Registered, T0, "1.0.0", model_type="classification")
    log.documents("1.0.0", "PROPOSAL", T0)
    log.fact(ApprovalRecorded, T0, "1.0.0", approver="GID-02", target=Stage.PROTOTYPE)
    log.fact(EscalationRaised, T0, "1.0.0", escalation_id="ESC-1", reason="label leak suspected")
    with pytest.raises(PolicyViolation) as info:
        log.move("1.0.0", Stage.PROTOTYPE, T0 + 2 * DAY)
    assert info.value.rules == ["[escalation] open escalation(s) ['ESC-1'] block promotion; resolve them first"]
    with pytest.raises(PolicyViolation, match="already raised"):
        log.fact(EscalationRaised, T0, "1.0.0", escalation_id="ESC-1", reason="again")
    log.fact(EscalationResolved, T0 + DAY, "1.0.0", escalation_id="ESC-1", resolution="false alarm")
    with pytest.raises(PolicyViolation, match="not open"):
        log.fact(EscalationResolved, T0 + DAY, "1.0.0", escalation_id="ESC-1", resolution="twice")
    assert log.move("1.0.0", Stage.PROTOTYPE, T0 + 2 * DAY).to_stage is Stage.PROTOTYPE


def test_approvals_count_only_for_their_transition() -> None:
    log = Log()
    log.fact(Registered, T0, "1.0.0", model_type="classification")
    log.documents("1.0.0", "PROPOSAL", T0)
    log.fact(ApprovalRecorded, T0, "1.0.0", approver="GID-02", target=Stage.PRODUCTION)
    with pytest.raises(PolicyViolation) as info:
        log.move("1.0.0", Stage.PROTOTYPE, T0 + 2 * DAY)
    assert info.value.rules == ["[7.1] Maggie (GID-02) approval required for PROTOTYPE"]
    for target in (Stage.PROPOSAL, Stage.RETIRED):
        with pytest.raises(PolicyViolation, match=f"approval for {target} cannot apply"):
            log.fact(ApprovalRecorded, T0, "1.0.0", approver="GID-02", target=target)


def test_one_canary_per_model() -> None:
    log = Log()
    log.journey("1.0.0", T0, "PP-2026-0001", until=Stage.STAGING)
    log.journey("1.1.0", T0, "PP-2026-0002", until=Stage.SHADOW)
    log.fact(ApprovalRecorded, T0 + 30 * DAY, "1.1.0", approver="GID-08", target=Stage.STAGING)  # the review (9.2)
    with pytest.raises(PolicyViolation) as info:
        log.move("1.1.0", Stage.STAGING, T0 + 30 * DAY, shadow_checklist=PASS)
    assert info.value.rules == ["[1.2] version 1.0.0 of fraud-risk is already the canary; retire or promote it first"]
    forged = Transitioned(
        event_id="forged", at=T0 + 30 * DAY, model=MODEL, version="1.1.0",
        from_stage=Stage.SHADOW, to_stage=Stage.STAGING,
    )  # fmt: skip
    with pytest.raises(PolicyViolation, match="one canary per model"):
        apply(log.state, forged)
    log.move("1.0.0", Stage.RETIRED, T0 + 30 * DAY, rollback=True, reason="canary degraded")
    assert log.move("1.1.0", Stage.STAGING, T0 + 30 * DAY, shadow_checklist=PASS).to_stage is Stage.STAGING


def test_apply_refuses_facts_outside_the_table_or_stale() -> None:
    log = Log()
    log.fact(Registered, T0, "1.0.0", model_type="ranking")
    skip = Transitioned(
        event_id="skip", at=T0, model=MODEL, version="1.0.0", from_stage=Stage.PROPOSAL, to_stage=Stage.PRODUCTION
    )
    with pytest.raises(PolicyViolation, match="not in the transition table"):
        apply(log.state, skip)
    stale = Transitioned(
        event_id="stale", at=T0, model=MODEL, version="1.0.0", from_stage=Stage.SHADOW, to_stage=Stage.STAGING
    )
    with pytest.raises(PolicyViolation, match="stale decision"):
        apply(log.state, stale)
    with pytest.raises(PolicyViolation, match="not registered"):
        apply(log.state, skip.model_copy(update={"version": "9.9.9"}))
    with pytest.raises(PolicyViolation, match="already registered"):
        log.fact(Registered, T0, "1.0.0", model_type="ranking")


def test_settled_metadata_and_closed_documents(two_in_production: Log) -> None:
    log = two_in_production
    with pytest.raises(PolicyViolation, match="settled once the version left TRAINING"):
        log.fact(MetadataRecorded, T0 + 60 * DAY, "1.5.0", metadata=valid_metadata("1.5.0"))
    with pytest.raises(PolicyViolation, match="SHADOW documentation is closed"):
        log.fact(DocumentRecorded, T0 + 60 * DAY, "1.5.0", stage=Stage.SHADOW, name="shadow", text="# rewritten")
    log.move("1.5.0", Stage.RETIRED, T0 + 60 * DAY, rollback=True, reason="latency")
    log.documents("1.5.0", "RETIRED", T0 + 61 * DAY)  # a rollback's retirement papers come after the fact
    assert set(log.state.get(MODEL, "1.5.0").documents[Stage.RETIRED]) == {
        "retirement_justification",
        "migration_notes",
    }


def test_shadow_gate_checks_metadata_against_the_registration() -> None:
    log = Log()
    log.journey("2.0.0", T0, "PP-2026-0001", until=Stage.TRAINING, metadata=valid_metadata("2.0.1"))
    log.fact(FeaturesRecorded, T0 + 5 * DAY, "2.0.0", features={"card_present": "bool"}, feature_linkage=PASS)
    log.fact(ApprovalRecorded, T0 + 5 * DAY, "2.0.0", approver="GID-02", target=Stage.SHADOW)
    with pytest.raises(PolicyViolation) as info:
        log.move("2.0.0", Stage.SHADOW, T0 + 6 * DAY)
    assert info.value.rules == [
        "[4] metadata version '2.0.1' is not the registered version '2.0.0'",
        "[4] monotonicity_constraints name features the model does not use: "
        "['account_age_days', 'transaction_amount_usd']",
    ]


# ---------------------------------------------------------------------------------- replay and redelivery


def test_replay_rebuilds_the_same_state(two_in_production: Log) -> None:
    log = two_in_production
    log.move("1.5.0", Stage.RETIRED, T0 + 54 * DAY, rollback=True, reason="latency")
    rebuilt = replay(log.events)
    assert rebuilt == log.state
    assert replay(log.events, rebuilt) == rebuilt  # the whole log again: every event is a duplicate
    assert replay(log.events) == replay(log.events)


def test_state_and_events_round_trip_through_json(two_in_production: Log) -> None:
    log = two_in_production
    wire = json.dumps(log.state.model_dump(mode="json"), sort_keys=True)
    assert Registry.model_validate(json.loads(wire)) == log.state
    decoded = [parse_event(json.loads(json.dumps(e.model_dump(mode="json")))) for e in log.events]
    assert decoded == log.events
    assert replay(decoded) == log.state


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_redelivered_duplicates_change_nothing(data: st.DataObject) -> None:
    log = Log()
    log.journey("1.0.0", T0, "PP-2026-0001")
    events = log.events
    delivered: list[Event] = []
    for index, event in enumerate(events):
        delivered.append(event)
        if data.draw(st.booleans()):
            # A consumer restart re-reads from an older committed offset.
            start = data.draw(st.integers(min_value=0, max_value=index))
            delivered.extend(events[start : index + 1])
    assert replay(delivered) == log.state


def test_apply_is_pure_and_idempotent(two_in_production: Log) -> None:
    state = two_in_production.state
    snapshot = state.model_dump()
    event = EscalationRaised(
        event_id="esc", at=T0 + 70 * DAY, model=MODEL, version="1.5.0", escalation_id="E", reason="drift"
    )
    after = apply(state, event)
    assert state.model_dump() == snapshot
    assert after.get(MODEL, "1.5.0").open_escalations() == ("E",)
    assert apply(after, event) is after
    with pytest.raises(EventValidationError, match="'esc' was already applied with different content"):
        apply(after, event.model_copy(update={"reason": "forged"}))


def test_parse_event_refuses_bad_input() -> None:
    good = {
        "kind": "approval_recorded", "event_id": "a1", "at": "2026-01-05T11:00:00+02:00", "actor": "GID-02",
        "model": MODEL, "version": "1.0.0", "approver": "GID-02", "target": "PROTOTYPE",
    }  # fmt: skip
    event = parse_event(good)
    assert event.at == T0 and event.at.tzinfo is not None and event.at.utcoffset() == timedelta(0)
    for bad, field in [
        (good | {"at": "2026-01-05T09:00:00"}, "at"),
        (good | {"target": "CANARY"}, "target"),
        (good | {"kind": "deleted"}, ""),
        (good | {"extra": 1}, "extra"),
        (good | {"model": "a|b"}, "model"),
    ]:
        with pytest.raises(EventValidationError) as info:
            parse_event(bad)
        assert field in (info.value.field or "")
    local = datetime(2026, 1, 5, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    registered = Registered(event_id="r", at=local, model=MODEL, version="1", model_type="ranking")
    assert registered.at == T0 and registered.at.utcoffset() == timedelta(0)
