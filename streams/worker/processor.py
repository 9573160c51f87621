"""From raw Kafka records to window increments: validate, pair, join labels, fold, apply with a fence.

:class:`Processor` is the synchronous core of the worker. The Faust agent (``streams.worker.app``) and the
offline replay (``streams.worker.replay``) both feed it batches of :class:`Record` s, so live and replayed
traffic give the same windows by construction.

Per partition it keeps a pairer and a label joiner (:mod:`streams.join.engines`): the native ones
(``streams._native``, Rust) when the native core is built, which give the results and state entries of the
reference :class:`~streams.join.reference.pairing.Pairer` and :class:`~streams.join.reference.labels.LabelJoiner` (the
same tests run against both); otherwise those reference joins themselves, with one warning at start
(:mod:`streams.native`). On the native path messages are decoded into native blocks, the joins run on them
without Python objects per event, and the fold reads their output as numpy columns. The scores and labels
topics are co-partitioned (same partition count, keyed by ``request_id``), so partition ``p`` of both
belongs to one worker and one state.

Exactly-once effect. After each batch of partition ``p`` the processor applies in ONE atomic store step:
the slot increments, the fence, a small checkpoint blob (next offset of each topic; the production version
each candidate last paired with) and the *state delta* of the joins, i.e. the remembered half-pairs, pairs
waiting for labels and labels that changed since the previous batch (``Pairer.state_delta`` under ``p/``,
``LabelJoiner.state_delta`` under ``l/``), written by the native joins as ONE state log record
(:class:`~streams.join.state.StateLog`) that the store appends whole, so a batch writes in proportion to
its events, never to the state (hours of pairs waiting for labels). Once the records since the last
whole-state record outgrow it (and 32 MiB), the batch writes a whole-state record instead, which replaces
the log: the stored state stays within about twice its size. The fence offset is the sum of the next
offsets of the two topics, which grows with every batch.

The apply is a compare-and-set (``Fence.expected``: the fence the in-memory state was loaded at or last
stored with), because a delta only means something on top of the exact state it came from. After a crash
Kafka redelivers from the last committed offset; the new owner loads the state (``read_state`` between two
fence reads that agree) and skips every record below its checkpointed offsets: each event counts once. If
another worker moved the fence (a rebalance race), ``apply`` refuses; the delta was taken (the joins'
change tracking restarted) but not stored, so the in-memory state is dropped, the other worker's state
reloaded and what is new redone. Any exception from the fold or the store (outcome unknown) drops the
partition's in-memory state too. Counts and dead letters of a refused attempt are discarded.

Errors are data: an invalid message becomes a :class:`DeadLetter` (original bytes, reason, coordinates)
and, when its model can be read, an integrity violation of that model, counted at the ts the message
claims (never past the partition's score watermark, which it is when it claims none); never fatal.
So does a valid message dated outside the event-time bounds (``bounds``: :mod:`streams.decode.bounds`,
around ``clock()`` read once per batch; checked on the decoded messages of every tier, one native call
per batch), and a claimed time outside them is not believed. The dead letters of what is about to be
applied go to ``deliver`` BEFORE the apply (the worker's dead-letter producer returns once the broker
acknowledged them), so the apply, and the offsets committed after it, never get ahead of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from governance.contract.comparison import ComparisonKey
from governance.contract.kafkaio import Record
from governance.errors import EventValidationError, StoreError
from streams.decode.bounds import EventTimeBounds, Outside, TimeWindow
from streams.decode.records import INTEGRITY_ROLE, BatchOutcome, DeadLetter, identify, integrity_id
from streams.fold.aggregate import (
    AggregateConfig,
    fold_duplicates,
    fold_integrity,
    fold_labels,
    fold_orphans,
    fold_pairs,
)
from streams.fold.features import FeatureColumn
from streams.join.engines import (
    FeatureArrays,
    JoinOutput,
    LabeledBatch,
    PairBatch,
    PartitionJoins,
    ReferenceJoins,
    select,
)
from streams.join.reference.pairing import Side
from streams.state.statelog import StateLog, pack_log
from streams.state.store import NO_FENCE, Fence, FencedState, FenceState, SlotBatch, WindowStore
from streams.state.windows import slots_for

__all__ = ["INTEGRITY_ROLE", "BatchOutcome", "DeadLetter", "Deliver", "Folded", "Processor", "Record", "integrity_id"]

log = logging.getLogger(__name__)

_CHECKPOINT_VERSION = 2
_MAX_RETRIES = 5
FloatArray = npt.NDArray[np.float64]
#: Stores a batch's dead letters elsewhere (the dead-letter topic) before its apply; raises if it cannot.
Deliver = Callable[[list[DeadLetter]], None]


@dataclass
class Folded:
    """A batch folded by :meth:`Processor.fold`, to be applied by :meth:`Processor.apply`."""

    records: int
    by_partition: dict[int, list[Record]]
    batch: SlotBatch = field(default_factory=SlotBatch)
    fenced: list[FencedState] = field(default_factory=list)
    parts: list[BatchOutcome] = field(default_factory=list)

    @property
    def partitions(self) -> list[int]:
        """The partitions whose in-memory states this batch advanced."""
        return list(self.by_partition)


class _PartitionState:
    __slots__ = ("joins", "log_bytes", "next_offsets", "production_of", "snapshot_bytes", "stored_offset")

    def __init__(self, joins: PartitionJoins[Any, Any]) -> None:
        self.joins = joins
        self.next_offsets: dict[str, int] = {}
        self.stored_offset = NO_FENCE  # the store's fence this state is: the apply's expected fence
        # (model, candidate version, role) -> production version it was last paired with, and
        # (model, production version) -> candidate comparisons: to attribute orphans and duplicates.
        self.production_of: dict[tuple[str, str, str], str] = {}
        # The store's state log: bytes of the last whole-state record, and of the records after it.
        self.snapshot_bytes = 0
        self.log_bytes = 0

    @property
    def pairer(self) -> Any:
        """The partition's pairer (native or reference): for ``pending`` and for tools and tests."""
        return self.joins.pairer

    @property
    def joiner(self) -> Any:
        return self.joins.joiner

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
        compact_min_bytes: int = 32 * 1024 * 1024,
        native: bool | None = None,
        bounds: EventTimeBounds | None = None,
        clock: Callable[[], float] = time.time,
        fold_threads: int = 1,
    ) -> None:
        """``native``: the native core's joins (True), the Python reference's (False), or the native ones
        when the core is built (None, with a warning when it is not). ``bounds``: event time admitted
        around ``clock()`` (read once per batch; None: any, for tools and tests on fixed dates).
        ``fold_threads``: partitions of one batch folded at once (the native core's decoding, joins and
        state records run without the GIL, so two threads use two cores)."""
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
        self._compact_min_bytes = compact_min_bytes
        if bounds is not None:
            bounds.check_join_window(join_window_s)
        self._bounds = bounds
        self._clock = clock
        self._window: TimeWindow | None = None  # the bounds at the clock of the batch being processed
        self._states: dict[int, _PartitionState] = {}
        self._joins = select(native)
        self._fold_pool = (
            ThreadPoolExecutor(fold_threads, thread_name_prefix="shadowgate-fold") if fold_threads > 1 else None
        )

    def close(self) -> None:
        """End the fold threads (the processor folds on in this thread if used again)."""
        pool, self._fold_pool = self._fold_pool, None
        if pool is not None:
            pool.shutdown()

    @property
    def native(self) -> bool:
        """Whether this processor runs the native core (else the Python reference joins)."""
        return self._joins is not ReferenceJoins

    # -- partition state ------------------------------------------------------------------------------

    def _new_state(self) -> _PartitionState:
        return _PartitionState(
            self._joins(self._join_window_s, self._max_pending, self._label_horizon_s, self._max_label_pending)
        )

    def _load(self, partition: int) -> _PartitionState:
        stored, entries = self._read_stored(partition)
        state = self._new_state()
        if stored is not None:
            where = f"checkpoint of {self.fence_name!r} partition {partition}"
            if stored.checkpoint is None:
                raise StoreError(
                    f"fence {self.fence_name!r} partition {partition} is at {stored.offset} but has no checkpoint: "
                    "written by something else? give this worker a fence name of its own"
                )
            try:
                doc = orjson.loads(stored.checkpoint)
            except orjson.JSONDecodeError as exc:
                raise StoreError(f"{where} is not valid JSON: {exc}") from None
            if not isinstance(doc, dict) or doc.get("v") != _CHECKPOINT_VERSION:
                version = doc.get("v") if isinstance(doc, dict) else None
                raise StoreError(
                    f"{where} has version {version!r}; this worker reads version {_CHECKPOINT_VERSION} "
                    "(version 1 kept the whole join state in the blob: replay into a fresh fence name)"
                )
            state.next_offsets = {str(k): int(v) for k, v in doc["offsets"].items()}
            state.production_of = {tuple(k.split("|")): v for k, v in doc["production_of"].items()}
            state.joins.restore(entries)
            state.stored_offset = stored.offset
            state.snapshot_bytes = sum(len(k) + len(v) + 9 for k, v in entries.items())
        elif entries:
            raise StoreError(f"fence {self.fence_name!r} partition {partition}: state entries without a fence")
        self._states[partition] = state
        return state

    def _read_stored(self, partition: int) -> tuple[FenceState | None, dict[str, bytes]]:
        """The fence, its checkpoint and the state map, all of one fence (the state read is not atomic)."""
        before = self.store.read_fence(self.fence_name, partition)
        for _ in range(_MAX_RETRIES):
            entries = self.store.read_state(self.fence_name, partition)
            after = self.store.read_fence(self.fence_name, partition)
            if (before and before.offset) == (after and after.offset):
                return after, entries
            before = after
        raise StoreError(
            f"fence {self.fence_name!r} partition {partition} moved during each of {_MAX_RETRIES} state reads: "
            "is another worker processing this partition?"
        )

    def _checkpoint(self, state: _PartitionState) -> bytes:
        return orjson.dumps(
            {
                "v": _CHECKPOINT_VERSION,
                "offsets": state.next_offsets,
                "production_of": {"|".join(k): v for k, v in state.production_of.items()},
            }
        )

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget the state of partitions this worker no longer owns (reloaded from the store if back)."""
        self.discard(partitions)

    def pending(self) -> dict[int, tuple[int, int]]:
        """Per partition: (half-pairs remembered, pairs waiting for labels)."""
        return {p: (s.pairer.pending, s.joiner.pending_pairs) for p, s in self._states.items()}

    # -- processing -----------------------------------------------------------------------------------

    def process(self, records: Sequence[Record], deliver: Deliver | None = None) -> BatchOutcome:
        """Process one batch (any partitions, both topics) and apply its whole effect in one atomic step.

        Every partition of the batch is folded into ONE :class:`SlotBatch`, applied with all the partitions'
        fences, checkpoints and state records (``WindowStore.apply_many``), so the window increments are
        written once, not once per partition. If a fence refuses (another worker moved it), nothing was
        applied: the partitions' in-memory states, which went ahead, are dropped and each partition is
        redone on its own from its stored state (:meth:`_process_partition`).

        ``deliver`` is called with the dead letters of what is about to be applied, BEFORE the apply: when
        it returns they are stored elsewhere (the broker acknowledged them), when it raises nothing is
        applied and the exception propagates as any failure does. So a dead letter is never lost to a
        crash between the apply and its delivery (after a crash it may be delivered twice).

        The same in three steps, for a caller that folds the next batch while this one is applied:
        :meth:`fold`, :meth:`apply` (touches only the folded batch and the store), :meth:`settle`.
        """
        folded = self.fold(records)
        try:
            applied = self.apply(folded, deliver)
        except BaseException:
            self.discard(folded.partitions)
            raise
        if applied:
            return self.settle(folded)
        self.discard(folded.partitions)
        outcome = BatchOutcome(records=len(records), retries=1)
        log.warning("a fence of %s moved (another worker): redoing the batch per partition", self.fence_name)
        for partition, part_records in sorted(folded.by_partition.items()):
            self._process_partition(partition, part_records, outcome, deliver)
        return outcome

    def fold(self, records: Sequence[Record]) -> Folded:
        """Decode, join and fold ``records`` into one apply, advancing the partitions' in-memory states as if
        it were applied: the next batch may be folded on top of it before it is. If it is then not applied
        (:meth:`apply` raised or returned False), :meth:`discard` every partition of it and of what was folded
        after it: their states are reloaded from the store when next needed."""
        self._window = None if self._bounds is None else self._bounds.window(self._clock())
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for record in records:
            by_partition[record.partition].append(record)
        folded = Folded(len(records), by_partition)
        try:
            work = [(partition, self._states.get(partition) or self._load(partition), part_records)
                    for partition, part_records in sorted(by_partition.items())]  # fmt: skip
            pool = self._fold_pool
            if pool is None or len(work) < 2:
                done = [self._fold_one(*item) for item in work]
            else:
                futures = [pool.submit(self._fold_one, *item) for item in work]
                wait(futures)  # all of them, before a failure drops their states
                done = [future.result() for future in futures]
        except BaseException:
            # A failure mid-fold: the in-memory states may be ahead of the store.
            self.discard(by_partition)
            raise
        for fenced, part, batch in done:
            if fenced is not None:
                folded.fenced.append(fenced)
            folded.parts.append(part)
            if not folded.batch.increments and not folded.batch.meta:
                folded.batch = batch
            else:
                folded.batch.merge(batch)
        return folded

    def _fold_one(
        self, partition: int, state: _PartitionState, records: list[Record]
    ) -> tuple[FencedState | None, BatchOutcome, SlotBatch]:
        """One partition's part of :meth:`fold` (partitions may be folded in parallel: each has its own
        state and batch)."""
        batch = SlotBatch()
        fenced, part = self._fold_fresh(state, partition, records, batch)
        if fenced is not None:
            state.stored_offset = fenced.fence.offset  # what the store holds once this is applied
        return fenced, part, batch

    def apply(self, folded: Folded, deliver: Deliver | None = None) -> bool:
        """Deliver the dead letters of ``folded``, then apply it in one atomic step; False if a fence refused
        (nothing applied). Reads no in-memory state: it may run in another thread while the next is folded."""
        if deliver is not None:
            deliver([dead for part in folded.parts for dead in part.dead_letters])
        return not folded.fenced or self.store.apply_many(folded.batch, folded.fenced)

    def settle(self, folded: Folded) -> BatchOutcome:
        """The outcome of ``folded``, once applied."""
        outcome = BatchOutcome(records=folded.records)
        for part in folded.parts:
            outcome.absorb(part)
        return outcome

    def discard(self, partitions: Iterable[int]) -> None:
        """Drop the in-memory states of ``partitions`` (ahead of the store): reloaded when next needed."""
        for partition in partitions:
            self._states.pop(partition, None)

    def _process_partition(
        self, partition: int, records: list[Record], outcome: BatchOutcome, deliver: Deliver | None
    ) -> None:
        try:
            state = self._states.get(partition) or self._load(partition)
            for attempt in range(_MAX_RETRIES):
                if self._attempt(state, partition, records, outcome, deliver):
                    return
                outcome.retries += 1
                log.warning(
                    "fence %s/%d moved by another worker (attempt %d): reloading the partition state",
                    self.fence_name,
                    partition,
                    attempt + 1,
                )
                # The refused delta was taken from the joins (their change tracking restarted) but not
                # stored, and the store holds another worker's state: only a reload matches the store.
                state = self._load(partition)
        except BaseException:
            # Apply outcome unknown, or a failure mid-fold: the in-memory state may be ahead of the store.
            self._states.pop(partition, None)
            raise
        self._states.pop(partition, None)
        raise StoreError(
            f"fence {self.fence_name!r} partition {partition}: gave up after {_MAX_RETRIES} concurrent updates"
        )

    def _attempt(
        self, state: _PartitionState, partition: int, records: list[Record], outcome: BatchOutcome,
        deliver: Deliver | None,
    ) -> bool:
        """Fold the records the state has not seen and apply them; False if the fence refused."""
        batch = SlotBatch()
        fenced, part = self._fold_fresh(state, partition, records, batch)
        if deliver is not None:
            deliver(part.dead_letters)
        if fenced is not None:
            if not self.store.apply_many(batch, [fenced]):
                return False
            state.stored_offset = fenced.fence.offset
        outcome.absorb(part)
        return True

    def _fold_fresh(
        self, state: _PartitionState, partition: int, records: list[Record], batch: SlotBatch
    ) -> tuple[FencedState | None, BatchOutcome]:
        """Fold into ``batch`` the records ``state`` has not seen; the partition's part of the apply (None:
        nothing new) and its counts."""
        fresh = [r for r in records if r.offset >= state.next_offsets.get(r.topic, -1)]
        part = BatchOutcome(skipped=len(records) - len(fresh))
        if not fresh:
            return None, part
        self._fold_partition(state, fresh, batch, part)
        for topic in {r.topic for r in fresh}:
            last = max([r.offset for r in fresh if r.topic == topic])
            state.next_offsets[topic] = max(state.next_offsets.get(topic, 0), last + 1)
        fence = Fence(self.fence_name, partition, state.fence_offset(), state.stored_offset)
        return FencedState(fence, self._checkpoint(state), self._state_record(state)), part

    def _state_record(self, state: _PartitionState) -> StateLog:
        """The joins' changes since the last batch as one state log record, or, once the records since the
        last whole-state record outgrow it (and ``compact_min_bytes``), a whole-state record replacing them:
        the stored log stays within about twice the state, so loading a partition costs about its state."""
        record = state.joins.delta_record()
        state.log_bytes += len(record)
        if state.log_bytes <= max(self._compact_min_bytes, state.snapshot_bytes):
            return StateLog(pack_log(record))
        snapshot = state.joins.entries_record()
        state.snapshot_bytes, state.log_bytes = len(snapshot), 0
        return StateLog(pack_log(snapshot), replace=True)

    def _decode(
        self, joins: PartitionJoins[Any, Any], records: list[Record], outcome: BatchOutcome
    ) -> tuple[list[Any], list[Any], dict[str, list[float | None]]]:
        """Valid messages as ``joins`` decodes them, and per model the ts each of its invalid messages claims
        (None: unreadable)."""
        scores: list[Any] = []
        labels: list[Any] = []
        score_records: list[Record] = []
        label_records: list[Record] = []
        violations: dict[str, list[float | None]] = defaultdict(list)
        for record in records:
            raw = record.value or b""
            try:
                if len(raw) > self._max_message_bytes:
                    raise EventValidationError(
                        f"message of {len(raw)} bytes exceeds the limit of {self._max_message_bytes}", field="<size>"
                    )
                if record.topic == self.labels_topic:
                    labels.append(joins.decode_label(raw))
                    label_records.append(record)
                else:
                    scores.append(joins.decode_scores(raw))
                    score_records.append(record)
            except EventValidationError as exc:
                self._dead_letter(record, str(exc), violations, outcome)
        window = self._window
        if window is not None:
            far_scores, far_labels = joins.outside(window, scores, labels)
            if far_scores or far_labels:
                scores = self._refuse(window, scores, score_records, far_scores, violations, outcome)
                labels = self._refuse(window, labels, label_records, far_labels, violations, outcome)
        return scores, labels, violations

    def _dead_letter(
        self, record: Record, reason: str, violations: dict[str, list[float | None]], outcome: BatchOutcome
    ) -> None:
        """An invalid message: a dead letter, and a violation of the model it names at the time it claims
        (believed only within the event-time bounds; else none, so it is counted at the watermark)."""
        model, ts_s = identify(record.value or b"")
        outcome.dead_letters.append(DeadLetter(record, reason, model))
        if model is not None:
            window = self._window
            violations[model].append(None if ts_s is None or (window and not window.admits(ts_s)) else ts_s)

    def _refuse(
        self, window: TimeWindow, decoded: list[Any], records: list[Record], outside: Outside,
        violations: dict[str, list[float | None]], outcome: BatchOutcome,
    ) -> list[Any]:
        """``decoded`` without the messages ``outside`` the event-time window, which become dead letters."""
        if not outside:
            return decoded
        for index, event, ts_s in outside:
            several = len(decoded[index]) > 1 if isinstance(decoded[index], Sized) else False
            self._dead_letter(records[index], window.reason(ts_s, event if several else None), violations, outcome)
            if window.ahead(ts_s):
                outcome.ahead += 1
            else:
                outcome.behind += 1
        dropped = {index for index, _, _ in outside}
        return [message for i, message in enumerate(decoded) if i not in dropped]

    def _fold_partition(
        self, state: _PartitionState, records: list[Record], batch: SlotBatch, outcome: BatchOutcome
    ) -> None:
        scores, labels, violations = self._decode(state.joins, records, outcome)
        joined = state.joins.join(scores, labels)
        outcome.score_events += joined.score_events
        outcome.labels += joined.label_events
        for pairs in joined.pairs:
            key = pairs.key
            state.production_of[(key.model, key.candidate_version, key.role)] = key.production_version
        self._fold_labels(joined.labeled, batch, outcome)
        self._fold_pairs(joined.pairs, batch, outcome)
        self._fold_sides(state, joined, batch, outcome)
        if violations:
            # Never past the partition's score time: a window read at a comparison's latest pair covers it.
            ceiling_s = joined.known_s if joined.score_s is None else joined.score_s
            self._fold_integrity(state, violations, batch, ceiling_s, outcome)
        if joined.watermark_s is not None:
            outcome.watermark_s[records[0].partition] = joined.watermark_s

    def _fold_pairs(self, comparisons: list[PairBatch], batch: SlotBatch, outcome: BatchOutcome) -> None:
        for pairs in comparisons:
            cid = pairs.key.as_id()
            ts = pairs.ts
            outcome.pairs += len(ts)
            outcome.comparisons.add(cid)
            batch.note(cid, pairs.key.model, int(ts.min() * 1000), int(ts.max() * 1000))
            for idx, ts_s in _by_minute(ts):
                fields = fold_pairs(
                    pairs.prod_score[idx],
                    pairs.cand_score[idx],
                    pairs.prod_latency_ms[idx],
                    pairs.cand_latency_ms[idx],
                    pairs.prod_error[idx],
                    pairs.cand_error[idx],
                    _features(pairs.prod_features, idx, len(ts)),
                    _features(pairs.cand_features, idx, len(ts)),
                    self.config,
                )
                _add_to_slots(batch, cid, ts_s, fields)

    def _fold_labels(self, labeled: list[LabeledBatch], batch: SlotBatch, outcome: BatchOutcome) -> None:
        for joined in labeled:
            cid = joined.key.as_id()
            outcome.labeled_pairs += len(joined.ts)
            outcome.labeled.add(cid)
            for idx, ts_s in _by_minute(joined.ts):
                fields = fold_labels(joined.prod_score[idx], joined.cand_score[idx], joined.label[idx], self.config)
                _add_to_slots(batch, cid, ts_s, fields)

    def _fold_sides(self, state: _PartitionState, joined: JoinOutput, batch: SlotBatch, outcome: BatchOutcome) -> None:
        for orphans in joined.orphans:
            ts, errors = orphans.ts, orphans.errors
            outcome.orphans += len(ts)
            production = orphans.side.role == "production"
            for cid in self._claimants(state, orphans.side):
                for idx, ts_s in _by_minute(ts):
                    n = len(idx)
                    n_err = 0 if errors is None else int(errors[idx].sum())
                    fields = fold_orphans(n, 0, n_err, 0) if production else fold_orphans(0, n, 0, n_err)
                    _add_to_slots(batch, cid, ts_s, fields)
        for duplicates in joined.duplicates:
            outcome.duplicates += len(duplicates.ts)
            for cid in self._claimants(state, duplicates.side):
                for idx, ts_s in _by_minute(duplicates.ts):
                    _add_to_slots(batch, cid, ts_s, fold_duplicates(len(idx)))
        outcome.evicted += joined.evicted

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
        return [ComparisonKey(side.model, prod, side.version, side.role).as_id()]

    def _fold_integrity(
        self,
        state: _PartitionState,
        violations: Mapping[str, list[float | None]],
        batch: SlotBatch,
        ceiling_s: float | None,
        outcome: BatchOutcome,
    ) -> None:
        """Count invalid messages at the ts they claim, never past ``ceiling_s`` (the partition's watermark).

        The message's own ts keeps the count independent of batching and partitioning; without one, the
        watermark; without either, the message is only a dead letter (``unplaced_violations``).
        """
        for model, claimed in violations.items():
            placed = [t if t is not None and (ceiling_s is None or t <= ceiling_s) else ceiling_s for t in claimed]
            ts = np.array([t for t in placed if t is not None], dtype=np.float64)
            unplaced = len(claimed) - len(ts)
            if unplaced:
                outcome.unplaced_violations += unplaced
                log.warning("%d invalid messages of model %r carry no time: in no window", unplaced, model)
            if not len(ts):
                continue
            claimants = sorted(
                {
                    ComparisonKey(m, prod, cand, role).as_id()  # type: ignore[arg-type]
                    for (m, cand, role), prod in state.production_of.items()
                    if m == model
                }
            )
            if not claimants:
                # The pseudo comparison exists only through its violations; a real one's span stays its events'.
                claimants = [integrity_id(model)]
                batch.note(claimants[0], model, int(ts.min() * 1000), int(ts.max() * 1000))
            for cid in claimants:
                for idx, ts_s in _by_minute(ts):
                    _add_to_slots(batch, cid, ts_s, fold_integrity(len(idx)))


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


def _features(arrays: FeatureArrays, idx: npt.NDArray[np.intp], n: int) -> dict[str, FeatureColumn] | None:
    """The feature values of rows ``idx`` (of ``n``) per name."""
    if not arrays:
        return None
    chosen = None
    if len(idx) < n:  # usually one minute group holds the whole batch: no per-row selection
        chosen = np.zeros(n, dtype=np.bool_)
        chosen[idx] = True
    out: dict[str, FeatureColumn] = {}
    for name, (rows, column) in arrays.items():
        if chosen is not None:
            column = column.take(chosen[rows])
        if len(column):
            out[name] = column
    return out or None


def _add_to_slots(batch: SlotBatch, cid: str, ts_s: float, fields: Mapping[str, int]) -> None:
    if not fields or math.isnan(ts_s):
        return
    for slot in slots_for(int(ts_s)):
        batch.add(cid, slot, fields)
