"""The ingest loop's bookkeeping with fake clients: what is committed, paused, resumed, retried and given up,
for each kind of failure. (The same failures of the real servers: tests/test_worker_faults.py.)"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError

from governance.errors import InfrastructureError
from shadowgate.traffic import TrafficSpec, generate
from streams.state.memory_store import MemoryWindowStore
from streams.state.store import FencedState, SlotBatch
from streams.worker.deadletters import DeadLetterSink
from streams.worker.ingest import Ingest, IngestConfig, Pipeline
from streams.worker.processor import BatchOutcome, Processor
from streams.worker.reading import read_windows
from streams.worker.telemetry import WorkerMetrics
from tests.kafka_fakes import FakeConsumer, FakeProducer
from tests.worker_kit import wait_for

SCORES, LABELS, DLQ = "scores", "labels", "dlq"


class FlakyStore(MemoryWindowStore):
    """Refuses (raises on) its next ``failures`` applies, as an unreachable Redis does."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.applies = 0

    def apply_many(self, batch: SlotBatch, parts: Sequence[FencedState]) -> bool:
        if self.failures:
            self.failures -= 1
            raise InfrastructureError("redis: connection refused (simulated)")
        self.applies += 1
        return super().apply_many(batch, parts)


class Loop:
    """An ingest loop over fakes, run in a thread; ``pipelined``: each batch folded while the one before it is
    applied (as the worker runs it), else each batch done whole."""

    def __init__(self, partitions: int = 2, *, pipelined: bool = True, store: FlakyStore | None = None,
                 **config: Any) -> None:  # fmt: skip
        self.consumer, self.producer, self.store = FakeConsumer(partitions), FakeProducer(), store or FlakyStore()
        self.metrics = WorkerMetrics()
        self.processor = Processor(self.store, scores_topic=SCORES, labels_topic=LABELS, fence_name="f")
        self.sink = DeadLetterSink(self.producer, DLQ, 1.0, on_reference=lambda d, why: self.references.append(why))
        self.references: list[str] = []
        self.revoked: list[int] = []
        self.outcomes: list[BatchOutcome] = []
        self.consumers = [self.consumer]
        self.ingest = Ingest(self._next_consumer, IngestConfig(topics=(SCORES, LABELS), **{
            "batch_within_s": 0.01, "backoff_s": 0.01, "backoff_max_s": 0.02, **config}),
            lambda records: self.processor.process(records, self.sink.deliver), self._revoke, self.metrics,
            observers=[self.outcomes.append], pipeline=self._pipeline() if pipelined else None)  # fmt: skip
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.error: BaseException | None = None

    def _pipeline(self) -> Pipeline:
        p = self.processor
        return Pipeline(p.fold, lambda folded: p.apply(folded, self.sink.deliver), p.settle, p.discard)

    def _next_consumer(self) -> FakeConsumer:
        return self.consumers.pop(0)

    def _revoke(self, partitions: Any) -> None:
        self.revoked += list(partitions)
        self.processor.revoke(partitions)

    def _run(self) -> None:
        try:
            self.ingest.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Loop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def retries(self, stage: str) -> float:
        return self.metrics.batch_retries.labels(stage=stage)._value.get()  # noqa: SLF001

    def records(self) -> int:
        return sum(o.records for o in self.outcomes)


