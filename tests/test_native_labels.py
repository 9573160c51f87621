"""The native label joiner (streams.native_labels) against the reference (streams.labels), call for call.

Random interleavings of pairs (shadow and canary of the same requests, two models, errored sides, ts
jitter) and labels (matching, duplicate, conflicting, late, unmatched), small bounds that force evictions,
``now`` sometimes ahead, deltas accumulated and restored into fresh joiners at random points: both give the
same LabelResults (arrays bit for bit, NaN included, dict orders, counts) and the same delta/entries bytes.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.contract.comparison import ComparisonKey
from governance.contract.wire import LabelEvent
from streams import _native
from streams.join.joiner import NativeLabelJoiner
from streams.join.reference.labels import LabelJoiner, LabelResult
from streams.join.reference.pairing import PairColumns
from streams.join.state import CheckpointError
from streams.state.statelog import StateDelta, accumulate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
E0 = T0.timestamp()
RIDS = ["a", "b", "c", "d", 'e-\u00e9\u2028"\\/\x01', "5f0c6a4e-1d2b-4c8e-9a57-3b1f2e4d6c80"]
MODELS = ["m", "n.2"]
H = 30.0  # the horizon of the differential test


def key(model: str, which: int) -> ComparisonKey:
    return ComparisonKey(model, "v1", ("v2", "v3")[which], ("shadow", "canary")[which])


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- jsonfmt: the native JSON writer is orjson's, byte for byte -------------------------------------------

FIXED = [1e-05, 1e16, 1e22, 0.1, 5e-324, 1.0, -0.0, 0.0, 123456789012345680.0, 1767222000.123456, 1e15, 1e-7,
         2.2250738585072014e-308, 1.7976931348623157e308, math.nan, math.inf, -math.inf]  # fmt: skip


@pytest.mark.parametrize("value", FIXED)
def test_floats_are_written_as_orjson_writes_them(value: float) -> None:
    assert _native.dumps_f64(value) == orjson.dumps(value)


@settings(max_examples=3000, deadline=None)
@given(bits=st.integers(0, 2**64 - 1), value=st.floats())
def test_random_floats_are_written_as_orjson_writes_them(bits: int, value: float) -> None:
    any_double = struct.unpack("<d", struct.pack("<Q", bits))[0]  # every exponent equally likely
    assert _native.dumps_f64(any_double) == orjson.dumps(any_double)
    assert _native.dumps_f64(value) == orjson.dumps(value)


@settings(max_examples=1000, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"])) | st.sampled_from(RIDS))
def test_strings_are_written_as_orjson_writes_them(text: str) -> None:
    assert _native.dumps_str(text) == orjson.dumps(text)


# --- the differential test ---------------------------------------------------------------------------------

Joiner = LabelJoiner | NativeLabelJoiner

score_ = st.sampled_from([0.0, 0.25, 0.1, 1.0, 1e-7, 0.3333333333333333]) | st.floats(0, 1)
pair_ = st.tuples(
    st.sampled_from(RIDS), st.sampled_from(MODELS), st.integers(0, 1), score_, score_, st.booleans(), st.booleans(),
    st.sampled_from([0.0, 0.5, -0.25, 0.000001]),
)  # fmt: skip
label_ = st.tuples(st.sampled_from(RIDS), st.sampled_from(MODELS), st.integers(0, 1), st.sampled_from([0.0, 0.75]))


@st.composite
def script_(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    t, ops = 0.0, list[tuple[Any, ...]]()
    for _ in range(draw(st.integers(0, 30))):
        t += draw(st.sampled_from([0, 1, 5, 30, 30, 60, -20, -30, -70]))  # 30: exactly at the horizon
        ahead = draw(st.sampled_from([0, 0, 0, 10, 30, 100]))  # now ahead of the events
        kind = draw(st.sampled_from(["pairs", "pairs", "labels", "labels", "delta", "restore"]))
        if kind == "pairs":
            ops.append((kind, t, ahead, draw(st.lists(pair_, max_size=6))))
        elif kind == "labels":
            ops.append((kind, t, ahead, draw(st.lists(label_, max_size=6))))
        else:
            ops.append((kind,))
    return ops


def pairs_of(rows: list[tuple[Any, ...]], t: float) -> dict[ComparisonKey, PairColumns]:
    grouped: dict[ComparisonKey, list[tuple[Any, ...]]] = {}
    for rid, model, which, prod, cand, prod_err, cand_err, jitter in rows:
        grouped.setdefault(key(model, which), []).append((rid, prod, cand, prod_err, cand_err, t + jitter))
    out = {}
    for k, items in grouped.items():
        n = len(items)
        out[k] = PairColumns(
            prod_score=np.array([i[1] for i in items]),
            cand_score=np.array([i[2] for i in items]),
            prod_latency_ms=np.ones(n),
            cand_latency_ms=np.ones(n),
            prod_error=np.array([i[3] for i in items], dtype=bool),
            cand_error=np.array([i[4] for i in items], dtype=bool),
            ts=np.array([at(i[5]).timestamp() for i in items]),
            request_ids=[i[0] for i in items],
            prod_features=[None] * n,
            cand_features=[None] * n,
        )
    return out


def labels_of(rows: list[tuple[Any, ...]], t: float) -> list[LabelEvent]:
    return [
        LabelEvent.model_validate({"request_id": rid, "model": model, "label": y, "ts": at(t + jitter)})
        for rid, model, y, jitter in rows
    ]


def canon(res: LabelResult) -> tuple[Any, ...]:
    """Everything a result says, arrays as (dtype, raw bytes): NaN positions and -0.0 count."""

    def arr(a: np.ndarray[Any, Any]) -> tuple[str, bytes]:
        return str(a.dtype), a.tobytes()

    joined = [
        (k, arr(c.prod_score), arr(c.cand_score), arr(c.label), arr(c.ts), list(c.request_ids))
        for k, c in res.joined.items()
    ]
    unlabeled = [(k, arr(v)) for k, v in res.unlabeled.items()]
    evicted = [(k, arr(v)) for k, v in res.evicted.items()]
    counts = (res.unmatched_labels, res.evicted_labels, res.duplicate_labels, res.conflicting_labels)
    return joined, unlabeled, evicted, counts, res.watermark_s, res.label_count


def same_state(ref: LabelJoiner, nat: NativeLabelJoiner) -> None:
    assert nat.entries() == ref.entries()
    assert (nat.pending_pairs, nat.pending_labels, nat.watermark_s) == (
        ref.pending_pairs,
        ref.pending_labels,
        ref.watermark_s,
    )


@settings(max_examples=300, deadline=None)
@given(script=script_(), bounds=st.sampled_from([(2, 2), (3, 1), (5, 4), (1000, 1000)]), last=st.booleans())
def test_native_joiner_equals_the_reference_call_for_call(
    script: list[tuple[Any, ...]], bounds: tuple[int, int], last: bool
) -> None:
    ref: LabelJoiner = LabelJoiner(H, *bounds)
    nat = NativeLabelJoiner(H, *bounds)
    stored_ref: dict[str, bytes] = {}
    stored_nat: dict[str, bytes] = {}
    for op in script:
        if op[0] == "pairs":
            _, t, ahead, rows = op
            batch = pairs_of(rows, t)
            assert canon(nat.add_pairs(batch, at(t + ahead))) == canon(ref.add_pairs(batch, at(t + ahead)))
        elif op[0] == "labels":
            _, t, ahead, rows = op
            labels = labels_of(rows, t)
            assert canon(nat.add_labels(labels, at(t + ahead))) == canon(ref.add_labels(labels, at(t + ahead)))
        else:
            d_ref, d_nat = ref.state_delta(), nat.state_delta()
            assert d_nat == d_ref
            accumulate(stored_ref, d_ref)
            accumulate(stored_nat, d_nat)
            assert stored_nat == stored_ref == ref.entries()
            if op[0] == "restore":  # a takeover: each restores from the other's stored state
                ref, nat = LabelJoiner(H, *bounds), NativeLabelJoiner(H, *bounds)
                ref.restore_entries(stored_nat)
                nat.restore_entries(stored_ref)
        same_state(ref, nat)
    end = at(1e6) if last else at(0)
    assert canon(nat.add_labels([], end)) == canon(ref.add_labels([], end))
    assert nat.state_delta() == ref.state_delta()
    same_state(ref, nat)


def test_native_adapters_take_the_native_pairs_and_label_blocks() -> None:
    from streams.join.joiner import pairs_of as native_pairs
    from streams.join.joiner import to_label_result

    ref, nat = LabelJoiner(), NativeLabelJoiner()
    batch = pairs_of([("a", "m", 0, 0.1, 0.2, False, True, 0.0), ("a", "m", 1, 0.1, 0.9, False, False, 0.5)], 0)
    labels = labels_of([("a", "m", 1, 0.0), ("z", "m", 0, 0.0)], 1)
    assert canon(to_label_result(nat.add_native_pairs(native_pairs(batch), E0))) == canon(ref.add_pairs(batch, T0))
    out = nat.add_label_blocks([_native.LabelBlock.from_events(labels[:1]), _native.LabelBlock.from_events(labels[1:])],
                               E0 + 1)  # fmt: skip
    res = to_label_result(out)
    assert canon(res) == canon(ref.add_labels(labels, at(1))) and out.label_count == res.label_count == 2
    res.joined[key("m", 0)].prod_score[0] = 0.5  # writable columns, as the reference's
    assert nat.state_delta() == ref.state_delta()


# --- restore: the reference's acceptance and error texts -----------------------------------------------------


def _entries() -> dict[str, bytes]:
    joiner = LabelJoiner()
    joiner.add_pairs(pairs_of([("r", "m", 0, 0.4, 0.6, False, True, 0.0)], 0), T0)
    joiner.add_labels(labels_of([("q", "m", 1, 0.0)], 0), T0)
    return joiner.entries()


GOOD = _entries()
M2 = orjson.dumps([2, E0, 2])
BAD: list[dict[str, Any]] = [
    {**GOOD, "p0": b"not json"},
    {**GOOD, "p0": b"[1,]"},
    {**GOOD, "p0": b'["\\ud800","m|v1|v2|shadow",0.1,0.2,0.0]'},
    {**GOOD, "p0": b'["r","m|v1|v2|shadow",0.1,0.2,1e400]'},
    {**GOOD, "p0": b'{"a": 1}'},
    {**GOOD, "m": orjson.dumps([9, E0, 2])},
    {**GOOD, "m": orjson.dumps([2, "x", 2])},
    {**GOOD, "m": orjson.dumps([2, E0, -1])},
    {**GOOD, "x0": GOOD["p0"]},
    {**GOOD, "p01": GOOD["p0"]},
    {**GOOD, "p": GOOD["p0"]},
    {**GOOD, "": GOOD["p0"]},
    {**GOOD, "pA": GOOD["p0"]},
    {**GOOD, "\u00e90": GOOD["p0"]},
    {**GOOD, "p2": GOOD["p0"]},
    {**GOOD, "p" + "f" * 20: GOOD["p0"]},
    {**GOOD, "p0": orjson.dumps(["r", "no-key", 0.1, 0.2, 0.0])},
    {**GOOD, "p0": orjson.dumps(["r", "m|v1|v2|production", 0.1, 0.2, 0.0])},
    {**GOOD, "p0": orjson.dumps(["r", "m|v1|v2|shadow", 0.1, 0.2])},
    {**GOOD, "p0": orjson.dumps(["r", "m|v1|v2|shadow", True, 0.2, 0.0])},
    {**GOOD, "p0": orjson.dumps(["r", "m|v1|v2|shadow", "0.1", 0.2, 0.0])},
    {**GOOD, "p0": orjson.dumps([1, "m|v1|v2|shadow", 0.1, 0.2, 0.0])},
    {**GOOD, "p0": orjson.dumps(["r", "m|v1|v2|shadow", 0.1, 0.2, None])},
    {**GOOD, "l1": orjson.dumps(["q", "m", 2, 0.0, 0])},
    {**GOOD, "l1": orjson.dumps(["q", "m", 1.0, 0.0, 0])},
    {**GOOD, "l1": orjson.dumps(["q", "m", True, 0.0, 0])},
    {**GOOD, "l1": orjson.dumps(["q", "m", 1, 0.0, 2])},
    {**GOOD, "l1": orjson.dumps(["q", "m", 1, "0", 0])},
    {**GOOD, "l1": orjson.dumps(["q", 5, 1, 0.0, 0])},
    {**GOOD, "m": orjson.dumps([2, E0, 1])},
    {"p0": GOOD["p0"]},
]
ODD_BUT_VALID: list[dict[str, Any]] = [
    {},
    {"m": orjson.dumps([2, None, 0])},
    {**GOOD, "p0": b' [ "r" , "m|v1|v2|shadow" , -0 , 1E2 , 18446744073709551616 ] '},
    {**GOOD, "p0": b'["r","m|v1|v2|shadow",null,-0.0,-9223372036854775809]', "l1": b'["q","m",-0,-0,-0]'},
    {**GOOD, "p0": '["r","m|v1|v2|canary",1,0,5]'},  # str, not bytes: orjson reads it too
    {**GOOD, "m": orjson.dumps([2, 1, 2])},
]


@pytest.mark.parametrize("entries", BAD, ids=range(len(BAD)))
def test_restore_refuses_what_the_reference_refuses_with_its_message(entries: dict[str, Any]) -> None:
    ref, nat = LabelJoiner(), NativeLabelJoiner()
    ref.restore_entries(GOOD)
    nat.restore_entries(GOOD)
    with pytest.raises(CheckpointError) as want:
        ref.restore_entries(entries)
    with pytest.raises(CheckpointError) as got:
        nat.restore_entries(entries)
    assert str(got.value) == str(want.value)
    assert nat.entries() == ref.entries() == GOOD  # the state is kept


@pytest.mark.parametrize("entries", ODD_BUT_VALID, ids=range(len(ODD_BUT_VALID)))
def test_restore_accepts_what_the_reference_accepts_with_its_meaning(entries: dict[str, Any]) -> None:
    ref, nat = LabelJoiner(), NativeLabelJoiner()
    ref.restore_entries(entries)
    nat.restore_entries(entries)
    same_state(ref, nat)
    later = labels_of([("r", "m", 1, 0.0)], 5)
    assert canon(nat.add_labels(later, at(5))) == canon(ref.add_labels(later, at(5)))
    assert nat.state_delta() == ref.state_delta()


def test_an_empty_delta_is_empty() -> None:
    assert NativeLabelJoiner().state_delta() == StateDelta.empty()
