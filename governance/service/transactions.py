"""The audit log's single writer, fenced by the broker: a Kafka transactional producer with a fixed id.

Every process that writes the audit log (the governance consumer, ``shadowgate audit repair``) uses the
same ``transactional.id``, derived from the audit topic (:func:`transactional_id`). :meth:`init` registers
it with the broker's transaction coordinator, which bumps the producer epoch: an earlier producer with the
same id is fenced, its open transaction aborted and every later write refused. That is the zombie-writer
fence of Kafka's ``KafkaProducer.initTransactions``: a paused instance that wakes up after another took
over cannot append, whatever a lease told it.

Every write is a transaction (:meth:`transaction`): all its messages become visible to ``read_committed``
readers (every reader of the audit log) at once, or none does. The consumer writes an audit entry, the
routing assignments it changes and the checkpoint of the new head in one; :meth:`send` is a one-message
transaction (the routing of a rollback, which must be readable before the entry is sealed; alerts).

Failures (each raises; nothing of the transaction is visible):

* fenced (another writer called :meth:`init`): :class:`~governance.errors.FencedError`; this producer is
  dead, the process must stop;
* a message the broker refused (or not acknowledged in time): the transaction is aborted and
  :class:`~governance.errors.DeliveryError` raised. The producer is not dead, but librdkafka may purge
  the next transaction too while it bumps the producer epoch: callers stop on the first failure (the
  consumer does) and nothing relies on reusing it;
* a commit that fails: :class:`~governance.errors.InfrastructureError`, and whether it committed is
  unknown, so the caller must not fold anything and must stop; a restart rebuilds from the log (and
  ``init`` completes or aborts what was left open). It is not retried here: the messages were all
  acknowledged, so a failing commit means the coordinator or the connection is gone.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from governance.contract.connections import KafkaTarget, kafka_config
from governance.errors import DeliveryError, FencedError, InfrastructureError

__all__ = ["Delivery", "Transaction", "TransactionalProducer", "transactional_id"]

_KAFKA_LOG = logging.getLogger("shadowgate.kafka")  # librdkafka's lines, as governance.contract.kafkaio logs them
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


def transactional_id(audit_topic: str) -> str:
    """The one ``transactional.id`` of every writer of ``audit_topic``."""
    return f"shadowgate-audit:{audit_topic}"


class Delivery:
    """Where one message of a transaction was written (set when the broker acknowledged it)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.partition = -1
        self.offset = -1
        self.error: KafkaError | None = None
        self.done = False

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        self.error, self.done = err, True
        if err is None:
            self.partition, self.offset = int(msg.partition() or 0), int(msg.offset() or 0)


class Transaction:
    """The messages of one open transaction (see :meth:`TransactionalProducer.transaction`)."""

    def __init__(self, producer: TransactionalProducer) -> None:
        self._owner = producer
        self.deliveries: list[Delivery] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> Delivery:
        delivery = Delivery(topic)
        self._owner._produce(topic, value, key, delivery)
        self.deliveries.append(delivery)
        return delivery


