"""Exactly-once effect of the Processor (streams.processor) on both window stores.

Every test compares the windows a processor leaves in a store with an independent reference: the same
records processed once in a single pass into a fresh store, or numpy on the generated scores. Records
are built as a Kafka consumer would see them: synthetic traffic (``shadowgate.traffic``) encoded with
``governance.contract.wire.encode``, keyed and partitioned by request id, with per-(topic, partition) offsets.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governance.contract.comparison import ComparisonKey
from governance.contract.kafkaio import Record
from governance.contract.wire import LabelEvent, ScoreEvent, encode, validate_label, validate_score
from governance.errors import InfrastructureError
from shadowgate.partitioner import partition_for
from shadowgate.traffic import TrafficSpec, generate
from streams.fold.readout import metrics_from_fields
from streams.state.memory_store import MemoryWindowStore
from streams.state.redis_store import RedisWindowStore
from streams.state.store import FencedState, SlotBatch, WindowStore
from streams.state.windows import DAY_S
from streams.worker.processor import BatchOutcome, Processor, integrity_id

SCORES, LABELS = "scores", "labels"
PARTITIONS = 2
StoreFactory = Callable[[], WindowStore]
Fields = dict[str, dict[str, int]]


class _Failing(MemoryWindowStore):
    """A store whose ``fail_at``-th apply raises, after writing (a lost reply) or before (unreachable)."""

    def __init__(self, fail_at: int, written: bool) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at
        self.written = written

    def apply_many(self, batch: SlotBatch, parts: Sequence[FencedState]) -> bool:
        self.calls += 1
        if self.calls == self.fail_at and not self.written:
            raise InfrastructureError("connection refused (simulated)")
        applied = super().apply_many(batch, parts)
        if self.calls == self.fail_at:
            raise InfrastructureError("reply lost after the write (simulated timeout)")
        return applied


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def new_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Builds a fresh, empty store per call (Redis: a new sub-prefix of the test's prefix)."""
    opened: list[WindowStore] = []
    counter = itertools.count()
    if request.param == "memory":

        def make() -> WindowStore:
            return MemoryWindowStore()
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")

        def make() -> WindowStore:
            store = RedisWindowStore.from_url(url, prefix=f"{prefix}s{next(counter)}")
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


