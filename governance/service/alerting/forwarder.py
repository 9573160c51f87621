"""The alert forwarder (``shadowgate alerts forward``): verified decisions delivered to every receiver.

One reader thread reads the input topics (:mod:`~.intake`), verifies every message, folds it into the
open conditions (:mod:`~.tracker`) and hands each message, with the notices a receiver wants, to that
receiver's lane (:mod:`~.lanes`), which delivers and commits its own position. A rejected message goes to
the ``dead-letter`` lane only.

Start-up: each lane's committed offsets say where its delivery resumes; a lane with none (a new receiver,
or the first start) begins at the end of each partition and commits that at once, so a crash before its
first delivery loses nothing that arrived after it started. The reader then reads every partition from
its beginning: messages before a lane's position only rebuild the open conditions (the replay delivers
nothing and counts nothing), so the conditions, the Alertmanager re-posts and the gauges survive a restart.
``/readyz`` answers 200 once the replay reached the end that was there at start.

Guarantees: nothing unverified is delivered; a lane commits a message only after all its notices were
delivered or dead-lettered (at least once); a receiver that is down, slow or answering garbage holds back
only its own lane, up to ``max_pending`` messages, after which reading pauses until it catches up (memory
stays bounded, nothing is skipped); a message the tracker cannot map (a bug) is dead-lettered, never fatal.
Run one forwarder per ``group``: two would both deliver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from prometheus_client import CollectorRegistry

from governance.contract.connections import KafkaTarget
from governance.contract.kafkaio import Record, SyncProducer, make_consumer, partitions_of, poll_records, watermarks
from governance.contract.topics import ensure_topics
from governance.errors import InfrastructureError
from governance.lifecycle.identities import Trust
from governance.service.alerting.config import DEAD_LETTER, ForwarderConfig
from governance.service.alerting.delivery import HttpChannel, channels_for
from governance.service.alerting.intake import Input, Rejected, Source, verify
from governance.service.alerting.lanes import TP, Committer, DeadLetters, Item, Lane
from governance.service.alerting.metrics import ForwarderMetrics, StateCollector, View
from governance.service.alerting.notices import Notice
from governance.service.alerting.tracker import Applied, Condition, Tracker

__all__ = ["Forwarder"]

_LOG = logging.getLogger("shadowgate.alerts")
_DLQ_RETENTION_MS = str(30 * 86_400_000)
_POLL_STALE_S = 30.0


class Forwarder:
    """See the module docstring. ``topics`` maps each configured source to its topic."""

    def __init__(self, config: ForwarderConfig, *, bootstrap: KafkaTarget, topics: Mapping[Source, str], trust: Trust,
                 registry: CollectorRegistry, trigger_runbooks: Mapping[str, str] | None = None,
                 clock: Callable[[], datetime] | None = None, channels: list[HttpChannel] | None = None) -> None:
        self.config, self.bootstrap, self.trust = config, bootstrap, trust
        self.topics = {source: topics[source] for source in config.sources}
        self.clock = clock or (lambda: datetime.now(UTC))
        self.stop = threading.Event()
        self.tracker = Tracker(hold_s=config.hold_s, trigger_runbooks=trigger_runbooks,
                               rollbacks_from_audit="audit" in config.sources)
        channels = channels if channels is not None else channels_for(config)
        self.metrics = ForwarderMetrics(registry, [c.name for c in channels] + [DEAD_LETTER])
        self._producer = SyncProducer(bootstrap)
        dead_letters = DeadLetters(self._producer, config.dead_letter_topic)
        self.lanes = [
            Lane(name, channel, committer=Committer(bootstrap, config.group_of(name)), dead_letters=dead_letters,
                 retry=config.retry, metrics=self.metrics, stop=self.stop, max_pending=config.max_pending,
                 clock=self.clock, open_notices=self._open_notices, ready=self.ready)
            for name, channel in [*((c.name, c) for c in channels), (DEAD_LETTER, None)]
        ]
        self._dead_letter_lane = self.lanes[-1]
        self._consumer = make_consumer(bootstrap, "alerts-forward")
        self._source_of = {topic: source for source, topic in self.topics.items()}
        self._conditions: tuple[Condition, ...] = ()
        self._models: frozenset[str] = frozenset()
        self._replay_until: dict[TP, int] = {}
        self._read: dict[TP, int] = {}
        self._live_from: dict[TP, int] = {}
        self._replayed = False
        self._last_poll_ok = 0.0
        self._heartbeat = time.monotonic()
        self._started = False
        self._closed = False
        registry.register(StateCollector(self.view, self.clock))

    # ----------------------------------------------------------------------------------------- start

    def start(self) -> None:
        """Create the dead-letter topic, read every lane's position, assign the inputs from their beginning."""
        ensure_topics(self.bootstrap, {self.config.dead_letter_topic: (1, {"retention.ms": _DLQ_RETENTION_MS})})
        partitions: list[TP] = [(topic, p) for topic in self.topics.values()
                                for p in partitions_of(self._consumer, topic)]
        ends: dict[TP, tuple[int, int]] = {tp: watermarks(self._consumer, *tp) for tp in partitions}
        for lane in self.lanes:
            committed = lane.committer.committed(partitions)
            fresh = {tp: ends[tp][1] for tp in partitions if committed.get(tp) is None}
            lane.committer.commit(fresh)  # a new lane starts here, and records it before delivering anything
            lane.start_positions = {tp: fresh[tp] if tp in fresh else int(committed[tp] or 0) for tp in partitions}
            _LOG.info("lane %s (group %s) resumes at %s", lane.name, lane.committer.group, lane.start_positions)
        self._live_from = {tp: min(lane.start_positions[tp] for lane in self.lanes) for tp in partitions}
        self._replay_until = {tp: high for tp, (low, high) in ends.items() if high > low}
        self._consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in partitions])
        self._last_poll_ok = time.monotonic()
        for lane in self.lanes:
            lane.start()
        self._started = True

    # ---------------------------------------------------------------------------------------- the loop

    def run(self) -> None:
        """Start and forward until :attr:`stop` is set; then let the lanes commit what they delivered."""
        try:
            if not self._started:
                self.start()
            while not self.stop.is_set():
                self.poll_once()
        finally:
            self.close()

    def poll_once(self, timeout_s: float = 0.5) -> int:
        """Read and dispatch what arrived within ``timeout_s``; returns the number of messages."""
        self._heartbeat = time.monotonic()
        try:
            records = poll_records(self._consumer, timeout_s)
        except InfrastructureError as exc:
            _LOG.warning("reading the alert topics failed: %s; retrying", exc)
            self.stop.wait(1.0)
            return 0
        self._last_poll_ok = time.monotonic()
        for record in records:
            if self.stop.is_set():
                break
            self._process(record)
        self._check_replayed()
        return len(records)

    def _process(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        now = self.clock()
        checked = verify(record, self._source_of[record.topic], self.trust.system, now, self.trust.phase(now))
        live = record.offset >= self._live_from.get(tp, 0)
        applied = Applied()
        if not isinstance(checked, Rejected):
            try:
                applied = self.tracker.apply(checked)
            except Exception as exc:  # a bug in the mapping must not stop every alert: dead-letter this one
                _LOG.exception("cannot map %s", checked.origin.position)
                checked = Rejected(checked.origin, "invalid", f"cannot be mapped ({type(exc).__name__}: {exc})")
        self._account(checked, applied, live)
        for lane in self.lanes:
            if not lane.behind(tp, record.offset):
                continue
            while not lane.has_room():
                if self.stop.is_set():
                    return
                lane.wait_for_room(0.5)
            rejected = checked if isinstance(checked, Rejected) and lane is self._dead_letter_lane else None
            lane.offer(Item(record.topic, record.partition, record.offset,
                            notices=tuple(n for n in applied.notices if lane.wants(n)), rejected=rejected,
                            key=record.key, value=record.value if rejected is not None else b"",
                            queued_at=time.monotonic()))
        self._read[tp] = record.offset + 1

    def _account(self, checked: Input, applied: Applied, live: bool) -> None:
        models = self.tracker.models
        if models != self._models:
            for model in models - self._models:
                self.metrics.model_seen(model)
            self._models = models
        self._conditions = self.tracker.open_conditions
        if not live:
            return
        if isinstance(checked, Rejected):
            self.metrics.rejected.labels(source=checked.origin.source, reason=checked.reason).inc()
            _LOG.warning("rejected %s: %s: %s (claims %s)", checked.origin.position, checked.reason, checked.message,
                         checked.claims)
            return
        if applied.duplicate:
            self.metrics.duplicates.labels(source=checked.origin.source).inc()
        if applied.superseded:
            self.metrics.superseded.inc()
        if applied.received is not None:
            received = applied.received
            self.metrics.model_seen(received.model)
            self.metrics.received.labels(model=received.model, kind=received.kind, severity=received.severity).inc()

    def _check_replayed(self) -> None:
        if self._replayed:
            return
        behind = [tp for tp, end in self._replay_until.items() if self._read.get(tp, 0) < end]
        if behind and not self.stop.is_set():
            # A transactional source (the audit log the governance consumer writes) ends with a commit marker,
            # never delivered as a record: the consumer's position, past every record handled, passes it.
            for found in self._consumer.position([TopicPartition(t, p) for t, p in behind]):
                if found.offset >= 0:
                    tp = (found.topic, found.partition)
                    self._read[tp] = max(self._read.get(tp, 0), found.offset)
        if all(self._read.get(tp, 0) >= end for tp, end in self._replay_until.items()):
            self._replayed = True
            _LOG.info("start-up replay done: %d open condition(s)", len(self._conditions))

    # ---------------------------------------------------------------------------------------- state

    def _open_notices(self) -> list[Notice]:
        return [condition.notice for condition in self._conditions]

    def ready(self) -> bool:
        """The replay reached the start-up end and Kafka answered within the last 30 s."""
        return self._replayed and time.monotonic() - self._last_poll_ok < _POLL_STALE_S

    def health(self) -> tuple[bool, str]:
        """(alive, why not): the reader loops and every lane thread runs."""
        if self._started and time.monotonic() - self._heartbeat > 2 * _POLL_STALE_S:
            return False, f"the reader has not looped for {time.monotonic() - self._heartbeat:.0f} s"
        for lane in self.lanes:
            if lane.error is not None or (self._started and not self.stop.is_set() and not lane.thread.is_alive()):
                return False, f"lane {lane.name} stopped: {lane.error!r}"
        return True, "ok"

    def view(self) -> View:
        return View(conditions=self._conditions, models=self._models, lanes=tuple(lane.view() for lane in self.lanes),
                    ready=self.ready())

    def committed(self) -> dict[str, dict[TP, int]]:
        """Each lane's committed positions (what it has confirmed to Kafka)."""
        return {lane.name: lane.committed_positions() for lane in self.lanes}

    def close(self) -> None:
        """Stop the lanes (each commits what it delivered) and close the Kafka clients; idempotent."""
        self.stop.set()
        if self._closed:
            return
        self._closed = True
        for lane in self.lanes:
            if lane.thread.is_alive():
                lane.join(30.0)
            lane.committer.close()
        self._consumer.close()
        self._producer.close()
        self._started = False
