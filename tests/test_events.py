"""Governance event schemas: JSON round trip, canonical payload without signature, strict validation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from governance.contract.events import (
    Alert,
    Escalation,
    Evidence,
    GateBlocked,
    GateReady,
    RecalibrationRequested,
    RollbackTrigger,
    Versions,
    parse_event,
)
from governance.contract.findings import Check, StatResult, WindowRef
from governance.errors import EventValidationError
from governance.policy.document import load_policy
from tests.governance_factory import T0, snapshot

TS = T0 + timedelta(days=14)
CHECK = Check(name="auc_roc", outcome="FAIL", value=0.65, threshold=0.7, comparator="<=", enforcement="BLOCK",
              samples=5000, message="auc_roc 0.65 <= 0.7 (BLOCK)")


def _envelope(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "ts": TS,
        "expires_at": TS + timedelta(days=1),
        "model": "fraud-risk",
        "versions": Versions(production="1.4.0", candidate="1.5.0", role="shadow"),
        "evidence": Evidence(
            policy_hash=load_policy().hash(),
            checks=[CHECK],
            windows=[WindowRef.of(snapshot())],
            statistics=[StatResult(test="paired_t", n=30_000, statistic=1.5, p_value=0.13)],
        ),
    }
    base.update(overrides)
    return base


EVENTS = [
    GateReady(**_envelope(), gate="shadow_completion", stage="SHADOW"),
    GateBlocked(**_envelope(), gate="shadow_completion", stage="SHADOW", verdict="BLOCKED", failing_checks=[CHECK]),
    RollbackTrigger(**_envelope(), trigger="error_rate", action="immediate", reason="error_rate 0.05 > 0.01",
                    from_version="1.5.0", to_version="1.4.0"),
    Alert(**_envelope(), severity="warning", dedup_key="k|kl", summary="KL 0.3 > 0.25", runbook="review-score-shift"),
    Escalation(**_envelope(), raised_by="alex@example.com", reason="customer complaint",
               blocks_until=TS + timedelta(days=7)),
    RecalibrationRequested(**_envelope(), calibration_drift=0.12, threshold=0.1, reason="calibration_drift 0.12 > 0.1"),
]


@pytest.mark.parametrize("event", EVENTS, ids=[e.type for e in EVENTS])
def test_json_round_trip(event: Any) -> None:
    data = event.to_json()
    parsed = parse_event(data)
    assert parsed == event
    assert type(parsed) is type(event)
    assert parsed.to_json() == data
    assert orjson.loads(data)["type"] == event.type


@pytest.mark.parametrize("event", EVENTS, ids=[e.type for e in EVENTS])
def test_canonical_payload_excludes_the_signature_and_survives_the_round_trip(event: Any) -> None:
    signed = event.model_copy(update={"signature": {"alg": "ML-DSA-65", "key_id": "k1", "sig": "AAAA"}})
    assert signed.canonical_payload() == event.canonical_payload()
    assert parse_event(signed.to_json()).canonical_payload() == event.canonical_payload()
    assert parse_event(signed.to_json()).signature == signed.signature
    assert b"signature" not in event.canonical_payload()
    moved = event.model_copy(update={"model": "another-model"})
    assert moved.canonical_payload() != event.canonical_payload()


def test_canonical_payload_is_sorted_compact_json() -> None:
    payload = EVENTS[0].canonical_payload()
    decoded = orjson.loads(payload)
    assert payload == orjson.dumps(decoded, option=orjson.OPT_SORT_KEYS)
    assert decoded["evidence"]["checks"][0]["threshold"] == 0.7


def test_timestamps_are_normalised_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    envelope = _envelope(ts=TS.astimezone(plus_two), expires_at=(TS + timedelta(hours=1)).astimezone(plus_two))
    event = GateReady(**envelope, gate="g", stage="STAGING")
    assert event.ts.utcoffset() == timedelta(0)
    assert event.ts == TS
    assert b'"ts":"2026-03-16T00:00:00Z"' in event.to_json()


def _json(event: Any, **changes: Any) -> bytes:
    data = orjson.loads(event.to_json())
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[leaf] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"surprise": 1}, "surprise"),
        ({"ts": "2026-03-16T00:00:00"}, "ts"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"action": "rollback_everything"}, "action"),
        ({"evidence__policy_hash": "abc"}, "evidence.policy_hash"),
        ({"to_version": 3}, "to_version"),
        ({"type": "GateOpened"}, "type"),
        ({"evidence__checks__0__outcome": "MAYBE"}, "evidence.checks.0.outcome"),
    ],
)
def test_invalid_events_fail_closed_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(EventValidationError) as info:
        parse_event(_json(EVENTS[2], **changes))
    assert f": {field}: " in str(info.value)
    assert info.value.field == field


def test_nan_and_impossible_events_are_refused() -> None:
    data = EVENTS[1].to_json().replace(b'"value":0.65', b'"value":NaN')
    with pytest.raises(EventValidationError):
        parse_event(data)
    with pytest.raises(ValueError, match="expires_at"):
        GateReady(**_envelope(expires_at=TS), gate="g", stage="SHADOW")
    with pytest.raises(ValueError, match="READY"):
        GateBlocked(**_envelope(), gate="g", stage="SHADOW", verdict="READY", failing_checks=[CHECK])
    with pytest.raises(ValueError, match="failing_checks"):
        GateBlocked(**_envelope(), gate="g", stage="SHADOW", verdict="BLOCKED", failing_checks=[])
    with pytest.raises(ValueError, match="timezone"):
        GateReady(**_envelope(ts=datetime(2026, 3, 16)), gate="g", stage="SHADOW")  # noqa: DTZ001


def test_escalation_blocks_until_is_utc() -> None:
    event = EVENTS[4]
    assert isinstance(event, Escalation)
    assert event.blocks_until == TS + timedelta(days=7)
    assert event.blocks_until.tzinfo is not None and event.blocks_until.utcoffset() == timedelta(0)
    assert parse_event(event.to_json()).blocks_until == event.blocks_until  # type: ignore[union-attr]
    assert event.ts.tzinfo == UTC or event.ts.utcoffset() == timedelta(0)
