"""The governance consumer under real faults: SIGKILLed mid-transition and mid-rollback, a junk flood on its inputs
while a signed command must apply within 5 s, rival instances on the same audit log (a paused zombie, a SIGKILL),
and every kind of tampering with the audit log.

Each scenario ends in an exact account: every genuine input handled exactly once (entries per input id), every
rejection counted for its reason, the audit chain verifying (``shadowgate audit verify``).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from governance.crypto.record import sign_record
from governance.crypto.signing import Context
from governance.lifecycle.audit import AuditEntry, parse_entry
from governance.lifecycle.commands import Escalate, new_command, parse_command, sign_command
from governance.lifecycle.identities import identity_signer
from governance.service.consumer import ConsumerConfig, GovernanceConsumer, read_log
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
    seed_log,
    wait_until,
)
from tests.reliability.kit import Row, Scale

pytestmark = [pytest.mark.integration, pytest.mark.slow]
POLICY = fast_policy()


def _entries(env: Env) -> list[AuditEntry]:
    return [parse_entry(orjson.loads(r.value)["payload"]) for r in read_log(env.bootstrap, env.topics["lifecycle"])]


def verify(env: Env) -> str:
    """``shadowgate audit verify`` of the env's log; asserts it verifies."""
    result = CliRunner().invoke(cli, ["audit", "verify"], env=env.cli_env(), catch_exceptions=False)
    assert result.exit_code == 0 and result.output.startswith("audit log OK"), result.output
    return result.output


def _escalation(env: Env, escalation_id: str, identity: str = "GID-08", **changes: Any) -> tuple[str, bytes]:
    now = now_utc()
    command = new_command(Escalate, identity="GID-08", now=changes.pop("issued", now), model="fraud",
                          version="1.0.0", escalation_id=escalation_id, reason="label delay in EU")
    return command.command_id, orjson.dumps(sign_command(command, identity_signer(env.keys_dir, identity, now), now))


@dataclass
class _Env(Env):
    """The kit's Env with the production summary interval and lease (5 s and 15 s; the kit's 0.3 s writes a
    summary transaction per partition every 0.3 s, which is not what a flood meets in production, and its 5 s
    lease is short for a machine loaded by two workers, the servers and the flood)."""

    def config(self, canary_share: float = 0.05) -> ConsumerConfig:
        return dataclasses.replace(super().config(canary_share), summary_interval_s=5.0, lease_ttl_s=15.0)


@dataclass
class Governance:
    """A running governance consumer (in a thread) on topics of its own, with the genuine input it applied."""

    env: Env
    consumer: GovernanceConsumer
    genuine: list[str]
    original: bytes  # the genuine escalation's signed bytes
    errors: list[BaseException]  # what stopped the consumer's thread, if anything did

    def send_many(self, messages: list[tuple[str, bytes]]) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.env.bootstrap, "linger.ms": 20, "acks": "all"})
        failures: list[str] = []
        for topic, value in messages:
            while True:
                try:
                    producer.produce(self.env.topics[topic], value, b"fraud",
                                     on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
                    break
                except BufferError:
                    producer.poll(0.05)
        assert producer.flush(60) == 0 and failures == [], failures[:5]

    def wait_rejected(self, n: int, timeout_s: float = 120) -> dict[str, int]:
        """The rejections summarised in the log's entries, per reason, once there are ``n``."""
        try:
            wait_until(lambda: sum(self.consumer.state.rejections.values()) >= n or bool(self.errors), timeout_s,
                       f"{n} rejections")  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {dict(self.consumer.state.rejections)}, {len(self.consumer.tally)} "
                                 f"pending, lease ok {self.consumer.lease.ok()}") from None
        assert not self.errors, f"the governance consumer stopped: {self.errors[0]!r}"
        return dict(self.consumer.state.rejections)

    def applied_other_than_genuine(self) -> int:
        """Entries that changed anything (facts, a rollback) for an input other than the seed and the genuine."""
        return sum(1 for e in _entries(self.env)
                   if (e.facts or e.rollback) and e.input.id not in self.genuine and e.input.topic != "seed")

    def verify(self) -> str:
        return verify(self.env)


