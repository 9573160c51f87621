"""The window store protocol: apply a batch of slot increments under an offset fence; read a window.

A store keeps, per comparison, one flat map of integer fields per event-time slot (see
:mod:`streams.state.windows`). It never interprets field names: the aggregator decides what ``"n"`` or
``"d:12"`` means, the store only adds integers. Backends are sibling modules
(:mod:`streams.state.memory_store`, :mod:`streams.state.redis_store`) and pass one contract suite
(``tests/test_store_contract.py``).

Guarantees every backend gives:

* **Exact.** Fields are integers end to end (fixed-point sums included) and merging is plain integer
  addition, so the result does not depend on batch order, slot order or the number of writers. Each
  increment and each slot's total must fit a signed 64-bit integer (what Redis stores); a batch that
  would overflow one is refused whole with StoreError. Merged windows are exact Python ints, however
  large. Field names are non-empty strings without a newline.
* **Exactly-once effect.** :meth:`WindowStore.apply` adds the whole batch, moves the ``(fence name,
  partition)`` fence to ``fence.offset``, stores the checkpoint blob and applies the state delta in ONE
  atomic step, or does nothing at all when the fence refuses (it then returns ``False``): when
  ``fence.offset`` is not newer than the stored fence or, if ``fence.expected`` is given, when the stored
  fence is not exactly ``fence.expected`` (compare-and-set: a writer whose state is based on an older
  fence than the stored one cannot add a delta computed from it). So a batch redelivered by Kafka after a
  crash, or retried after a timeout whose outcome is unknown, is counted exactly once, and the
  checkpoint and state read back always belong to the fence read back.
* **State.** Per ``(fence name, partition)`` the store keeps a map of short string keys to bytes: the
  accumulation of every applied state delta, given as a :class:`~streams.join.state.StateDelta` or as its
  encoded record, a :class:`~streams.join.state.StateLog` (a record with ``replace`` set replaces the map: a
  compaction). A delta costs in proportion to its size, never to the size of the map.
  :meth:`WindowStore.read_state` returns the map; read the fence before and after it and compare the offsets
  to know which fence it belongs to (equal offsets: no batch was applied in between).
* **Concurrent writers.** Any number of writers (threads, processes, workers) may apply batches to the
  same slots at the same time; totals are exact. Two writers racing with the same fence apply it once.
* **Consistent reads.** :meth:`WindowStore.read` sees each batch entirely or not at all.
* **Retention.** A slot disappears at ``slot.end_s + retention`` of its granularity (event-time
  anchored; see :class:`streams.state.windows.Retention`).

A field whose total is zero is absent from read results (absent means 0); so is a slot without any
non-zero field.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

from governance.errors import StoreError
from streams.state.statelog import StateDelta, StateLog
from streams.state.windows import Granularity, Plan, Retention, Slot

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "NO_FENCE",
    "ComparisonMeta",
    "Fence",
    "FenceState",
    "SlotBatch",
    "SlotKey",
    "WindowRead",
    "WindowStore",
    "FencedState",
    "ReadRequest",
    "check_parts",
    "state_log",
]

#: Every increment and every slot total must lie in [INT64_MIN, INT64_MAX].
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
#: ``Fence.expected`` for a first batch: apply only if no fence is stored yet.
NO_FENCE = -1

#: (comparison_id, granularity, slot start in epoch seconds)
SlotKey = tuple[str, Granularity, int]
#: One comparison's part of :meth:`WindowStore.read_batch`: (comparison_id, ranges ``(start_s, end_s)``, now_s)
ReadRequest = tuple[str, tuple[tuple[int, int], ...], int]
_FORBIDDEN = "{}"  # braces would break the Redis Cluster hash tag {comparison_id}


class Fence(NamedTuple):
    """The newest Kafka offset of ``partition`` whose effect a batch contains.

    ``name`` identifies the consumer of the partition, e.g. ``"shadowgate-worker/scores"`` (consumer
    group and topic), so two pipelines reading the same topic keep separate fences. ``expected``, when
    given, makes the apply a compare-and-set: it applies only if the stored fence is exactly
    ``expected`` (:data:`NO_FENCE`: none stored yet), and ``offset`` must be larger.
    """

    name: str
    partition: int
    offset: int
    expected: int | None = None

    def validate(self) -> None:
        """Raise StoreError naming the bad part of the fence."""
        _check_id("fence name", self.name)
        where = f"fence {self.name!r} partition {self.partition}"
        if not _is_int(self.partition) or self.partition < 0:
            raise StoreError(f"fence {self.name!r}: partition {self.partition!r} must be an int >= 0")
        if not _is_int(self.offset) or not 0 <= self.offset < 2**53:
            raise StoreError(f"{where}: offset {self.offset!r} must be an int in [0, 2**53)")
        if self.expected is not None and (not _is_int(self.expected) or not NO_FENCE <= self.expected < self.offset):
            raise StoreError(
                f"{where}: expected {self.expected!r} must be None or an int in [NO_FENCE (-1), offset {self.offset})"
            )

    def admits(self, stored: int | None) -> bool:
        """Whether a batch under this fence applies over the ``stored`` fence offset (None: none stored)."""
        if self.expected is not None:
            return (NO_FENCE if stored is None else stored) == self.expected
        return stored is None or stored < self.offset


class FencedState(NamedTuple):
    """One partition's part of :meth:`WindowStore.apply_many`: its fence, checkpoint and state delta."""

    fence: Fence
    checkpoint: bytes | None = None
    state: StateDelta | StateLog | None = None


