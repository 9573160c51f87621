"""The batched evaluation round (EvaluationLoop.round over Evaluator.evaluate_many) against one Evaluator.evaluate per
comparison: the same events, evaluator states and windows, and a round that fails part-way records nothing."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis

from governance.contract.comparison import ComparisonKey, WindowSnapshot
from governance.contract.events import GovernanceEvent
from governance.contract.kafkaio import Record
from governance.errors import InfrastructureError
from governance.policy.document import load_policy
from governance.policy.evaluator import EvaluationContext
from shadowgate.traffic import TrafficSpec, generate
from streams.state.memory_store import MemoryWindowStore
from streams.state.redis_store import RedisWindowStore
from streams.state.store import ComparisonMeta, ReadRequest, WindowRead, WindowStore
from streams.worker.evaluator_states import EvaluatorStates, MemoryEvaluatorStates, RedisEvaluatorStates
from streams.worker.processor import Processor
from streams.worker.reading import comparison_keys
from streams.worker.rounds import EvaluationLoop, Evaluator, default_context
from tests.fault_servers import RedisServer

# Recent traffic: the Redis store keeps its minute slots by the wall clock (26 h).
START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
TOPICS = {"gates": "gates", "rollbacks": "rollbacks", "alerts": "alerts"}
STEP_S = 20  # event time folded between two rounds
# Comparisons that behave differently: a healthy shadow, one that drifts and is slow and failing (its rollback
# triggers fire), a failing canary, and a second candidate of the first model.
SPECS = [
    TrafficSpec(model="m-a", candidate_version="2", seed=1),
    TrafficSpec(model="m-b", candidate_version="2", shift=0.3, cand_latency_ms=900.0, cand_error_rate=0.2, seed=2),
    TrafficSpec(model="m-c", candidate_version="3", role="canary", cand_error_rate=0.3, seed=3),
    TrafficSpec(model="m-a", candidate_version="4", role="canary", shift=0.1, seed=4),
]


def _traffic(seconds: int) -> list[dict[str, Any]]:
    """Every comparison's events over ``seconds`` from START, ordered by event time."""
    streams = [generate(replace(spec, pairs=seconds * 4, start=START, rate_per_s=4.0, label_delay_s=30.0,
                                production_version="1"))
               for spec in SPECS]  # fmt: skip
    return list(heapq.merge(*streams, key=lambda e: e["ts"]))


class _Feed:
    def __init__(self, store: WindowStore) -> None:
        self.processor = Processor(store, scores_topic="s", labels_topic="l", fence_name="f")
        self.offset = 0

    def fold(self, events: list[dict[str, Any]]) -> None:
        records = []
        for event in events:
            kind = "l" if event["kind"] == "label" else "s"
            body = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in event.items() if k != "kind"}
            records.append(Record(kind, 0, self.offset, b"k", orjson.dumps(body)))
            self.offset += 1
        self.processor.process(records)


class _Counting(MemoryWindowStore):
    """Counts the reads that go to the store one comparison at a time (not through read_batch / metas)."""

    def __init__(self) -> None:
        super().__init__()
        self.direct = 0
        self.batches = 0

    def read_many(self, comparison_id: str, ranges: Sequence[tuple[int, int]], now_s: int) -> list[WindowRead]:
        self.direct += 1
        return super().read_many(comparison_id, ranges, now_s)

    def meta(self, comparison_id: str) -> ComparisonMeta | None:
        self.direct += 1
        return super().meta(comparison_id)

    def read_batch(self, requests: Sequence[ReadRequest]) -> list[list[WindowRead]]:
        self.batches += 1
        return super().read_batch(requests)


def _monitor(key: ComparisonKey) -> EvaluationContext | None:
    """Model m-a's production version is the serving PRODUCTION version: its production side is judged too."""
    return EvaluationContext(key=key, stage="PRODUCTION") if key.model == "m-a" else None