class TransactionalProducer:
    """One fenced writer (module docstring). Call :meth:`init` once before the first transaction."""

    def __init__(self, bootstrap: KafkaTarget, txn_id: str, *, timeout_s: float = 30.0,
                 config: dict[str, Any] | None = None) -> None:
        settings: dict[str, Any] = {
            **kafka_config(bootstrap), "transactional.id": txn_id, "enable.idempotence": True,
            "acks": "all", "linger.ms": 0, "message.max.bytes": 4_194_304, "transaction.timeout.ms": 60_000,
            "logger": _KAFKA_LOG,
            # librdkafka's errors come here, not as exceptions raised from inside poll/flush (where a fatal one
            # would surface in the middle of a delivery callback); _raise_fatal() turns a fatal one into ours.
            "error_cb": self._on_error,
        }
        settings.update(config or {})
        self.bootstrap, self.txn_id = bootstrap, txn_id
        self.timeout_s = timeout_s
        self._initialised = False
        self._fatal: KafkaError | None = None
        try:
            self._producer = Producer(settings)
        except KafkaException as exc:
            raise InfrastructureError(f"cannot create a Kafka producer for {bootstrap}: {exc}") from None

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err

    def _raise_fatal(self, doing: str) -> None:
        if self._fatal is not None:
            raise self._error(KafkaException(self._fatal), doing)

    def _error(self, exc: KafkaException, doing: str) -> InfrastructureError:
        err: KafkaError = exc.args[0]
        if err.code() in _FENCED:
            return FencedError(f"{doing}: this writer was fenced: another process initialised transactional.id "
                               f"{self.txn_id!r} (another governance consumer or `audit repair` took over the audit "
                               f"log); stopping: {err.str()}")
        return InfrastructureError(f"{doing} (transactional.id {self.txn_id!r}): {err.str()}")

    def init(self) -> None:
        """Register the transactional id, fencing every earlier producer with it (aborts its open transaction)."""
        try:
            self._producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            raise self._error(exc, "initialising the audit log's transactions") from None
        self._initialised = True

    def _produce(self, topic: str, value: bytes, key: bytes | None, delivery: Delivery) -> None:
        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=delivery)
        except KafkaException as exc:  # refused before it left (too large, ...), or this writer is dead
            error = self._error(exc, f"queueing a message for topic {topic}")
            raise error if isinstance(error, FencedError) else DeliveryError(str(error)) from None

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Begin; the body produces; on leaving, every message is acknowledged and the transaction committed
        (or aborted and the failure raised, see the module docstring)."""
        if not self._initialised:
            raise InfrastructureError(f"transactions of {self.txn_id!r} used before init()")
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise self._error(exc, "beginning a transaction") from None
        txn = Transaction(self)
        try:
            yield txn
            self._flush(txn)
        except BaseException:
            self._abort()
            raise
        self._commit()

    def _flush(self, txn: Transaction) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            while not all(d.done for d in txn.deliveries) and time.monotonic() < deadline:
                self._producer.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            raise self._error(exc, "writing a transaction") from None
        except SystemError as exc:
            # confluent-kafka 2.x raises a fatal error (fenced) from flush() and then still calls the delivery
            # callbacks, which CPython reports as a SystemError caused by that KafkaException.
            if not isinstance(exc.__cause__, KafkaException):
                raise
            raise self._error(exc.__cause__, "writing a transaction") from None
        self._raise_fatal("writing a transaction")
        failed = [d for d in txn.deliveries if not d.done or d.error is not None]
        if failed:
            # Name the cause: the other messages of a refused batch fail as "purged", after it.
            first = min(failed, key=lambda d: d.error is not None and d.error.code() in _PURGED)
            reason = first.error.str() if first.error is not None else f"no acknowledgement in {self.timeout_s:.0f} s"
            if first.error is not None and first.error.code() in _FENCED:
                raise self._error(KafkaException(first.error), f"writing to topic {first.topic}")
            if first.error is not None and first.error.code() in _PURGED:
                reason += " (the broker refused the batch holding it; the shadowgate.kafka log names why)"
            raise DeliveryError(f"delivery to topic {first.topic} failed: {reason}")

    def _abort(self) -> None:
        try:
            self._producer.abort_transaction(self.timeout_s)
        except KafkaException:  # fenced or fatal: the broker aborts it (or already did); the caller's error stands
            return

    def _commit(self) -> None:
        try:
            self._producer.commit_transaction(self.timeout_s)
        except KafkaException as exc:
            raise self._error(exc, "committing a transaction (its outcome is unknown: stop, the log decides)") from None

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> tuple[int, int]:
        """Write one message in a transaction of its own; ``(partition, offset)`` once committed."""
        with self.transaction() as txn:
            delivery = txn.produce(topic, value, key)
        return delivery.partition, delivery.offset

    def close(self) -> None:
        # Nothing can be pending: transaction() always flushed, committed or aborted before returning. A fenced
        # producer raises its fatal error once more here; it is dead either way.
        with contextlib.suppress(KafkaException):
            self._producer.flush(0)
