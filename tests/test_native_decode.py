"""The native decoder (streams._native, native/src/decode.rs) against the pydantic contract as the oracle.

The native decoder may answer None for anything (the Python tiers then decide), but whatever it accepts the
contract must accept with identical values: same strings, bit-identical floats, ints still ints, the same
instant as ``datetime.timestamp()``. And where the contract refuses, native must answer None. So each test
decodes the same bytes with both and compares exactly (floats by their hex form, so -0.0 is not 0.0).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governance.contract.wire import decode_label, decode_scores, validate_label, validate_score
from governance.errors import EventValidationError
from shadowgate.traffic import TrafficSpec, generate
from streams import _native
from streams.decode.decoder import decode_label_block, decode_scores_block
from tests.test_decoding import _FIELD_VALUES, _NUMBERS, _TEXT, _TIMES, _events, _valid


def _exact(value: Any) -> Any:
    """A comparable form that tells floats from ints and -0.0 from 0.0, and keeps dict order."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, dict):
        return ("dict", [(k, _exact(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return [_exact(v) for v in value]
    return value


def _contract_scores(raw: bytes) -> tuple[str, Any]:
    try:
        events = decode_scores(raw)
    except EventValidationError as exc:
        return "error", str(exc)
    except Exception as exc:  # the contract itself fails (a date overflowing when moved to UTC)
        return "crash", repr(exc)
    return "ok", [
        (e.request_id, e.model, e.version, e.role, e.ts.timestamp(), e.score, e.latency_ms, e.error is not None,
         e.features)
        for e in events
    ]  # fmt: skip


def _contract_label(raw: bytes) -> tuple[str, Any]:
    try:
        e = decode_label(raw)
    except EventValidationError as exc:
        return "error", str(exc)
    except Exception as exc:
        return "crash", repr(exc)
    return "ok", [(e.request_id, e.model, e.label, e.ts.timestamp())]


def _check_scores(raw: bytes) -> bool:
    """Native agrees with the contract on `raw`; True if native took it."""
    block = _native.decode_scores(raw)
    kind, rows = _contract_scores(raw)
    if block is None:
        return False
    assert kind == "ok", (raw, rows)
    assert _exact(block.rows()) == _exact(rows), raw
    return True


def _check_label(raw: bytes) -> bool:
    block = _native.decode_label(raw)
    kind, rows = _contract_label(raw)
    if block is None:
        return False
    assert kind == "ok", (raw, rows)
    assert _exact(block.rows()) == _exact(rows), raw
    return True


def _dump(event: dict[str, Any]) -> bytes:
    return json.dumps(event, allow_nan=True).encode()


def _envelope(*docs: bytes) -> bytes:
    return b'{"events":[' + b",".join(docs) + b"]}"


# -- realistic traffic: the fast path is really taken ---------------------------------------------------


def _sdk_events(spec: TrafficSpec) -> tuple[list[bytes], list[bytes]]:
    """Score and label bodies encoded as the SDK does (validated, model_dump(mode="json"), orjson)."""
    scores, labels = [], []
    for e in generate(spec):
        kind = e.pop("kind")
        if kind == "score":
            scores.append(orjson.dumps(validate_score(e).model_dump(mode="json", exclude_none=True)))
        else:
            labels.append(orjson.dumps(validate_label(e).model_dump(mode="json", exclude_none=True)))
    return scores, labels


@pytest.mark.parametrize(
    "spec",
    [
        TrafficSpec(pairs=600, label_share=0.5, cand_error_rate=0.05, seed=11),
        TrafficSpec(pairs=300, role="canary", features=False, rate_per_s=7.3, seed=3),
        TrafficSpec(pairs=300, model="m:1", production_version="v_1.2", candidate_version="v-2.0", seed=5,
                    start=datetime(2025, 2, 28, 23, 59, 59, 999_000, tzinfo=UTC), label_share=1.0),
    ],
)  # fmt: skip
def test_sdk_traffic_is_all_decoded_natively(spec: TrafficSpec) -> None:
    scores, labels = _sdk_events(spec)
    for start in range(0, len(scores), 500):
        assert _check_scores(_envelope(*scores[start : start + 500]))  # no deferral
    assert all(_check_scores(body) for body in scores)
    assert labels and all(_check_label(body) for body in labels)


def test_native_blocks_hold_the_contract_values() -> None:
    raw = _dump(_valid(request_id="r-\u00e9\U0001f600", error="boom", features={"a": 1, "b": -0.0, "c": None}))
    block = _native.decode_scores(raw)
    assert block is not None and len(block) == 1
    ((rid, model, version, role, ts, score, latency, error, features),) = block.rows()
    assert (rid, model, version, role, score, latency, error) == (
        "r-\u00e9\U0001f600", "fraud-risk", "1.4.0", "shadow", 0.25, 12.5, True,
    )  # fmt: skip
    assert ts == datetime(2026, 11, 26, 9, 0, 0, 123456, tzinfo=UTC).timestamp()
    assert features is not None and _exact(features) == _exact({"a": 1, "b": -0.0, "c": None})
    _check_scores(raw)


# -- explicit edge cases --------------------------------------------------------------------------------

_LONG_256 = "é" * 255 + "\U0001f600"  # 256 code points, 514 UTF-8 bytes


@pytest.mark.parametrize(
    "over",
    [
        {"score": float("nan")},
        {"score": float("inf")},
        {"latency_ms": float("-inf")},
        {"score": True},
        {"latency_ms": False},
        {"score": 1.5},
        {"score": -0.0},  # accepted: -0.0 >= 0, kept as -0.0
        {"latency_ms": -0.0},
        {"score": 0},
        {"score": 1},
        {"latency_ms": 10**23},  # an int beyond 2**53 for a float field: native defers
        {"latency_ms": 2**53},
        {"latency_ms": -(2**53)},
        {"score": "0.5"},
        {"model": "fraud-risk\n"},
        {"model": "a:b"},
        {"version": "a" * 128},
        {"version": "a" * 129},
        {"model": ""},
        {"role": "Shadow"},
        {"request_id": ""},
        {"request_id": "a" * 256},
        {"request_id": "a" * 257},
        {"request_id": _LONG_256},
        {"request_id": _LONG_256 + "x"},
        {"request_id": '\u00e9"\\/\b\f\n\r\t\x00\U0001f600'},
        {"request_id": 5},
        {"ts": "2026-11-26T10:00:00"},  # naive
        {"ts": "2026-11-26T10:00:00.1234567Z"},  # 7 fraction digits: the contract truncates, native defers
        {"ts": "2026-11-26T10:00:00.123456z"},
        {"ts": "2026-11-26T10:00:00-00:00"},
        {"ts": "2026-11-26T10:00:00+23:59"},
        {"ts": "2026-11-26T10:00:00+24:00"},
        {"ts": "2026-11-26T24:00:00Z"},
        {"ts": "2026-11-26T23:59:60Z"},
        {"ts": "2024-02-29T10:00:00Z"},
        {"ts": "2026-02-29T10:00:00Z"},
        {"ts": "0000-01-01T00:00:00Z"},
        {"ts": "0001-01-01T00:00:00+01:00"},  # the contract crashes (OverflowError): native must defer
        {"ts": "9999-12-31T23:59:59-01:00"},
        {"ts": "2026-11-26t10:00:00Z"},
        {"ts": "2026-11-26 10:00:00Z"},
        {"ts": "2026-11-26T10:00:00,5Z"},
        {"ts": "2026-11-26T10:00:00+0100"},
        {"ts": "2026-11-26T10:00Z"},
        {"ts": 1764151200},
        {"error": None},
        {"error": ""},
        {"error": "x" * 1024},
        {"error": "x" * 1025},
        {"error": "é" * 1024},
        {"error": 5},
        {"features": None},
        {"features": {}},
        {"features": {"bad name": 1}},
        {"features": {"a:b": 1}},  # ':' is a model-name character, not a feature-name one
        {"features": {"ok": float("nan")}},
        {"features": {"ok": True}},
        {"features": {"ok": 2**63 - 1}},
        {"features": {"ok": -(2**63)}},
        {"features": {"ok": 2**63}},  # the contract takes it; native defers
        {"features": {"ok": 2**70}},
        {"features": {"ok": 1.0}},
        {"features": {"ok": "v" * 256}},
        {"features": {"ok": "v" * 257}},
        {"features": {"ok": "é" * 256}},
        {"features": {"ok": [1]}},
        {"features": {f"f{i}": i for i in range(256)}},
        {"features": {f"f{i}": i for i in range(257)}},
        {"features": []},
        {"extra": 1},
    ],
)
def test_edge_cases_agree_with_the_contract(over: dict[str, Any]) -> None:
    raw = _dump(_valid(**over))
    _check_scores(raw)
    _check_scores(_envelope(raw, _dump(_valid(request_id="r-2"))))


@pytest.mark.parametrize(
    ("raw", "taken"),
    [
        (_dump(_valid(score=0.5)).replace(b"0.5", b"1e400"), False),  # out of range: not infinity
        (_dump(_valid(score=0.5)).replace(b"0.5", b"1e-400"), True),  # underflows to 0.0, as the contract
        (_dump(_valid(score=0.5)).replace(b"0.5", b"-0"), True),  # the int 0: 0.0, not -0.0
        (_dump(_valid(score=0.5)).replace(b"0.5", b"NaN"), False),
        (_dump(_valid(score=0.5)).replace(b"0.5", b"true"), False),
        (_dump(_valid(score=0.5)).replace(b"0.5", b"05"), False),
        (_dump(_valid(score=0.5)).replace(b"0.5", b"0.50000000000000000000000000001"), True),
        (_dump(_valid(features={"n": 0.5})).replace(b"0.5", b"-0"), True),  # the int 0
        (_dump(_valid(features={"n": 0.5})).replace(b"0.5", b"1E2"), True),  # the float 100.0
        (_dump(_valid(features={"n": 0.5})).replace(b"0.5", b"1e400"), False),
        (_dump(_valid(features={"n": 0.5})).replace(b"0.5", b"18446744073709551616"), False),
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"\\u00e9\\"\\ud83d\\ude00"'), True),
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"\\ud83d"'), False),  # lone surrogate
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"\\udc00x"'), False),
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"\\x41"'), False),
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"a\tb"'), False),  # raw control character
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"a\x7fb"'), True),
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"\xff"'), False),  # invalid UTF-8
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"\xed\xa0\x80"'), False),  # an encoded surrogate
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"' + "é".encode() * 256 + b'"'), True),
        (_dump(_valid(request_id="X")).replace(b'"X"', b'"' + b"\\u00e9" * 257 + b'"'), False),
        (_dump(_valid(model="X")).replace(b'"X"', b'"\\u0061"'), False),  # an escaped name: native defers
        (_dump(_valid()).replace(b'"score"', b'"sc\\u006fre"'), False),  # an escaped key: native defers
        (_dump(_valid()).replace(b'"model": "fraud-risk"', b'"model": "fraud-risk", "model": "x"'), False),
        (_dump(_valid(features={"a": 1})).replace(b'"a": 1', b'"a": 1, "a": 2'), False),
        (_dump(_valid()) + b" \n\t\r", True),
        (b" \n" + _dump(_valid()), True),
        (b"\xef\xbb\xbf" + _dump(_valid()), False),  # a BOM
        (_dump(_valid()) + b"x", False),
        (_dump(_valid())[:-1] + b",}", False),
        (_dump(_valid())[:-1], False),
        (b' { "events" : [ ' + _dump(_valid()) + b" ] } ", True),  # the contract's second route
        (b'{"events":[' + _dump(_valid()) + b",]}", False),
        (b'{"events":[]}', False),
        (b'{"events":{}}', False),
        (b'{"events":[' + _dump(_valid()) + b'],"events":[' + _dump(_valid()) + b"]}", False),
        (b'{"events":[' + _dump(_valid()) + b'],"x":1}', False),
        (b"[" + _dump(_valid()) + b"]", False),
        (b"{}", False),
        (b"", False),
        (b"null", False),
    ],
)
def test_raw_edge_cases_agree_with_the_contract(raw: bytes, taken: bool) -> None:
    assert _check_scores(raw) is taken


def test_envelope_size_limits() -> None:
    doc = _dump(_valid())
    assert _check_scores(_envelope(*[doc] * 10_000))
    assert _native.decode_scores(_envelope(*[doc] * 10_001)) is None
    assert _contract_scores(_envelope(*[doc] * 10_001))[0] == "error"


@pytest.mark.parametrize(
    ("over", "taken"),
    [
        ({}, True),
        ({"label": 0}, True),
        ({"label": True}, False),
        ({"label": False}, False),
        ({"label": 1.0}, False),
        ({"label": 2}, False),
        ({"label": -1}, False),
        ({"label": None}, False),
        ({"model": "x\n"}, False),
        ({"model": "a:b.c-d_e"}, True),
        ({"request_id": "é" * 256}, True),
        ({"request_id": "é" * 257}, False),
        ({"ts": "2026-11-27"}, False),
        ({"ts": "2026-11-27T00:00:00.00000049Z"}, False),
        ({"ts": "2026-11-27T00:00:00.5-05:30"}, True),
        ({"more": 1}, False),
    ],
)
def test_labels_agree_with_the_contract(over: dict[str, Any], taken: bool) -> None:
    good = {"request_id": "r-1", "model": "fraud-risk", "label": 1, "ts": "2026-11-27T00:00:00Z"}
    assert _check_label(json.dumps({**good, **over}).encode()) is taken


@pytest.mark.parametrize(
    ("raw", "taken"),
    [
        (b'{"request_id":"r","model":"m","label":-0,"ts":"2026-11-27T00:00:00Z"}', False),  # 0 to the contract
        (b'{"request_id":"r","model":"m","label":0e0,"ts":"2026-11-27T00:00:00Z"}', False),
        (b'{"request_id":"r","model":"m","label":01,"ts":"2026-11-27T00:00:00Z"}', False),
        (b'{"request_id":"r","model":"m","label":1,"label":0,"ts":"2026-11-27T00:00:00Z"}', False),
        (b'{"request_id":"r","model":"m","label":1}', False),
        (b' {"ts":"2026-11-27T00:00:00Z" , "label" : 0,"model":"m","request_id":"\\u00e9"}\n', True),
    ],
)
def test_raw_labels_agree_with_the_contract(raw: bytes, taken: bool) -> None:
    assert _check_label(raw) is taken


# -- the block functions: native, else the Python tiers ---------------------------------------------------


def test_decode_scores_block_takes_the_python_path_for_what_native_defers() -> None:
    raw = _dump(_valid(ts="2026-11-26T10:00:59.9999996Z"))  # 7 digits: native defers, the contract truncates
    assert _native.decode_scores(raw) is None
    (row,) = decode_scores_block(raw).rows()
    assert row[4] == datetime(2026, 11, 26, 10, 0, 59, 999999, tzinfo=UTC).timestamp()
    big = _dump(_valid(features={"big": 2**70}))
    assert _native.decode_scores(big) is None
    (row,) = decode_scores_block(big).rows()
    assert row[8] == {"big": float(2**70)}  # ints beyond 64 bits become floats in blocks (block.rs)
    both = _envelope(_dump(_valid()), raw)
    assert [r[4] for r in decode_scores_block(both).rows()] == [
        datetime(2026, 11, 26, 9, 0, 0, 123456, tzinfo=UTC).timestamp(),
        datetime(2026, 11, 26, 10, 0, 59, 999999, tzinfo=UTC).timestamp(),
    ]


def test_decode_scores_block_raises_the_contract_reason() -> None:
    for raw in (_dump(_valid(score=1.5)), _envelope(_dump(_valid()), _dump(_valid(role="x"))), b"nope", b"[]"):
        with pytest.raises(EventValidationError) as caught:
            decode_scores_block(raw)
        with pytest.raises(EventValidationError) as expected:
            decode_scores(raw)
        assert str(caught.value) == str(expected.value)


def test_decode_label_block() -> None:
    good = {"request_id": "r-1", "model": "fraud-risk", "label": 1, "ts": "2026-11-27T00:00:00Z"}
    assert decode_label_block(json.dumps(good).encode()).rows() == [
        ("r-1", "fraud-risk", 1, datetime(2026, 11, 27, tzinfo=UTC).timestamp())
    ]
    deferred = json.dumps({**good, "ts": "2026-11-27 00:00:00.5+01:00"}).encode()
    assert _native.decode_label(deferred) is None
    assert decode_label_block(deferred).rows() == [
        ("r-1", "fraud-risk", 1, datetime(2026, 11, 26, 23, 0, 0, 500000, tzinfo=UTC).timestamp())
    ]
    bad = json.dumps({**good, "label": True}).encode()
    with pytest.raises(EventValidationError) as caught:
        decode_label_block(bad)
    with pytest.raises(EventValidationError) as expected:
        decode_label(bad)
    assert str(caught.value) == str(expected.value)


# -- properties -------------------------------------------------------------------------------------------


class _Raw:
    """A value written into the JSON as is (a number literal the json module would not produce)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _json(value: Any, ascii_only: bool, spaced: bool, duplicate: str | None = None) -> str:
    if isinstance(value, _Raw):
        return value.text
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items()]
        if duplicate is not None and items:
            items.append(next((k, v) for k, v in items if k == duplicate) if duplicate in value else items[0])
        sep, colon = (", ", ": ") if spaced else (",", ":")
        return (
            "{"
            + sep.join(json.dumps(k, ensure_ascii=ascii_only) + colon + _json(v, ascii_only, spaced) for k, v in items)
            + "}"
        )
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True)


_NUMBER_TEXT = st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,4})?\Z")
_OFFSETS = st.one_of(
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+23:59", "-23:59", "+24:00", "+05:60"]),
    st.builds(lambda sign, h, m: f"{sign}{h:02d}:{m:02d}", st.sampled_from("+-"), st.integers(0, 23),
              st.integers(0, 59)),
)  # fmt: skip


@st.composite
def _wire_times(draw: st.DrawFn) -> str:
    """Timestamps of the native form, most valid, across the whole year range (and a few near misses)."""
    moment = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))  # noqa: DTZ001
    digits = draw(st.integers(0, 7))
    fraction = "" if digits == 0 else "." + f"{moment.microsecond:06d}{draw(st.integers(0, 9))}"[:digits]
    m = moment
    date = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    return date + fraction + draw(_OFFSETS)


_WIRE_TIMES = st.one_of(_wire_times(), _TIMES)


@st.composite
def _score_event(draw: st.DrawFn) -> dict[str, Any]:
    event = draw(_events()) if draw(st.booleans()) else _valid()  # half of them valid but for what follows
    if draw(st.integers(0, 2)) == 0:
        event["ts"] = draw(_WIRE_TIMES)
    if draw(st.integers(0, 3)) == 0:
        event[draw(st.sampled_from(["score", "latency_ms"]))] = _Raw(draw(_NUMBER_TEXT))
    elif draw(st.integers(0, 3)) == 0:  # near the bounds
        event[draw(st.sampled_from(["score", "latency_ms"]))] = draw(st.floats(-0.5, 1.5) | st.integers(-2, 2))
    if draw(st.integers(0, 4)) == 0:
        event["request_id"] = draw(st.text(min_size=250, max_size=260))
    features = event.get("features")
    if isinstance(features, dict) and draw(st.booleans()):
        features["n"] = _Raw(draw(_NUMBER_TEXT)) if draw(st.booleans()) else draw(_NUMBERS)
        features["s"] = draw(st.one_of(_TEXT, st.text(min_size=250, max_size=260)))
    return event


@st.composite
def _score_message(draw: st.DrawFn) -> bytes:
    events = draw(st.lists(_score_event(), min_size=0, max_size=3))
    ascii_only, spaced = draw(st.booleans()), draw(st.booleans())
    duplicate = draw(st.sampled_from([None] * 8 + sorted(_FIELD_VALUES)))
    docs = [_json(e, ascii_only, spaced, duplicate if i == 0 else None) for i, e in enumerate(events)]
    shape = draw(st.sampled_from(["envelope", "spaced", "single"]))
    if shape == "single" and docs:
        raw = docs[0]
    elif shape == "spaced":
        raw = ' { "events" : [ ' + " , ".join(docs) + " ] } "
    else:
        raw = '{"events":[' + ",".join(docs) + "]}"
    return raw.encode()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_score_message())
def test_property_native_scores_never_disagree_with_the_contract(raw: bytes) -> None:
    _check_scores(raw)


@st.composite
def _label_message(draw: st.DrawFn) -> bytes:
    label: dict[str, Any] = {"request_id": "r-1", "model": "fraud-risk", "label": 1, "ts": "2026-11-27T00:00:00Z"}
    values = {
        "request_id": _FIELD_VALUES["request_id"], "model": _FIELD_VALUES["model"], "ts": _WIRE_TIMES,
        "label": st.one_of(st.sampled_from([0, 1, 2, -1, True, False, 0.0, 1.0, None, "1"]),
                           _NUMBER_TEXT.map(_Raw)),
    }  # fmt: skip
    for name in draw(st.lists(st.sampled_from(sorted(values)), max_size=3, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            label.pop(name)
        else:
            label[name] = draw(values[name])
    if draw(st.integers(0, 9)) == 0:
        label["extra"] = 1
    return _json(label, draw(st.booleans()), draw(st.booleans())).encode()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_label_message())
def test_property_native_labels_never_disagree_with_the_contract(raw: bytes) -> None:
    _check_label(raw)


@settings(max_examples=800, deadline=None)
@given(
    st.datetimes(min_value=datetime(1684, 1, 1), max_value=datetime(2255, 12, 31)),  # noqa: DTZ001
    st.integers(-(24 * 60 - 1), 24 * 60 - 1),
)
def test_property_timestamps_are_exactly_python_timestamp(moment: datetime, offset_minutes: int) -> None:
    """Over the range native takes, its epoch seconds are datetime.timestamp() to the bit."""
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    text = aware.isoformat(timespec="microseconds")
    raw = _dump(_valid(ts=text))
    block = _native.decode_scores(raw)
    micros = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    if abs(micros) <= 2**53:
        assert block is not None, text
        assert block.rows()[0][4].hex() == aware.timestamp().hex()
    else:
        assert block is None
    _check_scores(raw)


@settings(max_examples=800, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, allow_infinity=False))
def test_property_floats_round_trip_bit_exactly(score: float, latency: float) -> None:
    block = _native.decode_scores(_dump(_valid(score=score, latency_ms=latency)))
    assert block is not None
    row = block.rows()[0]
    assert (row[5].hex(), row[6].hex()) == (score.hex(), latency.hex())
    assert not math.isnan(row[5])
