"""Checkpoints: the signed head of the audit log (seq + hash), published beside it so the tail is anchored.

The governance consumer publishes a checkpoint in the same Kafka transaction as every batch of entries it
appends, on a topic of its own (``governance.checkpoints``, compacted, keyed by the audit topic's name)::

    {"payload": {"type": "AuditCheckpoint", "topic": "governance.lifecycle", "seq": 41,
                 "head": "<SHA-256 hex of entry 41>", "at": "2026-11-26T12:00:00.000000+00:00"},
     "signature": {... Context.CHECKPOINT, the system key ...}}

A log whose tail was cut no longer reaches the newest checkpoint's ``seq``, or its entry there has another
hash: :func:`governance.lifecycle.chain.verify_chain` reports it (``shadowgate audit verify`` checks the
newest checkpoint by default, the consumer refuses to start on it).

Guarantees: :func:`read_checkpoints` returns only checkpoints whose signature verified under
``Context.CHECKPOINT`` against the trust store and that name the given audit topic, in topic order;
anything else on the topic is skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from governance.contract.kafkaio import Record
from governance.contract.publishing import decode_record
from governance.crypto.keys import TrustStore
from governance.crypto.record import sign_record, verify_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signer
from governance.errors import CryptoError, EventValidationError
from governance.lifecycle.ledger import UtcDatetime

__all__ = ["Checkpoint", "encode_checkpoint", "read_checkpoints"]


class Checkpoint(BaseModel):
    """The audit log ``topic`` held ``seq + 1`` entries, the last hashing to ``head``, at ``at``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["AuditCheckpoint"] = "AuditCheckpoint"
    topic: str
    seq: int = Field(ge=-1)
    head: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    at: UtcDatetime
    offset: int | None = Field(default=None, exclude=True)  # where it was read from (not signed)


def encode_checkpoint(checkpoint: Checkpoint, signer: Signer, now: datetime) -> bytes:
    """The signed message value of ``checkpoint``."""
    return orjson.dumps(sign_record(checkpoint.model_dump(mode="json"), Context.CHECKPOINT, signer, now))


def read_checkpoints(records: Iterable[Record], topic: str, trust_store: TrustStore, now: datetime,
                     phase: Phase) -> tuple[list[Checkpoint], int]:
    """The verified checkpoints of audit log ``topic`` among ``records``, in order, and how many were skipped."""
    found: list[Checkpoint] = []
    skipped = 0
    for record in records:
        if record.key != topic.encode():
            continue
        try:
            payload = verify_record(decode_record(record.value), Context.CHECKPOINT, trust_store, now, phase)
            checkpoint = Checkpoint.model_validate({**payload, "offset": record.offset})
        except (CryptoError, EventValidationError, ValidationError):
            skipped += 1
            continue
        if checkpoint.topic != topic:
            skipped += 1
            continue
        found.append(checkpoint)
    return found, skipped
