"""Emit-on-change evaluation: gate decisions on verdict change, trigger firings once, alerts deduplicated."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.contract.comparison import WindowSnapshot
from governance.contract.events import (
    Alert,
    GateBlocked,
    GateReady,
    GovernanceEvent,
    RollbackTrigger,
    parse_event,
)
from governance.policy.document import Policy, load_policy
from governance.policy.evaluator import EvaluationContext, EvaluatorState, MinuteClose, evaluate, minutes_due
from tests.governance_factory import T0, key, policy_with, snapshot

POLICY = load_policy()
SHADOW = EvaluationContext(key=key(), stage="SHADOW", stage_started_at=T0, model_type="classification",
                           integrity_violations_7d=0, escalations_7d=0)
PER_DAY = 1500  # pairs per day of the generated shadow run


def stage_window(now: datetime, **metrics: float | None) -> WindowSnapshot:
    """The cumulative shadow window at ``now`` of a run with PER_DAY pairs a day, 30 % of them labelled."""
    pairs = int(PER_DAY * (now - T0).total_seconds() / 86400)
    values: dict[str, float | None] = {"sample_count": pairs, "label_count": int(pairs * 0.3), **metrics}
    return snapshot(window="stage", start=T0, end=now, metrics=values, n=min(pairs, 3000))


def short_windows(now: datetime, **metrics: float | None) -> dict[str, WindowSnapshot]:
    return {
        name: snapshot(window=name, start=now - span, end=now, metrics={"sample_count": 1200, **metrics},
                       with_statistics=False)
        for name, span in (("1m", timedelta(minutes=1)), ("1h", timedelta(hours=1)), ("1d", timedelta(days=1)))
    }


def replay(
    world: Callable[[datetime], Mapping[str, WindowSnapshot]],
    times: list[datetime],
    context: EvaluationContext = SHADOW,
    policy: Policy = POLICY,
    via_json: bool = False,
) -> list[GovernanceEvent]:
    state = EvaluatorState()
    events: list[GovernanceEvent] = []
    for now in times:
        state, emitted = evaluate(policy, world(now), context, state, now)
        if via_json:
            state = EvaluatorState.from_json(state.to_json())
        events.extend(emitted)
    return events


def every(step: timedelta, until: timedelta, start: datetime = T0) -> list[datetime]:
    count = int(until / step)
    return [start + i * step for i in range(count + 1)]


def summary(events: list[GovernanceEvent]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in events:
        detail = {
            "GateReady": lambda ev: (ev.gate,),
            "GateBlocked": lambda ev: (ev.verdict, tuple(c.name for c in ev.failing_checks)),
            "RollbackTrigger": lambda ev: (ev.trigger, ev.action, ev.from_version, ev.to_version),
            "Alert": lambda ev: (ev.dedup_key.rsplit("|", 1)[1], ev.severity),
            "RecalibrationRequested": lambda ev: (ev.calibration_drift,),
        }[e.type](e)
        out.append((e.ts - T0, e.type, *detail))
    return out


def test_a_passing_14_day_classification_shadow() -> None:
    events = replay(lambda now: {"stage": stage_window(now), **short_windows(now)}, every(timedelta(hours=6),
                                                                                            timedelta(days=14)))
    kinds = [(ts, kind) for ts, kind, *_ in summary(events)]
    # Blocked from the start (7 days not yet served), READY at exactly 7 days (10,500 >= 10,000 pairs), then silence.
    assert kinds == [(timedelta(0), "GateBlocked"), (timedelta(days=7), "GateReady")]
    blocked = events[0]
    assert isinstance(blocked, GateBlocked) and blocked.verdict == "BLOCKED"
    assert "min_duration_met" in [c.name for c in blocked.failing_checks]
    ready = events[1]
    assert isinstance(ready, GateReady) and ready.stage == "SHADOW" and ready.gate == "shadow_completion"
    assert ready.evidence.policy_hash == POLICY.hash()
    assert [s.test for s in ready.evidence.statistics] == ["ks_2samp", "paired_t", "mean_abs_delta_ci"]
    assert ready.evidence.windows[0].window == "stage"
    assert ready.evidence.windows[0].offsets == {"scores:0": 1234, "scores:1": 987}
    assert {c.name: c.outcome for c in ready.evidence.checks}["min_samples_met"] == "PASS"


def test_a_failing_14_day_classification_shadow() -> None:
    events = replay(lambda now: {"stage": stage_window(now, auc_roc=0.65), **short_windows(now)},
                    every(timedelta(hours=6), timedelta(days=14)))
    assert [(ts, kind) for ts, kind, *_ in summary(events)] == [(timedelta(0), "GateBlocked")]
    # On day 14 the only blocking reason left is the AUC: the evidence of a fresh evaluation says so.
    state, _ = evaluate(POLICY, {"stage": stage_window(T0 + timedelta(days=14), auc_roc=0.65)}, SHADOW,
                        EvaluatorState(), T0 + timedelta(days=14))
    assert state.verdict == "BLOCKED"


def test_gate_events_only_on_verdict_change() -> None:
    def world(now: datetime) -> dict[str, WindowSnapshot]:
        day = (now - T0).days
        return {"stage": stage_window(now, brier_score=0.2 if 9 <= day < 11 else 0.05)}

    events = replay(world, every(timedelta(days=1), timedelta(days=13)))
    assert [(ts.days, kind) for ts, kind, *_ in summary(events)] == [
        (0, "GateBlocked"), (7, "GateReady"), (9, "GateBlocked"), (11, "GateReady"),
    ]
    blocked = events[2]
    assert isinstance(blocked, GateBlocked)
    assert [c.name for c in blocked.failing_checks] == ["metrics_pass_gate", "metrics.brier_score"]


def test_missing_stage_window_is_inconclusive() -> None:
    events = replay(lambda now: short_windows(now), [T0, T0 + timedelta(seconds=1)])
    assert summary(events) == [(timedelta(0), "GateBlocked", "INCONCLUSIVE", ("window[stage]",))]


def test_error_spike_through_the_evaluator() -> None:
    start = T0 + timedelta(days=3)

    def world(spike_minutes: int) -> Callable[[datetime], dict[str, WindowSnapshot]]:
        def at(now: datetime) -> dict[str, WindowSnapshot]:
            minute = (now - start).total_seconds() / 60
            rate = 0.05 if 1 <= minute < 1 + spike_minutes else 0.0
            return {"stage": stage_window(now), **short_windows(now, error_rate=rate)}
        return at

    times = every(timedelta(seconds=10), timedelta(minutes=15), start)
    brief = [e for e in replay(world(3), times) if e.type != "GateBlocked"]
    assert brief == []
    sustained = [e for e in replay(world(6), times) if e.type != "GateBlocked"]
    assert summary(sustained) == [(timedelta(days=3, minutes=6), "RollbackTrigger", "error_rate", "immediate",
                                   "1.5.0", "1.4.0")]
    trigger = sustained[0]
    assert trigger.evidence.windows[0].window == "1m"
    assert trigger.evidence.checks[0].value == 0.05
    assert trigger.evidence.policy_hash == POLICY.hash()


def test_score_shift_alerts_and_asks_for_manual_review_once() -> None:
    def world(now: datetime) -> dict[str, WindowSnapshot]:
        return {"stage": stage_window(now), **short_windows(now, kl_divergence=0.3)}

    start = T0 + timedelta(days=8)
    events = replay(world, every(timedelta(minutes=1), timedelta(minutes=30), start))
    # One episode over 30 minutes: one manual-review trigger and one alert; the stage window itself (whole
    # shadow so far) is within limits, so the gate stays READY: the review is a person's call.
    assert [row[1:] for row in summary(events)] == [
        ("RollbackTrigger", "kl_divergence", "manual_review", "1.5.0", "1.4.0"),
        ("Alert", "kl_divergence", "warning"),
        ("GateReady", "shadow_completion"),
    ]
    assert all(e.ts == start for e in events)


def test_alert_dedup_suppresses_repeats_within_the_period() -> None:
    policy = policy_with(**{"triggers.rearm_s": 0})

    def world(now: datetime) -> dict[str, WindowSnapshot]:
        minute = int((now - T0).total_seconds() // 60)
        return short_windows(now, kl_divergence=0.3 if minute % 2 == 0 else 0.0)

    context = EvaluationContext(key=key("canary"), stage="STAGING", stage_started_at=T0, canary_share=0.05)
    events = replay(world, every(timedelta(minutes=1), timedelta(minutes=70)), context, policy)
    rollbacks = [e.ts - T0 for e in events if isinstance(e, RollbackTrigger)]
    alerts = [e.ts - T0 for e in events if isinstance(e, Alert)]
    assert len(rollbacks) == 36  # every breach episode (minutes 0, 2, ..., 70)
    assert alerts == [timedelta(0), timedelta(minutes=60)]  # dedup_s = 3600


def test_stale_source_alerts_and_pauses_promotion_without_rollback() -> None:
    now = T0 + timedelta(days=8)
    stale = now - timedelta(minutes=10)

    def world(at: datetime) -> dict[str, WindowSnapshot]:
        windows = {"stage": snapshot(window="stage", end=at, latest_event_ts=stale, n=3000),
                   **short_windows(at, error_rate=0.5, p99_latency_ms=5000.0)}
        return {name: snapshot(window=name, end=at, latest_event_ts=stale, metrics=dict(w.metrics),
                               with_statistics=name == "stage", n=3000) for name, w in windows.items()}

    events = replay(world, every(timedelta(minutes=1), timedelta(minutes=20), now))
    rows = summary(events)
    assert [r[1:3] for r in rows] == [("Alert", "source_unhealthy"), ("GateBlocked", "BLOCKED")]
    blocked = events[1]
    assert isinstance(blocked, GateBlocked)
    assert [c.name for c in blocked.failing_checks] == ["source_fresh"]


def test_production_monitoring_events() -> None:
    context = EvaluationContext(key=key(), stage="PRODUCTION", trained_at=T0 - timedelta(days=50), rollback_to="1.3.2")

    def world(now: datetime) -> dict[str, WindowSnapshot]:
        hour = int((now - T0).total_seconds() // 3600)
        windows = short_windows(now, production_calibration_slope=1.2 if hour >= 2 else 1.0,
                                production_p99_latency_ms=1500.0 if hour == 5 else 200.0,
                                production_p95_latency_ms=1500.0 if hour == 5 else 150.0)
        windows["1d"] = snapshot(window="1d", end=now, label_count=5000, production_calibration_slope=1.2
                                 if hour >= 2 else 1.0, with_statistics=False)
        return windows

    events = replay(world, every(timedelta(hours=1), timedelta(hours=8)), context)
    assert summary(events) == [
        (timedelta(hours=2), "RecalibrationRequested", 0.2),
        (timedelta(hours=5), "RollbackTrigger", "p99_latency_ms", "immediate", "1.4.0", "1.3.2"),
    ]
    aged = EvaluationContext(key=key(), stage="PRODUCTION", trained_at=T0 - timedelta(days=60))
    warned = replay(world, every(timedelta(hours=1), timedelta(hours=1)), aged)
    assert ("Alert", "production.staleness_warning_days", "warning") in [row[1:] for row in summary(warned)]


def test_replay_is_deterministic_and_state_survives_json() -> None:
    def world(now: datetime) -> dict[str, WindowSnapshot]:
        minute = (now - T0).total_seconds() / 60
        return {"stage": stage_window(now), **short_windows(now, error_rate=0.05 if 2 <= minute < 9 else 0.0,
                                                            kl_divergence=0.3 if minute >= 12 else 0.01)}

    times = every(timedelta(seconds=30), timedelta(minutes=20))
    first = replay(world, times)
    assert replay(world, times) == first
    assert replay(world, times, via_json=True) == first
    assert [e.ts for e in first] == sorted(e.ts for e in first)
    assert len({e.event_id for e in first}) == len(first)
    assert [parse_event(e.to_json()) for e in first] == first


def test_policy_change_reissues_the_decision_and_old_ticks_are_ignored() -> None:
    now = T0 + timedelta(days=8)
    world = {"stage": stage_window(now)}
    state, events = evaluate(POLICY, world, SHADOW, EvaluatorState(), now)
    assert [e.type for e in events] == ["GateReady"]
    assert evaluate(POLICY, world, SHADOW, state, now)[1] == []
    stricter = policy_with(**{"shadow.auc_roc.threshold": 0.5})
    _, reissued = evaluate(stricter, world, SHADOW, state, now)
    assert [e.type for e in reissued] == ["GateReady"]
    assert reissued[0].evidence.policy_hash == stricter.hash() != POLICY.hash()
    assert evaluate(POLICY, world, SHADOW, state, now - timedelta(seconds=1)) == (state, [])


def test_context_needs_the_stage_facts() -> None:
    with pytest.raises(ValueError, match="model_type"):
        EvaluationContext(key=key(), stage="SHADOW", stage_started_at=T0)
    with pytest.raises(ValueError, match="stage_started_at"):
        EvaluationContext(key=key("canary"), stage="STAGING")
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(POLICY, {}, SHADOW, EvaluatorState(), T0.replace(tzinfo=None))


# Minute closes (issue 14 point 4): the triggers judged in event time, the same events whatever the batching.

def minute_windows(end: datetime, rate: float, requests: int = 600) -> dict[str, WindowSnapshot]:
    """The trigger windows ending at ``end``: one minute of ``requests`` pairs at error ``rate``, quiet hour/day."""
    errors = round(rate * requests)
    return {
        "1m": snapshot(window="1m", start=end - timedelta(minutes=1), end=end, with_statistics=False,
                       metrics={"sample_count": requests, "error_rate": errors / requests,
                                "error_count": errors, "request_count": requests}),
        "1h": snapshot(window="1h", start=end - timedelta(hours=1), end=end, with_statistics=False),
        "1d": snapshot(window="1d", start=end - timedelta(days=1), end=end, with_statistics=False),
    }


def backlog_rates(minute: int) -> float:
    """2 healthy minutes, 6 minutes of half the requests failing, then healthy again."""
    return 0.5 if 2 <= minute < 8 else 0.001


def closes_until(now: datetime, state: EvaluatorState, first: datetime) -> list[MinuteClose]:
    return [MinuteClose(end, minute_windows(end, backlog_rates(int((end - first) / timedelta(minutes=1)) - 1)))
            for end in minutes_due(state, now, first)]


def trigger_events(events: list[GovernanceEvent]) -> list[tuple[Any, ...]]:
    return [(e.type, e.event_id, e.ts) for e in events if e.type in ("RollbackTrigger", "Alert")]


STAGING = EvaluationContext(key=key("canary"), stage="STAGING", stage_started_at=T0, canary_share=0.05)


def _run(first: datetime, evaluation_times: list[datetime]) -> list[GovernanceEvent]:
    state, out = EvaluatorState(), []
    for now in evaluation_times:
        closes = closes_until(now, state, first)
        state, events = evaluate(POLICY, minute_windows(now, 0.0), STAGING, state, now, closes)
        out += events
        state = EvaluatorState.from_json(state.to_json())
    return out


def test_a_backlog_fires_like_the_live_worker_with_the_same_event_ids() -> None:
    first = T0 + timedelta(days=4)
    end = first + timedelta(minutes=12, seconds=30)
    live = _run(first, [first + timedelta(seconds=s) for s in range(int((end - first).total_seconds()) + 1)])
    backlog = _run(first, [end])
    assert trigger_events(live) == trigger_events(backlog)
    (rollback,) = [e for e in live if isinstance(e, RollbackTrigger)]
    # Six failing minutes from minute 2: the fifth of them (minute 6) ends at first + 7 min.
    assert (rollback.trigger, rollback.ts) == ("error_rate", first + timedelta(minutes=7))
    assert rollback.evidence.windows[0].end == first + timedelta(minutes=7)
    # Without minute closes the backlog is judged once, at its end, on its last (healthy) minute: no rollback.
    state, events = evaluate(POLICY, minute_windows(end, 0.0), STAGING, EvaluatorState(), end)
    assert not [e for e in events if isinstance(e, RollbackTrigger)]


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, 14 * 60), max_size=12))
def test_any_batching_of_the_same_minutes_gives_the_same_trigger_events(cuts: list[int]) -> None:
    first = T0 + timedelta(days=4)
    times = [first + timedelta(seconds=s) for s in sorted(set(cuts))] + [first + timedelta(minutes=14)]
    reference = _run(first, [first + timedelta(minutes=14)])
    assert trigger_events(_run(first, times)) == trigger_events(reference)
    assert [e.type for e in reference if e.type == "RollbackTrigger"] == ["RollbackTrigger"]


def test_alert_dedup_is_judged_in_event_time_for_a_backlog_too() -> None:
    policy = policy_with(**{"triggers.rearm_s": 0})
    start = T0 + timedelta(days=2)

    def windows(end: datetime) -> dict[str, WindowSnapshot]:
        m = int((end - start) / timedelta(minutes=1))
        return {name: snapshot(window=name, end=end, with_statistics=False, kl_divergence_bias=0.0,
                               kl_divergence_se=0.01, kl_divergence=0.4 if m % 2 == 0 else 0.0)
                for name in ("1m", "1h", "1d")}

    def run(times: list[datetime]) -> list[GovernanceEvent]:
        state, out = EvaluatorState(), []
        for now in times:
            closes = [MinuteClose(end, windows(end)) for end in minutes_due(state, now, start)]
            state, events = evaluate(policy, windows(now), STAGING, state, now, closes)
            out += events
        return out

    end = start + timedelta(minutes=70)
    live = run([start + timedelta(minutes=m) for m in range(71)])
    alerts = [e.ts - start for e in live if isinstance(e, Alert)]
    assert alerts == [timedelta(minutes=2), timedelta(minutes=62)]  # dedup_s = 3600 of event time
    assert len([e for e in live if isinstance(e, RollbackTrigger)]) == 35
    batch = run([end])
    assert trigger_events(batch) == trigger_events(live)
