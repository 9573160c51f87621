"""One partition's two joins (pairing, then the label join) as the processor drives them: native or reference.

:class:`NativeJoins` runs the native core (``streams._native``: Rust decoder, pairer and label joiner, whose
outputs stay native objects until the fold reads them as numpy columns); :class:`ReferenceJoins` runs the
Python reference (:mod:`streams.decode.decoder`'s msgspec/pydantic tiers,
:class:`~streams.join.reference.pairing.Pairer`,
:class:`~streams.join.reference.labels.LabelJoiner`). Both give the fold the same :class:`JoinOutput` and the store the
same state entries (the native joins are byte-identical to the reference, ``tests/test_native_*.py``), so a
partition checkpointed by one is taken over by the other, and the windows are identical
(``tests/test_joins.py``). :func:`select` picks one when a processor is built, from :data:`streams.native.AVAILABLE`.

Costs: the native path does a constant amount of Python work per comparison and side, none per event; the
reference path builds Python objects per event (that is why it is only the fallback).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from governance.contract.comparison import ComparisonKey
from governance.errors import ConfigError
from streams import native
from streams.decode.bounds import Outside, TimeWindow
from streams.decode.decoder import LabelLike, ScoreLike, decode_label_fast, decode_scores_fast
from streams.fold.features import FeatureColumn
from streams.join.reference.labels import LabelJoiner, LabelResult
from streams.join.reference.pairing import Features, Pairer, PairingResult, Side
from streams.join.state import section
from streams.state.statelog import StateDelta, encode_delta

if native.AVAILABLE:  # the native wrappers import the extension
    from streams.decode.decoder import decode_label_block, decode_scores_block
    from streams.join.joiner import NativeLabelJoiner
    from streams.join.pairer import NativePairer

if TYPE_CHECKING:
    from streams._native import LabelBlock, LabelOut, PairingOut, Pairs, ScoreBlock

__all__ = [
    "FeatureArrays",
    "JoinOutput",
    "LabeledBatch",
    "NativeJoins",
    "PairBatch",
    "PartitionJoins",
    "ReferenceJoins",
    "SideBatch",
    "feature_arrays",
    "select",
]

log = logging.getLogger(__name__)

PAIRER, JOINER = "p/", "l/"  # state key prefixes of the two joins
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
#: One side's features of one comparison: name -> (the rows that have it, uint32; its values as arrays).
FeatureArrays = dict[str, tuple[npt.NDArray[np.uint32], FeatureColumn]]


@dataclass(frozen=True)
class PairBatch:
    """The pairs of one comparison in one call, in emission order, as the fold reads them."""

    key: ComparisonKey
    prod_score: FloatArray
    cand_score: FloatArray
    prod_latency_ms: FloatArray
    cand_latency_ms: FloatArray
    prod_error: BoolArray
    cand_error: BoolArray
    ts: FloatArray  # the later of the two sides' event ts
    prod_features: FeatureArrays
    cand_features: FeatureArrays


@dataclass(frozen=True)
class LabeledBatch:
    """The labelled pairs of one comparison in one call (scores NaN where a side reported an error)."""

    key: ComparisonKey
    prod_score: FloatArray
    cand_score: FloatArray
    label: npt.NDArray[np.int8]
    ts: FloatArray  # the pair's event ts


@dataclass(frozen=True)
class SideBatch:
    """Orphans or duplicates of one side in one call: their event ts (and, for orphans, error flags)."""

    side: Side
    ts: FloatArray
    errors: BoolArray | None


@dataclass(frozen=True)
class JoinOutput:
    """What one batch of a partition gave: counts, times, pairs, labelled pairs and side events."""

    score_events: int
    label_events: int
    score_s: float | None  # the partition's score time: newest score ts or the pairer's watermark
    known_s: float | None  # the newest time known at all (labels included)
    pairs: list[PairBatch]
    labeled: list[LabeledBatch]
    orphans: list[SideBatch]
    duplicates: list[SideBatch]
    evicted: int
    watermark_s: float | None  # the pairer's, after the batch (None: it never saw a score)


S = TypeVar("S")  # one decoded score message
L = TypeVar("L")  # one decoded label message


class PartitionJoins(ABC, Generic[S, L]):
    """One partition's pairer and label joiner (not thread-safe: one per partition)."""

    pairer: Pairer | NativePairer
    joiner: LabelJoiner | NativeLabelJoiner

    @abstractmethod
    def __init__(self, join_window_s: float, max_pending: int, label_horizon_s: float, max_label_pending: int) -> None:
        """A pairer and a label joiner with these bounds (ConfigError names one out of range)."""

    @abstractmethod
    def decode_scores(self, raw: bytes) -> S:
        """One score message; EventValidationError as the contract gives it."""

    @abstractmethod
    def decode_label(self, raw: bytes) -> L:
        """One label message; EventValidationError as the contract gives it."""

    @abstractmethod
    def outside(self, window: TimeWindow, scores: list[S], labels: list[L]) -> tuple[Outside, Outside]:
        """The decoded score and label messages with an event outside ``window`` (see :mod:`streams.decode.bounds`)."""

    @abstractmethod
    def join(self, scores: list[S], labels: list[L]) -> JoinOutput:
        """Pair the score messages' events, then join pairs and labels, at the partition's known times."""

    @abstractmethod
    def delta_record(self) -> bytes:
        """The changes since the previous call as one state log record (``p/`` pairer, ``l/`` joiner keys)."""

    @abstractmethod
    def entries_record(self) -> bytes:
        """The whole state as one state log record of upserts (a compaction)."""

    def restore(self, entries: dict[str, bytes]) -> None:
        """Replace both joins' state by stored entries (CheckpointError naming a bad one)."""
        self.pairer.restore_entries(section(entries, PAIRER))
        self.joiner.restore_entries(section(entries, JOINER))