class FenceState(NamedTuple):
    """What :meth:`WindowStore.read_fence` returns: the fenced offset and the checkpoint stored with it."""

    offset: int
    checkpoint: bytes | None


@dataclass(frozen=True)
class ComparisonMeta:
    """Per-comparison facts kept beside the slots: its model and the event-time span seen (epoch ms).

    Merging keeps the first model and the min of ``first_event_ms`` / max of ``last_event_ms``.
    """

    model: str
    first_event_ms: int
    last_event_ms: int

    def merge(self, other: ComparisonMeta) -> ComparisonMeta:
        return ComparisonMeta(
            self.model,
            min(self.first_event_ms, other.first_event_ms),
            max(self.last_event_ms, other.last_event_ms),
        )


@dataclass
class SlotBatch:
    """Integer field increments per slot, plus comparison metadata, to apply in one step.

    Memory: one dict entry per (slot, field) touched by the batch; build one per partition batch.
    """

    increments: dict[SlotKey, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, ComparisonMeta] = field(default_factory=dict)

    def add(self, comparison_id: str, slot: Slot, fields: Mapping[str, int]) -> None:
        """Add ``fields`` to the increments of ``slot`` of ``comparison_id`` (integer addition)."""
        target = self.increments.setdefault((comparison_id, slot.granularity, slot.start_s), {})
        for name, value in fields.items():
            target[name] = target.get(name, 0) + value

    def note(self, comparison_id: str, model: str, first_event_ms: int, last_event_ms: int) -> None:
        """Record that ``comparison_id`` (of ``model``) saw events between the two times."""
        new = ComparisonMeta(model, first_event_ms, last_event_ms)
        old = self.meta.get(comparison_id)
        self.meta[comparison_id] = new if old is None else old.merge(new)

    def merge(self, other: SlotBatch) -> None:
        """Add every increment and meta of ``other`` (the batch of another partition) to this one."""
        for key, fields in other.increments.items():
            target = self.increments.setdefault(key, {})
            for name, value in fields.items():
                target[name] = target.get(name, 0) + value
        for cid, meta in other.meta.items():
            old = self.meta.get(cid)
            self.meta[cid] = meta if old is None else old.merge(meta)

    def validate(self) -> None:
        """Raise StoreError naming the first bad comparison id, slot, field or value."""
        for (cid, gran, start_s), fields in self.increments.items():
            _check_id("comparison id", cid)
            where = f"slot {(cid, getattr(gran, 'value', gran), start_s)!r}"
            if not isinstance(gran, Granularity):
                raise StoreError(f"{where}: granularity must be a Granularity")
            if not _is_int(start_s) or start_s % gran.step_s:
                raise StoreError(f"{where}: start must be an int aligned to {gran.step_s} s")
            for name, value in fields.items():
                if not isinstance(name, str) or not name or "\n" in name:
                    raise StoreError(f"{where}: field name {name!r} must be a non-empty str without newline")
                if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:  # bool is not an increment
                    raise StoreError(
                        f"{where} field {name!r}: increment {value!r} must be an int within signed 64 "
                        "bits (scale sums to fixed-point integers, never floats)"
                    )
        for cid, meta in self.meta.items():
            _check_id("comparison id", cid)
            _check_id(f"model of comparison {cid!r}", meta.model)
            if not (_is_int(meta.first_event_ms) and _is_int(meta.last_event_ms)):
                raise StoreError(f"meta of comparison {cid!r}: event times must be int epoch milliseconds")
            if meta.first_event_ms > meta.last_event_ms:
                raise StoreError(f"meta of comparison {cid!r}: first_event_ms > last_event_ms")

    def nonzero(self) -> dict[SlotKey, dict[str, int]]:
        """The increments without zero values and without slots left empty (nothing to write)."""
        out: dict[SlotKey, dict[str, int]] = {}
        for key, fields in self.increments.items():
            kept = {name: value for name, value in fields.items() if value}
            if kept:
                out[key] = kept
        return out


