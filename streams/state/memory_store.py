"""MemoryWindowStore: the window store in one process's memory, for replay and tests.

Same contract as every :class:`streams.state.store.WindowStore` (one contract suite runs against it and the
Redis store). One lock serialises apply and read, which gives atomic batches, consistent reads and
exact totals with any number of writer threads.

Clock. The store has none: reads filter slots by the ``now_s`` they are given. To stay bounded during
a replay it also drops, on apply, every slot whose expiry is at or before the *event-time watermark*
(the newest slot start applied so far), and :meth:`MemoryWindowStore.expire` drops slots expired at a
given ``now_s``. Memory: about 100 bytes per stored (slot, field) plus one heap entry per slot; with the
default retention at most 26 h of minute slots, 15 d of hour slots and 35 d of day slots per comparison.
Checkpoints and state log records are kept as the bytes given, never unpickled; a state delta is stored
in time proportional to its size (its record is appended whole and decoded when the state is read).
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable, Sequence

from governance.errors import StoreError
from streams.state.statelog import apply_log
from streams.state.store import (
    INT64_MAX,
    INT64_MIN,
    ComparisonMeta,
    FencedState,
    FenceState,
    ReadRequest,
    SlotBatch,
    SlotKey,
    WindowRead,
    WindowStore,
    check_parts,
)
from streams.state.windows import Retention, Slot, plan

__all__ = ["MemoryWindowStore"]


class MemoryWindowStore(WindowStore):
    """Window store in memory; thread-safe."""

    def __init__(self, retention: Retention | None = None) -> None:
        super().__init__(retention)
        self._lock = threading.Lock()
        self._slots: dict[SlotKey, dict[str, int]] = {}
        self._expiry_heap: list[tuple[int, SlotKey]] = []
        self._meta: dict[str, ComparisonMeta] = {}
        self._by_model: dict[str, set[str]] = {}
        self._fences: dict[tuple[str, int], FenceState] = {}
        # Per (fence name, partition): the state log records, oldest first (decoded when read, like Redis).
        self._states: dict[tuple[str, int], list[bytes]] = {}
        self._watermark_s: int | None = None

    def apply_many(self, batch: SlotBatch, parts: Sequence[FencedState]) -> bool:
        checked = check_parts(parts)
        batch.validate()
        increments = batch.nonzero()
        with self._lock:
            for fence, _, _ in checked:
                stored = self._fences.get((fence.name, fence.partition))
                if not fence.admits(None if stored is None else stored.offset):
                    return False
            # Compute every new total before touching state, so an overflow leaves nothing applied.
            updates: dict[SlotKey, dict[str, int]] = {}
            for key, fields in increments.items():
                current = self._slots.get(key, {})
                new = {name: current.get(name, 0) + value for name, value in fields.items()}
                for name, total in new.items():
                    if not INT64_MIN <= total <= INT64_MAX:
                        raise StoreError(
                            f"slot {(key[0], key[1].value, key[2])!r} field {name!r}: total {total} would "
                            "leave signed 64 bits; nothing from this batch was applied"
                        )
                updates[key] = new
            for key, new in updates.items():
                target = self._slots.get(key)
                if target is None:
                    target = self._slots[key] = {}
                    slot = Slot(key[1], key[2])
                    heapq.heappush(self._expiry_heap, (self.retention.expires_at_s(slot), key))
                for name, total in new.items():
                    if total:
                        target[name] = total
                    else:
                        target.pop(name, None)  # absent means 0
                if self._watermark_s is None or key[2] > self._watermark_s:
                    self._watermark_s = key[2]
            for cid, meta in batch.meta.items():
                old = self._meta.get(cid)
                self._meta[cid] = meta if old is None else old.merge(meta)
                self._by_model.setdefault(self._meta[cid].model, set()).add(cid)
            for fence, checkpoint, log in checked:
                self._fences[(fence.name, fence.partition)] = FenceState(fence.offset, checkpoint)
                if log is not None:
                    records = self._states.setdefault((fence.name, fence.partition), [])
                    if log.replace:
                        records.clear()
                    records.append(log.blob)
            if self._watermark_s is not None:
                self._expire_locked(self._watermark_s)
        return True

    def read_fence(self, name: str, partition: int) -> FenceState | None:
        with self._lock:
            return self._fences.get((name, partition))

    def read_state(self, name: str, partition: int) -> dict[str, bytes]:
        with self._lock:
            records = list(self._states.get((name, partition), []))
        entries: dict[str, bytes] = {}
        for i, record in enumerate(records):
            try:
                apply_log(entries, record)
            except StoreError as exc:
                raise StoreError(f"read state of fence {name!r} partition {partition}: record {i}: {exc}") from None
        return entries

    def read_slots(self, comparison_id: str, slots: Iterable[Slot], now_s: int) -> dict[Slot, dict[str, int]]:
        with self._lock:
            return self._read_slots_locked(comparison_id, slots, now_s)

    def read(self, comparison_id: str, start_s: int, end_s: int, now_s: int) -> WindowRead:
        return self.read_many(comparison_id, [(start_s, end_s)], now_s)[0]

    def read_many(self, comparison_id: str, ranges: Sequence[tuple[int, int]], now_s: int) -> list[WindowRead]:
        with self._lock:
            return self._read_many_locked(comparison_id, ranges, now_s)

    def read_batch(self, requests: Sequence[ReadRequest]) -> list[list[WindowRead]]:
        # Under one lock: every request of the batch sees the same state (more than the protocol asks).
        with self._lock:
            return [self._read_many_locked(cid, ranges, now_s) for cid, ranges, now_s in requests]

    def meta(self, comparison_id: str) -> ComparisonMeta | None:
        with self._lock:
            return self._meta.get(comparison_id)

    def metas(self, comparison_ids: Sequence[str]) -> list[ComparisonMeta | None]:
        with self._lock:
            return [self._meta.get(cid) for cid in comparison_ids]

    def comparisons(self, model: str | None = None) -> list[str]:
        with self._lock:
            if model is not None:
                return sorted(self._by_model.get(model, ()))
            return sorted(self._meta)

    def slot_count(self) -> int:
        """How many slots are held (of every comparison and granularity): the memory driver."""
        with self._lock:
            return len(self._slots)

    def expire(self, now_s: int) -> int:
        """Drop every slot expired at ``now_s``; returns how many were dropped."""
        with self._lock:
            return self._expire_locked(now_s)

    def _read_many_locked(self, comparison_id: str, ranges: Sequence[tuple[int, int]], now_s: int) -> list[WindowRead]:
        meta = self._meta.get(comparison_id)
        out = []
        for start_s, end_s in ranges:
            window = plan(start_s, end_s, now_s, self.retention)
            merged: dict[str, int] = {}
            for fields in self._read_slots_locked(comparison_id, window.slots, now_s).values():
                for name, value in fields.items():
                    merged[name] = merged.get(name, 0) + value
            out.append(WindowRead({k: v for k, v in merged.items() if v}, window, meta))
        return out

    def _read_slots_locked(self, comparison_id: str, slots: Iterable[Slot], now_s: int) -> dict[Slot, dict[str, int]]:
        out: dict[Slot, dict[str, int]] = {}
        for slot in slots:
            fields = self._slots.get((comparison_id, slot.granularity, slot.start_s))
            if fields and now_s < self.retention.expires_at_s(slot):
                nonzero = {name: value for name, value in fields.items() if value}
                if nonzero:
                    out[slot] = nonzero
        return out

    def _expire_locked(self, now_s: int) -> int:
        dropped = 0
        heap = self._expiry_heap
        while heap and heap[0][0] <= now_s:
            _, key = heapq.heappop(heap)
            if self._slots.pop(key, None) is not None:
                dropped += 1
        return dropped
