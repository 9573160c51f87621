"""The native pairer (streams.native_pairing, native/src/pairer.rs) against the reference (streams.pairing).

A differential test: random streams, batch cuts, deltas and restores, where both implementations must give
identical results (arrays bit for bit, dict orders, feature types) and identical state bytes; plus the
encoding of floats and strings (orjson's, byte for byte) and the restore errors (same messages).
"""

from __future__ import annotations

import math
import struct
from datetime import timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.join.pairer import NativePairer
from streams.join.reference.pairing import Pairer, PairingResult
from streams.join.state import CheckpointError
from streams.state.statelog import accumulate
from tests.test_pairing import T0, ev

I64 = st.integers(-(2**63), 2**63 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
# Strings orjson can encode (no lone surrogates): every other code point, control characters included.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


def _array(a: np.ndarray[Any, Any]) -> tuple[str, bytes]:
    return (a.dtype.str, a.tobytes())


def _typed(features: dict[str, Any] | None) -> Any:
    """Features with each value's type, so 1 and 1.0 differ."""
    return None if features is None else [(k, type(v).__name__, v) for k, v in features.items()]


def snapshot(res: PairingResult) -> Any:
    """Everything a result holds, orders and types included, in a plain comparable form."""
    pairs = [
        (
            key,
            [_array(a) for a in (c.prod_score, c.cand_score, c.prod_latency_ms, c.cand_latency_ms, c.ts)],
            [_array(a) for a in (c.prod_error, c.cand_error)],
            c.request_ids,
            [_typed(f) for f in c.prod_features],
            [_typed(f) for f in c.cand_features],
        )
        for key, c in res.pairs.items()
    ]
    sides = [
        [(side, _array(a)) for side, a in part.items()]
        for part in (res.orphans, res.orphan_errors, res.evicted, res.late, res.duplicates)
    ]
    return pairs, sides, res.forgotten, res.watermark_s


FEATURE_VALUES = st.one_of(st.none(), I64, st.floats(-1e20, 1e20), TEXT, st.sampled_from([0.1, 1e-7, 1e16, -0.0]))
FEATURES = st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "c.d", "x-y"]), FEATURE_VALUES))