def _pairs(n: int, partitions: int = 2, seed: int = 7) -> Iterator[tuple[int, bytes]]:
    spec = TrafficSpec(pairs=n, start=datetime.now(UTC) - timedelta(minutes=5), rate_per_s=10, label_share=0.0,
                       seed=seed)  # fmt: skip
    for i, event in enumerate(generate(spec)):
        event.pop("kind")
        yield (i // 2) % partitions, orjson.dumps(event)


def _feed(loop: Loop, n: int = 50, invalid: Sequence[bytes] = (), seed: int = 7) -> int:
    """Put ``n`` pairs (two score events each, request ids of ``seed``) and ``invalid`` at once; their count."""
    messages = [(SCORES, partition, raw) for partition, raw in _pairs(n, seed=seed)]
    messages += [(SCORES, 0, raw) for raw in invalid]
    loop.consumer.put_many(messages)
    return len(messages)


@pytest.fixture(params=[True, False], ids=["pipelined", "serial"])
def pipelined(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _samples(store: MemoryWindowStore) -> int:
    doc = read_windows(store, windows=["24h"])
    return int(doc["comparisons"][0]["windows"]["24h"]["sample_count"]) if doc["comparisons"] else 0


def test_a_batch_whose_apply_fails_is_tried_again_paused_and_committed_only_once_applied(pipelined: bool) -> None:
    loop = Loop(pipelined=pipelined)
    loop.store.failures = 3
    with loop:
        sent = _feed(loop)
        wait_for(lambda: loop.records() >= sent, 30, "the batch done")
    assert loop.retries("apply") == 3 and loop.consumer.pauses >= 1 and not loop.consumer.paused
    assert len(loop.consumer.commits) == 1  # never before the apply
    assert loop.consumer.committed == {(SCORES, 0): 50, (SCORES, 1): 50}
    assert _samples(loop.store) == 50 and loop.store.applies == 1


def test_dead_letters_not_acknowledged_hold_the_apply_and_the_commit(pipelined: bool) -> None:
    loop = Loop(pipelined=pipelined)
    loop.producer.down = True
    with loop:
        sent = _feed(loop, invalid=[b"not json"])
        wait_for(lambda: loop.retries("dead_letters") >= 2, 30, "the dead letters to fail twice")
        assert loop.consumer.commits == [] and loop.store.applies == 0 and _samples(loop.store) == 0
        assert loop.ingest.status().failures >= 2 and loop.ingest.status().paused
        loop.producer.down = False
        wait_for(lambda: loop.records() >= sent, 30, "the batch done")
    assert [value for _, _, value, _ in loop.producer.sent] == [b"not json"]
    assert _samples(loop.store) == 50 and len(loop.consumer.commits) == 1


def test_a_failed_commit_is_tried_again_without_applying_twice(pipelined: bool) -> None:
    loop = Loop(pipelined=pipelined)
    loop.consumer.fail_commits = 2
    with loop:
        sent = _feed(loop)
        wait_for(lambda: loop.records() >= sent, 30, "the batch done")
    assert loop.retries("commit") == 2 and loop.retries("apply") == 0
    assert loop.store.applies == 1 and _samples(loop.store) == 50


def test_a_batch_stuck_past_the_limit_is_unready_then_ready_once_done(pipelined: bool) -> None:
    loop = Loop(unready_after_s=0.2, pipelined=pipelined)
    loop.store.failures = 10**6
    with loop:
        _feed(loop)
        status = wait_for(lambda: (s := loop.ingest.status()).stuck and s, 30, "the batch to be stuck")
        assert status.paused and status.failures >= 1 and status.last_error.startswith("apply: InfrastructureError")
        loop.store.failures = 0
        wait_for(lambda: not loop.ingest.status().stuck and loop.ingest.status().batch_age_s == 0, 30, "done")
    assert _samples(loop.store) == 50 and not loop.consumer.paused


def test_a_partition_revoked_while_its_batch_fails_is_given_up_and_the_rest_resumes(pipelined: bool) -> None:
    loop = Loop(pipelined=pipelined)
    loop.store.failures = 10**6
    with loop:
        _feed(loop)
        wait_for(lambda: loop.retries("apply") >= 1, 30, "a failure")
        loop.consumer.revoke(SCORES, 1)
        wait_for(lambda: 1 in loop.revoked, 30, "the revocation")
        loop.store.failures = 0
        wait_for(lambda: loop.consumer.commits, 30, "a commit")
        assert not loop.consumer.paused  # resumed: nothing stays paused after a batch ends
    assert loop.consumer.committed == {(SCORES, 0): 50}  # partition 1 is its next owner's to read again
    assert _samples(loop.store) == 25


def test_a_dead_letter_the_broker_refuses_is_replaced_by_its_reference(pipelined: bool) -> None:
    loop = Loop(pipelined=pipelined)
    big = b'{"model":"fraud-risk","pad":"' + b"x" * 5000 + b'"}'
    loop.producer.refuse = lambda value: KafkaError.MSG_SIZE_TOO_LARGE if value == big else None
    with loop:
        sent = _feed(loop, invalid=[big, b"not json"])
        wait_for(lambda: loop.records() >= sent, 30, "the batch done")
    sent_values = [(value, headers) for _, _, value, headers in loop.producer.sent]
    assert b"not json" in [v for v, _ in sent_values]
    (ref,) = [orjson.loads(v) for v, h in sent_values if "shadowgate.reference" in h]
    assert ref["sha256"] == hashlib.sha256(big).hexdigest() and ref["size"] == len(big)
    assert (ref["topic"], ref["partition"], ref["offset"]) == (SCORES, 0, 50) and ref["model"] == "fraud-risk"
    assert loop.references and _samples(loop.store) == 50


class _FatalConsumer(FakeConsumer):
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        super().consume(num_messages, 0)
        return [_Fatal()]


class _Fatal:
    def error(self) -> KafkaError:
        return KafkaError(KafkaError._FATAL, "Fatal error: Broker: Static consumer fenced by other consumer")


def test_a_consumer_failed_for_good_is_replaced_once_and_twice_means_a_twin(pipelined: bool) -> None:
    loop = Loop(pipelined=pipelined)
    loop.consumers = [_FatalConsumer(), loop.consumer]
    with loop:
        sent = _feed(loop)
        wait_for(lambda: loop.records() >= sent, 30, "the new consumer to do the batch")
    assert loop.error is None and _samples(loop.store) == 50
    twins = Loop(pipelined=pipelined)
    twins.consumers = [_FatalConsumer(), _FatalConsumer()]
    with twins:
        twins.thread.join(30)
    assert isinstance(twins.error, InfrastructureError) and "group.instance.id" in str(twins.error)
    assert twins.ingest.status().fatal is not None


@pytest.mark.parametrize(("attempt", "delay"), [(1, 0.25), (2, 0.5), (3, 1.0), (5, 4.0), (6, 5.0), (60, 5.0)])
def test_the_backoff_doubles_up_to_its_cap(attempt: int, delay: float) -> None:
    assert IngestConfig(topics=("s",)).backoff(attempt) == delay


class _FillingConsumer(FakeConsumer):
    """Waits out ``timeout`` to fill ``num_messages``, as librdkafka's ``consume`` does."""

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        deadline = time.monotonic() + max(timeout, 0.0)
        got: list[Any] = []
        while True:
            got += super().consume(num_messages - len(got), 0)
            if len(got) >= num_messages or time.monotonic() >= deadline:
                return got
            time.sleep(0.002)


def _bare(consumer: FakeConsumer, **config: Any) -> Ingest:
    ingest = Ingest(lambda: consumer, IngestConfig(topics=(SCORES, LABELS), **config), lambda r: BatchOutcome(),
                    lambda p: None, WorkerMetrics())  # fmt: skip
    ingest._consumer = consumer  # noqa: SLF001 - the batching alone, without the thread
    consumer.subscribe([SCORES, LABELS], on_assign=ingest._on_assign, on_revoke=ingest._on_revoke)  # noqa: SLF001
    return ingest


def test_a_backlog_is_taken_in_batches_of_its_bounds() -> None:
    consumer = _FillingConsumer(1)
    ingest = _bare(consumer, batch_chunk_records=100, batch_max_records=250, batch_max_bytes=10**9,
                   batch_within_s=5.0)  # fmt: skip
    for _ in range(600):
        consumer.put(SCORES, 0, b"x" * 10)
    started = time.monotonic()
    batches = [ingest._next_batch() for _ in range(3)]  # noqa: SLF001
    assert [len(b) for b in batches] == [250, 250, 100]
    assert [r.offset for b in batches for r in b] == list(range(600))  # in order, none twice, none lost
    assert time.monotonic() - started < 1.0  # a backlog never waits out batch_within_s
    ingest.config = IngestConfig(topics=(SCORES, LABELS), batch_chunk_records=100, batch_max_bytes=1500)
    for _ in range(600):
        consumer.put(SCORES, 0, b"x" * 10)
    assert len(ingest._next_batch()) == 200  # noqa: SLF001 - past 1,500 bytes after the second call of 100


@pytest.mark.real_clock  # a timer thread and a timed wait: libfaketime's threaded clock made the wait miss it
def test_a_trickle_is_handed_on_when_its_first_record_comes_not_when_the_batch_would_be_full() -> None:
    consumer = _FillingConsumer(1)
    ingest = _bare(consumer, batch_within_s=5.0)
    threading.Timer(0.1, lambda: consumer.put(SCORES, 0, b"late")).start()
    started = time.monotonic()
    batch = ingest._next_batch()  # noqa: SLF001
    assert [r.value for r in batch] == [b"late"]
    assert time.monotonic() - started < 2.0  # not the 5 s that filling a batch of 2,000 would wait


class _RevokingConsumer(FakeConsumer):
    """Revokes partition 0 of the scores topic in its third ``consume`` call."""

    calls = 0

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        self.calls += 1
        if self.calls == 3:
            self.revoke(SCORES, 0)
        return super().consume(num_messages, timeout)


def test_records_of_a_partition_revoked_while_a_backlog_is_taken_are_left_out_of_the_batch() -> None:
    consumer = _RevokingConsumer(2)
    ingest = _bare(consumer, batch_chunk_records=4, batch_max_records=100, batch_within_s=0.01)
    for i in range(12):
        consumer.put(SCORES, i % 2, b"x")
    batch = ingest._next_batch()  # noqa: SLF001 - calls 1 and 2 take 8 records, call 3 revokes partition 0
    assert consumer.calls >= 3
    assert [(r.partition, r.offset) for r in batch] == [(1, offset) for offset in range(6)]


# -- the pipeline: a batch folded while the one before it is applied -------------------------------------------


class GatedStore(FlakyStore):
    """Holds its first apply until ``gate`` is set, then applies, raises (``failures``) or refuses (``refusals``,
    as when another worker moved a fence); logs ("apply", next offset of each topic/partition) it applied."""

    def __init__(self, events: list[tuple[str, dict[tuple[str, int], int]]]) -> None:
        super().__init__()
        self.events = events
        self.entered, self.gate = threading.Event(), threading.Event()
        self.refusals = 0

    def apply_many(self, batch: SlotBatch, parts: Sequence[FencedState]) -> bool:
        self.entered.set()
        assert self.gate.wait(30)
        if self.refusals:
            self.refusals -= 1
            return False
        applied = super().apply_many(batch, parts)
        offsets = {(topic, part.fence.partition): offset for part in parts
                   for topic, offset in orjson.loads(part.checkpoint)["offsets"].items()}  # fmt: skip
        self.events.append(("apply", offsets))
        return applied


def _gated(**loop: Any) -> tuple[Loop, GatedStore, list[tuple[str, dict[tuple[str, int], int]]]]:
    events: list[tuple[str, dict[tuple[str, int], int]]] = []
    store = GatedStore(events)
    built = Loop(store=store, **loop)
    built.folds: list[int] = []  # type: ignore[misc]
    fold = built.processor.fold
    built.ingest._pipeline = Pipeline(  # noqa: SLF001 - the worker's pipeline, its folds counted
        lambda records: (built.folds.append(len(records)), fold(records))[1],
        lambda folded: built.processor.apply(folded, built.sink.deliver), built.processor.settle,
        built.processor.discard,
    )
    built.consumer.events = events
    return built, store, events


def _committed_only_what_was_applied(events: list[tuple[str, dict[tuple[str, int], int]]]) -> None:
    """Every commit names offsets already applied (the fence's checkpoint), never ahead of them."""
    applied: dict[tuple[str, int], int] = {}
    for kind, offsets in events:
        if kind == "apply":
            applied.update(offsets)
        elif kind == "commit":
            assert all(offset <= applied.get(tp, 0) for tp, offset in offsets.items()), (offsets, applied)


def _two_batches_the_second_folded_while_the_first_is_held(
    loop: Loop, store: GatedStore, while_held: Callable[[int, int], None] = lambda first, second: None
) -> None:
    """Batch one (50 pairs) held in its apply, batch two (50 more) folded meanwhile; ``while_held`` checks that
    moment; then the apply is let go and both are done."""
    first = _feed(loop, 50, seed=1)
    with loop:
        assert store.entered.wait(30)  # the first batch's apply holds
        second = _feed(loop, 50, seed=2)
        wait_for(lambda: len(loop.folds) == 2, 30, "the second batch folded while the first is applied")
        while_held(first, second)
        store.gate.set()
        wait_for(lambda: loop.records() >= first + second, 30, "both batches done")


def test_the_next_batch_is_folded_while_one_is_applied_and_each_is_committed_after_its_apply() -> None:
    loop, store, events = _gated()

    def held(first: int, second: int) -> None:
        assert loop.folds == [first, second]
        assert loop.consumer.commits == [] and store.applies == 0

    _two_batches_the_second_folded_while_the_first_is_held(loop, store, held)
    assert [kind for kind, _ in events].count("apply") == 2 and store.applies == 2
    _committed_only_what_was_applied(events)
    assert loop.consumer.committed == {(SCORES, 0): 100, (SCORES, 1): 100}
    assert _samples(store) == 100 and [o.pairs for o in loop.outcomes] == [50, 50]


def test_when_the_apply_in_flight_fails_the_batch_folded_on_it_is_done_again_and_none_counts_twice() -> None:
    loop, store, events = _gated()
    store.failures = 1  # the first apply raises once let go
    _two_batches_the_second_folded_while_the_first_is_held(loop, store)
    assert loop.retries("apply") == 1 and loop.consumer.pauses >= 1 and not loop.consumer.paused
    _committed_only_what_was_applied(events)
    assert loop.consumer.committed == {(SCORES, 0): 100, (SCORES, 1): 100}
    assert _samples(store) == 100 and sum(o.pairs for o in loop.outcomes) == 100


def test_when_a_fence_refuses_the_apply_in_flight_both_batches_are_redone_from_the_stored_state() -> None:
    loop, store, events = _gated()
    store.refusals = 1
    _two_batches_the_second_folded_while_the_first_is_held(loop, store)
    assert loop.retries("apply") == 0  # another worker's move is no failure: redone at once
    _committed_only_what_was_applied(events)
    assert _samples(store) == 100 and sum(o.pairs for o in loop.outcomes) == 100


class _RevokeInFlight(FakeConsumer):
    """Revokes scores partition 1 in the first ``consume`` after ``store``'s apply began."""

    def __init__(self, store: GatedStore) -> None:
        super().__init__(2)
        self.store, self.asked = store, threading.Event()

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        if self.store.entered.is_set() and not self.asked.is_set():
            self.asked.set()
            self.revoke(SCORES, 1)
        return super().consume(num_messages, timeout)


def test_a_batch_in_flight_when_its_partition_is_revoked_is_committed_before_the_revocation_returns() -> None:
    loop, store, events = _gated()
    loop.consumer = loop.consumers[0] = _RevokeInFlight(store)
    loop.consumer.events = events
    revoke = loop.ingest._revoke  # noqa: SLF001
    loop.ingest._revoke = lambda partitions: (events.append(("revoke", {})), revoke(partitions))[1]  # noqa: SLF001
    first = _feed(loop, 50, seed=1)
    with loop:
        assert loop.consumer.asked.wait(30)
        store.gate.set()
        wait_for(lambda: loop.records() >= first, 30, "the batch done")
        wait_for(lambda: 1 in loop.revoked, 30, "the revocation")
    assert [kind for kind, _ in events] == ["apply", "commit", "revoke"]
    assert loop.consumer.committed == {(SCORES, 0): 50, (SCORES, 1): 50} and _samples(store) == 50
