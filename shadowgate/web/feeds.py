"""Live feeds of the status page: the alerts topic and the audit log, each followed by a thread, every message
verified before it is shown as genuine.

* :class:`AlertFeed` follows every partition of the alerts topic (the last ``backlog`` messages of each, then
  live). Each message is judged by :func:`judge_alert`: ``verified`` only when its ML-DSA signature verifies
  against the system trust store and it is an ``Alert`` or ``RecalibrationRequested``; anything else (unsigned,
  an unknown key, altered bytes, not JSON, another event type) is kept as ``rejected`` with the reason, and
  what it claims is shown as a claim, never as an alert.
* :class:`AuditFeed` follows the audit log (one partition) from its start, verifies each entry's signature,
  ``seq`` and hash link (:mod:`governance.lifecycle.audit`), and keeps the newest entries and the chain's status:
  after the first broken entry nothing more is trusted (``chain.ok`` false, with the problem).

Subscribers (the page's Server-Sent Events streams) get each new item on their asyncio loop through
``call_soon_threadsafe``; :meth:`Feed.subscribe` returns the items so far and registers the queue under one lock,
so a subscriber misses nothing and sees nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import TopicPartition

from governance.contract.connections import KafkaTarget
from governance.contract.events import Alert, RecalibrationRequested
from governance.contract.kafkaio import Record, make_consumer, partitions_of, poll_records, watermarks
from governance.contract.publishing import decode_record, decode_signed_event
from governance.crypto.record import verify_record
from governance.crypto.signing import Context
from governance.errors import CryptoError, EventValidationError, InfrastructureError
from governance.lifecycle.audit import GENESIS, entry_hash, parse_entry
from governance.lifecycle.identities import Trust
from governance.lifecycle.ledger import ApprovalRecorded

__all__ = ["AlertFeed", "AuditFeed", "Feed", "judge_alert", "judge_entry"]

_LOG = logging.getLogger("shadowgate.web")
_CLAIMS = ("type", "model", "severity", "summary", "reason", "runbook", "ts")


def _now() -> datetime:
    return datetime.now(UTC)


def _claims(raw: bytes) -> dict[str, str]:
    """What an unverified message says about itself, as short strings (shown as claims only)."""
    try:
        record = decode_record(raw)
    except EventValidationError:
        return {}
    payload = record.get("payload", record)
    if not isinstance(payload, dict):
        return {}
    return {name: str(payload[name])[:512] for name in _CLAIMS if name in payload}


def judge_alert(record: Record, trust: Trust, now: datetime) -> dict[str, Any]:
    """A feed item for one message of the alerts topic: ``status`` ``verified`` or ``rejected`` (with ``reason``)."""
    base: dict[str, Any] = {"id": f"{record.partition}:{record.offset}", "partition": record.partition,
                            "offset": record.offset, "received_at": now.isoformat()}
    try:
        event = decode_signed_event(record.value, trust.system, now, trust.phase(now))
    except (CryptoError, EventValidationError) as exc:
        return {**base, "status": "rejected", "reason": f"{type(exc).__name__}: {exc}", "claims": _claims(record.value)}
    if not isinstance(event, Alert | RecalibrationRequested):
        return {**base, "status": "rejected", "reason": f"a signed {event.type} is not an alert",
                "claims": _claims(record.value)}
    signature = decode_record(record.value).get("signature")
    key_id = signature.get("key_id") if isinstance(signature, dict) else None
    summary = event.summary if isinstance(event, Alert) else event.reason
    return {**base, "status": "verified", "key_id": key_id, "type": event.type, "event_id": str(event.event_id),
            "ts": event.ts.isoformat(), "model": event.model, "versions": event.versions.model_dump(mode="json"),
            "severity": event.severity if isinstance(event, Alert) else "warning", "summary": summary,
            "runbook": event.runbook if isinstance(event, Alert) else None,
            "dedup_key": event.dedup_key if isinstance(event, Alert) else None}


def judge_entry(record: Record, trust: Trust, now: datetime, seq: int, head: str) -> tuple[dict[str, Any], str]:
    """One audit entry verified as the entry after ``(seq - 1, head)``: its feed item and its hash.

    Raises :class:`CryptoError` / :class:`EventValidationError` when the signature, schema, ``seq`` or link
    does not hold.
    """
    from shadowgate.commands.governance import describe_entry

    signed = decode_record(record.value)
    entry = parse_entry(verify_record(signed, Context.AUDIT_ENTRY, trust.system, now, trust.phase(now)))
    if entry.seq != seq:
        raise EventValidationError(f"seq {entry.seq} where {seq} was expected", field="seq")
    if entry.prev_hash != head:
        raise EventValidationError(f"entry {entry.seq}: prev_hash does not match the previous entry", field="prev_hash")
    models = sorted({f"{f.model}@{f.version}" for f in entry.facts}
                    | ({f"{entry.gate.model}@{entry.gate.version}"} if entry.gate else set())
                    | ({f"{entry.rollback.model}@{entry.rollback.from_version}"} if entry.rollback else set()))
    signature = signed.get("signature")
    approvals = [{"event_id": f.event_id, "model": f.model, "version": f.version, "approver": f.approver,
                  "target": str(f.target)} for f in entry.facts if isinstance(f, ApprovalRecorded)]
    item = {"seq": entry.seq, "at": entry.at.isoformat(), "outcome": entry.outcome,
            "input": entry.input.model_dump(mode="json"), "models": models, "lines": describe_entry(entry),
            "offset": record.offset, "approvals": approvals,
            "key_id": signature.get("key_id") if isinstance(signature, dict) else None}
    return item, entry_hash(signed)


class Feed:
    """Items from a Kafka topic, kept in memory (the newest ``keep``), pushed to asyncio subscribers."""

    def __init__(self, bootstrap: KafkaTarget, topic: str, trust: Trust, *, keep: int, purpose: str,
                 clock: Callable[[], datetime] = _now) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.trust = trust
        self.clock = clock
        self.purpose = purpose
        self.items: deque[dict[str, Any]] = deque(maxlen=keep)
        self.counts: dict[str, int] = {}
        self.error: str | None = None
        self.assigned = threading.Event()
        self._lock = threading.Lock()
        self._subscribers: dict[asyncio.Queue[dict[str, Any] | None], asyncio.AbstractEventLoop] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"status-{purpose}", daemon=True)

    # -- the thread ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        self.end_streams()

    def end_streams(self) -> None:
        """Tell every subscriber that the feed ends (its queue gets ``None``)."""
        with self._lock:
            subscribers = list(self._subscribers.items())
        for queue, loop in subscribers:
            with contextlib.suppress(RuntimeError):  # a loop already closed has no stream left to end
                loop.call_soon_threadsafe(queue.put_nowait, None)

    def _run(self) -> None:
        consumer = make_consumer(self.bootstrap, f"status-{self.purpose}")
        try:
            while not self._stop.is_set() and not self.assigned.is_set():
                try:
                    consumer.assign(self._start_positions(consumer))
                    self.assigned.set()
                    self.error = None
                except InfrastructureError as exc:  # the topic may not exist yet: keep trying
                    self.error = str(exc)
                    self._stop.wait(1.0)
            while not self._stop.is_set():
                try:
                    records = poll_records(consumer, 0.25)
                except InfrastructureError as exc:
                    self.error = str(exc)
                    _LOG.warning("%s: %s", self.topic, exc)
                    self._stop.wait(1.0)
                    continue
                for record in records:
                    try:
                        item = self.judge(record)
                    except Exception as exc:  # a bug must not stop the feed: the message is shown as not verified
                        _LOG.exception("%s@%d: cannot judge", self.topic, record.offset)
                        item = {"status": "rejected", "id": f"{record.partition}:{record.offset}",
                                "offset": record.offset, "reason": f"not judged: {type(exc).__name__}: {exc}"}
                    self._add(item)
        finally:
            consumer.close()

    def _start_positions(self, consumer: Any) -> list[TopicPartition]:
        raise NotImplementedError

    def judge(self, record: Record) -> dict[str, Any]:
        raise NotImplementedError

    def _add(self, item: dict[str, Any]) -> None:
        with self._lock:
            self.items.append(item)
            key = str(item.get("status", "entry"))
            self.counts[key] = self.counts.get(key, 0) + 1
            subscribers = list(self._subscribers.items())
        for queue, loop in subscribers:
            loop.call_soon_threadsafe(queue.put_nowait, item)

    # -- readers -------------------------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.items)

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> tuple[list[dict[str, Any]], asyncio.Queue[Any]]:
        """The items so far and a queue that gets every later one (``None`` when the feed stops)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        with self._lock:
            self._subscribers[queue] = loop
            return list(self.items), queue

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        with self._lock:
            self._subscribers.pop(queue, None)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)


