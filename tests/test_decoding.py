"""The worker's msgspec decoder against the pydantic contract (governance.wire) as the oracle.

The fast path may refuse what the contract accepts (it then defers to the contract), but whatever it
accepts must be accepted by the contract with the same values, and every refusal must carry the
contract's reason. So each test compares whole outcomes: the events, or the error message.
"""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governance.contract.wire import decode_label, decode_scores
from governance.errors import EventValidationError
from shadowgate.traffic import TrafficSpec, generate
from streams.decode.decoder import FastScore, decode_label_fast, decode_scores_fast

_SCORE_FIELDS = ("request_id", "model", "version", "role", "score", "latency_ms", "ts", "error", "features")


def _outcome(decode: Any, raw: bytes) -> tuple[str, Any]:
    try:
        result = decode(raw)
    except EventValidationError as exc:
        return "error", str(exc)
    events = result if isinstance(result, list) else [result]
    fields = _SCORE_FIELDS if isinstance(result, list) else ("request_id", "model", "label", "ts")
    # Timestamps compare as instants: the contract normalises to UTC, msgspec keeps the offset.
    return "ok", [
        {name: (value.timestamp() if isinstance(value, datetime) else value)
         for name in fields for value in [getattr(e, name)]}
        for e in events
    ]  # fmt: skip


def _same(raw: bytes) -> tuple[str, Any]:
    fast, contract = _outcome(decode_scores_fast, raw), _outcome(decode_scores, raw)
    assert fast == contract, raw
    return fast


def _valid(**over: Any) -> dict[str, Any]:
    event = {"request_id": "r-1", "model": "fraud-risk", "version": "1.4.0", "role": "shadow", "score": 0.25,
             "latency_ms": 12.5, "ts": "2026-11-26T10:00:00.123456+01:00",
             "features": {"amount": 3, "cc": "NL"}}  # fmt: skip
    event.update(over)
    return event


def test_generated_traffic_decodes_fast_to_the_contract_values() -> None:
    spec = TrafficSpec(pairs=600, label_share=0.0, cand_error_rate=0.05, seed=11)
    events = [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in e.items() if k != "kind"}
              for e in generate(spec)]  # fmt: skip
    raw = orjson.dumps({"events": events})
    decoded = decode_scores_fast(raw)
    assert all(type(e) is FastScore for e in decoded)  # the fast path took it
    kind, values = _same(raw)
    assert kind == "ok" and len(values) == len(events) == 1200
    assert sum(v["error"] is not None for v in values) > 0
    single = orjson.dumps(events[7])
    assert type(decode_scores_fast(single)[0]) is FastScore
    _same(single)


def test_fast_events_are_not_tracked_by_the_garbage_collector() -> None:
    event = decode_scores_fast(orjson.dumps(_valid()))[0]
    assert type(event) is FastScore and not gc.is_tracked(event)


@pytest.mark.parametrize(
    "over",
    [
        {"model": "fraud-risk\n"},  # Python's $ would match before the newline; the contract's does not
        {"version": "1.4.0 "},
        {"model": "a" * 129},
        {"request_id": ""},
        {"role": "Shadow"},
        {"score": 1.0000001},
        {"score": True},
        {"score": "0.5"},
        {"latency_ms": -0.0001},
        {"latency_ms": 1e400},  # out of range for a double: not infinity
        {"ts": "2026-11-26T10:00:00"},  # naive
        {"ts": "2026-11-26T10:00:59.9999996Z"},  # 7 fraction digits: msgspec rounds, the contract truncates
        {"ts": "2026-11-26T10:00:00.1234567891+01:00"},
        {"ts": "2026-11-26T10:00:00+24:00"},
        {"ts": "9999-12-31T23:59:59-01:00"},  # year 10000 in UTC: msgspec took it, the contract refuses it
        {"ts": "0001-01-01T00:30:00+01:00"},  # year 0 in UTC
        {"ts": "9999-12-31T23:59:59+01:00"},  # still year 9999 in UTC: both take it
        {"ts": "2026-11-26 10:00:00z"},
        {"ts": 1764151200},
        {"error": "x" * 1025},
        {"features": {"bad name": 1}},
        {"features": {"ok": float("nan")}},
        {"features": {"ok": True}},
        {"features": {"ok": 2**70}},  # a big int: the contract takes it, msgspec may not
        {"features": {"ok": "v" * 257}},
        {"features": {f"f{i}": i for i in range(257)}},
        {"features": []},
        {"extra": 1},
    ],
)
def test_edge_cases_match_the_contract(over: dict[str, Any]) -> None:
    raw = json.dumps(_valid(**over)).encode()
    _same(raw)
    _same(b'{"events":[' + raw + b"," + json.dumps(_valid(request_id="r-2")).encode() + b"]}")


