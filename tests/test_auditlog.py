"""The audit log's chain: every entry signed and linked; verify_chain names the FIRST broken entry."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governance.contract.stages import Stage
from governance.crypto.algorithms import Algorithm
from governance.crypto.canonical import canonical_bytes
from governance.crypto.keys import KeyPolicy, TrustStore, generate_key
from governance.crypto.signing import Signer
from governance.lifecycle.audit import GENESIS, EntryBody, Input, Rejection, entry_hash, parse_entry, seal
from governance.lifecycle.chain import verify_chain
from governance.lifecycle.ledger import ApprovalRecorded, DocumentRecorded, Registered

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
Keys = tuple[Signer, TrustStore, Signer]


def _signer() -> tuple[Signer, TrustStore]:
    info, secret = generate_key(Algorithm.ML_DSA_65, T0 - timedelta(days=1), KeyPolicy())
    return Signer(info, secret), TrustStore([info])


@pytest.fixture(scope="module")
def keys() -> Keys:
    signer, store = _signer()
    stranger, _ = _signer()
    return signer, store, stranger


def _body(i: int) -> EntryBody:
    at = T0 + timedelta(minutes=i)
    source = Input(topic="governance.commands", partition=0, offset=i, digest=hashlib.sha256(bytes([i])).hexdigest(),
                   kind="command", id=f"cmd-{i}", type="propose", actor="GID-02")
    if i == 0:
        facts: list[Any] = [Registered(event_id="cmd-0#0", at=at, model="fraud", version="1.0.0",
                                       model_type="classification")]
    elif i % 3 == 0:
        return EntryBody(at=at, input=source, outcome="rejected",
                         rejection=Rejection(reason="refused", message="no", rules=["[7.1] rule"]))
    elif i % 2:
        facts = [DocumentRecorded(event_id=f"cmd-{i}#0", at=at, model="fraud", version="1.0.0",
                                  stage=Stage.PROPOSAL, name="proposal", text=f"# Proposal {i}\n")]
    else:
        facts = [ApprovalRecorded(event_id=f"cmd-{i}#0", at=at, model="fraud", version="1.0.0", approver="GID-02",
                                  target=Stage.PROTOTYPE)]
    return EntryBody(at=at, input=source, outcome="applied", facts=facts)


def _chain(signer: Signer, n: int) -> list[dict[str, Any]]:
    records, head = [], GENESIS
    for i in range(n):
        record = seal(_body(i), i, head, signer, T0 + timedelta(minutes=i))
        records.append(record)
        head = entry_hash(record)
    return records


@pytest.fixture(scope="module")
def chain(keys: Keys) -> list[dict[str, Any]]:
    return _chain(keys[0], 8)


def _copy(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [orjson.loads(orjson.dumps(r)) for r in records]


def test_intact_chain_verifies_with_its_head(chain: list[dict[str, Any]], keys: Keys) -> None:
    report = verify_chain(_copy(chain), keys[1], NOW)
    assert report.ok and report.entries == 8 and report.broken_index is None
    # The head is the SHA-256 of the last record's canonical bytes, computed here independently.
    assert report.head == hashlib.sha256(canonical_bytes(chain[-1])).hexdigest()
    # Each entry links to the previous one's hash, the first to 64 zeros.
    for i, record in enumerate(chain):
        expected = GENESIS if i == 0 else hashlib.sha256(canonical_bytes(chain[i - 1])).hexdigest()
        assert record["payload"]["prev_hash"] == expected and record["payload"]["seq"] == i


def test_wire_bytes_verify_like_dicts(chain: list[dict[str, Any]], keys: Keys) -> None:
    assert verify_chain([canonical_bytes(r) for r in chain], keys[1], NOW).ok


def test_empty_log_is_ok_with_genesis_head(keys: Keys) -> None:
    report = verify_chain([], keys[1], NOW)
    assert report.ok and report.entries == 0 and report.head == GENESIS


def _tamper_payload(records: list[dict[str, Any]], i: int) -> None:
    records[i]["payload"]["at"] = (T0 + timedelta(days=3)).isoformat()


def _flip_signature(records: list[dict[str, Any]], i: int) -> None:
    raw = bytearray(base64.b64decode(records[i]["signature"]["sig"]))
    raw[17] ^= 0x01
    records[i]["signature"]["sig"] = base64.b64encode(bytes(raw)).decode()


def test_tampered_payload_is_the_first_broken_entry(chain: list[dict[str, Any]],
                                                    keys: Keys) -> None:
    records = _copy(chain)
    _tamper_payload(records, 4)
    _tamper_payload(records, 6)
    report = verify_chain(records, keys[1], NOW)
    assert not report.ok and report.broken_index == 4 and report.broken_seq == 4 and report.entries == 4
    assert "VerificationError" in (report.problem or "")
    assert "entry #4 (seq 4)" in str(report)


def test_bad_signature_is_found(chain: list[dict[str, Any]], keys: Keys) -> None:
    records = _copy(chain)
    _flip_signature(records, 2)
    report = verify_chain(records, keys[1], NOW)
    assert (report.ok, report.broken_index) == (False, 2)


def test_reordered_entries_break_at_the_first_moved_one(chain: list[dict[str, Any]],
                                                        keys: Keys) -> None:
    records = _copy(chain)
    records[3], records[5] = records[5], records[3]
    report = verify_chain(records, keys[1], NOW)
    assert (report.broken_index, report.broken_seq) == (3, 5) and "seq 5 where 3" in (report.problem or "")


def test_missing_entry_is_found(chain: list[dict[str, Any]], keys: Keys) -> None:
    records = _copy(chain)
    del records[5]
    report = verify_chain(records, keys[1], NOW)
    assert (report.broken_index, report.broken_seq, report.entries) == (5, 6, 5)


def test_re_signed_tampered_entry_breaks_the_next_link(chain: list[dict[str, Any]],
                                                       keys: Keys) -> None:
    """An attacker holding the key re-signs a tampered entry: its own signature is fine, the next link is not."""
    signer, store, _ = keys
    records = _copy(chain)
    entry = parse_entry(records[3]["payload"])
    forged = entry.model_copy(update={"outcome": "recorded"})
    body = EntryBody.model_validate(forged.model_dump(exclude={"seq", "prev_hash"}))
    records[3] = orjson.loads(orjson.dumps(seal(body, 3, entry.prev_hash, signer, T0)))
    report = verify_chain(records, store, NOW)
    assert report.broken_index == 4 and "prev_hash" in (report.problem or "")


def test_entry_signed_by_an_untrusted_key_is_found(chain: list[dict[str, Any]],
                                                   keys: Keys) -> None:
    _, store, stranger = keys
    records = _copy(chain)
    entry = parse_entry(records[1]["payload"])
    body = EntryBody.model_validate(entry.model_dump(exclude={"seq", "prev_hash"}))
    records[1] = orjson.loads(orjson.dumps(seal(body, 1, entry.prev_hash, stranger, T0)))
    report = verify_chain(records, store, NOW)
    assert report.broken_index == 1 and "not in the trust store" in (report.problem or "")


def test_garbage_line_is_reported(chain: list[dict[str, Any]], keys: Keys) -> None:
    lines: list[bytes | dict[str, Any]] = [canonical_bytes(r) for r in chain]
    lines[2] = b"{not json"
    assert verify_chain(lines, keys[1], NOW).broken_index == 2


_TAMPERS = {"payload": _tamper_payload, "signature": _flip_signature}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_first_break_property(chain: list[dict[str, Any]], keys: Keys,
                              data: st.DataObject) -> None:
    """Any set of tampered / dropped / swapped entries: the report names the smallest affected index."""
    records = _copy(chain)
    kinds = data.draw(st.lists(st.tuples(st.sampled_from(["payload", "signature", "drop", "swap"]),
                                         st.integers(0, len(chain) - 2)), min_size=1, max_size=3))
    for kind, i in kinds:
        if i >= len(records) - 1:
            continue
        if kind == "drop":
            del records[i]
        elif kind == "swap":
            records[i], records[i + 1] = records[i + 1], records[i]
        else:
            _TAMPERS[kind](records, i)
    # Oracle: the first position whose record is not the genuine one (the tail is never dropped here).
    differs = [j for j, record in enumerate(records) if canonical_bytes(record) != canonical_bytes(chain[j])]
    report = verify_chain(records, keys[1], NOW)
    if not differs:
        assert report.ok
        return
    assert not report.ok and report.broken_index == differs[0] and report.entries == differs[0]
