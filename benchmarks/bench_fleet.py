"""Many comparisons on one worker: evaluation round time, and Redis memory per comparison (issue 17, target 4).

    python benchmarks/bench_fleet.py [--redis-url redis://127.0.0.1:6379/0] [--comparisons 1000] [--rounds 30]
                                     [--fill-pairs 120960] [--out benchmarks/results/fleet.json]

**Rounds.** ``--comparisons`` comparisons (model ``m0000`` ... , production ``1`` against shadow ``2``) on a
throwaway Redis prefix. Before each round the worker's :class:`~streams.worker.processor.Processor` folds one
pair of every comparison, one second of event time later than the round before (envelopes of 500 events, 4
partitions), so every comparison's event time has moved and the round must evaluate all of them: the worst
case. Each comparison got a first pair ``--stage-age-s`` (2 h) earlier, so its stage window is as long as in a
fleet that has been running (0: every comparison new, its stage window re-read every round). Then one
:meth:`~streams.worker.rounds.EvaluationLoop.round` runs as the worker's evaluation thread runs it (the
default policy, Redis evaluator states and leases, events signed with ML-DSA-65), and is timed. The first
round reads every window cold; p50/p99/max are over the rounds after it (nearest rank; p99 of 30 is the
maximum). Each round's count of evaluated comparisons is checked to be all of them.

**Memory.** ``MEMORY USAGE`` summed over every key of the prefix, and the ``INFO memory`` ``used_memory``
delta, divided by the comparisons (their windows then hold only the rounds' minutes). Then ONE comparison is
filled with 14 days of traffic ending now (``shadowgate.traffic``: ``--fill-pairs`` pairs spread evenly,
half of them labelled an hour later, two features), folded by the Processor on its own prefix, so each
minute slot of the last 26 h, hour slot of 14 d and day slot the retention keeps holds what that traffic
makes; its keys' ``MEMORY USAGE`` sum is the memory of one 14-day comparison at that rate (the window slots,
its meta and the partitions' state). Prefixes are deleted afterwards. Target: p99 round time under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis

from governance.contract.kafkaio import Record
from governance.crypto import Keyring
from governance.policy.document import load_policy
from shadowgate.traffic import TrafficSpec, generate
from streams.state.redis_store import RedisWindowStore
from streams.worker.evaluator_states import RedisEvaluatorStates
from streams.worker.processor import Processor
from streams.worker.rounds import EvaluationLoop, Evaluator, default_context

__all__ = ["fill_one", "rounds", "run"]

RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
PARTITIONS = 4
ENVELOPE = 500


def _key_bytes(client: redis.Redis[bytes], prefix: str) -> tuple[int, int]:
    """(keys, sum of MEMORY USAGE) under ``prefix``."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    total = 0
    for i in range(0, len(keys), 500):
        pipe = client.pipeline(transaction=False)
        for key in keys[i : i + 500]:
            pipe.memory_usage(key, samples=0)
        total += sum(int(v or 0) for v in pipe.execute())
    return len(keys), total


def _drop(client: redis.Redis[bytes], prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])


class _Feed:
    """Records for the Processor: envelopes per partition, offsets growing as on a topic."""

    def __init__(self) -> None:
        self.offsets = {("scores", p): 0 for p in range(PARTITIONS)} | {("labels", p): 0 for p in range(PARTITIONS)}

    def records(self, topic: str, events: list[dict[str, Any]], envelope: bool = True) -> list[Record]:
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for event in events:
            by_partition.setdefault(hash(event["request_id"]) % PARTITIONS, []).append(event)
        out: list[Record] = []
        for p, part in sorted(by_partition.items()):
            values = (
                [orjson.dumps({"events": part[i : i + ENVELOPE]}) for i in range(0, len(part), ENVELOPE)]
                if envelope
                else [orjson.dumps(e) for e in part]
            )
            for value in values:
                out.append(Record(topic, p, self.offsets[(topic, p)], None, value))
                self.offsets[(topic, p)] += 1
        return out