def test_sub_microsecond_timestamps_take_the_contract_path() -> None:
    raw = json.dumps(_valid(ts="2026-11-26T10:00:59.9999996Z")).encode()
    (event,) = decode_scores_fast(raw)
    assert type(event) is not FastScore
    assert event.ts == datetime(2026, 11, 26, 10, 0, 59, 999999, tzinfo=UTC)  # truncated, not rounded


def test_envelope_limits_and_bad_bytes_match_the_contract() -> None:
    for raw in (b'{"events":[]}', b'{"events":{}}', b"[]", b"not json", b'{"events":[1]}', b"",
                b'{"events":[' + b",".join([json.dumps(_valid()).encode()] * 10_001) + b"]}",
                b'{"request_id":"r","request_id":"s"}', b'{"events":[{"score":NaN}]}'):  # fmt: skip
        assert _same(raw)[0] == "error"


def test_labels_match_the_contract() -> None:
    good = {"request_id": "r-1", "model": "fraud-risk", "label": 1, "ts": "2026-11-27T00:00:00Z"}
    assert type(decode_label_fast(json.dumps(good).encode())).__name__ == "FastLabel"
    for over in ({}, {"label": True}, {"label": 2}, {"label": 1.0}, {"model": "x\n"}, {"ts": "2026-11-27"},
                 {"ts": "2026-11-27T00:00:00.00000049Z"}, {"more": 1}, {"ts": "9999-12-31T23:30:00-00:45"},
                 {"ts": "0001-01-01T00:00:00+00:01"}, {"ts": "0001-01-01T00:00:00-00:01"}):  # fmt: skip
        raw = json.dumps({**good, **over}).encode()
        assert _outcome(decode_label_fast, raw) == _outcome(decode_label, raw), over


# -- property: over arbitrary mixes of valid and invalid field values, the outcomes are equal -----------

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_NAMES = st.one_of(st.sampled_from(["fraud-risk", "1.4.0", "a:b", "a.b-c_d", "x\n", " x", "é", ""]),
                   st.text(alphabet="ab:._-\n /", min_size=0, max_size=6))  # fmt: skip
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70), st.booleans(), st.none(), _TEXT,
    st.sampled_from([0, 1, 0.0, 1.0, -0.0, 5e-324, 1.7976931348623157e308]),
)
_TIMES = st.one_of(
    st.sampled_from([
        "2026-11-26T10:00:00Z", "2026-11-26T10:00:00.5+05:30", "2026-11-26T10:00:00.123456-00:00",
        "2026-11-26T10:00:00.1234567Z", "2026-11-26t10:00:00Z", "2026-11-26 10:00:00Z", "2026-11-26T10:00Z",
        "2026-11-26T10:00:00+0100", "2026-11-26T10:00:00+01", "2026-02-30T10:00:00Z", "2026-11-26T10:00:60Z",
        "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2026-11-26T10:00:00+23:59", "2026-11-26",
        "9999-12-31T23:59:59-00:01", "0001-01-01T00:00:00+00:01", "9999-12-31T12:00:00+23:59",
    ]),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda d: d.isoformat()),
    _TEXT,
)  # fmt: skip
_FEATURES = st.one_of(st.none(), st.dictionaries(_NAMES, _NUMBERS, max_size=4), _NUMBERS)
_FIELD_VALUES = {
    "request_id": st.one_of(st.just("r-1"), _TEXT, _NUMBERS),
    "model": _NAMES, "version": _NAMES,
    "role": st.sampled_from(["production", "shadow", "canary", "PRODUCTION", "", None]),
    "score": _NUMBERS, "latency_ms": _NUMBERS, "ts": _TIMES,
    "error": st.one_of(st.none(), _TEXT, _NUMBERS), "features": _FEATURES,
}  # fmt: skip


@st.composite
def _events(draw: st.DrawFn) -> dict[str, Any]:
    event = _valid()
    for name in draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=3, unique=True)):
        if draw(st.integers(0, 9)) == 0:
            event.pop(name, None)
        else:
            event[name] = draw(_FIELD_VALUES[name])
    return event


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_events(), min_size=1, max_size=3), st.booleans())
def test_property_fast_path_never_disagrees_with_the_contract(events: list[dict[str, Any]], envelope: bool) -> None:
    docs = [json.dumps(e, allow_nan=True).encode() for e in events]  # NaN/Infinity tokens too
    _same(b'{"events":[' + b",".join(docs) + b"]}" if envelope else docs[0])
