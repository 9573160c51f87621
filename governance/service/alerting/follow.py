"""Following the alert topics for people (``shadowgate alerts tail``): verified notices and rejections.

The follower reads each source topic from its beginning, so notices say what the forwarder would say
(a GateReady resolves the GateBlocked before it); only the last ``last`` messages of each partition that
existed at start are shown, then everything new. Nothing is committed.

Guarantees: every message shown as a notice verified against the trust store; every other message is
shown as a :class:`~governance.service.alerting.intake.Rejected` with its reason, never as a notice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from governance.contract.connections import KafkaTarget
from governance.contract.kafkaio import make_consumer, partitions_of, poll_records, watermarks
from governance.lifecycle.identities import Trust
from governance.service.alerting.intake import Rejected, Source, verify
from governance.service.alerting.notices import Notice
from governance.service.alerting.tracker import Tracker

__all__ = ["Follower", "Shown"]


@dataclass(frozen=True)
class Shown:
    """One thing to show: a verified notice or a rejected message."""

    notice: Notice | None = None
    rejected: Rejected | None = None


class Follower:
    """Reads ``topics`` (source -> topic) and yields what to show; see the module docstring."""

    def __init__(self, bootstrap: KafkaTarget, topics: Mapping[Source, str], trust: Trust,
                 clock: Callable[[], datetime], *, last: int | None = 20,
                 trigger_runbooks: Mapping[str, str] | None = None) -> None:
        self.topics, self.trust, self.clock, self.last = dict(topics), trust, clock, last
        self.tracker = Tracker(trigger_runbooks=trigger_runbooks, rollbacks_from_audit="audit" in topics)
        self._consumer = make_consumer(bootstrap, "alerts-tail")
        self._source_of = {topic: source for source, topic in self.topics.items()}
        self._show_from: dict[tuple[str, int], int] = {}
        self._ends: dict[tuple[str, int], int] = {}
        self._read: dict[tuple[str, int], int] = {}
        self.rejected = 0
        self.shown = 0

    def start(self) -> None:
        assignments = []
        for topic in self.topics.values():
            for partition in partitions_of(self._consumer, topic):
                low, high = watermarks(self._consumer, topic, partition)
                self._ends[(topic, partition)] = high if high > low else 0
                self._show_from[(topic, partition)] = low if self.last is None else max(low, high - self.last)
                assignments.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        self._consumer.assign(assignments)

    def at_start_end(self) -> bool:
        """True once every partition was read up to where it ended at :meth:`start`."""
        return all(self._read.get(tp, 0) >= end for tp, end in self._ends.items())

    def poll(self, timeout_s: float = 0.5) -> Iterator[Shown]:
        """What arrived within ``timeout_s``, in order per partition."""
        for record in poll_records(self._consumer, timeout_s):
            tp = (record.topic, record.partition)
            self._read[tp] = record.offset + 1
            now = self.clock()
            checked = verify(record, self._source_of[record.topic], self.trust.system, now, self.trust.phase(now))
            visible = record.offset >= self._show_from.get(tp, 0)
            if isinstance(checked, Rejected):
                if visible:
                    self.rejected += 1
                    yield Shown(rejected=checked)
                continue
            applied = self.tracker.apply(checked)
            if visible:
                for notice in applied.notices:
                    self.shown += 1
                    yield Shown(notice=notice)

    def close(self) -> None:
        self._consumer.close()
