"""The audit trail: an append-only, hash-chained log of signed entries on the lifecycle topic.

One entry per input the governance consumer handled (a command, a gate or rollback event), one summary
per input partition and interval for the inputs it rejected at intake, and the consumer's own records
(repairs, acknowledged foreign records, key revocations). Each entry is a signed record
(``Context.AUDIT_ENTRY``) whose payload is an :class:`AuditEntry`::

    {"seq": 17, "prev_hash": "<SHA-256 hex of entry 16's canonical bytes>", "at": "...",
     "input": {"topic": "governance.commands", "partition": 0, "offset": 41, "digest": "...",
               "kind": "command", "id": "<command id>", "type": "advance", "actor": "GID-08"},
     "outcome": "applied" | "recorded" | "rejected",
     "facts": [ledger events applied to the registry, in order],
     "gate": {verdict of a GateReady / GateBlocked} | null,
     "rollback": {the spec 8.2 rollback record, status COMPLETED / FAILED / ...} | null,
     "proofpack": {signed ProofPack record} | null,
     "artifact": {"model", "version", "sha256"} | null,
     "rejection": {"reason", "message", "rules"} | null,      # a command the lifecycle rules refused
     "blocked": [rules that kept an automatic step (a promotion) from happening],
     "warnings": [what is recorded but not yet valid, e.g. metadata that the SHADOW gate will refuse],
     "retry": {an automatic promotion blocked only by time: model, version, stage, due_at} | null,
     "rotated": [system keys the consumer rotated before they expired],
     "summary": {rejected inputs of one partition: offsets covered, count per reason, samples} | null,
     "repair": {void entries, acknowledged foreign records, where the chain continues, why} | null,
     "revoked": [keys whose revocation the consumer recorded: signatures by them after this entry are void]}

``seq`` starts at 0 and grows by one; ``prev_hash`` of entry 0 is 64 zeros (:data:`GENESIS`); the hash
of an entry (:func:`entry_hash`) is the SHA-256 of the canonical JSON of the whole signed record, so the
next entry commits to the previous one's payload and signature. A summary's ``input`` names its
partition and the last offset it covers (so a restart resumes after it); the consumer's own records have
``input.kind == "system"`` and cover no input.

Reading the log (which records form the chain, which are foreign, void or duplicates, the checkpoint
that anchors the head, repairs) is :mod:`governance.lifecycle.chain`. Writing
(:class:`governance.service.auditlog.AuditWriter`) is for the single active consumer only: it seals with
the next ``seq`` and the head hash it was given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError

from governance.crypto.record import record_bytes, sign_record
from governance.crypto.signing import Context, Signer
from governance.errors import EventValidationError
from governance.lifecycle.ledger import Event, UtcDatetime

__all__ = [
    "GENESIS",
    "AcknowledgedRecord",
    "ArtifactDigest",
    "AuditEntry",
    "EntryBody",
    "EntryOutcome",
    "GateRecord",
    "Input",
    "KeyRevocation",
    "KeyRotation",
    "RejectReason",
    "Rejection",
    "RejectionSample",
    "RejectionSummary",
    "Repair",
    "Retry",
    "RollbackRecord",
    "RollbackStatus",
    "VoidEntry",
    "entry_hash",
    "parse_entry",
    "seal",
    "system_input",
]

GENESIS = "0" * 64
EntryOutcome = Literal["applied", "recorded", "rejected"]
RejectReason = Literal[
    "unsigned", "unknown_key", "bad_signature", "expired", "replayed", "invalid", "future", "refused"
]
RollbackStatus = Literal["COMPLETED", "FAILED", "SCHEDULED", "MANUAL_REVIEW", "CANCELLED"]
_Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Input(_Model):
    """Where an entry's input came from and what it claimed to be (claims of a rejected input are unverified)."""

    topic: str
    partition: int
    offset: int
    digest: str
    kind: Literal["command", "event", "unknown", "system"] = "unknown"
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
    """A verified gate decision (GateReady / GateBlocked) about one candidate version.

    ``counts`` False: recorded only, it does not become the version's verdict for its stage (a stage the
    version has left, a policy other than the consumer's, a production version that no longer serves).
    """

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
    counts: bool = True


