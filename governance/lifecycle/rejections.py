"""Rejected inputs, summarised: one audit entry per input partition and interval, never one per message.

Whoever can produce to an input topic can send junk; before this, each rejected message cost two
ML-DSA signatures and a state save and became a permanent audit entry, so a flood outlasted the
consumer's lease. Now intake rejections (every reason but ``refused``, which only a trusted identity's
valid, fresh command can earn) are counted here, in memory, at the cost of a dictionary update:

* :meth:`RejectionTally.add` notes one rejection of a partition (count per reason, the first
  ``samples_per_reason`` of each reason kept as samples with their unverified claims);
* :meth:`RejectionTally.due` says when the oldest pending rejection has waited ``interval``;
* :meth:`RejectionTally.drain` turns what is pending into entry bodies, one per partition: ``input``
  names the partition and the LAST offset covered (so a restart resumes after it, and nothing counted in a
  written summary is read again), ``summary`` the first and last offset, the counts and the samples.

The consumer drains on the interval, before any other entry (so the positions the log records only grow,
in one transaction with that entry) and on a clean stop. Rejections not yet drained when the process dies
are read again after the restart and counted then: none is lost, none counted twice.

Guarantees: pure (time passed in); memory is bounded by partitions x reasons x ``samples_per_reason``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from governance.lifecycle.audit import EntryBody, Input, RejectionSample, RejectionSummary, RejectReason
from governance.lifecycle.intake import Refused

__all__ = ["RejectionTally"]


@dataclass
class _Pending:
    topic: str
    partition: int
    since: datetime
    first_offset: int
    last_offset: int
    counts: dict[RejectReason, int] = field(default_factory=dict)
    samples: list[RejectionSample] = field(default_factory=list)
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


class RejectionTally:
    """Pending rejections per partition (see the module docstring)."""

    def __init__(self, interval: timedelta, samples_per_reason: int = 5) -> None:
        if interval <= timedelta(0):
            raise ValueError(f"the summary interval must be positive, got {interval}")
        self.interval = interval
        self.samples_per_reason = samples_per_reason
        self._pending: dict[tuple[str, int], _Pending] = {}

    def __len__(self) -> int:
        """How many rejections are pending."""
        return sum(sum(p.counts.values()) for p in self._pending.values())

    def add(self, refused: Refused, now: datetime) -> None:
        source, reason = refused.input, refused.rejection.reason
        key = (source.topic, source.partition)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(source.topic, source.partition, now, source.offset, source.offset)
        pending.first_offset = min(pending.first_offset, source.offset)
        pending.last_offset = max(pending.last_offset, source.offset)
        pending.counts[reason] = pending.counts.get(reason, 0) + 1
        pending.digest.update(bytes.fromhex(source.digest))
        if pending.counts[reason] <= self.samples_per_reason:
            pending.samples.append(RejectionSample(
                offset=source.offset, digest=source.digest, reason=reason, message=refused.rejection.message[:512],
                kind=source.kind, id=source.id, type=source.type, actor=source.actor))

    def due(self, now: datetime) -> bool:
        """Whether the oldest pending rejection has waited ``interval``."""
        return any(now - p.since >= self.interval for p in self._pending.values())

    def drain(self, now: datetime) -> list[EntryBody]:
        """One summary entry body per partition with pending rejections (sorted by topic, partition); clears them."""
        bodies = []
        for (topic, partition), p in sorted(self._pending.items()):
            summary = RejectionSummary(first_offset=p.first_offset, last_offset=p.last_offset,
                                       count=sum(p.counts.values()), counts=dict(sorted(p.counts.items())),
                                       samples=p.samples)
            source = Input(topic=topic, partition=partition, offset=p.last_offset, digest=p.digest.hexdigest(),
                           kind="unknown", type="rejected_inputs")
            bodies.append(EntryBody(at=now, input=source, outcome="rejected", summary=summary))
        self._pending.clear()
        return bodies