def _snapshot(snap: WindowSnapshot) -> tuple[Any, ...]:
    """Everything a snapshot holds, comparable (arrays as lists, floats by repr so NaN equals NaN)."""
    arrays = [None if a is None else a.tolist() for a in (snap.score_counts_production, snap.score_counts_candidate)]
    return (snap.key, snap.window, snap.start, snap.end, sorted((k, repr(v)) for k, v in snap.metrics.items()),
            sorted((k, repr(v)) for k, v in snap.feature_drift.items()), snap.delta_sums, arrays,
            snap.latest_event_ts, snap.first_event_ts, snap.exact)  # fmt: skip


def _windows(evaluator: Evaluator) -> dict[Any, Any]:
    cached = {("cache", *k): (v[0], _snapshot(v[1])) for k, v in evaluator._cache.items()}  # noqa: SLF001
    closes = {("closes", *k): (v[0], _snapshot(v[1])) for k, v in evaluator._closes.items()}  # noqa: SLF001
    return cached | closes


def _dump(events: list[GovernanceEvent]) -> list[Any]:
    return [event.model_dump(mode="json") for event in events]


class _OnePerComparison:
    """The reference: one Evaluator.evaluate per comparison whose event time moved (or that stood idle), as the
    round decides it, with the evaluator's own store reads and state get/put."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self.last: dict[str, int] = {}

    def round(self, wall_s: float, idle: bool) -> list[GovernanceEvent]:
        events: list[GovernanceEvent] = []
        for key in comparison_keys(self.evaluator.store):
            meta = self.evaluator.store.meta(key.as_id())
            assert meta is not None
            now_s = math.floor(meta.last_event_ms / 1000)
            moved = now_s > self.last.get(key.as_id(), -1)
            if not moved and not idle:
                continue
            if not moved:
                self.evaluator.forget(key.as_id())
            self.last[key.as_id()] = now_s
            events += self.evaluator.evaluate(key, datetime.fromtimestamp(now_s, UTC),
                                              clock=datetime.fromtimestamp(wall_s, UTC), flush=not moved)  # fmt: skip
        return events


def _run_both(
    store: WindowStore, states: EvaluatorStates, stored: Callable[[list[str]], list[bytes | None]], monitored: bool
) -> tuple[int, int]:
    """Fold the traffic step by step; after each step one batched round and the reference; compare everything.
    Returns (rounds, events) seen."""
    policy = load_policy(None)
    monitor = _monitor if monitored else None
    batched = Evaluator(store, policy, states, default_context(policy), monitor=monitor)
    reference_states = MemoryEvaluatorStates()
    reference = _OnePerComparison(Evaluator(store, policy, reference_states, default_context(policy), monitor=monitor))
    clock = [0.0]
    wall = [START.timestamp()]
    loop = EvaluationLoop(batched, None, TOPICS, lease_s=5.0, owner="w1", idle_s=60.0, idle_horizon_s=86400.0,
                          clock=lambda: clock[0], wall=lambda: wall[0])  # fmt: skip
    feed = _Feed(store)
    traffic = _traffic(300)
    rounds = total = 0
    for step in range(0, 300 + 2 * STEP_S, STEP_S):
        until = START + timedelta(seconds=step + STEP_S)
        chunk = [e for e in traffic if START + timedelta(seconds=step) <= e["ts"] < until]
        if chunk:
            feed.fold(chunk)
        idle = not chunk
        clock[0] += 61.0 if idle else 1.0  # after the traffic: every comparison stood idle (flush)
        wall[0] = until.timestamp() + 5
        got = [event for _, _, _, event in loop.round()]
        want = reference.round(wall[0], idle)
        assert _dump(got) == _dump(want), f"step {step}"
        ids = sorted(reference_states._states)  # noqa: SLF001
        assert stored(ids) == [reference_states._states[i] for i in ids], f"step {step}"  # noqa: SLF001
        assert _windows(batched) == _windows(reference.evaluator), f"step {step}"
        rounds, total = rounds + 1, total + len(got)
    return rounds, total


@pytest.mark.parametrize("monitored", [False, True], ids=["candidates", "with-production-monitor"])
def test_a_batched_round_gives_the_events_states_and_windows_of_one_evaluation_per_comparison(monitored: bool) -> None:
    store = _Counting()
    states = MemoryEvaluatorStates()
    rounds, events = _run_both(store, states, states.get_many, monitored)
    assert rounds >= 15 and events >= len(SPECS)  # a first verdict each, then what the breaches fire
    if not monitored:
        assert store.direct > 0  # the reference read one comparison at a time, from the store itself
        # Alone, the batched rounds read nothing one comparison at a time: every read came from their batches.
        alone = _Counting()
        assert _direct_reads_of_batched_rounds(alone) == 0
        assert alone.batches >= 10


def _direct_reads_of_batched_rounds(store: _Counting) -> int:
    policy = load_policy(None)
    clock = [0.0]
    wall = [START.timestamp()]
    evaluator = Evaluator(store, policy, MemoryEvaluatorStates(), default_context(policy))
    loop = EvaluationLoop(evaluator, None, TOPICS, lease_s=5.0, owner="w1", idle_s=60.0, clock=lambda: clock[0],
                          wall=lambda: wall[0])  # fmt: skip
    feed = _Feed(store)
    traffic = _traffic(300)
    direct = 0
    for step in range(0, 300, STEP_S):
        lo, hi = START + timedelta(seconds=step), START + timedelta(seconds=step + STEP_S)
        feed.fold([e for e in traffic if lo <= e["ts"] < hi])
        clock[0] += 1.0
        wall[0] = hi.timestamp() + 5
        before = store.direct
        assert loop.round() or step > 0  # the first round publishes every comparison's first verdict
        direct += store.direct - before
    return direct


@pytest.mark.integration
def test_a_batched_round_on_redis_gives_what_one_evaluation_per_comparison_gives(
    redis_url: str, redis_prefix: str
) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    try:
        store = RedisWindowStore(client, prefix=redis_prefix)
        states = RedisEvaluatorStates(client, redis_prefix)
        rounds, events = _run_both(store, states, states.get_many, monitored=True)
        assert rounds >= 15 and events >= len(SPECS)
    finally:
        client.close()


class _Stopping:
    """Stops the private Redis just before the named step of a round, once armed."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.armed: str | None = None

    def at(self, step: str) -> None:
        if self.armed == step:
            self.armed = None
            self.server.stop()


