"""The wire form of signed governance events: what the streams worker publishes and the consumer reads.

A message value on ``shadow.gates``, ``shadow.rollbacks`` and ``shadow.alerts`` is the orjson encoding of
a signed record (:mod:`governance.crypto.record`) whose payload is the event's JSON form::

    {"payload": {"type": "GateReady", "event_id": "...", "model": "fraud", ...},
     "signature": {"alg": "ML-DSA-65", "key_id": "...", "context": "shadowgate/event/v1", ...}}

The message key is the model name (:func:`event_key`), so one model's events stay in order.

Guarantees: :func:`decode_signed_event` returns an event only after the record's signature verified
under ``Context.EVENT`` against the trust store and the payload passed the strict event schema; any
failure raises :class:`~governance.errors.VerificationError` (signature, key, expiry of the key) or
:class:`~governance.errors.EventValidationError` (not JSON, not a record, bad event). It does not check
the event's own ``expires_at`` or its id against earlier ones: replay protection is the consumer's
(:mod:`governance.lifecycle.intake`). Signing costs ~10 ms of CPU and holds the GIL: in an event loop use
:func:`encode_signed_event_async` with an executor.
"""

from __future__ import annotations

from concurrent.futures import Executor
from datetime import datetime
from typing import Any

import orjson

from governance.contract.events import GovernanceEvent, parse_event
from governance.crypto.keys import TrustStore
from governance.crypto.record import sign_record, sign_record_async, verify_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signer
from governance.errors import EventValidationError

__all__ = ["decode_record", "decode_signed_event", "encode_signed_event", "encode_signed_event_async", "event_key"]


def event_key(event: GovernanceEvent) -> bytes:
    """The Kafka message key of ``event``: its model name."""
    return event.model.encode()


def encode_signed_event(event: GovernanceEvent, signer: Signer, now: datetime) -> bytes:
    """``event`` signed under ``Context.EVENT`` at ``now``, as message bytes."""
    return orjson.dumps(sign_record(event.model_dump(mode="json"), Context.EVENT, signer, now))


async def encode_signed_event_async(
    event: GovernanceEvent, signer: Signer, now: datetime, executor: Executor | None = None
) -> bytes:
    """:func:`encode_signed_event` with the signature computed in ``executor`` (keeps the loop responsive)."""
    record = await sign_record_async(event.model_dump(mode="json"), Context.EVENT, signer, now, executor=executor)
    return orjson.dumps(record)


def decode_record(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; :class:`EventValidationError` if it is not one."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventValidationError(f"message is not JSON: {exc}", field="<message>") from None
    if not isinstance(record, dict):
        raise EventValidationError(f"message is a JSON {type(record).__name__}, not a signed record", field="<message>")
    return record


def decode_signed_event(raw: bytes, trust_store: TrustStore, now: datetime, phase: Phase) -> GovernanceEvent:
    """The verified event in ``raw`` (see the module guarantees)."""
    payload = verify_record(decode_record(raw), Context.EVENT, trust_store, now, phase)
    return parse_event(orjson.dumps(payload))