@dataclass(frozen=True)
class WindowRead:
    """One comparison's merged window: non-zero field totals, the plan that was read, and its meta."""

    fields: dict[str, int]
    plan: Plan
    meta: ComparisonMeta | None


class WindowStore(ABC):
    """Abstract window store. Implementations are safe to share between threads."""

    def __init__(self, retention: Retention | None = None) -> None:
        self.retention = retention if retention is not None else Retention()

    def apply(
        self,
        batch: SlotBatch,
        fence: Fence,
        checkpoint: bytes | None = None,
        state: StateDelta | StateLog | None = None,
    ) -> bool:
        """Apply ``batch`` and ``state``, move the fence to ``fence.offset`` and store ``checkpoint``, atomically.

        Returns False, changing nothing, when the fence refuses (:meth:`Fence.admits`: the stored fence
        of ``(fence.name, fence.partition)`` is already ``>= fence.offset``, or is not ``fence.expected``).
        ``checkpoint=None`` removes the previous checkpoint: the stored checkpoint is always the one
        given with the stored fence. ``state`` is applied to the state map of the same ``(name,
        partition)``; ``None`` leaves the map as it is. Idempotent, so safe to retry.
        Raises StoreError (bad batch, nothing applied) or InfrastructureError (store unreachable).
        """
        return self.apply_many(batch, [FencedState(fence, checkpoint, state)])

    @abstractmethod
    def apply_many(self, batch: SlotBatch, parts: Sequence[FencedState]) -> bool:
        """:meth:`apply` with the fences of several partitions: ONE atomic step that applies ``batch`` once
        and every part (fence, checkpoint, state) only if EVERY fence admits; otherwise nothing, False.

        A worker folds the batch of all its partitions together, so the window increments are written once
        instead of once per partition. The parts' ``(name, partition)`` must be distinct.
        """

    @abstractmethod
    def read_fence(self, name: str, partition: int) -> FenceState | None:
        """The stored fence and checkpoint of ``(name, partition)``, or None if never applied."""

    @abstractmethod
    def read_state(self, name: str, partition: int) -> dict[str, bytes]:
        """The state map of ``(name, partition)`` (empty if none); see the module doc for consistency."""

    @abstractmethod
    def read_slots(self, comparison_id: str, slots: Iterable[Slot], now_s: int) -> dict[Slot, dict[str, int]]:
        """The non-zero fields of each slot still retained at ``now_s`` (empty or missing slots are absent)."""

    @abstractmethod
    def read(self, comparison_id: str, start_s: int, end_s: int, now_s: int) -> WindowRead:
        """Merge the slots that :func:`streams.state.windows.plan` picks for ``[start_s, end_s)`` at ``now_s``."""

    @abstractmethod
    def read_many(self, comparison_id: str, ranges: Sequence[tuple[int, int]], now_s: int) -> list[WindowRead]:
        """:meth:`read` of each ``(start_s, end_s)`` in ``ranges``, all from one consistent state of the store.

        A batch applied meanwhile is in every read or in none, so the windows of one document agree.
        """

    def read_batch(self, requests: Sequence[ReadRequest]) -> list[list[WindowRead]]:
        """:meth:`read_many` of each ``(comparison_id, ranges, now_s)`` request, in order, in few round trips.

        Each request's windows come from one consistent state of the store, as with :meth:`read_many`
        (a batch applied meanwhile is in all of one request's windows or in none). What the evaluation round
        reads for every comparison it evaluates; this default reads one request after the other.
        """
        return [self.read_many(cid, ranges, now_s) for cid, ranges, now_s in requests]

    @abstractmethod
    def meta(self, comparison_id: str) -> ComparisonMeta | None:
        """The comparison's model and event-time span, or None if it was never applied."""

    def metas(self, comparison_ids: Sequence[str]) -> list[ComparisonMeta | None]:
        """:meth:`meta` of each id, in order, in few round trips (this default: one after the other)."""
        return [self.meta(cid) for cid in comparison_ids]

    @abstractmethod
    def comparisons(self, model: str | None = None) -> list[str]:
        """Sorted ids of the comparisons ever applied (of ``model`` only, if given)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release connections; the store must not be used afterwards."""

    def __enter__(self) -> WindowStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_parts(parts: Sequence[FencedState]) -> list[tuple[Fence, bytes | None, StateLog | None]]:
    """Validate the parts of an ``apply_many`` (StoreError naming the bad one); their encoded state logs."""
    if not parts:
        raise StoreError("apply_many needs at least one fence")
    out: list[tuple[Fence, bytes | None, StateLog | None]] = []
    seen: set[tuple[str, int]] = set()
    for fence, checkpoint, state in parts:
        fence.validate()
        if (fence.name, fence.partition) in seen:
            raise StoreError(f"fence {fence.name!r} partition {fence.partition} appears twice in one apply")
        seen.add((fence.name, fence.partition))
        if checkpoint is not None and not isinstance(checkpoint, bytes | bytearray | memoryview):
            raise StoreError(f"fence {fence.name!r} partition {fence.partition}: checkpoint must be bytes")
        out.append((fence, None if checkpoint is None else bytes(checkpoint), state_log(fence, state)))
    return out


