"""ProofPacks: the signed evidence bundle generated before a version enters PRODUCTION (spec 4, 7.1, 10.9).

A ProofPack gathers, for one model version, what justified its promotion:

=================  ========================================================================================
field              content
=================  ========================================================================================
proofpack_id       the metadata's ``proof_pack_id`` (``PP-...``): the metadata names its ProofPack in advance
metadata           the version's ten metadata fields (spec 4) and its input features
gate_evidence      the verified gate decisions by stage (SHADOW: shadow completion, STAGING: staging gate),
                   each with the full event: checks with values and thresholds, windows and Kafka offsets
statistical_tests  the statistics of the shadow decision (KS, paired t, mean-|delta| interval)
drift_report       drift severity and every drift check (|delta| quantiles, KL, PSI, feature drift)
approvals          every approval recorded for the version (identity, target stage, time)
artifact           the SHA-256 of the model artifact registered for the version and its signed manifest
                   (spec 6.3): the manifest's SHA-256 (of its canonical bytes), the key that signed it,
                   when it was signed, and when the consumer verified it (the moment of promotion)
documents          SHA-256 of every stage document the gates judged
policy_id, _hash   the policy (id and hash) the decisions were made under
=================  ========================================================================================

It is signed with ``Context.PROOFPACK`` by the system key, kept in the audit log entry that records it
(so a rebuild restores it), materialised in Redis (``<prefix>:gov:proofpack:<id>``, see
:mod:`governance.service.statestore`) and, when the consumer is given a directory and an ML-KEM recipient, also
written encrypted (ML-KEM-768 + AES-256-GCM) as ``<id>.proofpack.json.enc`` (``shadowgate decrypt`` opens it).

Guarantees: :func:`build_proofpack` is pure and deterministic for a given state and time; it refuses
(PolicyViolation, every missing piece named) when the metadata names no valid ProofPack id or no
artifact digest was registered. :func:`verify_proofpack` checks the signature before parsing.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, JsonValue, StringConstraints, ValidationError

from governance.contract.stages import Stage
from governance.crypto.hybrid import encrypt
from governance.crypto.keys import KeyInfo, TrustStore
from governance.crypto.record import sign_record, verify_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signer
from governance.errors import EventValidationError, PolicyViolation
from governance.lifecycle.state import GovernanceState

__all__ = ["ProofPack", "build_proofpack", "sign_proofpack", "verify_proofpack", "write_encrypted"]

_DRIFT_WORDS = ("delta", "drift", "kl_divergence", "psi", "js_divergence")
_PP_ID = r"^PP-[A-Za-z0-9][A-Za-z0-9._-]*$"


class ProofPack(BaseModel):
    """The evidence bundle (see the module docstring for each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proofpack_id: Annotated[str, StringConstraints(pattern=_PP_ID)]
    model: str
    version: str
    generated_at: datetime
    policy_hash: str
    policy_id: str = ""  # empty in ProofPacks generated before it was recorded
    metadata: dict[str, JsonValue]
    features: dict[str, str]
    gate_evidence: dict[str, dict[str, JsonValue]]
    statistical_tests: list[JsonValue]
    drift_report: dict[str, JsonValue]
    approvals: list[dict[str, JsonValue]]
    artifact: dict[str, str]
    documents: dict[str, dict[str, str]]


def _checks(gate: dict[str, JsonValue]) -> list[JsonValue]:
    event = gate.get("event")
    evidence = event.get("evidence") if isinstance(event, dict) else None
    checks = evidence.get("checks") if isinstance(evidence, dict) else None
    return list(checks) if isinstance(checks, list) else []


def _statistics(gate: dict[str, JsonValue] | None) -> list[JsonValue]:
    event = gate.get("event") if gate else None
    evidence = event.get("evidence") if isinstance(event, dict) else None
    stats = evidence.get("statistics") if isinstance(evidence, dict) else None
    return list(stats) if isinstance(stats, list) else []


def _drift(gates: dict[str, dict[str, JsonValue]]) -> dict[str, JsonValue]:
    report: dict[str, JsonValue] = {}
    for stage, gate in sorted(gates.items()):
        drift: list[JsonValue] = [
            check
            for check in _checks(gate)
            if isinstance(check, dict) and any(word in str(check.get("name", "")) for word in _DRIFT_WORDS)
        ]
        report[stage] = {"gate": gate.get("gate"), "passed": gate.get("passed"), "checks": drift}
    return report


def _artifact(state: GovernanceState, model: str, version: str, now: datetime) -> dict[str, str] | None:
    """The artifact part: its digest and, when signed, the manifest's digest, key, signing and verifying time."""
    from governance.crypto.canonical import canonical_bytes

    record = state.registry.get(model, version).artifact
    if record is None:
        digest = state.artifacts.get(model, {}).get(version)
        return None if digest is None else {"sha256": str(digest)}
    part = {"sha256": record.sha256}
    if record.manifest is not None:
        part["manifest_sha256"] = hashlib.sha256(canonical_bytes(record.manifest)).hexdigest()
        part["key_id"] = str(record.key_id)
        part["signed_at"] = record.signed_at.isoformat() if record.signed_at else ""
        part["verified_at"] = now.isoformat()
    return part


def build_proofpack(state: GovernanceState, model: str, version: str, now: datetime, policy_hash: str,
                    policy_id: str = "") -> ProofPack:
    """The ProofPack of ``model@version`` from the state's evidence (see the module guarantees); ``now`` is also
    when the artifact's manifest was verified (the consumer verifies it in the same decision)."""
    record = state.registry.get(model, version)
    pack_id = record.metadata.get("proof_pack_id")
    artifact = _artifact(state, model, version, now)
    rules = []
    if not isinstance(pack_id, str) or not re.match(_PP_ID, pack_id):
        rules.append(f"[4] metadata proof_pack_id {pack_id!r} is not a ProofPack id; record metadata with 'PP-...'")
    if artifact is None:
        rules.append("[7.1] ProofPack needs the artifact digest: propose the version with --artifact FILE")
    if rules or artifact is None:
        raise PolicyViolation(f"ProofPack for {model}@{version} cannot be generated: " + "; ".join(rules), rules)
    gates = {
        stage: gate.model_dump(mode="json")
        for stage, gate in state.verdicts.get(model, {}).get(version, {}).items()
        if stage in (Stage.SHADOW, Stage.STAGING)
    }
    documents = {
        str(stage): {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(docs.items())}
        for stage, docs in record.documents.items()
    }
    approvals: list[dict[str, JsonValue]] = [
        {"approver": a.approver, "target": str(a.target), "event_id": a.event_id, "at": a.at.isoformat()}
        for a in record.approvals
    ]
    try:
        return ProofPack(
            proofpack_id=str(pack_id),
            model=model,
            version=version,
            generated_at=now,
            policy_hash=policy_hash,
            policy_id=policy_id,
            metadata=dict(record.metadata),
            features=dict(record.features),
            gate_evidence=gates,
            statistical_tests=_statistics(gates.get(Stage.SHADOW)),
            drift_report=_drift(gates),
            approvals=approvals,
            artifact=artifact,
            documents=documents,
        )
    except ValidationError as exc:
        rule = f"[4] ProofPack refused: {exc.errors()[0]['msg']}"
        raise PolicyViolation(rule, [rule]) from None


def sign_proofpack(pack: ProofPack, signer: Signer, now: datetime) -> dict[str, Any]:
    """The signed record of ``pack`` (``Context.PROOFPACK``)."""
    return sign_record(pack.model_dump(mode="json"), Context.PROOFPACK, signer, now)


def verify_proofpack(record: dict[str, Any], trust_store: TrustStore, now: datetime, phase: Phase) -> ProofPack:
    """The ProofPack in a signed record, after its signature verified."""
    payload = verify_record(record, Context.PROOFPACK, trust_store, now, phase)
    try:
        return ProofPack.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<proofpack>"
        raise EventValidationError(f"ProofPack: {where}: {first['msg']}", field=where) from None


def write_encrypted(record: dict[str, Any], directory: Path, recipient: KeyInfo, now: datetime) -> Path:
    """Encrypt the signed record to ``recipient`` (ML-KEM-768) into ``<directory>/<id>.proofpack.json.enc``."""
    from governance.crypto.canonical import canonical_bytes

    pack_id = str(record["payload"]["proofpack_id"])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{pack_id}.proofpack.json.enc"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encrypt(canonical_bytes(record), recipient, now))
    tmp.replace(path)
    return path
