"""streams.evaluation.Evaluator over a real (memory) window store: what it judges and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from governance.contract.comparison import ComparisonKey
from governance.contract.events import Alert, GateBlocked, GateReady, GovernanceEvent
from governance.contract.kafkaio import Record
from governance.policy.document import load_policy
from governance.policy.evaluator import EvaluationContext
from shadowgate.traffic import TrafficSpec, generate
from streams.state.memory_store import MemoryWindowStore
from streams.worker.evaluator_states import MemoryEvaluatorStates
from streams.worker.processor import Processor
from streams.worker.reading import comparison_keys
from streams.worker.replay import replay_lines
from streams.worker.rounds import EvaluationLoop, Evaluator

START = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)
DEMO_POLICY = Path(__file__).resolve().parent.parent / "deploy" / "demo-policy.yaml"
TOPICS = {"gates": "gates", "rollbacks": "rollbacks", "alerts": "alerts"}


def _store(pairs: int = 600) -> tuple[MemoryWindowStore, ComparisonKey, datetime]:
    store = MemoryWindowStore()
    processor = Processor(store, scores_topic="s", labels_topic="l", fence_name="f")
    events = generate(TrafficSpec(pairs=pairs, start=START, rate_per_s=10.0, label_delay_s=5, seed=3))
    records = [
        Record("s" if e["kind"] == "score" else "l", 0, i, b"k",
               orjson.dumps({k: v for k, v in e.items() if k != "kind"}))
        for i, e in enumerate(events)
    ]
    processor.process(records)
    key = comparison_keys(store)[0]
    meta = store.meta(key.as_id())
    assert meta is not None
    return store, key, datetime.fromtimestamp(meta.last_event_ms / 1000, UTC)


def _context(key: ComparisonKey, stage: str, started: datetime) -> EvaluationContext:
    extra = {"canary_share": 0.05} if stage == "STAGING" else {"model_type": "risk_scoring"}
    return EvaluationContext(key=key, stage=stage, stage_started_at=started, **extra)  # type: ignore[arg-type]


def test_windows_at_a_newest_event_in_the_first_second_of_a_minute_include_it() -> None:
    # 601 pairs at 10/s from 04:00:00: the last one is at 04:01:00.0, alone in its minute.
    store, key, last = _store(pairs=601)
    assert last == START + timedelta(minutes=1)
    evaluator = Evaluator(store, load_policy(None), MemoryEvaluatorStates(), lambda k, first: None)
    snaps = evaluator.snapshots(key, _context(key, "SHADOW", START), last)
    assert snaps and all(s.metric("sample_count") == 601 for s in snaps.values()), {
        name: s.metric("sample_count") for name, s in snaps.items()
    }
    assert evaluator.integrity_violations(key, _context(key, "SHADOW", START), last) == 0


@pytest.mark.parametrize("stage", ["SHADOW", "STAGING"])
def test_a_stage_that_began_after_the_newest_event_is_not_judged_yet(stage: str) -> None:
    store, key, last = _store()
    ctx = _context(key, stage, last + timedelta(seconds=20))
    states = MemoryEvaluatorStates()
    evaluator = Evaluator(store, load_policy(None), states, lambda k, first: ctx)
    assert evaluator.evaluate(key, last) == []
    assert states.get(key.as_id()) is None  # no state either: the first real evaluation starts clean
    # Once the stream reaches the stage, it is judged, and the duration check is a plain FAIL, not ERROR.
    events = evaluator.evaluate(key, last + timedelta(seconds=30))
    assert [type(e) for e in events] == [GateBlocked]
    duration = next(c for c in events[0].failing_checks if c.name == "min_duration_met")  # type: ignore[union-attr]
    assert duration.outcome == "FAIL"


def test_late_labels_reach_the_gate_once_the_comparison_has_been_idle() -> None:
    store = MemoryWindowStore()
    processor = Processor(store, scores_topic="s", labels_topic="l", fence_name="f")
    events = list(generate(TrafficSpec(pairs=1200, start=START, rate_per_s=10.0, label_delay_s=5, seed=3)))
    records = {
        kind: [Record(kind, 0, i, b"k", orjson.dumps({k: v for k, v in e.items() if k != "kind"}))
               for i, e in enumerate(e for e in events if e["kind"][0] == kind)]
        for kind in ("s", "l")
    }
    processor.process(records["s"])  # every score; the labels come later, after the traffic stopped
    key = comparison_keys(store)[0]
    ctx = _context(key, "SHADOW", START - timedelta(days=1))
    evaluator = Evaluator(store, load_policy(DEMO_POLICY), MemoryEvaluatorStates(), lambda k, first: ctx)
    clock = [1000.0]
    wall = [START.timestamp() + 150]  # the traffic (120 s of it) has just been seen: the source is fresh
    loop = EvaluationLoop(evaluator, None, TOPICS, lease_s=5.0, owner="w1", idle_s=60.0, idle_horizon_s=86400.0,
                          clock=lambda: clock[0], wall=lambda: wall[0])

    first = [event for _, _, _, event in loop.round()]
    assert [type(e) for e in first] == [GateBlocked]
    assert _outcome(first[0], "metrics_pass_gate") == "INCONCLUSIVE"  # no label yet
    processor.process(records["l"])
    clock[0] += 59.0
    assert loop.round() == []  # event time stands still and the comparison has not been idle long enough
    clock[0] += 2.0
    again = [event for _, _, _, event in loop.round()]
    # Re-read with the labels: Brier, AUC and precision@10 of this traffic miss the SHADOW thresholds.
    assert [type(e) for e in again] == [GateBlocked]
    assert _outcome(again[0], "metrics_pass_gate") == "FAIL"
    assert again[0].ts == first[0].ts  # judged at the same event time
    clock[0] += 61.0
    assert loop.round() == []  # same verdict: nothing new to say
    # Past the label horizon of its newest event nothing can change its windows: it is left alone.
    evaluated: list[ComparisonKey] = []
    evaluator.evaluate = lambda key, now=None, **_: evaluated.append(key) or []  # type: ignore[method-assign]
    clock[0] += 61.0
    loop.round()
    assert evaluated == [key]
    wall[0] = START.timestamp() + 2 * 86400
    clock[0] += 61.0
    loop.round()
    assert evaluated == [key]


def _outcome(event: GateBlocked, name: str) -> str:
    return next(c.outcome for c in event.failing_checks if c.name == name)


def test_the_live_loop_calls_a_silent_source_unhealthy_by_its_wall_clock_and_replay_does_not() -> None:
    """Issue 14.10: live, the evaluation time is the newest event, so its data never look old; the worker judges
    their age at its wall clock (injected here) and SOURCE_UNHEALTHY fires. Replay keeps event time."""
    store, key, last = _store()
    policy = load_policy(None)
    limit_s = policy.source.staleness_limit_s
    ctx = _context(key, "STAGING", START)
    clock, wall = [0.0], [last.timestamp() + 1.0]
    loop = EvaluationLoop(Evaluator(store, policy, MemoryEvaluatorStates(), lambda k, first: ctx), None, TOPICS,
                          lease_s=5.0, owner="w1", idle_s=60.0, clock=lambda: clock[0], wall=lambda: wall[0])

    def alerts() -> list[Alert]:
        return [e for _, _, _, e in loop.round() if isinstance(e, Alert)]

    assert alerts() == []  # the worker keeps up: fresh
    clock[0] += 61.0
    wall[0] = last.timestamp() + limit_s - 1.0  # idle, but not yet stale
    assert alerts() == []
    clock[0] += 61.0
    wall[0] = last.timestamp() + limit_s + 30.0
    (alert,) = alerts()
    assert alert.dedup_key == f"{key.as_id()}|source_unhealthy"
    (check,) = alert.evidence.checks
    assert check.value == pytest.approx(limit_s + 30.0, abs=1.0) and check.threshold == limit_s
    assert alert.ts == last.replace(microsecond=0)  # stamped in event time, like every decision
    clock[0] += 61.0
    wall[0] += 60.0
    assert alerts() == []  # once per episode

    # The same traffic replayed: judged at its own event time, the source is never stale.
    events = generate(TrafficSpec(pairs=600, start=START, rate_per_s=10.0, label_delay_s=5, seed=3))
    doc = replay_lines(iter([orjson.dumps({k: v for k, v in e.items() if k != "kind"}) for e in events]))
    assert not [e for e in doc["events"] if e["type"] == "Alert" and e["dedup_key"].endswith("|source_unhealthy")]


def test_the_gate_of_a_silent_source_is_blocked_on_source_fresh_by_the_wall_clock() -> None:
    store, key, last = _store()
    ctx = _context(key, "STAGING", START)
    evaluator = Evaluator(store, load_policy(DEMO_POLICY), MemoryEvaluatorStates(), lambda k, first: ctx)
    fresh = evaluator.evaluate(key, last, clock=last)
    stale = evaluator.evaluate(key, last, clock=last + timedelta(hours=1))

    def source_fresh(events: list[GovernanceEvent]) -> str:
        (gate,) = [e for e in events if isinstance(e, GateReady | GateBlocked)]
        return next(c.outcome for c in gate.evidence.checks if c.name == "source_fresh")

    assert source_fresh(fresh) == "PASS"
    assert source_fresh(stale) == "FAIL"


@pytest.mark.parametrize("republish_s", [0.0, 300.0])
def test_a_blocked_gate_is_published_again_with_its_current_figures_every_republish_s(republish_s: float) -> None:
    """Issue 14.11: gate events went out only on a verdict change, so the figures `model status` shows could be
    hours old. With SHADOWGATE_GATE_REPUBLISH_S the decision goes out again, in event time, with today's figures."""
    store, key, last = _store(pairs=6000)  # ten minutes at 10 pairs/s
    ctx = _context(key, "SHADOW", START)
    evaluator = Evaluator(store, load_policy(None), MemoryEvaluatorStates(), lambda k, first: ctx,
                          republish_s=republish_s)
    gates: list[tuple[datetime, float | None]] = []
    for offset_s in (60, 200, 360, 420, 600):
        for event in evaluator.evaluate(key, START + timedelta(seconds=offset_s)):
            if isinstance(event, GateBlocked):
                samples = next(c for c in event.evidence.checks if c.name == "min_samples_met")
                gates.append((event.ts, samples.value))
    if not republish_s:
        assert [ts for ts, _ in gates] == [START + timedelta(seconds=60)]
        return
    assert [ts for ts, _ in gates] == [START + timedelta(seconds=s) for s in (60, 360)]
    # The figures are those of the window at its own time (the store holds the later minutes already; a window
    # reads whole minute slots, so it counts every pair of now's minute: 10 pairs/s up to its end).
    assert [value for _, value in gates] == [10 * ((s // 60 + 1) * 60) for s in (60, 360)]


def test_the_loop_signs_with_the_key_active_now_after_a_rotation_without_a_restart(tmp_path: Path) -> None:
    """Issue 12.6: a running worker kept signing with the key it loaded at start, so after `keys rotate` its
    events failed verification once the retired key's overlap ended. Given a LiveKeyring it follows the files."""
    from governance.crypto.keyring import Keyring
    from governance.crypto.live import LiveKeyring
    from governance.crypto.record import verify_record
    from governance.crypto.schedule import DEFAULT_SCHEDULE
    from governance.crypto.signing import Context
    from tests.governance_kit import gate_ready, make_keys

    keys_dir, tick = make_keys(tmp_path), [0.0]
    live = LiveKeyring(keys_dir, check_s=1.0, reload_s=300.0, monotonic=lambda: tick[0])
    store, _key, _last = _store()
    policy = load_policy(None)
    loop = EvaluationLoop(Evaluator(store, policy, MemoryEvaluatorStates(), lambda k, first: None), live, TOPICS,
                          lease_s=5.0, owner="w1")
    event = gate_ready(policy, "fraud", "1.0.0", "2.0.0", "SHADOW")
    before = orjson.loads(loop.sign(event))
    now = datetime.now(UTC)
    new, retired = Keyring(keys_dir).rotate(now)
    assert [k.key_id for k in retired] == [before["signature"]["key_id"]]
    tick[0] += 2.0  # past the check interval: the changed files are seen
    after = orjson.loads(loop.sign(event))
    assert after["signature"]["key_id"] == new.key_id
    trust = Keyring(keys_dir).trust_store()
    phase = DEFAULT_SCHEDULE.phase_at(now)
    for record in (before, after):  # both verify (the retired key signs nothing more after its rotation)
        assert verify_record(record, Context.EVENT, trust, now, phase)["event_id"] == str(event.event_id)
