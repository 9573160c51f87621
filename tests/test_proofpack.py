"""ProofPacks: built from the state's evidence, signed, encrypted at rest, generated only for a passing promotion."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from governance.contract.events import Evidence, GateReady, Versions
from governance.contract.findings import Check, StatResult
from governance.contract.stages import Stage
from governance.crypto.algorithms import Algorithm
from governance.crypto.canonical import canonical_bytes
from governance.crypto.hybrid import decrypt
from governance.crypto.keyring import Keyring
from governance.crypto.keys import KeyPolicy, TrustStore, generate_key
from governance.crypto.manifest import digest_bytes
from governance.crypto.record import sign_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signer
from governance.errors import PolicyViolation, VerificationError
from governance.lifecycle.audit import GateRecord
from governance.lifecycle.identities import Trust
from governance.lifecycle.ledger import ApprovalRecorded, ArtifactRecorded, Event
from governance.lifecycle.promotion import MoveRequest, Rules, promote_to_production
from governance.lifecycle.proofpack import build_proofpack, sign_proofpack, verify_proofpack, write_encrypted
from governance.lifecycle.registry import replay
from governance.lifecycle.state import GovernanceState
from governance.policy.catalog import load_catalog
from tests.governance_kit import fast_policy, lifecycle_facts
from tests.lifecycle_samples import complete_documents

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=10)
POLICY = fast_policy()
ARTIFACT = hashlib.sha256(b"model.ebm bytes").hexdigest()


@pytest.fixture(scope="module")
def keys() -> tuple[Signer, TrustStore]:
    info, secret = generate_key(Algorithm.ML_DSA_65, T0 - timedelta(days=1), KeyPolicy())
    return Signer(info, secret), TrustStore([info])


def _check(name: str, value: float) -> Check:
    return Check(name=name, outcome="PASS", value=value, threshold=0.5, comparator=">=", enforcement="BLOCK",
                 message=f"{name} ok")


def _gate(stage: str, checks: list[Check], statistics: list[StatResult]) -> GateRecord:
    event = GateReady(event_id=uuid.uuid4(), ts=T0, expires_at=T0 + timedelta(hours=1), model="fraud",
                      versions=Versions(production="1.0.0", candidate="2.0.0",
                                        role="shadow" if stage == "SHADOW" else "canary"),
                      evidence=Evidence(policy_hash=POLICY.hash(), checks=checks, statistics=statistics),
                      gate="shadow_completion" if stage == "SHADOW" else "staging", stage=stage)  # type: ignore[arg-type]
    return GateRecord(event_id=str(event.event_id), model="fraud", version="2.0.0", production_version="1.0.0",
                      stage=stage, gate=event.gate, passed=True, ts=T0, policy_hash=POLICY.hash(),
                      event=event.model_dump(mode="json"))


STATS = [StatResult(test="ks_2samp", n=30_000, n_other=30_000, statistic=0.011, p_value=0.62),
         StatResult(test="mean_abs_delta_ci", n=30_000, statistic=0.021, ci_low=0.0205, ci_high=0.0215,
                    confidence=0.95)]


def _state(approvers: tuple[str, ...] = ("GID-08",), artifact: bool = True, staging_passed: bool = True,
           extra: list[Event] | None = None) -> GovernanceState:
    facts = [*lifecycle_facts("fraud", "1.0.0", "PRODUCTION", T0), *lifecycle_facts("fraud", "2.0.0", "STAGING", T0)]
    artifacts = [fact for fact in extra or [] if isinstance(fact, ArtifactRecorded)]  # recorded before SHADOW
    registered = next(i for i, fact in enumerate(facts) if fact.version == "2.0.0")
    facts[registered + 1:registered + 1] = artifacts
    extra = [fact for fact in extra or [] if not isinstance(fact, ArtifactRecorded)]
    facts += [ApprovalRecorded(event_id=f"a-{who}", at=T0, model="fraud", version="2.0.0", approver=who,
                               target=Stage.PRODUCTION) for who in approvers]
    shadow = _gate("SHADOW", [_check("mean_abs_delta", 0.02), _check("auc_roc", 0.86),
                              _check("drift_severity_acceptable", 0.0), _check("metrics.p99_abs_delta", 0.1)], STATS)
    staging = _gate("STAGING", [_check("p99_latency_ms", 212.0), _check("kl_divergence", 0.01),
                                _check("feature_drift.amount", 0.01)], [])
    if not staging_passed:
        staging = staging.model_copy(update={"passed": False, "failures": ["p99_latency_ms: 612 >= 500"]})
    return GovernanceState(registry=replay([*facts, *(extra or [])]),
                           verdicts={"fraud": {"2.0.0": {"SHADOW": shadow, "STAGING": staging}}},
                           artifacts={"fraud": {"2.0.0": ARTIFACT}} if artifact else {})


def test_proofpack_gathers_the_evidence() -> None:
    pack = build_proofpack(_state(), "fraud", "2.0.0", NOW, POLICY.hash())
    assert pack.proofpack_id == "PP-2.0.0" and pack.artifact == {"sha256": ARTIFACT}
    assert pack.metadata["version"] == "2.0.0" and pack.features["card_present"] == "bool"
    assert set(pack.gate_evidence) == {"SHADOW", "STAGING"}
    assert pack.statistical_tests == [s.model_dump(mode="json") for s in STATS]
    drift: dict[str, list[Any]] = {}
    for stage, report in pack.drift_report.items():
        assert isinstance(report, dict) and isinstance(report["checks"], list)
        drift[stage] = [check["name"] for check in report["checks"] if isinstance(check, dict)]
    assert drift == {"SHADOW": ["mean_abs_delta", "drift_severity_acceptable", "metrics.p99_abs_delta"],
                     "STAGING": ["kl_divergence", "feature_drift.amount"]}
    assert [(a["approver"], a["target"]) for a in pack.approvals] == [("GID-08", "PRODUCTION")]
    docs = complete_documents()
    assert pack.documents["SHADOW"]["shadow"] == hashlib.sha256(docs["SHADOW"]["shadow"].encode()).hexdigest()
    assert set(pack.documents) == set(docs)


def test_proofpack_names_every_missing_piece() -> None:
    state = _state(artifact=False)
    record = state.registry.models["fraud"].versions["2.0.0"]
    record.metadata["proof_pack_id"] = "pp-lowercase"
    with pytest.raises(PolicyViolation) as refused:
        build_proofpack(state, "fraud", "2.0.0", NOW, POLICY.hash())
    assert len(refused.value.rules) == 2
    assert "proof_pack_id 'pp-lowercase'" in refused.value.rules[0] and "artifact digest" in refused.value.rules[1]


def test_signature_round_trip_and_refusals(keys: tuple[Signer, TrustStore]) -> None:
    signer, store = keys
    pack = build_proofpack(_state(), "fraud", "2.0.0", NOW, POLICY.hash())
    record = orjson.loads(orjson.dumps(sign_proofpack(pack, signer, NOW)))
    assert verify_proofpack(record, store, NOW, Phase.PQC_ONLY) == pack
    record["payload"]["artifact"]["sha256"] = "0" * 64
    with pytest.raises(VerificationError):
        verify_proofpack(record, store, NOW, Phase.PQC_ONLY)
    as_event = sign_record(pack.model_dump(mode="json"), Context.EVENT, signer, NOW)
    with pytest.raises(VerificationError, match="context"):
        verify_proofpack(as_event, store, NOW, Phase.PQC_ONLY)


def test_encrypted_copy_decrypts_to_the_signed_record(keys: tuple[Signer, TrustStore], tmp_path: Path) -> None:
    signer, _ = keys
    keyring = Keyring(tmp_path / "keys")
    now = datetime.now(UTC)
    kem = keyring.generate(now, Algorithm.ML_KEM_768)
    record = sign_proofpack(build_proofpack(_state(), "fraud", "2.0.0", NOW, POLICY.hash()), signer, NOW)
    path = write_encrypted(record, tmp_path / "packs", kem, now)
    assert path.name == "PP-2.0.0.proofpack.json.enc"
    assert canonical_bytes(record) not in path.read_bytes()
    assert decrypt(path.read_bytes(), keyring.secret_key(kem.key_id)) == canonical_bytes(record)


def _rules(signer: Signer) -> Rules:
    return Rules(policy=POLICY, catalog=load_catalog(), canary_share=0.05, signer=signer,
                 trust=Trust(system=TrustStore([signer.key])))


def _signed_artifact(signer: Signer) -> ArtifactRecorded:
    """2.0.0's artifact with its manifest signed by ``signer`` (spec 6.3), as the consumer records it."""
    manifest = sign_record(digest_bytes(b"model.ebm bytes").as_payload("model.ebm"), Context.ARTIFACT, signer, T0)
    return ArtifactRecorded(event_id="art", at=T0, model="fraud", version="2.0.0", sha256=ARTIFACT, manifest=manifest,
                            key_id=signer.key_id, signed_at=T0)


