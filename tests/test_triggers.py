"""Rollback triggers: sustained versus brief breaches, once per episode, recovery and re-arming, stale sources."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.policy.document import Policy, load_policy
from governance.policy.triggers import (
    METRIC_TRIGGERS,
    Observation,
    TriggerFiring,
    TriggerInputs,
    TriggerState,
    inputs_from_snapshots,
    step,
)
from streams.fold.aggregate import AggregateConfig, fold_labels, fold_pairs
from streams.fold.readout import metrics_from_fields
from tests.governance_factory import T0, policy_with, snapshot

POLICY = load_policy()
GOOD = {"error_rate": 0.0, "p99_latency_ms": 200.0, "kl_divergence": 0.01, "integrity_violations": 0.0,
        "calibration_slope": 1.0}


def inputs(at: datetime, samples: int = 10_000, stale_s: float = 0.0, **values: float | None) -> TriggerInputs:
    merged = {**GOOD, **values}
    return TriggerInputs(
        {name: Observation(merged[name], samples, "w") for name in METRIC_TRIGGERS},
        at - timedelta(seconds=stale_s),
    )


def drive(scenario: Callable[[int, datetime], TriggerInputs], seconds: int, policy: Policy = POLICY,
          cadence_s: int = 10, via_json: bool = False) -> list[tuple[int, TriggerFiring]]:
    """Step every ``cadence_s`` seconds of event time from T0; returns (offset_s, firing) pairs."""
    state = TriggerState()
    fired: list[tuple[int, TriggerFiring]] = []
    for t in range(0, seconds + 1, cadence_s):
        now = T0 + timedelta(seconds=t)
        state, firings = step(policy, state, scenario(t, now), now)
        if via_json:
            state = TriggerState.from_json(state.to_json())
        fired.extend((t, f) for f in firings)
    return fired


def error_spike(start_s: int, end_s: int, rate: float = 0.05) -> Callable[[int, datetime], TriggerInputs]:
    return lambda t, now: inputs(now, error_rate=rate if start_s <= t < end_s else 0.0)


def test_three_minute_error_spike_does_not_fire() -> None:
    assert drive(error_spike(60, 240), 1800) == []


def test_six_minute_error_spike_fires_exactly_once_at_five_minutes() -> None:
    fired = drive(error_spike(60, 420), 1800)
    assert [(t, f.trigger, f.action) for t, f in fired] == [(360, "error_rate", "immediate")]
    firing = fired[0][1]
    assert firing.breach_started_at == T0 + timedelta(seconds=60)
    assert (firing.value, firing.threshold, firing.comparator) == (0.05, 0.01, ">")
    assert "for 300 s" in firing.reason


def test_sustain_boundary_is_inclusive() -> None:
    # Breaching observations at 0 ... 300 s: held exactly 300 s, fires; 0 ... 290 s does not.
    assert [t for t, _ in drive(error_spike(0, 301), 600)] == [300]
    assert drive(error_spike(0, 291), 600) == []


# (trigger, value at the threshold, just above / outside, action, alert): spec 8.1.
BOUNDARIES = [
    ("error_rate", 0.01, math.nextafter(0.01, 1.0), "immediate", False),
    ("p99_latency_ms", 1000.0, math.nextafter(1000.0, 2000.0), "immediate", False),
    ("kl_divergence", 0.25, math.nextafter(0.25, 1.0), "manual_review", True),
    ("integrity_violations", 100.0, 101.0, "immediate", False),
    ("calibration_slope", 0.6, math.nextafter(0.6, 0.0), "scheduled", True),
    ("calibration_slope", 1.4, math.nextafter(1.4, 2.0), "scheduled", True),
]


@pytest.mark.parametrize(("trigger", "at", "beyond", "action", "alert"), BOUNDARIES)
def test_trigger_thresholds(trigger: str, at: float, beyond: float, action: str, alert: bool) -> None:
    assert drive(lambda t, now: inputs(now, **{trigger: at}), 900) == []
    fired = drive(lambda t, now: inputs(now, **{trigger: beyond}), 900)
    sustain = 300 if trigger == "error_rate" else 0
    assert [(t, f.trigger, f.action, f.alert) for t, f in fired] == [(sustain, trigger, action, alert)]


def test_fired_trigger_rearms_only_after_recovering_for_the_rearm_period() -> None:
    rearm = POLICY.triggers.rearm_s  # 900 s by default

    def latency(t: int, now: datetime) -> TriggerInputs:
        breach = t == 0 or t == 500 or t >= 500 + 10 + rearm + 100
        return inputs(now, p99_latency_ms=1500.0 if breach else 200.0)

    # Fires at 0; the breach at 500 s comes during recovery (no second firing); after 900 s of recovery
    # from 510 s the trigger re-arms and the breach at 1510 s fires again.
    assert [t for t, _ in drive(latency, 2000)] == [0, 1510]


def test_rearm_period_is_configurable() -> None:
    policy = policy_with(**{"triggers.rearm_s": 60})

    def flapping(t: int, now: datetime) -> TriggerInputs:
        return inputs(now, p99_latency_ms=1500.0 if (t // 100) % 2 == 0 else 200.0)

    # Breach 0-90, ok 100-190 (recovered 90 s >= 60), breach 200-290 ... fires at every breach start.
    assert [t for t, _ in drive(flapping, 590, policy)] == [0, 200, 400]
    assert [t for t, _ in drive(flapping, 590)] == [0]


def test_unknown_data_cancels_a_pending_breach() -> None:
    def gappy(t: int, now: datetime) -> TriggerInputs:
        if t == 250:
            return inputs(now, samples=10, error_rate=0.05)  # too few requests to judge
        return inputs(now, error_rate=0.05 if t <= 500 else 0.0)

    assert drive(gappy, 1200) == []
    # The same breach without the gap fires.
    assert [t for t, _ in drive(lambda t, now: inputs(now, error_rate=0.05 if t <= 500 else 0.0), 1200)] == [300]


def test_unknown_data_restarts_recovery() -> None:
    def scenario(t: int, now: datetime) -> TriggerInputs:
        if t == 0 or t >= 1500:
            return inputs(now, p99_latency_ms=1500.0)
        if t == 800:
            return inputs(now, p99_latency_ms=None)
        return inputs(now)

    # Recovery 10-790 is cut at 800; from 810 it needs until 1710, so the breach at 1500 does not fire.
    assert [t for t, _ in drive(scenario, 1700)] == [0]


def test_stale_source_alerts_once_and_never_rolls_back() -> None:
    def stale(t: int, now: datetime) -> TriggerInputs:
        return inputs(now, stale_s=301 if t < 1200 else 0, error_rate=0.2, p99_latency_ms=5000.0)

    fired = drive(stale, 1190)
    assert [(t, f.trigger, f.action, f.alert) for t, f in fired] == [(0, "source_unhealthy", None, True)]
    assert "SOURCE_UNHEALTHY" in fired[0][1].reason
    # Once fresh again, the real breaches are judged (latency immediately, error rate after 5 minutes).
    resumed = drive(stale, 1600)
    assert [(t, f.trigger) for t, f in resumed] == [(0, "source_unhealthy"), (1200, "p99_latency_ms"),
                                                    (1500, "error_rate")]


def test_staleness_boundary_and_no_events() -> None:
    assert drive(lambda t, now: inputs(now, stale_s=300), 60) == []
    assert [f.trigger for _, f in drive(lambda t, now: inputs(now, stale_s=300.001), 60)] == ["source_unhealthy"]
    none = TriggerInputs({}, None)
    _, fired = step(POLICY, TriggerState(), none, T0)
    assert [(f.trigger, f.value) for f in fired] == [("source_unhealthy", None)]


def test_time_going_backwards_changes_nothing_and_repeats_are_idempotent() -> None:
    state, fired = step(POLICY, TriggerState(), inputs(T0, p99_latency_ms=2000.0), T0)
    assert len(fired) == 1
    again, fired_again = step(POLICY, state, inputs(T0, p99_latency_ms=2000.0), T0)
    assert (again, fired_again) == (state, [])
    earlier = T0 - timedelta(seconds=1)
    assert step(POLICY, state, inputs(earlier, p99_latency_ms=2000.0), earlier) == (state, [])
    with pytest.raises(ValueError, match="timezone-aware"):
        step(POLICY, state, inputs(T0), T0.replace(tzinfo=None))


def _oracle(signals: list[str], cadence: int, sustain: int, rearm: int) -> list[int]:
    """Run-length formulation of the trigger rules, written independently of the state machine."""
    fired, armed, kind, run_start = [], True, None, 0
    for i, signal in enumerate(signals):
        t = i * cadence
        if signal != kind:
            kind, run_start = signal, t
        if signal == "breach" and armed and t - run_start >= sustain:
            fired.append(t)
            armed = False
        elif signal == "ok" and not armed and t - run_start >= rearm:
            armed = True
    return fired


@settings(max_examples=60, deadline=None)
@given(signals=st.lists(st.sampled_from(["breach", "ok", "unknown"]), min_size=1, max_size=80),
       sustain=st.sampled_from([0, 10, 30, 60]), rearm=st.sampled_from([0, 20, 50]))
def test_firings_match_the_run_length_oracle(signals: list[str], sustain: int, rearm: int) -> None:
    policy = policy_with(**{"triggers.error_rate.sustain_s": sustain, "triggers.rearm_s": rearm})
    value = {"breach": 0.5, "ok": 0.0, "unknown": None}

    def scenario(t: int, now: datetime) -> TriggerInputs:
        return inputs(now, error_rate=value[signals[t // 10]])

    seconds = (len(signals) - 1) * 10
    in_memory = drive(scenario, seconds, policy)
    assert [t for t, _ in in_memory] == _oracle(signals, 10, sustain, rearm)
    assert drive(scenario, seconds, policy, via_json=True) == in_memory


def test_inputs_from_snapshots_pick_each_trigger_window_and_side() -> None:
    now = T0 + timedelta(days=15)
    minute = snapshot(window="1m", error_rate=0.02, production_error_rate=0.0, p99_latency_ms=1200.0)
    hour = snapshot(window="1h", kl_divergence=0.3, integrity_violations=150, latest_event_ts=now - timedelta(hours=2))
    day = snapshot(window="1d", calibration_slope=1.5, label_count=150)
    picked = inputs_from_snapshots(POLICY, {"1m": minute, "1h": hour, "1d": day})
    obs = picked.observations
    assert obs["error_rate"] == Observation(0.02, 30_000, "1m")
    assert obs["kl_divergence"] == Observation(0.3, 30_000, "1h")
    assert obs["integrity_violations"] == Observation(150, None, "1h")
    assert obs["calibration_slope"] == Observation(1.5, 150, "1d")
    assert picked.latest_event_ts == now
    production = inputs_from_snapshots(POLICY, {"1m": minute}, side="production")
    assert production.observations["error_rate"].value == 0.0
    assert set(production.observations) == {"error_rate", "p99_latency_ms"}
    # 150 labels < 200 required: the calibration trigger cannot judge; the others fire at once.
    _, fired = step(POLICY, TriggerState(), {"1m": minute, "1h": hour, "1d": day}, now)
    assert [f.trigger for f in fired] == ["p99_latency_ms", "kl_divergence", "integrity_violations"]


def test_the_shipped_label_minimum_keeps_chance_calibration_breaches_rare() -> None:
    """A calibrated model (labels drawn from its own scores) must rarely breach the calibration band at
    the fewest labels the trigger judges: the slope comes from the same fold and readout as the worker's."""
    policy = load_policy(None)
    trigger = policy.triggers.calibration_slope
    n, runs = policy.triggers.min_labels, 1000
    rng = np.random.default_rng(2026)
    config = AggregateConfig()
    breaches = 0
    for _ in range(runs):
        scores = rng.beta(2.0, 5.0, n)
        labels = (rng.random(n) < scores).astype(np.int8)
        metrics, _ = metrics_from_fields(fold_labels(scores, scores, labels, config), config)
        slope = metrics["calibration_slope"]
        assert slope is not None
        breaches += not trigger.low <= slope <= trigger.high
    # About 0.6 % (6 of 1000) at 500 labels; 20 is far in the tail of that, and 200 labels give about 90.
    assert breaches <= 20, f"{breaches} of {runs} calibrated {n}-label windows breach [{trigger.low}, {trigger.high}]"


