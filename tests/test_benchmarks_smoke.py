"""The benchmarks of issue 17 at tiny sizes against the real servers, so that they cannot rot.

Each one is run as ``make bench`` runs it (its ``run`` functions, real Kafka and Redis, real worker processes)
and checked on what it COUNTS: every pair and label produced is folded, every comparison is evaluated in every
round, every waiting entry is there. Never on speed: figures are for ``make bench``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_fleet  # noqa: E402
import bench_memory  # noqa: E402
import bench_pipeline  # noqa: E402
import bench_rollback  # noqa: E402
import summary  # noqa: E402
from harness import PRODUCER  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]


def test_pipeline_counts_every_pair_through_raw_one_and_two_workers_and_the_naive_baseline(
    kafka_bootstrap: str, redis_url: str
) -> None:
    report = bench_pipeline.run(kafka_bootstrap, redis_url, pairs=2000, single_pairs=600, repeats=1,
                                profile="never", workers=(1, 2), naive=True)  # fmt: skip
    by = {r["encoding"]: r for r in report["results"]}
    assert set(by) == {"envelope500", "single"}
    for encoding, n in (("envelope500", 2000), ("single", 600)):
        row = by[encoding]
        assert row["raw"]["pairs"] == n
        for w in ("1", "2"):
            fig = row["workers"][w]
            assert fig["pairs"] == n and fig["workers"] == int(w)
            assert fig["prometheus_pairs"] == n  # every pair folded once: none twice across the two workers
            r = fig["ratio_to_raw"]
            assert r["min"] == r["median"] == r["max"] == pytest.approx(fig["pairs_per_s"] / row["raw"]["pairs_per_s"],
                                                                        abs=1e-4)  # fmt: skip
    naive = by["single"]["naive"]
    assert naive["pairs"] == 600
    assert by["envelope500"]["workers"]["1"]["ratio_to_naive"] == pytest.approx(
        by["envelope500"]["workers"]["1"]["pairs_per_s"] / naive["pairs_per_s"], abs=0.01
    )


def test_fleet_evaluates_every_comparison_every_round_and_fills_fourteen_days(redis_url: str) -> None:
    report = bench_fleet.run(redis_url, comparisons=25, n_rounds=3, fill_pairs=600)
    rounds = report["rounds"]
    assert rounds["evaluated_per_round"] == [25, 25, 25]
    assert rounds["memory"]["keys"] > 0 and rounds["memory"]["memory_usage_bytes"] > 0
    filled = report["fourteen_days"]
    assert filled["pairs"] == 600 and filled["keys"] > 0 and filled["memory_usage_bytes"] > 0


def test_memory_counts_each_kind_of_waiting_entry_and_the_steady_run_folds_everything(
    kafka_bootstrap: str, redis_url: str
) -> None:
    entries = {e["kind"]: e for e in bench_memory.per_entry(1000, redis_url)}
    assert set(entries) == set(bench_memory.KINDS)
    assert all(e["counted"] == 1000 for e in entries.values())
    steady = bench_memory.soak(kafka_bootstrap, redis_url, seconds=8.0, rate=200.0, label_delay_s=1.0,
                               label_horizon_s=2.0)  # fmt: skip
    assert steady["sent_pairs"] > 0 and steady["folded_pairs"] == steady["sent_pairs"]
    assert steady["sent_labels"] > 0 and steady["folded_labels"] == steady["sent_labels"]
    assert len(steady["samples"]) >= 3


class _Polls:
    """A real producer whose poll() timeouts are recorded (poll still does the real work)."""

    def __init__(self, producer: Producer) -> None:
        self.producer, self.timeouts = producer, []

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.producer.produce(*args, **kwargs)

    def poll(self, timeout: float) -> int:
        self.timeouts.append(timeout)
        return int(self.producer.poll(timeout))

    def flush(self, timeout: float) -> int:
        return int(self.producer.flush(timeout))


@pytest.mark.parametrize("rate", [100.0, 20_000.0])
def test_the_rollback_feed_keeps_to_the_clock_when_delivery_reports_end_its_polls_early(
    kafka_bootstrap: str, make_topic: Callable[..., str], rate: float
) -> None:
    # A real idempotent producer: its delivery reports end a poll() before its timeout.
    topic = make_topic("feed", partitions=4)
    producer = _Polls(Producer({"bootstrap.servers": kafka_bootstrap, **PRODUCER}))
    feed = bench_rollback.Feed(producer, topic, 4)  # type: ignore[arg-type]
    feed.set("c", rate)
    started = time.monotonic()
    assert feed.run(4.0) is False
    took = time.monotonic() - started
    producer.flush(30)
    # No poll waits longer than a tick: the schedule never runs ahead of the clock (it used to, one
    # tick per poll, and then waited minutes in one poll, producing nothing and not looking at until()).
    assert max(producer.timeouts) <= bench_rollback.TICK_S + 1e-9, max(producer.timeouts)
    assert took < 4.0 + 1.0, took
    assert abs(feed.pairs - rate * took) < 0.1 * rate * took + 2, (feed.pairs, took)


def test_rollback_at_half_the_sustained_rate_fires_verified_triggers_and_sees_every_freshness_probe(
    kafka_bootstrap: str, redis_url: str
) -> None:
    report = bench_rollback.run(kafka_bootstrap, redis_url, trials=1, warm_s=0.5, rates=[1500.0], step_s=2.0)
    phases = {r["phase"]: r for r in report["results"]}
    assert set(phases) == {"base", "half"}
    for result in phases.values():
        assert result["fired"] == result["verified"] == 1
        # The trigger is stamped with the end of the minute that holds the breach: after the breach was produced.
        assert 0 < result["after_minute_end_p99_s"] <= result["p99_s"]
    fresh = phases["half"]["freshness"]
    assert fresh["probes"] >= 1 and fresh["not_seen_10s"] == 0


def test_the_summary_table_has_a_row_per_figure_of_the_run_and_replaces_the_readme_table(tmp_path: Path) -> None:
    pipeline: dict[str, Any] = {"results": [{
        "encoding": "single", "pairs": 10, "raw": {"pairs_per_s": 1000, "runs_pairs_per_s": [1000]},
        "workers": {"1": {"pairs_per_s": 400, "runs_pairs_per_s": [400], "ratio_to_naive": 4.0,
                          "ratio_to_raw": {"min": 0.4, "median": 0.4, "max": 0.4}}},
        "naive": {"pairs_per_s": 100, "runs_pairs_per_s": [100], "ratio_to_naive": 1.0,
                  "ratio_to_raw": {"min": 0.1, "median": 0.1, "max": 0.1}}}]}  # fmt: skip
    (tmp_path / "pipeline.json").write_text(json.dumps(pipeline))
    found = summary.rows(tmp_path)
    assert [row[0].split(",")[0] for row in found] == ["raw limit: confluent-kafka consume + orjson decode", "1 worker",
                                                       "naive baseline: one Faust agent"]  # fmt: skip
    assert found[1][2] == "0.40 (0.40-0.40)" and found[1][4].endswith(": met")
    assert summary.rows(tmp_path, since=4e9) == []  # a file from before the run gives no row
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{summary.START}\nold\n{summary.END}\noutro\n")
    summary.write_readme(readme, summary.table(found))
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("outro\n") and "| 1 worker," in text
