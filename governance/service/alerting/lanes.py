"""Delivery lanes: one thread per receiver delivers its notices in order and commits its own Kafka position.

Each lane owns a Kafka consumer group (``<group>.<receiver>``) used only to commit and read offsets: its
committed offset of an input partition is the first message whose notices it has not delivered. So:

* a lane commits ``offset + 1`` only after every notice of that message was delivered (2xx) or written to
  the dead-letter topic (acknowledged by the broker); a crash at any point leaves the position at or before
  the first undelivered notice, and a restart delivers it again (at least once; the notice id is the same);
* a receiver that is down holds back only its own lane: the others keep delivering and committing;
* the ``dead-letter`` lane writes rejected inputs (forged, unsigned, invalid) to the dead-letter topic
  with the same guarantee, so each is dead-lettered once per position.

Ordering: a lane delivers the notices of one partition in offset order; a notice is retried (see
:mod:`governance.service.alerting.delivery`) until it is delivered or dead-lettered before the next one.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from governance.contract.connections import KafkaTarget, kafka_config
from governance.contract.kafkaio import SyncProducer, until_coordinated
from governance.errors import InfrastructureError, ShadowgateError
from governance.service.alerting.config import RetryConfig
from governance.service.alerting.delivery import AlertmanagerChannel, Attempt, Channel, backoff_s
from governance.service.alerting.intake import Rejected
from governance.service.alerting.metrics import ForwarderMetrics, LaneView
from governance.service.alerting.notices import Notice

__all__ = ["Committer", "DeadLetters", "Item", "Lane"]

_LOG = logging.getLogger("shadowgate.alerts")
_KAFKA_LOG = logging.getLogger("shadowgate.kafka")
_COMMIT_EVERY_S = 1.0

TP = tuple[str, int]


@dataclass(frozen=True)
class Item:
    """One input message as a lane sees it: the notices it must deliver (maybe none) and its position."""

    topic: str
    partition: int
    offset: int
    notices: tuple[Notice, ...] = ()
    rejected: Rejected | None = None
    key: bytes | None = None
    value: bytes = field(default=b"", repr=False)
    queued_at: float = 0.0

    @property
    def tp(self) -> TP:
        return self.topic, self.partition

    @property
    def work(self) -> int:
        return len(self.notices) + (self.rejected is not None)


class Committer:
    """Reads and commits one consumer group's offsets (it never subscribes: standalone commits).

    :meth:`commit_async` never blocks (a coordinator that does not answer would hold a synchronous commit for
    ~45 s, and delivery with it); :meth:`confirmed` serves the broker's answers: only offsets it acknowledged
    are returned as committed.
    """

    def __init__(self, bootstrap: KafkaTarget, group: str) -> None:
        self.group = group
        self._answers: list[tuple[KafkaError | None, list[TopicPartition]]] = []
        try:
            # It never joins the group, so the session timeout only bounds how long a commit (and close) waits
            # for a coordinator that does not answer: 6 s instead of librdkafka's 45.
            self._consumer = Consumer({**kafka_config(bootstrap), "group.id": group, "enable.auto.commit": False,
                                       "session.timeout.ms": 6000, "logger": _KAFKA_LOG,
                                       "on_commit": self._on_commit})
        except KafkaException as exc:
            raise InfrastructureError(f"cannot create a Kafka client for group {group}: {exc}") from None

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        self._answers.append((error, list(partitions)))

    def committed(self, partitions: list[TP], timeout_s: float = 10.0) -> dict[TP, int | None]:
        """The committed offset of each partition (None: never committed)."""
        try:
            found = until_coordinated(
                lambda: self._consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout_s),
                timeout_s=30.0)
        except KafkaException as exc:
            raise InfrastructureError(f"cannot read the offsets of group {self.group}: {exc}") from None
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in found}

    def commit(self, positions: dict[TP, int]) -> None:
        """Commit and wait for the broker (start-up only)."""
        if not positions:
            return
        try:
            until_coordinated(
                lambda: self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                                              asynchronous=False),
                timeout_s=30.0)
        except KafkaException as exc:
            raise InfrastructureError(f"cannot commit the offsets of group {self.group}: {exc}") from None

    def commit_async(self, positions: dict[TP, int]) -> None:
        try:
            self._consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                                  asynchronous=True)
        except KafkaException as exc:
            raise InfrastructureError(f"cannot commit the offsets of group {self.group}: {exc}") from None

    def confirmed(self, timeout_s: float = 0.0) -> tuple[dict[TP, int], list[str]]:
        """The offsets the broker acknowledged since the last call, and the errors it answered."""
        self._consumer.poll(timeout_s)  # serves the commit callbacks; nothing is assigned, so no message comes
        answers, self._answers = self._answers, []
        done: dict[TP, int] = {}
        errors: list[str] = []
        for error, partitions in answers:
            if error is not None:
                errors.append(f"cannot commit the offsets of group {self.group}: {error.str()}")
                continue
            for tp in partitions:
                if tp.error is None and tp.offset >= 0:
                    done[(tp.topic, tp.partition)] = max(tp.offset, done.get((tp.topic, tp.partition), 0))
                elif tp.error is not None:
                    errors.append(f"group {self.group} {tp.topic}[{tp.partition}]: {tp.error.str()}")
        return done, errors

    def close(self) -> None:
        self._consumer.close()


class DeadLetters:
    """Writes dead letters to the dead-letter topic, headers as the worker's (``shadowgate.reason``, ...)."""

    def __init__(self, producer: SyncProducer, topic: str) -> None:
        self.producer, self.topic = producer, topic

    def _send(self, value: bytes, key: bytes | None, reason: str, source: str, model: str, receiver: str) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("shadowgate.reason", reason[:1000].encode()), ("shadowgate.source", source.encode()),
            ("shadowgate.model", model.encode()), ("shadowgate.receiver", receiver.encode())]
        self.producer.send(self.topic, value, key, headers=headers)

    def refused(self, receiver: str, notice: Notice, attempt: Attempt, attempts: int, reason: str) -> None:
        """A notice the receiver refused (or answered garbage to ``attempts`` times in a row)."""
        why = f"{reason}: {attempt.detail} (after {attempts} attempt(s))"
        doc: dict[str, Any] = {"reason": why, "receiver": receiver, "status": attempt.status, "attempts": attempts,
                               "notice": notice.to_json()}
        origin = notice.origin
        self._send(orjson.dumps(doc), notice.dedup_key.encode(), why, f"{origin.topic}/{origin.partition}/"
                   f"{origin.offset}", notice.model, receiver)

    def rejected(self, item: Item) -> None:
        """A rejected input: the original bytes, the reason in the headers."""
        assert item.rejected is not None  # noqa: S101 - only the dead-letter lane calls this, with a rejection
        rejected = item.rejected
        self._send(item.value, item.key, f"{rejected.reason}: {rejected.message}",
                   f"{item.topic}/{item.partition}/{item.offset}", rejected.claims.get("model", ""), "dead-letter")


