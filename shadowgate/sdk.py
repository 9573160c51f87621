"""Publisher SDK for scoring services.

::

    from shadowgate import ScorePublisher

    with ScorePublisher("127.0.0.1:9092") as pub:  # envelopes of up to 500 events, 50 ms linger
        pub.publish({"request_id": rid, "model": "fraud", "version": "1.4.0", "role": "production",
                     "score": 0.12, "latency_ms": 8.1, "ts": datetime.now(UTC)})
        pub.publish({... "version": "1.5.0", "role": "shadow", ...})

Guarantees: events are validated before anything is sent (an invalid event raises
:class:`~governance.errors.EventValidationError` naming the field, and nothing of it is queued); the
producer is idempotent with ``acks=all`` and lz4 compression, so a retry never duplicates a message;
events are keyed by ``request_id`` so the production and candidate sides of a request land on the same
partition, also when micro-batched into ``ScoreBatch`` envelopes (grouped per partition with Kafka's own
murmur2 partitioner). Delivery failures are reported to ``on_delivery_error`` and counted in
``stats``; ``flush()`` waits for every queued message and returns how many are still undelivered.

Partitions added to a topic while publishers run: every ``metadata_refresh_s`` (30 s) a publisher reads the
topic's partition count again (``ScorePublisher``'s envelopes from its background thread, single keyed
messages through librdkafka's ``topic.metadata.refresh.interval.ms``, set to the same interval), so scores and
labels of requests published after the refresh meet on one partition again. Requests in flight across the
change (a score before, its label after) land on different partitions: Kafka's own keyed placement has the
same limit. A failed refresh keeps the last count, is logged and counted in ``stats.metadata_errors``.

For asyncio services, :mod:`shadowgate.sdk_async` has the same publishers with awaitable deliveries.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from governance.contract.connections import KafkaTarget, kafka_config
from governance.contract.wire import LabelEvent, ScoreEvent, encode, validate_label, validate_score
from governance.errors import DeliveryError, InfrastructureError
from shadowgate.partitioner import partition_for

__all__ = ["LabelPublisher", "PublisherStats", "ScorePublisher", "Waiter"]

DeliveryCallback = Callable[[DeliveryError], None]
#: Told of one event's fate: None when its message was delivered, else the error (the asyncio publishers' hook).
Waiter = Callable[[DeliveryError | None], None]

_KAFKA_LOG = logging.getLogger("shadowgate.kafka")
_KAFKA_LOG.addHandler(logging.NullHandler())  # a library stays quiet unless the application configures logging


@dataclass
class PublisherStats:
    """What a publisher did so far (events, not Kafka messages, for ``queued``/``delivered``)."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    messages: int = 0
    #: the topic's partition count the envelopes are placed by (0 for publishers without envelopes)
    partitions: int = 0
    #: periodic partition-count reads that failed (the last count stayed in use)
    metadata_errors: int = 0


