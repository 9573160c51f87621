"""Faults of the governance consumer, made for real: SIGKILL in the middle of a transition and of a rollback,
a transaction the broker refuses, and the consumer driven through injected clients.

Each crash scenario runs twice on topics of its own: once with a consumer process that SIGKILLs itself at a
step (tests/governance_child.py) and is then restarted, once clean; both must end in the same state (the
same entries per input, registry, routing and Redis state), with no input lost and none handled twice.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from prometheus_client import CollectorRegistry

from governance.contract.kafkaio import Record
from governance.contract.publishing import encode_signed_event
from governance.crypto.record import record_bytes
from governance.errors import DeliveryError, InfrastructureError
from governance.lifecycle.audit import AuditEntry, EntryBody, Input, entry_hash, parse_entry, seal
from governance.lifecycle.ledger import Event
from governance.service.consumer import ConsumerClients, GovernanceConsumer, read_log
from governance.service.statestore import StateStore
from shadowgate.routing_client import RoutingClient
from tests.governance_kit import (
    REPO,
    Env,
    catalog,
    fast_policy,
    gate_ready,
    lifecycle_facts,
    make_env,
    make_keys,
    now_utc,
    rollback_trigger,
    running,
    seed_log,
    send,
    wait_until,
    with_signoffs,
)

pytestmark = pytest.mark.integration
POLICY = fast_policy()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("faults"))


def _env(kafka_bootstrap: str, redis_url: str, prefix: str, make_topic: Callable[..., str], keys_dir: Path,
         suffix: str) -> Env:
    def named(name: str, **kwargs: Any) -> str:
        return make_topic(f"{name}{suffix}", **kwargs)

    return make_env(kafka_bootstrap, redis_url, prefix + suffix, named, keys_dir)


def _entries(env: Env) -> list[AuditEntry]:
    return [parse_entry(orjson.loads(r.value)["payload"]) for r in read_log(env.bootstrap, env.topics["lifecycle"])]


SCENARIOS: dict[str, tuple[list[list[Event]], Callable[[], Any], str]] = {
    # seed, the input (an event), its topic
    "transition": ([lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "SHADOW")],
                   lambda: gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW"), "gates"),
    "rollback": ([lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "PRODUCTION")],
                 lambda: rollback_trigger(POLICY, "fraud", "2.0.0", "1.0.0"), "rollbacks"),
}


def _outcome(env: Env) -> dict[str, Any]:
    """What a run leaves behind, without times: entries per input, registry, routing, Redis == log."""
    entries = _entries(env)
    names = {topic: name for name, topic in env.topics.items()}
    client: redis.Redis[bytes] = redis.Redis.from_url(env.redis_url)
    try:
        saved = StateStore(client, env.prefix).load()
    finally:
        client.close()
    assert saved is not None
    routing = RoutingClient(env.bootstrap, env.topics["routing"], env.trust().system)
    try:
        routing.refresh()
        assignment = routing.assignment("fraud")
    finally:
        routing.close()
    assert assignment is not None
    line = saved.registry.models["fraud"]
    return {
        "entries": [(e.seq, e.input.id, e.outcome, [f.kind for f in e.facts],
                     e.rollback.status if e.rollback else None) for e in entries],
        "stages": {v: r.stage.value for v, r in line.versions.items()},
        "production": (line.production, line.previous_production),
        "routing": (assignment.production, assignment.canary, assignment.shadow),
        "positions": {names.get(k.rsplit(":", 1)[0], k.rsplit(":", 1)[0]): v for k, v in saved.positions.items()},
        "materialised == log": saved == _rebuilt(env),
    }


def _run(env: Env, seed: list[list[Event]], value: bytes, topic: str, kill_at: str | None) -> dict[str, Any]:
    seed_log(env, seed)
    send(env, topic, value)
    if kill_at is not None:
        spec = {**dataclasses.asdict(env.config()), "keys_dir": str(env.keys_dir), "policy": str(env.policy_path),
                "kill_at": kill_at}
        child = subprocess.run([sys.executable, "-m", "tests.governance_child", orjson.dumps(spec).decode()],
                               cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=120)
        assert child.returncode == -9, f"the child was to die at {kill_at}: {child.returncode}\n{child.stderr[-3000:]}"
    with running(env) as consumer:
        wait_until(lambda: consumer.state.seq == len(seed), what="the input handled")
    return _outcome(env)


def _rebuilt(env: Env) -> Any:
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=CollectorRegistry())
    try:
        return consumer.rebuild()
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "kill_at"), [("transition", "before_commit"), ("transition", "after_commit"),
                                                   ("rollback", "routing_published"), ("rollback", "before_commit"),
                                                   ("rollback", "after_commit")])
def test_sigkill_mid_step_then_restart_ends_as_a_clean_run(kafka_bootstrap: str, redis_url: str, redis_prefix: str,
                                                           make_topic: Callable[..., str], keys_dir: Path,
                                                           scenario: str, kill_at: str) -> None:
    seed, make_input, topic = SCENARIOS[scenario]
    killed = _env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir, "-killed")
    clean = _env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir, "-clean")
    value = encode_signed_event(make_input(), killed.signer(), now_utc())  # the same signed bytes for both runs
    after_crash = _run(killed, seed, value, topic, kill_at)
    expected = _run(clean, seed, value, topic, None)
    assert after_crash == expected
    (handled,) = [e for e in after_crash["entries"] if e[0] == len(seed)]
    assert handled[2] == "applied" and handled[3] == ["transitioned"]  # handled once, applied: not lost


def test_a_refused_transaction_records_nothing_and_the_input_is_handled_after(
        kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        keys_dir: Path) -> None:
    """The audit topic refuses the entry (max.message.bytes): the transaction is aborted, the consumer stops,
    nothing is folded, saved or alerted; once the topic accepts it again the input is handled, once."""
    env = make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir)
    seed = [lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "SHADOW")]
    seed_log(env, seed)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def limit(value: str) -> None:
        entry = ConfigEntry("max.message.bytes", value, incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource("topic", env.topics["lifecycle"], incremental_configs=[entry])
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=30)

    limit("1000")
    send(env, "gates", encode_signed_event(gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW"), env.signer(),
                                           now_utc()))
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=CollectorRegistry())
    client: redis.Redis[bytes] = redis.Redis.from_url(env.redis_url)
    try:
        assert consumer.start(threading.Event())
        before = consumer.state
        with pytest.raises(DeliveryError, match="Message size too large"):
            for _ in range(100):
                consumer.poll_once(0.2)
        assert consumer.state == before and StateStore(client, env.prefix).load() == before
    finally:
        consumer.close()
        client.close()
    assert len(_entries(env)) == len(seed)
    assert read_log(env.bootstrap, env.topics["alerts"]) == []
    limit("10485760")
    with running(env) as again:
        wait_until(lambda: again.state.seq == len(seed), what="the input handled after the fault")
    assert [e.input.type for e in _entries(env)[len(seed):]] == ["GateReady"]


# ------------------------------------------------------------------------------------------------ injected clients


class _Txn:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.messages.append((topic, value))


class _Producer:
    """In place of the fenced transactional producer: keeps each committed transaction; ``fail`` refuses commits."""

    def __init__(self) -> None:
        self.committed: list[list[tuple[str, bytes]]] = []
        self.fail = False
        self.initialised = False

    def init(self) -> None:
        self.initialised = True

    @contextmanager
    def transaction(self) -> Iterator[_Txn]:
        txn = _Txn()
        yield txn
        if self.fail:
            raise DeliveryError("the broker refused the transaction (injected)")
        self.committed.append(txn.messages)

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> tuple[int, int]:
        with self.transaction() as txn:
            txn.produce(topic, value, key)
        return 0, len(self.committed)

    def close(self) -> None:
        pass


class _Consumer:
    def __init__(self) -> None:
        self.assigned: list[Any] = []

    def list_topics(self, topic: str, timeout: float) -> Any:
        info = SimpleNamespace(error=None, partitions={0: None})
        return SimpleNamespace(topics={topic: info})

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = partitions

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def close(self) -> None:
        pass


class _Log:
    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def entries(self) -> list[Record]:
        return self.records

    def checkpoints(self) -> list[Record]:
        return []


def test_the_consumer_runs_on_injected_clients_and_a_failed_commit_changes_nothing(
        redis_url: str, redis_prefix: str, keys_dir: Path) -> None:
    env = Env("unused:9092", redis_url, redis_prefix, keys_dir, {n: f"t.{n}" for n in (
        "gates", "rollbacks", "alerts", "approvals", "commands", "lifecycle", "routing", "checkpoints")})
    seeded = []
    head = "0" * 64
    for seq, facts in enumerate([with_signoffs(lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), env.signer()),
                                 with_signoffs(lifecycle_facts("fraud", "2.0.0", "SHADOW"), env.signer())]):
        source = Input(topic="seed", partition=0, offset=seq, digest="0" * 64, kind="command", id=f"seed-{seq}")
        record = seal(EntryBody(at=now_utc(), input=source, outcome="applied", facts=facts), seq, head, env.signer(),
                      now_utc())
        seeded.append(Record("t.lifecycle", 0, seq, b"audit", record_bytes(record)))
        head = entry_hash(record)
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    producer = _Producer()
    clients = ConsumerClients(client, producer, _Consumer(), _Log(seeded), "injected")  # type: ignore[arg-type]
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=CollectorRegistry(), clients=clients)
    try:
        assert consumer.start(threading.Event()) and producer.initialised and consumer.state.seq == 1
        assert [topic for topic, _ in producer.committed[0]] == ["t.routing", "t.checkpoints"]
        gate = encode_signed_event(gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW"), env.signer(), now_utc())
        record = Record("t.gates", 0, 0, b"fraud", gate)
        producer.fail = True
        before, saved = consumer.state, StateStore(client, env.prefix).load()
        with pytest.raises(DeliveryError, match="injected"):
            consumer.process(record)
        assert consumer.state == before and StateStore(client, env.prefix).load() == saved == before
        producer.fail = False
        (entry,) = consumer.process(record)  # the same message again: handled now, once
        assert entry.seq == 2 and [f.kind for f in entry.facts] == ["transitioned"]
        assert [topic for topic, _ in producer.committed[-1]] == ["t.lifecycle", "t.routing", "t.checkpoints"]
        assert StateStore(client, env.prefix).load() == consumer.state
        assert consumer.process(record) == []  # a redelivery
    finally:
        consumer.close()


def test_a_start_whose_first_transaction_fails_leaves_the_consumer_stopped(redis_url: str, redis_prefix: str,
                                                                          keys_dir: Path) -> None:
    env = Env("unused:9092", redis_url, redis_prefix, keys_dir, {n: f"t.{n}" for n in (
        "gates", "rollbacks", "alerts", "approvals", "commands", "lifecycle", "routing", "checkpoints")})
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    producer = _Producer()
    producer.fail = True
    clients = ConsumerClients(client, producer, _Consumer(), _Log([]), "injected")  # type: ignore[arg-type]
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=CollectorRegistry(), clients=clients)
    try:
        with pytest.raises(DeliveryError, match="injected"):
            consumer.start(threading.Event())
        with pytest.raises(InfrastructureError, match=r"start\(\) was not called"):
            consumer.poll_once(0.0)
    finally:
        consumer.close()
    consumer.close()  # closing twice is harmless


def test_connect_to_a_kafka_that_does_not_answer_fails_in_one_line(redis_url: str, redis_prefix: str,
                                                                   keys_dir: Path) -> None:
    env = Env("127.0.0.1:1", redis_url, redis_prefix, keys_dir, {n: f"t.{n}" for n in (
        "gates", "rollbacks", "alerts", "approvals", "commands", "lifecycle", "routing", "checkpoints")})
    with pytest.raises(InfrastructureError, match="cannot read the Kafka cluster id"):
        ConsumerClients.connect(env.config(), timeout_s=1.0)
