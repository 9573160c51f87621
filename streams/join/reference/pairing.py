"""Pair production scores with shadow and canary scores of the same request, in event time.

Input: validated score events (:class:`~streams.decode.decoder.ScoreLike`) of ONE Kafka partition, in arrival order
(both sides of a request share a partition because they are keyed by ``request_id``). Output: per
:class:`~governance.contract.comparison.ComparisonKey`, columnar numpy arrays ready for vectorised folding.

Rules (all in event time; no clock):

* The watermark ``W`` is the largest event ``ts`` seen so far (raised further by the ``now`` passed to
  :meth:`Pairer.add_batch`, applied at the END of the batch). An event is *remembered* while
  ``ts >= W - join_window_s``; when ``W`` passes that point it expires.
* An event arriving with ``ts < W - join_window_s`` is *late*: its window has closed, it is counted as an
  orphan (and as late) without being paired or checked for duplicates.
* A candidate (shadow or canary) pairs with the first remembered production event of the same
  ``request_id`` and model, and is then done. A production event pairs with every remembered, unpaired
  candidate, and stays open until it expires, so a late canary still pairs. One request with production,
  shadow and canary gives two pairs. A pair is emitted as soon as both sides are there; its ``ts`` is the
  later of the two.
* An event whose (request_id, model, role, version) is already remembered (pending, open or paired) is a
  duplicate: counted once per copy, never paired again.
* An event that expires without ever pairing is an orphan of its side (model, version, role).
* ``max_pending`` bounds everything remembered: half-pairs waiting, productions open for a late canary
  and the tombstones of paired candidates (kept for duplicate detection). Past it the oldest (smallest
  ``ts``, then arrival) is evicted: an unpaired one is counted as orphan AND as evicted; a paired one is
  only counted as ``forgotten``.

Guarantees: every event is exactly one of: a side of one or more pairs (only a production can be in
several), a duplicate, or an orphan (late and evicted are subsets of orphans). The outcome does not depend
on how the stream is cut into batches, provided ``now`` is the partition's max event ts. Orphans are
reported when they expire, with their event ts.

State. :meth:`Pairer.state_delta` returns what changed since the previous call: one entry per remembered
event (key: its arrival sequence number in hex; value: a compact orjson array) and a meta entry
(watermark, sequence counter). Its cost is proportional to the events of the batch, never to the state.
Accumulating every delta (:func:`streams.join.state.accumulate`) and :meth:`Pairer.restore_entries`
gives a pairer whose further output AND further deltas equal those of one that never stopped. An event
that arrives and expires between two deltas never appears in one. Between two deltas the tracking holds
at most one reference per remembered event plus the keys of events dropped since (never pickle).

Memory (tracemalloc over 100k pending events decoded from JSON, 36-character request ids, CPython 3.11;
the event's own strings and floats included, model and version names interned): about 480 bytes per
unpaired event without features, about 390 per event once paired (paired candidates keep only their
identity), plus the feature dict (about 470 bytes more for 8 numeric features). The default bound of 200k
events therefore costs about 100 MB without features. A state entry (36-character request id) takes
about 125 bytes without features, 80 for a paired candidate's tombstone, plus the features as JSON (8
numeric features: about 190 more).
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from governance.contract.comparison import ComparisonKey, Role
from governance.errors import ConfigError
from streams.decode.decoder import ScoreLike
from streams.join.state import (
    META_KEY,
    CheckpointError,
    Interner,
    dump_meta,
    epoch_s,
    is_int,
    is_num,
    load_entry,
    load_meta,
    parse_seq,
    positive,
)
from streams.state.statelog import StateDelta

__all__ = ["STATE_FORMAT", "Features", "PairColumns", "Pairer", "PairingResult", "Side"]

#: (kind, version) of the state entries; the version travels in the meta entry.
STATE_FORMAT = ("shadowgate.pairer", 2)

Features = dict[str, float | int | str | None] | None
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# _Half.state
_PENDING = 0  # waiting for a partner
_OPEN = 1  # a production that paired, kept open for a late second candidate
_DONE = 2  # a candidate that paired: a tombstone kept only to recognise duplicates

_ROLES: dict[str, Role] = {"production": "production", "shadow": "shadow", "canary": "canary"}
_ROLE_CODES: tuple[Role, ...] = ("production", "shadow", "canary")  # a role is stored as its index
_ROLE_CODE = {role: i for i, role in enumerate(_ROLE_CODES)}
_CANDIDATES: dict[str, Literal["shadow", "canary"]] = {"shadow": "shadow", "canary": "canary"}


class Side(NamedTuple):
    """One side of comparisons: orphans, duplicates and evictions are counted per side."""

    model: str
    version: str
    role: Role


@dataclass(frozen=True)
class PairColumns:
    """The pairs of one comparison in one batch, in emission order, as parallel columns."""

    prod_score: FloatArray
    cand_score: FloatArray
    prod_latency_ms: FloatArray
    cand_latency_ms: FloatArray
    prod_error: BoolArray
    cand_error: BoolArray
    ts: FloatArray  # epoch seconds, the later of the two sides' event ts
    request_ids: list[str]
    prod_features: list[Features]
    cand_features: list[Features]

    def __len__(self) -> int:
        return len(self.request_ids)

    def features_by_name(self, side: Literal["prod", "cand"]) -> dict[str, list[float | int | str | None]]:
        """One side's feature values gathered per feature name (pairs without the feature add nothing)."""
        out: defaultdict[str, list[float | int | str | None]] = defaultdict(list)
        for features in self.prod_features if side == "prod" else self.cand_features:
            for name, value in (features or {}).items():
                out[name].append(value)
        return dict(out)