class _Base:
    def __init__(
        self,
        bootstrap_servers: KafkaTarget,
        topic: str,
        *,
        on_delivery_error: DeliveryCallback | None = None,
        producer_config: Mapping[str, Any] | None = None,
        metadata_refresh_s: float = 30.0,
    ) -> None:
        if not metadata_refresh_s > 0:
            raise ValueError("metadata_refresh_s must be > 0")
        self.metadata_refresh_s = metadata_refresh_s
        config: dict[str, Any] = {
            # Every bootstrap host, security.protocol, SASL and TLS: the same as every other shadowgate process.
            **kafka_config(bootstrap_servers),
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            # librdkafka places keyed single messages by the partition count of its last metadata read
            "topic.metadata.refresh.interval.ms": max(int(metadata_refresh_s * 1000), 10),
            # librdkafka's own log lines go to the "shadowgate.kafka" logger, not straight to stderr.
            "logger": _KAFKA_LOG,
        }
        config.update(producer_config or {})
        self.topic = topic
        self.stats = PublisherStats()
        self._on_error = on_delivery_error
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise InfrastructureError(f"cannot create a Kafka producer for {bootstrap_servers}: {exc}") from None
        self._closed = False

    def _delivered(self, count: int, waiters: list[Waiter] | None) -> Callable[[KafkaError | None, Message], None]:
        def callback(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.stats.delivered += count
                for waiter in waiters or ():
                    waiter(None)
                return
            self.stats.failed += count
            key = msg.key()
            error = DeliveryError(
                f"delivery to topic {msg.topic()} partition {msg.partition()} "
                f"key {key!r} failed: {err.str()} ({count} event(s))", topic=msg.topic(), code=err.code()
            )
            for waiter in waiters or ():
                waiter(error)
            if self._on_error is not None:
                self._on_error(error)

        return callback

    def _produce(
        self,
        value: bytes,
        key: bytes | None,
        count: int,
        partition: int | None = None,
        waiters: list[Waiter] | None = None,
    ) -> None:
        if self._closed:
            raise InfrastructureError("publisher is closed")
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._delivered(count, waiters)}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(self.topic, **kwargs)
                break
            except BufferError:
                # Local queue full: serve delivery reports to make room, then retry.
                self._producer.poll(0.1)
        self.stats.messages += 1
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> int:
        """Send everything queued; return the number of messages still undelivered after the timeout."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush and close; raises DeliveryError when messages remain undelivered."""
        if self._closed:
            return
        left = self.flush(timeout_s)
        self._closed = True
        if left:
            raise DeliveryError(f"{left} message(s) to topic {self.topic} undelivered after {timeout_s:.0f} s")

    def __enter__(self) -> _Base:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ScorePublisher(_Base):
    """Publishes :class:`ScoreEvent` s, one per Kafka message or micro-batched into envelopes.

    ``batch_size`` N > 0 (default 500) groups up to N events of the same partition into one ``ScoreBatch``
    envelope, sent when full, when ``linger_s`` has passed since the envelope's first event, and on
    ``flush()``/``close()``; 0 sends every event as its own message (a worker folds about 8x fewer pairs
    per second from those: ``docs/benchmarks.md``). A background thread sends lingering
    envelopes (and serves delivery reports) when publishing pauses, so no event waits in a half-full
    envelope longer than about ``linger_s``: a late envelope would make its pairs late for the join
    window. ``on_delivery_error`` may then be called from that thread. ``publish`` is thread-safe.
    """

    def __init__(
        self,
        bootstrap_servers: KafkaTarget = "127.0.0.1:9092",
        topic: str = "scores",
        *,
        batch_size: int = 500,
        linger_s: float = 0.05,
        on_delivery_error: DeliveryCallback | None = None,
        producer_config: Mapping[str, Any] | None = None,
        metadata_timeout_s: float = 10.0,
        metadata_refresh_s: float = 30.0,
    ) -> None:
        if batch_size < 0:
            raise ValueError("batch_size must be >= 0 (0 = one event per message)")
        super().__init__(
            bootstrap_servers,
            topic,
            on_delivery_error=on_delivery_error,
            producer_config=producer_config,
            metadata_refresh_s=metadata_refresh_s,
        )
        if not linger_s > 0:
            raise ValueError("linger_s must be > 0")
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._partitions = 0
        self._buffers: dict[int, list[bytes]] = {}
        self._waiters: dict[int, list[Waiter]] = {}
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lingerer: threading.Thread | None = None
        self._metadata_timeout_s = metadata_timeout_s
        self._refreshed = time.monotonic()
        if batch_size:
            self._partitions = self.stats.partitions = self._partition_count(metadata_timeout_s)
            # The thread holds only a weak reference: an unclosed publisher can still be collected.
            self._lingerer = threading.Thread(
                target=_linger,
                args=(weakref.ref(self), self._stop, linger_s),
                name="shadowgate-linger",
                daemon=True,
            )
            self._lingerer.start()

    def _partition_count(self, timeout_s: float) -> int:
        try:
            md = self._producer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as exc:
            raise InfrastructureError(f"cannot read metadata of topic {self.topic}: {exc}") from None
        topic = md.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error.str() if topic is not None and topic.error is not None else "no partitions"
            raise InfrastructureError(
                f"topic {self.topic} is not available ({reason}): create it "
                "(`shadowgate topics create`) or start the worker first"
            )
        return len(topic.partitions)

    def refresh_partitions(self) -> int:
        """Read the topic's partition count again and place later envelopes by it; returns the count in use.

        Called every ``metadata_refresh_s`` by the background thread. A failed read keeps the last count (logged,
        counted in ``stats.metadata_errors``): envelopes then still land on partitions that exist.
        """
        self._refreshed = time.monotonic()
        try:
            count = self._partition_count(self._metadata_timeout_s)
        except InfrastructureError as exc:
            self.stats.metadata_errors += 1
            _KAFKA_LOG.warning("keeping %d partition(s) for topic %s: %s", self._partitions, self.topic, exc)
            return self._partitions
        with self._lock:
            if count != self._partitions:
                _KAFKA_LOG.info("topic %s now has %d partition(s), was %d", self.topic, count, self._partitions)
                self._partitions = self.stats.partitions = count
        return count

    def publish(self, event: ScoreEvent | Mapping[str, Any]) -> None:
        """Validate and queue one event; raises EventValidationError naming the field."""
        self._enqueue(validate_score(dict(event) if isinstance(event, Mapping) else event), None)

    def _enqueue(self, ev: ScoreEvent, waiter: Waiter | None) -> None:
        key = ev.request_id.encode()
        waiters = None if waiter is None else [waiter]
        if not self.batch_size:
            self._produce(encode(ev), key, 1, waiters=waiters)
            self.stats.queued += 1
            return
        body = orjson.dumps(ev.model_dump(mode="json", exclude_none=True))
        with self._lock:
            # The count is read under the lock, so an event is placed by the count its envelope is sent with.
            partition = partition_for(key, self._partitions)
            buf = self._buffers.setdefault(partition, [])
            if not buf:
                self._started[partition] = time.monotonic()
            buf.append(body)
            if waiter is not None:
                self._waiters.setdefault(partition, []).append(waiter)
            self.stats.queued += 1
            if len(buf) >= self.batch_size:
                self._send_envelope(partition)
            self._send_lingering()

    def publish_many(self, events: Iterable[ScoreEvent | Mapping[str, Any]]) -> None:
        """Validate every event first, then queue them all: one bad event queues none."""
        validated = [validate_score(dict(e) if isinstance(e, Mapping) else e) for e in events]
        for ev in validated:
            self.publish(ev)

    def _send_envelope(self, partition: int) -> None:
        buf = self._buffers.pop(partition, [])
        waiters = self._waiters.pop(partition, None)
        self._started.pop(partition, None)
        if buf:
            value = b'{"events":[' + b",".join(buf) + b"]}"
            self._produce(value, None, len(buf), partition=partition, waiters=waiters)

    def _send_lingering(self) -> None:
        if not self._started:
            return
        now = time.monotonic()
        for partition, started in list(self._started.items()):
            if now - started >= self.linger_s:
                self._send_envelope(partition)

    def linger(self) -> None:
        """Send the envelopes older than ``linger_s`` and serve delivery reports (the background thread's work);
        read the partition count again when ``metadata_refresh_s`` has passed."""
        with self._lock:
            if self._closed:
                return
            self._send_lingering()
            self._producer.poll(0)
        # Outside the lock: a metadata read may take up to metadata_timeout_s, and publish() must not wait on it.
        if time.monotonic() - self._refreshed >= self.metadata_refresh_s:
            self.refresh_partitions()

    def flush(self, timeout_s: float = 30.0) -> int:
        with self._lock:
            for partition in list(self._buffers):
                self._send_envelope(partition)
        return super().flush(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._lingerer is not None and self._lingerer is not threading.current_thread():
            self._lingerer.join()
        super().close(timeout_s)

    def __enter__(self) -> ScorePublisher:
        return self


def _linger(ref: weakref.ReferenceType[ScorePublisher], stop: threading.Event, linger_s: float) -> None:
    while not stop.wait(max(linger_s / 4, 0.005)):
        publisher = ref()
        if publisher is None:
            return
        publisher.linger()
        del publisher


class LabelPublisher(_Base):
    """Publishes :class:`LabelEvent` s keyed by ``request_id``."""

    def __init__(
        self,
        bootstrap_servers: KafkaTarget = "127.0.0.1:9092",
        topic: str = "labels",
        *,
        on_delivery_error: DeliveryCallback | None = None,
        producer_config: Mapping[str, Any] | None = None,
        metadata_refresh_s: float = 30.0,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            topic,
            on_delivery_error=on_delivery_error,
            producer_config=producer_config,
            metadata_refresh_s=metadata_refresh_s,
        )

    def publish(self, event: LabelEvent | Mapping[str, Any]) -> None:
        """Validate and queue one label; raises EventValidationError naming the field."""
        self._enqueue(validate_label(dict(event) if isinstance(event, Mapping) else event), None)

    def _enqueue(self, ev: LabelEvent, waiter: Waiter | None) -> None:
        self._produce(encode(ev), ev.request_id.encode(), 1, waiters=None if waiter is None else [waiter])
        self.stats.queued += 1

    def __enter__(self) -> LabelPublisher:
        return self
