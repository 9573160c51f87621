"""From raw Kafka records to window increments: validate, pair, join labels, fold, apply with a fence.

:class:`Processor` is the synchronous core of the worker. The Faust agent (``streams.app``) and the
offline replay (``streams.replay``) both feed it batches of :class:`Record` s, so live and replayed
traffic give the same windows by construction.

Per partition it keeps a :class:`~streams.pairing.Pairer` and a :class:`~streams.labels.LabelJoiner`.
The scores and labels topics are co-partitioned (same partition count, keyed by ``request_id``), so
partition ``p`` of both belongs to one worker and one state.

Exactly-once effect. After each batch of partition ``p`` the processor applies, in ONE atomic store
step, the batch's slot increments, the fence and a checkpoint of the partition state (pending half-pairs,
pairs waiting for labels, and the next offset of each topic). The fence offset is the sum of the next
offsets of the two topics, which grows with every batch. After a crash Kafka redelivers from the last
committed offset; the restored state skips every record below its checkpointed offsets, so each event
is counted exactly once. If another worker advanced the fence meanwhile (a rebalance race), ``apply``
refuses and the processor reloads the state from the store and reprocesses what is new.

Errors are data: an invalid message becomes a :class:`DeadLetter` (original bytes, reason, coordinates)
and, when its model can be read, an integrity violation of that model; it never stops the worker.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from governance.errors import EventValidationError, StoreError
from governance.snapshot import ComparisonKey
from governance.wire import LabelEvent, ScoreEvent, decode_label, decode_scores
from streams.aggregate import (
    AggregateConfig,
    fold_duplicates,
    fold_integrity,
    fold_labels,
    fold_orphans,
    fold_pairs,
)
from streams.labels import LabelJoiner, LabelResult
from streams.pairing import PairColumns, Pairer, PairingResult, Side
from streams.store import Fence, SlotBatch, WindowStore
from streams.windows import slots_for

__all__ = ["INTEGRITY_ROLE", "BatchOutcome", "DeadLetter", "Processor", "Record", "integrity_id"]

log = logging.getLogger(__name__)

#: Comparison ids ending in this role hold a model's integrity violations that no comparison claimed.
INTEGRITY_ROLE = "integrity"
_CHECKPOINT_VERSION = 1
_MAX_RETRIES = 5


def integrity_id(model: str) -> str:
    """The pseudo comparison id under which a model's unattributed integrity violations are counted."""
    return f"{model}|*|*|{INTEGRITY_ROLE}"