def _start() -> datetime:
    # Near the wall clock: the Redis server expires slots by its own clock (minute slots after 26 h).
    return datetime.fromtimestamp((int(time.time()) // 60) * 60 - 2 * 3600, UTC)


def _events(spec: TrafficSpec) -> list[ScoreEvent | LabelEvent]:
    out: list[ScoreEvent | LabelEvent] = []
    for doc in generate(spec):
        kind = doc.pop("kind")
        out.append(validate_score(doc) if kind == "score" else validate_label(doc))
    return out


def _records(events: list[ScoreEvent | LabelEvent], envelope: int = 0) -> list[Record]:
    """Kafka records of ``events``; with ``envelope`` > 0, runs of score events of one partition share one."""
    offsets: dict[tuple[str, int], int] = {}
    records: list[Record] = []
    pending: dict[int, list[ScoreEvent]] = {}

    def emit(topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        records.append(Record(topic, partition, offset, key, value))

    def flush(partition: int) -> None:
        group = pending.pop(partition, [])
        if group:
            docs = [e.model_dump(mode="json", exclude_none=True) for e in group]
            emit(SCORES, partition, None, orjson.dumps({"events": docs}))

    for event in events:
        partition = partition_for(event.request_id.encode(), PARTITIONS)
        if isinstance(event, LabelEvent):
            emit(LABELS, partition, event.request_id.encode(), encode(event))
        elif envelope:
            pending.setdefault(partition, []).append(event)
            if len(pending[partition]) >= envelope:
                flush(partition)
        else:
            emit(SCORES, partition, event.request_id.encode(), encode(event))
    for partition in sorted(pending):
        flush(partition)
    return records


def _processor(store: WindowStore, fence: str = "g/scores+labels", **kwargs: Any) -> Processor:
    return Processor(store, scores_topic=SCORES, labels_topic=LABELS, fence_name=fence, **kwargs)


def _fields(store: WindowStore) -> Fields:
    """Every comparison's fields over a range that covers all generated events."""
    now = int(time.time())
    return {cid: store.read(cid, now - 3 * DAY_S, now + DAY_S, now).fields for cid in store.comparisons()}


def _single_pass(new_store: StoreFactory, records: list[Record], **kwargs: Any) -> Fields:
    store = new_store()
    _processor(store, **kwargs).process(records)
    return _fields(store)


def _spec(pairs: int, **kwargs: Any) -> TrafficSpec:
    return TrafficSpec(pairs=pairs, start=_start(), rate_per_s=50.0, label_delay_s=600.0, **kwargs)


SHADOW_ID = ComparisonKey("fraud-risk", "1.4.0", "1.5.0", "shadow").as_id()


@pytest.fixture(scope="module")
def stream() -> list[Record]:
    return _records(_events(_spec(600, cand_error_rate=0.05)))


def _batches(records: list[Record], cuts: list[int]) -> list[list[Record]]:
    bounds = [0, *cuts, len(records)]
    return [records[lo:hi] for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]


class TestExactlyOnce:
    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_batching_does_not_change_the_windows(
        self, new_store: StoreFactory, stream: list[Record], data: st.DataObject
    ) -> None:
        reference = _single_pass(new_store, stream)
        assert reference[SHADOW_ID]["n"] == 600 and reference[SHADOW_ID]["nl"] == 600
        store = new_store()
        processor = _processor(store, fold_threads=data.draw(st.sampled_from([1, 3])))
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=12))))
        for batch in _batches(stream, cuts):
            processor.process(batch)
        assert _fields(store) == reference

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_a_new_worker_after_a_crash_counts_every_redelivered_event_once(
        self, new_store: StoreFactory, stream: list[Record], data: st.DataObject
    ) -> None:
        reference = _single_pass(new_store, stream)
        k = data.draw(st.integers(1, len(stream)))
        j = data.draw(st.integers(0, k))  # Kafka redelivers from an older committed offset
        size = data.draw(st.sampled_from([7, 100, 450]))
        # The state log compacted after every few batches, or (default threshold) never in this stream.
        compact = data.draw(st.sampled_from([1, 20_000, 32 * 1024 * 1024]))
        store = new_store()
        crashed = _processor(store, compact_min_bytes=compact)
        for lo in range(0, k, size):
            crashed.process(stream[lo : min(lo + size, k)])
        successor = _processor(store, compact_min_bytes=compact)  # nothing in memory: all from the store
        outcomes = [successor.process(stream[lo : lo + size]) for lo in range(j, len(stream), size)]
        assert sum(o.skipped for o in outcomes) == k - j
        got = _fields(store)
        assert got == reference
        shadow = got[SHADOW_ID]
        assert shadow["n"] == shadow["nl"] == 600 and "op" not in shadow and "oc" not in shadow  # no pair lost

    def test_two_workers_racing_on_one_partition_give_exact_totals(
        self, new_store: StoreFactory, stream: list[Record]
    ) -> None:
        reference = _single_pass(new_store, stream)
        store = new_store()
        # Two clients of one store (Redis: same keys), alternating overlapping batches: each finds the
        # fence moved by the other, and must reload instead of adding a delta computed from its old state.
        workers = [_processor(store), _processor(store)]
        step, retries = 150, 0
        for i, lo in enumerate(range(0, len(stream), step)):
            outcome = workers[i % 2].process(stream[max(0, lo - step // 2) : lo + step])
            retries += outcome.retries
        assert retries > 0  # the race did happen
        assert _fields(store) == reference

    def test_envelopes_give_the_same_windows_as_single_events(
        self, new_store: StoreFactory, stream: list[Record]
    ) -> None:
        events = _events(_spec(600, cand_error_rate=0.05))
        enveloped = _records(events, envelope=64)
        assert sum(r.topic == SCORES for r in enveloped) <= 1200 // 64 + PARTITIONS
        assert _single_pass(new_store, enveloped) == _single_pass(new_store, stream)

    @pytest.mark.parametrize("compact", [1, 32 * 1024 * 1024], ids=["compacting", "appending"])
    def test_the_state_read_back_is_the_workers_state(
        self, new_store: StoreFactory, stream: list[Record], compact: int
    ) -> None:
        store = new_store()
        processor = _processor(store, compact_min_bytes=compact)
        for batch in _batches(stream, list(range(97, len(stream), 97))):
            processor.process(batch)
            state = processor._states[0]  # white-box: the joins' change tracking must match what was stored
            stored = store.read_state("g/scores+labels", 0)
            assert {k[2:]: v for k, v in stored.items() if k.startswith("p/")} == state.pairer.entries()
            assert {k[2:]: v for k, v in stored.items() if k.startswith("l/")} == state.joiner.entries()
        # Compacting: whole-state records were written (and read back above); appending: never.
        assert (processor._states[0].snapshot_bytes > 0) == (compact == 1)


def test_a_batch_of_several_partitions_is_one_apply(stream: list[Record]) -> None:
    calls: list[list[int]] = []

    class Counting(MemoryWindowStore):
        def apply_many(self, batch: SlotBatch, parts: Sequence[FencedState]) -> bool:
            calls.append(sorted(part.fence.partition for part in parts))
            return super().apply_many(batch, parts)

    store = Counting()
    batches = _batches(stream, list(range(300, len(stream), 300)))
    processor = _processor(store)
    for batch in batches:
        processor.process(batch)
    # One apply per batch, carrying the fence of every partition the batch touched.
    assert calls == [sorted({r.partition for r in batch}) for batch in batches]
    assert any(len(parts) > 1 for parts in calls)
    assert _fields(store) == _single_pass(MemoryWindowStore, stream)


def test_partitions_folded_in_parallel_give_what_one_thread_gives(stream: list[Record]) -> None:
    junk = [Record(SCORES, p, 10_000 + p, None, b"not json") for p in range(PARTITIONS)]
    batches = _batches(stream + junk, list(range(250, len(stream), 250)))
    results = []
    for threads in (1, PARTITIONS):
        store = MemoryWindowStore()
        processor = _processor(store, fold_threads=threads)
        outcomes = [processor.process(batch) for batch in batches]
        processor.close()
        results.append((
            _fields(store), [(o.pairs, o.labeled_pairs, o.orphans, o.watermark_s) for o in outcomes],
            [(d.record.partition, d.record.offset, d.reason) for o in outcomes for d in o.dead_letters],
        ))  # fmt: skip
    assert results[0] == results[1]
    assert results[0][0] == _single_pass(MemoryWindowStore, stream)  # the junk counts as violations only
    assert len(results[0][2]) == PARTITIONS


def test_a_fold_that_raises_in_one_partition_drops_every_partition_of_the_batch(stream: list[Record]) -> None:
    store = MemoryWindowStore()
    processor = _processor(store, fold_threads=PARTITIONS)
    processor.process(stream[:200])
    before = _fields(store)
    original = processor._fold_partition  # white-box: a bug in one partition's fold

    def failing(state: Any, records: list[Record], batch: SlotBatch, outcome: BatchOutcome) -> None:
        if records[0].partition == 1:
            raise RuntimeError("a bug")
        original(state, records, batch, outcome)

    processor._fold_partition = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="a bug"):
        processor.process(stream[200:400])
    assert processor._states == {} and _fields(store) == before  # nothing applied, nothing kept ahead
    processor._fold_partition = original  # type: ignore[method-assign]
    processor.process(stream[200:])
    assert _fields(store) == _single_pass(MemoryWindowStore, stream)


@pytest.mark.parametrize("written", [True, False], ids=["reply-lost", "not-written"])
def test_a_failed_apply_is_retried_and_counted_once(stream: list[Record], written: bool) -> None:
    # Whether the failed apply was written or not, the retry must count every event once.
    reference = _single_pass(MemoryWindowStore, stream)
    store = _Failing(fail_at=3, written=written)
    processor = _processor(store)
    batches = _batches(stream, list(range(100, len(stream), 100)))
    failures = 0
    for batch in batches:
        try:
            processor.process(batch)
        except InfrastructureError:
            failures += 1
            processor.process(batch)  # the worker retries the batch it got no answer for
    assert failures == 1
    assert _fields(store) == reference


def _raw(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "request_id": "bad-1",
        "model": "fraud-risk",
        "version": "1.5.0",
        "role": "shadow",
        "score": 0.5,
        "latency_ms": 3.0,
        "ts": _start().isoformat(),
    }
    doc.update(changes)
    return orjson.dumps({k: v for k, v in doc.items() if v is not None})


INVALID: list[tuple[str, str, bytes, str, str | None]] = [
    # (id, topic, value, reason pattern, model)
    ("bad-json", SCORES, b'{"model": "fraud-risk", "score": ', "not valid JSON", None),
    ("nan", SCORES, _raw(score=0.5).replace(b'"score":0.5', b'"score":NaN'), "not valid JSON", "fraud-risk"),
    ("score-1.5", SCORES, _raw(score=1.5), "score", "fraud-risk"),
    ("naive-ts", SCORES, _raw(ts=_start().replace(tzinfo=None).isoformat()), "ts", "fraud-risk"),
    ("unknown-role", SCORES, _raw(role="judge"), "role", "fraud-risk"),
    ("oversized", SCORES, _raw(error="x" * 5000), "exceeds the limit of 4096", "fraud-risk"),
    (
        "label-2",
        LABELS,
        orjson.dumps({"request_id": "r", "model": "fraud-risk", "label": 2, "ts": _start().isoformat()}),
        "label",
        "fraud-risk",
    ),
    ("not-an-object", SCORES, b"[1, 2]", "JSON object", None),
    # A malformed model name is never a model of its own (it would become a Redis key): not attributed.
    ("bad-model-name", SCORES, _raw(model="fraud-risk\n"), "model", None),
]


class TestInvalidMessages:
    def test_invalid_messages_are_dead_letters_counted_for_their_model(
        self, new_store: StoreFactory, stream: list[Record]
    ) -> None:
        store = new_store()
        processor = _processor(store, max_message_bytes=4096)
        next_offset = {SCORES: 0, LABELS: 0}

        def bad_records() -> list[Record]:
            out = []
            for _, topic, value, _, _ in INVALID:
                out.append(Record(topic, 0, next_offset[topic], b"k", value))
                next_offset[topic] += 1
            return out

        # Before any pair: violations go to the model's integrity pseudo comparison.
        first = bad_records()
        outcome = processor.process(first)
        assert [d.record for d in outcome.dead_letters] == first
        for dead, (case, _, _, reason, model) in zip(outcome.dead_letters, INVALID, strict=True):
            assert reason in dead.reason and dead.reason, case
            assert dead.model == model, case
            headers = dict(dead.headers())
            assert headers["shadowgate.source"] == f"{dead.record.topic}/0/{dead.record.offset}".encode()
            assert headers["shadowgate.reason"] == dead.reason.encode()
        attributable = sum(1 for case in INVALID if case[4] is not None)
        assert _fields(store)[integrity_id("fraud-risk")] == {"iv": attributable}
        # Valid traffic in the same batch as more invalid messages: it is processed, nothing raises.
        valid = [r._replace(offset=r.offset + next_offset[r.topic]) for r in stream if r.partition == 0]
        for topic in next_offset:
            next_offset[topic] = 1 + max(r.offset for r in valid if r.topic == topic)
        second = bad_records()
        outcome = processor.process([*valid, *second])
        assert [d.record for d in outcome.dead_letters] == second
        assert outcome.pairs == sum(r.topic == SCORES for r in valid) // 2 and outcome.unplaced_violations == 0
        fields = _fields(store)
        assert fields[SHADOW_ID]["iv"] == attributable  # now claimed by the model's comparison
        assert fields[integrity_id("fraud-risk")] == {"iv": attributable}


class TestAgainstNumpy:
    def test_window_metrics_agree_with_numpy_on_the_generated_scores(self, new_store: StoreFactory) -> None:
        spec = _spec(4000, delta_sd=0.05, shift=0.01, features=False)
        events = _events(spec)
        records = _records(events, envelope=50)
        store = new_store()
        processor = _processor(store)
        for lo in range(0, len(records), 37):
            processor.process(records[lo : lo + 37])
        scores: dict[tuple[str, str], float] = {
            (e.request_id, e.role): e.score for e in events if isinstance(e, ScoreEvent)
        }
        rids = sorted({rid for rid, _ in scores})
        prod = np.array([scores[(rid, "production")] for rid in rids])
        cand = np.array([scores[(rid, "shadow")] for rid in rids])
        delta = np.abs(cand - prod)
        metrics, _ = metrics_from_fields(_fields(store)[SHADOW_ID])
        assert metrics["sample_count"] == len(rids) == 4000
        assert metrics["mean_abs_delta"] == pytest.approx(float(delta.mean()), abs=1e-9)
        assert metrics["mean_signed_delta"] == pytest.approx(float((cand - prod).mean()), abs=1e-9)
        p95 = metrics["p95_abs_delta"]
        assert p95 is not None and abs(p95 - float(np.quantile(delta, 0.95))) <= 0.001
        assert metrics["label_count"] == sum(isinstance(e, LabelEvent) for e in events)


def test_an_invalid_message_without_any_time_is_reported_not_counted(new_store: StoreFactory) -> None:
    store = new_store()
    outcome = _processor(store).process([Record(SCORES, 3, 0, None, b'{"model": "fraud-risk"}')])
    assert outcome.unplaced_violations == 1 and outcome.dead_letters[0].model == "fraud-risk"
    assert _fields(store) == {}
