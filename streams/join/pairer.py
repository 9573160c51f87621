"""The native pairer (``streams._native.NativePairer``, ``native/core/src/pairer``) behind :class:`Pairer`'s interface.

:class:`NativePairer` gives the same :class:`~streams.join.reference.pairing.PairingResult`, the same state deltas and
the same entries (byte for byte) as the reference :class:`streams.join.reference.pairing.Pairer`, so either can
take over a partition the other checkpointed. The processor's hot path calls :meth:`NativePairer.add_blocks` with
decoded :class:`~streams._native.ScoreBlock` objects and hands the raw :class:`~streams._native.PairingOut`
(its ``pairs`` go straight to the native label joiner); :func:`to_result` turns one into a
``PairingResult`` when Python needs the columns.

Restore: the native core parses the entries it is sure of and hands back the keys of the others; this
wrapper reads the meta entry and validates those entries with the reference's own functions
(``streams.join.state``, ``streams.join.reference.pairing``), so what is accepted and every error text are the
reference's, and hands the parsed values back to the core. Entries a pairer wrote never need the reference.

Known difference (the core holds integer features as 64-bit signed): an integer feature in [2**63, 2**64)
becomes the nearest float, where the Python pairer keeps it as an int; and entries whose feature values
are not numbers, strings or null (no pairer writes them) are refused on restore.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

import numpy as np

from governance.contract.comparison import ComparisonKey, Role
from governance.errors import ConfigError
from streams._native import NativePairer as _Engine
from streams._native import PairingOut, ScoreBlock
from streams.decode.decoder import ScoreLike
from streams.join.reference.pairing import (
    _ROLE_CODES,
    STATE_FORMAT,
    FloatArray,
    PairColumns,
    PairingResult,
    Side,
    _parse_half,
)
from streams.join.state import CheckpointError, Interner, epoch_s, load_entry, load_meta, parse_seq, positive
from streams.state.statelog import StateDelta

__all__ = ["NativePairer", "to_result"]

_CANDIDATE_ROLES = ("shadow", "canary")


class NativePairer:
    """:class:`streams.join.reference.pairing.Pairer` on the native engine (see the module doc). One per partition."""

    __slots__ = ("_engine",)

    def __init__(self, join_window_s: float = 60.0, max_pending: int = 200_000) -> None:
        # The reference's checks and messages; the native constructor checks again (ValueError).
        join_window_s = positive("join_window_s", join_window_s)
        if max_pending < 1:
            raise ConfigError(f"max_pending={max_pending!r}: must be an integer >= 1")
        try:
            self._engine = _Engine(join_window_s, min(max_pending, sys.maxsize))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def join_window_s(self) -> float:
        return self._engine.join_window_s

    @property
    def pending(self) -> int:
        """Events remembered now (waiting, open productions and paired tombstones)."""
        return self._engine.pending

    @property
    def watermark_s(self) -> float | None:
        return self._engine.watermark_s

    def add_batch(self, events: Sequence[ScoreLike], now: datetime) -> PairingResult:
        """``Pairer.add_batch``: process ``events`` in order, then raise the watermark to ``now``."""
        now_s = epoch_s(now)
        blocks = [ScoreBlock.from_events(events)] if events else []
        return to_result(self._engine.add_batch(blocks, now_s))

    def add_blocks(self, blocks: list[ScoreBlock], now_s: float) -> PairingOut:
        """The hot path: every row of ``blocks`` in order, then the watermark raised to ``now_s``."""
        return self._engine.add_batch(blocks, now_s)

    def state_delta(self) -> StateDelta:
        """The entries changed since the previous call (or restore), as ``Pairer.state_delta``."""
        upserts, deletes = self._engine.state_delta()
        return StateDelta(upserts, frozenset(deletes))

    def state_delta_blob(self, prefix: str) -> bytes:
        """The same delta as one state log record, keys under ``prefix`` (:class:`streams.join.state.StateLog`)."""
        return self._engine.state_delta_blob(prefix)

    def entries_blob(self, prefix: str) -> bytes:
        """The whole state as one state log record of upserts, keys under ``prefix`` (for a compaction)."""
        return self._engine.entries_blob(prefix)

    def entries(self) -> dict[str, bytes]:
        """The whole state as entries (what accumulating every delta so far gives)."""
        return self._engine.entries()

    def restore_entries(self, entries: Mapping[str, bytes]) -> None:
        """Replace the whole state by accumulated entries; CheckpointError (current state kept) if bad."""
        kind, version = STATE_FORMAT
        meta = load_meta(kind, version, entries)
        if meta is None:
            self._restore({}, -math.inf, 0, {})
            return
        watermark, next_seq = meta
        if next_seq >= 2**64:  # orjson reads no larger int; the core counts in 64 bits
            raise CheckpointError(f"{kind} state meta: next_seq {next_seq} exceeds 64 bits")
        raw = entries if isinstance(entries, dict) else dict(entries)
        deferred = self._restore(raw, watermark, next_seq, {})
        if deferred:
            intern = Interner()
            resolved = {key: _reference_half(key, raw[key], next_seq, intern) for key in deferred}
            if self._restore(raw, watermark, next_seq, resolved):
                raise RuntimeError(f"the native pairer refused entries the reference parsed: {deferred!r:.200}")

    def _restore(
        self, entries: dict[str, bytes], watermark: float, next_seq: int, resolved: dict[str, tuple[Any, ...]]
    ) -> list[str]:
        try:
            return self._engine.restore_entries(entries, watermark, next_seq, resolved)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None


def _reference_half(key: str, raw: bytes, next_seq: int, intern: Interner) -> tuple[Any, ...]:
    """One entry the native core deferred, validated by the reference (the body of ``Pairer.restore_entries``'
    loop: same acceptance, same CheckpointError texts), as the tuple ``NativePairer.restore_entries`` takes."""
    kind = STATE_FORMAT[0]
    seq = parse_seq(kind, key, key)
    if seq >= next_seq:
        raise CheckpointError(f"{kind} state entry {key!r}: seq {seq} is not below next_seq {next_seq}")
    half = _parse_half(key, seq, load_entry(kind, key, raw), intern)
    features = half.features
    # The reference keeps any JSON value; the core holds numbers, strings and null (no pairer writes others).
    if features is not None and not all(
        value is None or (isinstance(value, int | float | str) and not isinstance(value, bool))
        for value in features.values()
    ):
        raise CheckpointError(
            f"{kind} state entry {key!r}: feature values must be numbers, strings or null (native pairer)"
        )
    return (
        seq, half.request_id, half.model, half.version, _ROLE_CODES.index(half.role), half.ts, half.state,
        half.score, half.latency_ms, half.error, features,
    )  # fmt: skip


def _f64(raw: bytes) -> FloatArray:
    return np.frombuffer(raw, dtype=np.float64)


def _sides(items: list[tuple[str, str, str, bytes]]) -> dict[Side, FloatArray]:
    return {Side(model, version, cast(Role, role)): _f64(ts) for model, version, role, ts in items}


def to_result(out: PairingOut) -> PairingResult:
    """The reference :class:`PairingResult` of a native call (columns share the native buffers)."""
    pairs = out.pairs
    columns: dict[ComparisonKey, PairColumns] = {}
    for i, (model, prod_version, cand_version, role) in enumerate(pairs.comparisons()):
        ps, cs, pl, cl, ts, pe, ce = pairs.columns(i)
        key = ComparisonKey(model, prod_version, cand_version, "shadow" if role == "shadow" else "canary")
        columns[key] = PairColumns(
            prod_score=_f64(ps),
            cand_score=_f64(cs),
            prod_latency_ms=_f64(pl),
            cand_latency_ms=_f64(cl),
            prod_error=np.frombuffer(pe, dtype=np.bool_),
            cand_error=np.frombuffer(ce, dtype=np.bool_),
            ts=_f64(ts),
            request_ids=pairs.request_ids(i),
            prod_features=pairs.features(i, "prod"),
            cand_features=pairs.features(i, "cand"),
        )
    orphans = out.orphans
    return PairingResult(
        pairs=columns,
        orphans=_sides(orphans),
        orphan_errors={
            Side(model, version, cast(Role, role)): np.frombuffer(errors, dtype=np.bool_)
            for (model, version, role, _), errors in zip(orphans, out.orphan_errors, strict=True)
        },
        evicted=_sides(out.evicted),
        late=_sides(out.late),
        duplicates=_sides(out.duplicates),
        forgotten=out.forgotten,
        watermark_s=out.watermark_s,
    )
