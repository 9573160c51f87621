"""In-memory stand-ins for the worker's Kafka clients (``streams.worker.clients.WorkerClients``), for tests
of the wiring and of the ingest loop's bookkeeping without a broker. Faults of the real servers are tested
in tests/test_worker_faults.py; these fakes only say what the loop asked for (commits, pauses, produces).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> None:
        self._where = (topic, partition, offset)
        self._key, self._value = key, value

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def error(self) -> None:
        return None


class FakeConsumer:
    """Serves queued messages of its assigned partitions (assigned at the first ``consume``), records commits,
    pauses and resumes; ``revoke(...)`` makes the next ``consume`` call the revocation callback."""

    def __init__(self, partitions: int = 1) -> None:
        self.partitions = partitions
        self.queue: list[FakeMessage] = []
        self.committed: dict[tuple[str, int], int] = {}
        self.commits: list[list[tuple[str, int, int]]] = []
        self.paused: set[tuple[str, int]] = set()
        self.pauses = 0
        self.closed = False
        self.fail_commits = 0  # the next n commits raise
        self.events: list[tuple[str, dict[tuple[str, int], int]]] | None = None  # ("commit", offsets), if set
        self._assigned: list[TopicPartition] | None = None
        self._callbacks: dict[str, Callable[..., Any]] = {}
        self._topics: list[str] = []
        self._revoke: list[TopicPartition] = []
        self._offsets: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def put(self, topic: str, partition: int, value: bytes, key: bytes | None = b"k") -> None:
        """Append a message at the partition's next offset."""
        self.put_many([(topic, partition, value)], key)

    def put_many(self, messages: list[tuple[str, int, bytes]], key: bytes | None = b"k") -> None:
        """Append (topic, partition, value) messages at once: no ``consume`` sees a part of them."""
        with self._lock:
            for topic, partition, value in messages:
                offset = self._offsets.get((topic, partition), 0)
                self._offsets[(topic, partition)] = offset + 1
                self.queue.append(FakeMessage(topic, partition, offset, key, value))

    def revoke(self, topic: str, partition: int) -> None:
        self._revoke.append(TopicPartition(topic, partition))

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self._topics, self._callbacks = topics, callbacks

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if self._assigned is None:
            self._assigned = [TopicPartition(t, p) for t in self._topics for p in range(self.partitions)]
            self._callbacks["on_assign"](self, list(self._assigned))
        if self._revoke:
            gone, self._revoke = self._revoke, []
            self._assigned = [tp for tp in self._assigned if (tp.topic, tp.partition) not in
                              {(g.topic, g.partition) for g in gone}]  # fmt: skip
            self.queue = [m for m in self.queue if TopicPartition(m.topic(), m.partition()) not in gone]
            self._callbacks["on_revoke"](self, gone)
        with self._lock:
            ready = [m for m in self.queue if (m.topic(), m.partition()) not in self.paused][:num_messages]
            self.queue = [m for m in self.queue if m not in ready]
        if not ready:
            time.sleep(min(max(timeout, 0.0), 0.01))
        return ready

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        if self.fail_commits:
            self.fail_commits -= 1
            raise KafkaException(KafkaError(KafkaError._WAIT_COORD, "Commit failed: Local: Waiting for coordinator"))
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        if self.events is not None:
            self.events.append(("commit", {(tp.topic, tp.partition): tp.offset for tp in offsets}))
        for tp in offsets:
            self.committed[(tp.topic, tp.partition)] = tp.offset
        return offsets

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._assigned = list(partitions)

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.pauses += 1
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def assignment(self) -> list[TopicPartition]:
        return list(self._assigned or [])

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Acknowledges every message at ``flush`` (or refuses those ``refuse`` says, with that error code)."""

    def __init__(self, refuse: Callable[[bytes], int | None] = lambda value: None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = []
        self.refuse = refuse
        self.down = False  # every message times out
        self._pending: list[tuple[Callable[..., Any], int | None, tuple[str, bytes | None, bytes, Any]]] = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kwargs: Any) -> None:
        self._pending.append((kwargs["on_delivery"], self.refuse(value or b""),
                              (topic, key, value or b"", dict(kwargs.get("headers") or []))))  # fmt: skip

    def flush(self, timeout: float = -1) -> int:
        pending, self._pending = self._pending, []
        for report, code, message in pending:
            if self.down:
                report(KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out"), None)
            elif code is not None:
                report(KafkaError(code, "Broker: Message size too large"), None)
            else:
                self.sent.append(message)
                report(None, None)
        return 0


class FakeRedis:
    """What the worker asks of its Redis client when the window store is given separately."""

    def register_script(self, script: str) -> Callable[..., int]:
        return lambda **kwargs: 1

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release."""


class FakeAdmin:
    """Answers metadata requests with one broker (or none: ``down``)."""

    def __init__(self) -> None:
        self.down = False

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        if self.down:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata"))
        return type("Metadata", (), {"brokers": {} if self.down else {1: "fake"}})()