@contextmanager
def start_governance(kafka_bootstrap: str, redis_url: str, unique: str, make_topic: Callable[..., str],
                     tmp_path: Path, suffix: str = "") -> Iterator[Governance]:
    """fraud@1.0.0 in SHADOW, a consumer running, and one genuine escalation applied."""
    keys = make_keys(tmp_path / f"gov{suffix}")
    made = make_env(kafka_bootstrap, redis_url, f"g{unique}{suffix}",
                    lambda name, **kw: make_topic(f"{name}{suffix}", **kw), keys)
    env = _Env(**{f.name: getattr(made, f.name) for f in dataclasses.fields(made)})
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "SHADOW")])
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=CollectorRegistry())
    stop, errors = threading.Event(), list[BaseException]()
    assert consumer.start(stop)

    def loop() -> None:
        try:
            while not stop.is_set():
                consumer.poll_once(0.1)
        except BaseException as exc:  # kept for the scenario's assertions (the kit's `running` hides it then)
            errors.append(exc)

    thread = threading.Thread(target=loop, name="governance-consumer", daemon=True)
    thread.start()
    try:
        command_id, value = _escalation(env, "ESC-genuine")
        gov = Governance(env, consumer, [command_id], value, errors)
        gov.send_many([("commands", value)])
        wait_until(lambda: command_id in consumer.state.seen, 30, "the genuine escalation")
        yield gov
    finally:
        stop.set()
        thread.join(timeout=10)
        consumer.close()


def governance_hostile(gov: Governance, n: int) -> tuple[list[tuple[str, bytes]], dict[str, int], dict[str, int]]:
    """``n`` hostile messages for the governance inputs, of 16 kinds; how many the consumer must reject for each
    reason; how many of each kind. The genuine escalation must already be applied (two kinds replay it)."""
    env = gov.env
    now = now_utc()
    _, genuine = _escalation(env, "ESC-genuine-copy")
    record = orjson.loads(genuine)
    flipped = bytearray(base64.b64decode(record["signature"]["sig"]))
    flipped[9] ^= 0x01
    forged = {**record, "signature": {**record["signature"], "sig": base64.b64encode(bytes(flipped)).decode()}}
    altered = {**record, "payload": {**record["payload"], "reason": "approve everything"}}
    unknown = {**record, "signature": {**record["signature"], "key_id": "mldsa65-00000000deadbeef"}}
    as_event = sign_record(record["payload"], Context.EVENT, identity_signer(env.keys_dir, "GID-08", now), now)
    _, wrong_identity = _escalation(env, "ESC-x", identity="GID-02")
    _, future = _escalation(env, "ESC-future", issued=now + timedelta(days=200))
    gate = gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW")
    gate_doc = orjson.loads(gate.model_dump_json())
    expired_gate = gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW", now=now - timedelta(hours=2))
    from governance.contract.publishing import encode_signed_event

    expired = encode_signed_event(expired_gate, env.signer(), now)
    gate_approval = sign_record(gate_doc, Context.APPROVAL, env.signer(), now)
    original = gov.original
    again = parse_command({**orjson.loads(original)["payload"], "issued_at": now.isoformat()})
    resigned = sign_command(again, identity_signer(env.keys_dir, "GID-08", now), now)  # the applied id, anew
    kinds: list[tuple[str, str, bytes, str]] = [
        ("not JSON", "commands", b"\x00\xff{not json", "invalid"),
        ("JSON array", "gates", b"[1, 2, 3]", "invalid"),
        ("signature without a payload object", "commands", b'{"payload": [1], "signature": {"key_id": "x"}}',
         "invalid"),
        ("unsigned command", "commands", orjson.dumps(record["payload"]), "unsigned"),
        ("unsigned gate event", "gates", orjson.dumps(gate_doc), "unsigned"),
        ("unknown signing key", "commands", orjson.dumps(unknown), "unknown_key"),
        ("signed by another identity's key", "commands", wrong_identity, "unknown_key"),
        ("forged signature", "commands", orjson.dumps(forged), "bad_signature"),
        ("altered payload", "commands", orjson.dumps(altered), "bad_signature"),
        ("command signed in the event context", "commands", orjson.dumps(as_event), "bad_signature"),
        ("gate signed in the approval context", "gates", orjson.dumps(gate_approval), "bad_signature"),
        ("signed command on the gates topic", "gates", genuine, "invalid"),
        ("command dated 200 days ahead", "commands", future, "future"),
        ("expired gate event", "gates", expired, "expired"),
        ("replayed command (same bytes)", "commands", original, "replayed"),
        ("replayed command (re-signed)", "commands", orjson.dumps(resigned), "replayed"),
    ]
    messages, reasons, names = [], Counter[str](), Counter[str]()
    for i in range(n):
        name, topic, value, reason = kinds[i % len(kinds)]
        messages.append((topic, value))
        reasons[reason] += 1
        names[name] += 1
    return messages, dict(reasons), dict(names)


