"""The worker under real faults, at the suite's scale: SIGKILLs of both workers, Redis stopped and killed, the Kafka
broker stopped and killed, a rival member of the workers' group, hostile messages of every kind, and a soak.

Every scenario ends in an exact comparison: the live windows (``shadowgate windows``) equal ``shadowgate replay``
of the same events, their counts are the generator's own (pairs and labels), and lost / double counted are the
samples and labels one side has and the other lacks.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from confluent_kafka import Consumer, Producer

from shadowgate.traffic import TrafficSpec, generate
from tests.fault_servers import KafkaBroker, RedisServer, free_port
from tests.reliability.kit import Row, Scale, compare_with_replay, hostile_worker_messages, paced, rss_kib
from tests.worker_kit import WorkerEnv, live_counts, make_env, publish, scrape, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _traffic(events: int, seed: int = 11, span_s: float = 600.0) -> tuple[list[dict[str, Any]], datetime]:
    """About ``events`` events (2 scores and 1 label per pair), starting 10 s past a minute about 20 minutes ago
    (so the traffic's last events stay clear of slot boundaries), over ``span_s`` of event time."""
    now = datetime.now(UTC)
    start = (now - timedelta(minutes=20)).replace(second=10, microsecond=0)
    pairs = max(1, events // 3)
    spec = TrafficSpec(pairs=pairs, start=start, rate_per_s=pairs / span_s, seed=seed, label_delay_s=30.0)
    return list(generate(spec)), start


def _expected(events: list[dict[str, Any]]) -> tuple[int, int]:
    """(pairs, labels) as the generator made them: the independent count the windows must hold."""
    return sum(e["kind"] == "score" for e in events) // 2, sum(e["kind"] == "label" for e in events)


def _ident(unique: str, i: int) -> dict[str, str]:
    return {"SHADOWGATE_INSTANCE_ID": f"w{i}-{unique}"}


def _start_two(env: WorkerEnv, tmp_path: Path, unique: str, extra: dict[str, str] | None = None
               ) -> tuple[list[subprocess.Popen[bytes]], list[int]]:  # fmt: skip
    ports = [free_port(), free_port()]
    procs = [env.start_worker(tmp_path, metrics_port=port, extra_env={**_ident(unique, i), **(extra or {})})
             for i, port in enumerate(ports)]  # fmt: skip
    wait_for(lambda: all(scrape(p).get("shadowgate_partitions_assigned") == 4 for p in ports), 180,
             "4 + 4 partitions", env)  # fmt: skip
    return procs, ports


def _parts(events: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    return [events[i * len(events) // n : (i + 1) * len(events) // n] for i in range(n)]


def _retries(ports: list[int]) -> int:
    return int(sum(v for port in ports for k, v in scrape(port).items()
                   if k.startswith("shadowgate_batch_retries_total{")))  # fmt: skip


def _holding(ports: list[int]) -> bool:
    return any(scrape(port).get("shadowgate_batch_age_seconds", 0.0) > 0 for port in ports)


def _finish(env: WorkerEnv, tmp_path: Path, events: list[dict[str, Any]], report: Callable[..., Row], scenario: str,
            faults: str, invalid: list[bytes] = (), timeout_s: float = 900, **detail: Any) -> dict[str, Any]:  # type: ignore[assignment]  # fmt: skip
    """The exact comparison every worker scenario ends in; reports the row, then asserts."""
    lost, double, offline, differences = compare_with_replay(env, tmp_path, events, list(invalid), timeout_s)
    pairs, labels = _expected(events)
    stats = offline["stats"]
    row = report(scenario, events=len(events) + len(invalid), faults=faults, lost=lost, double=double,
                 pairs=pairs, labels=labels, replay_pairs=stats["pairs"], dead_letters=stats["dead_letters"],
                 windows_equal_replay=not differences, **detail)
    assert not differences, differences[:20]
    assert (lost, double) == (0, 0), row
    assert (stats["pairs"], stats["labels"]) == (pairs, labels), stats  # the counts add up: the generator's own
    return offline  # type: ignore[no-any-return]


def test_two_workers_sigkilled_again_and_again(kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path,
                                                scale: Scale, report: Callable[..., Row]) -> None:
    """Two workers (static members), each SIGKILLed in turn mid-stream and started again at once."""
    env = make_env(kafka_bootstrap, redis_url, unique, tmp_path)
    events, _ = _traffic(scale.kill_events)
    parts = _parts(events, 2 * scale.kills + 2)
    try:
        procs, ports = _start_two(env, tmp_path, unique)
        kills = 0
        for i, part in enumerate(parts):
            before = live_counts(env)[0]
            publish(env, part)
            if i % 2 == 0 and kills < scale.kills:
                victim = kills % 2
                wait_for(lambda b=before: live_counts(env)[0] > b, 180, "the workers to be folding", env, 0.05)
                env.kill(procs[victim], signal.SIGKILL)
                kills += 1
                procs[victim] = env.start_worker(tmp_path, metrics_port=ports[victim],
                                                 extra_env=_ident(unique, victim))  # fmt: skip
        _finish(env, tmp_path, events, report, "2 workers SIGKILLed", f"{kills} worker SIGKILLs (+ restarts)",
                kills=kills)
        assert kills >= scale.kills
    finally:
        env.stop_all()


RIVAL = """
import sys
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2], "enable.auto.commit": False,
              "partition.assignment.strategy": "range", "session.timeout.ms": 10000,
              "heartbeat.interval.ms": 2000, "auto.offset.reset": "earliest"})
c.subscribe(sys.argv[3:])
read = 0
while True:
    read += sum(m.error() is None for m in c.consume(500, 0.5))
    print(read, len(c.assignment()), flush=True)
"""


def test_a_rival_member_of_the_workers_group(kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path,
                                             scale: Scale, report: Callable[..., Row]) -> None:
    """A rogue consumer joins the workers' group mid-stream (a rebalance hands it partitions), reads without
    committing, and is SIGKILLed: its partitions come back after the session timeout and nothing is lost."""
    env = make_env(kafka_bootstrap, redis_url, unique, tmp_path)
    events, _ = _traffic(scale.rival_events, seed=12)
    first, during, after = _parts(events, 3)
    out = tmp_path / "rival.out"
    rival: subprocess.Popen[bytes] | None = None
    try:
        _, ports = _start_two(env, tmp_path, unique)
        publish(env, first)
        with out.open("wb") as sink:
            rival = subprocess.Popen([sys.executable, "-c", RIVAL, kafka_bootstrap, f"g-{unique}", env.topics.scores,
                                      env.topics.labels], stdout=sink, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        wait_for(lambda: _rival_state(out)[1] > 0, 120, "the rival to be assigned partitions", env)
        publish(env, during)
        wait_for(lambda: _rival_state(out)[0] > 0, 120, "the rival to read records", env)
        os.killpg(rival.pid, signal.SIGKILL)
        rival.wait(30)
        publish(env, after)
        read, held = _rival_state(out)
        _finish(env, tmp_path, events, report, "rival member of the workers' group",
                "1 rival group member (SIGKILLed)", rival_read=read, rival_partitions=held)
    finally:
        if rival is not None and rival.poll() is None:
            os.killpg(rival.pid, signal.SIGKILL)
            rival.wait(30)
        env.stop_all()


def _rival_state(out: Path) -> tuple[int, int]:
    """(records the rival read, partitions it holds), from its last line."""
    lines = out.read_text().split() if out.exists() else []
    return (int(lines[-2]), int(lines[-1])) if len(lines) >= 2 and lines[-1].isdigit() else (0, 0)


def test_redis_stopped_and_killed_mid_stream(kafka_bootstrap: str, unique: str, tmp_path: Path, scale: Scale,
                                             report: Callable[..., Row]) -> None:
    """A private Redis (AOF, ``appendfsync always``) stopped with SIGTERM for 4 s, later killed with SIGKILL for
    3 s, while two workers fold. ``always`` because with ``everysec`` Redis itself may drop the last second
    of acknowledged writes on a SIGKILL (docs/reliability.md): the worker cannot make up for that."""
    with RedisServer(tmp_path / "redis", fsync="always") as server:
        env = make_env(kafka_bootstrap, server.url, unique, tmp_path)
        events, _ = _traffic(scale.server_events, seed=13)
        parts = _parts(events, 6)
        try:
            _, ports = _start_two(env, tmp_path, unique)
            for i, part in enumerate(parts):
                if i not in (1, 3):
                    publish(env, part)
                    continue
                # Redis holds writes, so a worker is sure to be in a batch (its apply waiting) when Redis goes:
                # fast workers could fold a whole part between two polls and the outage would hit nothing.
                redis.Redis.from_url(server.url).execute_command("CLIENT", "PAUSE", "15000", "WRITE")
                publish(env, part)
                wait_for(lambda: _holding(ports), 60, "a worker to hold a batch", env, 0.02)
                if i == 1:
                    server.stop()
                    paced(4.0)
                else:
                    server.kill()
                    paced(3.0)
                server.start()
            retries = _retries(ports)
            _finish(env, tmp_path, events, report, "Redis restart + kill -9 (AOF)",
                    "Redis SIGTERM 4 s, Redis SIGKILL 3 s", batch_retries=retries)
            assert retries >= 1, "the outages hit no batch: the scenario proved nothing"
        finally:
            env.stop_all()


def test_kafka_broker_stopped_and_killed_mid_stream(fault_kafka: KafkaBroker, redis_url: str, unique: str,
                                                    tmp_path: Path, scale: Scale, report: Callable[..., Row]) -> None:
    """The only (private) broker stopped with SIGTERM, later killed with SIGKILL, 6 s each, while two static
    members fold: batches that cannot commit (or deliver their dead letters) are tried again."""
    env = make_env(fault_kafka.bootstrap, redis_url, unique, tmp_path)
    events, _ = _traffic(scale.server_events, seed=14)
    parts = _parts(events, 6)
    try:
        _, ports = _start_two(env, tmp_path, unique, {"SHADOWGATE_DLQ_TIMEOUT_S": "2"})
        for i, part in enumerate(parts):
            if i not in (1, 3):
                publish(env, part, batch_size=20)
                continue
            # Redis holds writes for 5 s, so a worker is sure to hold a batch when the broker goes; its commit
            # (or dead letters) then meets no broker and is tried again.
            redis.Redis.from_url(redis_url).execute_command("CLIENT", "PAUSE", "5000", "WRITE")
            publish(env, part, batch_size=20)
            wait_for(lambda: _holding(ports), 60, "a worker to hold a batch", env, 0.02)
            if i == 1:
                fault_kafka.stop()
            else:
                fault_kafka.kill()
            paced(6.0)
            fault_kafka.start()
        retries = _retries(ports)
        _finish(env, tmp_path, events, report, "Kafka broker restart + kill -9",
                "broker SIGTERM 6 s, broker SIGKILL 6 s", batch_retries=retries)
        assert retries >= 1, "the outages hit no batch: the scenario proved nothing"
    finally:
        env.stop_all()


def test_hostile_messages_of_every_kind(kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path,
                                        scale: Scale, report: Callable[..., Row],
                                        make_topic: Callable[..., str]) -> None:
    """Hostile messages on the worker's inputs (32 kinds: every one a dead letter with a reason) amid valid
    traffic, and on the governance consumer's inputs (tests/reliability/test_governance.py's kinds: forged,
    replayed, wrong context...): windows = replay, every hostile worker message in the dead-letter topic once,
    every governance one rejected for its reason and none applied."""
    from tests.reliability.test_governance import governance_hostile, start_governance

    gov_n = scale.hostile // 10
    env = make_env(kafka_bootstrap, redis_url, unique, tmp_path)
    events, start = _traffic(scale.hostile_pairs * 3, seed=15)
    hostile = hostile_worker_messages(scale.hostile - gov_n, ts=start + timedelta(seconds=30))
    # Timeless ones (a model named, no time believed: counted at the partition's watermark) go after the valid
    # traffic, where every partition's watermark and the replay's lie in the same slot; the others interleave.
    timeless = [h for h in hostile if h[0] in TIMELESS]
    placed = [h for h in hostile if h[0] not in TIMELESS]
    parts = _parts(events, 10)
    slices = [placed[i * len(placed) // 6 : (i + 1) * len(placed) // 6] for i in range(6)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4_000_000,
                         "compression.type": "lz4", "linger.ms": 20, "acks": "all"})  # fmt: skip
    order: list[bytes | dict[str, Any]] = []
    with start_governance(kafka_bootstrap, redis_url, unique, make_topic, tmp_path) as gov:
        governance_messages, reasons, gov_kinds = governance_hostile(gov, gov_n)
        try:
            _start_two(env, tmp_path, unique)  # settled in the group first: a partition moving mid-stream is
            # another scenario (its integrity-violation counts can differ from the replay's, see the docs)
            for i, part in enumerate(parts):
                publish(env, part)
                order.extend(part)
                if 1 <= i <= len(slices):
                    _produce(producer, env, slices[i - 1])
                    order.extend(v for _, _, v in slices[i - 1])
                    gov.send_many(governance_messages[(i - 1) * gov_n // 6 : i * gov_n // 6])
            _produce(producer, env, timeless)
            order.extend(v for _, _, v in timeless)
            offline = _finish_ordered(env, tmp_path, order, events, report, hostile, gov, reasons, gov_kinds)
        finally:
            env.stop_all()
    assert offline["stats"]["dead_letters"] == len(hostile)


TIMELESS = {"far-future ts", "far-past ts", "year 9999 ts", "ts offset out of UTC range", "naive ts",
            "ts not a date", "label far-future"}


def _produce(producer: Producer, env: WorkerEnv, messages: list[tuple[str, str, bytes]]) -> None:
    failures: list[str] = []
    for n, (_, topic, value) in enumerate(messages):
        while True:
            try:
                producer.produce(getattr(env.topics, topic), value, str(n).encode(),
                                 on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0 and failures == [], failures[:5]


def _finish_ordered(env: WorkerEnv, tmp_path: Path, order: list[bytes | dict[str, Any]], events: list[dict[str, Any]],
                    report: Callable[..., Row], hostile: list[tuple[str, str, bytes]], gov: Any,
                    reasons: dict[str, int], gov_kinds: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """The exact comparison of the hostile scenario: the replay file keeps the order of publication."""
    import orjson

    from tests.reliability.kit import settle
    from tests.worker_kit import diff, replay

    path = tmp_path / "hostile.jsonl"
    with path.open("wb") as f:
        for item in order:
            if isinstance(item, dict):
                f.write(orjson.dumps({k: v for k, v in item.items() if k != "kind"}) + b"\n")
            else:
                f.write(item + b"\n")
    offline = replay(env, path)
    pairs, labels = _expected(events)
    expected = {c["model"]: (c["windows"]["24h"]["sample_count"], c["windows"]["24h"]["label_count"])
                for c in offline["comparisons"]}  # fmt: skip
    live = settle(env, expected, 900)
    differences = diff(live["comparisons"], offline["comparisons"])
    got = {c["model"]: (c["windows"]["24h"]["sample_count"], c["windows"]["24h"]["label_count"])
           for c in live["comparisons"]}  # fmt: skip
    lost = sum(max(0, a - b) for m in expected for a, b in zip(expected[m], got.get(m, (0, 0)), strict=True))
    double = sum(max(0, b - a) for m in got for a, b in zip(expected.get(m, (0, 0)), got[m], strict=True))
    sources = _dead_letter_sources(env, len(hostile))
    rejected = gov.wait_rejected(sum(reasons.values()))
    kinds = collections.Counter(kind for kind, _, _ in hostile)
    row = report("hostile messages", events=len(events) + len(hostile) + sum(reasons.values()),
                 faults=f"{len(hostile) + sum(reasons.values()):,} hostile messages of {len(kinds) + len(gov_kinds)} "
                        "kinds", lost=lost, double=double,
                 worker_kinds=dict(kinds), governance_kinds=gov_kinds, governance_reasons=reasons,
                 governance_rejected=rejected,
                 dead_letters=len(sources), dead_letters_twice=sum(n > 1 for n in sources.values()),
                 forged_accepted=gov.applied_other_than_genuine(), windows_equal_replay=not differences,
                 differences=differences[:20])
    assert not differences, differences[:20]
    assert (lost, double) == (0, 0), row
    assert (offline["stats"]["pairs"], offline["stats"]["labels"]) == (pairs, labels)
    assert len(sources) == len(hostile) and max(sources.values()) == 1, "every hostile message a dead letter, once"
    assert rejected == reasons and gov.applied_other_than_genuine() == 0
    gov.verify()
    return offline


def _dead_letter_sources(env: WorkerEnv, expected: int, timeout_s: float = 300) -> collections.Counter[str]:
    """How often each source (topic/partition/offset) is in the dead-letter topic, once ``expected`` are."""
    consumer = Consumer({"bootstrap.servers": env.kafka_bootstrap, "group.id": f"dlq-{env.unique}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([env.topics.dlq])
    sources: collections.Counter[str] = collections.Counter()
    deadline, quiet = time.monotonic() + timeout_s, 0
    try:
        while time.monotonic() < deadline and (len(sources) < expected or quiet < 3):
            batch = consumer.consume(num_messages=1000, timeout=1.0)
            quiet = 0 if batch else quiet + 1
            for m in batch:
                if m.error() is None:
                    sources[dict(m.headers() or [])["shadowgate.source"].decode()] += 1
    finally:
        consumer.close()
    return sources


def test_soak_with_flat_memory(kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path, scale: Scale,
                               report: Callable[..., Row]) -> None:
    """Two workers under steady traffic for ``scale.soak_s`` (600 s in the full form): their RSS, sampled every
    5 s, is flat after a warm-up (the first 20 %): the median of the last third within 10 % of the first
    third's (asserted from 120 s on; the short form's 20 s only reports it), and the windows equal the replay."""
    env = make_env(kafka_bootstrap, redis_url, unique, tmp_path)
    per_s = scale.soak_pairs_per_s
    events, _ = _traffic(int(per_s * scale.soak_s * 3), seed=16, span_s=scale.soak_s)
    seconds = max(1, int(scale.soak_s))
    parts = _parts(events, seconds)
    samples: list[tuple[float, int]] = []
    try:
        procs, _ = _start_two(env, tmp_path, unique)
        began = time.monotonic()
        next_sample = began
        for i, part in enumerate(parts):
            publish(env, part)
            if time.monotonic() >= next_sample:
                samples.append((time.monotonic() - began, sum(rss_kib(p.pid) for p in procs)))
                next_sample += 5.0
            ahead = began + i + 1 - time.monotonic()
            if ahead > 0:
                paced(ahead)
        rss = np.array([kib for _, kib in samples], dtype=float)
        t = np.array([s for s, _ in samples])
        warm = t >= 0.2 * t[-1] if len(rss) >= 6 else np.ones(len(t), dtype=bool)  # after a warm-up
        kept, kept_t = rss[warm], t[warm]
        third = max(1, len(kept) // 3)
        first, last = float(np.median(kept[:third])), float(np.median(kept[-third:]))
        growth = (last - first) / first
        slope = float(np.polyfit(kept_t, kept, 1)[0]) * 60 / 1024 if len(kept) >= 2 else 0.0
        _finish(env, tmp_path, events, report, f"soak {scale.soak_s / 60:.1f} min",
                f"none (RSS sampled {len(samples)}x)", rss_first_mib=round(first / 1024, 1),
                rss_last_mib=round(last / 1024, 1), rss_growth_pct=round(100 * growth, 1),
                rss_slope_mib_per_min=round(slope, 2), rss_samples_mib=[round(k / 1024, 1) for k in rss])
        if scale.soak_s >= 120:  # shorter, the RSS is still warming up: figures only
            assert growth < 0.10, f"RSS of the two workers grew {100 * growth:.1f} % ({first:.0f} -> {last:.0f} KiB)"
    finally:
        env.stop_all()
