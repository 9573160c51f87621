"""Pairs per second through the real broker and Redis, beside the raw limit of decoding the same messages.

    python benchmarks/bench_pipeline.py [--bootstrap 127.0.0.1:9092] [--redis-url redis://127.0.0.1:6379/0]
                                        [--pairs 500000] [--single-pairs 50000] [--repeats 3] [--profile auto]
                                        [--workers 1,2] [--no-naive] [--out benchmarks/results/pipeline.json]

For each encoding (``envelope500``: ``ScorePublisher(batch_size=500)``; ``single``: one event per message)
the SDK publishes synthetic shadow traffic (``shadowgate.traffic``: production + shadow score per request,
two features, no labels, 1,000 pairs/s of event time ending now) to a throwaway staging topic of 4
partitions. Then ``--repeats`` times, in turn within each repeat:

* raw limit: a plain confluent-kafka consumer (``consume(2000)``), connected to the broker, is assigned every
  partition of the staging topic from the start and decodes every message with ``orjson.loads`` (which
  decodes every event of an envelope), nothing else; timed from ``assign`` to the last message (also
  reported: from the first non-empty ``consume``, this benchmark's clock before issue 17);
* workers, for each count of ``--workers``: N ``shadowgate worker`` processes in one consumer group on fresh
  topics, consumer group and Redis prefix. Probe pairs go to every partition, once a second, until every
  worker has folded one and all are folded (imports, group join and rebalance done). Then the workers are
  stopped (SIGSTOP, well within their 10 s session), the staging topic's messages are produced to their
  scores topic unchanged (same bytes, keys and partitions, the SDK's producer settings), the workers are
  continued (SIGCONT) and the clock runs until the comparison's ``sample_count`` (``RedisWindowStore`` +
  ``read_snapshot``, polled every 20 ms) shows every pair: a backlog drained, as the raw consumer drains
  one. (Timed with the producer inside, as before issue 17, a worker could not be faster than the producer:
  40,000 single-event messages take it ~0.8 s.) ``BENCH_PY_SPY=FILE`` samples the first worker with py-spy
  over that span;
* naive baseline (single events only; ``--no-naive`` skips it): ``naive_faust.py``, one Faust agent that
  pairs in a dict and writes Redis per pair, warmed and timed the same way until its count shows every pair.

Each figure is the median of the repeats; a ratio is taken within each repeat (worker / raw of the same
minute's load) and reported as min / median / max; the ratio to the naive baseline divides medians. CPU
seconds of the worker processes, the Kafka broker, redis-server and this process over the timed span come
from ``/proc`` (the broker and Redis are shared: other clients' work on this machine is included); the
workers' batch sizes and pair counts come from their Prometheus counters. When the first worker count's
ratio is under 0.3 (``--profile auto``) the records are also run offline through ``Processor.process`` on a
throwaway Redis prefix, in batches of the worker's mean batch size, once plain and once under cProfile (top
functions by own time, and the main stages by cumulative time). Topics, consumer groups, Redis keys,
keyrings and Faust data dirs are deleted afterwards. Prints a table and writes
``benchmarks/results/pipeline.json``. Targets (issue 17): one worker at least 0.6 of the raw limit with
envelopes in every run, at least 0.3 with single events. ``BENCH_QUICK=1``: 100,000 / 20,000 pairs, 1 repeat.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from harness import PARTITIONS, PRODUCER, REPO, Harness, cpu_meter, free_port, server_pids

from governance.contract.comparison import ComparisonKey
from governance.contract.kafkaio import Record
from shadowgate.sdk import ScorePublisher
from shadowgate.traffic import TrafficSpec, generate
from streams.state.redis_store import RedisWindowStore
from streams.worker.processor import Processor
from streams.worker.reading import read_snapshot

__all__ = ["run"]

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.json"
ENVELOPE = 500
EVENT_RATE = 1000.0  # pairs per second of event time in the published traffic
SPEC = TrafficSpec(label_share=0.0, rate_per_s=EVENT_RATE, seed=3)
KEY = ComparisonKey(SPEC.model, SPEC.production_version, SPEC.candidate_version, "shadow")


def _publish(h: Harness, pairs: int, envelope: int) -> tuple[int, datetime, datetime]:
    """Publish the traffic; return (messages, first event time floored to the minute, end of the window)."""
    start = (datetime.now(UTC) - timedelta(seconds=pairs / EVENT_RATE + 5)).replace(second=0, microsecond=0)
    spec = replace(SPEC, pairs=pairs, start=start)
    with ScorePublisher(h.bootstrap, h.topics.scores, batch_size=envelope, linger_s=3600.0) as pub:
        for event in generate(spec):
            event.pop("kind")
            pub.publish(event)
    # After the publisher closed: its last, partial envelopes are sent at close, not before.
    messages = pub.stats.messages
    return messages, start, start + timedelta(seconds=pairs / EVENT_RATE + 120)


def _raw(h: Harness, messages: int, keep: bool) -> tuple[dict[str, Any], list[Record]]:
    consumer = Consumer({"bootstrap.servers": h.bootstrap, "group.id": f"raw-{h.unique}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip
    kept: list[Record] = []
    seen = events = 0
    t0 = 0.0
    consumer.list_topics(h.topics.scores, timeout=10)  # connected, as the warm worker is: the clock is not
    started = time.perf_counter()
    with cpu_meter({}) as cpu:
        consumer.assign([TopicPartition(h.topics.scores, p, OFFSET_BEGINNING) for p in range(h.partitions)])
        while seen < messages and time.perf_counter() - started < 120:
            batch = consumer.consume(num_messages=2000, timeout=1.0)
            if batch and not t0:
                t0 = time.perf_counter()  # the first messages are in: from here on it is fetch + decode
            for msg in batch:
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                seen += 1
                doc = orjson.loads(value)
                events += len(doc["events"]) if "events" in doc else 1
                if keep:
                    kept.append(Record(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0), msg.key(),
                                       value))  # fmt: skip
        done = time.perf_counter()
    consumer.close()
    pairs = events / 2
    # From assign(), as the worker is timed from the moment it may fetch (SIGCONT): fetching is in both. From
    # the first message (this benchmark's clock before issue 17) leaves out the first fetch and what
    # librdkafka prefetched meanwhile, an unknown share of a small topic: kept for comparison.
    first = pairs / (done - t0) if done > t0 else float("nan")
    return {"pairs": pairs, "pairs_per_s": round(pairs / (done - started)), "pairs_per_s_from_first_message":
            round(first), "total_s": round(done - started, 3), "cpu_s": cpu}, kept  # fmt: skip


def _pairs_seen(store: RedisWindowStore, start: datetime, end: datetime, key: ComparisonKey = KEY) -> int:
    snap = read_snapshot(store, key, "bench", end, start=start, tests=False, full=False)
    return int(snap.metrics.get("sample_count") or 0)


def _metrics_lines(port: int) -> list[str]:
    """The lines of a worker's /metrics page (none if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310 - loopback
            return resp.read().decode().splitlines()
    except OSError:
        return []