# ------------------------------------------------------------------------------------------- scenarios


def test_sigkill_mid_transition_and_mid_rollback(kafka_bootstrap: str, redis_url: str, redis_prefix: str,
                                                 make_topic: Callable[..., str], tmp_path: Path, scale: Scale,
                                                 report: Callable[..., Row]) -> None:
    """A consumer process SIGKILLs itself at each step of a transition and of a rollback
    (tests/governance_child.py), is started again, and must end exactly as a clean run of the same input."""
    from governance.contract.publishing import encode_signed_event
    from tests.test_governance_faults import SCENARIOS, _env, _run

    keys_dir = make_keys(tmp_path)
    cases = [("transition", "before_commit"), ("transition", "after_commit"), ("rollback", "routing_published"),
             ("rollback", "before_commit"), ("rollback", "after_commit")]
    if scale.form == "short":  # one crash of each: before a transition's commit, after a rollback's routing
        cases = [cases[0], cases[2]]
    lost = double = 0
    outcomes: dict[str, bool] = {}
    for n, (scenario, kill_at) in enumerate(cases):
        seed, make_input, topic = SCENARIOS[scenario]
        killed = _env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir, f"-k{n}")
        clean = _env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir, f"-c{n}")
        value = encode_signed_event(make_input(), killed.signer(), now_utc())
        after_crash = _run(killed, seed, value, topic, kill_at)
        expected = _run(clean, seed, value, topic, None)
        handled = [e for e in after_crash["entries"] if e[0] >= len(seed) and e[2] == "applied"]
        lost += len(handled) == 0
        double += max(0, len(handled) - 1)
        outcomes[f"{scenario}/{kill_at}"] = after_crash == expected
        verify(killed)
    report("governance SIGKILLed mid-transition / mid-rollback", events=len(cases),
           faults=f"{len(cases)} consumer SIGKILLs ({sum(c[0] == 'transition' for c in cases)} mid-transition, "
                  f"{sum(c[0] == 'rollback' for c in cases)} mid-rollback)", lost=lost, double=double,
           equal_to_clean_run=outcomes)
    assert all(outcomes.values()), outcomes
    assert (lost, double) == (0, 0)


