"""Memory of the joins' state, per entry, and the worker's RSS over a steady run (issue 17, target 6).

    python benchmarks/bench_memory.py [--bootstrap 127.0.0.1:9092] [--redis-url redis://127.0.0.1:6379/0]
                                      [--entries 100000] [--soak-s 600] [--rate 1000] [--label-delay-s 20]

**Per entry** (each in a process of its own, so one measurement's freed memory does not hide the next's):
the worker's :class:`~streams.worker.processor.Processor` (native joins, Redis store on a throwaway prefix)
is given ``--entries`` events over 4 partitions in envelopes of 500, all in one second of event time, so
nothing expires (36-character request ids, two features, as the SDK sends them):

* ``half_pair``: production events only, each waiting for its candidate;
* ``pair_waiting_label``: both sides, no labels: each pair waits for its label;
* ``label_waiting``: labels only, each waiting for its pairs.

Reported: the growth of the process's RSS (``/proc/self/statm``) per entry, and of the Redis state (the
``MEMORY USAGE`` sum of the prefix's keys: the compressed state log) per entry. Each count is checked with
``Processor.pending`` (or, for labels, nothing paired and nothing dropped).

**Steady run.** One ``shadowgate worker`` on throwaway topics gets real-time traffic for ``--soak-s`` seconds
(default 600, the 10 minutes of issue 17; ``BENCH_SOAK_S`` shortens it): ``--rate`` pairs/s stamped now, as
one envelope per partition every 50 ms, and every pair's label ``--label-delay-s`` later (one message each),
so the joins hold about rate x delay pairs waiting for labels. A label stays remembered until the label
horizon has passed it (``SHADOWGATE_LABEL_HORIZON_S``, 3 days by default, so that a second pair of its request
still joins it): at the default the labels grow for 3 days or up to ``max_label_pending`` (1,000,000), so the
run sets a horizon of ``--label-horizon-s`` (30 s) to reach the steady state within minutes. The worker's RSS is
sampled every 2 s; after a warm-up of label delay + horizon + 10 s (the state filling up), the least-squares
slope of RSS over time and the first/last/min/max are reported. "Flat": the fitted growth over the whole
steady part is under 2 % of the RSS. The worker must have folded every pair and label at the end (checked
on its windows).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from confluent_kafka import Producer
from harness import PRODUCER, Harness

from governance.contract.comparison import ComparisonKey
from governance.contract.kafkaio import Record
from streams.state.redis_store import RedisWindowStore
from streams.worker.processor import Processor
from streams.worker.reading import read_snapshot

__all__ = ["per_entry", "soak"]

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
PARTITIONS = 4
ENVELOPE = 500
_PAGE = os.sysconf("SC_PAGE_SIZE")
KINDS = ("half_pair", "pair_waiting_label", "label_waiting")


def _rss(pid: int | str = "self") -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def _events(kind: str, n: int, ts: str, first: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    scores: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for i in range(first, first + n):
        rid = str(uuid.UUID(int=i + 1))
        feats = {"amount": float(i % 997), "country": ("DE", "FR", "US")[i % 3]}
        if kind == "label_waiting":
            labels.append({"request_id": rid, "model": "mem", "label": i % 2, "ts": ts})
            continue
        scores.append({"request_id": rid, "model": "mem", "version": "1", "role": "production", "score": 0.3,
                       "latency_ms": 20.0, "ts": ts, "features": feats})  # fmt: skip
        if kind == "pair_waiting_label":
            scores.append({"request_id": rid, "model": "mem", "version": "2", "role": "shadow", "score": 0.35,
                           "latency_ms": 25.0, "ts": ts, "features": feats})  # fmt: skip
    return scores, labels


def _records(
    scores: list[dict[str, Any]], labels: list[dict[str, Any]], offsets: dict[tuple[str, int], int]
) -> list[Record]:
    """Envelopes of 500 scores and single labels per partition, at the next ``offsets`` (advanced)."""
    out: list[Record] = []
    parts: dict[int, list[dict[str, Any]]] = {}
    for event in scores:
        parts.setdefault(int(event["request_id"][-4:], 16) % PARTITIONS, []).append(event)
    for p, events in sorted(parts.items()):
        for i in range(0, len(events), ENVELOPE):
            value = orjson.dumps({"events": events[i : i + ENVELOPE]})
            out.append(Record("scores", p, offsets[("scores", p)], None, value))
            offsets[("scores", p)] += 1
    for label in labels:
        p = int(label["request_id"][-4:], 16) % PARTITIONS
        out.append(Record("labels", p, offsets[("labels", p)], None, orjson.dumps(label)))
        offsets[("labels", p)] += 1
    return out


def _one_kind(kind: str, n: int, redis_url: str) -> dict[str, Any]:
    """In a process of its own: RSS and Redis growth of ``n`` waiting entries of ``kind``."""
    client = redis.Redis.from_url(redis_url)
    prefix = f"benchmem{uuid.uuid4().hex[:10]}"
    store = RedisWindowStore(client, prefix=prefix)
    processor = Processor(store, scores_topic="scores", labels_topic="labels", fence_name=f"{prefix}/mem",
                          max_pending=n, max_label_pending=n)  # fmt: skip
    try:
        ts = datetime.now(UTC).replace(microsecond=0).isoformat()
        # Warm up (imports, the native core, the first partition states) with a few entries of another model.
        warm_s, warm_l = _events(kind, 200, ts)
        for e in warm_s + warm_l:
            e["model"] = "warm"
        offsets = {("scores", p): 0 for p in range(PARTITIONS)} | {("labels", p): 0 for p in range(PARTITIONS)}
        processor.process(_records(warm_s, warm_l, offsets))
        keys0 = sum(int(client.memory_usage(k, samples=0) or 0) for k in client.scan_iter(f"{prefix}:*"))
        gc.collect()
        rss0 = _rss()
        # 2,000 entries at a time, made and dropped: what stays is the joins' state.
        took = 0
        for start in range(0, n, 2000):
            scores, labels = _events(kind, min(2000, n - start), ts, start)
            took += processor.process(_records(scores, labels, offsets)).labels
        del scores, labels
        gc.collect()
        rss1 = _rss()
        keys1 = sum(int(client.memory_usage(k, samples=0) or 0) for k in client.scan_iter(f"{prefix}:*"))
        pending = processor.pending()
        warm = {"half_pair": 200, "pair_waiting_label": 0, "label_waiting": 0}[kind]
        half = sum(v[0] for v in pending.values()) - warm
        waiting = sum(v[1] for v in pending.values()) - (200 if kind == "pair_waiting_label" else 0)
        counted = {"half_pair": half, "pair_waiting_label": waiting, "label_waiting": took}[kind]
        if kind == "label_waiting" and took < n:
            raise RuntimeError(f"{took} labels taken, expected {n}")
        if kind == "half_pair" and half < n:
            raise RuntimeError(f"{half} half-pairs pending, expected {n}")
        if kind == "pair_waiting_label" and waiting < n:
            raise RuntimeError(f"{waiting} pairs waiting for labels, expected {n}")
        return {"kind": kind, "entries": n, "counted": counted, "rss_bytes_per_entry": round((rss1 - rss0) / n, 1),
                "redis_bytes_per_entry": round((keys1 - keys0) / n, 1),
                "pending": {str(k): v for k, v in pending.items()}}  # fmt: skip
    finally:
        for key in list(client.scan_iter(f"{prefix}:*")):
            client.delete(key)
        client.close()


def per_entry(n: int, redis_url: str) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    out = []
    for kind in KINDS:
        with ctx.Pool(1) as pool:
            out.append(pool.apply(_one_kind, (kind, n, redis_url)))
    return out


def soak(
    bootstrap: str, redis_url: str, seconds: float, rate: float, label_delay_s: float, label_horizon_s: float = 30.0
) -> dict[str, Any]:
    h = Harness(bootstrap, redis_url)
    try:
        h.setup()
        proc = h.start_worker("m", settings={"SHADOWGATE_LABEL_HORIZON_S": str(label_horizon_s)})
        store = h.store("m")
        producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
        key = ComparisonKey("soak", "1", "2", "shadow")
        started = time.monotonic()
        sent_pairs = sent_labels = seq = 0
        due = 0.0
        last = started
        waiting: list[tuple[float, list[str]]] = []  # (send label at, request ids)
        samples: list[tuple[float, int]] = []
        next_sample = started
        first_ts = datetime.now(UTC) - timedelta(seconds=5)
        # Wait for the worker to start (imports, group join): its RSS then is the baseline.
        while time.monotonic() - started < 120 and proc.poll() is None:
            value = orjson.dumps({"events": [{"request_id": "probe", "model": "probe", "version": v, "role": role,
                                              "score": 0.5, "latency_ms": 1.0, "ts": datetime.now(UTC).isoformat()}
                                             for v, role in (("1", "production"), ("2", "shadow"))]})  # fmt: skip
            producer.produce(h.topics.scores, value=value, partition=0)
            producer.flush(10)
            time.sleep(1.0)
            if store.meta(ComparisonKey("probe", "1", "2", "shadow").as_id()) is not None:
                break
        else:
            raise RuntimeError(f"the worker did not start:\n{h.log_tail('m')}")
        started = last = next_sample = time.monotonic()
        while (now := time.monotonic()) - started < seconds:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker stopped:\n{h.log_tail('m')}")
            due += rate * (now - last)
            last = now
            n = int(due)
            due -= n
            ts = datetime.now(UTC).isoformat()
            groups: list[list[dict[str, Any]]] = [[] for _ in range(PARTITIONS)]
            rids = []
            for i in range(n):
                rid = f"s{seq + i:012d}"
                rids.append(rid)
                for v, role, score in (("1", "production", 0.3), ("2", "shadow", 0.32)):
                    groups[(seq + i) % PARTITIONS].append(
                        {"request_id": rid, "model": "soak", "version": v, "role": role, "score": score,
                         "latency_ms": 20.0, "ts": ts})  # fmt: skip
            seq += n
            for p, events in enumerate(groups):
                for j in range(0, len(events), ENVELOPE):
                    value = orjson.dumps({"events": events[j : j + ENVELOPE]})
                    producer.produce(h.topics.scores, value=value, partition=p)
            sent_pairs += n
            waiting.append((now + label_delay_s, rids))
            while waiting and waiting[0][0] <= now:
                _, due_rids = waiting.pop(0)
                lts = datetime.now(UTC).isoformat()
                for rid in due_rids:
                    p = int(rid[1:]) % PARTITIONS
                    label = {"request_id": rid, "model": "soak", "label": int(rid[-1]) % 2, "ts": lts}
                    producer.produce(h.topics.labels, partition=p, value=orjson.dumps(label))
                    sent_labels += 1
            if now >= next_sample:
                samples.append((now - started, _rss(proc.pid)))
                next_sample += 2.0
            producer.poll(max(0.0, 0.05 - (time.monotonic() - now)))
        producer.flush(30)
        # Everything sent must be folded: pairs and the labels sent so far.
        end = datetime.now(UTC) + timedelta(minutes=1)
        deadline = time.monotonic() + 60
        snap = None
        while time.monotonic() < deadline:
            snap = read_snapshot(store, key, "soak", end, start=first_ts - timedelta(minutes=1), tests=False,
                                 full=False)  # fmt: skip
            got = snap.metrics
            if int(got.get("sample_count") or 0) >= sent_pairs and int(got.get("label_count") or 0) >= sent_labels:
                break
            time.sleep(0.5)
        folded = int(snap.metrics.get("sample_count") or 0) if snap else 0
        labelled = int(snap.metrics.get("label_count") or 0) if snap else 0
        store.close()
    finally:
        h.cleanup()
    # Full: pairs wait label_delay_s for their labels, labels stay label_horizon_s (of event time) after them.
    warm = label_delay_s + label_horizon_s + 10.0
    steady = [(t, r) for t, r in samples if t >= warm] or samples
    t = np.array([s[0] for s in steady])
    r = np.array([s[1] for s in steady], dtype=float)
    slope = float(np.polyfit(t, r, 1)[0]) if len(steady) >= 3 else float("nan")
    growth = slope * (t[-1] - t[0]) if len(steady) >= 3 else float("nan")
    return {
        "seconds": seconds, "rate_pairs_per_s": rate, "label_delay_s": label_delay_s,
        "label_horizon_s": label_horizon_s, "sent_pairs": sent_pairs,
        "sent_labels": sent_labels, "folded_pairs": folded, "folded_labels": labelled, "warm_up_s": warm,
        "rss_mb": {"first": round(r[0] / 2**20, 1), "last": round(r[-1] / 2**20, 1),
                   "min": round(r.min() / 2**20, 1), "max": round(r.max() / 2**20, 1)},
        "slope_mb_per_min": round(slope * 60 / 2**20, 3), "fitted_growth_mb": round(growth / 2**20, 2),
        "flat": bool(abs(growth) < 0.02 * r.mean()), "samples": [(round(a, 1), b) for a, b in samples],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    soak_default = float(os.environ.get("BENCH_SOAK_S") or (30 if quick else 600))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--entries", type=int, default=20_000 if quick else 100_000)
    parser.add_argument("--soak-s", type=float, default=soak_default,
                        help="steady run (env BENCH_SOAK_S; 600: 10 min)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=1000.0, help="pairs/s in the steady run")
    parser.add_argument("--label-delay-s", type=float, default=3.0 if quick else 10.0)
    parser.add_argument("--label-horizon-s", type=float, default=10.0 if quick else 30.0,
                        help="the worker's SHADOWGATE_LABEL_HORIZON_S (its default: 3 days)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    entries = per_entry(args.entries, args.redis_url)
    for e in entries:
        print(f"{e['kind']:>20}: {e['rss_bytes_per_entry']:>7,.0f} B RSS, {e['redis_bytes_per_entry']:>6,.1f} B Redis "
              f"per entry ({e['entries']:,} entries)")  # fmt: skip
    steady = soak(args.bootstrap, args.redis_url, args.soak_s, args.rate, args.label_delay_s, args.label_horizon_s)
    rss = steady["rss_mb"]
    print(f"steady run {steady['seconds']:.0f} s at {steady['rate_pairs_per_s']:,.0f} pairs/s (labels "
          f"{steady['label_delay_s']:g} s later): RSS {rss['first']} -> {rss['last']} MB (min {rss['min']}, max "
          f"{rss['max']}), slope {steady['slope_mb_per_min']} MB/min after {steady['warm_up_s']:g} s warm-up: "
          f"{'flat' if steady['flat'] else 'NOT flat'}; folded {steady['folded_pairs']:,}/{steady['sent_pairs']:,} "
          f"pairs, {steady['folded_labels']:,}/{steady['sent_labels']:,} labels")  # fmt: skip
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
        "per_entry": entries, "steady": steady,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
