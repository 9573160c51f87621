"""The audit trail: an append-only, hash-chained log of signed entries on the lifecycle topic.

One entry per input the governance consumer handled (a command, a gate or rollback event, a rejected
message). Each entry is a signed record (``Context.AUDIT_ENTRY``) whose payload is an
:class:`AuditEntry`::

    {"seq": 17, "prev_hash": "<SHA-256 hex of entry 16's canonical bytes>", "at": "...",
     "input": {"topic": "governance.commands", "partition": 0, "offset": 41, "digest": "...",
               "kind": "command", "id": "<command id>", "type": "advance", "actor": "GID-08"},
     "outcome": "applied" | "recorded" | "rejected",
     "facts": [ledger events applied to the registry, in order],
     "gate": {verdict of a GateReady / GateBlocked} | null,
     "rollback": {the spec 8.2 rollback record, status COMPLETED / FAILED / ...} | null,
     "proofpack": {signed ProofPack record} | null,
     "artifact": {"model", "version", "sha256"} | null,
     "rejection": {"reason", "message", "rules"} | null,
     "blocked": [rules that kept an automatic step (a promotion) from happening]}

``seq`` starts at 0 and grows by one; ``prev_hash`` of entry 0 is 64 zeros (:data:`GENESIS`); the hash
of an entry (:func:`entry_hash`) is the SHA-256 of the canonical JSON of the whole signed record, so the
next entry commits to the previous one's payload and signature.

Guarantees: :func:`verify_chain` checks every entry in order (signature under ``Context.AUDIT_ENTRY``
against the trust store, schema, ``seq`` continuity, hash link) and reports the FIRST broken entry with
the reason; a tampered, reordered, missing, inserted or re-signed entry is found (a re-signed tampered
entry breaks the next entry's link; a truncated tail is not detectable without an external anchor of
the head hash, which :class:`ChainReport` gives). Writing (:class:`governance.service.auditlog.AuditWriter`)
is for the single active consumer only: it seals with the next ``seq`` and the head hash it was given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from governance.contract.publishing import decode_record
from governance.crypto.keys import TrustStore
from governance.crypto.record import record_bytes, sign_record, verify_record
from governance.crypto.schedule import DEFAULT_SCHEDULE, Phase
from governance.crypto.signing import Context, Signer
from governance.errors import CryptoError, EventValidationError
from governance.lifecycle.ledger import Event, UtcDatetime

__all__ = [
    "GENESIS",
    "ArtifactDigest",
    "AuditEntry",
    "ChainReport",
    "EntryBody",
    "GateRecord",
    "Input",
    "EntryOutcome",
    "RejectReason",
    "Rejection",
    "RollbackRecord",
    "RollbackStatus",
    "entry_hash",
    "parse_entry",
    "seal",
    "verify_chain",
]

GENESIS = "0" * 64
EntryOutcome = Literal["applied", "recorded", "rejected"]
RejectReason = Literal["unsigned", "unknown_key", "bad_signature", "expired", "replayed", "invalid", "refused"]
RollbackStatus = Literal["COMPLETED", "FAILED", "SCHEDULED", "MANUAL_REVIEW"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Input(_Model):
    """Where an entry's input came from and what it claimed to be (claims of a rejected input are unverified)."""

    topic: str
    partition: int
    offset: int
    digest: str
    kind: Literal["command", "event", "unknown"] = "unknown"
    id: str | None = None
    type: str | None = None
    actor: str | None = None

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}"


class Rejection(_Model):
    reason: RejectReason
    message: str
    rules: list[str] = []


class GateRecord(_Model):
    """A verified gate decision (GateReady / GateBlocked) about one candidate version."""

    event_id: str
    model: str
    version: str
    production_version: str
    stage: str
    gate: str
    passed: bool
    failures: list[str] = []
    ts: UtcDatetime
    policy_hash: str
    event: dict[str, JsonValue]