def _round_events(comparisons: int, ts: datetime, round_: int) -> list[dict[str, Any]]:
    stamp = ts.isoformat()
    events = []
    for i in range(comparisons):
        rid = f"r{round_}-{i}"
        for version, role, score in (("1", "production", 0.40), ("2", "shadow", 0.42)):
            events.append({"request_id": rid, "model": f"m{i:04d}", "version": version, "role": role,
                           "score": score + (i % 7) * 0.01, "latency_ms": 20.0, "ts": stamp})  # fmt: skip
    return events


def rounds(
    client: redis.Redis[bytes], prefix: str, comparisons: int, n_rounds: int, keys_dir: Path,
    stage_age_s: float = 7200.0,
) -> dict[str, Any]:  # fmt: skip
    """Fold one pair per comparison, then time one evaluation round; ``n_rounds`` times. Every comparison
    first gets one pair ``stage_age_s`` before the rounds: its stage window is that long, as in a fleet
    that has run for a while (the evaluator re-reads a window at 1/60 of its length: 2 h, every 2 min)."""
    store = RedisWindowStore(client, prefix=prefix)
    processor = Processor(store, scores_topic="scores", labels_topic="labels", fence_name=f"{prefix}/fleet")
    policy = load_policy(None)
    evaluator = Evaluator(store, policy, RedisEvaluatorStates(client, prefix), default_context(policy))
    now = datetime.now(UTC)
    Keyring(keys_dir).generate(now)
    loop = EvaluationLoop(evaluator, Keyring(keys_dir).signer(now), {"gates": "g", "rollbacks": "r", "alerts": "a"},
                          lease_s=3.0, owner=f"bench-{prefix}", idle_s=60.0)  # fmt: skip
    feed = _Feed()
    base = now.replace(microsecond=0) - timedelta(seconds=n_rounds + 5)
    times: list[float] = []
    fold_s: list[float] = []
    evaluated: list[int] = []
    events_out = 0
    if stage_age_s > 0:
        processor.process(feed.records("scores", _round_events(comparisons, base - timedelta(seconds=stage_age_s), -1)))
    for r in range(n_rounds):
        ts = base + timedelta(seconds=r)
        t0 = time.perf_counter()
        outcome = processor.process(feed.records("scores", _round_events(comparisons, ts, r)))
        fold_s.append(time.perf_counter() - t0)
        if outcome.pairs != comparisons:
            raise RuntimeError(f"round {r}: folded {outcome.pairs} pairs, expected {comparisons}")
        t0 = time.perf_counter()
        produced = loop.round()
        times.append(time.perf_counter() - t0)
        events_out += len(produced)
        evaluated.append(sum(1 for (second, _) in loop._last.values() if second == int(ts.timestamp())))  # noqa: SLF001
    warm = times[1:] or times
    ordered = sorted(warm)
    return {
        "comparisons": comparisons, "rounds": n_rounds, "evaluated_per_round": evaluated,
        "first_round_s": round(times[0], 3),
        "round_s": {"p50": round(statistics.median(ordered), 3),
                    "p99": round(ordered[min(len(ordered) - 1, -(-99 * len(ordered) // 100) - 1)], 3),
                    "max": round(ordered[-1], 3), "min": round(ordered[0], 3)},
        "per_comparison_ms": round(statistics.median(ordered) / comparisons * 1e3, 3),
        "fold_s_median": round(statistics.median(fold_s), 3), "governance_events": events_out,
        "stage_age_s": stage_age_s,
    }  # fmt: skip


def fill_one(client: redis.Redis[bytes], prefix: str, pairs: int, days: float = 14.0) -> dict[str, Any]:
    """ONE comparison with ``days`` of traffic ending now, folded by the Processor; its Redis footprint."""
    store = RedisWindowStore(client, prefix=prefix)
    processor = Processor(store, scores_topic="scores", labels_topic="labels", fence_name=f"{prefix}/fill")
    now = datetime.now(UTC)
    span_s = days * 86400.0 - 3600.0  # the labels come an hour after their pair: all of them before now
    spec = replace(TrafficSpec(), pairs=pairs, start=now - timedelta(days=days), rate_per_s=pairs / span_s,
                   label_share=0.5, label_delay_s=3600.0, seed=11)  # fmt: skip
    feed = _Feed()
    used0 = int(client.info("memory")["used_memory"])
    scores: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    folded = 0
    started = time.perf_counter()

    def flush() -> None:
        nonlocal folded
        records = feed.records("scores", scores) + feed.records("labels", labels, envelope=False)
        folded += processor.process(records).pairs
        scores.clear()
        labels.clear()

    for event in generate(spec):
        kind = event.pop("kind")
        event["ts"] = event["ts"].isoformat() if isinstance(event["ts"], datetime) else event["ts"]
        (labels if kind == "label" else scores).append(event)
        if len(scores) + len(labels) >= 20_000:
            flush()
    flush()
    seconds = time.perf_counter() - started
    keys, key_bytes = _key_bytes(client, prefix)
    used = int(client.info("memory")["used_memory"]) - used0
    if folded != pairs:
        raise RuntimeError(f"the 14-day fill folded {folded} pairs of {pairs}")
    return {"days": days, "pairs": pairs, "pairs_per_minute": round(pairs / (days * 1440), 2),
            "labels": "half, 1 h later", "keys": keys, "memory_usage_bytes": key_bytes,
            "used_memory_delta_bytes": used, "fill_s": round(seconds, 1)}  # fmt: skip


def run(url: str, comparisons: int, n_rounds: int, fill_pairs: int, stage_age_s: float = 7200.0) -> dict[str, Any]:
    # redis-py 8 gives up on a reply after 5 s; a Redis shared with other work on this machine stalled longer once.
    client: redis.Redis[bytes] = redis.Redis.from_url(url, socket_timeout=60.0)
    token = uuid.uuid4().hex[:10]
    fleet, one = f"benchfleet{token}", f"benchfill{token}"
    keys_dir = Path(tempfile.mkdtemp(prefix="sg-bench-fleet-"))
    try:
        used0 = int(client.info("memory")["used_memory"])
        timed = rounds(client, fleet, comparisons, n_rounds, keys_dir / "keys", stage_age_s)
        keys, key_bytes = _key_bytes(client, fleet)
        used = int(client.info("memory")["used_memory"]) - used0
        timed["memory"] = {"keys": keys, "memory_usage_bytes": key_bytes, "used_memory_delta_bytes": used,
                           "per_comparison_bytes": round(key_bytes / comparisons),
                           "per_comparison_used_memory_bytes": round(used / comparisons)}  # fmt: skip
        _drop(client, fleet)
        filled = fill_one(client, one, fill_pairs) if fill_pairs > 0 else None
    finally:
        _drop(client, fleet)
        _drop(client, one)
        client.close()
        shutil.rmtree(keys_dir, ignore_errors=True)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
        "rounds": timed, "fourteen_days": filled, "target_p99_s": 1.0,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--comparisons", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6 if quick else 90)
    # 14 days at one pair every 10 s (0 skips the fill).
    parser.add_argument("--fill-pairs", type=int, default=20_160 if quick else 120_960)
    parser.add_argument("--stage-age-s", type=float, default=7200.0,
                        help="each comparison's first pair this long before the rounds (0: all fresh)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.comparisons < 1 or args.rounds < 2:
        parser.error("--comparisons must be at least 1 and --rounds at least 2")
    report = run(args.redis_url, args.comparisons, args.rounds, args.fill_pairs, args.stage_age_s)
    r = report["rounds"]
    print(f"{r['comparisons']:,} comparisons, {r['rounds']} rounds: round p50 {r['round_s']['p50']} s, "
          f"p99 {r['round_s']['p99']} s, max {r['round_s']['max']} s (first, cold: {r['first_round_s']} s); "
          f"{r['per_comparison_ms']} ms per comparison; target p99 < 1 s: "
          f"{'met' if r['round_s']['p99'] < 1.0 else 'NOT met'}")  # fmt: skip
    m = r["memory"]
    print(f"Redis after the rounds: {m['keys']:,} keys, {m['per_comparison_bytes']:,} B per comparison (MEMORY USAGE), "
          f"{m['per_comparison_used_memory_bytes']:,} B (used_memory delta)")  # fmt: skip
    f = report["fourteen_days"]
    if f:
        print(f"one comparison, 14 days at {f['pairs_per_minute']} pairs/min ({f['pairs']:,} pairs): {f['keys']} keys, "
              f"{f['memory_usage_bytes'] / 1e6:.2f} MB (MEMORY USAGE), {f['used_memory_delta_bytes'] / 1e6:.2f} MB "
              f"(used_memory delta)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
