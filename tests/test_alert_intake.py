"""Intake for alert delivery: only messages whose ML-DSA signature verifies become inputs; the rest are
rejected with the reason, whatever they claim."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from governance.contract.kafkaio import Record
from governance.contract.publishing import encode_signed_event
from governance.crypto.keyring import Keyring
from governance.crypto.record import record_bytes
from governance.lifecycle.audit import EntryBody, Input, seal
from governance.lifecycle.identities import Trust, load_trust, system_signer
from governance.service.alerting.intake import Rejected, Source, VerifiedEntry, VerifiedEvent, verify
from tests.alerting_samples import alert, rollback
from tests.governance_kit import make_keys


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("intake"))


@pytest.fixture(scope="module")
def trust(keys_dir: Path) -> Trust:
    return load_trust(keys_dir)


def _now() -> datetime:
    return datetime.now(UTC)


def _check(value: bytes, trust: Trust, source: Source = "alerts") -> VerifiedEvent | VerifiedEntry | Rejected:
    return verify(Record(f"shadow.{source}", 0, 7, b"fraud", value), source, trust.system, _now(), trust.phase(_now()))


def test_a_signed_alert_verifies_and_keeps_its_record(keys_dir: Path, trust: Trust) -> None:
    event = alert()
    raw = encode_signed_event(event, system_signer(keys_dir, _now()), _now())
    checked = _check(raw, trust)
    assert isinstance(checked, VerifiedEvent) and checked.event == event
    assert checked.record == orjson.loads(raw) and checked.key_id == orjson.loads(raw)["signature"]["key_id"]
    assert checked.origin.position == "shadow.alerts[0]@7"


def test_forged_unsigned_foreign_and_garbage_messages_are_rejected_with_their_reason(
        keys_dir: Path, trust: Trust, tmp_path: Path) -> None:
    signer = system_signer(keys_dir, _now())
    genuine = orjson.loads(encode_signed_event(alert(), signer, _now()))
    forged = {**genuine, "payload": {**genuine["payload"], "severity": "info"}}
    foreign_keys = tmp_path / "other"
    Keyring(foreign_keys).generate(_now())
    foreign = encode_signed_event(alert(), Keyring(foreign_keys).signer(_now()), _now())
    cases: dict[str, tuple[bytes, str]] = {
        "forged": (orjson.dumps(forged), "bad_signature"),
        "unsigned": (orjson.dumps(alert().model_dump(mode="json")), "unsigned"),
        "bare record": (orjson.dumps({"payload": genuine["payload"]}), "unsigned"),
        "foreign key": (foreign, "unknown_key"),
        "not json": (b"\x00garbage", "invalid"),
        "a list": (b"[1, 2]", "invalid"),
    }
    for name, (value, reason) in cases.items():
        checked = _check(value, trust)
        assert isinstance(checked, Rejected), name
        assert checked.reason == reason, (name, checked.message)
    claims = _check(orjson.dumps(forged), trust)
    assert isinstance(claims, Rejected) and claims.claims["model"] == "fraud" and claims.claims["type"] == "Alert"


def test_a_signed_record_that_is_not_an_event_is_invalid_after_verifying(keys_dir: Path, trust: Trust) -> None:
    from governance.crypto.record import sign_record
    from governance.crypto.signing import Context

    record = sign_record({"type": "Alert", "model": "fraud"}, Context.EVENT, system_signer(keys_dir, _now()), _now())
    checked = _check(orjson.dumps(record), trust)
    assert isinstance(checked, Rejected) and checked.reason == "invalid"


def test_audit_entries_verify_under_their_own_context_only(keys_dir: Path, trust: Trust) -> None:
    signer = system_signer(keys_dir, _now())
    body = EntryBody(at=_now(), input=Input(topic="t", partition=0, offset=0, digest="0" * 64), outcome="recorded",
                     rollback=rollback("fraud", "2.0.0", None, "FAILED"))
    record = seal(body, 0, "0" * 64, signer, _now())
    checked = _check(record_bytes(record), trust, "audit")
    assert isinstance(checked, VerifiedEntry) and checked.entry.rollback is not None
    assert checked.source_id == "audit:shadow.audit:0"
    as_event = _check(record_bytes(record), trust, "alerts")  # an audit entry is no event: wrong context
    assert isinstance(as_event, Rejected) and as_event.reason == "bad_signature"
    event_record = encode_signed_event(alert(), signer, _now())
    as_entry = _check(event_record, trust, "audit")
    assert isinstance(as_entry, Rejected) and as_entry.reason == "bad_signature"