class RollbackRecord(_Model):
    """The spec 8.2 rollback record, with the steps taken and how long they took.

    ``SCHEDULED`` (a calibration breach, spec 8.1) runs at ``due_at`` unless a ``CANCELLED`` record for the same
    version comes first; ``error`` of a deferred record is what its plan found wrong already (e.g. no previous
    production version), kept so it is known before the rollback is due.
    """

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
    due_at: UtcDatetime | None = None


class ArtifactDigest(_Model):
    model: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class RejectionSample(_Model):
    """One rejected input as a summary keeps it (its claims are unverified)."""

    offset: int
    digest: str
    reason: RejectReason
    message: str
    kind: Literal["command", "event", "unknown", "system"] = "unknown"
    id: str | None = None
    type: str | None = None
    actor: str | None = None


class RejectionSummary(_Model):
    """The inputs of one partition rejected at intake, offsets ``first_offset..last_offset`` (not every offset
    in between need be a rejection: accepted inputs in between have entries of their own)."""

    first_offset: int
    last_offset: int
    count: int = Field(ge=1)
    counts: dict[RejectReason, int]
    samples: list[RejectionSample] = []


class VoidEntry(_Model):
    """A signed entry a repair declared void: it stays on the topic but is never part of the chain."""

    seq: int
    hash: _Sha256
    offset: int | None = None


class AcknowledgedRecord(_Model):
    """A record on the audit topic that is not an entry of the chain (junk, foreign-signed, a duplicate),
    noted by its digest (SHA-256 of the record's bytes) so `audit verify` reports it as acknowledged."""

    digest: _Sha256
    offset: int | None = None
    kind: Literal["foreign", "duplicate"]
    detail: str


class Repair(_Model):
    """A signed repair of the log: which entries are void, which foreign records are acknowledged, and (in
    the entry holding it) from which head the chain continues: the entry's own ``prev_hash`` and ``seq``."""

    reason: str = Field(min_length=1)
    operator: str
    void: list[VoidEntry] = []
    acknowledged: list[AcknowledgedRecord] = []
    # True when the checkpoints published before this entry no longer describe the chain (it lost or voided
    # entries they anchored): `audit verify` then judges only checkpoints published with or after it.
    supersedes_checkpoints: bool = False


class KeyRevocation(_Model):
    """A key revocation the consumer learned from a trust store, recorded so it holds from this entry on."""

    store: str
    key_id: str
    revoked_at: UtcDatetime
    reason: str


class KeyRotation(_Model):
    """A system key the consumer rotated (spec 6.4, 90 days): the new key signs from this entry on, the retired
    one keeps verifying what it signed before its expiry."""

    store: str
    new_key_id: str
    retired_key_id: str | None
    rotated_at: UtcDatetime
    retired_expires_at: UtcDatetime | None = None


class Retry(_Model):
    """An automatic promotion of ``model@version`` out of ``stage`` that only time blocks (a minimum duration, an
    escalation's ``until``): the consumer tries it again at ``due_at`` (``cause``: the input that was blocked)."""

    model: str
    version: str
    stage: str
    due_at: UtcDatetime
    cause: str

    @property
    def key(self) -> str:
        return f"{self.model}/{self.version}/{self.stage}"


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
    warnings: list[str] = []
    retry: Retry | None = None
    summary: RejectionSummary | None = None
    repair: Repair | None = None
    revoked: list[KeyRevocation] = []
    rotated: list[KeyRotation] = []


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


def system_input(topic: str, what: str, actor: str, id: str | None = None) -> Input:  # noqa: A002
    """The ``input`` of an entry the consumer (or `audit repair`) writes on its own: it covers no input.
    ``id`` names what a timer entry acts on (a scheduled rollback's ``model/version``, a retry's key)."""
    return Input(topic=topic, partition=0, offset=-1, digest=GENESIS, kind="system", type=what, actor=actor, id=id)
