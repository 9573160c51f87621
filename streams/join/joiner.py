"""The label joiner on the native hot path: :class:`NativeLabelJoiner`, a drop-in for
:class:`streams.join.reference.labels.LabelJoiner` backed by ``streams._native.NativeJoiner``
(``native/core/src/joiner``).

``streams.join.reference.labels`` is the reference: same rules, same results (arrays, dict orders, counts) and
byte-identical state entries, so a Python and a native worker can take over each other's partitions
(checked by ``tests/test_labels.py``, run against both, and the differential ``tests/test_native_labels.py``).

The processor feeds the native joiner without Python objects per pair: :meth:`NativeLabelJoiner.add_native_pairs`
takes the native pairer's :class:`~streams._native.Pairs`, :meth:`NativeLabelJoiner.add_label_blocks` the
decoder's :class:`~streams._native.LabelBlock` s; both return a :class:`~streams._native.LabelOut`, which
:func:`to_label_result` turns into the reference's :class:`~streams.join.reference.labels.LabelResult` where needed.

Restore: the native core parses the entries it is sure of and hands back the keys of the others; this
wrapper reads the meta entry and validates those entries with the reference's own functions
(``streams.join.state``, ``streams.join.reference.labels``), so what is accepted and every error text are the
reference's, and hands the parsed values back to the core. Entries a joiner wrote never need the reference.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from governance.contract.comparison import ComparisonKey
from governance.errors import ConfigError
from streams._native import LabelBlock, LabelOut, NativeJoiner, Pairs
from streams.decode.decoder import LabelLike
from streams.join.reference.labels import STATE_FORMAT, LabeledColumns, LabelResult, _parse_label, _parse_wait
from streams.join.reference.pairing import PairColumns
from streams.join.state import CheckpointError, Interner, epoch_s, load_entry, load_meta, parse_seq, positive
from streams.state.statelog import StateDelta

__all__ = ["NativeLabelJoiner", "pairs_of", "to_label_result"]


def _key(model: str, prod: str, cand: str, role: str) -> ComparisonKey:
    return ComparisonKey(model, prod, cand, role)  # type: ignore[arg-type]  # the native side checked the role


def to_label_result(out: LabelOut) -> LabelResult:
    """The reference's :class:`LabelResult` of a native call (columns share the native buffers, writable)."""
    joined = {
        _key(m, p, c, r): LabeledColumns(
            prod_score=np.frombuffer(prod, dtype=np.float64),
            cand_score=np.frombuffer(cand, dtype=np.float64),
            label=np.frombuffer(label, dtype=np.int8),
            ts=np.frombuffer(ts, dtype=np.float64),
            request_ids=rids,
        )
        for m, p, c, r, prod, cand, label, ts, rids in out.joined
    }
    return LabelResult(
        joined=joined,
        unlabeled={_key(m, p, c, r): np.frombuffer(ts, dtype=np.float64) for m, p, c, r, ts in out.unlabeled},
        evicted={_key(m, p, c, r): np.frombuffer(ts, dtype=np.float64) for m, p, c, r, ts in out.evicted},
        unmatched_labels=out.unmatched_labels,
        evicted_labels=out.evicted_labels,
        duplicate_labels=out.duplicate_labels,
        conflicting_labels=out.conflicting_labels,
        watermark_s=out.watermark_s,
    )


def pairs_of(pairs: Mapping[ComparisonKey, PairColumns]) -> Pairs:
    """The native :class:`Pairs` of a Python pairer's output (``PairingResult.pairs``)."""
    return Pairs.from_columns(
        [
            (
                key.model,
                key.production_version,
                key.candidate_version,
                key.role,
                cols.request_ids,
                cols.prod_score.tolist(),
                cols.cand_score.tolist(),
                cols.prod_latency_ms.tolist(),
                cols.cand_latency_ms.tolist(),
                cols.prod_error.tolist(),
                cols.cand_error.tolist(),
                cols.ts.tolist(),
                cols.prod_features,
                cols.cand_features,
            )
            for key, cols in pairs.items()
        ]
    )