def test_kl_waits_for_the_pairs_a_divergence_check_needs() -> None:
    """KL on few pairs is large by chance (two samples of the same scores: > 0.25 in 39 % of 50-pair
    windows), so the KL trigger needs ``conclusive.min_pairs`` pairs; the latency trigger does not."""
    need = POLICY.conclusive.min_pairs
    assert need > POLICY.triggers.min_samples

    def shifted(samples: int) -> list[str]:
        scenario = lambda t, now: inputs(now, samples=samples, kl_divergence=0.3)  # noqa: E731
        return [f.trigger for _, f in drive(scenario, 0)]

    assert shifted(need - 1) == []
    assert shifted(need) == ["kl_divergence"]
    slow = drive(lambda t, now: inputs(now, samples=POLICY.triggers.min_samples, p99_latency_ms=5000.0), 0)
    assert [f.trigger for _, f in slow] == ["p99_latency_ms"]


def test_the_kl_minimum_keeps_chance_divergence_rare() -> None:
    """Two samples of the same scores (plus the shadow's small noise), through the worker's fold and readout."""
    policy = load_policy(None)
    n = max(policy.triggers.min_samples, policy.conclusive.min_pairs)
    rng = np.random.default_rng(11)
    config = AggregateConfig()
    zeros = np.zeros(n)
    breaches = 0
    for _ in range(300):
        prod = rng.beta(2.0, 5.0, n)
        cand = np.clip(prod + rng.normal(0.0, 0.03, n), 0.0, 1.0)
        fields = fold_pairs(prod, cand, zeros + 20.0, zeros + 25.0, zeros.astype(bool), zeros.astype(bool),
                            config=config)
        metrics, _ = metrics_from_fields(fields, config, full=False)
        breaches += metrics["kl_divergence"] > policy.triggers.kl_divergence.threshold
    assert breaches == 0  # the 99th percentile at 1,000 pairs is about 0.02


def test_a_window_answered_with_rounded_edges_is_not_judged() -> None:
    # A comparison idle for more than a day: its 1 m window can only be read from whole hours, which is not
    # the policy's measurement. Its triggers see unknown; exact windows are judged as before.
    now = T0 + timedelta(days=15)
    minute = snapshot(window="1m", error_rate=0.2, p99_latency_ms=5000.0, exact=False)
    hour = snapshot(window="1h", kl_divergence=0.3, latest_event_ts=now)
    picked = inputs_from_snapshots(POLICY, {"1m": minute, "1h": hour})
    assert "error_rate" not in picked.observations and "p99_latency_ms" not in picked.observations
    assert picked.observations["kl_divergence"].value == 0.3
    _, fired = step(POLICY, TriggerState(), {"1m": minute, "1h": hour}, now)
    assert [f.trigger for f in fired] == ["kl_divergence"]