def _scrape(port: int) -> dict[str, float]:
    wanted = ("shadowgate_pairs_total", "shadowgate_records_total", "shadowgate_batch_records_count",
              "shadowgate_batch_records_sum")  # fmt: skip
    return {line.split()[0]: float(line.split()[1]) for line in _metrics_lines(port) if line.startswith(wanted)}


def _scrape_all(ports: list[int]) -> dict[str, float]:
    """The counters of every worker, summed."""
    total: dict[str, float] = {}
    for port in ports:
        for name, value in _scrape(port).items():
            total[name] = total.get(name, 0.0) + value
    return total


def _counted(metrics: dict[str, float], before: dict[str, float]) -> float:
    return metrics.get("shadowgate_pairs_total", 0.0) - before.get("shadowgate_pairs_total", 0.0)


def _owned(port: int) -> set[str]:
    """Partitions a worker has folded events of (its watermark gauge has them)."""
    return {line.split('partition="')[1].split('"')[0] for line in _metrics_lines(port)
            if line.startswith("shadowgate_watermark_seconds{")}  # fmt: skip


def _probe(when: datetime, partitions: int, round_: int = 0) -> list[bytes]:
    """One envelope per partition holding one pair of model ``probe``: seen = the worker consumes them all."""
    ts = when.isoformat()
    sides = (("1", "production"), ("2", "shadow"))
    return [
        orjson.dumps({"events": [
            {"request_id": f"probe-{round_}-{p}", "model": "probe", "version": v, "role": role, "score": 0.5,
             "latency_ms": 1.0, "ts": ts}
            for v, role in sides
        ]})
        for p in range(partitions)
    ]  # fmt: skip


