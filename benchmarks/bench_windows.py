"""Window store benchmark: read latency of rolling windows and apply latency per batch, on real Redis.

    python benchmarks/bench_windows.py [--redis-url redis://127.0.0.1:6379/0] [--repeats 20]

Fills one comparison, under a throwaway key prefix deleted afterwards, with every slot the default
retention keeps over 14 days (26 h of minute slots, 14 d of hour slots, 15 day slots), each holding
300-1000 non-zero integer fields like the aggregator's (counts, fixed-point sums, histogram bins). Then
times ``RedisWindowStore.read`` for the named windows (median of ``--repeats``) and ``apply`` of
batches folded from 1,000 and 10,000 pairs (apply cost follows the distinct fields touched, not the
pairs). Prints a table and writes ``benchmarks/results/windows.json``; exits 1 if a window's median
read reaches 50 ms. Target (issue 4): every rolling window well under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from streams.state.redis_store import RedisWindowStore
from streams.state.store import Fence, SlotBatch
from streams.state.windows import DAY_S, WINDOWS, Granularity, Retention, Slot, named_window, plan, slots_for

RESULTS = Path(__file__).resolve().parent / "results" / "windows.json"
CID = "bench|v1|v2|shadow"
# Field vocabulary shaped like the aggregator's: |delta| bins, score bins per side, latency log bins
# per side, feature drift bins, plus scalar counts and fixed-point sums.
VOCAB = (
    ["n", "sa", "ss", "sq", "flip", "err:p", "err:c", "orph:p", "orph:c"]
    + [f"d:{i}" for i in range(1000)]
    + [f"s:{side}:{i}" for side in "pc" for i in range(200)]
    + [f"l:{side}:{i}" for side in "pc" for i in range(300)]
    + [f"f:{j}:{i}" for j in range(20) for i in range(20)]
)


def _slot_fields(rng: random.Random) -> dict[str, int]:
    names = rng.sample(VOCAB, rng.randint(300, 1000))
    return {name: rng.randint(1, 10**12) for name in names}


def _fill(store: RedisWindowStore, now_s: int, rng: random.Random) -> tuple[int, int]:
    ret = store.retention
    slots = [Slot(Granularity.DAY, t) for t in range(now_s - now_s % DAY_S - 14 * DAY_S, now_s + 1, DAY_S)]
    for g in (Granularity.HOUR, Granularity.MINUTE):
        span_s = 14 * DAY_S if g is Granularity.HOUR else ret.minute_s
        first = now_s - now_s % g.step_s - span_s
        slots += [Slot(g, t) for t in range(first, now_s + 1, g.step_s) if ret.expires_at_s(Slot(g, t)) > now_s]
    fields_total = 0
    for offset, i in enumerate(range(0, len(slots), 25)):
        batch = SlotBatch()
        for slot in slots[i : i + 25]:
            fields = _slot_fields(rng)
            fields_total += len(fields)
            batch.add(CID, slot, fields)
        batch.note(CID, "bench", (now_s - 14 * DAY_S) * 1000, now_s * 1000)
        store.apply(batch, Fence("bench-fill", 0, offset))
    return len(slots), fields_total


def _pairs_batch(now_s: int, rng: random.Random, pairs: int = 1000) -> SlotBatch:
    # What the aggregator hands over for `pairs` pairs that arrived within one minute.
    fields: Counter[str] = Counter()
    for _ in range(pairs):
        delta = rng.random() ** 3
        fields.update(
            {
                "n": 1,
                "sa": int(delta * 1e9),
                f"d:{int(delta * 999)}": 1,
                f"s:p:{rng.randrange(200)}": 1,
                f"s:c:{rng.randrange(200)}": 1,
                f"l:p:{int(rng.lognormvariate(4, 0.6)) % 300}": 1,
                f"l:c:{int(rng.lognormvariate(4, 0.6)) % 300}": 1,
                f"f:{rng.randrange(20)}:{rng.randrange(20)}": 1,
            }
        )
    batch = SlotBatch()
    for slot in slots_for(now_s):
        batch.add(CID, slot, fields)
    batch.note(CID, "bench", now_s * 1000, now_s * 1000)
    return batch


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1e3, 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, 3),
        "min_ms": round(ordered[0] * 1e3, 3),
    }


def run(url: str, repeats: int) -> dict[str, Any]:
    rng = random.Random(20260101)
    prefix = f"bench{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(url)
    store = RedisWindowStore(client, prefix=prefix, retention=Retention())
    try:
        now_s = int(time.time())
        t0 = time.perf_counter()
        n_slots, n_fields = _fill(store, now_s, rng)
        fill_s = time.perf_counter() - t0
        used = client.info("memory")["used_memory"]
        reads: dict[str, Any] = {}
        for name in WINDOWS:
            start_s, end_s = named_window(name, now_s)
            window = plan(start_s, end_s, now_s, store.retention)
            raw = store.read_slots(CID, window.slots, now_s)
            samples = []
            result = None
            for _ in range(repeats):
                t = time.perf_counter()
                result = store.read(CID, start_s, end_s, now_s)
                samples.append(time.perf_counter() - t)
            assert result is not None
            reads[name] = {
                "slots": len(window.slots),
                "fields_read": sum(len(f) for f in raw.values()),
                "fields_merged": len(result.fields),
                "older_edge": window.older_edge,
                **_ms(samples),
            }
        checkpoint = rng.randbytes(16_384)  # ~250 pending half-pairs
        applied: dict[str, Any] = {}
        for pairs in (1000, 10_000):
            batch = _pairs_batch(now_s, rng, pairs)
            samples = []
            for offset in range(repeats):
                t = time.perf_counter()
                assert store.apply(batch, Fence(f"bench-apply-{pairs}", 0, offset), checkpoint)
                samples.append(time.perf_counter() - t)
            fields = max(len(f) for f in batch.increments.values())
            applied[f"apply_{pairs}_pairs"] = {
                "slots": len(batch.increments),
                "fields_per_slot": fields,
                **_ms(samples),
            }
        return {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"python": platform.python_version(), "cpus": _cpus(), "redis": _redis_version(client)},
            "fill": {"slots": n_slots, "fields": n_fields, "seconds": round(fill_s, 2), "redis_used_bytes": used},
            "read": reads,
            **applied,
            "repeats": repeats,
        }
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _redis_version(client: redis.Redis[bytes]) -> str:
    return str(client.info("server")["redis_version"])


def _print(report: dict[str, Any]) -> None:
    fill = report["fill"]
    print(
        f"filled {fill['slots']} slots / {fill['fields']} fields in {fill['seconds']} s "
        f"(redis used {fill['redis_used_bytes'] / 2**20:.0f} MiB)"
    )
    print(f"{'window':>7} {'slots':>6} {'fields read':>12} {'merged':>7} {'edge':>6} {'median ms':>10} {'p95 ms':>8}")
    for name, r in report["read"].items():
        print(
            f"{name:>7} {r['slots']:>6} {r['fields_read']:>12} {r['fields_merged']:>7} {r['older_edge']:>6} "
            f"{r['median_ms']:>10.2f} {r['p95_ms']:>8.2f}"
        )
    for pairs in (1000, 10_000):
        a = report[f"apply_{pairs}_pairs"]
        print(
            f"apply ({pairs:,} pairs -> {a['slots']} slots x ~{a['fields_per_slot']} fields, 16 KiB "
            f"checkpoint): median {a['median_ms']:.2f} ms, p95 {a['p95_ms']:.2f} ms"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--repeats", type=int, default=5 if os.environ.get("BENCH_QUICK") == "1" else 20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args.redis_url, args.repeats)
    _print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    worst = max(r["median_ms"] for r in report["read"].values())
    return 0 if worst < 50 else 1


if __name__ == "__main__":
    sys.exit(main())
