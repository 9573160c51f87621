"""The few Kafka operations governance needs: a synchronous producer, and reading a partition's range.

The governance consumer, the audit log, the routing publisher and the CLI all use these, so broker
errors become one :class:`~governance.errors.InfrastructureError` (or :class:`DeliveryError`) naming the
topic, partition and offset, never a librdkafka exception.

Guarantees: :meth:`SyncProducer.send` returns only after the broker acknowledged the message
(``acks=all``, idempotent producer), with the offset it was written at; :func:`read_range` returns the
messages of one partition in offset order, from ``start`` up to (excluding) the high watermark read when
it was called, and raises if they cannot all be read within the timeout (never a silent short read).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from governance.contract.connections import KafkaTarget, kafka_config
from governance.contract.refusals import denied, read_denied
from governance.errors import DeliveryError, InfrastructureError

__all__ = ["Record", "Sender", "SyncProducer", "make_consumer", "partitions_of", "poll_records", "read_range",
           "until_coordinated", "watermarks"]


class Record(NamedTuple):
    """One Kafka message: what the worker's processor and the governance consumer take.

    A tombstone's value (None on the wire) is ``b""``: whoever builds a Record normalises it.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


# librdkafka's log lines (one per failed connection attempt) go to this logger instead of stderr: the
# CLI reports a dead broker once; the governance daemon configures logging and shows them.
_KAFKA_LOG = logging.getLogger("shadowgate.kafka")
T = TypeVar("T")
_KAFKA_LOG.addHandler(logging.NullHandler())


# Answers a group coordinator gives while it moves or loads (a broker just started, a leader elected): they
# pass within seconds, so a call that got one is repeated rather than failed.
_COORDINATOR_TRANSIENT = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                                    KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._WAIT_COORD})