def test_a_junk_flood_while_a_signed_command_applies_within_5_s(kafka_bootstrap: str, redis_url: str, unique: str,
                                                                make_topic: Callable[..., str], tmp_path: Path,
                                                                scale: Scale, report: Callable[..., Row]) -> None:
    """``scale.flood`` junk messages (16 kinds) on the commands and gates topics while the consumer runs; a
    genuine command sent halfway through the flood (behind half of it) takes effect in < 5 s."""
    with start_governance(kafka_bootstrap, redis_url, unique, make_topic, tmp_path, "-flood") as gov:
        junk, reasons, kinds = governance_hostile(gov, scale.flood)
        half = len(junk) // 2
        command_id, value = _escalation(gov.env, "ESC-during-flood")
        # The flood comes from another process (as an attacker's would), so its producing does not compete
        # with the consumer for this process's GIL.
        assert _flood(gov.env, junk[:half], tmp_path / "first.jsonl").wait(120) == 0
        sent = time.monotonic()
        gov.send_many([("commands", value)])
        rest = _flood(gov.env, junk[half:], tmp_path / "rest.jsonl")
        wait_until(lambda: command_id in gov.consumer.state.seen, 30, "the command sent during the flood")
        latency = time.monotonic() - sent
        assert rest.wait(120) == 0
        gov.genuine.append(command_id)
        rejected = gov.wait_rejected(sum(reasons.values()))
        entries = _entries(gov.env)
        applied = Counter(e.input.id for e in entries if e.facts)
        report("governance junk flood", events=len(junk) + 1,
               faults=f"{len(junk):,} junk messages of {len(kinds)} kinds",
               lost=int(applied[command_id] == 0), double=max(0, applied[command_id] - 1),
               command_latency_s=round(latency, 2), rejected=rejected, expected_rejections=reasons,
               audit_entries=len(entries), forged_accepted=gov.applied_other_than_genuine(),
               lease_held=gov.consumer.lease.ok())
        assert latency < 5.0, f"the signed command took {latency:.2f} s during the flood"
        assert rejected == reasons and gov.applied_other_than_genuine() == 0 and applied[command_id] == 1
        assert len(entries) < 50, "one summary entry per interval, not one per junk message"
        gov.verify()


FLOOD = """
import base64, json, sys
from confluent_kafka import Producer
producer = Producer({"bootstrap.servers": sys.argv[1], "linger.ms": 20, "acks": "all"})
for line in open(sys.argv[2]):
    topic, value = json.loads(line)
    while True:
        try:
            producer.produce(topic, base64.b64decode(value), b"fraud")
            break
        except BufferError:
            producer.poll(0.05)
sys.exit(producer.flush(60))
"""


def _flood(env: Env, messages: list[tuple[str, bytes]], path: Path) -> subprocess.Popen[bytes]:
    """Produce ``messages`` from a process of their own (started, not awaited)."""
    path.write_bytes(b"".join(orjson.dumps([env.topics[t], base64.b64encode(v).decode()]) + b"\n"
                              for t, v in messages))
    return subprocess.Popen([sys.executable, "-c", FLOOD, env.bootstrap, str(path)])


