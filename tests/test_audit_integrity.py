"""Issue 12, defects 5 and 8: one writer of the audit log, fenced by the broker; junk on the log never bricks
the consumer; every kind of tampering is detected by `audit verify` and at start; a broken log has a signed
repair; a cut tail is caught by the newest checkpoint. Real Kafka and Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry

from governance.crypto.algorithms import Algorithm
from governance.crypto.keys import KeyPolicy, generate_key
from governance.crypto.record import record_bytes
from governance.crypto.signing import Signer
from governance.errors import FencedError, VerificationError
from governance.lifecycle.audit import EntryBody, Input, entry_hash, parse_entry, seal
from governance.lifecycle.chain import read_items, walk
from governance.lifecycle.checkpoint import Checkpoint, encode_checkpoint
from governance.lifecycle.commands import Escalate, new_command, sign_command
from governance.lifecycle.identities import identity_signer
from governance.lifecycle.ledger import Event
from governance.service.consumer import GovernanceConsumer, read_log
from shadowgate.cli import cli
from tests.governance_kit import (
    Env,
    catalog,
    fast_policy,
    gate_ready,
    lifecycle_facts,
    make_env,
    make_keys,
    now_utc,
    running,
    send,
    send_event,
    wait_until,
)

pytestmark = pytest.mark.integration
POLICY = fast_policy()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("integrity"))


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        keys_dir: Path) -> Env:
    return make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir)


def _consumer(env: Env) -> GovernanceConsumer:
    return GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                              catalog=catalog(), metrics=CollectorRegistry())


def _cli(env: Env, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env.cli_env(), catch_exceptions=False)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result


def _body(i: int, facts: list[Event] | None = None) -> EntryBody:
    source = Input(topic="seed", partition=0, offset=i, digest="0" * 64, kind="command", id=f"seed-{i}")
    return EntryBody(at=now_utc(), input=source, outcome="applied" if facts else "recorded", facts=facts or [])


def _chain(env: Env, n: int, signer: Signer | None = None) -> list[dict[str, Any]]:
    """``n`` genuine entries (the first registers fraud@1.0.0), not yet written anywhere."""
    signer = signer or env.signer()
    records, head = [], "0" * 64
    for i in range(n):
        record = seal(_body(i, lifecycle_facts("fraud", "1.0.0", "PROPOSAL") if i == 0 else None), i, head, signer,
                      now_utc())
        records.append(record)
        head = entry_hash(record)
    return records


def _checkpoint(env: Env, seq: int, head: str) -> bytes:
    now = now_utc()
    return encode_checkpoint(Checkpoint(topic=env.topics["lifecycle"], seq=seq, head=head, at=now), env.signer(), now)


def _write(env: Env, values: list[bytes], checkpoint: bytes | None = None) -> None:
    for value in values:
        send(env, "lifecycle", value, b"audit")
    if checkpoint is not None:
        send(env, "checkpoints", checkpoint, env.topics["lifecycle"].encode())


def _stranger() -> Signer:
    info, secret = generate_key(Algorithm.ML_DSA_65, now_utc(), KeyPolicy())
    return Signer(info, secret)


def _escalate(env: Env, escalation_id: str) -> tuple[str, bytes]:
    now = now_utc()
    command = new_command(Escalate, identity="GID-08", now=now, model="fraud", version="1.0.0",
                          escalation_id=escalation_id, reason="label delay")
    return command.command_id, orjson.dumps(sign_command(command, identity_signer(env.keys_dir, "GID-08", now), now))


# ------------------------------------------------------------------------------------------------ one writer


def test_a_rival_writer_is_fenced_by_the_broker(env: Env) -> None:
    """A paused instance wakes up believing it holds the lease (a GC pause, a frozen VM) after another one took
    over: the broker refuses its write (before: it appended a second entry 1 and forked the chain)."""
    _write(env, [record_bytes(r) for r in _chain(env, 1)])
    first = _consumer(env)
    second = _consumer(env)
    client: redis.Redis[bytes] = redis.Redis.from_url(env.redis_url)
    try:
        assert first.start(threading.Event())
        first.lease.ok = lambda: True  # type: ignore[method-assign]  # what the paused process still believes
        first.lease.release()  # ... while the lease lapses (its renewals stop) and another instance takes it
        assert second.start(threading.Event())  # init_transactions with the audit log's transactional.id
        escalation, value = _escalate(env, "ESC-1")
        send(env, "commands", value)
        with pytest.raises(FencedError, match=r"fenced: another process initialised transactional.id "
                                              r"'shadowgate-audit:test\.lifecycle\..*' .*stopping"):
            for _ in range(100):
                first.poll_once(0.2)
        wait_until(lambda: bool(second.poll_once(0.1)) or escalation in second.state.seen, what="the escalation")
    finally:
        first.close()
        second.close()
        client.close()
    verified = _cli(env, "audit", "verify").output
    assert verified.startswith("audit log OK: 2 entries")  # one chain: entry 1 written once, by the second
    entries = [parse_entry(orjson.loads(r.value)["payload"]) for r in read_log(env.bootstrap, env.topics["lifecycle"])]
    assert [e.input.id for e in entries] == ["seed-0", escalation]


def test_junk_and_foreign_records_on_the_log_do_not_brick_the_consumer(env: Env) -> None:
    """An 18-byte junk record, a record signed by a stranger and a copy of entry 0 on the audit topic: the
    consumer starts, and acknowledges them in a signed entry; `audit verify` fails until then, and lists them
    after (before: the consumer refused to start, for good)."""
    records = _chain(env, 2)
    stranger = seal(_body(9), 2, entry_hash(records[1]), _stranger(), now_utc())
    junk = b"\x00not an entry \xff!!"
    _write(env, [record_bytes(records[0]), junk, record_bytes(records[1]), record_bytes(stranger),
                 record_bytes(records[0])], _checkpoint(env, 1, entry_hash(records[1])))
    before = _cli(env, "audit", "verify", code=1).output
    assert "BROKEN at entry #1: foreign record #1 (offset 1)" in before and "NOT acknowledged" in before
    registry = CollectorRegistry()
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=registry)
    try:
        assert consumer.start(threading.Event())
        assert consumer.state.seq == 2 and consumer.state.registry.models["fraud"].versions
    finally:
        consumer.close()
    assert registry.get_sample_value("shadowgate_governance_foreign_records_total") == 3
    log = read_log(env.bootstrap, env.topics["lifecycle"])
    chain = walk(read_items([r.value for r in log], env.trust().system, now_utc(), offsets=[r.offset for r in log]))
    ack = chain.links[-1].entry
    assert ack is not None and ack.seq == 2 and ack.input.kind == "system"
    assert ack.repair is not None and [(a.kind, a.offset) for a in ack.repair.acknowledged] == [
        ("foreign", 1), ("foreign", 3), ("duplicate", 4)]
    after = _cli(env, "audit", "verify").output
    assert after.startswith("audit log OK: 3 entries") and after.count("acknowledged at seq 2") == 3
    again = _consumer(env)
    try:
        assert again.start(threading.Event()) and again.state.seq == 2  # acknowledged once, not at every start
    finally:
        again.close()


# ------------------------------------------------------------------------------------------------ tampering


def _tampered(env: Env, kind: str) -> tuple[list[bytes], bytes]:
    """A 6-entry chain tampered as ``kind``, and the checkpoint of the genuine head."""
    records = _chain(env, 6)
    genuine = [record_bytes(r) for r in records]
    checkpoint = _checkpoint(env, 5, entry_hash(records[5]))
    values = list(genuine)
    if kind == "payload edit":
        edited = orjson.loads(genuine[3])
        edited["payload"]["outcome"] = "applied"
        values[3] = orjson.dumps(edited)
    elif kind == "re-signed entry":
        values[3] = record_bytes(seal(_body(33), 3, entry_hash(records[2]), env.signer(), now_utc()))
    elif kind == "reorder":
        values[3], values[4] = values[4], values[3]
    elif kind == "deletion":
        del values[3]
    elif kind == "insertion":
        values.insert(3, record_bytes(seal(_body(33), 3, entry_hash(records[2]), env.signer(), now_utc())))
    elif kind == "duplicate":
        values.insert(5, genuine[2])
    elif kind == "junk record":
        values.insert(3, b"18 bytes of junk!!")
    elif kind == "foreign-signed record":
        values.insert(6, record_bytes(seal(_body(66), 6, entry_hash(records[5]), _stranger(), now_utc())))
    elif kind == "tail truncation":
        values = values[:4]
    elif kind == "chain fork":
        values.append(record_bytes(seal(_body(44), 4, entry_hash(records[3]), env.signer(), now_utc())))
    return values, checkpoint


# kind -> (what `audit verify` says, whether the consumer starts (acknowledging) or refuses, and why)
TAMPERING = {
    "payload edit": ("BROKEN at entry #3 (seq 3): foreign record #3", "refuses", "record #4 .*seq 4 where 3"),
    "re-signed entry": ("BROKEN at entry #4 (seq 4): prev_hash", "refuses", "record #4 .*prev_hash"),
    "reorder": ("BROKEN at entry #3 (seq 4): seq 4 where 3 was expected", "refuses", "seq 4 where 3"),
    "deletion": ("BROKEN at entry #3 (seq 4): seq 4 where 3 was expected", "refuses", "entry is missing"),
    "insertion": ("BROKEN at entry #4 (seq 3): seq 3 where 4 was expected", "refuses", "a fork"),
    "duplicate": ("BROKEN at entry #5 (seq 2): duplicate record #5", "starts", ""),
    "junk record": ("BROKEN at entry #3: foreign record #3", "starts", ""),
    "foreign-signed record": ("BROKEN at entry #6 (seq 6): foreign record #6", "starts", ""),
    "tail truncation": ("but the log ends at seq 3: entries 4..5 are missing (a truncated tail)", "refuses",
                        "truncated tail"),
    "chain fork": ("BROKEN at entry #6 (seq 4): seq 4 where 6 was expected", "refuses", "a fork"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(TAMPERING))
def test_every_kind_of_tampering_is_detected_by_verify_and_at_start(env: Env, kind: str) -> None:
    values, checkpoint = _tampered(env, kind)
    _write(env, values, checkpoint)
    says, start, why = TAMPERING[kind]
    assert says in _cli(env, "audit", "verify", code=1).output
    consumer = _consumer(env)
    try:
        if start == "refuses":
            with pytest.raises(VerificationError, match=f"{why}.*refusing to start.*audit repair"):
                consumer.start(threading.Event())
        else:
            assert consumer.start(threading.Event())
            latest = consumer.state.seq
    finally:
        consumer.close()
    if start == "starts":  # detected, acknowledged in a signed entry, never part of the chain
        verified = _cli(env, "audit", "verify").output
        assert verified.startswith(f"audit log OK: {latest + 1} entries")
        assert f"acknowledged at seq {latest}" in verified


# ------------------------------------------------------------------------------------------------ repair


def test_repair_of_a_fork_end_to_end(env: Env) -> None:
    """A rival writer (no fence: an old version, a hand-made record with the system key) forks the chain; the
    consumer refuses to start; `audit repair` voids the rival's branch, signed; the consumer starts again,
    `audit verify` reports the repair, and the rival's entry is not in the state."""
    with running(env) as consumer:
        ids = [_escalate(env, f"ESC-{i}") for i in range(3)]
        send(env, "commands", ids[0][1])
        wait_until(lambda: consumer.state.seq == 0, what="entry 0")
        from governance.lifecycle.ledger import Registered

        rogue = Registered(event_id="rogue#0", at=now_utc(), model="rogue", version="6.6.6",
                           model_type="classification")
        fork = seal(_body(99, [rogue]), 1, consumer.state.head, env.signer(), now_utc())
        send(env, "lifecycle", record_bytes(fork), b"audit")
        send(env, "commands", ids[1][1])
        send(env, "commands", ids[2][1])
        wait_until(lambda: consumer.state.seq == 2, what="entries 1 and 2")
        head = consumer.state.head
    refused = _consumer(env)
    try:
        with pytest.raises(VerificationError, match="a fork.*audit repair"):
            refused.start(threading.Event())
    finally:
        refused.close()
    dry = CliRunner().invoke(cli, ["audit", "repair", "--reason", "rival writer"], env=env.cli_env())
    assert dry.exit_code != 0 and "the log forks: choose the head" in str(dry.exception)
    assert f"seq 2 head {head}" in str(dry.exception) and f"seq 1 head {entry_hash(fork)}" in str(dry.exception)
    out = _cli(env, "audit", "repair", "--reason", "rival writer", "--head", head[:12], "--operator", "ops").output
    assert f"void: entry seq 1 {entry_hash(fork)} at offset " in out and "repaired: entry seq 3 appended" in out
    assert "audit log OK: 4 entries" in out
    verified = _cli(env, "audit", "verify").output
    assert verified.startswith("audit log OK: 4 entries") and "void record #1 (offset 2)" in verified
    assert "repair at seq 3" in verified and "the newest checkpoint matches the log" in verified
    consumer = _consumer(env)
    try:
        assert consumer.start(threading.Event())
        assert consumer.state.seq == 3 and "rogue" not in consumer.state.registry.models
        assert [i for i, _ in ids] == [i for i in consumer.state.seen]
    finally:
        consumer.close()