class _StoppingStore(RedisWindowStore):
    stopper: _Stopping

    def read_batch(self, requests: Sequence[ReadRequest]) -> list[list[WindowRead]]:
        self.stopper.at("reads")
        return super().read_batch(requests)


class _StoppingStates(RedisEvaluatorStates):
    stopper: _Stopping

    def put_many(self, states: Any) -> None:
        self.stopper.at("put")
        super().put_many(states)


@pytest.mark.integration
@pytest.mark.parametrize("step", ["reads", "put"])
def test_redis_failing_mid_round_records_nothing_and_the_next_round_evaluates_them(
    fault_redis: RedisServer, step: str
) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(fault_redis.url, socket_timeout=5.0)
    stopper = _Stopping(fault_redis)
    store = _StoppingStore(client, prefix="sg")
    states = _StoppingStates(client, "sg")
    store.stopper = states.stopper = stopper
    policy = load_policy(None)
    clock = [0.0]
    wall = [START.timestamp()]
    loop = EvaluationLoop(Evaluator(store, policy, states, default_context(policy)), None, TOPICS, lease_s=5.0,
                          owner="w1", idle_s=60.0, clock=lambda: clock[0], wall=lambda: wall[0])  # fmt: skip
    # The reference: one evaluation per comparison on the same windows, its own states, no failure.
    reference_states = MemoryEvaluatorStates()
    reference = _OnePerComparison(Evaluator(store, policy, reference_states, default_context(policy)))
    feed = _Feed(store)
    traffic = _traffic(200)
    try:
        for n, (lo, hi) in enumerate([(0, 100), (100, 200)]):
            chunk = [e for e in traffic if START + timedelta(seconds=lo) <= e["ts"] < START + timedelta(seconds=hi)]
            feed.fold(chunk)
            clock[0] += 1.0
            wall[0] = (START + timedelta(seconds=hi)).timestamp() + 5
            want = _dump(reference.round(wall[0], idle=False))
            ids = sorted(reference_states._states)  # noqa: SLF001
            if n == 1:
                before_states, before_last = states.get_many(ids), dict(loop._last)  # noqa: SLF001
                stopper.armed = step
                with pytest.raises(InfrastructureError, match="is the server up"):
                    loop.round()
                fault_redis.start()
                # Nothing of the failed round was recorded: no state stored, nothing marked evaluated.
                assert states.get_many(ids) == before_states
                assert loop._last == before_last  # noqa: SLF001
                assert before_states != [reference_states._states[i] for i in ids]  # the round had something to do
            got = _dump([event for _, _, _, event in loop.round()])
            # The next round evaluates every comparison the failed one did not record, exactly as without a failure.
            assert got == want
            assert states.get_many(ids) == [reference_states._states[i] for i in ids]
            assert want or n == 1, "the first round publishes every comparison's first verdict"
    finally:
        if not fault_redis.running:
            fault_redis.start()
        client.close()


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def prefetch(self, keys: Sequence[ComparisonKey]) -> None:
        self.calls.append(("prefetch", sorted(key.as_id() for key in keys)))

    def clear(self) -> None:
        self.calls.append(("clear", []))