class NativeLabelJoiner:
    """:class:`streams.join.reference.labels.LabelJoiner` (same interface, results and state entries), in Rust."""

    def __init__(
        self, horizon_s: float = 3 * 86400.0, max_pending: int = 1_000_000, max_labels: int = 1_000_000
    ) -> None:
        # The reference's checks and messages; the native constructor checks again (ValueError).
        horizon_s = positive("horizon_s", horizon_s)
        for name, value in (("max_pending", max_pending), ("max_labels", max_labels)):
            if value < 1:
                raise ConfigError(f"{name}={value!r}: must be an integer >= 1")
        try:
            self._native = NativeJoiner(horizon_s, min(max_pending, sys.maxsize), min(max_labels, sys.maxsize))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def pending_pairs(self) -> int:
        return self._native.pending_pairs

    @property
    def pending_labels(self) -> int:
        return self._native.pending_labels

    @property
    def watermark_s(self) -> float | None:
        return self._native.watermark_s

    def add_pairs(self, pairs: Mapping[ComparisonKey, PairColumns], now: datetime) -> LabelResult:
        """:meth:`LabelJoiner.add_pairs`."""
        now_s = epoch_s(now)
        return to_label_result(self._native.add_pairs(pairs_of(pairs), now_s))

    def add_labels(self, labels: Sequence[LabelLike], now: datetime) -> LabelResult:
        """:meth:`LabelJoiner.add_labels`."""
        now_s = epoch_s(now)
        return to_label_result(self._native.add_labels([LabelBlock.from_events(labels)], now_s))

    def add_native_pairs(self, pairs: Pairs, now_s: float) -> LabelOut:
        """:meth:`add_pairs` of the native pairer's output, ``now`` in epoch seconds."""
        return self._native.add_pairs(pairs, now_s)

    def add_label_blocks(self, blocks: Sequence[LabelBlock], now_s: float) -> LabelOut:
        """:meth:`add_labels` of all labels of the blocks in order, as one call."""
        return self._native.add_labels(list(blocks), now_s)

    def state_delta(self) -> StateDelta:
        """:meth:`LabelJoiner.state_delta`."""
        upserts, deletes = self._native.state_delta()
        return StateDelta(upserts, frozenset(deletes))

    def state_delta_blob(self, prefix: str) -> bytes:
        """The same delta as one state log record, keys under ``prefix`` (:class:`streams.join.state.StateLog`)."""
        return self._native.state_delta_blob(prefix)

    def entries_blob(self, prefix: str) -> bytes:
        """The whole state as one state log record of upserts, keys under ``prefix`` (for a compaction)."""
        return self._native.entries_blob(prefix)

    def entries(self) -> dict[str, bytes]:
        """:meth:`LabelJoiner.entries`."""
        return self._native.entries()

    def restore_entries(self, entries: Mapping[str, bytes]) -> None:
        """:meth:`LabelJoiner.restore_entries`: CheckpointError naming the bad entry, current state kept."""
        kind, version = STATE_FORMAT
        meta = load_meta(kind, version, entries)
        if meta is None:
            self._restore({}, -math.inf, 0, {})
            return
        watermark, next_seq = meta
        if next_seq >= 2**64:  # orjson reads no larger int; the core counts in 64 bits
            raise CheckpointError(f"{kind} state meta: next_seq {next_seq} exceeds 64 bits")
        raw = dict(entries)
        deferred = self._restore(raw, watermark, next_seq, {})
        if deferred:
            intern = Interner()
            resolved = {name: _reference_entry(name, raw[name], next_seq, intern) for name in deferred}
            if self._restore(raw, watermark, next_seq, resolved):
                raise RuntimeError(f"the native joiner refused entries the reference parsed: {deferred!r:.200}")

    def _restore(
        self, entries: dict[str, bytes], watermark: float, next_seq: int, resolved: dict[str, tuple[Any, ...]]
    ) -> list[str]:
        try:
            return self._native.restore_entries(entries, watermark, next_seq, resolved)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None


def _reference_entry(name: str, raw: bytes, next_seq: int, intern: Interner) -> tuple[Any, ...]:
    """One entry the native core deferred, validated by the reference (the body of
    ``LabelJoiner.restore_entries``' loop: same acceptance, same CheckpointError texts), as the tuple
    ``NativeJoiner.restore_entries`` takes."""
    kind = STATE_FORMAT[0]
    seq = parse_seq(kind, name, name[1:])
    if seq >= next_seq:
        raise CheckpointError(f"{kind} state entry {name!r}: seq {seq} is not below next_seq {next_seq}")
    if name[0] == "p":
        rid, (ts, _, key, prod, cand) = _parse_wait(name, seq, load_entry(kind, name, raw))
        return seq, rid, key.model, key.production_version, key.candidate_version, key.role, prod, cand, ts
    if name[0] == "l":
        rid, (model, value, ts, _, matched) = _parse_label(name, seq, load_entry(kind, name, raw), intern)
        return seq, rid, model, value, ts, matched
    raise CheckpointError(f"{kind} state key {name!r}: must start with 'p' (pair) or 'l' (label)")