def test_repair_of_a_truncated_log_end_to_end(env: Env) -> None:
    records = _chain(env, 6)
    _write(env, [record_bytes(r) for r in records[:4]], _checkpoint(env, 5, entry_hash(records[5])))
    refused = _consumer(env)
    try:
        with pytest.raises(VerificationError, match="entries 4..5 are missing"):
            refused.start(threading.Event())
    finally:
        refused.close()
    out = _cli(env, "audit", "repair", "--reason", "topic restored from a backup that lacked 2 entries").output
    assert f"the chain continues from seq 3 head {entry_hash(records[3])}" in out
    assert "older checkpoints no longer describe the log: superseded by this repair" in out
    verified = _cli(env, "audit", "verify").output
    assert verified.startswith("audit log OK: 5 entries") and "repair at seq 4" in verified
    consumer = _consumer(env)
    try:
        assert consumer.start(threading.Event()) and consumer.state.seq == 4
    finally:
        consumer.close()
    assert "nothing to repair" in str(CliRunner().invoke(cli, ["audit", "repair", "--reason", "again"],
                                                          env=env.cli_env()).exception)


def test_a_cut_tail_fails_audit_verify_by_default(env: Env, tmp_path: Path) -> None:
    """Checkpoints anchor the head: a copy missing its last entries fails without --expect-head (before: OK)."""
    with running(env) as consumer:
        send_event(env, "gates", gate_ready(POLICY, "fraud", "none", "1.0.0", "SHADOW"))  # an unregistered version
        for i in range(3):
            send(env, "commands", _escalate(env, f"ESC-{i}")[1])
        wait_until(lambda: consumer.state.seq == 3, what="four entries")
    copy = tmp_path / "audit.jsonl"
    _cli(env, "audit", "export", "-o", str(copy))
    assert _cli(env, "audit", "verify", "--file", str(copy)).output.startswith("audit log OK: 4 entries")
    copy.write_bytes(b"".join(line + b"\n" for line in copy.read_bytes().splitlines()[:2]))
    cut = _cli(env, "audit", "verify", "--file", str(copy), code=1).output
    assert "anchors seq 3" in cut and "the log ends at seq 1: entries 2..3 are missing (a truncated tail)" in cut
    assert _cli(env, "audit", "verify", "--file", str(copy), "--no-checkpoint").output.startswith(
        "audit log OK: 2 entries")
