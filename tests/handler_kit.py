"""Driving :func:`governance.lifecycle.handler.handle` without servers: inputs, keys, the fold, a journey.

A :class:`Run` holds a governance state and does what the consumer does with one input, minus Kafka and
Redis: build the verified input (:class:`~governance.lifecycle.intake.Received`, as intake hands it over),
``handle`` it, seal the entry with a real ML-DSA-65 key and fold it into the state
(:func:`governance.lifecycle.state.fold`). Rollback plans are executed by the real
:func:`governance.service.rollback.execute_rollback` on :class:`MemoryRouting`, an in-memory routing topic
that signs and verifies assignments like the real one.

:func:`journey` takes a version from registration to a stage the way people and the worker would, each stage
left exactly when the spec's minimum duration (:data:`SPEC_DAYS`) has passed; every step must be applied
with nothing blocked, so a broken step fails loudly where it happens. :func:`history` saves the states
along one such history for the tests to fork. The last section builds expected entries and facts.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

from governance.contract.events import Escalation, Evidence, GateBlocked, GateReady, RollbackTrigger, Versions
from governance.contract.findings import Check
from governance.contract.stages import ModelType, Stage
from governance.crypto.algorithms import Algorithm
from governance.crypto.canonical import canonical_bytes
from governance.crypto.keys import KeyPolicy, TrustStore, generate_key
from governance.crypto.manifest import digest_bytes
from governance.crypto.record import sign_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signer
from governance.lifecycle.audit import EntryBody, GateRecord, Input, Rejection, entry_hash, parse_entry, seal
from governance.lifecycle.commands import (
    COMMAND_TTL,
    Advance,
    Approve,
    DocumentIn,
    Escalate,
    Propose,
    Register,
    Resolve,
)
from governance.lifecycle.handler import Plan, handle
from governance.lifecycle.identities import Trust
from governance.lifecycle.intake import Received
from governance.lifecycle.ledger import ApprovalRecorded, Transitioned
from governance.lifecycle.machine import Assessment
from governance.lifecycle.promotion import Rules
from governance.lifecycle.proofpack import verify_proofpack
from governance.lifecycle.registry import ModelLine, ModelVersion
from governance.lifecycle.routing import Assignment, decode_assignment, encode_assignment
from governance.lifecycle.state import GovernanceState, fold
from governance.policy.catalog import load_catalog
from governance.policy.document import load_policy
from governance.service.rollback import execute_rollback
from tests.lifecycle_samples import MODEL_FEATURES, complete_documents, valid_metadata

__all__ = [
    "APPROVALS", "AUTOMATED", "COMMANDS", "DAY", "GATES", "HOUR", "MODEL", "NEW", "NEXT", "OLD", "OTHER", "PASS",
    "ROLLBACKS", "SPEC_DAYS", "SPEC_SHADOW_DAYS", "START", "T0", "MemoryRouting", "Run", "advance", "approved",
    "artifact_bytes", "artifact_of", "assert_rejected", "at_", "broken", "check_proofpack", "documents", "escalation",
    "event_id", "gate_blocked", "gate_ready", "gate_record", "history", "journey", "key", "manifest_of", "moved",
    "pack_id",
    "refusal", "register", "review", "rollback_trigger", "rules", "shipped_policy_hash", "too_early",
]

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
MODEL = "fraud"
OLD, NEW, OTHER = "1.0.0", "2.0.0", "3.0.0"
COMMANDS, APPROVALS = "governance.commands", "governance.approvals"
GATES, ROLLBACKS = "shadow.gates", "shadow.rollbacks"
AUTOMATED = "ALEX_AUTOMATED"
_EVENT_NS = uuid.UUID("5d1f4c1e-2f39-4a8e-8f0f-2f1f0b3c9a10")

# Spec 1.2 minimum days in each stage, with SHADOW by model type (spec 3.1); written here, not read from code.
SPEC_DAYS: Mapping[str, int] = {"PROPOSAL": 1, "PROTOTYPE": 3, "TRAINING": 2, "STAGING": 3}
SPEC_SHADOW_DAYS: Mapping[str, int] = {"risk_scoring": 14, "classification": 7, "anomaly_detection": 21,
                                       "ranking": 14}


PASS = Assessment(passed=True)
HOUR = timedelta(hours=1)
START = T0 + 20 * DAY  # NEW is registered while OLD serves
NEXT = {"PROPOSAL": "PROTOTYPE", "PROTOTYPE": "TRAINING", "TRAINING": "SHADOW"}


def artifact_of(version: str) -> str:
    return hashlib.sha256(artifact_bytes(version)).hexdigest()


def pack_id(version: str) -> str:
    return f"PP-{MODEL}-{version}"


def key(created: datetime = T0 - DAY) -> tuple[Signer, TrustStore]:
    """A fresh ML-DSA-65 key valid from ``created`` for 97 days (90 + 7 overlap), and its trust store."""
    info, secret = generate_key(Algorithm.ML_DSA_65, created, KeyPolicy())
    return Signer(info, secret), TrustStore([info])


def rules(signer: Signer, store: TrustStore | None = None) -> Rules:
    """The shipped policy (the spec's tables), the shipped feature catalog, a 5 % canary; artifact manifests
    verified against ``store`` (default: the signer's own key)."""
    return Rules(policy=load_policy(), catalog=load_catalog(), canary_share=0.05, signer=signer,
                 trust=Trust(system=store or TrustStore([signer.key])))


def artifact_bytes(version: str) -> bytes:
    return f"{MODEL}-{version}.ebm".encode()


def manifest_of(version: str, signer: Signer, at: datetime) -> dict[str, Any]:
    """The signed manifest of ``version``'s artifact (``shadowgate sign``), as `model register --artifact` sends it."""
    return sign_record(digest_bytes(artifact_bytes(version)).as_payload("model.ebm"), Context.ARTIFACT, signer, at)


@cache
def shipped_policy_hash() -> str:
    return load_policy().hash()


def event_id(name: str) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NS, name)


def _check(name: str, value: float, threshold: float, outcome: Literal["PASS", "FAIL"] = "PASS",
           message: str | None = None) -> Check:
    return Check(name=name, outcome=outcome, value=value, threshold=threshold, comparator=">=", enforcement="BLOCK",
                 message=message or f"{name} {value} < {threshold}")


def gate_ready(name: str, stage: Literal["SHADOW", "STAGING"], at: datetime, version: str = NEW,
               production: str = OLD, policy_hash: str | None = None) -> GateReady:
    role: Literal["shadow", "canary"] = "shadow" if stage == "SHADOW" else "canary"
    return GateReady(event_id=event_id(name), ts=at, expires_at=at + timedelta(hours=1), model=MODEL,
                     versions=Versions(production=production, candidate=version, role=role),
                     evidence=Evidence(policy_hash=policy_hash or shipped_policy_hash(),
                                       checks=[_check("mean_abs_delta", 0.02, 0.15)]),
                     gate="shadow_completion" if stage == "SHADOW" else "staging", stage=stage)


def gate_blocked(name: str, stage: Literal["SHADOW", "STAGING"], at: datetime, failures: Mapping[str, str],
                 version: str = NEW, production: str = OLD, policy_hash: str | None = None) -> GateBlocked:
    role: Literal["shadow", "canary"] = "shadow" if stage == "SHADOW" else "canary"
    checks = [_check(check, 1.0, 0.5, "FAIL", message) for check, message in failures.items()]
    return GateBlocked(event_id=event_id(name), ts=at, expires_at=at + timedelta(hours=1), model=MODEL,
                       versions=Versions(production=production, candidate=version, role=role),
                       evidence=Evidence(policy_hash=policy_hash or shipped_policy_hash(), checks=checks),
                       gate="shadow_completion" if stage == "SHADOW" else "staging", stage=stage, verdict="BLOCKED",
                       failing_checks=checks)


def rollback_trigger(name: str, at: datetime, from_version: str, to_version: str | None,
                     action: Literal["immediate", "scheduled", "manual_review"] = "immediate",
                     trigger: str = "error_rate", reason: str = "error rate 3.1 % > 1 % for 5 min",
                     candidate: str | None = None) -> RollbackTrigger:
    versions = Versions(production=to_version or from_version, candidate=candidate,
                        role="canary" if candidate else None)
    return RollbackTrigger(event_id=event_id(name), ts=at, expires_at=at + timedelta(hours=1), model=MODEL,
                           versions=versions, evidence=Evidence(policy_hash=shipped_policy_hash()), trigger=trigger,
                           action=action, reason=reason, from_version=from_version, to_version=to_version)


def escalation(name: str, at: datetime, candidate: str | None, reason: str, until: datetime) -> Escalation:
    versions = Versions(production=OLD, candidate=candidate, role="shadow" if candidate else None)
    return Escalation(event_id=event_id(name), ts=at, expires_at=at + timedelta(hours=1), model=MODEL,
                      versions=versions, evidence=Evidence(policy_hash=shipped_policy_hash()), raised_by="GID-08",
                      reason=reason, blocks_until=until)


def documents(stages: Mapping[str, Mapping[str, str]] | None = None) -> list[DocumentIn]:
    """Every stage's documents, complete (spec 9), as a propose command carries them."""
    chosen = complete_documents() if stages is None else stages
    return [DocumentIn(stage=Stage(stage), name=name, text=text) for stage, docs in chosen.items()
            for name, text in docs.items()]


class MemoryRouting:
    """The routing topic of one test: signed assignments in a list, read back and verified like Kafka's."""

    topic = "model.routing"

    def __init__(self, signer: Signer, store: TrustStore, fail: bool = False) -> None:
        self.signer, self.store, self.fail = signer, store, fail
        self.records: list[bytes] = []

    def publish(self, assignment: Assignment, now: datetime) -> tuple[int, int]:
        if self.fail:
            raise AssertionError(f"nothing may be published here; got {assignment}")
        self.records.append(encode_assignment(assignment, self.signer, now))
        return 0, len(self.records) - 1

    def read_back(self, partition: int, offset: int, trust_store: TrustStore, now: datetime,
                  phase: Phase) -> Assignment:
        return decode_assignment(self.records[offset], trust_store, now, phase)

    def published(self, now: datetime) -> list[Assignment]:
        """Every assignment published, verified at ``now``."""
        return [decode_assignment(raw, self.store, now, Phase.PQC_ONLY) for raw in self.records]


@dataclass
class Run:
    """A governance state and the next offset of every input topic; see the module docstring."""

    rules: Rules
    store: TrustStore
    state: GovernanceState = field(default_factory=GovernanceState)
    offsets: dict[str, int] = field(default_factory=dict)

    def fork(self) -> Run:
        """An independent copy (states are values: ``handle`` and ``fold`` never change their input)."""
        return Run(self.rules, self.store, self.state, dict(self.offsets))

    # --------------------------------------------------------------------------------- inputs

    def _input(self, topic: str, kind: Literal["command", "event"], input_id: str, type_: str, actor: str) -> Input:
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        digest = hashlib.sha256(f"{topic}|{offset}|{input_id}".encode()).hexdigest()
        return Input(topic=topic, partition=0, offset=offset, digest=digest, kind=kind, id=input_id, type=type_,
                     actor=actor)

    def command(self, kind: type[Any], command_id: str, identity: str, at: datetime, version: str = NEW,
                **fields: Any) -> Received:
        """A verified command of ``kind`` (issued at ``at``) as intake hands it to ``handle``."""
        command = kind(command_id=command_id, identity=identity, issued_at=at, expires_at=at + COMMAND_TTL,
                       model=MODEL, version=version, **fields)
        topic = APPROVALS if kind in (Approve, Escalate, Resolve) else COMMANDS
        return Received(self._input(topic, "command", command_id, command.command, identity), command=command)

    def event(self, event: GateReady | GateBlocked | RollbackTrigger | Escalation) -> Received:
        """A verified event as intake hands it to ``handle`` (signed by the system key)."""
        topic = ROLLBACKS if isinstance(event, RollbackTrigger) else GATES
        source = self._input(topic, "event", str(event.event_id), event.type, self.rules.signer.key_id)
        return Received(source, event=event)

    # --------------------------------------------------------------------------------- deciding

    def decide(self, received: Received, now: datetime) -> Plan:
        return handle(self.state, received, self.rules, now)

    def commit(self, body: EntryBody) -> GovernanceState:
        """Seal ``body`` as the next entry of the chain and fold it; returns the new state."""
        record = seal(body, self.state.seq + 1, self.state.head, self.rules.signer, body.at)
        self.state = self.state_after(record)
        return self.state

    def state_after(self, record: dict[str, Any]) -> GovernanceState:
        return fold(self.state, parse_entry(record["payload"]), entry_hash(record))

    def step(self, received: Received, now: datetime) -> EntryBody:
        """Handle ``received`` and commit its entry (an input that plans no rollback)."""
        plan = self.decide(received, now)
        assert plan.rollback is None, plan.rollback
        self.commit(plan.body)
        return plan.body

    def ok(self, received: Received, now: datetime) -> EntryBody:
        """:meth:`step` for a setup step, which must be applied with nothing blocked."""
        body = self.step(received, now)
        assert (body.outcome, body.blocked, body.rejection) == ("applied", [], None), body
        return body

    def roll_back(self, plan: Plan, now: datetime, routing: MemoryRouting | None = None) -> EntryBody:
        """Execute the plan's rollback as the consumer does (routing in memory) and commit the entry."""
        assert plan.rollback is not None
        routing = routing or MemoryRouting(self.rules.signer, self.store)
        trust = Trust(system=self.store)
        body, _ = execute_rollback(plan.rollback, plan.body, self.state, self.rules.canary_share,
                                   routing, trust, lambda: now)  # type: ignore[arg-type]
        self.commit(body)
        return body

    # --------------------------------------------------------------------------------- reading

    @property
    def line(self) -> ModelLine:
        return self.state.registry.models[MODEL]

    def record(self, version: str = NEW) -> ModelVersion:
        return self.state.registry.get(MODEL, version)

    def stages(self) -> dict[str, Stage]:
        return {version: record.stage for version, record in self.line.versions.items()}


def register(run: Run, version: str, at: datetime, *, model_type: ModelType = "classification",
             artifact: bool = True, metadata: dict[str, Any] | None = None,
             features: dict[str, str] | None = None, docs: Mapping[str, Mapping[str, str]] | None = None,
             prototype_approval: str | None = "GID-02", signed: bool = True,
             artifact_signer: Signer | None = None) -> None:
    """Register ``version`` with valid metadata, linked features, (by default) every stage's documents and its
    artifact signed by the system key (spec 6.3; ``signed`` False: the digest only)."""
    manifest = manifest_of(version, artifact_signer or run.rules.signer, at) if artifact and signed else None
    run.ok(run.command(Register, f"reg-{version}", "GID-02", at, version, model_type=model_type,
                       metadata=metadata if metadata is not None else valid_metadata(version, pack_id(version),
                                                                                     at - 3 * DAY),
                       features=features if features is not None else MODEL_FEATURES,
                       artifact_sha256=artifact_of(version) if artifact else None, artifact_manifest=manifest), at)
    run.ok(run.command(Propose, f"docs-{version}", "GID-02", at, version, documents=documents(docs)), at)
    if prototype_approval is not None:
        run.ok(run.command(Approve, f"ok-prototype-{version}", prototype_approval, at, version,
                           target=Stage.PROTOTYPE), at)


def advance(run: Run, version: str, at: datetime, identity: str = "GID-02") -> None:
    """Advance ``version`` to its next stage; out of TRAINING after GID-02's "training approved" (spec 1.2)."""
    stage = run.record(version).stage
    if stage is Stage.TRAINING:
        run.ok(run.command(Approve, f"ok-training-{version}", "GID-02", at, version, target=Stage.SHADOW), at)
    run.ok(run.command(Advance, f"advance-{version}-{stage}", identity, at, version), at)


def review(run: Run, version: str, at: datetime) -> EntryBody:
    """ALEX's (GID-08) shadow review of ``version`` (spec 9.2), before or after its shadow gate is READY."""
    return run.step(run.command(Approve, f"ok-review-{version}", "GID-08", at, version, target=Stage.STAGING), at)


def journey(run: Run, version: str, start: datetime, until: Stage, *, model_type: ModelType = "classification",
            production: str | None = OLD, artifact: bool = True, artifact_signer: Signer | None = None) -> datetime:
    """Take a new ``version`` from registration to ``until``, each stage left at its spec minimum.

    Reaching STAGING takes the shadow gate's READY; reaching PRODUCTION a READY canary gate (recorded,
    blocked by the missing approval) and then GID-08's approval, which promotes it. Returns the time of the
    last step.
    """
    register(run, version, start, model_type=model_type, artifact=artifact, artifact_signer=artifact_signer)
    at = start
    for stage in ("PROPOSAL", "PROTOTYPE", "TRAINING"):
        if run.record(version).stage is until:
            return at
        at += SPEC_DAYS[stage] * DAY
        advance(run, version, at)
    if until is Stage.SHADOW:
        return at
    at += SPEC_SHADOW_DAYS[model_type] * DAY
    review(run, version, at)
    run.ok(run.event(gate_ready(f"shadow-ready-{version}", "SHADOW", at, version, production or "none")), at)
    if until is Stage.STAGING:
        return at
    at += SPEC_DAYS["STAGING"] * DAY
    ready = run.step(run.event(gate_ready(f"staging-ready-{version}", "STAGING", at, version,
                                          production or "none")), at)
    assert ready.blocked == ["[7.1] ALEX (GID-08) production approval required"], ready.blocked
    run.ok(run.command(Approve, f"ok-production-{version}", "GID-08", at, version, target=Stage.PRODUCTION), at)
    assert run.record(version).stage is Stage.PRODUCTION
    return at


def history(signer: Signer, store: TrustStore) -> dict[str, Run]:
    """States along one history: OLD to PRODUCTION alone, then NEW from registration to PRODUCTION.

    Keys: ``old serving``, ``new PROPOSAL`` (documents and GID-02's approval recorded), ``new PROTOTYPE``,
    ``new TRAINING``, ``new SHADOW``, ``new STAGING`` (no canary verdict yet), ``new STAGING ready`` (READY
    canary gate recorded, promotion blocked by the missing approval) and ``new serving`` (NEW serves, OLD
    is the previous production version). Tests fork them.
    """
    run = Run(rules(signer, store), store)
    journey(run, OLD, T0, Stage.PRODUCTION, production=None)
    saved = {"old serving": run.fork()}
    register(run, NEW, START)
    saved["new PROPOSAL"] = run.fork()
    at = START
    for stage in ("PROPOSAL", "PROTOTYPE", "TRAINING"):
        at += SPEC_DAYS[stage] * DAY
        advance(run, NEW, at)
        saved[f"new {NEXT[stage]}"] = run.fork()
    at += 7 * DAY
    review(run, NEW, at)
    run.ok(run.event(gate_ready("shadow-ready", "SHADOW", at)), at)
    saved["new STAGING"] = run.fork()
    at += 3 * DAY
    run.step(run.event(gate_ready("staging-ready", "STAGING", at)), at)
    saved["new STAGING ready"] = run.fork()
    run.ok(run.command(Approve, "ok-production", "GID-08", at, target=Stage.PRODUCTION), at)
    saved["new serving"] = run.fork()
    return saved


# ------------------------------------------------------------------------------ expected entries


def at_(run: Run, version: str = NEW) -> datetime:
    """When ``version`` entered its stage."""
    return run.record(version).entered_stage_at


def refusal(message: str, *rules: str) -> Rejection:
    return Rejection(reason="refused", message=message, rules=list(rules))


def broken(stage: str, target: str, *rules: str, version: str = NEW) -> Rejection:
    """The rejection of a stage move refused by ``rules`` (decide_transition names every one)."""
    return refusal(f"{MODEL}@{version} {stage} -> {target} refused, {len(rules)} rule(s) broken: " + "; ".join(rules),
                   *rules)


def too_early(stage: str, entered: datetime, now: datetime, days: int) -> str:
    required = timedelta(days=days)
    return (f"[1.2] minimum duration in {stage} not met: {now - entered} elapsed of {required}; "
            f"the earliest exit is {(entered + required).isoformat()}")


def moved(fact_id: str, at: datetime, actor: str, source: Stage, target: Stage, reason: str = "", *,
          version: str = NEW, approvals: tuple[str, ...] = (), shadow: Assessment | None = None,
          staging: Assessment | None = None, rollback: bool = False, restored: str | None = None) -> Transitioned:
    return Transitioned(event_id=fact_id, at=at, actor=actor, model=MODEL, version=version, from_stage=source,
                        to_stage=target, reason=reason, rollback=rollback, restored_version=restored,
                        approvals=approvals, shadow_checklist=shadow, staging_gate=staging)


def approved(fact_id: str, at: datetime, identity: str, target: Stage, version: str = NEW) -> ApprovalRecorded:
    return ApprovalRecorded(event_id=fact_id, at=at, actor=identity, model=MODEL, version=version, approver=identity,
                            target=target)


def gate_record(event: Any, passed: bool = True, failures: tuple[str, ...] = ()) -> GateRecord:
    return GateRecord(event_id=str(event.event_id), model=MODEL, version=event.versions.candidate,
                      production_version=event.versions.production, stage=event.stage, gate=event.gate, passed=passed,
                      failures=list(failures), ts=event.ts, policy_hash=shipped_policy_hash(),
                      event=event.model_dump(mode="json"))


def assert_rejected(run: Run, received: Received, now: datetime, rejection: Rejection) -> None:
    """The entry is the rejection; after it the registry is unchanged and the input's id is remembered."""
    before = run.state
    body = run.decide(received, now).body
    assert body == EntryBody(at=now, input=received.input, outcome="rejected", rejection=rejection)
    after = run.commit(body)
    assert after.registry == before.registry and after.verdicts == before.verdicts
    assert after.rejections == {**before.rejections, "refused": before.rejections.get("refused", 0) + 1}
    assert after.seen[received.input.id or ""] == after.seq


def check_proofpack(run: Run, record: Any, now: datetime, approvals: list[tuple[str, str]]) -> None:
    """The ProofPack verifies under the system key and carries the version's evidence (spec 7.1, 10.9)."""
    pack = verify_proofpack(record, run.store, now, Phase.PQC_ONLY)
    assert (pack.proofpack_id, pack.model, pack.version, pack.generated_at) == (pack_id(NEW), MODEL, NEW, now)
    assert (pack.policy_id, pack.policy_hash) == ("GID-08-LIFECYCLE-V2", shipped_policy_hash())
    manifest = run.record(NEW).artifact.manifest  # type: ignore[union-attr]
    assert pack.artifact == {
        "sha256": artifact_of(NEW), "manifest_sha256": hashlib.sha256(canonical_bytes(manifest)).hexdigest(),
        "key_id": run.rules.signer.key_id, "signed_at": START.isoformat(),
        "verified_at": now.isoformat()}
    assert [(a["approver"], a["target"]) for a in pack.approvals] == approvals
    assert set(pack.gate_evidence) == {"SHADOW", "STAGING"}
    assert run.state.proofpacks[pack_id(NEW)] == record and run.record().proofpack_id == pack_id(NEW)