class AlertFeed(Feed):
    """The alerts topic, every message judged by :func:`judge_alert`."""

    def __init__(self, bootstrap: KafkaTarget, topic: str, trust: Trust, *, backlog: int = 200, keep: int = 500,
                 clock: Callable[[], datetime] = _now) -> None:
        super().__init__(bootstrap, topic, trust, keep=keep, purpose="alerts", clock=clock)
        self.backlog = backlog

    def _start_positions(self, consumer: Any) -> list[TopicPartition]:
        out = []
        for partition in partitions_of(consumer, self.topic):
            low, high = watermarks(consumer, self.topic, partition)
            out.append(TopicPartition(self.topic, partition, max(low, high - self.backlog)))
        return out

    def judge(self, record: Record) -> dict[str, Any]:
        return judge_alert(record, self.trust, self.clock())


class AuditFeed(Feed):
    """The audit log from its first entry, each verified by :func:`judge_entry` against the chain so far."""

    def __init__(self, bootstrap: KafkaTarget, topic: str, trust: Trust, *, keep: int = 2000,
                 clock: Callable[[], datetime] = _now) -> None:
        super().__init__(bootstrap, topic, trust, keep=keep, purpose="audit", clock=clock)
        self.seq, self.head = -1, GENESIS
        self.broken: str | None = None

    def _start_positions(self, consumer: Any) -> list[TopicPartition]:
        partitions_of(consumer, self.topic)
        return [TopicPartition(self.topic, 0, 0)]

    def judge(self, record: Record) -> dict[str, Any]:
        if self.broken is not None:
            return {"status": "unverified", "offset": record.offset, "reason": f"after the break: {self.broken}"}
        try:
            item, digest = judge_entry(record, self.trust, self.clock(), self.seq + 1, self.head)
        except (CryptoError, EventValidationError) as exc:
            self.broken = f"offset {record.offset}: {type(exc).__name__}: {exc}"
            return {"status": "broken", "offset": record.offset, "reason": self.broken}
        self.seq, self.head = item["seq"], digest
        return {**item, "status": "verified"}

    def chain(self) -> dict[str, Any]:
        """``{"ok", "entries", "head", "problem"}`` of what was read so far."""
        return {"ok": self.broken is None, "entries": self.seq + 1, "head": self.head, "problem": self.broken}