def _worker(
    bootstrap: str, redis_url: str, records: list[Record], pairs: int, window: tuple[datetime, datetime],
    pids: dict[str, int], workers: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """Warm workers on a fresh topic; then the SDK's records are produced at once and timed until folded."""
    h = Harness(bootstrap, redis_url)
    try:
        h.setup()
        ports = [free_port() for _ in range(workers)]
        launched = time.perf_counter()
        # Same run name: one consumer group and one Redis prefix shared by every worker.
        procs = [h.start_worker("w", metrics_port=port) for port in ports]
        store = h.store("w")
        producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
        # The probe is older than the traffic: it must not raise the pairing watermark past any of it.
        when = window[0] - timedelta(seconds=1)
        probe = ComparisonKey("probe", "1", "2", "shadow")
        # Probe every partition until each worker has folded one (group joined, partitions assigned).
        rounds = 0
        while True:
            for p, value in enumerate(_probe(when, h.partitions, rounds)):
                producer.produce(h.topics.scores, value=value, partition=p)
            producer.flush(30)
            rounds += 1
            time.sleep(1.0)
            owned = [_owned(port) for port in ports]
            seen_probes = _pairs_seen(store, when - timedelta(minutes=2), when + timedelta(minutes=2), probe)
            if all(owned) and len(set().union(*owned)) == h.partitions and seen_probes >= rounds * h.partitions:
                break
            if any(proc.poll() is not None for proc in procs) or time.perf_counter() - launched > 180:
                raise RuntimeError(f"workers did not start in 180 s:\n{h.log_tail('w')}")
        ready = time.perf_counter()
        before = _scrape_all(ports)
        # The backlog is produced while the workers stand still (SIGSTOP, well within the 10 s session timeout),
        # so they drain it as fast as they can, as the raw consumer does: timed with the producer inside, a
        # worker cannot be faster than the producer (40,000 single-event messages take it ~0.8 s).
        for proc in procs:
            os.killpg(proc.pid, signal.SIGSTOP)
        try:
            p0 = time.perf_counter()
            for i, rec in enumerate(records):
                producer.produce(h.topics.scores, value=rec.value, key=rec.key, partition=rec.partition)
                if i % 1000 == 0:
                    producer.poll(0)
            producer.flush(60)
            published = time.perf_counter() - p0
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGCONT)
        spy = _py_spy(procs[0].pid, h.workdir)
        seen = 0
        with cpu_meter({**{f"worker{i}": proc.pid for i, proc in enumerate(procs)}, **pids}) as cpu:
            t0 = time.perf_counter()
            while seen < pairs:
                if any(proc.poll() is not None for proc in procs) or time.perf_counter() - t0 > 240:
                    raise RuntimeError(f"worker stopped at {seen} of {pairs} pairs:\n{h.log_tail('w')}")
                time.sleep(0.02)
                seen = _pairs_seen(store, *window)
            done = time.perf_counter()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        # The counters move after the commit, a moment after the windows: wait for them (the clock has stopped).
        metrics = _scrape_all(ports)
        until = time.monotonic() + 10
        while _counted(metrics, before) < pairs and time.monotonic() < until:
            time.sleep(0.1)
            metrics = _scrape_all(ports)
        store.close()
    finally:
        h.cleanup()
    batches, batch_sum = (
        metrics.get(name, 0.0) - before.get(name, 0.0)
        for name in ("shadowgate_batch_records_count", "shadowgate_batch_records_sum")
    )
    cpu["worker"] = round(sum(v for k, v in cpu.items() if k.startswith("worker")), 2)
    return {
        "workers": workers, "pairs": seen, "pairs_per_s": round(pairs / (done - t0)), "seconds": round(done - t0, 2),
        "publish_s": round(published, 2), "startup_s": round(ready - launched, 2), "cpu_s": cpu,
        "mean_batch_records": round(batch_sum / batches, 1) if batches > 0 else None,
        "prometheus_pairs": _counted(metrics, before),
    }  # fmt: skip


