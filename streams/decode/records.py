"""What the processor takes and gives: Kafka records, dead letters and batch outcomes.

Plain data, no I/O: the Faust agent and the replay build :class:`~governance.contract.kafkaio.Record` s, the
:class:`~streams.worker.processor.Processor` returns a :class:`BatchOutcome` whose :class:`DeadLetter` s the
caller publishes to the dead-letter topic.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from governance.contract.kafkaio import Record
from governance.contract.wire import NAME_CHARS

__all__ = ["INTEGRITY_ROLE", "BatchOutcome", "DeadLetter", "identify", "integrity_id"]

#: Comparison ids ending in this role hold a model's integrity violations that no comparison claimed.
INTEGRITY_ROLE = "integrity"
_COUNTS = (
    "skipped", "score_events", "labels", "pairs", "labeled_pairs", "orphans", "duplicates", "evicted",
    "unplaced_violations", "ahead", "behind",
)  # fmt: skip

# The wire contract's model names (governance.wire.Name): a message may only be attributed to a name that
# could be a real model's, never to a malformed one (which would become a Redis key and a metric label).
_MODEL_NAME = re.compile(rf"{NAME_CHARS}{{1,128}}")


def integrity_id(model: str) -> str:
    """The pseudo comparison id under which a model's unattributed integrity violations are counted."""
    return f"{model}|*|*|{INTEGRITY_ROLE}"


@dataclass(frozen=True)
class DeadLetter:
    """An invalid message: what to publish to the dead-letter topic."""

    record: Record
    reason: str
    model: str | None

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("shadowgate.reason", self.reason.encode()),
            ("shadowgate.source", f"{self.record.topic}/{self.record.partition}/{self.record.offset}".encode()),
            ("shadowgate.model", (self.model or "").encode()),
        ]

    def reference(self, refused: str) -> tuple[bytes, list[tuple[str, bytes]]]:
        """What stands in for the message when the broker refuses its bytes (``refused`` says why): value
        and headers of a small JSON record naming it (topic, partition, offset, size, sha256 of the bytes,
        reason), with the usual headers and ``shadowgate.reference`` = ``refused``. The bytes themselves stay
        in the source topic for its retention; the digest proves which they were."""
        raw = self.record.value or b""
        doc = {"topic": self.record.topic, "partition": self.record.partition, "offset": self.record.offset,
               "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "reason": self.reason,
               "model": self.model, "refused": refused}  # fmt: skip
        return orjson.dumps(doc), [*self.headers(), ("shadowgate.reference", refused.encode())]


@dataclass
class BatchOutcome:
    """What one :meth:`Processor.process` call did, for metrics and the caller's DLQ producer."""

    records: int = 0
    skipped: int = 0
    score_events: int = 0
    labels: int = 0
    pairs: int = 0
    labeled_pairs: int = 0
    orphans: int = 0
    duplicates: int = 0
    evicted: int = 0
    retries: int = 0
    unplaced_violations: int = 0  # invalid messages of a model counted nowhere: no time known at all
    ahead: int = 0  # messages dead-lettered for an event time past the lead bound (SHADOWGATE_MAX_EVENT_LEAD_S)
    behind: int = 0  # ... before the lag bound (SHADOWGATE_MAX_EVENT_LAG_S)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    comparisons: set[str] = field(default_factory=set)  # received pairs
    labeled: set[str] = field(default_factory=set)  # received labels (possibly no pair)
    watermark_s: dict[int, float] = field(default_factory=dict)

    def absorb(self, part: BatchOutcome) -> None:
        """Add the counts, dead letters and watermarks of ``part`` (one applied partition batch)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.dead_letters.extend(part.dead_letters)
        self.comparisons |= part.comparisons
        self.labeled |= part.labeled
        self.watermark_s.update(part.watermark_s)


def identify(raw: bytes) -> tuple[str | None, float | None]:
    """The model an invalid message names and the ts it claims, where they can be read (for attribution)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            # The stdlib parser also reads NaN and Infinity, so a message refused for them is still attributed.
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            return None, None
    if not isinstance(doc, dict):
        return None, None
    if isinstance(doc.get("events"), list) and doc["events"] and isinstance(doc["events"][0], dict):
        doc = doc["events"][0]
    model = doc.get("model")
    if not (isinstance(model, str) and _MODEL_NAME.fullmatch(model)):
        return None, None
    ts = doc.get("ts")
    try:
        when = datetime.fromisoformat(ts) if isinstance(ts, str) else None
    except ValueError:
        when = None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # refused for being naive, but still the best guess of its time
    return model, None if when is None else when.timestamp()
