"""Delivering a batch's dead letters to the dead-letter topic, and knowing that the broker has them.

:meth:`DeadLetterSink.deliver` produces every dead letter of a batch (original bytes, reason headers) and
returns only once the broker acknowledged each (``acks=all``, idempotent producer); it raises
:class:`~governance.errors.DeliveryError` otherwise, and the caller tries the whole batch again (the
processor calls it before the batch's apply, the ingest loop commits offsets only after both).

A dead letter whose bytes the broker refuses for what they are (``MSG_SIZE_TOO_LARGE``, also raised by the
client before sending; ``RECORD_LIST_TOO_LARGE``; ``INVALID_RECORD``) is tried once more alone (a batch of
small records can be refused as a whole), and if refused again is replaced by its *reference*
(:meth:`~streams.decode.records.DeadLetter.reference`: topic, partition, offset, size, sha256 of the bytes,
reason, and the header ``shadowgate.reference`` saying why), so it is never lost. Any other failure (broker
down, timeout, authorisation) raises: never skipped, never acknowledged before the broker did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from governance.errors import DeliveryError
from streams.decode.records import DeadLetter

__all__ = ["DeadLetterSink", "ProducerLike"]

log = logging.getLogger(__name__)

#: Broker (or client) errors that refuse a record for its content: sending it again cannot help.
_REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD})


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` the sink uses."""

    def produce(self, topic: str, value: bytes | None = ..., key: bytes | None = ..., **kwargs: Any) -> None: ...

    def flush(self, timeout: float = ...) -> int: ...


class DeadLetterSink:
    """Delivers dead letters and waits for the broker's acknowledgement (see module doc).

    ``on_reference`` is told of each dead letter written as a reference (for a metric). Not thread-safe.
    """

    def __init__(
        self, producer: ProducerLike, topic: str, timeout_s: float,
        on_reference: Callable[[DeadLetter, str], None] | None = None,
    ) -> None:  # fmt: skip
        self._producer = producer
        self.topic = topic
        self._timeout_s = timeout_s
        self._on_reference = on_reference

    def deliver(self, dead_letters: list[DeadLetter]) -> None:
        """Return once the broker holds every dead letter (or its reference); DeliveryError otherwise."""
        if not dead_letters:
            return
        errors = self._send([(d.record.key, d.record.value or b"", d.headers()) for d in dead_letters])
        refused = [(dead_letters[i], err) for i, err in errors.items() if err.code() in _REFUSED]
        failed = {i: err for i, err in errors.items() if err.code() not in _REFUSED}
        if failed:
            first = next(iter(failed.values()))
            raise DeliveryError(
                f"dead-letter topic {self.topic}: {len(failed)} of {len(dead_letters)} dead letters not "
                f"acknowledged ({first.str()}); the batch will be tried again"
            )
        for dead, err in refused:
            self._alone_or_reference(dead, err)

    def _alone_or_reference(self, dead: DeadLetter, err: KafkaError) -> None:
        """A refused dead letter: alone (its batch may have been the trouble), else its reference."""
        again = self._send([(dead.record.key, dead.record.value or b"", dead.headers())])
        if not again:
            return
        err = again[0]
        if err.code() not in _REFUSED:
            raise DeliveryError(f"dead-letter topic {self.topic}: {err.str()}; the batch will be tried again")
        value, headers = dead.reference(err.str())
        failed = self._send([(dead.record.key, value, headers)])
        if failed:
            raise DeliveryError(
                f"dead-letter topic {self.topic}: the broker refused the reference of "
                f"{dead.record.topic}/{dead.record.partition}/{dead.record.offset} too ({failed[0].str()})"
            )
        log.warning(
            "dead letter %s/%d/%d: the broker refused its %d bytes (%s); wrote a reference to %s",
            dead.record.topic, dead.record.partition, dead.record.offset, len(dead.record.value or b""),
            err.str(), self.topic,
        )  # fmt: skip
        if self._on_reference is not None:
            self._on_reference(dead, err.str())

    def _send(self, records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]) -> dict[int, KafkaError]:
        """Produce ``records`` and wait; the error of each record not acknowledged, by index."""
        errors: dict[int, KafkaError] = {}
        acked: set[int] = set()
        for i, (key, value, headers) in enumerate(records):

            def report(err: KafkaError | None, _msg: Any, i: int = i) -> None:
                if err is None:
                    acked.add(i)
                else:
                    errors[i] = err

            try:
                self._produce(key, value, headers, report)
            except KafkaException as exc:  # refused by the client before sending (size), or it cannot queue
                errors[i] = exc.args[0]
        self._producer.flush(self._timeout_s + 5.0)
        for i in range(len(records)):
            if i not in acked and i not in errors:
                errors[i] = KafkaError(KafkaError._MSG_TIMED_OUT, "not acknowledged in time")
        return errors

    def _produce(
        self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], report: Callable[..., None]
    ) -> None:
        try:
            self._producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=report)
        except BufferError:  # the local queue is full: let it drain, then queue again
            self._producer.flush(self._timeout_s)
            self._producer.produce(self.topic, value=value, key=key, headers=headers, on_delivery=report)
