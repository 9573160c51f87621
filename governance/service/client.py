"""Talking to the governance consumer: send a signed command, wait for the audit entry that answers it.

The consumer is the single writer of the audit log, so the CLI never changes state itself: it notes the
end of the log, sends the signed command, and reads the log from that point until the entry whose
``input.id`` is the command id appears (its signature verified against the system trust store).

A command rejected at intake (unknown key, bad signature, expired, ...) is answered by the summary entry of
its partition, which names it among its samples (up to 5 per reason and summary: in a flood of junk the
answer may not name it, and the wait times out). Guarantees: the answer is an entry written after the
command was sent; a timeout raises
:class:`~governance.errors.InfrastructureError` naming the command id (the command may still be applied
later: look for it with ``shadowgate model history``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import TopicPartition

from governance.contract.connections import KafkaTarget
from governance.contract.kafkaio import SyncProducer, make_consumer, partitions_of, poll_records, watermarks
from governance.crypto.record import verify_record
from governance.crypto.signing import Context
from governance.errors import ConfigError, EventValidationError, InfrastructureError
from governance.lifecycle.audit import AuditEntry, parse_entry
from governance.lifecycle.identities import Trust

__all__ = ["log_end", "submit", "wait_for_entry"]

Progress = Callable[[float], None]


def log_end(bootstrap: KafkaTarget, lifecycle_topic: str) -> int:
    """The offset the next audit entry will get."""
    consumer = make_consumer(bootstrap, "audit-end")
    try:
        if partitions_of(consumer, lifecycle_topic) != [0]:
            raise ConfigError(f"audit log topic {lifecycle_topic} must have exactly 1 partition")
        return watermarks(consumer, lifecycle_topic, 0)[1]
    finally:
        consumer.close()


def wait_for_entry(
    bootstrap: KafkaTarget,
    lifecycle_topic: str,
    start: int,
    predicate: Callable[[dict[str, Any]], bool],
    trust: Trust,
    timeout_s: float,
    progress: Progress | None = None,
) -> AuditEntry:
    """The first verified entry at or after ``start`` whose payload satisfies ``predicate``."""
    consumer = make_consumer(bootstrap, "audit-wait")
    began = last_report = time.monotonic()
    try:
        consumer.assign([TopicPartition(lifecycle_topic, 0, start)])
        while (elapsed := time.monotonic() - began) < timeout_s:
            if progress is not None and time.monotonic() - last_report >= 1.0:
                progress(elapsed)
                last_report = time.monotonic()
            for record in poll_records(consumer, 0.2):
                try:
                    signed = orjson.loads(record.value)
                except orjson.JSONDecodeError:
                    continue
                payload = signed.get("payload") if isinstance(signed, dict) else None
                if not isinstance(payload, dict) or not predicate(payload):
                    continue
                now = datetime.now(UTC)
                return parse_entry(verify_record(signed, Context.AUDIT_ENTRY, trust.system, now, trust.phase(now)))
    except EventValidationError as exc:
        raise InfrastructureError(f"the audit log holds an unreadable answer: {exc}") from None
    finally:
        consumer.close()
    raise InfrastructureError(f"no answer in {lifecycle_topic} within {timeout_s:.0f} s")


def submit(
    bootstrap: KafkaTarget,
    topic: str,
    lifecycle_topic: str,
    record: dict[str, Any],
    trust: Trust,
    timeout_s: float = 30.0,
    progress: Progress | None = None,
) -> AuditEntry:
    """Send a signed command record to ``topic`` and return the audit entry that answers it."""
    payload = record.get("payload", {})
    command_id, key = str(payload.get("command_id")), str(payload.get("model", "")).encode()
    start = log_end(bootstrap, lifecycle_topic)
    producer = SyncProducer(bootstrap)
    try:
        producer.send(topic, orjson.dumps(record), key)
    finally:
        producer.close()

    def answers(entry: dict[str, Any]) -> bool:
        source, summary = entry.get("input"), entry.get("summary")
        if isinstance(source, dict) and source.get("id") == command_id:
            return True
        samples = summary.get("samples") if isinstance(summary, dict) else None
        return isinstance(samples, list) and any(isinstance(s, dict) and s.get("id") == command_id for s in samples)

    try:
        return wait_for_entry(bootstrap, lifecycle_topic, start, answers, trust, timeout_s, progress)
    except InfrastructureError as exc:
        raise InfrastructureError(
            f"command {command_id}: {exc}; is `shadowgate governance` running? (it may still be applied: "
            "see `shadowgate model history`)"
        ) from None