@st.composite
def scenario(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A script of steps: ("batch", (events, now)), ("delta", None), ("restore", None)."""
    rids = draw(st.lists(st.sampled_from(["a", "b", "c", "d", 'q"\\']), min_size=1, max_size=4, unique=True))
    models = ["m", "n"][: draw(st.integers(1, 2))]
    versions = ["v1", "v2", "v3"][: draw(st.integers(2, 3))]
    clock = 0.0
    steps: list[tuple[str, Any]] = []
    sent: list[Any] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["batch", "batch", "batch", "delta", "restore"]))
        if kind != "batch":
            steps.append((kind, None))
            continue
        events = []
        for _ in range(draw(st.integers(0, 12))):
            if sent and draw(st.integers(0, 9)) == 0:
                events.append(draw(st.sampled_from(sent)))  # an exact duplicate
                continue
            clock += draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.25, 10.0, 40.0]))
            jitter = draw(st.sampled_from([0.0, 0.0, 0.000001, -1.5, 2.0, -30.0, -90.0]))  # -90: often late
            event = ev(
                draw(st.sampled_from(rids)),
                draw(st.sampled_from(["production", "shadow", "canary"])),
                draw(st.sampled_from(versions)),
                clock + jitter,
                model=draw(st.sampled_from(models)),
                score=draw(st.floats(0, 1)),
                latency_ms=draw(st.floats(0, 1e5)),
                error=draw(st.sampled_from([None, None, "boom"])),
                features=draw(FEATURES),
            )
            events.append(event)
            sent.append(event)
        ahead = draw(st.sampled_from([0.0, 0.0, 0.0, 5.0, 59.0, 61.0, 500.0]))
        now = max([T0 + timedelta(seconds=clock), *(e.ts for e in events)]) + timedelta(seconds=ahead)
        steps.append(("batch", (events, now)))
    steps.append(("batch", ([], T0 + timedelta(days=30))))
    return steps


@settings(max_examples=400, deadline=None)
@given(steps=scenario(), window=st.sampled_from([10.0, 60.0]), bound=st.sampled_from([1, 2, 3, 5, 1000]))
def test_native_and_python_pairers_agree_on_results_deltas_and_entries(
    steps: list[tuple[str, Any]], window: float, bound: int
) -> None:
    py: Pairer | NativePairer = Pairer(join_window_s=window, max_pending=bound)
    nat: Pairer | NativePairer = NativePairer(join_window_s=window, max_pending=bound)
    stored: dict[str, bytes] = {}
    for kind, arg in steps:
        if kind == "batch":
            events, now = arg
            assert snapshot(nat.add_batch(events, now)) == snapshot(py.add_batch(events, now))
        else:
            want, got = py.state_delta(), nat.state_delta()
            assert list(got.upserts.items()) == list(want.upserts.items())  # dict order too
            assert got.deletes == want.deletes
            accumulate(stored, want)
            assert nat.entries() == py.entries() == stored
            if kind == "restore":  # both restart from the stored state, each taking over the other's
                py, nat = Pairer(join_window_s=window, max_pending=bound), NativePairer(window, bound)
                py.restore_entries(stored)
                nat.restore_entries(stored)
                assert nat.entries() == py.entries() == stored
        assert (nat.pending, nat.watermark_s) == (py.pending, py.watermark_s)
    assert nat.entries() == py.entries()


def _row(draw: st.DrawFn) -> list[Any]:
    if draw(st.booleans()):  # a tombstone
        return [draw(TEXT), draw(TEXT), draw(TEXT), draw(st.integers(0, 2)), draw(FINITE), 2]
    return [
        draw(TEXT), draw(TEXT), draw(TEXT), draw(st.integers(0, 2)), draw(FINITE), draw(st.integers(0, 1)),
        draw(FINITE), draw(FINITE), draw(st.integers(0, 1)),
        draw(st.one_of(st.none(), st.dictionaries(TEXT, st.one_of(st.none(), I64, FINITE, TEXT), max_size=4))),
    ]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_entries_encode_floats_and_strings_exactly_as_orjson(data: st.DataObject) -> None:
    """Restoring orjson-written entries and reading them back gives the same bytes: every float and string
    the native encoder writes is orjson's."""
    rows = data.draw(st.lists(st.composite(_row)(), max_size=5))
    watermark = data.draw(st.one_of(st.none(), FINITE))
    entries = {f"{i:x}": orjson.dumps(row) for i, row in enumerate(rows)}
    entries["m"] = orjson.dumps([2, watermark, len(rows) + data.draw(st.integers(1, 2**40))])
    nat = NativePairer()
    nat.restore_entries(entries)
    assert nat.entries() == entries
    # and a delta after a change writes the meta entry as orjson does
    now = data.draw(st.floats(0, 4e9))
    nat.add_batch([], T0.fromtimestamp(now, T0.tzinfo))
    py = Pairer()
    py.restore_entries(entries)
    py.add_batch([], T0.fromtimestamp(now, T0.tzinfo))
    assert nat.state_delta() == py.state_delta()


@pytest.mark.parametrize(
    "value",
    [1e-05, 1e16, 1e22, 0.1, 5e-324, 1.0, -0.0, 0.0, 123456789012345680.0, 1e-6, 2.5e-5, 1e15, 9007199254740993.0,
     1.7976931348623157e308, -1e-300, 1709251200.123456, 0.30000000000000004],
)  # fmt: skip
def test_known_floats_encode_as_orjson(value: float) -> None:
    raw = orjson.dumps(["r", "m", "v", 0, value, 0, value, value, 0, {"x": value}])
    nat = NativePairer()
    nat.restore_entries({"0": raw, "m": orjson.dumps([2, value, 1])})
    assert nat.entries() == {"0": raw, "m": orjson.dumps([2, value, 1])}


ANY_F64 = st.integers(0, 2**64 - 1).map(lambda bits: struct.unpack("<d", bits.to_bytes(8, "little"))[0])


@settings(max_examples=300, deadline=None)
@given(values=st.lists(ANY_F64.filter(math.isfinite), min_size=1, max_size=20))
def test_random_bit_pattern_floats_encode_as_orjson(values: list[float]) -> None:
    """Uniform over the f64 bit patterns: every exponent range, subnormals, both signs."""
    entries = {f"{i:x}": orjson.dumps(["r", "m", "v", 0, v, 0, v, -v, 1, {"f": v}]) for i, v in enumerate(values)}
    entries["m"] = orjson.dumps([2, values[0], len(values)])
    nat = NativePairer()
    nat.restore_entries(entries)
    assert nat.entries() == entries


def test_known_strings_encode_as_orjson() -> None:
    text = '"\\/\x00\x01\x08\t\n\x0b\x0c\r\x1f\x7f\u2028\u2029é漢😀'
    raw = orjson.dumps([text, text, text, 1, 0.5, 2])
    nat = NativePairer()
    nat.restore_entries({"0": raw, "m": orjson.dumps([2, None, 1])})
    assert nat.entries()["0"] == raw


def _entries() -> dict[str, bytes]:
    p = Pairer()
    p.add_batch([ev("r", "production", "v1", 0, features={"a": 1, "b": "z", "c": None})], T0)
    p.add_batch([ev("q", "production", "v1", 1), ev("q", "shadow", "v2", 1, error="e")], T0 + timedelta(seconds=1))
    return p.entries()


_GOOD = _entries()
_META = orjson.loads(_GOOD["m"])
_BAD: list[dict[str, Any]] = [
    {**_GOOD, "0": b"\x80\x04pickle"},
    {**_GOOD, "0": b"[1, 2"},
    {**_GOOD, "0": orjson.dumps({"r": 1})},
    {**_GOOD, "0": b"null"},
    {k: v for k, v in _GOOD.items() if k != "m"},
    {**_GOOD, "m": orjson.dumps([1, *_META[1:]])},
    {**_GOOD, "m": orjson.dumps([2, _META[1]])},
    {**_GOOD, "m": orjson.dumps([2, "x", 3])},
    {**_GOOD, "m": orjson.dumps([2, _META[1], -1])},
    {**_GOOD, "m": orjson.dumps([2, _META[1], 3.0])},
    {**_GOOD, "m": orjson.dumps([2, True, 3])},
    {**_GOOD, "m": b"{}"},
    {**_GOOD, "m": orjson.dumps([2, _META[1], 2])},
    {**_GOOD, "m": orjson.dumps([2, "a long string that is cut in the message" * 4, 3])},
    {**_GOOD, "00": _GOOD["0"]},
    {**_GOOD, "zz": _GOOD["0"]},
    {**_GOOD, "": _GOOD["0"]},
    {**_GOOD, "A": _GOOD["0"]},
    {**_GOOD, "1" * 20: _GOOD["0"]},
    {**_GOOD, "0": orjson.dumps(["r", "m"])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 7, 1.0, 0, 0.5, 1.0, 0, None])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 1.0, 1.0, 0, 0.5, 1.0, 0, None])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", True, 1.0, 0, 0.5, 1.0, 0, None])},
    {**_GOOD, "0": orjson.dumps(["r", 5, "v1", 0, 1.0, 0, 0.5, 1.0, 0, None])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 0, "t", 0, 0.5, 1.0, 0, None])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 0, 1.0, 0, None, 1.0, 0, None])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 0, 1.0, 3, 0.5, 1.0, 0, None])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 0, 1.0, 0, 0.5, 1.0, True, None])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 0, 1.0, 0, 0.5, 1.0, 2, None])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 0, 1.0, 0, 0.5, 1.0, 0, [1]])},
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 0, 1.0, 2.0])},  # a tombstone's state must be an int
    {**_GOOD, "0": orjson.dumps(["r", "m", "v1", 0, 1.0, 1])},
    {**_GOOD, "0": orjson.dumps(["x" * 100, "m", "v1", 0, 1.0, 0, 0.5, 1.0, 0, None, 7])},
]


