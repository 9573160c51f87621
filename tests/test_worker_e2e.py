"""The streaming worker as users run it: real `shadowgate worker` processes, the real broker and Redis.

Two workers share the partitions; the live windows (`shadowgate windows --json`) must equal the offline
replay of the same events (`shadowgate replay --json`), invalid messages must reach the dead-letter topic
with their reason, and a worker killed with SIGKILL mid-stream must, once restarted, leave every window
exactly equal to the replay: each event counted once, no pair lost.
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
from shadowgate.sdk import LabelPublisher, ScorePublisher
from shadowgate.traffic import TrafficSpec, generate
from tests.worker_kit import WorkerEnv, jsonl, wait_for

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


def _env(kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path) -> WorkerEnv:
    keys = tmp_path / "keys"
    Keyring(keys).generate(datetime.now(UTC))
    env = WorkerEnv(kafka_bootstrap, redis_url, unique, keys)
    env.create_topics()
    return env


def _traffic(pairs: int) -> list[dict[str, Any]]:
    start = (datetime.now(UTC) - timedelta(minutes=20)).replace(microsecond=0)
    spec = TrafficSpec(pairs=pairs, start=start, rate_per_s=pairs / 600.0, label_delay_s=30.0, seed=11)
    return list(generate(spec))


def _publish(env: WorkerEnv, events: list[dict[str, Any]], invalid: list[bytes] = ()) -> None:  # type: ignore[assignment]
    t = env.topics
    with ScorePublisher(env.kafka_bootstrap, t.scores, batch_size=200) as scores, \
            LabelPublisher(env.kafka_bootstrap, t.labels) as labels:
        for event in events:
            body = dict(event)
            if body.pop("kind") == "score":
                scores.publish(body)
            else:
                labels.publish(body)
    if invalid:
        producer = Producer({"bootstrap.servers": env.kafka_bootstrap})
        for raw in invalid:
            producer.produce(t.scores, key=b"bad", value=raw)
        assert producer.flush(30) == 0


def _replay_file(tmp_path: Path, events: list[dict[str, Any]], invalid: list[bytes] = ()) -> Path:  # type: ignore[assignment]
    path = tmp_path / "traffic.jsonl"
    body = [{k: v for k, v in e.items() if k != "kind"} for e in events]
    path.write_bytes(jsonl(iter(body)) + b"".join(raw + b"\n" for raw in invalid))
    return path


def _windows(env: WorkerEnv) -> dict[str, Any]:
    out = env.cli("windows", "--json")
    assert out.returncode == 0, out.stderr.decode()
    return orjson.loads(out.stdout)  # type: ignore[no-any-return]


def _settled(env: WorkerEnv, counts: tuple[int, int], what: str) -> dict[str, Any]:
    """The windows once every event is folded: two reads in a row, the first already complete, that agree.

    One ``shadowgate windows`` call reads its windows one after another (5m first), so a call made while
    the last batch lands can show a 5m window older than its 24h one; only a read begun after the last
    apply is the final figure.
    """
    wait_for(lambda: _counts(_windows(env)) == counts, 240, what, env)
    last = [_windows(env)]

    def stable() -> dict[str, Any] | None:
        doc = _windows(env)
        same, last[0] = doc == last[0], doc
        return doc if same else None

    return wait_for(stable, 60, f"{what}: two equal reads", env)  # type: ignore[no-any-return]


def _counts(doc: dict[str, Any]) -> tuple[int, int]:
    if not doc["comparisons"]:
        return 0, 0
    w = doc["comparisons"][0]["windows"]["24h"]
    return w["sample_count"], w["label_count"]


def test_two_workers_match_the_replay_and_dead_letter_invalid_messages(
    kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path
) -> None:
    env = _env(kafka_bootstrap, redis_url, unique, tmp_path)
    events = _traffic(3000)
    # Claimed inside the traffic's span (it starts 20 minutes ago), whatever the date the test runs on.
    invalid = _invalid(datetime.now(UTC) - timedelta(minutes=15))
    try:
        env.start_worker(tmp_path)
        env.start_worker(tmp_path)
        _publish(env, events, invalid)
        live = _settled(env, (3000, 3000), "both workers to fold 3000 pairs and labels")
        replay = env.cli("replay", str(_replay_file(tmp_path, events, invalid)), "--json")
        assert replay.returncode == 0, replay.stderr.decode()
        offline = orjson.loads(replay.stdout)
        assert offline["stats"]["dead_letters"] == len(invalid)
        assert live["comparisons"] == offline["comparisons"], _diff(live["comparisons"], offline["comparisons"])
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
    env = _env(kafka_bootstrap, redis_url, unique, tmp_path)
    events = _traffic(6000)
    try:
        first = env.start_worker(tmp_path)
        _publish(env, events)
        wait_for(lambda: _counts(_windows(env))[0] >= 1000, 240, "the first worker to make progress", env)
        env.kill(first, signal.SIGKILL)
        partial = _counts(_windows(env))
        env.start_worker(tmp_path)
        live = _settled(env, (6000, 6000), "the restarted worker to finish")
        replay = env.cli("replay", str(_replay_file(tmp_path, events)), "--json")
        offline = orjson.loads(replay.stdout)
        diff = _diff(live["comparisons"], offline["comparisons"])
        assert live["comparisons"] == offline["comparisons"], (partial, diff)
    finally:
        env.stop_all()


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: live {a!r} != replay {b!r}"]
