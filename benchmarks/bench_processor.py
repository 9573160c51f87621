"""Processor throughput: events per second from raw Kafka records to applied window increments.

    python benchmarks/bench_processor.py [--redis-url redis://127.0.0.1:6379/0] [--pairs 45000] [--rate 10]

Generates synthetic shadow traffic (``shadowgate.traffic``: production + shadow score per request, labels
1 h later in event time, ``--rate`` pairs per second of event time, features on) and encodes it as the
records a worker would consume: 2 partitions keyed by request id, either one score event per record or
envelopes of 500 score events of one partition (labels are always single records). Batches hold about
2,000 events, like the Faust agent's (``streams.worker.app.BATCH_MAX_EVENTS``).

Each configuration (store x encoding x GC mode) runs 3 times on a fresh store and reports the median:
``MemoryWindowStore``, and ``RedisWindowStore`` under a throwaway key prefix deleted after each run.
GC modes: the interpreter's default; ``worker``, the young-generation threshold the worker sets
(``streams.worker.runtime.tune_gc``, 50,000 allocations); and ``gc.freeze()`` after a warm-up (the generated records and
everything imported move to the permanent generation, so full collections stop re-scanning them);
the time spent inside the collector is measured with ``gc.callbacks``. The join state peaks at
``rate x 3600`` pairs waiting for their labels, which is what a whole-state checkpoint would rewrite
every batch. Prints a table and writes ``benchmarks/results/processor.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

from governance.contract.kafkaio import Record
from governance.contract.settings import Settings
from governance.contract.wire import LabelEvent, ScoreEvent, encode, validate_label, validate_score
from shadowgate.partitioner import partition_for
from shadowgate.traffic import TrafficSpec, generate
from streams.state.memory_store import MemoryWindowStore
from streams.state.redis_store import RedisWindowStore
from streams.state.store import WindowStore
from streams.worker.processor import Processor
from streams.worker.runtime import tune_gc

RESULTS = Path(__file__).resolve().parent / "results" / "processor.json"
PARTITIONS = 2
ENVELOPE = 500
BATCH_EVENTS = 2000
REPEATS = 3
SCORES, LABELS = "bench.scores", "bench.labels"
StoreMaker = Callable[[], tuple[WindowStore, Callable[[], None]]]  # a fresh store and its cleanup


def _events(pairs: int, rate: float) -> list[ScoreEvent | LabelEvent]:
    spec = TrafficSpec(pairs=pairs, rate_per_s=rate, label_delay_s=3600.0, cand_error_rate=0.01)
    out: list[ScoreEvent | LabelEvent] = []
    for doc in generate(spec):
        kind = doc.pop("kind")
        out.append(validate_score(doc) if kind == "score" else validate_label(doc))
    return out


def _batches(events: list[ScoreEvent | LabelEvent], envelope: int) -> list[list[Record]]:
    """Records in arrival order, cut into batches of about BATCH_EVENTS events."""
    offsets: dict[tuple[str, int], int] = {}
    batches: list[list[Record]] = [[]]
    size = 0
    pending: dict[int, list[ScoreEvent]] = {}

    def emit(topic: str, partition: int, value: bytes, events_in: int) -> None:
        nonlocal size
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        batches[-1].append(Record(topic, partition, offset, None, value))
        size += events_in
        if size >= BATCH_EVENTS:
            batches.append([])
            size = 0

    def flush(partition: int) -> None:
        group = pending.pop(partition, [])
        if group:
            docs = [e.model_dump(mode="json", exclude_none=True) for e in group]
            emit(SCORES, partition, orjson.dumps({"events": docs}), len(group))

    for event in events:
        partition = partition_for(event.request_id.encode(), PARTITIONS)
        if isinstance(event, LabelEvent):
            emit(LABELS, partition, encode(event), 1)
        elif envelope > 1:
            pending.setdefault(partition, []).append(event)
            if len(pending[partition]) >= envelope:
                flush(partition)
        else:
            emit(SCORES, partition, encode(event), 1)
    for partition in sorted(pending):
        flush(partition)
    return [b for b in batches if b]


class _GcTimer:
    """Wall time spent inside the cyclic garbage collector, via ``gc.callbacks``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    @contextmanager
    def running(self) -> Iterator[None]:
        gc.callbacks.append(self)
        try:
            yield
        finally:
            gc.callbacks.remove(self)


