"""The audit log on Kafka: reading it (entries and checkpoints) and appending to it, fenced and atomic.

The entry format and sealing are pure (:mod:`governance.lifecycle.audit`), and so is reading the chain
(:mod:`governance.lifecycle.chain`); this module does the I/O:

* :func:`read_log` / :class:`AuditLogReader`: every record of the (single-partition) audit topic, and
  every record of the checkpoint topic, read ``read_committed`` (an aborted transaction is never seen).
* :class:`AuditWriter`: :meth:`~AuditWriter.seal` signs a batch of entry bodies as the next entries;
  :meth:`~AuditWriter.commit` writes them, any other messages that must go with them (routing
  assignments), and the signed checkpoint of the new head, in ONE Kafka transaction of the fenced producer
  (:mod:`governance.service.transactions`). A writer that was fenced raises
  :class:`~governance.errors.FencedError`; a failed transaction is aborted and nothing of it is visible.

Guarantees: an entry is acknowledged only together with the checkpoint that anchors it, so a reader never
sees a checkpoint ahead of the log it reads; the caller owns ``seq`` / ``head`` (the single writer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from governance.contract.connections import KafkaTarget
from governance.contract.kafkaio import Record, make_consumer, partitions_of, read_range
from governance.crypto.record import record_bytes
from governance.crypto.signing import Signer
from governance.errors import ConfigError
from governance.lifecycle.audit import AuditEntry, EntryBody, entry_hash, parse_entry, seal
from governance.lifecycle.checkpoint import Checkpoint, encode_checkpoint
from governance.service.transactions import TransactionalProducer

__all__ = ["AuditLogReader", "AuditWriter", "Outgoing", "Sealed", "read_log"]


def read_log(bootstrap: KafkaTarget, topic: str, timeout_s: float = 60.0) -> list[Record]:
    """Every message of the (single-partition) audit log topic, in order."""
    consumer = make_consumer(bootstrap, "audit-read")
    try:
        partitions = partitions_of(consumer, topic)
        if partitions != [0]:
            raise ConfigError(f"audit log topic {topic} has {len(partitions)} partitions; it needs exactly 1 (order)")
        return list(read_range(consumer, topic, 0, 0, timeout_s))
    finally:
        consumer.close()


class AuditLogReader:
    """Reads the audit topic and its checkpoint topic from the start (a fresh Kafka consumer per read)."""

    def __init__(self, bootstrap: KafkaTarget, topic: str, checkpoint_topic: str, timeout_s: float = 60.0) -> None:
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self.checkpoint_topic = checkpoint_topic

    def entries(self) -> list[Record]:
        return read_log(self.bootstrap, self.topic, self.timeout_s)

    def checkpoints(self) -> list[Record]:
        """Every record of the checkpoint topic, in partition and offset order."""
        consumer = make_consumer(self.bootstrap, "audit-checkpoints")
        try:
            return [record for partition in partitions_of(consumer, self.checkpoint_topic)
                    for record in read_range(consumer, self.checkpoint_topic, partition, 0, self.timeout_s)]
        finally:
            consumer.close()


@dataclass(frozen=True)
class Sealed:
    """An entry signed and ready to write: its parsed form, signed record and hash."""

    entry: AuditEntry
    record: dict[str, Any]
    hash: str


@dataclass(frozen=True)
class Outgoing:
    """Another message of the same transaction (a routing assignment)."""

    topic: str
    value: bytes
    key: bytes | None


class AuditWriter:
    """Seals and appends entries; the caller owns ``seq`` / ``head`` (single writer, fenced by ``producer``)."""

    def __init__(self, producer: TransactionalProducer, topic: str, checkpoint_topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.checkpoint_topic = checkpoint_topic

    def seal(self, bodies: Sequence[EntryBody], seq: int, head: str, signer: Signer, now: datetime) -> list[Sealed]:
        """``bodies`` signed as entries ``seq``, ``seq + 1``, ... after the entry hashed ``head``."""
        sealed = []
        for offset, body in enumerate(bodies):
            record = seal(body, seq + offset, head, signer, now)
            head = entry_hash(record)
            sealed.append(Sealed(parse_entry(record["payload"]), record, head))
        return sealed

    def checkpoint(self, seq: int, head: str, signer: Signer, now: datetime) -> Outgoing:
        """The signed checkpoint of head ``(seq, head)``, keyed by the audit topic."""
        value = encode_checkpoint(Checkpoint(topic=self.topic, seq=seq, head=head, at=now), signer, now)
        return Outgoing(self.checkpoint_topic, value, self.topic.encode())

    def commit(self, sealed: Sequence[Sealed], others: Sequence[Outgoing], checkpoint: Outgoing) -> None:
        """Write ``sealed``, ``others`` and ``checkpoint`` in one transaction; returns once it committed."""
        with self.producer.transaction() as txn:
            for item in sealed:
                txn.produce(self.topic, record_bytes(item.record), b"audit")
            for message in (*others, checkpoint):
                txn.produce(message.topic, message.value, message.key)
