"""The wire contract: strict validation that names the field, canonical encoding, JSON Schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from governance.contract.wire import (
    MAX_BATCH_EVENTS,
    ScoreEvent,
    decode_label,
    decode_scores,
    encode,
    validate_label,
    validate_score,
)
from governance.errors import EventValidationError
from shadowgate.commands.publish import export_schemas

TS = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _score(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"request_id": "r-1", "model": "fraud", "version": "1.4.0", "role": "shadow",
                            "score": 0.25, "latency_ms": 12.5, "ts": TS}
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"score": 1.5}, "score"),
        ({"score": -0.01}, "score"),
        ({"score": float("nan")}, "score"),
        ({"score": float("inf")}, "score"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": float("nan")}, "latency_ms"),
        ({"ts": datetime(2026, 11, 1, 12, 0)}, "ts"),  # noqa: DTZ001 - the naive datetime under test
        ({"role": "staging"}, "role"),
        ({"request_id": ""}, "request_id"),
        ({"model": "bad model name"}, "model"),
        ({"features": {"x": float("nan")}}, "features.x"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_invalid_score_names_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(EventValidationError) as info:
        validate_score(_score(**over))
    assert info.value.field is not None
    assert info.value.field.startswith(field)
    assert field.split(".")[0] in str(info.value)


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamp_beyond_the_utc_range_is_a_validation_error(ts: str) -> None:
    # astimezone(UTC) overflows for these: it must be the contract's error (a dead letter), not an OverflowError.
    raw = orjson.dumps(_score(ts=ts))
    with pytest.raises(EventValidationError, match="ts") as info:
        decode_scores(raw)
    assert info.value.field == "ts"
    with pytest.raises(EventValidationError, match="ts"):
        decode_label(orjson.dumps({"request_id": "r", "model": "fraud", "label": 1, "ts": ts}))


def test_missing_request_id_names_the_field() -> None:
    data = _score()
    del data["request_id"]
    with pytest.raises(EventValidationError, match="request_id"):
        validate_score(data)


def test_timestamps_are_normalised_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    ev = validate_score(_score(ts=datetime(2026, 11, 1, 14, 0, tzinfo=plus2)))
    assert ev.ts == TS and ev.ts.utcoffset() == timedelta(0)


def test_encode_decode_round_trip_single_and_envelope() -> None:
    events = [validate_score(_score(request_id=f"r{i}", score=i / 10, features={"a": i, "c": "DE", "n": None}))
              for i in range(10)]
    for ev in events:
        assert decode_scores(encode(ev)) == [ev]
    envelope = orjson.dumps({"events": [orjson.loads(encode(e)) for e in events]})
    assert decode_scores(envelope) == events


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", "<json>"),
        (b"[1, 2]", "<root>"),
        (b'{"events": []}', "events"),
        (b'{"request_id":"r","model":"m","version":"v","role":"shadow","score":"0.5",'
         b'"latency_ms":1,"ts":"2026-01-01T00:00:00Z"}', "score"),
        (b'{"request_id":"r","model":"m","version":"v","role":"shadow","score":0.5,'
         b'"latency_ms":1,"ts":"2026-01-01T00:00:00"}', "ts"),
        (b'{"request_id":"r","model":"m","version":"v","role":"shadow","score":0.5,'
         b'"latency_ms":1,"ts":1767225600}', "ts"),
        (b'{"request_id":"r","model":"m","version":"v","role":"shadow","score":NaN,'
         b'"latency_ms":1,"ts":"2026-01-01T00:00:00Z"}', "<json>"),
    ],
)
def test_decode_rejects_bad_bytes_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_scores(raw)
    assert info.value.field is not None and info.value.field.startswith(field)


def test_envelope_size_is_bounded() -> None:
    one = orjson.loads(encode(validate_score(_score())))
    with pytest.raises(EventValidationError, match="events"):
        decode_scores(orjson.dumps({"events": [one] * (MAX_BATCH_EVENTS + 1)}))


def test_labels() -> None:
    label = validate_label({"request_id": "r", "model": "fraud", "label": 1, "ts": TS})
    assert decode_label(encode(label)) == label
    for bad in (b'{"request_id":"r","model":"m","label":2,"ts":"2026-01-01T00:00:00Z"}',
                b'{"request_id":"r","model":"m","label":true,"ts":"2026-01-01T00:00:00Z"}',
                b'{"request_id":"r","model":"m","label":"1","ts":"2026-01-01T00:00:00Z"}'):
        with pytest.raises(EventValidationError, match="label"):
            decode_label(bad)


def test_checked_in_json_schemas_are_current() -> None:
    folder = Path(__file__).resolve().parent.parent / "schemas"
    for name, text in export_schemas().items():
        path = folder / name
        assert path.exists(), f"{path} missing: run `shadowgate schemas`"
        assert path.read_text() == text, f"{path} is stale: run `shadowgate schemas`"


def test_schema_requires_the_contract_fields() -> None:
    schema = ScoreEvent.model_json_schema()
    assert set(schema["required"]) == {"request_id", "model", "version", "role", "score", "latency_ms", "ts"}
    assert schema["properties"]["score"]["maximum"] == 1.0
