"""Pair production scores with shadow and canary scores of the same request, in event time.

Input: validated :class:`~governance.wire.ScoreEvent` objects of ONE Kafka partition, in arrival order
(both sides of a request share a partition because they are keyed by ``request_id``). Output: per
:class:`~governance.snapshot.ComparisonKey`, columnar numpy arrays ready for vectorised folding.

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
reported when they expire, with their event ts. :meth:`Pairer.checkpoint` / :meth:`Pairer.restore`
carry the whole state (versioned orjson, never pickle): restore then continue == never stopped.

Memory (tracemalloc over 100k pending events decoded from JSON, 36-character request ids, CPython 3.11;
the event's own strings and floats included, model and version names interned): about 480 bytes per
unpaired event without features, about 390 per event once paired (paired candidates keep only their
identity), plus the feature dict (about 470 bytes more for 8 numeric features). The default bound of 200k
events therefore costs about 100 MB without features. A checkpoint takes about 120 bytes per remembered
event plus its features as JSON (100k events: 12 MB, written in about 60 ms).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from governance.errors import ConfigError
from governance.snapshot import ComparisonKey, Role
from governance.wire import ScoreEvent
from streams.joinstate import CheckpointError, Interner, dump_checkpoint, epoch_s, load_checkpoint, positive

__all__ = ["CHECKPOINT_FORMAT", "Features", "PairColumns", "Pairer", "PairingResult", "Side"]

CHECKPOINT_FORMAT = ("shadowgate.pairer", 1)

Features = dict[str, float | int | str | None] | None
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# _Half.state
_PENDING = 0  # waiting for a partner
_OPEN = 1  # a production that paired, kept open for a late second candidate
_DONE = 2  # a candidate that paired: a tombstone kept only to recognise duplicates

_ROLES: dict[str, Role] = {"production": "production", "shadow": "shadow", "canary": "canary"}
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

    Not thread-safe; one instance per partition. Idempotency comes from :meth:`checkpoint`: store it
    atomically with the partition offset it corresponds to, and restore it before replaying from there.
    """

    def __init__(self, join_window_s: float = 60.0, max_pending: int = 200_000) -> None:
        self._window_s = positive("join_window_s", join_window_s)
        if max_pending < 1:
            raise ConfigError(f"max_pending={max_pending!r}: must be an integer >= 1")
        self._max = max_pending
        self._intern = Interner()
        self._clear()

    def _clear(self) -> None:
        self._w = float("-inf")
        self._seq = 0
        self._groups: dict[str, list[_Half]] = {}
        # (ts, seq, half): seq is unique, so tuple comparison never reaches the half.
        self._heap: list[tuple[float, int, _Half]] = []

    @property
    def join_window_s(self) -> float:
        return self._window_s

    @property
    def pending(self) -> int:
        """Events remembered now (waiting, open productions and paired tombstones)."""
        return len(self._heap)

    @property
    def watermark_s(self) -> float | None:
        return None if self._w == float("-inf") else self._w

    def add_batch(self, events: Sequence[ScoreEvent], now: datetime) -> PairingResult:
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

    def _add(self, event: ScoreEvent, out: _Out) -> None:
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
                        half.state = _OPEN
            else:
                for other in group:
                    if other.role == "production" and other.model == model:
                        out.pair(other, half)
                        other.state = _OPEN
                        half.retire()
                        break
            group.append(half)
        heapq.heappush(self._heap, (ts, self._seq, half))
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

    def checkpoint(self) -> bytes:
        """Everything remembered, as versioned JSON (orjson); see :meth:`restore`."""
        entries = [
            [h.request_id, h.model, h.version, h.role, h.ts, h.seq, h.state, h.score, h.latency_ms,
             h.error, h.features]
            for _, _, h in sorted(self._heap, key=lambda item: item[1])
        ]  # fmt: skip
        kind, version = CHECKPOINT_FORMAT
        body = {"watermark_s": self.watermark_s, "next_seq": self._seq, "entries": entries}
        return dump_checkpoint(kind, version, body)

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a checkpoint's; on any error the current state is kept.

        The join window and bound of THIS pairer apply from now on: a smaller bound evicts at the next
        call, a different window applies at the next expiry.
        """
        kind, version = CHECKPOINT_FORMAT
        doc = load_checkpoint(data, kind, version)
        watermark, next_seq, raw = doc.get("watermark_s"), doc.get("next_seq"), doc.get("entries")
        if not (watermark is None or isinstance(watermark, float | int)) or isinstance(watermark, bool):
            raise CheckpointError(f"{kind} checkpoint: watermark_s={watermark!r} must be a number or null")
        if not isinstance(next_seq, int) or isinstance(next_seq, bool) or not isinstance(raw, list):
            raise CheckpointError(f"{kind} checkpoint: next_seq must be an integer and entries a list")
        halves = sorted((_parse_half(i, e, self._intern) for i, e in enumerate(raw)), key=lambda h: h.seq)
        seqs = [h.seq for h in halves]
        if len(set(seqs)) != len(seqs) or (seqs and seqs[-1] >= next_seq):
            raise CheckpointError(f"{kind} checkpoint: entry seqs must be unique and below next_seq={next_seq}")
        self._clear()
        self._w = float("-inf") if watermark is None else float(watermark)
        self._seq = next_seq
        for half in halves:  # in seq order, so every group keeps its arrival order
            self._groups.setdefault(half.request_id, []).append(half)
        self._heap = [(h.ts, h.seq, h) for h in halves]
        heapq.heapify(self._heap)


def _parse_half(index: int, entry: Any, intern: Interner) -> _Half:
    where = f"{CHECKPOINT_FORMAT[0]} checkpoint entry {index}"
    if not isinstance(entry, list) or len(entry) != 11:
        raise CheckpointError(f"{where}: expected a list of 11 fields, got {entry!r:.80}")
    rid, model, version, role, ts, seq, state, score, latency_ms, error, features = entry
    if not all(isinstance(v, str) for v in (rid, model, version)) or role not in _ROLES:
        raise CheckpointError(f"{where}: request_id/model/version must be strings and role known")
    if not all(isinstance(v, float | int) and not isinstance(v, bool) for v in (ts, score, latency_ms)):
        raise CheckpointError(f"{where}: ts, score and latency_ms must be numbers")
    if not isinstance(seq, int) or state not in (_PENDING, _OPEN, _DONE) or not isinstance(error, bool):
        raise CheckpointError(f"{where}: seq must be an integer, state 0-2 and error a boolean")
    if features is not None and not isinstance(features, dict):
        raise CheckpointError(f"{where}: features must be an object or null")
    return _Half(
        rid, intern[model], intern[version], _ROLES[role], float(ts), seq, state,
        float(score), float(latency_ms), error, features,
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
