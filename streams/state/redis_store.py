"""RedisWindowStore: window slots as packed int64 strings in Redis, each batch applied by one Lua call.

Key layout (``P`` = the configurable prefix, default ``sg``; ``C`` = comparison id)::

    P:w:{C}:m:<start_s>    string  big-endian int64 per field (BITFIELD i64)   EXPIREAT end + 26 h (default)
    P:w:{C}:h:<start_s>    string  ... of one hour slot                          EXPIREAT end + 15 d
    P:w:{C}:d:<start_s>    string  ... of one day slot                           EXPIREAT end + 35 d
    P:fields:{C}           hash    field name -> index in the slot strings (append-only)   no expiry
    P:meta:{C}             hash    model, first_ms, last_ms (event time, epoch ms)         no expiry
    P:models               set     every model seen                                        no expiry
    P:model:<model>        set     comparison ids of the model                             no expiry
    P:fence:<name>:<part>  hash    offset, checkpoint (opaque bytes)                       no expiry
    P:slog:<name>:<part>   list    state log records (streams.joinstate.StateLog), oldest first   no expiry
    P:state:<name>:<part>  hash    state entries as earlier versions kept them (read, then replaced
                                   by the first compaction)                                no expiry

Why packed strings and not one hash field per field: a 24 h window merges up to 83 slots of 300-1000
fields. With hashes (``HINCRBY`` / ``HGETALL``) that read moved ~54,000 field/value pairs and took a
median of 80 ms on the 2-core dev machine (1 h: 64 ms; ``benchmarks/bench_windows.py``), over the
issue's 50 ms target. As int64 strings the same read is one ``GET`` per slot and a numpy sum, about
10x faster, and the benchmark's 14 days take 40 MiB instead of 74 MiB (a slot costs 8 bytes per
registered field up to the highest index it touches, against ~60 bytes per present field in a large
hash). Writes cost about the same (Redis spends ~3 us per ``BITFIELD`` op, as per ``HINCRBY``).

Writes: :meth:`RedisWindowStore.apply_many` (and ``apply``, its one-partition case) is ONE ``EVALSHA`` of
``apply_batch.lua`` (registered once per client; redis-py reloads it after a server restart): fence check,
field-index lookup (new names are appended to the registry), ``BITFIELD OVERFLOW FAIL INCRBY i64`` per slot,
``EXPIREAT`` per slot, meta, then per partition its state delta (one ``RPUSH`` of its record, or for a
compaction ``UNLINK`` of the old state and one ``RPUSH``), its new fence and checkpoint. A worker applies
the batch of all its partitions in one call, so the window increments are written once, not once per
partition. The fence checks come first, for every partition: a refused batch (stale fence, or a
compare-and-set whose expected fence is not the stored one) touches nothing. Redis runs a script without interleaving,
so readers and other writers see a batch entirely or not at all. If an increment would overflow 64 bits the
script restores every slot it wrote from the snapshot it took (``GET`` before the first ``BITFIELD``),
removes the names it registered and returns an error: nothing changes. The one failure it cannot undo is a
command failing inside the script (a foreign key of the wrong type under the prefix, or the server out of
memory): use a prefix of your own. Field names and increments travel as one string per comparison and per
slot, because redis-py packs each argument separately.

State reads: :meth:`RedisWindowStore.read_state` walks the hash of earlier versions with ``HSCAN`` (10 000
entries per call) and the log with ``LRANGE`` (256 records per call), so a large state never blocks the
server, and applies the records in order; it is not atomic, so compare the fence read before and after it
(see :mod:`streams.state.store`). The writer compacts the log (a record of the whole state replaces it) once it
outgrows the state it describes, so a read costs about the state, not its history.

Reads: :meth:`RedisWindowStore.read` is ONE ``MULTI``/``EXEC`` of ``GET`` per planned slot plus the meta
hash (a consistent snapshot), then a numpy int64 sum, with an exact Python-int fallback whenever the
sum could pass 2**63. :meth:`RedisWindowStore.read_batch` puts the reads of many comparisons in one ``MULTI``
(up to 2,000 commands each); ``metas`` and ``comparisons`` pipeline their commands: a round trip per batch,
not one per comparison or model. The field registry is cached per comparison and re-read only when a slot holds an
index the cache does not know (the registry is append-only, so the cache is never wrong, only short;
deleting keys by hand under a live prefix is not supported).

Redis Cluster: the slot, registry and meta keys of one comparison share the hash tag ``{C}``, but the
fence and state keys and the model sets live elsewhere, so a batch touches several cluster slots and a
multi-comparison batch several shards. Only a single Redis node (or one shard) is supported now; a
cluster would need the fence stored per comparison or a per-shard batch split.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from governance.contract.connections import RedisTarget, redis_client
from governance.errors import InfrastructureError, StoreError
from streams.state.statelog import apply_log
from streams.state.store import (
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

__all__ = ["RedisWindowStore"]

_I64 = np.dtype(">i8")  # BITFIELD i64 is big-endian two's complement
_SAFE_SUM = 2**62  # below this bound on the sum of absolute values int64 addition cannot overflow
_SCAN_COUNT = 10_000  # state entries per HSCAN call
_LOG_CHUNK = 256  # state log records per LRANGE call
_BATCH_COMMANDS = 2_000  # commands per MULTI of read_batch: one MULTI blocks the server while it runs


class RedisWindowStore(WindowStore):
    """Window store in Redis. Safe to share between threads (redis-py pools its connections).

    ``client`` must be created with ``decode_responses=False`` (the default): slots and checkpoints
    are bytes.
    """

    def __init__(
        self,
        client: redis.Redis[bytes],
        prefix: str = "sg",
        retention: Retention | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(retention)
        # Redis expires slots by the wall clock (EXPIREAT), whatever ``now_s`` a reader passes: reads plan
        # with the later of the two, so a window of events older than the minute retention is answered
        # from the hour and day slots that still exist (edges rounded, as the plan says), not from minute
        # slots that are gone.
        self._clock = clock
        if not prefix or any(c in prefix for c in "{}"):
            raise StoreError(f"redis prefix {prefix!r}: must be non-empty, without '{{' or '}}'")
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise StoreError("redis client: create it with decode_responses=False (slots are bytes)")
        self._client = client
        self._prefix = prefix
        script = resources.files("streams.state").joinpath("apply_batch.lua").read_text(encoding="utf-8")
        self._apply_script = client.register_script(script)
        self._server = _describe(client)
        self._names: dict[str, list[str]] = {}  # comparison id -> field name by index
        self._names_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: RedisTarget, prefix: str = "sg", retention: Retention | None = None) -> RedisWindowStore:
        """A store with its own client for ``url`` (closed by :meth:`close`)."""
        return cls(redis_client(url), prefix, retention)

    def close(self) -> None:
        self._client.close()

    def slot_key(self, comparison_id: str, slot: Slot) -> str:
        """The Redis key of one slot of one comparison."""
        return f"{self._prefix}:w:{{{comparison_id}}}:{slot.granularity.value}:{slot.start_s}"

    def apply_many(self, batch: SlotBatch, parts: Sequence[FencedState]) -> bool:
        checked = check_parts(parts)
        batch.validate()
        keys: list[str] = [f"{self._prefix}:models"]
        args: list[Any] = [len(checked)]
        for fence, checkpoint, log in checked:
            args += [fence.offset, 0, b""] if checkpoint is None else [fence.offset, 1, checkpoint]
            args.append("" if fence.expected is None else fence.expected)
            if log is None or not (log.blob or log.replace):
                args.append(0)
            else:
                args += [2 if log.replace else 1, log.blob]
        args.append(len(batch.meta))
        for cid, meta in batch.meta.items():
            keys += [f"{self._prefix}:model:{meta.model}", self._meta_key(cid)]
            args += [meta.model, cid, meta.first_event_ms, meta.last_event_ms]
        by_comparison: dict[str, list[tuple[SlotKey, dict[str, int]]]] = {}
        for key, fields in batch.nonzero().items():
            by_comparison.setdefault(key[0], []).append((key, fields))
        args.append(len(by_comparison))
        for cid, slots in by_comparison.items():
            # Each distinct name travels once per comparison; slots refer to it by 1-based position.
            # A few large arguments instead of one per field: redis-py packs each argument separately.
            position: dict[str, int] = {}
            for _, fields in slots:
                for name in fields:
                    position.setdefault(name, len(position) + 1)
            keys.append(self._registry_key(cid))
            args += ["\n".join(position), len(slots)]
            for (_, gran, start_s), fields in slots:
                slot = Slot(gran, start_s)
                keys.append(self.slot_key(cid, slot))
                pairs = "".join([f"{position[name]}:{value};" for name, value in fields.items()])
                args += [self.retention.expires_at_s(slot), pairs]
        for fence, _, _ in checked:
            keys += [
                self._fence_key(fence.name, fence.partition),
                self._state_key(fence.name, fence.partition),
                self._state_log_key(fence.name, fence.partition),
            ]
        first = checked[0][0]
        where = f"apply batch of fence {first.name!r} partition {first.partition} offset {first.offset}"
        if len(checked) > 1:
            where += f" (and {len(checked) - 1} more partitions)"
        with self._errors(where):
            return bool(self._apply_script(keys=keys, args=args))

    def _retained_at(self, now_s: int) -> int:
        """The time retention is judged at: ``now_s``, but never before the wall clock (see ``__init__``)."""
        return max(int(now_s), int(self._clock()))

    def read_fence(self, name: str, partition: int) -> FenceState | None:
        with self._errors(f"read fence {name!r} partition {partition}"):
            key = self._fence_key(name, partition)
            offset, checkpoint = self._client.hmget(key, ["offset", "checkpoint"])
        if offset is None:
            return None
        return FenceState(int(offset), checkpoint)

    def read_state(self, name: str, partition: int) -> dict[str, bytes]:
        where = f"read state of fence {name!r} partition {partition}"
        with self._errors(where):
            items = self._client.hscan_iter(self._state_key(name, partition), count=_SCAN_COUNT)
            # HSCAN may return an entry twice; the dict keeps one.
            entries = {key.decode(): value for key, value in items}
            key, start = self._state_log_key(name, partition), 0
            while True:
                records = self._client.lrange(key, start, start + _LOG_CHUNK - 1)
                for i, record in enumerate(records):
                    try:
                        apply_log(entries, record)
                    except StoreError as exc:
                        raise StoreError(f"{where}: record {start + i} of {key}: {exc}") from None
                if len(records) < _LOG_CHUNK:
                    return entries
                start += len(records)

    def read_slots(self, comparison_id: str, slots: Iterable[Slot], now_s: int) -> dict[Slot, dict[str, int]]:
        wanted = list(slots)
        arrays, _ = self._fetch([(comparison_id, wanted)])[0]
        out: dict[Slot, dict[str, int]] = {}
        at_s = self._retained_at(now_s)
        for slot, values in zip(wanted, arrays, strict=True):
            # The server's clock expires keys; now_s additionally hides what is expired at now_s.
            if values is not None and at_s < self.retention.expires_at_s(slot):
                fields = self._named(comparison_id, values)
                if fields:
                    out[slot] = fields
        return out

    def read(self, comparison_id: str, start_s: int, end_s: int, now_s: int) -> WindowRead:
        return self.read_many(comparison_id, [(start_s, end_s)], now_s)[0]

    def read_many(self, comparison_id: str, ranges: Sequence[tuple[int, int]], now_s: int) -> list[WindowRead]:
        return self.read_batch([(comparison_id, tuple(ranges), now_s)])[0]

    def read_batch(self, requests: Sequence[ReadRequest]) -> list[list[WindowRead]]:
        # Each request's slots and meta are fetched in one MULTI (the apply script never lands between them);
        # several requests share a MULTI up to _BATCH_COMMANDS commands, so a round of 1,000 comparisons
        # costs a few round trips instead of 1,000.
        planned = []
        for cid, ranges, now_s in requests:
            at_s = self._retained_at(now_s)
            windows = [plan(start_s, end_s, at_s, self.retention) for start_s, end_s in ranges]
            planned.append((cid, windows, list(dict.fromkeys(slot for window in windows for slot in window.slots))))
        fetched: list[tuple[list[npt.NDArray[np.int64] | None], ComparisonMeta | None]] = []
        chunk: list[tuple[str, list[Slot]]] = []
        size = 0
        for cid, _, slots in planned:
            if chunk and size + len(slots) + 1 > _BATCH_COMMANDS:
                fetched += self._fetch(chunk)
                chunk, size = [], 0
            chunk.append((cid, slots))
            size += len(slots) + 1
        if chunk:
            fetched += self._fetch(chunk)
        out = []
        for (cid, windows, slots), (arrays, meta) in zip(planned, fetched, strict=True):
            by_slot = dict(zip(slots, arrays, strict=True))
            reads = []
            for window in windows:
                total = _sum([a for slot in window.slots if (a := by_slot[slot]) is not None])
                reads.append(WindowRead(self._named(cid, total), window, meta))
            out.append(reads)
        return out

    def meta(self, comparison_id: str) -> ComparisonMeta | None:
        with self._errors(f"read meta of comparison {comparison_id!r}"):
            raw: dict[bytes, bytes] = self._client.hgetall(self._meta_key(comparison_id))
        return _meta(raw)

    def metas(self, comparison_ids: Sequence[str]) -> list[ComparisonMeta | None]:
        if not comparison_ids:
            return []
        with self._errors(f"read meta of {len(comparison_ids)} comparisons"):
            pipe = self._client.pipeline(transaction=False)
            for cid in comparison_ids:
                pipe.hgetall(self._meta_key(cid))
            raws: list[dict[bytes, bytes]] = pipe.execute()
        return [_meta(raw) for raw in raws]

    def comparisons(self, model: str | None = None) -> list[str]:
        with self._errors("list comparisons" if model is None else f"list comparisons of model {model!r}"):
            if model is not None:
                keys = [f"{self._prefix}:model:{model}"]
            else:
                models = self._client.smembers(f"{self._prefix}:models")
                keys = [f"{self._prefix}:model:{m.decode()}" for m in models]
            pipe = self._client.pipeline(transaction=False)  # one round trip, not one per model
            for key in keys:
                pipe.smembers(key)
            members: set[bytes] = set().union(*pipe.execute())
        return sorted(m.decode() for m in members)

    def _fetch(
        self, requests: list[tuple[str, list[Slot]]]
    ) -> list[tuple[list[npt.NDArray[np.int64] | None], ComparisonMeta | None]]:
        """For each (comparison, slots): its slot arrays and meta, all from ONE MULTI."""
        what = f"read comparison {requests[0][0]!r}"
        if len(requests) > 1:
            what += f" (and {len(requests) - 1} more)"
        with self._errors(what):
            pipe = self._client.pipeline(transaction=True)
            for comparison_id, slots in requests:
                for slot in slots:
                    pipe.get(self.slot_key(comparison_id, slot))
                pipe.hgetall(self._meta_key(comparison_id))
            results: list[Any] = pipe.execute()
        out = []
        at = 0
        for comparison_id, slots in requests:
            raws, meta_raw = results[at : at + len(slots)], results[at + len(slots)]
            at += len(slots) + 1
            arrays: list[npt.NDArray[np.int64] | None] = []
            for slot, raw in zip(slots, raws, strict=True):
                if raw is None:
                    arrays.append(None)
                elif len(raw) % 8:
                    raise StoreError(
                        f"redis {self._server}: key {self.slot_key(comparison_id, slot)!r} holds {len(raw)} bytes, "
                        "not whole int64 fields: written by something else? use a prefix of your own"
                    )
                else:
                    arrays.append(np.frombuffer(raw, dtype=_I64).astype(np.int64))
            out.append((arrays, _meta(meta_raw)))
        return out

    def _named(self, comparison_id: str, values: npt.NDArray[Any]) -> dict[str, int]:
        """The non-zero entries of ``values`` by field name."""
        nonzero = np.flatnonzero(values)
        if not nonzero.size:
            return {}
        names = self._field_names(comparison_id, int(nonzero[-1]) + 1)
        return {names[i]: int(v) for i, v in zip(nonzero.tolist(), values[nonzero].tolist(), strict=True)}

    def _field_names(self, comparison_id: str, needed: int) -> list[str]:
        """At least ``needed`` field names of the comparison, by index (re-read when the cache is short)."""
        with self._names_lock:
            names = self._names.get(comparison_id, [])
        if needed <= len(names):
            return names
        with self._errors(f"read field registry of comparison {comparison_id!r}"):
            raw = self._client.hgetall(self._registry_key(comparison_id))
        fresh = [""] * len(raw)
        for name, index in raw.items():
            fresh[int(index)] = name.decode()
        if needed > len(fresh):
            raise StoreError(
                f"redis {self._server}: comparison {comparison_id!r} has a value at field index {needed - 1} "
                f"but its registry {self._registry_key(comparison_id)!r} names {len(fresh)}: removed by hand?"
            )
        with self._names_lock:
            self._names[comparison_id] = fresh
        return fresh

    def _fence_key(self, name: str, partition: int) -> str:
        return f"{self._prefix}:fence:{name}:{partition}"

    def _state_key(self, name: str, partition: int) -> str:
        return f"{self._prefix}:state:{name}:{partition}"

    def _state_log_key(self, name: str, partition: int) -> str:
        return f"{self._prefix}:slog:{name}:{partition}"

    def _meta_key(self, comparison_id: str) -> str:
        return f"{self._prefix}:meta:{{{comparison_id}}}"

    def _registry_key(self, comparison_id: str) -> str:
        return f"{self._prefix}:fields:{{{comparison_id}}}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            retry = " (safe to retry: the fence makes apply idempotent)" if what.startswith("apply") else ""
            raise InfrastructureError(f"redis {self._server}: cannot {what}: {exc}; is the server up?{retry}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis {self._server}: cannot {what}: {exc}") from exc


def _meta(raw: dict[bytes, bytes]) -> ComparisonMeta | None:
    if raw.get(b"model") is None:
        return None
    return ComparisonMeta(raw[b"model"].decode(), int(raw[b"first_ms"]), int(raw[b"last_ms"]))


def _sum(arrays: list[npt.NDArray[np.int64]]) -> npt.NDArray[Any]:
    """Exact elementwise sum of int64 arrays of different lengths (missing tail = 0)."""
    size = max((a.size for a in arrays), default=0)
    # float() of the max absolute value: np.abs(INT64_MIN) itself would overflow.
    bound = sum(max(abs(float(a.max())), abs(float(a.min()))) for a in arrays if a.size)
    total: npt.NDArray[Any] = np.zeros(size, dtype=np.int64 if bound < _SAFE_SUM else object)
    for a in arrays:
        total[: a.size] += a if total.dtype == np.int64 else a.astype(object)
    return total


def _describe(client: redis.Redis[bytes]) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