def _governance_process(env: Env, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    repo = Path(__file__).resolve().parents[2]
    with log.open("ab") as out:
        return subprocess.Popen(  # our own CLI
            [sys.executable, "-m", "shadowgate", "governance", "--lease-ttl", "3"],
            env={**os.environ, **env.cli_env(), "SHADOWGATE_REDIS_PREFIX": prefix, "PYTHONPATH": str(repo),
                 "SHADOWGATE_REJECTION_SUMMARY_S": "1"},
            cwd=repo, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_rival_governance_consumers_on_one_audit_log(kafka_bootstrap: str, redis_url: str, unique: str,
                                                     make_topic: Callable[..., str], tmp_path: Path,
                                                     report: Callable[..., Row]) -> None:
    """Two `shadowgate governance` processes on one audit log under different Redis prefixes (the issue's rival):
    the second waits; the first is frozen (SIGSTOP) past its lease, the second takes over and fences it, the
    first wakes and stops without writing; the second is SIGKILLed mid-stream and a third takes over. Every
    command is applied exactly once and the chain verifies."""
    keys = make_keys(tmp_path / "rival")
    env = make_env(kafka_bootstrap, redis_url, f"r{unique}", make_topic, keys)
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "SHADOW")])
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"governance-{i}.log" for i in range(3)]
    sent: list[str] = []

    def send(batch: int, n: int = 10) -> None:
        from tests.governance_kit import send_many

        values = []
        for i in range(n):
            command_id, value = _escalation(env, f"ESC-{batch}-{i}")
            values.append(value)
            sent.append(command_id)
        send_many(env, "commands", values)

    def applied() -> Counter[str]:
        return Counter(e.input.id for e in _entries(env) if e.facts)

    def tail() -> str:
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())

    try:
        first = _governance_process(env, env.prefix, logs[0])
        procs.append(first)
        wait_until(lambda: "governance consumer:" in logs[0].read_text(errors="replace"), 60, "the first to start")
        rival = _governance_process(env, env.prefix + "-rival", logs[1])
        procs.append(rival)
        wait_until(lambda: "waiting for it" in logs[1].read_text(errors="replace"), 60, "the rival to wait")
        send(1)
        wait_until(lambda: all(applied()[c] for c in sent), 60, "batch 1 applied")
        os.killpg(first.pid, signal.SIGSTOP)  # frozen (a GC pause, a stopped VM) past its 3 s lease
        send(2)
        wait_until(lambda: all(applied()[c] for c in sent), 60, "batch 2 applied by the rival")
        os.killpg(first.pid, signal.SIGCONT)
        wait_until(lambda: first.poll() is not None, 60, "the frozen first to stop on waking")
        send(3, 20)
        wait_until(lambda: sum(applied()[c] for c in sent[-20:]) >= 3, 60, "the rival into batch 3")
        os.killpg(rival.pid, signal.SIGKILL)
        rival.wait(30)
        third = _governance_process(env, env.prefix, logs[2])
        procs.append(third)
        wait_until(lambda: all(applied()[c] for c in sent), 120, "batch 3 applied by the third")
        counts = applied()
        lost = sum(counts[c] == 0 for c in sent)
        double = sum(max(0, counts[c] - 1) for c in sent)
        report("rival governance consumers", events=len(sent),
               faults="rival instance; holder SIGSTOPped past its lease (fenced); rival SIGKILLed",
               lost=lost, double=double, first_exit_code=first.returncode,
               first_fenced="fenced" in logs[0].read_text(errors="replace").lower() or first.returncode != 0)
        assert (lost, double) == (0, 0), tail()
        assert first.returncode not in (None, -9), tail()
        verify(env)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{tail()}") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)


def test_every_kind_of_audit_tampering_is_detected(kafka_bootstrap: str, redis_url: str, redis_prefix: str,
                                                   make_topic: Callable[..., str], tmp_path: Path, scale: Scale,
                                                   report: Callable[..., Row]) -> None:
    """Each tampering kind of tests/test_audit_integrity.py (tail truncation included) on a log of its own:
    `shadowgate audit verify` exits 1 naming it, and the consumer refuses to start or acknowledges it."""
    from governance.errors import VerificationError
    from tests.test_audit_integrity import TAMPERING, _consumer, _tampered, _write

    keys_dir = make_keys(tmp_path)
    detected: dict[str, bool] = {}
    records = 0
    kinds = list(TAMPERING)
    if scale.form == "short":  # one of each family: an edit, a foreign record, a cut tail, a fork
        kinds = ["payload edit", "junk record", "tail truncation", "chain fork"]
    for n, kind in enumerate(kinds):
        env = make_env(kafka_bootstrap, redis_url, f"{redis_prefix}-{n}",
                       lambda name, _n=n, **kw: make_topic(f"{name}-{_n}", **kw), keys_dir)
        values, checkpoint = _tampered(env, kind)
        records += len(values)
        _write(env, values, checkpoint)
        says, start, why = TAMPERING[kind]
        result = CliRunner().invoke(cli, ["audit", "verify"], env=env.cli_env(), catch_exceptions=False)
        consumer = _consumer(env)
        try:
            if start == "refuses":
                with pytest.raises(VerificationError, match=f"{why}.*refusing to start.*audit repair"):
                    consumer.start(threading.Event())
            else:
                assert consumer.start(threading.Event())
        finally:
            consumer.close()
        detected[kind] = result.exit_code == 1 and says in result.output
    report("audit log tampering", events=records,
           faults=f"{len(kinds)} of {len(TAMPERING)} tampering kinds (incl. tail truncation)", lost=0, double=0,
           detected=f"{sum(detected.values())}/{len(detected)}", kinds=detected)
    assert all(detected.values()), detected