@dataclass(frozen=True)
class PairingResult:
    """What one call of :meth:`Pairer.add_batch` produced. Every array holds event ts (epoch s).

    ``orphans`` includes the ``late`` and ``evicted`` events; ``forgotten`` counts paired events evicted
    early (a later duplicate of them can no longer be recognised). Within one comparison or side, entries
    are in the order the pairer produced them.
    """

    pairs: dict[ComparisonKey, PairColumns]
    orphans: dict[Side, FloatArray]
    orphan_errors: dict[Side, BoolArray]  # aligned with ``orphans``: did that orphan report an error
    evicted: dict[Side, FloatArray]
    late: dict[Side, FloatArray]
    duplicates: dict[Side, FloatArray]
    forgotten: int
    watermark_s: float | None

    @property
    def pair_count(self) -> int:
        return sum(len(c) for c in self.pairs.values())


class _Half:
    """One remembered event; slots instead of the pydantic model keep the buffer small."""

    __slots__ = (
        "error",
        "features",
        "latency_ms",
        "model",
        "request_id",
        "role",
        "score",
        "seq",
        "state",
        "ts",
        "version",
    )

    def __init__(
        self,
        request_id: str,
        model: str,
        version: str,
        role: Role,
        ts: float,
        seq: int,
        state: int,
        score: float,
        latency_ms: float,
        error: bool,
        features: Features,
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.version = version
        self.role = role
        self.ts = ts
        self.seq = seq
        self.state = state
        self.score = score
        self.latency_ms = latency_ms
        self.error = error
        self.features = features

    def retire(self) -> None:
        """Become a tombstone: only the identity is needed from now on."""
        self.state = _DONE
        self.score = 0.0
        self.latency_ms = 0.0
        self.features = None


_SideKey = tuple[str, str, Role]
_Row = tuple[str, float, float, float, float, bool, bool, float, Features, Features]


class _Out:
    """Per-call accumulator, turned into numpy columns once at the end of the call."""

    __slots__ = ("duplicates", "evicted", "forgotten", "late", "orphan_errors", "orphans", "rows")

    def __init__(self) -> None:
        self.rows: defaultdict[tuple[str, str, str, str], list[_Row]] = defaultdict(list)
        self.orphans: defaultdict[_SideKey, list[float]] = defaultdict(list)
        self.orphan_errors: defaultdict[_SideKey, list[bool]] = defaultdict(list)
        self.evicted: defaultdict[_SideKey, list[float]] = defaultdict(list)
        self.late: defaultdict[_SideKey, list[float]] = defaultdict(list)
        self.duplicates: defaultdict[_SideKey, list[float]] = defaultdict(list)
        self.forgotten = 0

    def orphan(self, side: _SideKey, ts: float, error: bool) -> None:
        self.orphans[side].append(ts)
        self.orphan_errors[side].append(error)

    def pair(self, prod: _Half, cand: _Half) -> None:
        self.rows[(prod.model, prod.version, cand.version, cand.role)].append(
            (
                prod.request_id,
                prod.score,
                cand.score,
                prod.latency_ms,
                cand.latency_ms,
                prod.error,
                cand.error,
                prod.ts if prod.ts > cand.ts else cand.ts,
                prod.features,
                cand.features,
            )
        )


class Pairer:
    """Event-time join of production with shadow/canary scores for one partition (see module doc).

    Not thread-safe; one instance per partition. Idempotency comes from :meth:`state_delta`: store each
    delta atomically with the partition offset it corresponds to, and restore the accumulated entries
    before replaying from there.
    """

    def __init__(self, join_window_s: float = 60.0, max_pending: int = 200_000) -> None:
        self._window_s = positive("join_window_s", join_window_s)
        if max_pending < 1:
            raise ConfigError(f"max_pending={max_pending!r}: must be an integer >= 1")
        self._max = max_pending
        self._intern = Interner()
        self._clear()

    def _clear(self) -> None:
        self._w = -math.inf
        self._seq = 0
        self._groups: dict[str, list[_Half]] = {}
        # (ts, seq, half): seq is unique, so tuple comparison never reaches the half.
        self._heap: list[tuple[float, int, _Half]] = []
        # Change tracking since the last delta: events with seq >= _synced_seq were never in a delta, so
        # dropping one needs no delete.
        self._dirty: dict[int, _Half] = {}
        self._gone: list[int] = []
        self._synced_seq = 0
        self._synced_meta: tuple[float, int] = (-math.inf, 0)

    @property
    def join_window_s(self) -> float:
        return self._window_s

    @property
    def pending(self) -> int:
        """Events remembered now (waiting, open productions and paired tombstones)."""
        return len(self._heap)

    @property
    def watermark_s(self) -> float | None:
        return None if self._w == -math.inf else self._w

    def add_batch(self, events: Sequence[ScoreLike], now: datetime) -> PairingResult:
        """Process ``events`` in order, then raise the watermark to ``now`` (the partition's max ts).

        An empty batch with a later ``now`` just expires what the new watermark closes.
        """
        now_s = epoch_s(now)
        out = _Out()
        for event in events:
            self._add(event, out)
        if now_s > self._w:
            self._w = now_s
            self._expire(out)
        while len(self._heap) > self._max:  # only after restoring into a smaller bound
            self._evict(out)
        return self._result(out)

    def _add(self, event: ScoreLike, out: _Out) -> None:
        ts = event.ts.timestamp()
        if ts > self._w:
            self._w = ts
            self._expire(out)
        model = self._intern[event.model]
        version = self._intern[event.version]
        role = _ROLES[event.role]
        if ts < self._w - self._window_s:
            out.late[(model, version, role)].append(ts)
            out.orphan((model, version, role), ts, event.error is not None)
            return
        rid = event.request_id
        half = _Half(
            rid, model, version, role, ts, self._seq, _PENDING,
            event.score, event.latency_ms, event.error is not None, event.features,
        )  # fmt: skip
        group = self._groups.get(rid)
        if group is None:
            self._groups[rid] = [half]
        else:
            for other in group:
                if other.model == model and other.role == role and other.version == version:
                    out.duplicates[(model, version, role)].append(ts)
                    return
            if role == "production":
                for other in group:
                    if other.state == _PENDING and other.model == model and other.role != "production":
                        out.pair(half, other)
                        other.retire()
                        self._dirty[other.seq] = other
                        half.state = _OPEN
            else:
                for other in group:
                    if other.role == "production" and other.model == model:
                        out.pair(other, half)
                        if other.state != _OPEN:
                            other.state = _OPEN
                            self._dirty[other.seq] = other
                        half.retire()
                        break
            group.append(half)
        heapq.heappush(self._heap, (ts, self._seq, half))
        self._dirty[self._seq] = half
        self._seq += 1
        if len(self._heap) > self._max:
            self._evict(out)

    def _expire(self, out: _Out) -> None:
        cutoff = self._w - self._window_s
        heap = self._heap
        while heap and heap[0][0] < cutoff:
            self._drop(heapq.heappop(heap)[2], out, evicted=False)

    def _evict(self, out: _Out) -> None:
        self._drop(heapq.heappop(self._heap)[2], out, evicted=True)

    def _drop(self, half: _Half, out: _Out, evicted: bool) -> None:
        group = self._groups[half.request_id]
        if len(group) == 1:
            del self._groups[half.request_id]
        else:
            group.remove(half)
        self._dirty.pop(half.seq, None)
        if half.seq < self._synced_seq:
            self._gone.append(half.seq)
        if half.state == _PENDING:
            side = (half.model, half.version, half.role)
            out.orphan(side, half.ts, half.error)
            if evicted:
                out.evicted[side].append(half.ts)
        elif evicted:
            out.forgotten += 1

    def _result(self, out: _Out) -> PairingResult:
        return PairingResult(
            pairs={ComparisonKey(m, p, c, _CANDIDATES[r]): _columns(rows) for (m, p, c, r), rows in out.rows.items()},
            orphans=_sides(out.orphans),
            orphan_errors={Side(*k): np.array(v, dtype=np.bool_) for k, v in out.orphan_errors.items()},
            evicted=_sides(out.evicted),
            late=_sides(out.late),
            duplicates=_sides(out.duplicates),
            forgotten=out.forgotten,
            watermark_s=self.watermark_s,
        )

    def state_delta(self) -> StateDelta:
        """The entries changed since the previous call (or restore); see the module doc.

        Store it with the offsets it covers; the next call starts from an empty change set.
        """
        upserts = {f"{seq:x}": self._encode(half) for seq, half in self._dirty.items()}
        meta = (self._w, self._seq)
        if meta != self._synced_meta:
            upserts[META_KEY] = dump_meta(STATE_FORMAT[1], *meta)
        delta = StateDelta(upserts, frozenset([f"{seq:x}" for seq in self._gone]))
        self._dirty = {}
        self._gone = []
        self._synced_seq = self._seq
        self._synced_meta = meta
        return delta

    def entries(self) -> dict[str, bytes]:
        """The whole state as entries: what accumulating every delta so far gives (for tests, tools)."""
        out = {f"{half.seq:x}": self._encode(half) for _, _, half in self._heap}
        if (self._w, self._seq) != (-math.inf, 0):
            out[META_KEY] = dump_meta(STATE_FORMAT[1], self._w, self._seq)
        return out

    def restore_entries(self, entries: Mapping[str, bytes]) -> None:
        """Replace the whole state by accumulated entries; on any error the current state is kept.

        The join window and bound of THIS pairer apply from now on: a smaller bound evicts at the next
        call, a different window applies at the next expiry. Raises CheckpointError naming the bad entry.
        """
        kind, version = STATE_FORMAT
        meta = load_meta(kind, version, entries)
        if meta is None:
            self._clear()
            return
        watermark, next_seq = meta
        halves = []
        for key, raw in entries.items():
            if key != META_KEY:
                seq = parse_seq(kind, key, key)
                if seq >= next_seq:
                    raise CheckpointError(f"{kind} state entry {key!r}: seq {seq} is not below next_seq {next_seq}")
                halves.append(_parse_half(key, seq, load_entry(kind, key, raw), self._intern))
        halves.sort(key=lambda h: h.seq)
        self._clear()
        self._w, self._seq = watermark, next_seq
        for half in halves:  # in seq order, so every group keeps its arrival order
            self._groups.setdefault(half.request_id, []).append(half)
        self._heap = [(h.ts, h.seq, h) for h in halves]
        heapq.heapify(self._heap)
        self._synced_seq = next_seq
        self._synced_meta = meta

    @staticmethod
    def _encode(h: _Half) -> bytes:
        if h.state == _DONE:
            return orjson.dumps([h.request_id, h.model, h.version, _ROLE_CODE[h.role], h.ts, _DONE])
        row = [h.request_id, h.model, h.version, _ROLE_CODE[h.role], h.ts, h.state, h.score, h.latency_ms,
               int(h.error), h.features]  # fmt: skip
        try:
            return orjson.dumps(row)
        except orjson.JSONEncodeError:
            # Only an integer feature beyond 64 bits (the wire accepts any int) fails: keep the nearest
            # float in memory too, so the restored and the running pairer stay identical.
            h.features = {k: _fit(v) for k, v in (h.features or {}).items()}
            row[-1] = h.features
            return orjson.dumps(row)


def _fit(value: float | int | str | None) -> float | int | str | None:
    """An integer orjson can encode (64 bits): a larger one becomes the nearest float."""
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    return value


def _parse_half(key: str, seq: int, entry: list[Any], intern: Interner) -> _Half:
    where = f"{STATE_FORMAT[0]} state entry {key!r}"
    if len(entry) == 6 and entry[5] == _DONE:
        entry = [*entry, 0.0, 0.0, 0, None]
    if len(entry) != 10:
        raise CheckpointError(f"{where}: expected 10 fields (6 for a tombstone), got {entry!r:.80}")
    rid, model, version, role, ts, state, score, latency_ms, error, features = entry
    if not all(isinstance(v, str) for v in (rid, model, version)) or role not in (0, 1, 2) or not is_int(role):
        raise CheckpointError(f"{where}: request_id/model/version must be strings and role 0, 1 or 2")
    if not all(is_num(v) for v in (ts, score, latency_ms)):
        raise CheckpointError(f"{where}: ts, score and latency_ms must be numbers")
    if state not in (_PENDING, _OPEN, _DONE) or not is_int(state) or error not in (0, 1) or not is_int(error):
        raise CheckpointError(f"{where}: state must be 0-2 and error 0 or 1")
    if features is not None and not isinstance(features, dict):
        raise CheckpointError(f"{where}: features must be an object or null")
    return _Half(
        rid, intern[model], intern[version], _ROLE_CODES[role], float(ts), seq, state,
        float(score), float(latency_ms), bool(error), features,
    )  # fmt: skip


def _sides(acc: defaultdict[_SideKey, list[float]]) -> dict[Side, FloatArray]:
    return {Side(*key): np.array(values, dtype=np.float64) for key, values in acc.items()}


def _columns(rows: list[_Row]) -> PairColumns:
    rid, ps, cs, pl, cl, pe, ce, ts, pf, cf = zip(*rows, strict=True)
    return PairColumns(
        prod_score=np.array(ps, dtype=np.float64),
        cand_score=np.array(cs, dtype=np.float64),
        prod_latency_ms=np.array(pl, dtype=np.float64),
        cand_latency_ms=np.array(cl, dtype=np.float64),
        prod_error=np.array(pe, dtype=np.bool_),
        cand_error=np.array(ce, dtype=np.bool_),
        ts=np.array(ts, dtype=np.float64),
        request_ids=list(rid),
        prod_features=list(pf),
        cand_features=list(cf),
    )