class Lane:
    """One receiver's delivery thread (see the module docstring). ``channel`` None: the dead-letter lane."""

    def __init__(self, name: str, channel: Channel | None, *, committer: Committer, dead_letters: DeadLetters,
                 retry: RetryConfig, metrics: ForwarderMetrics, stop: threading.Event, max_pending: int,
                 clock: Callable[[], datetime], open_notices: Callable[[], list[Notice]] | None = None,
                 ready: Callable[[], bool] = lambda: True, jitter: Callable[[], float] = random.random) -> None:
        self.name, self.channel = name, channel
        self.committer, self.dead_letters, self.retry = committer, dead_letters, retry
        self.metrics, self.stop, self.max_pending, self.clock = metrics, stop, max_pending, clock
        self._open_notices, self._ready, self._jitter = open_notices, ready, jitter
        self.start_positions: dict[TP, int] = {}
        self._queue: deque[Item] = deque()
        self._cv = threading.Condition()
        self._pending = 0
        self._done: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        self._last_commit = 0.0
        self._last_refresh: float | None = None  # None: re-post as soon as caught up (restores Alertmanager)
        self._refresh_every = channel.resend_s if isinstance(channel, AlertmanagerChannel) else None
        self.backoff_s = 0.0
        self.thread = threading.Thread(target=self._run, name=f"alerts-lane-{name}", daemon=True)
        self.error: BaseException | None = None

    # ------------------------------------------------------------------------------- reader's side

    def wants(self, notice: Notice) -> bool:
        return self.channel is not None and self.channel.wants(notice)

    def behind(self, tp: TP, offset: int) -> bool:
        """True when the message at ``offset`` is at or after this lane's start (it is this lane's to deliver)."""
        start = self.start_positions.get(tp)
        return start is not None and offset >= start

    def offer(self, item: Item) -> None:
        with self._cv:
            self._queue.append(item)
            self._pending += item.work
            self._cv.notify_all()

    def has_room(self) -> bool:
        with self._cv:
            return len(self._queue) < self.max_pending

    def wait_for_room(self, timeout_s: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: len(self._queue) < self.max_pending, timeout=timeout_s)

    def view(self) -> LaneView:
        with self._cv:
            first = next((item for item in self._queue if item.work), None)
            pending = self._pending
        age = max(0.0, time.monotonic() - first.queued_at) if first is not None else 0.0
        return LaneView(self.name, pending, age, self.backoff_s)

    def delivered_positions(self) -> dict[TP, int]:
        """The positions this lane has delivered (or dead-lettered) everything before."""
        return dict(self._done)

    def committed_positions(self) -> dict[TP, int]:
        """The positions Kafka confirmed for this lane."""
        with self._cv:
            return dict(self._committed)

    # ---------------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                with self._cv:
                    self._cv.wait_for(lambda: bool(self._queue) or self.stop.is_set(), timeout=0.2)
                    item = self._queue[0] if self._queue else None
                if item is None:
                    self._commit(force=False)
                    self._refresh()
                    continue
                if not self._handle(item):
                    break  # stopped in the middle of a notice: its position stays uncommitted
                with self._cv:
                    self._queue.popleft()
                    self._pending -= item.work
                    self._cv.notify_all()
                self._done[item.tp] = item.offset + 1
                self._commit(force=item.work > 0)
        except BaseException as exc:  # noqa: BLE001 - a bug: kept for /healthz and re-raised after logging
            self.error = exc
            _LOG.exception("alert lane %s stopped by an unexpected error", self.name)
            raise
        finally:
            self._final_commit()

    def _handle(self, item: Item) -> bool:
        for notice in item.notices:
            if not self._deliver(notice):
                return False
        if item.rejected is not None:
            return self._write(functools.partial(self.dead_letters.rejected, item), "rejected_input")
        return True

    def _deliver(self, notice: Notice) -> bool:
        assert self.channel is not None  # noqa: S101 - the dead-letter lane gets no notices
        attempts = garbage = 0
        while True:
            attempt = self.channel.deliver(notice, self.clock())
            attempts += 1
            self.metrics.attempts.labels(receiver=self.name, result=attempt.result).inc()
            if attempt.delivered:
                self.metrics.delivered.labels(receiver=self.name).inc()
                self.backoff_s = 0.0
                if attempts > 1:
                    _LOG.warning("%s: notice %s delivered after %d attempts", self.name, notice.notice_id, attempts)
                return True
            garbage = garbage + 1 if attempt.result == "garbage" else 0
            if attempt.refused or garbage >= self.retry.max_garbage:
                reason = "refused" if attempt.refused else "garbage"
                _LOG.error("%s: notice %s (%s %s) %s: %s; dead-lettered", self.name, notice.notice_id,
                           notice.alertname, notice.model, reason, attempt.detail)
                self.backoff_s = 0.0
                return self._write(functools.partial(self.dead_letters.refused, self.name, notice, attempt, attempts,
                                                     reason), reason)
            delay = backoff_s(attempts, self.retry, self._jitter(), attempt.retry_after_s)
            self.backoff_s = delay
            _LOG.warning("%s: notice %s (%s %s) attempt %d failed: %s; retrying in %.1f s", self.name,
                         notice.notice_id, notice.alertname, notice.model, attempts, attempt.detail, delay)
            if self.stop.wait(delay):
                return False

    def _write(self, write: Callable[[], None], reason: str) -> bool:
        """Write a dead letter, retrying while Kafka refuses; False if stopped first."""
        attempts = 0
        while True:
            try:
                write()
            except ShadowgateError as exc:
                attempts += 1
                delay = backoff_s(attempts, self.retry, self._jitter())
                self.backoff_s = delay
                _LOG.warning("%s: dead-letter write failed (%s); retrying in %.1f s", self.name, exc, delay)
                if self.stop.wait(delay):
                    return False
                continue
            self.metrics.dead_lettered.labels(receiver=self.name, reason=reason).inc()
            self.backoff_s = 0.0
            return True

    def _commit(self, force: bool) -> None:
        """Send the positions of what was delivered (never blocks); record the ones the broker confirmed."""
        self._confirm()
        dirty = {tp: offset for tp, offset in self._done.items() if self._committed.get(tp) != offset}
        if not dirty or (not force and time.monotonic() - self._last_commit < _COMMIT_EVERY_S):
            return
        self._last_commit = time.monotonic()
        try:
            self.committer.commit_async(dirty)
        except InfrastructureError as exc:
            self.metrics.commit_failures.labels(receiver=self.name).inc()
            _LOG.warning("%s: %s; retrying", self.name, exc)

    def _confirm(self, timeout_s: float = 0.0) -> None:
        done, errors = self.committer.confirmed(timeout_s)
        for error in errors:
            self.metrics.commit_failures.labels(receiver=self.name).inc()
            _LOG.warning("%s: %s; retrying", self.name, error)
        with self._cv:
            for tp, offset in done.items():
                self._committed[tp] = max(offset, self._committed.get(tp, 0))

    def _unconfirmed(self) -> bool:
        return any(self._committed.get(tp) != offset for tp, offset in self._done.items())

    def _final_commit(self, timeout_s: float = 10.0) -> None:
        """On the way out: send what was delivered and wait (bounded) for the broker to confirm it."""
        deadline = time.monotonic() + timeout_s
        self._commit(force=True)
        while self._unconfirmed() and time.monotonic() < deadline:
            self._confirm(0.2)
            if self._unconfirmed() and time.monotonic() - self._last_commit >= _COMMIT_EVERY_S:
                self._commit(force=True)  # no answer, or an error: send again

    def _refresh(self) -> None:
        channel = self.channel
        if not isinstance(channel, AlertmanagerChannel) or self._open_notices is None or not self._ready():
            return
        every = self._refresh_every or 60.0
        if self._last_refresh is not None and time.monotonic() - self._last_refresh < every:
            return
        attempt = channel.refresh(self._open_notices(), self.clock())
        self.metrics.attempts.labels(receiver=self.name, result=attempt.result).inc()
        if attempt.delivered:
            self._last_refresh = time.monotonic()
        else:  # try again sooner than a full period
            self._last_refresh = time.monotonic() - every + min(every, 10.0)
            _LOG.warning("%s: re-posting the open conditions failed: %s", self.name, attempt.detail)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)