def _ids() -> Any:
    counter = iter(range(100))
    return lambda: f"cmd#{next(counter)}"


def test_promotion_generates_the_proofpack_only_when_everything_else_passes(keys: tuple[Signer, TrustStore]) -> None:
    signer, store = keys
    with pytest.raises(PolicyViolation) as refused:
        promote_to_production(_state(approvers=("GID-02",), artifact=False, staging_passed=False), _rules(signer),
                              MoveRequest("fraud", "2.0.0", Stage.PRODUCTION, "GID-08"), now=NOW, new_id=_ids())
    rules = refused.value.rules
    assert "[2.1] p99_latency_ms: 612 >= 500" in rules
    assert "[7.1] ALEX (GID-08) production approval required" in rules
    assert any("artifact digest" in rule for rule in rules)
    assert "[7.1] ProofPack artifact required" not in rules  # generated on promotion, not asked of people
    move = MoveRequest("fraud", "2.0.0", Stage.PRODUCTION, "GID-08")
    with pytest.raises(PolicyViolation, match=r"\[6.3\] fraud@2.0.0 has no registered artifact"):
        promote_to_production(_state(), _rules(signer), move, now=NOW, new_id=_ids())  # a digest, no signature
    state = _state(extra=[_signed_artifact(signer)])
    facts, signed = promote_to_production(state, _rules(signer), move, now=NOW, new_id=_ids())
    assert [f.kind for f in facts] == ["proofpack_recorded", "transitioned"]
    assert facts[1].to_stage is Stage.PRODUCTION  # type: ignore[union-attr]
    assert signed is not None
    pack = verify_proofpack(signed, store, NOW, Phase.PQC_ONLY)
    assert pack.proofpack_id == facts[0].proofpack_id == "PP-2.0.0"  # type: ignore[union-attr]
    # Issue 14 points 7 and 9: which policy judged it, and the artifact's signature as verified at promotion.
    assert (pack.policy_id, pack.policy_hash) == (POLICY.policy_id, POLICY.hash())
    manifest = state.registry.get("fraud", "2.0.0").artifact.manifest  # type: ignore[union-attr]
    assert pack.artifact == {"sha256": ARTIFACT,
                             "manifest_sha256": hashlib.sha256(canonical_bytes(manifest)).hexdigest(),
                             "key_id": signer.key_id, "signed_at": T0.isoformat(), "verified_at": NOW.isoformat()}