class RollbackRecord(_Model):
    """The spec 8.2 rollback record, with the steps taken and how long they took."""

    model: str
    from_version: str
    to_version: str | None
    reason: str
    initiated_by: str
    trigger: str
    action: str = "immediate"
    status: RollbackStatus
    error: str | None = None
    steps: list[str] = []
    started_at: UtcDatetime
    finished_at: UtcDatetime
    routing_offset: int | None = None


class ArtifactDigest(_Model):
    model: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class EntryBody(_Model):
    """Everything an entry says except its place in the chain."""

    at: UtcDatetime
    input: Input
    outcome: EntryOutcome
    facts: list[Event] = []
    gate: GateRecord | None = None
    rollback: RollbackRecord | None = None
    proofpack: dict[str, JsonValue] | None = None
    artifact: ArtifactDigest | None = None
    rejection: Rejection | None = None
    blocked: list[str] = []


class AuditEntry(EntryBody):
    seq: int = Field(ge=0)
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


def entry_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical bytes of a signed entry record (payload and signatures)."""
    return hashlib.sha256(record_bytes(record)).hexdigest()


def seal(body: EntryBody, seq: int, prev_hash: str, signer: Signer, now: datetime) -> dict[str, Any]:
    """The signed record of ``body`` as entry ``seq`` after the entry hashed ``prev_hash``."""
    entry = AuditEntry(**dict(body), seq=seq, prev_hash=prev_hash)
    return sign_record(entry.model_dump(mode="json"), Context.AUDIT_ENTRY, signer, now)


def parse_entry(payload: Mapping[str, Any]) -> AuditEntry:
    """The entry in a verified payload; :class:`EventValidationError` naming the first bad field."""
    try:
        return AuditEntry.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<entry>"
        raise EventValidationError(f"audit entry: {where}: {first['msg']}", field=where) from None


@dataclass(frozen=True)
class ChainReport:
    """The result of :func:`verify_chain`: ``ok``, or where and why the chain first breaks."""

    ok: bool
    entries: int
    head: str
    broken_index: int | None = None
    broken_seq: int | None = None
    problem: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"audit log OK: {self.entries} entries, head {self.head}"
        where = f"entry #{self.broken_index}" + (f" (seq {self.broken_seq})" if self.broken_seq is not None else "")
        return f"audit log BROKEN at {where}: {self.problem} ({self.entries} entries before it verified)"


def verify_chain(
    records: Iterable[bytes | Mapping[str, Any]],
    trust_store: TrustStore,
    now: datetime,
    phase: Phase | None = None,
) -> ChainReport:
    """Verify signatures, schema, seq continuity and hash links in order; report the first break."""
    phase = phase if phase is not None else DEFAULT_SCHEDULE.phase_at(now)
    head, count = GENESIS, 0
    for index, item in enumerate(records):
        seq: int | None = None
        try:
            record = decode_record(item) if isinstance(item, bytes) else dict(item)
            raw_seq = record.get("payload", {}).get("seq") if isinstance(record.get("payload"), dict) else None
            seq = raw_seq if isinstance(raw_seq, int) else None
            entry = parse_entry(verify_record(record, Context.AUDIT_ENTRY, trust_store, now, phase))
        except (CryptoError, EventValidationError) as exc:
            return ChainReport(False, count, head, index, seq, f"{type(exc).__name__}: {exc}")
        if entry.seq != index:
            problem = f"seq {entry.seq} where {index} was expected (an entry is missing, inserted or reordered)"
            return ChainReport(False, count, head, index, entry.seq, problem)
        if entry.prev_hash != head:
            problem = f"prev_hash {entry.prev_hash[:16]}... does not match entry #{index - 1}'s hash {head[:16]}..."
            return ChainReport(False, count, head, index, entry.seq, problem)
        head, count = entry_hash(record), count + 1
    return ChainReport(True, count, head)
