"""Intake for alert delivery: one Kafka message becomes a verified input or a rejection with its reason.

The sources and what their messages must be:

=============  =========================  ===================================================================
source         topic (default)            a message is
=============  =========================  ===================================================================
alerts         shadow.alerts              a signed governance event (``Context.EVENT``): Alert, Recalibration
gates          shadow.gates               a signed GateReady / GateBlocked
rollbacks      shadow.rollbacks           a signed RollbackTrigger
audit          governance.lifecycle       a signed audit entry (``Context.AUDIT_ENTRY``), for rollback outcomes
=============  =========================  ===================================================================

Every signature is checked against the system trust store, as the governance consumer checks its events
(:mod:`governance.lifecycle.intake`). Rejection reasons, the first failure deciding:

=============  ======================================================================================
reason         when
=============  ======================================================================================
invalid        not JSON, not an object, or (after the signature verified) not a valid event / entry
unsigned       no ``signature`` (nor ``classical``) block
unknown_key    signed by a key the trust store does not hold
bad_signature  the signature does not verify (payload or signature altered, wrong context, revoked key)
=============  ======================================================================================

Guarantees: pure apart from the signature check (CPU, ~0.3 ms); nothing of a message is trusted before its
signature verified: a rejection's ``claims`` (type, model, id) are the message's unverified words, kept
only to say what was refused. An event's own ``expires_at`` is not checked: a late alert is still news
(replays are caught by their ids, :mod:`governance.service.alerting.tracker`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from governance.contract.events import GovernanceEvent, parse_event
from governance.contract.kafkaio import Record
from governance.contract.publishing import decode_record
from governance.crypto.keys import TrustStore
from governance.crypto.record import verify_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context
from governance.errors import EventValidationError, VerificationError
from governance.lifecycle.audit import AuditEntry, parse_entry

__all__ = [
    "REJECT_REASONS",
    "SOURCES",
    "Input",
    "Origin",
    "Rejected",
    "RejectReason",
    "Source",
    "VerifiedEntry",
    "VerifiedEvent",
    "verify",
]

Source = Literal["alerts", "gates", "rollbacks", "audit"]
SOURCES: tuple[Source, ...] = ("alerts", "gates", "rollbacks", "audit")
RejectReason = Literal["invalid", "unsigned", "unknown_key", "bad_signature"]
REJECT_REASONS: tuple[RejectReason, ...] = ("invalid", "unsigned", "unknown_key", "bad_signature")


@dataclass(frozen=True)
class Origin:
    """Where a message was read: its source, topic, partition and offset."""

    source: Source
    topic: str
    partition: int
    offset: int

    @property
    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class VerifiedEvent:
    """A governance event whose signature verified; ``record`` is the signed record as read."""

    origin: Origin
    event: GovernanceEvent
    key_id: str
    record: dict[str, Any] = field(repr=False)

    @property
    def source_id(self) -> str:
        return f"event:{self.event.event_id}"


@dataclass(frozen=True)
class VerifiedEntry:
    """An audit entry whose signature verified; ``record`` is the signed record as read."""

    origin: Origin
    entry: AuditEntry
    key_id: str
    record: dict[str, Any] = field(repr=False)

    @property
    def source_id(self) -> str:
        return f"audit:{self.origin.topic}:{self.entry.seq}"


@dataclass(frozen=True)
class Rejected:
    """A message that is not a verified input; ``claims`` are its unverified type, model and id."""

    origin: Origin
    reason: RejectReason
    message: str
    claims: dict[str, str] = field(default_factory=dict)


Input = VerifiedEvent | VerifiedEntry | Rejected


def _claims(payload: dict[str, Any]) -> dict[str, str]:
    keys = {"type": "type", "model": "model", "event_id": "id", "seq": "seq"}
    return {name: str(payload[key])[:128] for key, name in keys.items() if isinstance(payload.get(key), str | int)}


def verify(record: Record, source: Source, trust_store: TrustStore, now: datetime, phase: Phase) -> Input:
    """Verify ``record`` read from ``source`` (see the module tables)."""
    origin = Origin(source, record.topic, record.partition, record.offset)
    try:
        message = decode_record(record.value)
    except EventValidationError as exc:
        return Rejected(origin, "invalid", str(exc))
    block = message.get("signature") or message.get("classical")
    payload = message.get("payload") if block is not None else message
    if not isinstance(payload, dict):
        return Rejected(origin, "invalid", "signed record has no payload object")
    claims = _claims(payload)
    if block is None:
        what = claims.get("type", "message")
        return Rejected(origin, "unsigned", f"{what} carries no signature; it cannot be trusted", claims)
    key_id = block.get("key_id") if isinstance(block, dict) else None
    if not isinstance(key_id, str) or key_id not in trust_store:
        return Rejected(origin, "unknown_key", f"signed by key {key_id!r}, which the trust store does not hold", claims)
    context = Context.AUDIT_ENTRY if source == "audit" else Context.EVENT
    try:
        verified = verify_record(message, context, trust_store, now, phase)
    except VerificationError as exc:
        reason: RejectReason = "unknown_key" if "not trusted" in str(exc) else "bad_signature"
        return Rejected(origin, reason, str(exc), claims)
    try:
        if source == "audit":
            return VerifiedEntry(origin, parse_entry(verified), key_id, message)
        return VerifiedEvent(origin, parse_event(orjson.dumps(verified)), key_id, message)
    except EventValidationError as exc:
        return Rejected(origin, "invalid", str(exc), claims)