def _run(store: WindowStore, batches: list[list[Record]]) -> dict[str, float]:
    processor = Processor(store, scores_topic=SCORES, labels_topic=LABELS, fence_name="bench/scores+labels")
    timer = _GcTimer()
    events = pairs = 0
    peak_waiting = 0
    with timer.running():
        started = time.perf_counter()
        for batch in batches:
            outcome = processor.process(batch)
            events += outcome.score_events + outcome.labels
            pairs += outcome.pairs
            peak_waiting = max(peak_waiting, sum(w for _, w in processor.pending().values()))
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "events": events,
        "pairs": pairs,
        "events_per_s": events / seconds,
        "gc_s": timer.seconds,
        "gc_collections": timer.collections,
        "peak_waiting_pairs": peak_waiting,
    }


def _memory() -> tuple[WindowStore, Callable[[], None]]:
    return MemoryWindowStore(), lambda: None


def _redis(url: str) -> StoreMaker:
    def make() -> tuple[WindowStore, Callable[[], None]]:
        prefix = f"bench{uuid.uuid4().hex[:10]}"
        store = RedisWindowStore.from_url(url, prefix=prefix)

        def cleanup() -> None:
            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            client.close()
            store.close()

        return store, cleanup

    return make


def _median_run(
    make: Callable[[], tuple[WindowStore, Callable[[], None]]], batches: list[list[Record]]
) -> dict[str, Any]:
    runs = []
    for _ in range(REPEATS):
        store, cleanup = make()
        try:
            runs.append(_run(store, batches))
        finally:
            cleanup()
    median = statistics.median(r["events_per_s"] for r in runs)
    chosen = min(runs, key=lambda r: abs(r["events_per_s"] - median))
    return {**{k: round(v, 3) if isinstance(v, float) else v for k, v in chosen.items()},
            "runs_events_per_s": [round(r["events_per_s"]) for r in runs]}  # fmt: skip


def run(url: str | None, pairs: int, rate: float) -> dict[str, Any]:
    events = _events(pairs, rate)
    inputs = {"single": _batches(events, 1), f"envelope{ENVELOPE}": _batches(events, ENVELOPE)}
    # Only the encoded records stay: a worker never holds the decoded stream, and the GC must not either.
    del events
    stores: dict[str, StoreMaker] = {"memory": _memory}
    if url is not None:
        stores["redis"] = _redis(url)
    # Warm-up: imports, numpy paths, the Lua script's first load.
    for make in stores.values():
        store, cleanup = make()
        try:
            _run(store, inputs["single"][:20])
        finally:
            cleanup()
    results: list[dict[str, Any]] = []
    default_threshold = gc.get_threshold()
    for gc_mode in ("default", "worker", "freeze"):
        if gc_mode == "worker":  # what `shadowgate worker` sets (SHADOWGATE_GC_YOUNG_THRESHOLD)
            tune_gc(Settings.model_fields["gc_young_threshold"].default)
        if gc_mode == "freeze":
            gc.set_threshold(*default_threshold)
            gc.collect()
            gc.freeze()
        for store_name, make in stores.items():
            for encoding, batches in inputs.items():
                result = _median_run(make, batches)
                results.append({"store": store_name, "encoding": encoding, "gc": gc_mode, **result})
                _row(results[-1])
    gc.unfreeze()
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "traffic": {
            "pairs": pairs,
            "rate_pairs_per_s": rate,
            "label_delay_s": 3600,
            "partitions": PARTITIONS,
            "batch_events": BATCH_EVENTS,
            "records": {name: sum(len(b) for b in batches) for name, batches in inputs.items()},
        },
        "repeats": REPEATS,
        "results": results,
    }


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _header() -> None:
    print(f"{'store':>7} {'encoding':>12} {'gc':>8} {'events/s':>10} {'pairs/s':>9} {'gc s':>6} {'s':>6}  runs")


def _row(r: dict[str, Any]) -> None:
    pairs_per_s = r["pairs"] / r["seconds"]
    print(
        f"{r['store']:>7} {r['encoding']:>12} {r['gc']:>8} {r['events_per_s']:>10,.0f} {pairs_per_s:>9,.0f} "
        f"{r['gc_s']:>6.2f} {r['seconds']:>6.2f}  {r['runs_events_per_s']}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    parser.add_argument("--pairs", type=int, default=9_000 if os.environ.get("BENCH_QUICK") == "1" else 45_000)
    parser.add_argument("--rate", type=float, default=10.0, help="pairs per second of event time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    _header()
    report = run(args.redis_url or None, args.pairs, args.rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
