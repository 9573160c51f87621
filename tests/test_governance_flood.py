"""Issue 12, defect 4: the governance consumer's liveness does not depend on the shape or volume of its input.

Against the real Kafka and Redis: the lease is kept by time (a consumer that polls nothing keeps it), it is
scoped to the audit log (another Redis prefix does not get a second writer), junk is rejected without a
signature, a transaction or a state write and summarised, and a genuine command behind 10,000 junk messages
applies within 5 s.
"""

from __future__ import annotations

import base64
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from governance.lifecycle.audit import AuditEntry, parse_entry
from governance.lifecycle.commands import Escalate, new_command, sign_command
from governance.lifecycle.identities import identity_signer
from governance.service.consumer import GovernanceConsumer, read_log
from tests.governance_kit import (
    Env,
    catalog,
    fast_policy,
    lifecycle_facts,
    make_env,
    make_keys,
    now_utc,
    running,
    seed_log,
    wait_until,
)

pytestmark = pytest.mark.integration
POLICY = fast_policy()
JUNK = 10_000


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("flood"))


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        keys_dir: Path) -> Env:
    return make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir)


def _consumer(env: Env, **changes: Any) -> GovernanceConsumer:
    return GovernanceConsumer(dataclasses.replace(env.config(), **changes), signer=env.signer(), trust=env.trust(),
                              policy=POLICY, catalog=catalog(), metrics=CollectorRegistry())


def _entries(env: Env) -> list[AuditEntry]:
    return [parse_entry(orjson.loads(r.value)["payload"]) for r in read_log(env.bootstrap, env.topics["lifecycle"])]


