"""Writing the audit log: sealed entries appended to the lifecycle topic by the single active consumer.

The entry format, sealing and chain verification are pure and live in :mod:`governance.lifecycle.audit`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from governance.contract.kafkaio import SyncProducer
from governance.crypto.record import record_bytes
from governance.crypto.signing import Signer
from governance.lifecycle.audit import AuditEntry, EntryBody, parse_entry, seal

__all__ = ["AuditWriter"]


class AuditWriter:
    """Appends sealed entries to the lifecycle topic; the caller owns ``seq`` / ``head`` (single writer)."""

    def __init__(self, producer: SyncProducer, topic: str, signer: Signer) -> None:
        self.producer = producer
        self.topic = topic
        self.signer = signer

    def append(self, body: EntryBody, seq: int, prev_hash: str, now: datetime) -> tuple[AuditEntry, dict[str, Any]]:
        """Seal and write entry ``seq``; returns it and its record once the broker acknowledged it."""
        record = seal(body, seq, prev_hash, self.signer, now)
        self.producer.send(self.topic, record_bytes(record), key=b"audit")
        return parse_entry(record["payload"]), record
