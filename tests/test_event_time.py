"""Sustain in event time, end to end: the same scoring events, folded by the worker's processor into a window
store, give the same rollback decisions with the same event ids whether they arrive live (one evaluation
per second) or as a backlog after an outage (one evaluation at the end). Issue 14 point 4.

``closes`` below is what the worker's evaluation loop is asked to do (docs/gates.md, "Event time"): for
every whole minute of event time closed since the last evaluation, read each trigger window ending there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis

from governance.contract.comparison import ComparisonKey, WindowSnapshot
from governance.contract.events import GovernanceEvent, RollbackTrigger
from governance.contract.kafkaio import Record
from governance.policy.document import Policy, load_policy, window_seconds
from governance.policy.evaluator import EvaluationContext, EvaluatorState, MinuteClose, evaluate, minutes_due
from shadowgate.traffic import TrafficSpec, generate
from streams.state.memory_store import MemoryWindowStore
from streams.state.redis_store import RedisWindowStore
from streams.state.store import WindowStore
from streams.worker.evaluator_states import EvaluatorStates, MemoryEvaluatorStates, RedisEvaluatorStates
from streams.worker.processor import Processor
from streams.worker.reading import comparison_keys, read_snapshot
from streams.worker.replay import replay_lines
from streams.worker.rounds import Emission, EvaluationLoop, Evaluator

POLICY = load_policy()
START = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)
RATE_PER_S = 10.0  # 600 pairs a minute


def _phase(minutes: int, offset_min: int, error_rate: float, seed: int) -> Iterator[dict[str, Any]]:
    pairs = int(minutes * 60 * RATE_PER_S)
    spec = TrafficSpec(role="canary", pairs=pairs, start=START + timedelta(minutes=offset_min), rate_per_s=RATE_PER_S,
                       cand_error_rate=error_rate, label_share=0.0, seed=seed)
    return generate(spec)


def _records() -> list[Record]:
    """2 healthy minutes, 6 minutes in which half the canary's requests fail, 4 healthy minutes."""
    events = [*_phase(2, 0, 0.0, 1), *_phase(6, 2, 0.5, 2), *_phase(4, 8, 0.0, 3)]
    return [Record("s", 0, i, b"k", orjson.dumps({k: v for k, v in e.items() if k != "kind"}))
            for i, e in enumerate(events)]


def _ts(record: Record) -> datetime:
    return datetime.fromisoformat(orjson.loads(record.value)["ts"])


def closes(store: MemoryWindowStore, key: ComparisonKey, policy: Policy, ends: list[datetime]) -> list[MinuteClose]:
    """Each trigger window ending at each closed minute (the reads the worker's loop is asked for)."""
    windows = {t.window for t in (policy.triggers.error_rate, policy.triggers.p99_latency_ms,
                                  policy.triggers.kl_divergence, policy.triggers.integrity_violations,
                                  policy.triggers.calibration_slope)}
    out = []
    for end in ends:
        snaps = {}
        for name in windows:
            length = window_seconds(name)
            assert length is not None
            snaps[name] = read_snapshot(store, key, name, end, start=end - timedelta(seconds=length), tests=False,
                                        full=name == policy.triggers.calibration_slope.window)
        out.append(MinuteClose(end, snaps))
    return out