class Record(NamedTuple):
    """One Kafka record as the processor sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


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
    dead_letters: list[DeadLetter] = field(default_factory=list)
    comparisons: set[str] = field(default_factory=set)
    watermark_s: dict[int, float] = field(default_factory=dict)


class _PartitionState:
    __slots__ = ("joiner", "next_offsets", "pairer", "production_of")

    def __init__(self, pairer: Pairer, joiner: LabelJoiner) -> None:
        self.pairer = pairer
        self.joiner = joiner
        self.next_offsets: dict[str, int] = {}
        # (model, candidate version, role) -> production version it was last paired with, and
        # (model, production version) -> candidate comparisons: to attribute orphans and duplicates.
        self.production_of: dict[tuple[str, str, str], str] = {}

    def fence_offset(self) -> int:
        return sum(self.next_offsets.values())


class Processor:
    """Turns record batches into fenced window increments (see module doc). Not thread-safe: one caller."""

    def __init__(
        self,
        store: WindowStore,
        *,
        scores_topic: str,
        labels_topic: str,
        fence_name: str,
        config: AggregateConfig | None = None,
        join_window_s: float = 60.0,
        max_pending: int = 200_000,
        label_horizon_s: float = 3 * 86400.0,
        max_label_pending: int = 1_000_000,
        max_message_bytes: int = 1_048_576,
    ) -> None:
        self.store = store
        self.scores_topic = scores_topic
        self.labels_topic = labels_topic
        self.fence_name = fence_name
        self.config = config or AggregateConfig()
        self._join_window_s = join_window_s
        self._max_pending = max_pending
        self._label_horizon_s = label_horizon_s
        self._max_label_pending = max_label_pending
        self._max_message_bytes = max_message_bytes
        self._states: dict[int, _PartitionState] = {}

    # -- partition state ------------------------------------------------------------------------------

    def _new_state(self) -> _PartitionState:
        return _PartitionState(
            Pairer(join_window_s=self._join_window_s, max_pending=self._max_pending),
            LabelJoiner(horizon_s=self._label_horizon_s, max_pending=self._max_label_pending),
        )

    def _load(self, partition: int) -> _PartitionState:
        state = self._new_state()
        stored = self.store.read_fence(self.fence_name, partition)
        if stored is not None and stored.checkpoint:
            doc = orjson.loads(stored.checkpoint)
            if doc.get("v") != _CHECKPOINT_VERSION:
                raise StoreError(
                    f"checkpoint of {self.fence_name!r} partition {partition} has version {doc.get('v')!r}; "
                    f"this worker reads version {_CHECKPOINT_VERSION}"
                )
            state.next_offsets = {str(k): int(v) for k, v in doc["offsets"].items()}
            state.production_of = {tuple(k.split("|")): v for k, v in doc["production_of"].items()}  # type: ignore[misc]
            state.pairer.restore(orjson.dumps(doc["pairer"]))
            state.joiner.restore(orjson.dumps(doc["labels"]))
        self._states[partition] = state
        return state

    def _checkpoint(self, state: _PartitionState) -> bytes:
        return b"".join(
            [
                b'{"v":%d,"offsets":' % _CHECKPOINT_VERSION,
                orjson.dumps(state.next_offsets),
                b',"production_of":',
                orjson.dumps({"|".join(k): v for k, v in state.production_of.items()}),
                b',"pairer":',
                state.pairer.checkpoint(),
                b',"labels":',
                state.joiner.checkpoint(),
                b"}",
            ]
        )

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget the state of partitions this worker no longer owns (reloaded from the store if back)."""
        for partition in partitions:
            self._states.pop(partition, None)

    def pending(self) -> dict[int, tuple[int, int]]:
        """Per partition: (half-pairs remembered, pairs waiting for labels)."""
        return {p: (s.pairer.pending, s.joiner.pending_pairs) for p, s in self._states.items()}

    # -- processing -----------------------------------------------------------------------------------

    def process(self, records: Sequence[Record]) -> BatchOutcome:
        """Process one batch (any partitions, both topics); apply each partition's effect atomically."""
        outcome = BatchOutcome(records=len(records))
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_partition[record.partition].append(record)
        for partition, part_records in sorted(by_partition.items()):
            self._process_partition(partition, part_records, outcome)
        return outcome

    def _process_partition(self, partition: int, records: list[Record], outcome: BatchOutcome) -> None:
        state = self._states.get(partition) or self._load(partition)
        for attempt in range(_MAX_RETRIES):
            fresh = [r for r in records if r.offset >= state.next_offsets.get(r.topic, -1)]
            outcome.skipped += len(records) - len(fresh)
            if not fresh:
                return
            batch = SlotBatch()
            self._fold_partition(state, fresh, batch, outcome)
            for record in fresh:
                state.next_offsets[record.topic] = max(state.next_offsets.get(record.topic, 0), record.offset + 1)
            fence = Fence(self.fence_name, partition, state.fence_offset())
            if self.store.apply(batch, fence, self._checkpoint(state)):
                return
            # Someone else advanced this partition's fence: take their state and redo what is new.
            outcome.retries += 1
            log.warning(
                "fence %s/%d moved by another worker (attempt %d): reloading the partition state",
                self.fence_name, partition, attempt + 1,
            )
            state = self._load(partition)
        raise StoreError(
            f"fence {self.fence_name!r} partition {partition}: gave up after {_MAX_RETRIES} concurrent updates"
        )

    def _decode(
        self, records: list[Record], outcome: BatchOutcome
    ) -> tuple[list[ScoreEvent], list[LabelEvent], dict[str, int]]:
        scores: list[ScoreEvent] = []
        labels: list[LabelEvent] = []
        violations: dict[str, int] = defaultdict(int)
        for record in records:
            raw = record.value or b""
            try:
                if len(raw) > self._max_message_bytes:
                    raise EventValidationError(
                        f"message of {len(raw)} bytes exceeds the limit of {self._max_message_bytes}", field="<size>"
                    )
                if record.topic == self.labels_topic:
                    labels.append(decode_label(raw))
                else:
                    scores.extend(decode_scores(raw))
            except EventValidationError as exc:
                model = _model_of(raw)
                outcome.dead_letters.append(DeadLetter(record, str(exc), model))
                if model is not None:
                    violations[model] += 1
        return scores, labels, violations

    def _fold_partition(
        self, state: _PartitionState, records: list[Record], batch: SlotBatch, outcome: BatchOutcome
    ) -> None:
        scores, labels, violations = self._decode(records, outcome)
        outcome.score_events += len(scores)
        outcome.labels += len(labels)
        now = _watermark(scores, state.pairer.watermark_s)
        paired = state.pairer.add_batch(scores, now)
        for key in paired.pairs:
            state.production_of[(key.model, key.candidate_version, key.role)] = key.production_version
        joined_now = _watermark(labels, state.joiner.watermark_s, now)
        from_pairs = state.joiner.add_pairs(paired.pairs, joined_now)
        from_labels = state.joiner.add_labels(labels, joined_now)
        self._fold_pairs(paired, batch, outcome)
        self._fold_labels(from_pairs, batch, outcome)
        self._fold_labels(from_labels, batch, outcome)
        self._fold_sides(state, paired, batch, outcome)
        self._fold_integrity(state, violations, batch, now)
        if paired.watermark_s is not None:
            outcome.watermark_s[records[0].partition] = paired.watermark_s

    def _fold_pairs(self, paired: PairingResult, batch: SlotBatch, outcome: BatchOutcome) -> None:
        for key, cols in paired.pairs.items():
            cid = key.as_id()
            outcome.pairs += len(cols)
            outcome.comparisons.add(cid)
            batch.note(cid, key.model, int(cols.ts.min() * 1000), int(cols.ts.max() * 1000))
            for idx, ts_s in _by_minute(cols.ts):
                fields = fold_pairs(
                    cols.prod_score[idx], cols.cand_score[idx],
                    cols.prod_latency_ms[idx], cols.cand_latency_ms[idx],
                    cols.prod_error[idx], cols.cand_error[idx],
                    _features(cols, idx, "prod"), _features(cols, idx, "cand"),
                    self.config,
                )
                _add_to_slots(batch, cid, ts_s, fields)

    def _fold_labels(self, result: LabelResult, batch: SlotBatch, outcome: BatchOutcome) -> None:
        for key, cols in result.joined.items():
            cid = key.as_id()
            outcome.labeled_pairs += len(cols)
            for idx, ts_s in _by_minute(cols.ts):
                fields = fold_labels(cols.prod_score[idx], cols.cand_score[idx], cols.label[idx], self.config)
                _add_to_slots(batch, cid, ts_s, fields)

    def _fold_sides(
        self, state: _PartitionState, paired: PairingResult, batch: SlotBatch, outcome: BatchOutcome
    ) -> None:
        for side, ts in paired.orphans.items():
            errors = paired.orphan_errors.get(side)
            outcome.orphans += len(ts)
            for cid in self._claimants(state, side):
                for idx, ts_s in _by_minute(ts):
                    n = len(idx)
                    n_err = int(errors[idx].sum()) if errors is not None else 0
                    if side.role == "production":
                        fields = fold_orphans(n, 0, n_err, 0)
                    else:
                        fields = fold_orphans(0, n, 0, n_err)
                    _add_to_slots(batch, cid, ts_s, fields)
        for side, ts in paired.duplicates.items():
            outcome.duplicates += len(ts)
            for cid in self._claimants(state, side):
                for idx, ts_s in _by_minute(ts):
                    _add_to_slots(batch, cid, ts_s, fold_duplicates(len(idx)))
        outcome.evicted += sum(len(ts) for ts in paired.evicted.values())

    def _claimants(self, state: _PartitionState, side: Side) -> list[str]:
        """The comparisons an orphan or duplicate of ``side`` belongs to (none known: not attributed)."""
        if side.role == "production":
            return [
                ComparisonKey(model, side.version, cand, role).as_id()  # type: ignore[arg-type]
                for (model, cand, role), prod in state.production_of.items()
                if model == side.model and prod == side.version
            ]
        prod = state.production_of.get((side.model, side.version, side.role))
        if prod is None:
            return []
        return [ComparisonKey(side.model, prod, side.version, side.role).as_id()]  # type: ignore[arg-type]

    def _fold_integrity(
        self, state: _PartitionState, violations: Mapping[str, int], batch: SlotBatch, now: datetime
    ) -> None:
        ts_s = now.timestamp()
        for model, count in violations.items():
            claimants = sorted({
                ComparisonKey(m, prod, cand, role).as_id()  # type: ignore[arg-type]
                for (m, cand, role), prod in state.production_of.items()
                if m == model
            }) or [integrity_id(model)]
            for cid in claimants:
                batch.note(cid, model, int(ts_s * 1000), int(ts_s * 1000))
                _add_to_slots(batch, cid, ts_s, fold_integrity(count))