def _py_spy(pid: int, workdir: Path) -> subprocess.Popen[bytes] | None:
    """With ``BENCH_PY_SPY=FILE``: py-spy samples the first worker over the timed span (idle included), to FILE."""
    out = os.environ.get("BENCH_PY_SPY")
    if not out:
        return None
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--idle", "--threads", "--format", "raw",  # noqa: S607
                             "--rate", "250", "--output", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _naive(bootstrap: str, redis_url: str, records: list[Record], pairs: int, pids: dict[str, int]) -> dict[str, Any]:
    """The naive baseline (``naive_faust.py``: one Faust agent, a dict, Redis per pair) on the same single-event
    records, warmed and timed as :func:`_worker` is (a backlog produced while it stands still)."""
    import redis

    h = Harness(bootstrap, redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        h.setup()
        group, prefix = f"bench-{h.unique}-naive", f"bench{h.unique}naive"
        h.groups.append(group)
        h.prefixes.append(prefix)
        env = {**os.environ, "NAIVE_GROUP": group, "NAIVE_PREFIX": prefix, "NAIVE_BOOTSTRAP": bootstrap,
               "NAIVE_REDIS_URL": redis_url, "NAIVE_TOPIC": h.topics.scores, "PYTHONPATH": str(REPO)}  # fmt: skip
        with (h.workdir / "worker-naive.log").open("wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(  # our own script
                [sys.executable, str(Path(__file__).with_name("naive_faust.py")), "worker", "-l", "warn"],
                env=env, cwd=str(h.workdir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        h.procs.append(proc)
        producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
        probe_key = f"{prefix}:probe:1:2"
        launched, rounds = time.perf_counter(), 0
        while int(client.hget(probe_key, "pairs") or 0) < rounds * h.partitions or rounds == 0:
            if proc.poll() is not None or time.perf_counter() - launched > 180:
                raise RuntimeError(f"the naive baseline did not start (exit {proc.poll()}) within 180 s:\n"
                                   f"{h.log_tail('naive')}")
            for p in range(h.partitions):
                for v, role in (("1", "production"), ("2", "shadow")):
                    producer.produce(h.topics.scores, partition=p, value=orjson.dumps(
                        {"request_id": f"probe-{rounds}-{p}", "model": "probe", "version": v, "role": role,
                         "score": 0.5, "latency_ms": 1.0, "ts": datetime.now(UTC).isoformat()}))  # fmt: skip
            producer.flush(30)
            rounds += 1
            time.sleep(1.0)
        key = f"{prefix}:{KEY.model}:{KEY.production_version}:{KEY.candidate_version}"
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            for i, rec in enumerate(records):
                producer.produce(h.topics.scores, value=rec.value, key=rec.key, partition=rec.partition)
                if i % 1000 == 0:
                    producer.poll(0)
            producer.flush(60)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        seen = 0
        with cpu_meter({"naive": proc.pid, **pids}) as cpu:
            t0 = time.perf_counter()
            while seen < pairs:
                if proc.poll() is not None or time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"the naive baseline stopped at {seen} of {pairs} pairs:\n{h.log_tail('naive')}")
                time.sleep(0.02)
                seen = int(client.hget(key, "pairs") or 0)
            done = time.perf_counter()
    finally:
        client.close()
        h.cleanup()
    return {"pairs": seen, "pairs_per_s": round(pairs / (done - t0)), "seconds": round(done - t0, 2), "cpu_s": cpu}


def _offline(h: Harness, records: list[Record], batch_records: int, profile: bool) -> dict[str, Any]:
    """Processor.process over the consumed records on a throwaway prefix: plain, then under cProfile."""
    out: dict[str, Any] = {"batch_records": batch_records}
    for mode in ("plain", "cprofile") if profile else ("plain",):
        run = f"off{mode[0]}"
        h.prefixes.append(f"bench{h.unique}{run}")
        store = h.store(run)
        processor = Processor(store, scores_topic=h.topics.scores, labels_topic=h.topics.labels,
                              fence_name=f"bench/{run}")  # fmt: skip
        batches = [records[i : i + batch_records] for i in range(0, len(records), batch_records)]
        profiler = cProfile.Profile() if mode == "cprofile" else None
        started = time.perf_counter()
        pairs = 0
        for batch in batches:
            if profiler is not None:
                profiler.enable()
            pairs += processor.process(batch).pairs
            if profiler is not None:
                profiler.disable()
        seconds = time.perf_counter() - started
        store.close()
        out[mode] = {"pairs": pairs, "seconds": round(seconds, 3), "pairs_per_s": round(pairs / seconds)}
        if profiler is not None:
            out["top"] = _top(profiler)
            out["stages"] = _stages(profiler)
    return out


# Stages of Processor.process by cumulative time (they nest: decode and the joins are inside the fold).
# (file suffix, function): Python functions by file, native methods by cProfile's "<method ...>" name.
STAGES = {
    "decode + validate (streams.decoding.decode_scores_block)": ("streams/decode/decoder.py", "decode_scores_block"),
    "pairing (NativePairer.add_batch)": ("~", "<method 'add_batch' of 'streams._native.NativePairer' objects>"),
    "label join (NativeJoiner.add_pairs)": ("~", "<method 'add_pairs' of 'streams._native.NativeJoiner' objects>"),
    "fold pairs with numpy (Processor._fold_pairs)": ("streams/worker/processor.py", "_fold_pairs"),
    "state log record, compressed (Processor._state_record)": ("streams/worker/processor.py", "_state_record"),
    "Redis apply, one Lua call (RedisWindowStore.apply)": ("streams/state/redis_store.py", "apply"),
}


def _stages(profiler: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())  # (primitive calls, calls, own time, cumulative time, callers)
    out: dict[str, float] = {"total_s": round(total, 3)}
    for label, (suffix, func) in STAGES.items():
        out[label] = round(sum(v[3] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == func), 3)
    return out


def _top(profiler: cProfile.Profile, n: int = 15) -> list[dict[str, Any]]:
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.split("site-packages/")[-1].replace(str(REPO) + "/", "")
        rows.append({"function": f"{where}:{line}({func})", "calls": ncalls, "tottime_s": round(tottime, 3),
                     "cumtime_s": round(cumtime, 3)})  # fmt: skip
    total = sum(r["tottime_s"] for r in rows)
    rows.sort(key=lambda r: -r["tottime_s"])
    return [{**r, "share": round(r["tottime_s"] / total, 3)} for r in rows[:n]]


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    median = statistics.median(r["pairs_per_s"] for r in runs)
    chosen = min(runs, key=lambda r: abs(r["pairs_per_s"] - median))
    return {**chosen, "runs_pairs_per_s": [r["pairs_per_s"] for r in runs]}


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4), "max": round(max(values), 4)}