class _FailingPut(MemoryEvaluatorStates):
    fail = False

    def put_many(self, states: Any) -> None:
        if self.fail:
            raise InfrastructureError("redis: cannot store the evaluator states: refused; is the server up?")
        super().put_many(states)


def test_a_round_prefetches_what_its_contexts_read_and_drops_it_after_even_when_it_fails() -> None:
    store = MemoryWindowStore()
    policy = load_policy(None)
    recorder = _Recorder()
    states = _FailingPut()
    clock = [0.0]
    wall = [START.timestamp()]
    evaluator = Evaluator(store, policy, states, default_context(policy), prefetch=recorder)
    loop = EvaluationLoop(evaluator, None, TOPICS, lease_s=5.0, owner="w1", idle_s=60.0, clock=lambda: clock[0],
                          wall=lambda: wall[0])  # fmt: skip
    feed = _Feed(store)
    traffic = _traffic(40)
    feed.fold([e for e in traffic if e["ts"] < START + timedelta(seconds=20)])
    assert loop.round()
    every = sorted(key.as_id() for key in comparison_keys(store))
    assert recorder.calls == [("prefetch", every), ("clear", [])]
    feed.fold([e for e in traffic if e["ts"] >= START + timedelta(seconds=20)])
    clock[0] += 1.0
    states.fail = True
    with pytest.raises(InfrastructureError):
        loop.round()
    assert recorder.calls[2:] == [("prefetch", every), ("clear", [])]


def test_a_window_only_the_triggers_read_is_re_read_once_a_minute_with_the_newest_event_time_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 1 m trigger window at the rolling evaluation serves the source's freshness only (the triggers judge
    the minute closes): it is read once per minute of event time, at a phase of each comparison's own, and the
    snapshot the policy sees carries the comparison's newest event time at every evaluation."""
    import streams.worker.rounds as rounds_module

    store = MemoryWindowStore()
    policy = load_policy(None)
    evaluator = Evaluator(store, policy, MemoryEvaluatorStates(), default_context(policy))
    reads: dict[str, list[float]] = {}
    seen: list[tuple[datetime | None, datetime]] = []
    read_snapshot, evaluate = rounds_module.read_snapshot, rounds_module.evaluate

    def counting_read(reader: Any, key: ComparisonKey, name: str, end: datetime, *args: Any, **kw: Any) -> Any:
        if name == "1m":
            reads.setdefault(key.as_id(), []).append(end.timestamp())
        return read_snapshot(reader, key, name, end, *args, **kw)

    def watching(policy: Any, snapshots: dict[str, WindowSnapshot], ctx: EvaluationContext, *rest: Any) -> Any:
        meta = store.meta(ctx.key.as_id())
        assert meta is not None
        seen.append((snapshots["1m"].latest_event_ts, datetime.fromtimestamp(meta.last_event_ms / 1000, UTC)))
        return evaluate(policy, snapshots, ctx, *rest)

    monkeypatch.setattr(rounds_module, "read_snapshot", counting_read)
    monkeypatch.setattr(rounds_module, "evaluate", watching)
    feed = _Feed(store)
    traffic = _traffic(240)
    evaluations = 0
    for second in range(240):
        begin = START + timedelta(seconds=second)
        feed.fold([e for e in traffic if begin <= e["ts"] < begin + timedelta(seconds=1)])
        for key in comparison_keys(store):
            evaluator.evaluate(key)
            evaluations += 1
    assert evaluations >= 4 * 230 and len(seen) == evaluations
    assert all(latest == newest for latest, newest in seen)  # never the cached read's own, older, newest event
    for cid, instants in reads.items():
        assert 4 <= len(instants) <= 5, cid  # 240 s of event time: the first read and one per minute after
        assert all(b - a >= 59 for a, b in zip(instants[1:], instants[2:], strict=False)), cid
    phases = {int(instants[1]) % 60 for instants in reads.values()}
    assert len(phases) > 1  # the fleet's re-reads are spread over the minute, not all in one round