@pytest.mark.parametrize("bad", _BAD)
def test_bad_entries_are_refused_with_the_reference_message_and_no_damage(bad: dict[str, Any]) -> None:
    py, nat = Pairer(), NativePairer()
    py.restore_entries(_GOOD)
    nat.restore_entries(_GOOD)
    with pytest.raises(CheckpointError) as want:
        py.restore_entries(bad)
    with pytest.raises(CheckpointError) as got:
        nat.restore_entries(bad)
    assert str(got.value) == str(want.value)
    assert nat.entries() == py.entries() == _GOOD


def test_restored_integer_and_float_forms_are_read_as_python_reads_them() -> None:
    """Ints where floats belong, 1e2-style numbers, duplicate feature names: the same state either way."""
    raw = b'["r","m","v",0,1700000000,0,1,2.5e0,1,{"k":1,"k":2.0,"j":1E2}]'
    entries = {"0": raw, "m": b"[2.0,1700000000,1]"}
    py, nat = Pairer(), NativePairer()
    py.restore_entries(entries)
    nat.restore_entries(entries)
    assert nat.entries() == py.entries()
    res = [p.add_batch([ev("r", "shadow", "w", 1700000000 - T0.timestamp())], T0) for p in (py, nat)]
    assert snapshot(res[1]) == snapshot(res[0])
