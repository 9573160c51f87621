"""The streaming worker as users run it: real `shadowgate worker` processes, the real broker and Redis.

Two workers share the partitions; the live windows (`shadowgate windows --json`) must equal the offline
replay of the same events (`shadowgate replay --json`), invalid messages must reach the dead-letter topic
with their reason, a worker killed with SIGKILL mid-stream must, once restarted, leave every window
exactly equal to the replay: each event counted once, no pair lost; and hostile timestamps must be dead
letters that move no watermark and break no read. (Faults of the servers: tests/test_worker_faults.py.)
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from governance.contract.publishing import decode_signed_event
from governance.crypto import DEFAULT_SCHEDULE, Keyring
from governance.errors import VerificationError
from tests.fault_servers import free_port
from tests.worker_kit import (
    WorkerEnv,
    counts,
    diff,
    make_env,
    publish,
    replay,
    replay_file,
    scrape,
    settled,
    traffic,
    wait_for,
    windows,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]



def _invalid(at: datetime) -> list[bytes]:
    """Three invalid messages; two name the model and claim ``at``, so they count in its 24 h window."""
    ts = at.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    return [
        b'{"request_id":"bad-1","model":"fraud-risk","version":"1.5.0","role":"shadow","score":1.5,'
        b'"latency_ms":3,"ts":"' + ts + b'"}',
        b"this is not json",
        b'{"request_id":"bad-2","model":"fraud-risk","version":"1.5.0","role":"champion","score":0.5,'
        b'"latency_ms":3,"ts":"' + ts + b'"}',
    ]


def test_two_workers_match_the_replay_and_dead_letter_invalid_messages(
    kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path
) -> None:
    env = make_env(kafka_bootstrap, redis_url, unique, tmp_path)
    events = traffic(3000)
    # Claimed inside the traffic's span (it starts 20 minutes ago), whatever the date the test runs on.
    invalid = _invalid(datetime.now(UTC) - timedelta(minutes=15))
    try:
        env.start_worker(tmp_path)
        env.start_worker(tmp_path)
        publish(env, events, invalid)
        live = settled(env, (3000, 3000), "both workers to fold 3000 pairs and labels")
        replay = env.cli("replay", str(replay_file(tmp_path / "traffic.jsonl", events, invalid)), "--json")
        assert replay.returncode == 0, replay.stderr.decode()
        offline = orjson.loads(replay.stdout)
        assert offline["stats"]["dead_letters"] == len(invalid)
        assert live["comparisons"] == offline["comparisons"], diff(live["comparisons"], offline["comparisons"])
        w = live["comparisons"][0]["windows"]["24h"]
        assert w["integrity_violations"] == 2  # the line that is not JSON names no model
        dlq = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"dlq-{unique}",
                        "auto.offset.reset": "earliest"})
        dlq.subscribe([env.topics.dlq])
        dead = wait_for(lambda: dlq.consume(num_messages=10, timeout=2.0), 60, "dead letters", env)
        while len(dead) < len(invalid):
            dead += dlq.consume(num_messages=10, timeout=2.0)
        dlq.close()
        assert sorted(m.value() for m in dead) == sorted(invalid)
        reasons = [dict(m.headers())["shadowgate.reason"].decode() for m in dead]
        assert any("score" in r for r in reasons) and any("JSON" in r for r in reasons)
        assert all(dict(m.headers())["shadowgate.source"].startswith(env.topics.scores.encode()) for m in dead)
        # The worker's evaluator published the same gate decisions as the replay (a ten-minute shadow is blocked
        # by its duration and sample size whenever it is evaluated), signed with ML-DSA-65.
        gates = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"gates-{unique}",
                          "auto.offset.reset": "earliest"})
        gates.subscribe([env.topics.gates])
        raw = wait_for(lambda: gates.consume(num_messages=10, timeout=2.0), 60, "a signed gate event", env)
        gates.close()
        now = datetime.now(UTC)
        trust = Keyring(env.keys_dir).trust_store()
        event = decode_signed_event(raw[0].value(), trust, now, DEFAULT_SCHEDULE.phase_at(now))
        offline_gates = [e for e in offline["events"] if e["type"].startswith("Gate")]
        assert [type(event).__name__] == [e["type"] for e in offline_gates]
        blocking = {"min_duration_met", "min_samples_met"}
        assert blocking <= {c.name for c in event.failing_checks}
        assert blocking <= {c["name"] for c in offline_gates[0]["failing_checks"]}
        forged = orjson.loads(raw[0].value())
        forged["payload"]["model"] = "someone-else"
        with pytest.raises(VerificationError):
            decode_signed_event(orjson.dumps(forged), trust, now, DEFAULT_SCHEDULE.phase_at(now))
    finally:
        env.stop_all()


def test_sigkill_mid_stream_then_restart_counts_every_event_exactly_once(
    kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path
) -> None:
    env = make_env(kafka_bootstrap, redis_url, unique, tmp_path)
    events = traffic(6000)
    try:
        first = env.start_worker(tmp_path)
        publish(env, events)
        wait_for(lambda: counts(windows(env))[0] >= 1000, 240, "the first worker to make progress", env)
        env.kill(first, signal.SIGKILL)
        partial = counts(windows(env))
        env.start_worker(tmp_path)
        live = settled(env, (6000, 6000), "the restarted worker to finish")
        replay = env.cli("replay", str(replay_file(tmp_path / "traffic.jsonl", events)), "--json")
        offline = orjson.loads(replay.stdout)
        differences = diff(live["comparisons"], offline["comparisons"])
        assert live["comparisons"] == offline["comparisons"], (partial, differences)
    finally:
        env.stop_all()


def _score(ts: str, rid: str, role: str, model: str = "fraud-risk") -> bytes:
    version = "1.4.0" if role == "production" else "1.5.0"
    return orjson.dumps({"request_id": rid, "model": model, "version": version, "role": role, "score": 0.5,
                         "latency_ms": 3.0, "ts": ts})  # fmt: skip


def _hostile() -> tuple[list[bytes], list[bytes]]:
    """Score and label messages dated far ahead, far behind, or at the end of time, through each decoder tier
    (native: plain; msgspec: an escaped name, or before 1684; the contract: 7 fraction digits, or the years
    0001 and 9999), and an invalid one claiming a far-future time."""
    scores: list[bytes] = []
    for i, (ts, escaped) in enumerate([
        ("2100-01-01T00:00:00Z", False), ("2000-01-01T00:00:00Z", False),      # native
        ("2100-01-01T00:00:00Z", True), ("1600-01-01T00:00:00Z", False),       # msgspec
        ("2100-01-01T00:00:00.1234567Z", False), ("9999-12-31T23:59:59Z", False),  # the contract
        ("0001-01-01T00:00:00Z", False),
    ]):  # fmt: skip
        for role in ("production", "shadow"):
            raw = _score(ts, f"hostile-{i}", role)
            scores.append(raw.replace(b"fraud-risk", b"fraud\\u002drisk") if escaped else raw)
    scores.append(orjson.dumps({**orjson.loads(_score("2100-01-01T00:00:00Z", "hostile-x", "shadow")), "score": 7}))
    labels = [orjson.dumps({"request_id": f"hostile-l{i}", "model": "fraud-risk", "label": 1, "ts": ts})
              for i, ts in enumerate(["2100-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])]
    return scores, labels


def test_hostile_timestamps_are_dead_letters_move_no_watermark_and_break_no_read(
    kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path
) -> None:
    """Far-future, far-past and year-9999 events in every decoder tier, scores and labels, amid the traffic of
    two models (issue 12, defect 3): before, one far-future pair moved the watermark and orphaned the traffic
    after it, and the year-9999 pair made `shadowgate windows` and `replay` fail for every model. Now each is a
    dead letter naming its bound, the windows of both models equal the replay's, and no watermark moved."""
    env = make_env(kafka_bootstrap, redis_url, unique, tmp_path)
    events = traffic(2000) + traffic(300, seed=5, model="bystander")
    events.sort(key=lambda e: e["ts"])
    scores, labels = _hostile()
    port = free_port()
    try:
        env.start_worker(tmp_path, metrics_port=port)
        half = len(events) // 2
        publish(env, events[:half], scores)
        producer = Producer({"bootstrap.servers": env.kafka_bootstrap})
        for raw in labels:
            producer.produce(env.topics.labels, key=b"bad", value=raw)
        assert producer.flush(30) == 0
        publish(env, events[half:])
        live = settled(env, (2000, 2000), "the worker to fold 2000 pairs and labels of fraud-risk", "fraud-risk")
        assert "errors" not in live
        path = replay_file(tmp_path / "traffic.jsonl", events, scores + labels)
        offline = replay(env, path)
        assert "errors" not in offline and "evaluation_errors" not in offline
        assert [c["model"] for c in live["comparisons"]] == ["bystander", "fraud-risk"]
        assert live["comparisons"] == offline["comparisons"], diff(live["comparisons"], offline["comparisons"])
        assert offline["stats"]["dead_letters"] == len(scores) + len(labels)
        for c in live["comparisons"]:
            assert c["windows"]["24h"]["orphan_count"] == 0, c["model"]
        newest = max(datetime.fromisoformat(str(e["ts"])) for e in events).timestamp()
        marks = [v for k, v in scrape(port).items() if k.startswith("shadowgate_watermark_seconds")]
        assert marks and max(marks) <= newest, (marks, newest)  # no hostile time moved a watermark
        dead = wait_for(lambda: _dead_reasons(env, len(scores) + len(labels)), 60, "every dead letter", env)
        bounded = [r for r in dead if "SHADOWGATE_MAX_EVENT_" in r]
        assert len(bounded) == len(scores) + len(labels) - 1  # all but the one the contract refuses (score 7)
    finally:
        env.stop_all()


def _dead_reasons(env: WorkerEnv, expected: int) -> list[str] | None:
    consumer = Consumer({"bootstrap.servers": env.kafka_bootstrap, "group.id": f"dlq-{env.unique}-{expected}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([env.topics.dlq])
    got: list[Any] = []
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while len(got) < expected and datetime.now(UTC) < deadline:
        got += consumer.consume(num_messages=100, timeout=1.0)
    consumer.close()
    if len(got) < expected:
        return None
    return [dict(m.headers())["shadowgate.reason"].decode() for m in got]