def test_a_long_trigger_window_is_re_read_once_a_cadence_at_its_comparisons_own_phase() -> None:
    """The 1 h window every 5 minutes and the 1 d window every 2 hours of event time, each at instants of the
    comparison's own phase, so a fleet's day windows are not all read in one round; at every minute close the
    window standing is the last one read at or before it, less than a cadence old."""
    policy = load_policy(None)
    evaluator = Evaluator(MemoryWindowStore(), policy, MemoryEvaluatorStates(), default_context(policy))
    hour0 = START.replace(minute=0) - timedelta(hours=7)
    ends = [hour0 + timedelta(minutes=m) for m in range(1, 7 * 60 + 1)]
    cadence = {"1m": timedelta(minutes=1), "1h": timedelta(minutes=5), "1d": timedelta(hours=2)}
    length = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
    phases: dict[str, set[int]] = {"1h": set(), "1d": set()}
    for i in range(60):
        cid = ComparisonKey(f"m{i}", "1", "2", "shadow").as_id()
        standing: dict[str, datetime] = {}
        read_at: dict[str, list[datetime]] = {name: [] for name in cadence}
        for end, spans in zip(ends, evaluator._close_reads(cid, ends), strict=True):  # noqa: SLF001
            for name, (start, at) in spans.items():
                assert at - start == length[name]
                standing[name] = at
                read_at[name].append(at)
            for name, every in cadence.items():
                assert end - every < standing[name] <= end, (cid, name, end)
        for name, every in cadence.items():
            steps = {b - a for a, b in zip(read_at[name][1:], read_at[name][2:], strict=False)}
            assert steps == {every}, (cid, name, steps)
        for name in phases:
            phases[name].add(int(read_at[name][1].timestamp()) % int(cadence[name].total_seconds()))
    assert len(phases["1h"]) == 5 and len(phases["1d"]) > 20  # spread over the cadence's minutes


def test_a_minute_closes_its_close_delay_after_its_end_plus_the_comparisons_own_share_of_a_fifteenth() -> None:
    """The comparisons of a fleet pass each minute's end together; their closes spread over up to 4 s of the
    default 60 s delay, each at an offset of its own id (the same in a replay)."""
    policy = load_policy(None)
    evaluator = Evaluator(MemoryWindowStore(), policy, MemoryEvaluatorStates(), default_context(policy))
    newest = START + timedelta(minutes=3, seconds=30)
    meta = ComparisonMeta("m", int(START.timestamp() * 1000), int(newest.timestamp() * 1000))
    delays = []
    for i in range(200):
        cid = ComparisonKey(f"m{i}", "1", "2", "shadow").as_id()
        _, watermark, until = evaluator._watermark(cid, meta, newest, flush=False)  # noqa: SLF001
        assert until is None and watermark == evaluator._watermark(cid, meta, newest, flush=False)[1]  # noqa: SLF001
        delays.append((newest - watermark).total_seconds())
    assert all(60.0 <= d < 64.0 for d in delays)
    assert max(delays) - min(delays) > 3.0 and len(set(delays)) > 150
    _, flushed, until = evaluator._watermark("x", meta, newest, flush=True)  # noqa: SLF001
    assert flushed == until == START + timedelta(minutes=4)  # a stream that stopped closes its last minute at once