def _model_of(raw: bytes) -> str | None:
    """The model an invalid message names, if any can be read (for integrity attribution)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict):
        if isinstance(doc.get("events"), list) and doc["events"] and isinstance(doc["events"][0], dict):
            doc = doc["events"][0]
        model = doc.get("model")
        if isinstance(model, str) and 0 < len(model) <= 128 and "|" not in model and "{" not in model:
            return model
    return None


def _watermark(
    events: Sequence[ScoreEvent] | Sequence[LabelEvent], previous_s: float | None, floor: datetime | None = None
) -> datetime:
    candidates = [e.ts.timestamp() for e in events]
    if previous_s is not None:
        candidates.append(previous_s)
    if floor is not None:
        candidates.append(floor.timestamp())
    return datetime.fromtimestamp(max(candidates) if candidates else 0.0, UTC)


def _by_minute(ts: npt.NDArray[np.float64]) -> list[tuple[npt.NDArray[np.intp], float]]:
    """Indices of ``ts`` grouped by event-time minute, with a representative ts of each group."""
    if len(ts) == 0:
        return []
    minutes = np.floor(ts / 60.0).astype(np.int64)
    first = minutes[0]
    if (minutes == first).all():
        return [(np.arange(len(ts)), float(first) * 60.0)]
    order = np.argsort(minutes, kind="stable")
    uniq, starts = np.unique(minutes[order], return_index=True)
    groups = np.split(order, starts[1:])
    return [(g, float(m) * 60.0) for g, m in zip(groups, uniq, strict=True)]


def _features(cols: PairColumns, idx: npt.NDArray[np.intp], side: str) -> dict[str, list[Any]] | None:
    rows = cols.prod_features if side == "prod" else cols.cand_features
    out: dict[str, list[Any]] = defaultdict(list)
    for i in idx:
        row = rows[int(i)]
        if row:
            for name, value in row.items():
                out[name].append(value)
    return dict(out) if out else None


def _add_to_slots(batch: SlotBatch, cid: str, ts_s: float, fields: Mapping[str, int]) -> None:
    if not fields or math.isnan(ts_s):
        return
    for slot in slots_for(int(ts_s)):
        batch.add(cid, slot, fields)