class Judge:
    """One comparison's evaluator, as the worker runs it: state kept as JSON between evaluations."""

    def __init__(self, store: MemoryWindowStore, with_minutes: bool = True) -> None:
        self.store, self.with_minutes = store, with_minutes
        self.state = EvaluatorState()
        self.events: list[GovernanceEvent] = []

    def evaluate(self) -> None:
        (key,) = comparison_keys(self.store)
        meta = self.store.meta(key.as_id())
        assert meta is not None
        now = datetime.fromtimestamp(meta.last_event_ms // 1000, UTC)
        first = datetime.fromtimestamp(meta.first_event_ms / 1000, UTC)
        context = EvaluationContext(key=key, stage="STAGING", stage_started_at=first, canary_share=0.05)
        rolling: dict[str, WindowSnapshot] = {
            "1m": read_snapshot(self.store, key, "1m", now + timedelta(seconds=1), start=now - timedelta(seconds=59),
                                tests=False, full=False)}
        minutes = closes(self.store, key, POLICY, minutes_due(self.state, now, first)) if self.with_minutes else None
        self.state, events = evaluate(POLICY, rolling, context, self.state, now, minutes)
        self.state = EvaluatorState.from_json(self.state.to_json())
        self.events += events

    def rollbacks(self) -> list[tuple[str, Any, datetime, str]]:
        return [(e.trigger, e.event_id, e.ts, e.reason) for e in self.events if isinstance(e, RollbackTrigger)]


def _processor(store: MemoryWindowStore) -> Processor:
    return Processor(store, scores_topic="s", labels_topic="l", fence_name="f")


def test_a_backlog_and_the_live_worker_fire_the_same_rollback_with_the_same_event_id() -> None:
    records = _records()
    live_store, backlog_store = MemoryWindowStore(), MemoryWindowStore()
    live, backlog = Judge(live_store), Judge(backlog_store)

    processor = _processor(live_store)
    for _, batch in _by_second(records):  # real time: every second's events, then an evaluation
        processor.process(batch)
        live.evaluate()

    _processor(backlog_store).process(records)  # after an outage: all twelve minutes at once, one evaluation
    backlog.evaluate()

    assert live.rollbacks() == backlog.rollbacks()
    ((trigger, _, ts, reason),) = live.rollbacks()
    # The failures start at minute 2; five failing minutes end at minute 7 of event time.
    assert (trigger, ts) == ("error_rate", START + timedelta(minutes=7))
    assert "pooled over 5 min" in reason

    # Judged once at its end on rolling windows (the worker's loop before minute closes), the backlog's last
    # minute is healthy and the six failing minutes before it are never seen: no rollback.
    old_way = Judge(backlog_store, with_minutes=False)
    old_way.evaluate()
    assert old_way.rollbacks() == []


# -- the worker's own path: Evaluator and EvaluationLoop read the minute closes themselves ----------------------


def _recent_records() -> tuple[datetime, list[Record]]:
    """The same twelve minutes, dated half an hour ago (Redis keeps minute slots by its wall clock)."""
    start = datetime.fromtimestamp((int(datetime.now(UTC).timestamp()) // 60 - 30) * 60, UTC)
    shift = start - START
    out = []
    for record in _records():
        doc = orjson.loads(record.value)
        doc["ts"] = (datetime.fromisoformat(doc["ts"]) + shift).isoformat()
        out.append(Record("s", 0, record.offset, b"k", orjson.dumps(doc)))
    return start, out


def _by_second(records: list[Record]) -> list[tuple[datetime, list[Record]]]:
    """The records grouped by their event-time second, in order: what a worker that keeps up folds each second."""
    by_second: dict[datetime, list[Record]] = {}
    for record in records:
        by_second.setdefault(_ts(record).replace(microsecond=0), []).append(record)
    return sorted(by_second.items())


def _loop(store: WindowStore, states: EvaluatorStates, newest: list[float]) -> EvaluationLoop:
    # The wall clock just past the newest event, as in a worker that keeps up (the source is fresh).
    return EvaluationLoop(Evaluator(store, POLICY, states), None, {"gates": "g", "rollbacks": "r", "alerts": "a"},
                          lease_s=5.0, owner="w", wall=lambda: newest[0] + 1.0)


def _rollbacks(events: list[GovernanceEvent]) -> list[tuple[str, Any, datetime]]:
    return [(e.trigger, e.event_id, e.ts) for e in events if isinstance(e, RollbackTrigger)]


def test_the_worker_loop_a_backlog_and_replay_reach_the_same_rollback(redis_url: str, redis_prefix: str) -> None:
    start, records = _recent_records()
    # Live, on the real Redis store: every second's events, then one evaluation round, as the worker does.
    live_store = RedisWindowStore.from_url(redis_url, prefix=redis_prefix)
    newest = [0.0]
    live = _loop(live_store, RedisEvaluatorStates(redis.Redis.from_url(redis_url), redis_prefix), newest)
    processor = _processor(live_store)
    live_events: list[GovernanceEvent] = []
    for second, batch in _by_second(records):
        processor.process(batch)
        newest[0] = second.timestamp()
        live_events += [event for _, _, _, event in live.round()]
    live_store.close()

    # After an outage: all twelve minutes in one batch, one round.
    backlog_store = MemoryWindowStore()
    _processor(backlog_store).process(records)
    backlog = _loop(backlog_store, MemoryEvaluatorStates(), [max(_ts(r) for r in records).timestamp()])
    backlog_events = [event for _, _, _, event in backlog.round()]

    replayed = replay_lines(iter([r.value for r in records]), evaluate_every_s=60)
    replay_events = [(e["trigger"], uuid.UUID(e["event_id"]), datetime.fromisoformat(e["ts"]))
                     for e in replayed["events"] if e["type"] == "RollbackTrigger"]

    expected = [("error_rate", start + timedelta(minutes=7))]
    assert [(t, ts) for t, _, ts in _rollbacks(live_events)] == expected
    assert _rollbacks(backlog_events) == _rollbacks(live_events)
    assert replay_events == _rollbacks(live_events)


def test_a_breach_in_the_last_minutes_of_a_stream_that_stops_is_judged_once_it_stood_still() -> None:
    """Only newer events close a minute; when the traffic stops right after a breach, the worker's idle
    re-evaluation closes the minute of the newest event (and replay does at the end of its file): same id."""
    events = [*_phase(2, 0, 0.0, 1), *_phase(5, 2, 0.5, 2)]  # the failures run to the very end
    records = [Record("s", 0, i, b"k", orjson.dumps({k: v for k, v in e.items() if k != "kind"}))
               for i, e in enumerate(events)]
    store = MemoryWindowStore()
    clock, newest = [0.0], [0.0]
    loop = EvaluationLoop(Evaluator(store, POLICY, MemoryEvaluatorStates()), None,
                          {"gates": "g", "rollbacks": "r", "alerts": "a"}, lease_s=5.0, owner="w", idle_s=60.0,
                          clock=lambda: clock[0], wall=lambda: newest[0] + 1.0)
    processor = _processor(store)
    live: list[GovernanceEvent] = []
    for second, batch in _by_second(records):
        processor.process(batch)
        newest[0], clock[0] = second.timestamp(), clock[0] + 1.0
        live += [event for _, _, _, event in loop.round()]
    assert _rollbacks(live) == []  # the last failing minutes wait for newer events that do not come
    clock[0] += 61.0  # the comparison stood still for the idle period: its stream stopped
    live += [event for _, _, _, event in loop.round()]
    ((trigger, event_id, ts),) = _rollbacks(live)
    assert (trigger, ts) == ("error_rate", START + timedelta(minutes=7))

    replayed = replay_lines(iter([r.value for r in records]), evaluate_every_s=60)
    assert [(e["trigger"], uuid.UUID(e["event_id"])) for e in replayed["events"] if e["type"] == "RollbackTrigger"] \
        == [(trigger, event_id)]


def test_a_trigger_whose_publish_fails_is_not_marked_fired_and_comes_with_the_same_id_once_it_can(
    redis_url: str, redis_prefix: str
) -> None:
    """A step that raises is never acknowledged as done: the round writes a comparison's evaluator state back only
    once the broker acknowledged its events. It used to write it first, so a trigger whose publish failed was lost
    for good: the state said fired, and the next evaluation stayed silent."""
    start, records = _recent_records()
    store = RedisWindowStore.from_url(redis_url, prefix=redis_prefix)
    inner = RedisEvaluatorStates(redis.Redis.from_url(redis_url), redis_prefix)
    newest = [0.0]
    loop = _loop(store, inner, newest)
    processor = _processor(store)
    refused: list[GovernanceEvent] = []
    delivered: list[GovernanceEvent] = []
    errors: list[str] = []
    loop.on_error = errors.append

    def broker(emissions: list[Emission]) -> set[str]:
        """Refuses every round that carries a RollbackTrigger, the first three times."""
        if any(isinstance(e.event, RollbackTrigger) for e in emissions) and len(refused) < 3:
            refused.append(next(e.event for e in emissions if isinstance(e.event, RollbackTrigger)))
            return set()
        delivered.extend(e.event for e in emissions)
        return {e.comparison for e in emissions}

    returned: list[GovernanceEvent] = []
    for second, batch in _by_second(records):
        processor.process(batch)
        newest[0] = second.timestamp()
        returned += [event for _, _, _, event in loop.round(broker)]
        if refused and len(refused) < 3:  # while refused, the stored state has not fired
            (cid,) = {k.as_id() for k in comparison_keys(store)}
            state = EvaluatorState.from_json(inner.get(cid) or b"{}")
            assert state.triggers.episodes["error_rate"].phase != "fired"
    store.close()

    # Refused three times, each time the same event; then delivered once, with that id, at its minute.
    assert len(refused) == 3 and len({e.event_id for e in refused}) == 1
    assert _rollbacks(delivered) == _rollbacks(refused[:1])
    assert [(t, ts) for t, _, ts in _rollbacks(delivered)] == [("error_rate", start + timedelta(minutes=7))]
    assert _rollbacks(returned) == _rollbacks(delivered)  # what the round returns is what was delivered
    assert len(errors) == 3  # each refusal counted
    replayed = replay_lines(iter([r.value for r in records]), evaluate_every_s=60)
    assert [uuid.UUID(e["event_id"]) for e in replayed["events"] if e["type"] == "RollbackTrigger"] == [
        refused[0].event_id
    ]


def test_a_flushed_minute_whose_publish_failed_is_flushed_again_in_the_next_round() -> None:
    events = [*_phase(2, 0, 0.0, 1), *_phase(5, 2, 0.5, 2)]  # the failures run to the very end
    records = [Record("s", 0, i, b"k", orjson.dumps({k: v for k, v in e.items() if k != "kind"}))
               for i, e in enumerate(events)]  # fmt: skip
    store = MemoryWindowStore()
    _processor(store).process(records)
    clock, newest = [0.0], [max(_ts(r) for r in records).timestamp()]
    loop = EvaluationLoop(Evaluator(store, POLICY, MemoryEvaluatorStates()), None,
                          {"gates": "g", "rollbacks": "r", "alerts": "a"}, lease_s=5.0, owner="w", idle_s=60.0,
                          clock=lambda: clock[0], wall=lambda: newest[0] + 1.0)  # fmt: skip
    assert _rollbacks([e for _, _, _, e in loop.round()]) == []  # the last minutes wait for newer events
    clock[0] += 61.0  # stood still: the idle round flushes them, and its publish fails
    assert loop.round(lambda emissions: set()) == []
    # The next round (no more idle time passed) evaluates it again, flushed again: the trigger comes.
    ((trigger, _, ts),) = _rollbacks([e for _, _, _, e in loop.round()])
    assert (trigger, ts) == ("error_rate", START + timedelta(minutes=7))