def run(
    bootstrap: str, redis_url: str, pairs: int, single_pairs: int, repeats: int, profile: str,
    workers: tuple[int, ...] = (1,), naive: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Per encoding and repeat, in turn: raw, each worker count, and (single events) the naive baseline.
    A ratio is taken within one repeat (the same minute's load) and reported as min / median / max."""
    pids = server_pids()
    results: list[dict[str, Any]] = []
    for encoding, n, envelope in (("envelope500", pairs, ENVELOPE), ("single", single_pairs, 0)):
        if n <= 0:
            continue
        h = Harness(bootstrap, redis_url)
        try:
            h.setup()
            messages, start, end = _publish(h, n, envelope)
            raws: list[dict[str, Any]] = []
            timed: dict[int, list[dict[str, Any]]] = {w: [] for w in workers}
            naives: list[dict[str, Any]] = []
            kept: list[Record] = []
            for i in range(repeats):
                raw, records = _raw(h, messages, keep=i == 0)
                kept = kept or records
                raws.append(raw)
                line = f"  {encoding} run {i + 1}: raw {raw['pairs_per_s']:,}"
                for w in workers:
                    timed[w].append(_worker(bootstrap, redis_url, kept, n, (start, end), pids, w))
                    line += f", {w} worker(s) {timed[w][-1]['pairs_per_s']:,}"
                if naive and envelope == 0:
                    naives.append(_naive(bootstrap, redis_url, kept, n, pids))
                    line += f", naive Faust {naives[-1]['pairs_per_s']:,}"
                print(line + " pairs/s", flush=True)
            raw_m = _median(raws)
            row: dict[str, Any] = {"encoding": encoding, "pairs": n, "messages": messages, "raw": raw_m,
                                   "workers": {}}  # fmt: skip
            for w, runs in timed.items():
                ratios = [t["pairs_per_s"] / r["pairs_per_s"] for t, r in zip(runs, raws, strict=True)]
                row["workers"][str(w)] = {**_median(runs), "ratio_to_raw": _spread(ratios)}
            if naives:
                row["naive"] = {**_median(naives), "ratio_to_raw": _spread(
                    [a["pairs_per_s"] / r["pairs_per_s"] for a, r in zip(naives, raws, strict=True)])}  # fmt: skip
            one = row["workers"][str(workers[0])]
            row["worker"], row["ratio"] = one, one["ratio_to_raw"]["median"]
            if profile == "always" or (profile == "auto" and row["ratio"] < 0.3):
                batch = max(1, int(one["mean_batch_records"] or 2000))
                row["offline"] = _offline(h, kept, batch, profile=True)
            results.append(row)
        finally:
            h.cleanup()
    naive_rate = next((r["naive"]["pairs_per_s"] for r in results if "naive" in r), None)
    for r in results:
        for fig in [*r["workers"].values(), r.get("naive")]:
            if fig is not None and naive_rate:
                fig["ratio_to_naive"] = round(fig["pairs_per_s"] / naive_rate, 2)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
        "traffic": {"event_rate_pairs_per_s": EVENT_RATE, "partitions": PARTITIONS, "features": 2, "labels": 0},
        "repeats": repeats,
        "workers": list(workers),
        "results": results,
    }


def _table(report: dict[str, Any]) -> None:
    print(f"\n{'encoding':>12} {'pairs':>8} {'who':>10} {'pairs/s':>9} {'runs':>26} {'/raw min-med-max':>18} "
          f"{'/naive':>7}  cpu s (who/kafka/redis)")  # fmt: skip
    for r in report["results"]:
        rows = [("raw", r["raw"])] + [(f"{w} worker", fig) for w, fig in r["workers"].items()]
        rows += [("naive", r["naive"])] if "naive" in r else []
        for who, fig in rows:
            spread = fig.get("ratio_to_raw")
            ratio = f"{spread['min']:.2f}-{spread['median']:.2f}-{spread['max']:.2f}" if spread else ""
            cpu = fig["cpu_s"]
            mine = cpu.get("worker", cpu.get("naive", cpu.get("bench")))
            runs = " ".join(f"{v:,}" for v in fig["runs_pairs_per_s"])
            print(f"{r['encoding']:>12} {r['pairs']:>8,} {who:>10} {fig['pairs_per_s']:>9,} {runs:>26} {ratio:>18} "
                  f"{fig.get('ratio_to_naive', ''):>7}  {mine}/{cpu.get('kafka', '')}/{cpu.get('redis', '')}")
        offline = r.get("offline")
        if offline:
            print(f"\noffline Processor.process ({r['encoding']}, batches of {offline['batch_records']} records): "
                  f"{offline['plain']['pairs_per_s']:,} pairs/s; cProfile top by own time:")  # fmt: skip
            for row in offline["top"]:
                print(f"  {row['tottime_s']:>7.2f} s {row['share']:>6.1%} {row['calls']:>9,}  {row['function']}")
            print("stages (cumulative, under cProfile):")
            for label, seconds in offline["stages"].items():
                print(f"  {seconds:>7.2f} s  {label}")


def main(argv: list[str] | None = None) -> int:
    quick = os.environ.get("BENCH_QUICK") == "1"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    # 500,000 pairs take the worker a few seconds: its fixed latencies (the 0.25 s batching window, the 0.02 s
    # poll of the windows) then weigh little, as in sustained traffic.
    parser.add_argument("--pairs", type=int, default=100_000 if quick else 500_000, help="pairs in envelopes of 500")
    parser.add_argument("--single-pairs", type=int, default=20_000 if quick else 50_000,
                        help="pairs as single events")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1 if quick else 3)
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated worker counts, each timed in every repeat (the first is the headline)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive Faust baseline")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    workers = tuple(int(w) for w in args.workers.split(",") if w.strip())
    if not workers or not all(1 <= w <= PARTITIONS for w in workers):
        parser.error(f"--workers: counts between 1 and {PARTITIONS} (the topic's partitions), e.g. 1,2")
    report = run(args.bootstrap, args.redis_url, args.pairs, args.single_pairs, args.repeats, args.profile,
                 workers, naive=not args.no_naive)  # fmt: skip
    _table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
