"""Intake: turn one raw message into a verified input, or a rejection with its reason.

Checks, in this order (the first failure decides the reason):

=============  =====================================================================================
reason         when
=============  =====================================================================================
invalid        not JSON, not an object, or (after the signature verified) not a valid command / event,
               or the wrong kind of message for the topic
unsigned       no ``signature`` (nor ``classical``) block: a bare event or command
unknown_key    signed by a key the trust store does not hold (for commands: not a key of the identity
               the command names, or an identity nobody trusts)
bad_signature  the signature does not verify: payload or signature altered, wrong context, key
               expired at signing time, key revoked (at any time: a live input has no business being
               signed by a revoked key, whatever ``signed_at`` it claims), signature dated in the future
future         a command whose ``issued_at`` lies more than ``skew`` (default 5 minutes) ahead of the
               consumer's clock
expired        the input's own ``expires_at`` is past (for a command that bounds ``issued_at`` from
               below too: ``expires_at`` is at most a day after it)
replayed       its id (event id, command id) was already handled
=============  =====================================================================================

Guarantees: pure apart from the signature check (CPU, ~0.5 ms); the cheap checks (JSON, signature block,
key known, kind) come before it, and nothing here signs or writes; nothing of an input is trusted before
its signature verified: a rejection's ``input`` fields (id, type, actor) are the message's unverified
claims, kept for the audit trail only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson

from governance.contract.events import Escalation, GateBlocked, GateReady, GovernanceEvent, RollbackTrigger, parse_event
from governance.contract.kafkaio import Record
from governance.contract.publishing import decode_record
from governance.crypto.keys import TrustStore
from governance.crypto.record import verify_record
from governance.crypto.signing import Context, Verifier
from governance.errors import EventValidationError, VerificationError
from governance.lifecycle.audit import Input, Rejection, RejectReason
from governance.lifecycle.commands import Command, parse_command
from governance.lifecycle.identities import Trust
from governance.lifecycle.state import GovernanceState

__all__ = ["DEFAULT_SKEW", "INPUT_EVENTS", "Received", "Refused", "intake"]

INPUT_EVENTS = (GateReady, GateBlocked, RollbackTrigger, Escalation)
DEFAULT_SKEW = timedelta(minutes=5)
Expects = Literal["command", "event"]


@dataclass(frozen=True)
class Received:
    """A verified, fresh, first-seen input: exactly one of ``command`` and ``event`` is set."""

    input: Input
    command: Command | None = None
    event: GovernanceEvent | None = None


@dataclass(frozen=True)
class Refused:
    input: Input
    rejection: Rejection


def _claims(record: Record, digest: str, payload: dict[str, Any], key_id: object) -> Input:
    def text(value: object) -> str | None:
        return value[:256] if isinstance(value, str) else None

    is_command = "command" in payload
    return Input(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        digest=digest,
        kind="command" if is_command else ("event" if "type" in payload else "unknown"),
        id=text(payload.get("command_id") if is_command else payload.get("event_id")),
        type=text(payload.get("command") if is_command else payload.get("type")),
        actor=text(payload.get("identity")) if is_command else text(key_id),
    )


def _refuse(source: Input, reason: RejectReason, message: str) -> Refused:
    return Refused(source, Rejection(reason=reason, message=message))


def _store(trust: Trust, source: Input) -> TrustStore:
    if source.kind == "command":
        return trust.identity(source.actor or "<none>")
    return trust.system


def intake(record: Record, state: GovernanceState, trust: Trust, now: datetime, expects: Expects,
           skew: timedelta = DEFAULT_SKEW) -> Received | Refused:
    """Verify ``record`` (a message on a topic carrying ``expects``); see the module table for reasons."""
    digest = hashlib.sha256(record.value).hexdigest()
    bare = Input(topic=record.topic, partition=record.partition, offset=record.offset, digest=digest)
    try:
        message = decode_record(record.value)
    except EventValidationError as exc:
        return _refuse(bare, "invalid", str(exc))
    block = message.get("signature") or message.get("classical")
    payload = message.get("payload") if block is not None else message
    if not isinstance(payload, dict):
        return _refuse(bare, "invalid", "signed record has no payload object")
    key_id = block.get("key_id") if isinstance(block, dict) else None
    source = _claims(record, digest, payload, key_id)
    if block is None:
        return _refuse(source, "unsigned", f"{source.type or 'message'} carries no signature; it cannot be trusted")
    if source.kind != expects:
        return _refuse(source, "invalid", f"topic {record.topic} carries {expects}s, not {source.kind} messages")
    context = Context.APPROVAL if expects == "command" else Context.EVENT
    try:
        store = _store(trust, source)
        if key_id not in store:
            return _refuse(source, "unknown_key", f"signed by key {key_id!r}, which is not trusted for this input")
        verified = verify_record(message, context, store, now, trust.phase(now),
                                 verifier=Verifier(store, strict_revocation=True))
    except VerificationError as exc:
        reason: RejectReason = "unknown_key" if "not trusted" in str(exc) else "bad_signature"
        return _refuse(source, reason, str(exc))
    try:
        if expects == "command":
            command = parse_command(verified)
            received = Received(source, command=command)
            expires_at, input_id = command.expires_at, command.command_id
            if command.issued_at > now + skew:
                return _refuse(source.model_copy(update={"id": input_id}), "future",
                               f"{command.command} {input_id} is issued at {command.issued_at.isoformat()}, more "
                               f"than {skew} ahead of the consumer's clock ({now.isoformat()})")
        else:
            event = parse_event(orjson.dumps(verified))
            if not isinstance(event, INPUT_EVENTS):
                return _refuse(source, "invalid", f"{event.type} is not an input of the governance consumer")
            received = Received(source, event=event)
            expires_at, input_id = event.expires_at, str(event.event_id)
    except EventValidationError as exc:
        return _refuse(source, "invalid", str(exc))
    source = source.model_copy(update={"id": input_id})
    received = Received(source, command=received.command, event=received.event)
    if expires_at <= now:
        return _refuse(source, "expired", f"{source.type} {input_id} expired at {expires_at.isoformat()}")
    if input_id in state.seen:
        seq = state.seen[input_id]
        return _refuse(source, "replayed", f"{source.type} {input_id} was already handled (audit seq {seq})")
    return received