def _newest(times: Iterable[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


class NativeJoins(PartitionJoins["ScoreBlock", "LabelBlock"]):
    """The native core: messages decode into native blocks, the pairer's pairs go straight to the joiner."""

    def __init__(self, join_window_s: float, max_pending: int, label_horizon_s: float, max_label_pending: int) -> None:
        self.pairer: NativePairer = NativePairer(join_window_s=join_window_s, max_pending=max_pending)
        self.joiner: NativeLabelJoiner = NativeLabelJoiner(horizon_s=label_horizon_s, max_pending=max_label_pending)

    def decode_scores(self, raw: bytes) -> ScoreBlock:
        return decode_scores_block(raw)

    def decode_label(self, raw: bytes) -> LabelBlock:
        return decode_label_block(raw)

    def outside(
        self, window: TimeWindow, scores: list[ScoreBlock], labels: list[LabelBlock]
    ) -> tuple[Outside, Outside]:
        return window.scores_outside(scores), window.labels_outside(labels)

    def join(self, scores: list[ScoreBlock], labels: list[LabelBlock]) -> JoinOutput:
        pairer, joiner = self.pairer, self.joiner
        score_s = _newest([*(block.max_ts for block in scores), pairer.watermark_s])
        # A partition that never saw a score has no score time: the pairer waits rather than get a made-up one.
        paired = None if score_s is None else pairer.add_blocks(scores, score_s)
        pairs = paired.pairs if paired is not None else None
        known_s = _newest([*(block.max_ts for block in labels), joiner.watermark_s, score_s])
        labeled: list[LabeledBatch] = []
        if known_s is not None:
            from_pairs = joiner.add_native_pairs(pairs if pairs is not None else _no_pairs(), known_s)
            labeled += _native_labeled(from_pairs)
            labeled += _native_labeled(joiner.add_label_blocks(labels, known_s))
        return JoinOutput(
            score_events=sum(len(block) for block in scores),
            label_events=sum(len(block) for block in labels),
            score_s=score_s,
            known_s=known_s,
            pairs=[] if pairs is None else _native_pairs(pairs),
            labeled=labeled,
            orphans=[] if paired is None else _native_orphans(paired),
            duplicates=[] if paired is None else _native_sides(paired.duplicates),
            evicted=0 if paired is None else sum(len(ts) // 8 for *_, ts in paired.evicted),
            watermark_s=None if paired is None else paired.watermark_s,
        )

    def delta_record(self) -> bytes:
        # Written by the native joins straight into the record: no Python object per entry.
        return self.pairer.state_delta_blob(PAIRER) + self.joiner.state_delta_blob(JOINER)

    def entries_record(self) -> bytes:
        return self.pairer.entries_blob(PAIRER) + self.joiner.entries_blob(JOINER)


def _no_pairs() -> Pairs:
    return native.core.Pairs()


def _key(model: str, production: str, candidate: str, role: str) -> ComparisonKey:
    return ComparisonKey(model, production, candidate, role)  # type: ignore[arg-type]  # the core checked it


def _f64(raw: bytes | bytearray) -> FloatArray:
    return np.frombuffer(raw, dtype=np.float64)


def _native_pairs(pairs: Pairs) -> list[PairBatch]:
    out = []
    for i, names in enumerate(pairs.comparisons()):
        prod_score, cand_score, prod_latency, cand_latency, ts, prod_error, cand_error = pairs.columns(i)
        out.append(
            PairBatch(
                key=_key(*names),
                prod_score=_f64(prod_score),
                cand_score=_f64(cand_score),
                prod_latency_ms=_f64(prod_latency),
                cand_latency_ms=_f64(cand_latency),
                prod_error=np.frombuffer(prod_error, dtype=np.bool_),
                cand_error=np.frombuffer(cand_error, dtype=np.bool_),
                ts=_f64(ts),
                prod_features=_native_features(pairs, i, "prod"),
                cand_features=_native_features(pairs, i, "cand"),
            )
        )
    return out


def _native_features(pairs: Pairs, i: int, side: str) -> FeatureArrays:
    return {
        name: (
            np.frombuffer(rows, dtype=np.uint32),
            FeatureColumn(_f64(numbers), np.frombuffer(codes, dtype=np.int32), strings),
        )
        for name, (rows, numbers, codes, strings) in pairs.feature_arrays(i, side).items()
    }


def _native_labeled(result: LabelOut) -> list[LabeledBatch]:
    return [
        LabeledBatch(_key(m, p, c, r), _f64(prod), _f64(cand), np.frombuffer(label, dtype=np.int8), _f64(ts))
        for m, p, c, r, prod, cand, label, ts, _ in result.joined
    ]


def _native_orphans(paired: PairingOut) -> list[SideBatch]:
    return [
        SideBatch(Side(model, version, role), _f64(ts), np.frombuffer(errors, dtype=np.bool_))  # type: ignore[arg-type]
        for (model, version, role, ts), errors in zip(paired.orphans, paired.orphan_errors, strict=True)
    ]


def _native_sides(items: list[tuple[str, str, str, bytes]]) -> list[SideBatch]:
    return [SideBatch(Side(m, v, r), _f64(ts), None) for m, v, r, ts in items]  # type: ignore[arg-type]


class ReferenceJoins(PartitionJoins[Sequence[ScoreLike], LabelLike]):
    """The Python reference: msgspec/pydantic decoding, :class:`Pairer`, :class:`LabelJoiner`."""

    def __init__(self, join_window_s: float, max_pending: int, label_horizon_s: float, max_label_pending: int) -> None:
        self.pairer: Pairer = Pairer(join_window_s=join_window_s, max_pending=max_pending)
        self.joiner: LabelJoiner = LabelJoiner(horizon_s=label_horizon_s, max_pending=max_label_pending)

    def decode_scores(self, raw: bytes) -> Sequence[ScoreLike]:
        return decode_scores_fast(raw)

    def decode_label(self, raw: bytes) -> LabelLike:
        return decode_label_fast(raw)

    def outside(
        self, window: TimeWindow, scores: list[Sequence[ScoreLike]], labels: list[LabelLike]
    ) -> tuple[Outside, Outside]:
        return window.events_outside(scores), window.events_outside(labels)

    def join(self, scores: list[Sequence[ScoreLike]], labels: list[LabelLike]) -> JoinOutput:
        pairer, joiner = self.pairer, self.joiner
        events = [event for message in scores for event in message]
        # Event ts are whole microseconds, so these epoch seconds convert back to the same datetimes.
        score_s = _newest([*(e.ts.timestamp() for e in events), pairer.watermark_s])
        paired = None if score_s is None else pairer.add_batch(events, _at(score_s))
        known_s = _newest([*(lab.ts.timestamp() for lab in labels), joiner.watermark_s, score_s])
        labeled: list[LabeledBatch] = []
        if known_s is not None:
            labeled += _reference_labeled(joiner.add_pairs(paired.pairs if paired is not None else {}, _at(known_s)))
            labeled += _reference_labeled(joiner.add_labels(labels, _at(known_s)))
        return JoinOutput(
            score_events=len(events),
            label_events=len(labels),
            score_s=score_s,
            known_s=known_s,
            pairs=[] if paired is None else _reference_pairs(paired),
            labeled=labeled,
            orphans=[] if paired is None else [
                SideBatch(side, ts, paired.orphan_errors[side]) for side, ts in paired.orphans.items()
            ],
            duplicates=[] if paired is None else [SideBatch(s, ts, None) for s, ts in paired.duplicates.items()],
            evicted=0 if paired is None else sum(len(ts) for ts in paired.evicted.values()),
            watermark_s=None if paired is None else paired.watermark_s,
        )  # fmt: skip

    def delta_record(self) -> bytes:
        return encode_delta(self.pairer.state_delta(), PAIRER) + encode_delta(self.joiner.state_delta(), JOINER)

    def entries_record(self) -> bytes:
        pairer, joiner = StateDelta(self.pairer.entries(), frozenset()), StateDelta(self.joiner.entries(), frozenset())
        return encode_delta(pairer, PAIRER) + encode_delta(joiner, JOINER)


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _reference_pairs(paired: PairingResult) -> list[PairBatch]:
    return [
        PairBatch(
            key=key,
            prod_score=c.prod_score,
            cand_score=c.cand_score,
            prod_latency_ms=c.prod_latency_ms,
            cand_latency_ms=c.cand_latency_ms,
            prod_error=c.prod_error,
            cand_error=c.cand_error,
            ts=c.ts,
            prod_features=feature_arrays(c.prod_features),
            cand_features=feature_arrays(c.cand_features),
        )
        for key, c in paired.pairs.items()
    ]


def feature_arrays(rows: Sequence[Features]) -> FeatureArrays:
    """One side's feature dicts as arrays per name, as the native ``Pairs.feature_arrays`` gives them:
    names in order of first appearance, rows without the feature left out, strings coded in order of
    first appearance, numbers NaN where the value is a string or None."""
    columns: dict[str, tuple[list[int], list[float], list[int], dict[str, int]]] = {}
    for row, features in enumerate(rows):
        for name, value in (features or {}).items():
            column = columns.get(name)
            if column is None:
                column = columns[name] = ([], [], [], {})
            indices, numbers, codes, strings = column
            indices.append(row)
            if isinstance(value, str):
                numbers.append(math.nan)
                codes.append(strings.setdefault(value, len(strings)))
            else:
                numbers.append(math.nan if value is None else float(value))
                codes.append(-1)
    return {
        name: (
            np.array(indices, dtype=np.uint32),
            FeatureColumn(np.array(numbers, dtype=np.float64), np.array(codes, dtype=np.int32), list(strings)),
        )
        for name, (indices, numbers, codes, strings) in columns.items()
    }


def _reference_labeled(result: LabelResult) -> list[LabeledBatch]:
    return [LabeledBatch(k, c.prod_score, c.cand_score, c.label, c.ts) for k, c in result.joined.items()]


def select(use_native: bool | None = None) -> type[PartitionJoins[Any, Any]]:
    """The joins a processor builds for its partitions: native when built (or asked for), else the reference,
    with one warning (at worker or replay start: once per processor)."""
    if use_native is None:
        use_native = native.AVAILABLE
    if use_native:
        if not native.AVAILABLE:
            raise ConfigError(native.MISSING_WARNING)
        return NativeJoins
    if not native.AVAILABLE:
        native.warn_missing(log)
    return ReferenceJoins