def _produce(env: Env, topic: str, values: list[bytes]) -> None:
    """All of ``values`` in one producer batch (so the consumer faces them as one backlog)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": env.bootstrap, "linger.ms": 20, "acks": "all"})
    failures: list[str] = []
    for value in values:
        while True:
            try:
                producer.produce(env.topics[topic], value, b"fraud",
                                 on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0 and failures == []


def _poll_until(consumer: GovernanceConsumer, predicate: Callable[[], bool], began: float, what: str,
                timeout_s: float = 30.0) -> float:
    """Poll ``consumer`` in this thread until ``predicate``; the seconds since ``began``."""
    while not predicate():
        assert time.monotonic() - began < timeout_s, f"timed out after {timeout_s} s waiting for {what}"
        consumer.poll_once(0.1)
    return time.monotonic() - began


def _escalation(env: Env, escalation_id: str) -> tuple[str, bytes]:
    now = now_utc()
    command = new_command(Escalate, identity="GID-08", now=now, model="fraud", version="1.0.0",
                          escalation_id=escalation_id, reason="label delay in EU")
    return command.command_id, orjson.dumps(sign_command(command, identity_signer(env.keys_dir, "GID-08", now), now))


def _junk(env: Env, n: int) -> tuple[list[bytes], dict[str, int]]:
    """``n`` hostile messages of five kinds: not JSON, unsigned, unknown key, wrong shape, altered signature."""
    _, genuine = _escalation(env, "ESC-junk")
    record = orjson.loads(genuine)
    unknown = {**record, "signature": {**record["signature"], "key_id": "mldsa65-00000000deadbeef"}}
    flipped = bytearray(base64.b64decode(record["signature"]["sig"]))
    flipped[9] ^= 0x01
    altered = {**record, "signature": {**record["signature"], "sig": base64.b64encode(bytes(flipped)).decode()}}
    kinds = [(b"\x00\xff" + b"junk" * 4, "invalid"), (orjson.dumps(record["payload"]), "unsigned"),
             (orjson.dumps(unknown), "unknown_key"), (b'{"payload": [1, 2], "signature": {"key_id": "x"}}', "invalid"),
             (orjson.dumps(altered), "bad_signature")]
    values = [kinds[i % len(kinds)][0] for i in range(n)]
    expected: dict[str, int] = {}
    for i in range(n):
        expected[kinds[i % len(kinds)][1]] = expected.get(kinds[i % len(kinds)][1], 0) + 1
    return values, expected


def test_the_lease_is_scoped_to_the_audit_log_not_the_redis_prefix(env: Env) -> None:
    """Two consumers of one audit log with different Redis prefixes: the second waits (before: both wrote)."""
    with running(env):
        other = dataclasses.replace(env, prefix=env.prefix + "-other")
        second = _consumer(other)
        stop, waited = threading.Event(), []
        threading.Timer(1.0, stop.set).start()
        try:
            assert not second.start(stop, on_wait=waited.append)
        finally:
            second.close()
        assert len(waited) == 1


def test_the_lease_is_kept_by_time_whatever_the_input(env: Env) -> None:
    """A consumer that handles nothing for three lease lifetimes still holds its lease (before: it lapsed
    after one ttl, because only a poll renewed it, and a second instance took over)."""
    ttl_s = 1.0
    first = _consumer(env, lease_ttl_s=ttl_s)
    client: redis.Redis[bytes] = redis.Redis.from_url(env.redis_url)
    try:
        assert first.start(threading.Event())
        began = time.monotonic()
        while time.monotonic() - began < 3 * ttl_s:  # the condition awaited IS the passing of three ttls
            assert client.get(first.lease.key) == first.lease.token.encode(), "the lease lapsed"
            time.sleep(0.05)
        second = _consumer(env, lease_ttl_s=ttl_s)
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        try:
            assert not second.start(stop)
        finally:
            second.close()
        assert first.lease.ok()
        first.poll_once(0.1)  # and the first one still works
    finally:
        first.close()
        client.close()


def test_a_genuine_command_behind_10000_junk_messages_applies_within_5_s(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "SHADOW")])
    values, expected = _junk(env, JUNK)
    command_id, genuine = _escalation(env, "ESC-1")
    registry = CollectorRegistry()
    _produce(env, "commands", [*values, genuine])  # the genuine command waits behind the whole backlog
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=POLICY,
                                  catalog=catalog(), metrics=registry)
    saves: list[int] = []
    save = consumer.store.save
    consumer.store.save = lambda *a, **k: (saves.append(1), save(*a, **k))[1]  # type: ignore[method-assign]
    try:
        began = time.monotonic()
        assert consumer.start(threading.Event())
        elapsed = _poll_until(consumer, lambda: command_id in consumer.state.seen, began, "the genuine command")
        _poll_until(consumer, lambda: sum(consumer.state.rejections.values()) == JUNK, time.monotonic(),
                    "every junk message summarised")
        assert consumer.lease.ok()
    finally:
        consumer.close()
    print(f"genuine command applied {elapsed:.2f} s after the consumer started, behind {JUNK} junk messages")
    assert elapsed < 5.0, f"the genuine command took {elapsed:.2f} s behind {JUNK} junk messages"
    entries = _entries(env)[1:]
    applied = [e for e in entries if e.outcome == "applied"]
    assert [(e.input.id, e.facts[0].kind) for e in applied] == [(command_id, "escalation_raised")]
    summaries = [e for e in entries if e.summary is not None]
    assert len(entries) == len(summaries) + 1 and len(summaries) <= 10  # not one entry per junk message
    totals: dict[str, int] = {}
    for entry in summaries:
        assert entry.summary is not None
        for reason, n in entry.summary.counts.items():
            totals[reason] = totals.get(reason, 0) + n
    assert totals == expected
    covered = sorted((e.summary.first_offset, e.summary.last_offset) for e in summaries if e.summary)
    assert covered[0][0] == 0 and covered[-1][1] == JUNK - 1  # every junk offset is in some summary
    assert len(saves) == 1 + len(entries)  # the start, then one per entry: none per junk message
    for reason, n in expected.items():
        assert registry.get_sample_value("shadowgate_governance_rejected_total", {"reason": reason}) == n


def test_restart_resumes_after_the_summarised_junk_and_counts_the_unsummarised_once(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "SHADOW")])
    values, expected = _junk(env, 50)
    with running(env) as consumer:
        _produce(env, "commands", values)
        wait_until(lambda: consumer.state.seq == 1, what="the summary")
    again = _consumer(env)
    try:
        assert again.start(threading.Event())
        assert again.poll_once(1.0) == [] and again.state.seq == 1 and len(again.tally) == 0  # nothing read again
    finally:
        again.close()
    # Junk the consumer counted but had not summarised when it stopped is read again and summarised once.
    more, extra = _junk(env, 20)
    with running(env) as consumer:
        consumer.tally.interval = consumer.tally.interval * 1000  # no summary before it stops
        _produce(env, "commands", more)
        wait_until(lambda: len(consumer.tally) == 20, what="the junk counted")
    with running(env) as again:
        wait_until(lambda: again.state.seq == 2, what="the summary after the restart")
        assert again.state.rejections == {k: expected[k] + extra[k] for k in expected}
    summaries = [e.summary for e in _entries(env)[1:]]
    assert [(s.first_offset, s.last_offset, s.count) for s in summaries if s] == [(0, 49, 50), (50, 69, 20)]
