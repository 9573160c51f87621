"""``governance.lifecycle.handler.handle`` without servers: the commands of people, entry by entry.

register / propose, approve (GID-02 at PROPOSAL; GID-08 at STAGING, which tries the automatic promotion to
PRODUCTION), escalate / resolve, and advance at every stage, allowed and refused. The gate events are in
tests/test_handler_gates.py, rollbacks and replays in tests/test_handler_rollback.py.

Each test hands ``handle`` a verified input (built as intake would), checks the exact audit entry it
produces (outcome, facts in order with their ids ``<input id>#<n>``, gate record, blocked rules, rejection)
and then the state after the entry is sealed with a real ML-DSA-65 key and folded
(``governance.lifecycle.state.fold``), as the consumer does (harness: tests/handler_kit.py).

Expected values come from the spec (1.2 minimum durations and exit criteria, 3.1 shadow duration by model
type, 4.2 metadata, 5.2 feature linkage, 7.1 gates, 8.1 trigger actions, 8.2 rollback, 9 documents) and the
shipped policy, which encodes the spec's tables; the messages are the rule texts the entry must carry.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from governance.contract.stages import Stage
from governance.crypto.keys import TrustStore
from governance.crypto.signing import Signer
from governance.lifecycle.audit import EntryBody, Rejection
from governance.lifecycle.commands import Advance, Approve, DocumentIn, Escalate, Propose, Register, Resolve
from governance.lifecycle.identities import Trust
from governance.lifecycle.ledger import (
    ArtifactRecorded,
    DocumentRecorded,
    EscalationRaised,
    EscalationResolved,
    FeaturesRecorded,
    MetadataRecorded,
    ProofPackRecorded,
    Registered,
)
from governance.lifecycle.machine import Assessment
from governance.lifecycle.registry import Approval
from tests.governance_factory import policy_with
from tests.handler_kit import (
    AUTOMATED,
    COMMANDS,
    DAY,
    HOUR,
    MODEL,
    NEW,
    NEXT,
    OLD,
    OTHER,
    PASS,
    SPEC_DAYS,
    START,
    T0,
    Run,
    advance,
    approved,
    artifact_of,
    assert_rejected,
    at_,
    broken,
    check_proofpack,
    escalation,
    gate_blocked,
    gate_ready,
    gate_record,
    history,
    journey,
    key,
    moved,
    pack_id,
    refusal,
    register,
    review,
    rules,
    too_early,
)
from tests.lifecycle_samples import MODEL_FEATURES, SPEC_SECTIONS, complete_documents, markdown, valid_metadata


@pytest.fixture(scope="module")
def keys() -> tuple[Signer, TrustStore]:
    return key()


@pytest.fixture(scope="module")
def worlds(keys: tuple[Signer, TrustStore]) -> dict[str, Run]:
    return history(*keys)


@pytest.fixture
def world(worlds: dict[str, Run], request: pytest.FixtureRequest) -> Run:
    return worlds[request.param].fork()


# ------------------------------------------------------------------------------------- register / propose


def test_register_records_the_version_its_catalog_linkage_and_artifact(keys: tuple[Signer, TrustStore]) -> None:
    run = Run(rules(keys[0]), keys[1])
    metadata = valid_metadata(NEW, pack_id(NEW), T0 - 3 * DAY)
    received = run.command(Register, "reg", "GID-02", T0, model_type="classification", metadata=metadata,
                           features=MODEL_FEATURES, artifact_sha256=artifact_of(NEW))
    body = run.decide(received, T0).body
    fact = Registered(event_id="reg#0", at=T0, actor="GID-02", model=MODEL, version=NEW, model_type="classification",
                      metadata=metadata, features=MODEL_FEATURES, feature_linkage=PASS)
    artifact = ArtifactRecorded(event_id="reg#1", at=T0, actor="GID-02", model=MODEL, version=NEW,
                                sha256=artifact_of(NEW))
    assert body == EntryBody(at=T0, input=received.input, outcome="applied", facts=[fact, artifact])
    state = run.commit(body)
    record = run.record()
    assert (record.stage, record.entered_stage_at, record.model_type, record.metadata) == (
        Stage.PROPOSAL, T0, "classification", metadata)
    assert state.artifacts == {MODEL: {NEW: artifact_of(NEW)}}
    assert (state.seq, state.seen, state.positions) == (0, {"reg": 0}, {f"{COMMANDS}:0": 0})


def test_register_keeps_a_failed_catalog_linkage_for_the_shadow_gate(keys: tuple[Signer, TrustStore]) -> None:
    run = Run(rules(keys[0]), keys[1])
    features = {**MODEL_FEATURES, "device_fingerprint": "string", "card_present": "int64"}
    received = run.command(Register, "reg", "GID-02", T0, model_type="ranking", features=features)
    body = run.decide(received, T0).body
    # Spec 5.2: unknown features and dtype mismatches, in the spec's words; registration itself is not gated.
    linkage = Assessment(passed=False, failures=("Model uses features not in catalog: {'device_fingerprint'}",
                                                 "Feature 'card_present' dtype mismatch: catalog=bool, model=int64"))
    fact = Registered(event_id="reg#0", at=T0, actor="GID-02", model=MODEL, version=NEW, model_type="ranking",
                      features=features, feature_linkage=linkage)
    assert body == EntryBody(at=T0, input=received.input, outcome="applied", facts=[fact])
    run.commit(body)
    assert run.record().feature_linkage == linkage and run.state.artifacts == {}


@pytest.mark.parametrize("world", ["new PROPOSAL"], indirect=True)
def test_registering_a_registered_version_again_is_refused(world: Run) -> None:
    received = world.command(Register, "reg-again", "GID-02", START + HOUR, model_type="ranking")
    rule = "this version is already registered; register a new version instead"
    assert_rejected(world, received, START + HOUR, refusal(f"{MODEL}@{NEW} event reg-again#0 refused: {rule}", rule))
    assert world.record().model_type == "classification"


@pytest.mark.parametrize("world", ["new PROPOSAL"], indirect=True)
def test_propose_records_metadata_features_and_documents_in_order(world: Run) -> None:
    now = START + HOUR
    metadata = valid_metadata(NEW, "PP-fraud-2.0.0-r2", T0)
    features = {"transaction_amount_usd": "float64", "account_age_days": "int64"}
    proposal = markdown("Fraud model v2 proposal, revised", SPEC_SECTIONS["proposal"])
    analysis = "# Feature analysis\n\nIV of the 2 remaining features.\n"
    received = world.command(Propose, "prop", "GID-02", now, metadata=metadata, features=features,
                             documents=[DocumentIn(stage=Stage.PROPOSAL, name="proposal", text=proposal),
                                        DocumentIn(stage=Stage.PROTOTYPE, name="feature_analysis", text=analysis)],
                             artifact_sha256=artifact_of("2.0.0-r2"))
    body = world.decide(received, now).body
    common: dict[str, Any] = {"at": now, "actor": "GID-02", "model": MODEL, "version": NEW}
    assert body == EntryBody(
        at=now, input=received.input, outcome="applied",
        facts=[MetadataRecorded(event_id="prop#0", metadata=metadata, **common),
               FeaturesRecorded(event_id="prop#1", features=features, feature_linkage=PASS, **common),
               DocumentRecorded(event_id="prop#2", stage=Stage.PROPOSAL, name="proposal", text=proposal, **common),
               DocumentRecorded(event_id="prop#3", stage=Stage.PROTOTYPE, name="feature_analysis", text=analysis,
                                **common),
               ArtifactRecorded(event_id="prop#4", sha256=artifact_of("2.0.0-r2"), **common)])
    world.commit(body)
    record = world.record()
    assert (record.metadata, record.features, record.stage) == (metadata, features, Stage.PROPOSAL)
    assert record.documents[Stage.PROPOSAL]["proposal"] == proposal
    assert record.documents[Stage.PROTOTYPE]["feature_analysis"] == analysis
    assert world.state.artifacts[MODEL][NEW] == artifact_of("2.0.0-r2")


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
@pytest.mark.parametrize(("fields", "fact_id", "rule"), [
    # A closed stage's document (spec 9: the gate that left TRAINING judged it) spoils the valid SHADOW one.
    ({"documents": [DocumentIn(stage=Stage.SHADOW, name="shadow", text="# Shadow\n\nRewritten.\n"),
                    DocumentIn(stage=Stage.TRAINING, name="training", text="# Training\n\nRewritten.\n")]},
     "prop#1", "TRAINING documentation is closed: the version is already in SHADOW"),
    ({"metadata": valid_metadata(NEW, pack_id(NEW)),
      "documents": [DocumentIn(stage=Stage.SHADOW, name="shadow", text="# Shadow\n\nRewritten.\n")]},
     "prop#0", "metadata and features are settled once the version left TRAINING (it is SHADOW)"),
    ({"documents": [DocumentIn(stage=Stage.STAGING, name="canary_results", text="# Canary\n\nEarly.\n")],
      "artifact_sha256": artifact_of("rebuilt")},
     "prop#1", "the artifact is settled once the version left TRAINING (it is SHADOW); register a new version "
               "instead"),
], ids=["closed-document", "metadata", "artifact"])
def test_propose_is_refused_as_a_whole_when_any_part_is_refused(world: Run, fields: dict[str, Any],
                                                                 fact_id: str | None, rule: str) -> None:
    now = at_(world) + HOUR
    message = rule if fact_id is None else f"{MODEL}@{NEW} event {fact_id} refused: {rule}"
    assert_rejected(world, world.command(Propose, "prop", "GID-02", now, **fields), now, refusal(message, rule))
    assert world.record().documents == {Stage(s): d for s, d in complete_documents().items()}
    assert world.state.artifacts[MODEL][NEW] == artifact_of(NEW)


@pytest.mark.parametrize("world", ["new PROPOSAL"], indirect=True)
def test_evidence_for_an_unregistered_version_is_refused(world: Run) -> None:
    rule = "model 'fraud' version '9.9.9' is not registered; register it first"
    received = world.command(Propose, "prop", "GID-02", START, "9.9.9",
                             documents=[DocumentIn(stage=Stage.PROPOSAL, name="proposal", text="# P\n\nText.\n")])
    assert_rejected(world, received, START, refusal(rule, rule))


# ------------------------------------------------------------------------------------------------- approve


def test_gid02_approval_at_proposal_is_recorded(keys: tuple[Signer, TrustStore]) -> None:
    run = Run(rules(keys[0]), keys[1])
    register(run, NEW, T0, prototype_approval=None)
    received = run.command(Approve, "ok", "GID-02", T0 + HOUR, target=Stage.PROTOTYPE)
    body = run.decide(received, T0 + HOUR).body
    assert body == EntryBody(at=T0 + HOUR, input=received.input, outcome="applied",
                             facts=[approved("ok#0", T0 + HOUR, "GID-02", Stage.PROTOTYPE)])
    run.commit(body)
    # Approval is the exit criterion of PROPOSAL (spec 1.2); the move itself is the advance command's.
    assert run.record().approvals == [Approval(approver="GID-02", target=Stage.PROTOTYPE, event_id="ok#0",
                                               at=T0 + HOUR)]
    assert run.record().stage is Stage.PROPOSAL


@pytest.mark.parametrize("world", ["new PROTOTYPE"], indirect=True)
def test_approval_of_a_stage_already_reached_is_refused(world: Run) -> None:
    now = at_(world) + HOUR
    rule = "an approval for PROTOTYPE cannot apply to a version in PROTOTYPE"
    assert_rejected(world, world.command(Approve, "ok", "GID-02", now, target=Stage.PROTOTYPE), now,
                    refusal(f"{MODEL}@{NEW} event ok#0 refused: {rule}", rule))


@pytest.mark.parametrize("world", ["new STAGING ready"], indirect=True)
def test_gid08_approval_of_a_ready_canary_promotes_it_to_production(world: Run) -> None:
    now = at_(world) + 3 * DAY + HOUR
    received = world.command(Approve, "ok", "GID-08", now, target=Stage.PRODUCTION)
    body = world.decide(received, now).body
    assert body.proofpack is not None
    assert body.model_copy(update={"proofpack": None}) == EntryBody(
        at=now, input=received.input, outcome="applied",
        facts=[approved("ok#0", now, "GID-08", Stage.PRODUCTION),
               ProofPackRecorded(event_id="ok#1", at=now, actor=AUTOMATED, model=MODEL, version=NEW,
                                 proofpack_id=pack_id(NEW)),
               moved("ok#2", now, AUTOMATED, Stage.STAGING, Stage.PRODUCTION,
                     "GID-08 approval completed the production gate", approvals=("GID-08",), shadow=PASS,
                     staging=PASS)])
    world.commit(body)
    assert world.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.PRODUCTION}
    assert (world.line.production, world.line.previous_production) == (NEW, [OLD])
    assert at_(world) == now
    check_proofpack(world, body.proofpack, now, [("GID-02", "PROTOTYPE"), ("GID-02", "SHADOW"), ("GID-08", "STAGING"),
                                                 ("GID-08", "PRODUCTION")])


@pytest.mark.parametrize("world", ["new STAGING"], indirect=True)
def test_gid08_approval_without_a_staging_verdict_is_recorded_and_blocked(world: Run) -> None:
    now = at_(world) + 3 * DAY
    received = world.command(Approve, "ok", "GID-08", now, target=Stage.PRODUCTION)
    body = world.decide(received, now).body
    assert body == EntryBody(at=now, input=received.input, outcome="applied",
                             facts=[approved("ok#0", now, "GID-08", Stage.PRODUCTION)],
                             blocked=["[2.1] Staging gate not evaluated: no verdict, so no promotion"])
    world.commit(body)
    assert world.record().stage is Stage.STAGING and world.record().proofpack_id is None
    assert world.record().approvers_for(Stage.PRODUCTION) == {"GID-08"} and pack_id(NEW) not in world.state.proofpacks


@pytest.mark.parametrize("world", ["new STAGING"], indirect=True)
def test_gid08_approval_is_blocked_by_a_failed_staging_gate_and_the_staging_duration(world: Run) -> None:
    entered = at_(world)
    now = entered + DAY
    blocked = gate_blocked("staging-blocked", "STAGING", now, {"p99_latency_ms": "p99_latency_ms 612 >= 500"})
    received = world.event(blocked)
    body = world.decide(received, now).body
    gate = gate_record(blocked, passed=False, failures=("p99_latency_ms 612 >= 500",))
    assert body == EntryBody(at=now, input=received.input, outcome="recorded", gate=gate)
    world.commit(body)
    assert world.state.verdicts[MODEL][NEW]["STAGING"] == gate
    approval = world.command(Approve, "ok", "GID-08", now, target=Stage.PRODUCTION)
    body = world.decide(approval, now).body
    # Spec 2.1 STAGING: P99 latency < 500 ms blocks; spec 1.2: 3 days in STAGING.
    assert body == EntryBody(at=now, input=approval.input, outcome="applied",
                             facts=[approved("ok#0", now, "GID-08", Stage.PRODUCTION)],
                             blocked=["[2.1] p99_latency_ms 612 >= 500",
                                      too_early("STAGING", entered, now, SPEC_DAYS["STAGING"])])
    world.commit(body)
    assert world.record().stage is Stage.STAGING


@pytest.mark.parametrize("world", ["new STAGING"], indirect=True)
def test_approval_of_production_by_another_identity_does_not_promote(world: Run) -> None:
    now = at_(world) + 3 * DAY
    world.step(world.event(gate_ready("canary-ready", "STAGING", now)), now)
    received = world.command(Approve, "ok", "GID-02", now, target=Stage.PRODUCTION)
    body = world.decide(received, now).body
    assert body == EntryBody(at=now, input=received.input, outcome="applied",
                             facts=[approved("ok#0", now, "GID-02", Stage.PRODUCTION)])
    world.commit(body)
    assert world.record().stage is Stage.STAGING


def test_a_manifest_whose_key_is_revoked_since_blocks_production(worlds: dict[str, Run]) -> None:
    # Spec 6.3 "signature_verification: MANDATORY": checked again at the move, against the trust of that moment.
    run = worlds["old serving"].fork()
    build, _ = key()
    run.rules = replace(run.rules, trust=Trust(system=TrustStore([run.rules.signer.key, build.key])))
    entered = journey(run, OTHER, START, Stage.STAGING, artifact_signer=build)
    now = entered + 3 * DAY
    assert run.record(OTHER).artifact.key_id == build.key_id  # type: ignore[union-attr]
    revoked = build.key.model_copy(update={"revoked_at": now - HOUR, "revocation_reason": "build host compromised"})
    run.rules = replace(run.rules, trust=Trust(system=TrustStore([run.rules.signer.key, revoked])))
    run.step(run.event(gate_ready("canary-ready", "STAGING", now, OTHER)), now)
    received = run.command(Approve, "ok", "GID-08", now, OTHER, target=Stage.PRODUCTION)
    body = run.decide(received, now).body
    assert body.facts == [approved("ok#0", now, "GID-08", Stage.PRODUCTION, OTHER)]
    assert len(body.blocked) == 1 and body.blocked[0].startswith(
        f"[6.3] the artifact manifest of {MODEL}@{OTHER} does not verify now: "), body.blocked
    assert "revoked" in body.blocked[0]
    run.commit(body)
    assert run.record(OTHER).stage is Stage.STAGING and run.line.production == OLD


# ------------------------------------------------------------------------------------- escalate / resolve


@pytest.mark.parametrize("world", ["new PROPOSAL"], indirect=True)
def test_an_escalation_blocks_promotion_until_it_is_resolved(world: Run) -> None:
    raised_at, now = START + HOUR, START + DAY
    received = world.command(Escalate, "esc", "GID-08", raised_at, escalation_id="E-1", reason="bias review pending")
    body = world.decide(received, raised_at).body
    assert body == EntryBody(at=raised_at, input=received.input, outcome="applied", facts=[
        EscalationRaised(event_id="esc#0", at=raised_at, actor="GID-08", model=MODEL, version=NEW,
                         escalation_id="E-1", reason="bias review pending")])
    world.commit(body)
    assert world.record().open_escalations() == ("E-1",)
    rule = "[escalation] open escalation(s) ['E-1'] block promotion; resolve them first"
    assert_rejected(world, world.command(Advance, "adv", "GID-02", now), now, broken("PROPOSAL", "PROTOTYPE", rule))
    received = world.command(Resolve, "res", "GID-08", now, escalation_id="E-1", resolution="reviewed, no bias")
    body = world.decide(received, now).body
    assert body == EntryBody(at=now, input=received.input, outcome="applied", facts=[
        EscalationResolved(event_id="res#0", at=now, actor="GID-08", model=MODEL, version=NEW, escalation_id="E-1",
                           resolution="reviewed, no bias")])
    world.commit(body)
    escalation_ = world.record().escalations["E-1"]
    assert (escalation_.resolved_at, escalation_.resolution, world.record().open_escalations()) == (
        now, "reviewed, no bias", ())
    world.ok(world.command(Advance, "adv-2", "GID-02", now), now)
    assert world.record().stage is Stage.PROTOTYPE


@pytest.mark.parametrize("world", ["new PROPOSAL"], indirect=True)
def test_escalations_refused_by_the_registry(world: Run) -> None:
    now = START + HOUR
    world.ok(world.command(Escalate, "esc", "GID-08", now, escalation_id="E-1", reason="bias review pending"), now)
    rule = "escalation 'E-1' was already raised; use a new id"
    assert_rejected(world, world.command(Escalate, "esc-2", "GID-08", now, escalation_id="E-1", reason="again"), now,
                    refusal(f"{MODEL}@{NEW} event esc-2#0 refused: {rule}", rule))
    rule = "escalation 'E-9' is not open; nothing to resolve"
    assert_rejected(world, world.command(Resolve, "res", "GID-08", now, escalation_id="E-9", resolution="done"), now,
                    refusal(f"{MODEL}@{NEW} event res#0 refused: {rule}", rule))


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_an_escalation_event_raises_an_escalation_that_blocks_the_shadow_gate(world: Run) -> None:
    entered = at_(world)
    raised_at, until = entered + DAY, entered + 8 * DAY
    event = escalation("esc-event", raised_at, NEW, "integrity violations under review", until)
    received = world.event(event)
    body = world.decide(received, raised_at).body
    eid = str(event.event_id)
    assert body == EntryBody(at=raised_at, input=received.input, outcome="applied", facts=[
        EscalationRaised(event_id=f"{eid}#0", at=raised_at, actor=AUTOMATED, model=MODEL, version=NEW,
                         escalation_id=eid, until=until,
                         reason=f"integrity violations under review (raised by GID-08, until {until.isoformat()})")])
    world.commit(body)
    assert world.record().open_escalations() == (eid,)
    now = entered + 7 * DAY
    review(world, NEW, now)
    ready = gate_ready("shadow-ready", "SHADOW", now)
    body = world.step(world.event(ready), now)
    assert (body.outcome, body.facts, body.gate) == ("recorded", [], gate_record(ready))
    assert body.blocked == [f"[escalation] open escalation(s) ['{eid}'] block promotion; resolve them first"]
    assert world.record().stage is Stage.SHADOW


# --------------------------------------------------------------------------------------------------- advance


@pytest.mark.parametrize(("world", "stage", "approvals"), [
    ("new PROPOSAL", "PROPOSAL", ("GID-02",)),  # spec 7.1: Maggie's approval, carried by the fact
    ("new PROTOTYPE", "PROTOTYPE", ()),
    ("new TRAINING", "TRAINING", ("GID-02",)),  # spec 1.2: "Training approved", by Maggie
], indirect=["world"])
def test_advance_is_allowed_once_the_stage_minimum_has_passed(world: Run, stage: str,
                                                               approvals: tuple[str, ...]) -> None:
    now = at_(world) + SPEC_DAYS[stage] * DAY  # exactly the minimum: allowed
    if stage == "TRAINING":
        world.ok(world.command(Approve, "ok-training", "GID-02", now, target=Stage.SHADOW), now)
    received = world.command(Advance, "adv", "GID-02", now, reason="next step")
    body = world.decide(received, now).body
    assert body == EntryBody(at=now, input=received.input, outcome="applied", facts=[
        moved("adv#0", now, "GID-02", Stage(stage), Stage(NEXT[stage]), "next step", approvals=approvals)])
    world.commit(body)
    assert (world.record().stage, at_(world)) == (Stage(NEXT[stage]), now)
    assert world.record().history[-1].event_id == "adv#0"


@pytest.mark.parametrize(("world", "stage"), [("new PROPOSAL", "PROPOSAL"), ("new PROTOTYPE", "PROTOTYPE"),
                                              ("new TRAINING", "TRAINING")], indirect=["world"])
def test_advance_before_the_stage_minimum_is_refused(world: Run, stage: str) -> None:
    entered = at_(world)
    now = entered + SPEC_DAYS[stage] * DAY - timedelta(seconds=1)
    if stage == "TRAINING":
        world.ok(world.command(Approve, "ok-training", "GID-02", now, target=Stage.SHADOW), now)
    rule = too_early(stage, entered, now, SPEC_DAYS[stage])
    assert_rejected(world, world.command(Advance, "adv", "GID-02", now), now, broken(stage, NEXT[stage], rule))
    assert world.record().stage is Stage(stage)


def test_the_policys_minimum_durations_are_the_ones_applied(keys: tuple[Signer, TrustStore]) -> None:
    stricter = rules(keys[0])
    stricter = replace(stricter, policy=policy_with(**{"lifecycle.PROPOSAL.min_days": 2}))
    run = Run(stricter, keys[1])
    register(run, NEW, T0)
    now = T0 + DAY  # the spec's minimum, not this policy's
    assert_rejected(run, run.command(Advance, "adv", "GID-02", now), now,
                    broken("PROPOSAL", "PROTOTYPE", too_early("PROPOSAL", T0, now, 2)))


def _without(stage: str, name: str) -> dict[str, dict[str, str]]:
    docs = complete_documents()
    del docs[stage][name]
    return docs


def _proposal_without_risks() -> dict[str, dict[str, str]]:
    docs = complete_documents()
    docs["PROPOSAL"]["proposal"] = markdown("Proposal", SPEC_SECTIONS["proposal"], skip="risk_assessment")
    return docs


def _training_gaps() -> dict[str, dict[str, str]]:
    docs = _without("TRAINING", "training_config")
    docs["TRAINING"]["training"] = markdown("Training", SPEC_SECTIONS["training"]).replace(
        "Content about hyperparameters.", "TODO")
    return docs


@pytest.mark.parametrize(("docs", "stage", "rules_"), [
    (_proposal_without_risks(), "PROPOSAL",
     ["[9] PROPOSAL document 'proposal' (model proposal: goals, approach, risks) has no section 'risk_assessment'; "
      "add a heading such as '## Risk Assessment'"]),
    (_without("PROPOSAL", "proposal"), "PROPOSAL",
     ["[7.1] Model proposal document required: record the PROPOSAL document 'proposal'"]),
    (_without("PROTOTYPE", "baseline_metrics"), "PROTOTYPE",
     ["[1.2] Metrics baseline required: record the PROTOTYPE document 'baseline_metrics'"]),
    (_training_gaps(), "TRAINING",
     ["[9] TRAINING document 'training' (training report: data summary, hyperparameters) section "
      "'hyperparameters' is empty; write its content under the heading",
      "[9] TRAINING document 'training_config' (training config) is missing; record it as Markdown"]),
], ids=["proposal-section", "proposal", "baseline", "training"])
def test_advance_with_missing_documents_is_refused(worlds: dict[str, Run], docs: dict[str, dict[str, str]],
                                                   stage: str, rules_: list[str]) -> None:
    run = worlds["old serving"].fork()
    register(run, OTHER, START, docs=docs)
    now = START
    while run.record(OTHER).stage is not Stage(stage):
        now += SPEC_DAYS[run.record(OTHER).stage] * DAY
        advance(run, OTHER, now)
    now += SPEC_DAYS[stage] * DAY
    if stage == "TRAINING":
        run.ok(run.command(Approve, "ok-training", "GID-02", now, OTHER, target=Stage.SHADOW), now)
    assert_rejected(run, run.command(Advance, "adv", "GID-02", now, OTHER), now,
                    broken(stage, NEXT[stage], *rules_, version=OTHER))


def test_advance_without_maggies_approval_is_refused(worlds: dict[str, Run]) -> None:
    run = worlds["old serving"].fork()
    register(run, OTHER, START, prototype_approval="GID-08")  # spec 7.1 names Maggie (GID-02), not ALEX
    now = START + DAY
    assert_rejected(run, run.command(Advance, "adv", "GID-02", now, OTHER), now,
                    broken("PROPOSAL", "PROTOTYPE", "[7.1] Maggie (GID-02) approval required for PROTOTYPE",
                           version=OTHER))


_BLACK_BOX = ("[4.2] model_type 'XGBoost' is a black-box model: black-box models (XGBoost, RandomForest, etc.) "
              "cannot be used (spec 11); retrain as a glass-box type: EBM, GAM, LogisticRegression, MonotoneGBDT")


@pytest.mark.parametrize(("changes", "rules_"), [
    ({"version": "3.0.1", "training_data_hash": None, "lineage": None},
     ["[4.2] Missing required fields: ['training_data_hash', 'lineage']",
      "[4] metadata version '3.0.1' is not the registered version '3.0.0'"]),
    ({"model_type": "XGBoost"},
     ["[4.2] Invalid model_type: XGBoost. Allowed: ['EBM', 'GAM', 'LogisticRegression', 'MonotoneGBDT']", _BLACK_BOX]),
], ids=["fields-version", "black-box"])
@pytest.mark.parametrize("command", [Register, Propose])
def test_invalid_metadata_is_refused_when_recorded_naming_every_violation(worlds: dict[str, Run],
                                                                          changes: dict[str, Any], rules_: list[str],
                                                                          command: type[Any]) -> None:
    # Issue 14 point 9: before, register accepted it without a word and only the SHADOW gate refused it.
    run = worlds["old serving"].fork()
    if command is Propose:
        register(run, OTHER, START)
    metadata = valid_metadata(OTHER, pack_id(OTHER), START - 3 * DAY)
    metadata = {k: v for k, v in {**metadata, **changes}.items() if v is not None}
    fields = {"model_type": "classification"} if command is Register else {}
    message = f"metadata of {MODEL}@{OTHER} refused, {len(rules_)} violation(s): " + "; ".join(rules_)
    assert_rejected(run, run.command(command, "rec", "GID-02", START, OTHER, metadata=metadata, **fields), START,
                    refusal(message, *rules_))


def test_advance_to_shadow_with_unlinked_features_is_refused(worlds: dict[str, Run]) -> None:
    run = worlds["old serving"].fork()
    features = {**MODEL_FEATURES, "device_fingerprint": "string", "card_present": "int64"}
    register(run, OTHER, START, features=features)
    advance(run, OTHER, START + DAY)
    advance(run, OTHER, START + 4 * DAY)
    now = START + 6 * DAY
    run.ok(run.command(Approve, "ok-training", "GID-02", now, OTHER, target=Stage.SHADOW), now)
    assert_rejected(run, run.command(Advance, "adv", "GID-02", now, OTHER), now, broken(
        "TRAINING", "SHADOW", "[5.2] Model uses features not in catalog: {'device_fingerprint'}",
        "[5.2] Feature 'card_present' dtype mismatch: catalog=bool, model=int64", version=OTHER))


@pytest.mark.parametrize(("world", "target", "rejection"), [
    ("new PROPOSAL", Stage.SHADOW, broken(
        "PROPOSAL", "SHADOW", "[1.1] transition PROPOSAL -> SHADOW is not allowed; allowed from PROPOSAL: PROTOTYPE")),
    # A stale request: the version already moved where it asks to go.
    ("new PROTOTYPE", Stage.PROTOTYPE, broken(
        "PROTOTYPE", "PROTOTYPE",
        "[1.1] transition PROTOTYPE -> PROTOTYPE is not allowed; allowed from PROTOTYPE: TRAINING")),
    ("new SHADOW", Stage.TRAINING, broken(
        "SHADOW", "TRAINING",
        "[1.1] transition SHADOW -> TRAINING is not allowed; allowed from SHADOW: STAGING, RETIRED")),
    ("new serving", None, refusal(
        "[1.1] PRODUCTION has no next stage; to retire it use `--to RETIRED --reason ...`",
        "[1.1] PRODUCTION has no next stage; to retire it use `--to RETIRED --reason ...`")),
], indirect=["world"], ids=["skip", "stale", "back", "from-production"])
def test_advance_to_a_stage_that_is_not_next_is_refused(world: Run, target: Stage | None,
                                                         rejection: Rejection) -> None:
    now = at_(world) + 30 * DAY
    stage = world.record().stage
    assert_rejected(world, world.command(Advance, "adv", "GID-08", now, target=target), now, rejection)
    assert world.record().stage is stage


@pytest.mark.parametrize("world", ["new SHADOW"], indirect=True)
def test_a_shadow_version_is_retired_with_a_reason_only(world: Run) -> None:
    now = at_(world) + HOUR  # no minimum duration, no gate: spec 1.1 SHADOW -> RETIRED
    assert_rejected(world, world.command(Advance, "adv", "GID-08", now, target=Stage.RETIRED), now,
                    broken("SHADOW", "RETIRED", "[8.2] a rollback or retirement needs a reason"))
    received = world.command(Advance, "adv-2", "GID-08", now, target=Stage.RETIRED, reason="superseded by 3.0.0")
    body = world.decide(received, now).body
    assert body == EntryBody(at=now, input=received.input, outcome="applied", facts=[
        moved("adv-2#0", now, "GID-08", Stage.SHADOW, Stage.RETIRED, "superseded by 3.0.0")])
    world.commit(body)
    assert world.stages() == {OLD: Stage.PRODUCTION, NEW: Stage.RETIRED} and world.line.production == OLD