def state_log(fence: Fence, state: StateDelta | StateLog | None) -> StateLog | None:
    """The state log record to store for ``state`` (None: nothing), or StoreError naming the bad part.

    A :class:`StateDelta` is checked key by key and encoded; a :class:`StateLog` is taken as given (its
    items are checked when read back).
    """
    if state is None:
        return None
    where = f"state of fence {fence.name!r} partition {fence.partition}"
    if isinstance(state, StateLog):
        if not isinstance(state.blob, bytes):
            raise StoreError(f"{where}: a StateLog's blob must be bytes, got {type(state.blob).__name__}")
        return state
    if not isinstance(state, StateDelta):
        raise StoreError(f"{where}: must be a StateDelta or StateLog, got {type(state).__name__}")
    for key in state.deletes:
        if not isinstance(key, str) or not key:
            raise StoreError(f"{where}: delete key {key!r} must be a non-empty str")
    for key, value in state.upserts.items():
        if not isinstance(key, str) or not key:
            raise StoreError(f"{where}: upsert key {key!r} must be a non-empty str")
        if not isinstance(value, bytes):
            raise StoreError(f"{where}: value of {key!r} must be bytes, got {type(value).__name__}")
    return StateLog.of(state)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_id(what: str, value: object) -> None:
    if not isinstance(value, str) or not value or any(c in value for c in _FORBIDDEN):
        raise StoreError(f"{what} {value!r}: must be a non-empty str without '{{' or '}}'")
