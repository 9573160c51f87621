"""RoutingClient: which version of a model should answer a request, from the signed, compacted routing topic.

::

    from shadowgate.routing_client import RoutingClient

    client = RoutingClient("127.0.0.1:9092", "model.routing", trust_store)   # trust store: governance's public key
    client.refresh()                        # read everything up to now (blocking, once at start-up)
    client.start()                          # then follow updates in a background thread
    version, role = client.route("fraud", request_id)       # production or canary, by a stable hash
    shadows = client.assignment("fraud").shadow             # versions that score in shadow
    client.close()

Guarantees: an assignment is used only after its signature verified against the trust store
(``Context.EVENT``, type ``RoutingAssignment``); a record that fails is ignored and counted in
``rejected``, and the last valid assignment stays. Per model the assignment with the highest audit
``seq`` wins, so an old signed record published again cannot roll the routing back. Reads are
thread-safe. :meth:`route` is deterministic per request id.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Literal

from confluent_kafka import TopicPartition

from governance.contract.connections import KafkaTarget
from governance.contract.kafkaio import Record, make_consumer, partitions_of, poll_records, watermarks
from governance.crypto.keys import TrustStore
from governance.crypto.schedule import DEFAULT_SCHEDULE, MigrationSchedule
from governance.errors import EventValidationError, InfrastructureError, VerificationError
from governance.lifecycle.routing import Assignment, decode_assignment

__all__ = ["Assignment", "RoutingClient"]


class RoutingClient:
    """Follows the routing topic and answers "which version serves this model" (see the module docstring)."""

    def __init__(self, bootstrap: KafkaTarget, topic: str, trust_store: TrustStore, *,
                 schedule: MigrationSchedule = DEFAULT_SCHEDULE) -> None:
        self.topic = topic
        self.trust_store = trust_store
        self.schedule = schedule
        self.rejected = 0
        self._assignments: dict[str, Assignment] = {}
        self._lock = threading.Lock()
        self._consumer = make_consumer(bootstrap, "routing-client")
        self._partitions = partitions_of(self._consumer, topic)
        self._consumer.assign([TopicPartition(topic, p, 0) for p in self._partitions])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _apply(self, record: Record) -> None:
        now = datetime.now(UTC)
        try:
            assignment = decode_assignment(record.value, self.trust_store, now, self.schedule.phase_at(now))
        except (VerificationError, EventValidationError):
            self.rejected += 1
            return
        with self._lock:
            current = self._assignments.get(assignment.model)
            if current is None or assignment.seq >= current.seq:
                self._assignments[assignment.model] = assignment

    def poll(self, timeout_s: float = 0.2) -> int:
        """Apply the records available within ``timeout_s``; returns how many were read."""
        records = poll_records(self._consumer, timeout_s)
        for record in records:
            self._apply(record)
        return len(records)

    def refresh(self, timeout_s: float = 10.0) -> None:
        """Read until every partition's current end (InfrastructureError if that takes over ``timeout_s``).

        Call it before :meth:`start`: the follower thread and this method share one Kafka consumer.
        """
        ends = {p: watermarks(self._consumer, self.topic, p)[1] for p in self._partitions}
        deadline = time.monotonic() + timeout_s
        while True:
            positions = {tp.partition: tp.offset for tp in self._consumer.position(
                [TopicPartition(self.topic, p) for p in self._partitions])}
            if all(positions.get(p, -1) >= end or end == 0 for p, end in ends.items()):
                return
            if time.monotonic() > deadline:
                raise InfrastructureError(f"routing topic {self.topic} not read to its end within {timeout_s} s")
            self.poll(0.2)

    def start(self, interval_s: float = 0.1) -> None:
        """Follow updates in a daemon thread."""
        if self._thread is not None:
            return

        def follow() -> None:
            while not self._stop.is_set():
                self.poll(interval_s)

        self._thread = threading.Thread(target=follow, name=f"routing-{self.topic}", daemon=True)
        self._thread.start()

    def assignment(self, model: str) -> Assignment | None:
        """The current verified assignment of ``model`` (None when the topic holds none)."""
        with self._lock:
            return self._assignments.get(model)

    def route(self, model: str, request_id: str) -> tuple[str | None, Literal["production", "canary"]]:
        """The version that answers ``request_id`` and its role; ``(None, "production")`` for an unknown model."""
        assignment = self.assignment(model)
        if assignment is None:
            return None, "production"
        return assignment.route(request_id)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._consumer.close()
