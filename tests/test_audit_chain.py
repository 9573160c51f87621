"""The pure reading of the audit log (no broker): classification, acknowledgements, revocations recorded in the
chain, the checkpoint anchor, repair planning, and the rejection tally."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from governance.crypto.algorithms import Algorithm
from governance.crypto.keys import KeyPolicy, TrustStore, generate_key, refuse_writable
from governance.crypto.live import fingerprint
from governance.crypto.record import record_bytes
from governance.crypto.signing import Signer
from governance.errors import ConfigError
from governance.lifecycle.audit import (
    GENESIS,
    AcknowledgedRecord,
    EntryBody,
    Input,
    KeyRevocation,
    Rejection,
    Repair,
    VoidEntry,
    entry_hash,
    seal,
    system_input,
)
from governance.lifecycle.chain import NO_CHECKPOINT, check_anchor, read_items, verify_chain, walk
from governance.lifecycle.checkpoint import Checkpoint
from governance.lifecycle.intake import Refused
from governance.lifecycle.rejections import RejectionTally
from governance.lifecycle.repair import plan_repair
from governance.lifecycle.state import GovernanceState, fold

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)


@pytest.fixture(scope="module")
def keys() -> tuple[Signer, Signer, TrustStore]:
    first, first_secret = generate_key(Algorithm.ML_DSA_65, T0 - timedelta(days=1), KeyPolicy())
    second, second_secret = generate_key(Algorithm.ML_DSA_65, T0 - timedelta(days=1), KeyPolicy())
    return Signer(first, first_secret), Signer(second, second_secret), TrustStore([first, second])


def _body(i: int, **fields: Any) -> EntryBody:
    source = Input(topic="governance.commands", partition=0, offset=i, digest="0" * 64, kind="command", id=f"c{i}")
    return EntryBody(at=T0 + timedelta(minutes=i), input=source, outcome="recorded", **fields)


def _chain(signer: Signer, n: int, start: int = 0, head: str = GENESIS) -> list[dict[str, Any]]:
    records = []
    for i in range(start, start + n):
        records.append(seal(_body(i), i, head, signer, T0 + timedelta(minutes=i)))
        head = entry_hash(records[-1])
    return records


def _cp(seq: int, head: str, offset: int = 0) -> Checkpoint:
    return Checkpoint(topic="governance.lifecycle", seq=seq, head=head, at=T0, offset=offset)


def test_acknowledged_foreign_records_and_duplicates_verify_and_are_listed(keys: tuple[Signer, Signer,
                                                                                        TrustStore]) -> None:
    signer, _, store = keys
    records = _chain(signer, 3)
    junk = b"18 bytes of junk!!"
    lines: list[bytes] = [record_bytes(records[0]), junk, record_bytes(records[1]), record_bytes(records[0])]
    unacked = verify_chain(lines, store, NOW)
    assert not unacked.ok and unacked.broken_index == 1 and unacked.entries == 1
    notes = [AcknowledgedRecord(digest=hashlib.sha256(junk).hexdigest(), kind="foreign", detail="junk"),
             AcknowledgedRecord(digest=hashlib.sha256(lines[3]).hexdigest(), kind="duplicate", detail="copy")]
    ack = seal(EntryBody(at=T0, input=system_input("governance.lifecycle", "foreign_records", "test"),
                         outcome="recorded", repair=Repair(reason="seen", operator="test", acknowledged=notes)),
               2, entry_hash(records[1]), signer, T0)
    report = verify_chain([*lines, record_bytes(ack)], store, NOW, checkpoints=[_cp(2, entry_hash(ack))])
    assert report.ok and report.entries == 3 and report.repairs == (2,)
    assert [(a.kind, a.item.index, a.acknowledged_by) for a in report.anomalies] == [("foreign", 1, 2),
                                                                                    ("duplicate", 3, 2)]
    assert "the newest checkpoint matches the log" in str(report)


def test_entries_by_a_key_after_the_chain_recorded_its_revocation_are_foreign(keys: tuple[Signer, Signer,
                                                                                           TrustStore]) -> None:
    old, new, store = keys
    records = _chain(old, 2)
    revoked = KeyRevocation(store="system", key_id=old.key_id, revoked_at=T0 + timedelta(hours=5), reason="leak")
    note = seal(EntryBody(at=T0, input=system_input("l", "key_revoked", "c"), outcome="recorded", revoked=[revoked]),
                2, entry_hash(records[1]), new, T0 + timedelta(hours=6))
    # Signed with the old key and backdated before its revocation: valid as a signature, refused by the chain.
    backdated = seal(_body(3), 3, entry_hash(note), old, T0 + timedelta(hours=1))
    chain = walk(read_items([*records, note, backdated], store, NOW))
    assert len(chain.links) == 3 and chain.broken is None
    assert chain.anomalies[0].kind == "foreign"
    assert "revocation the chain recorded at seq 2" in chain.anomalies[0].detail
    state = GovernanceState()
    for entry, digest in chain.entries():
        state = fold(state, entry, digest)
    assert state.revoked == {old.key_id: 2} and "l:0" not in state.positions  # a system entry covers no input


def test_the_anchor_catches_a_short_or_different_log_and_respects_a_superseding_repair(
        keys: tuple[Signer, Signer, TrustStore]) -> None:
    signer, _, store = keys
    records = _chain(signer, 4)
    heads = [entry_hash(r) for r in records]
    chain = walk(read_items(records[:3], store, NOW))
    assert check_anchor(chain, []) == NO_CHECKPOINT and check_anchor(walk([]), []) is None
    assert check_anchor(chain, [_cp(1, heads[1]), _cp(2, heads[2])]) is None
    assert "entries 3..3 are missing" in (check_anchor(chain, [_cp(3, heads[3], offset=7)]) or "")
    assert "hashes to" in (check_anchor(chain, [_cp(2, heads[1])]) or "")
    repair = seal(EntryBody(at=T0, input=system_input("l", "repair", "ops"), outcome="recorded",
                            repair=Repair(reason="cut", operator="ops", supersedes_checkpoints=True)),
                  3, heads[2], signer, T0)
    repaired = walk(read_items([*records[:3], repair], store, NOW))
    stale = [_cp(3, heads[3], offset=1)]
    assert check_anchor(repaired, stale) == NO_CHECKPOINT  # only checkpoints after the repair's own count
    assert check_anchor(repaired, [*stale, _cp(3, entry_hash(repair), offset=2)]) is None


def test_plan_repair_of_a_fork_needs_a_head_and_voids_the_other_branch(keys: tuple[Signer, Signer,
                                                                                   TrustStore]) -> None:
    signer, _, store = keys
    trunk = _chain(signer, 3)
    branch = _chain(signer, 2, start=2, head=entry_hash(trunk[1]))  # another entry 2 and its successor
    orphan = seal(_body(9), 9, "f" * 64, signer, T0)  # links to nothing
    items = read_items([*trunk, branch[0], branch[1], orphan, b"junk"], store, NOW)
    with pytest.raises(ConfigError, match="the log forks: choose the head .* --head HASH, one of: seq 3 head"):
        plan_repair(items, [])
    plan = plan_repair(items, [], head=entry_hash(trunk[2])[:10])
    assert (plan.next_seq, plan.prev_hash) == (3, entry_hash(trunk[2]))
    assert sorted(v.hash for v in plan.void) == sorted([entry_hash(branch[0]), entry_hash(branch[1]),
                                                        entry_hash(orphan)])
    assert [a.kind for a in plan.acknowledge] == ["foreign"]
    longest = plan_repair(items, [], head=entry_hash(branch[1])[:10])
    assert longest.next_seq == 4 and [v.seq for v in longest.void] == [2, 9]
    with pytest.raises(ConfigError, match="matches 0 entries"):
        plan_repair(items, [], head="0123456789")
    entry = seal(EntryBody(at=T0, input=system_input("l", "repair", "ops"), outcome="recorded",
                           repair=plan.repair("fork", "ops")), plan.next_seq, plan.prev_hash, signer, T0)
    after = verify_chain([*trunk, branch[0], branch[1], orphan, b"junk", entry], store, NOW)
    assert after.ok and after.entries == 4 and [a.kind for a in after.anomalies] == ["void", "void", "void",
                                                                                      "foreign"]


def test_plan_repair_of_a_gap_continues_before_it_and_supersedes_checkpoints(keys: tuple[Signer, Signer,
                                                                                         TrustStore]) -> None:
    signer, _, store = keys
    records = _chain(signer, 5)
    items = read_items([records[0], records[1], records[3], records[4]], store, NOW)
    plan = plan_repair(items, [_cp(4, entry_hash(records[4]))])
    assert plan.head is not None and plan.head.seq == 1 and [v.seq for v in plan.void] == [3, 4]
    assert plan.supersedes_checkpoints
    assert not plan_repair(items, []).supersedes_checkpoints


def test_the_tally_summarises_per_partition_with_offsets_counts_and_bounded_samples() -> None:
    tally = RejectionTally(timedelta(seconds=5), samples_per_reason=2)
    for offset in range(10):
        reason = "invalid" if offset % 3 else "unsigned"
        source = Input(topic="governance.commands", partition=0, offset=offset + 100,
                       digest=hashlib.sha256(bytes([offset])).hexdigest())
        tally.add(Refused(source, Rejection(reason=reason, message="x" * 1000)), T0 + timedelta(seconds=offset / 10))
    tally.add(Refused(Input(topic="shadow.gates", partition=0, offset=7, digest="a" * 64),
                      Rejection(reason="bad_signature", message="altered")), T0)
    assert len(tally) == 11 and not tally.due(T0 + timedelta(seconds=4.9)) and tally.due(T0 + timedelta(seconds=5))
    commands, gates = tally.drain(T0 + timedelta(seconds=5))  # sorted by topic, partition
    assert len(tally) == 0 and not tally.due(T0 + timedelta(days=1))
    assert commands.summary is not None and commands.input.offset == 109 and commands.outcome == "rejected"
    assert (commands.summary.first_offset, commands.summary.last_offset, commands.summary.count) == (100, 109, 10)
    assert commands.summary.counts == {"invalid": 6, "unsigned": 4}
    assert [s.offset for s in commands.summary.samples] == [100, 101, 102, 103]
    assert all(len(s.message) == 512 for s in commands.summary.samples)
    assert gates.summary is not None and gates.summary.counts == {"bad_signature": 1}
    state = fold(GovernanceState(), *_sealed(commands))
    assert state.positions == {"governance.commands:0": 109} and state.rejections == {"invalid": 6, "unsigned": 4}


def _sealed(body: EntryBody) -> tuple[Any, str]:
    from governance.lifecycle.audit import AuditEntry

    entry = AuditEntry(**dict(body), seq=0, prev_hash=GENESIS)
    return entry, "1" * 64


def test_a_mode_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read the mode of trust store {tmp_path / 'gone'}"):
        refuse_writable(tmp_path / "gone", "trust store")


def test_the_key_watch_skips_a_file_that_vanishes_under_it(tmp_path: Path) -> None:
    (tmp_path / "trust-store.json").write_bytes(orjson.dumps({}))
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")  # listed, but stat() fails: as if removed meanwhile
    assert [entry[0] for entry in fingerprint(tmp_path)] == [".", "trust-store.json"]
    assert fingerprint(tmp_path / "missing") == ()


def test_a_checkpoint_naming_another_topic_or_unsigned_is_skipped(keys: tuple[Signer, Signer, TrustStore]) -> None:
    from governance.contract.kafkaio import Record
    from governance.lifecycle.checkpoint import encode_checkpoint, read_checkpoints

    signer, _, store = keys
    good = encode_checkpoint(_cp(1, "a" * 64), signer, T0)
    other = encode_checkpoint(Checkpoint(topic="another.log", seq=1, head="a" * 64, at=T0), signer, T0)
    records = [Record("cp", 0, 0, b"governance.lifecycle", good), Record("cp", 0, 1, b"governance.lifecycle", other),
               Record("cp", 0, 2, b"governance.lifecycle", b"junk"), Record("cp", 0, 3, b"another.log", other)]
    from governance.crypto.schedule import DEFAULT_SCHEDULE

    found, skipped = read_checkpoints(records, "governance.lifecycle", store, NOW, DEFAULT_SCHEDULE.phase_at(NOW))
    assert [(c.seq, c.offset) for c in found] == [(1, 0)] and skipped == 2


def test_void_entries_are_kept_out_of_the_chain_everywhere(keys: tuple[Signer, Signer, TrustStore]) -> None:
    signer, _, store = keys
    records = _chain(signer, 2)
    rogue = seal(_body(7), 1, entry_hash(records[0]), signer, T0)
    repair = seal(EntryBody(at=T0, input=system_input("l", "repair", "ops"), outcome="recorded",
                            repair=Repair(reason="fork", operator="ops",
                                          void=[VoidEntry(seq=1, hash=entry_hash(rogue))])),
                  2, entry_hash(records[1]), signer, T0)
    chain = walk(read_items([records[0], rogue, records[1], repair, rogue], store, NOW))
    assert [i.entry.seq for i in chain.links if i.entry] == [0, 1, 2] and chain.links[1].hash == entry_hash(records[1])
    assert [(a.kind, a.acknowledged_by) for a in chain.anomalies] == [("void", 2), ("void", 2)]