def until_coordinated(call: Callable[[], T], timeout_s: float, pause_s: float = 0.2) -> T:
    """``call()``, repeated while the group coordinator answers that it is moving or loading.

    Any other error, or the transient one still there after ``timeout_s``, propagates as the KafkaException.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code not in _COORDINATOR_TRANSIENT or time.monotonic() + pause_s > deadline:
                raise
            _KAFKA_LOG.info("group coordinator not ready (%s); asking again", error)
            time.sleep(pause_s)


class _Consumer(Consumer):
    """A consumer that knows its connection and group: a refusal for want of an ACL names them (:func:`_check`)."""

    target: KafkaTarget
    group: str


def make_consumer(bootstrap: KafkaTarget, purpose: str) -> Consumer:
    """A consumer that is only ever ``assign``-ed (no group membership, no commits)."""
    # Required by librdkafka even when the consumer never joins the group (it still looks up the group's
    # coordinator, so the principal needs Read on the group: docs/security.md grants the "shadowgate-" prefixes).
    group = f"shadowgate-{purpose}-{uuid.uuid4().hex[:8]}"
    try:
        consumer = _Consumer(
            {
                **kafka_config(bootstrap),
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "logger": _KAFKA_LOG,
            }
        )
    except KafkaException as exc:
        raise InfrastructureError(f"cannot create a Kafka consumer for {bootstrap}: {exc}") from None
    consumer.target, consumer.group = bootstrap, group
    return consumer


def partitions_of(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    """The partition ids of ``topic``; :class:`InfrastructureError` if it does not exist."""
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise InfrastructureError(f"cannot read metadata of topic {topic}: {exc}") from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        reason = info.error.str() if info is not None and info.error is not None else "no partitions"
        raise InfrastructureError(f"topic {topic} is not available ({reason}); create it (`shadowgate topics`)")
    return sorted(info.partitions)


def watermarks(consumer: Consumer, topic: str, partition: int, timeout_s: float = 10.0) -> tuple[int, int]:
    """``(low, high)`` offsets of one partition; high is the offset the next message will get."""
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
    except KafkaException as exc:
        raise InfrastructureError(f"cannot read the offsets of {topic}[{partition}]: {exc}") from None
    return int(low), int(high)


def _check(msg: Message, consumer: Consumer) -> Record | None:
    error = msg.error()
    if error is not None:
        if error.code() == KafkaError._PARTITION_EOF:
            return None
        if isinstance(consumer, _Consumer):
            topic = msg.topic()
            topics = [topic] if topic else sorted({str(tp.topic) for tp in consumer.assignment()})
            why = read_denied(consumer.target, error, group=consumer.group, topics=topics)
            if why is not None:
                raise InfrastructureError(why)
        where = f"{msg.topic()}[{msg.partition()}]" if msg.topic() else "Kafka"
        raise InfrastructureError(f"reading {where}: {error.str()}")
    return Record(
        topic=str(msg.topic()),
        partition=int(msg.partition() or 0),
        offset=int(msg.offset() or 0),
        key=msg.key(),
        value=msg.value() or b"",
    )


def poll_records(consumer: Consumer, timeout_s: float, max_messages: int = 500) -> list[Record]:
    """The messages available within ``timeout_s`` (errors raised, end-of-partition markers dropped)."""
    try:
        messages = consumer.consume(num_messages=max_messages, timeout=timeout_s)
    except KafkaException as exc:
        raise InfrastructureError(f"Kafka consume failed: {exc}") from None
    return [record for record in (_check(msg, consumer) for msg in messages) if record is not None]


def read_range(
    consumer: Consumer, topic: str, partition: int, start: int, timeout_s: float = 30.0
) -> Iterator[Record]:
    """Messages of ``topic[partition]`` from ``start`` up to the current high watermark, in order."""
    low, high = watermarks(consumer, topic, partition)
    begin = max(start, low)
    if begin >= high:
        return
    consumer.assign([TopicPartition(topic, partition, begin)])
    deadline = time.monotonic() + timeout_s
    position = begin
    try:
        # The consumer's position, not the last offset seen, says when the end is reached: offsets may have
        # gaps (compaction, transaction markers).
        while position < high:
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"read of {topic}[{partition}] stopped at offset {position} of {high} after {timeout_s:.0f} s"
                )
            for record in poll_records(consumer, 0.5):
                if record.offset >= high:
                    return
                yield record
            position = max(position, consumer.position([TopicPartition(topic, partition)])[0].offset)
    finally:
        consumer.unassign()


class Sender(Protocol):
    """What writes one message and waits for it: :class:`SyncProducer`, or the governance consumer's fenced,
    transactional producer (``governance.service.transactions``)."""

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> tuple[int, int]: ...


class SyncProducer:
    """An idempotent producer whose :meth:`send` waits for the acknowledgement and returns the offset."""

    def __init__(self, bootstrap: KafkaTarget, *, timeout_s: float = 30.0,
                 config: dict[str, Any] | None = None) -> None:
        settings: dict[str, Any] = {
            **kafka_config(bootstrap),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            "message.max.bytes": 4_194_304,
            "logger": _KAFKA_LOG,
        }
        settings.update(config or {})
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        try:
            self._producer = Producer(settings)
        except KafkaException as exc:
            raise InfrastructureError(f"cannot create a Kafka producer for {bootstrap}: {exc}") from None

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: list[tuple[str, str | bytes | None]] | None = None) -> tuple[int, int]:
        """Write one message and wait for it; returns ``(partition, offset)`` or raises DeliveryError."""
        outcome: dict[str, Any] = {}

        def delivered(err: KafkaError | None, msg: Message) -> None:
            outcome["error"], outcome["partition"], outcome["offset"] = err, msg.partition(), msg.offset()

        try:
            self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
        except (KafkaException, BufferError) as exc:
            raise DeliveryError(f"cannot queue a message for topic {topic}: {exc}") from None
        deadline = time.monotonic() + self.timeout_s
        while "error" not in outcome and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if "error" not in outcome:
            raise DeliveryError(f"no acknowledgement from {self.bootstrap} for topic {topic} in {self.timeout_s:.0f} s")
        if outcome["error"] is not None:
            why = denied(self.bootstrap, outcome["error"], f"a write to topic {topic}")
            raise DeliveryError(why or f"delivery to topic {topic} key {key!r} failed: {outcome['error'].str()}")
        return int(outcome["partition"]), int(outcome["offset"])

    def close(self) -> None:
        self._producer.flush(self.timeout_s)
