"""The governance consumer on the real Kafka and Redis: gates promote, triggers roll back, forgeries change nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from governance.contract.kafkaio import Record
from governance.contract.publishing import decode_signed_event, encode_signed_event
from governance.contract.stages import Stage
from governance.errors import VerificationError
from governance.lifecycle.audit import AuditEntry
from governance.lifecycle.identities import identity_signer
from governance.service.consumer import GovernanceConsumer, read_log
from governance.service.statestore import StateStore
from shadowgate.routing_client import RoutingClient
from tests.governance_kit import (
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
    send_event,
    send_many,
    wait_until,
)

POLICY = fast_policy()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("gov"))


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        keys_dir: Path) -> Env:
    return make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir)


def _entries(env: Env) -> list[AuditEntry]:
    from governance.lifecycle.audit import parse_entry

    return [parse_entry(orjson.loads(r.value)["payload"]) for r in read_log(env.bootstrap, env.topics["lifecycle"])]


def _routing(env: Env, model: str = "fraud") -> RoutingClient:
    """A routing client that has read the assignment the consumer republished on start (transaction markers
    land a few ms after the commit, so the read is awaited)."""
    client = RoutingClient(env.bootstrap, env.topics["routing"], env.trust().system)
    client.refresh()
    client.start(0.05)
    wait_until(lambda: client.assignment(model) is not None, what=f"the routing of {model}")
    return client


def _stage(consumer: GovernanceConsumer, version: str) -> Stage:
    return consumer.state.registry.get("fraud", version).stage


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.integration
def test_gate_ready_promotes_shadow_to_staging_and_updates_routing(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "SHADOW")])
    registry = CollectorRegistry()
    with running(env, POLICY, registry) as consumer:
        routing = _routing(env)
        try:
            before = routing.assignment("fraud")
            assert before is not None and before.shadow == ["2.0.0"] and before.canary is None
            send_event(env, "gates", gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW"))
            wait_until(lambda: _stage(consumer, "2.0.0") is Stage.STAGING, what="2.0.0 in STAGING")
            wait_until(lambda: (a := routing.assignment("fraud")) is not None and a.canary is not None,
                       what="canary in the routing")
            after = routing.assignment("fraud")
            assert after is not None and after.production == "1.0.0" and after.shadow == []
            assert after.canary is not None and (after.canary.version, after.canary.share) == ("2.0.0", 0.05)
        finally:
            routing.close()
    entry = _entries(env)[-1]
    assert entry.outcome == "applied" and entry.gate is not None and entry.gate.passed
    assert [(f.kind, getattr(f, "to_stage", None)) for f in entry.facts] == [("transitioned", Stage.STAGING)]
    assert entry.facts[0].actor == "ALEX_AUTOMATED"
    assert _count(registry, "shadowgate_governance_transitions_total", to_stage="STAGING") == 1


@pytest.mark.integration
def test_rollback_trigger_restores_previous_production_within_seconds(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "PRODUCTION")])
    registry = CollectorRegistry()
    with running(env, POLICY, registry) as consumer:
        assert consumer.state.registry.models["fraud"].production == "2.0.0"
        routing = _routing(env)
        try:
            assert routing.assignment("fraud").production == "2.0.0"  # type: ignore[union-attr]
            began = time.monotonic()
            send_event(env, "rollbacks", rollback_trigger(POLICY, "fraud", "2.0.0", "1.0.0"))
            wait_until(lambda: routing.assignment("fraud").production == "1.0.0",  # type: ignore[union-attr]
                       timeout_s=10, what="1.0.0 serving again")
            elapsed = time.monotonic() - began
        finally:
            routing.close()
        wait_until(lambda: consumer.state.seq == 2, what="the rollback entry")
    assert elapsed < 5.0, f"rollback took {elapsed:.2f} s"
    entry = _entries(env)[-1]
    assert entry.rollback is not None and entry.rollback.status == "COMPLETED"
    assert (entry.rollback.from_version, entry.rollback.to_version) == ("2.0.0", "1.0.0")
    assert any(step.startswith("routing verified: production=1.0.0") for step in entry.rollback.steps)
    fact = entry.facts[0]
    assert (fact.kind, fact.restored_version, fact.rollback) == ("transitioned", "1.0.0", True)  # type: ignore[union-attr]
    assert consumer.state.registry.models["fraud"].production == "1.0.0"
    assert _stage(consumer, "2.0.0") is Stage.RETIRED
    assert _count(registry, "shadowgate_governance_rollbacks_total", status="COMPLETED") == 1
    alerts = [orjson.loads(r.value) for r in read_log(env.bootstrap, env.topics["alerts"])]
    assert [a["payload"]["severity"] for a in alerts] == ["warning"]
    assert decode_signed_event(orjson.dumps(alerts[0]), env.trust().system, now_utc(), env.trust().phase(now_utc()))
    print(f"rollback restored 1.0.0 in {elapsed * 1000:.0f} ms")


@pytest.mark.integration
def test_failed_rollback_pages_p0_and_leaves_production_serving(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION")])
    with running(env, POLICY) as consumer:
        send_event(env, "rollbacks", rollback_trigger(POLICY, "fraud", "1.0.0", None))
        wait_until(lambda: consumer.state.seq == 1, what="the rollback entry")
    entry = _entries(env)[-1]
    assert entry.rollback is not None and entry.rollback.status == "FAILED" and entry.facts == []
    assert "Target model not found" in (entry.rollback.error or "")
    assert consumer.state.registry.models["fraud"].production == "1.0.0"
    alerts = [orjson.loads(r.value)["payload"] for r in read_log(env.bootstrap, env.topics["alerts"])]
    assert [(a["severity"], a["summary"].split(":")[0]) for a in alerts] == [("critical", "P0 MODEL_ROLLBACK_FAILED")]


@pytest.mark.integration
def test_forged_unsigned_wrong_key_expired_and_replayed_events_change_nothing(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "SHADOW")])
    registry = CollectorRegistry()
    signer = env.signer()
    event = gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW")
    forged = orjson.loads(encode_signed_event(event, signer, now_utc()))
    forged["payload"]["gate"] = "something_else"
    stale_at = now_utc() - timedelta(hours=2)
    expired = gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW", now=stale_at, ttl=timedelta(hours=1))
    approver = identity_signer(env.keys_dir, "GID-08", now_utc())
    bad = [
        (event.to_json(), "unsigned"),
        (orjson.dumps(forged), "bad_signature"),
        (encode_signed_event(event, approver, now_utc()), "unknown_key"),
        (encode_signed_event(expired, signer, now_utc()), "expired"),
        (b"\x00not json", "invalid"),
    ]
    with running(env, POLICY, registry) as consumer:
        registry_before = consumer.state.registry
        send_many(env, "gates", [value for value, _ in bad])  # within one summary interval
        wait_until(lambda: consumer.state.seq == 2, what="the summary of the rejections")
        assert consumer.state.registry == registry_before
        genuine = encode_signed_event(event, signer, now_utc())
        send(env, "gates", genuine)
        wait_until(lambda: _stage(consumer, "2.0.0") is Stage.STAGING, what="the genuine event")
        promoted = consumer.state.registry
        send(env, "gates", genuine)  # the same signed bytes again, at a new offset: a replay
        wait_until(lambda: consumer.state.seq == 4, what="the summary of the replay")
        assert consumer.state.registry == promoted
    entries = _entries(env)
    assert [e.outcome for e in entries[2:]] == ["rejected", "applied", "rejected"]
    first, _, replay = entries[2:]
    assert first.summary is not None and replay.summary is not None
    # One summary entry for the five rejected messages (offsets 0..4 of the gates partition), not five entries.
    assert (first.summary.first_offset, first.summary.last_offset, first.input.offset) == (0, 4, 4)
    assert first.summary.counts == {reason: 1 for _, reason in bad}
    assert [sample.reason for sample in first.summary.samples] == [reason for _, reason in bad]
    assert replay.summary.counts == {"replayed": 1} and replay.summary.last_offset == 6
    assert consumer.state.rejections == {**{reason: 1 for _, reason in bad}, "replayed": 1}
    for _, reason in [*bad, (b"", "replayed")]:
        assert _count(registry, "shadowgate_governance_rejected_total", reason=reason) == 1
    alerts = [orjson.loads(r.value)["payload"] for r in read_log(env.bootstrap, env.topics["alerts"])]
    assert [(a["severity"], a["dedup_key"].split("|")[2]) for a in alerts] == [
        ("critical", "+".join(sorted(reason for _, reason in bad))), ("warning", "replayed")]


@pytest.mark.integration
def test_redelivery_and_restart_are_idempotent(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "SHADOW")])
    registry = CollectorRegistry()
    value = encode_signed_event(gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW"), env.signer(), now_utc())
    partition, offset = send(env, "gates", value)
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=registry)
    try:
        assert consumer.start()
        wait_until(lambda: bool(consumer.poll_once(0.2)) or consumer.state.seq == 2, what="the gate event")
        state = consumer.state
        assert _stage(consumer, "2.0.0") is Stage.STAGING
        record = Record(topic=env.topics["gates"], partition=partition, offset=offset, key=b"fraud", value=value)
        assert consumer.process(record) == []  # a redelivery of the same message: skipped
        assert consumer.state == state
        assert _count(registry, "shadowgate_governance_redelivered_total") == 1
    finally:
        consumer.close()
    client: redis.Redis[bytes] = redis.Redis.from_url(env.redis_url)
    try:
        assert StateStore(client, env.prefix).load() == state  # materialised == live state
    finally:
        client.close()
    again = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                               catalog=catalog(), metrics=CollectorRegistry())
    try:
        assert again.start()
        assert again.state == state  # rebuilt from the log == the state before the restart
        assert again.poll_once(1.0) == []  # the gate event is not read again: offsets live in the log
    finally:
        again.close()


@pytest.mark.integration
def test_second_instance_waits_for_the_lease(env: Env) -> None:
    with running(env, POLICY):
        second = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                    catalog=catalog(), metrics=CollectorRegistry())
        stop = threading.Event()
        waited: list[str] = []
        threading.Timer(0.5, stop.set).start()
        try:
            assert not second.start(stop, on_wait=waited.append)
        finally:
            second.close()
        assert len(waited) == 1
    third = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                               catalog=catalog(), metrics=CollectorRegistry())
    try:
        assert third.start(threading.Event())  # the first released its lease on exit
    finally:
        third.close()


@pytest.mark.integration
def test_forked_log_refuses_to_start_and_names_the_repair(env: Env) -> None:
    records = seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PROPOSAL"), lifecycle_facts("fraud", "2.0.0",
                                                                                           "PROPOSAL")])
    # A second, validly signed entry 1 after the same entry 0: what a rival writer leaves behind.
    from governance.crypto.record import record_bytes
    from governance.lifecycle.audit import EntryBody, Input, entry_hash, seal

    rival = EntryBody(at=now_utc(), input=Input(topic="seed", partition=0, offset=9, digest="0" * 64),
                      outcome="recorded")
    send(env, "lifecycle", record_bytes(seal(rival, 1, entry_hash(records[0]), env.signer(), now_utc())), b"audit")
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=CollectorRegistry())
    try:
        with pytest.raises(VerificationError, match=r"BROKEN at record #2 \(offset 2\): seq 1 where 2 .*a fork"
                                                    r".*shadowgate audit repair"):
            consumer.start()
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------ intake, without a broker


def _record(value: bytes, topic: str = "governance.commands", offset: int = 0) -> Record:
    return Record(topic=topic, partition=0, offset=offset, key=b"fraud", value=value)


def _command(identity: str = "GID-08", **fields: Any) -> Any:
    from governance.lifecycle.commands import Approve, new_command

    return new_command(Approve, identity=identity, now=now_utc(), model="fraud", version="1.0.0",
                       target="PRODUCTION", **fields)


def test_intake_proves_the_identity_and_refuses_replays(keys_dir: Path) -> None:
    from governance.crypto.record import sign_record
    from governance.crypto.signing import Context
    from governance.lifecycle.commands import sign_command
    from governance.lifecycle.identities import load_trust
    from governance.lifecycle.intake import Received, Refused, intake
    from governance.lifecycle.state import GovernanceState

    trust, now = load_trust(keys_dir), now_utc()
    gid08, gid02 = identity_signer(keys_dir, "GID-08", now), identity_signer(keys_dir, "GID-02", now)
    command = _command()
    genuine = orjson.dumps(sign_command(command, gid08, now))
    accepted = intake(_record(genuine), GovernanceState(), trust, now, "command")
    assert isinstance(accepted, Received) and accepted.command == command
    assert (accepted.input.actor, accepted.input.id) == ("GID-08", command.command_id)
    # GID-02's key cannot sign as GID-08; an approval signed under the event context is not an approval.
    impostor = intake(_record(orjson.dumps(sign_command(command, gid02, now))), GovernanceState(), trust, now,
                      "command")
    assert isinstance(impostor, Refused) and impostor.rejection.reason == "unknown_key"
    wrong_context = orjson.dumps(sign_record(command.model_dump(mode="json"), Context.EVENT, gid08, now))
    refused = intake(_record(wrong_context), GovernanceState(), trust, now, "command")
    assert isinstance(refused, Refused) and refused.rejection.reason == "bad_signature"
    assert "context" in refused.rejection.message
    nobody = intake(_record(orjson.dumps(sign_command(_command("GID-77"), gid08, now))), GovernanceState(), trust,
                    now, "command")
    assert isinstance(nobody, Refused) and nobody.rejection.reason == "unknown_key"
    # The same command id again (any offset) is a replay; after its expiry it is refused as expired.
    seen = GovernanceState(seen={command.command_id: 3})
    replay = intake(_record(genuine, offset=9), seen, trust, now, "command")
    assert isinstance(replay, Refused) and replay.rejection.reason == "replayed"
    late = intake(_record(genuine), GovernanceState(), trust, command.expires_at, "command")
    assert isinstance(late, Refused) and late.rejection.reason == "expired"
    # A command on an event topic is not accepted there.
    misplaced = intake(_record(genuine, topic="shadow.gates"), GovernanceState(), trust, now, "event")
    assert isinstance(misplaced, Refused) and misplaced.rejection.reason == "invalid"
