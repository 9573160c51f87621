"""Rollback triggers: statistical decisions, sustained versus brief breaches, once per episode, re-arming,
stale sources, and the same rules stepped on minute closes of event time."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from governance.policy.bounds import kl_estimate
from governance.policy.document import Policy, load_policy
from governance.policy.triggers import (
    METRIC_TRIGGERS,
    MinuteClose,
    Observation,
    TriggerFiring,
    TriggerInputs,
    TriggerState,
    inputs_from_snapshots,
    latency_above_metric,
    minute_ends,
    step,
    step_minutes,
)
from streams.fold.aggregate import AggregateConfig, fold_labels, fold_pairs
from streams.fold.readout import metrics_from_fields
from tests.governance_factory import T0, policy_with, snapshot

POLICY = load_policy()
GOOD = {"error_rate": 0.0, "p99_latency_ms": 200.0, "kl_divergence": 0.01, "integrity_violations": 0.0,
        "calibration_slope": 1.0}
SE = 0.001  # the standard error given to KL and the slope in the state-machine tests: far below any margin


def observation(name: str, value: float | None, samples: int) -> Observation:
    if name == "p99_latency_ms":  # a P99 above the threshold: half the requests slow, shown with confidence
        slow = samples // 2 if value is not None and value > 1000 else 0
        return Observation(value, samples, "w", hits=slow, trials=samples)
    if name in ("kl_divergence", "calibration_slope"):
        return Observation(value, samples, "w", bias=0.0, se=SE)
    return Observation(value, samples, "w")


def inputs(at: datetime, samples: int = 10_000, stale_s: float = 0.0, **values: float | None) -> TriggerInputs:
    merged = {**GOOD, **values}
    return TriggerInputs({name: observation(name, merged[name], samples) for name in METRIC_TRIGGERS},
                         at - timedelta(seconds=stale_s))


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
    # The evidence states the bound that crossed: 500 errors of 10,000 requests at 99 %.
    assert firing.bound == pytest.approx(stats.beta.ppf(0.01, 500, 10_000 - 500 + 1))
    assert "99 % lower bound" in firing.reason and "500 of 10000" in firing.reason


def test_sustain_boundary_is_inclusive() -> None:
    # Breaching observations at 0 ... 300 s: held exactly 300 s, fires; 0 ... 290 s does not.
    assert [t for t, _ in drive(error_spike(0, 301), 600)] == [300]
    assert drive(error_spike(0, 291), 600) == []


# (trigger, at the threshold, beyond it but not shown with 99 % confidence, clearly beyond, action, alert):
# spec 8.1. "Not shown": 1.1 % errors of 1,000 requests (11 errors: the 99 % lower bound is 0.0048); a P99
# above 1 s with 11 slow requests of 1,000 (1.1 %); KL 0.252 with a standard error of 0.01; slope 0.59 / 1.41
# with a standard error of 0.05.
THRESHOLDS = [
    ("error_rate", Observation(0.01, 1000, "w", 10, 1000), Observation(0.011, 1000, "w", 11, 1000),
     Observation(0.05, 1000, "w", 50, 1000), "immediate", False),
    ("p99_latency_ms", Observation(1000.0, 1000, "w", 10, 1000), Observation(1500.0, 1000, "w", 11, 1000),
     Observation(1500.0, 1000, "w", 100, 1000), "immediate", False),
    ("kl_divergence", Observation(0.25, 5000, "w", bias=0.0, se=0.01),
     Observation(0.252, 5000, "w", bias=0.0, se=0.01), Observation(0.4, 5000, "w", bias=0.0, se=0.01),
     "manual_review", True),
    ("integrity_violations", Observation(100.0), Observation(101.0), Observation(101.0), "immediate", False),
    ("calibration_slope", Observation(0.6, 3000, "w", se=0.05), Observation(0.59, 3000, "w", se=0.05),
     Observation(0.3, 3000, "w", se=0.05), "scheduled", True),
    ("calibration_slope", Observation(1.4, 3000, "w", se=0.05), Observation(1.41, 3000, "w", se=0.05),
     Observation(1.9, 3000, "w", se=0.05), "scheduled", True),
]


@pytest.mark.parametrize(("trigger", "at", "unshown", "clear", "action", "alert"), THRESHOLDS)
def test_a_trigger_fires_only_when_the_data_show_the_crossing(
    trigger: str, at: Observation, unshown: Observation, clear: Observation, action: str, alert: bool
) -> None:
    def with_(obs: Observation) -> Callable[[int, datetime], TriggerInputs]:
        return lambda t, now: TriggerInputs({**inputs(now).observations, trigger: obs}, now)

    assert drive(with_(at), 900) == []
    # The integrity count is exact: 101 > 100 is shown by the count itself.
    assert (drive(with_(unshown), 900) == []) == (trigger != "integrity_violations")
    fired = drive(with_(clear), 900)
    sustain = 300 if trigger == "error_rate" else 0
    assert [(t, f.trigger, f.action, f.alert) for t, f in fired] == [(sustain, trigger, action, alert)]


@settings(max_examples=200, deadline=None)
@given(trials=st.integers(1, 3000), share=st.floats(0.0, 0.2), confidence=st.sampled_from([0.9, 0.95, 0.99]))
def test_a_rate_trigger_fires_exactly_when_the_exact_binomial_test_rejects(
    trials: int, share: float, confidence: float
) -> None:
    """Oracle: scipy's one-sided exact binomial test of 'error rate <= 1 %' at level 1 - confidence."""
    policy = policy_with(**{"triggers.error_rate.sustain_s": 0, "triggers.confidence": confidence})
    errors = round(share * trials)
    obs = Observation(errors / trials, trials, "1m", errors, trials)
    _, fired = step(policy, TriggerState(), TriggerInputs({"error_rate": obs}, T0), T0)
    p_value = stats.binomtest(errors, trials, 0.01, alternative="greater").pvalue
    if abs(p_value - (1 - confidence)) > 1e-9:
        assert bool(fired) == (errors / trials > 0.01 and p_value < 1 - confidence), (errors, trials, p_value)


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


def test_no_data_cancels_a_pending_breach_a_thin_window_that_still_breaches_does_not() -> None:
    def gappy(t: int, now: datetime) -> TriggerInputs:
        return inputs(now, error_rate=None if t == 250 else 0.05 if t <= 500 else 0.0)

    assert drive(gappy, 1200) == []
    # The same breach without the gap fires.
    assert [t for t, _ in drive(lambda t, now: inputs(now, error_rate=0.05 if t <= 500 else 0.0), 1200)] == [300]

    # 20 requests with 1 error (5 %) is beyond 1 % but shows nothing at 99 %: the breach holds, and fires at
    # the 5-minute mark on the well-measured observation that follows.
    def thin(t: int, now: datetime) -> TriggerInputs:
        return inputs(now, samples=20 if t == 250 else 10_000, error_rate=0.05 if t <= 500 else 0.0)

    assert [t for t, _ in drive(thin, 1200)] == [300]


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


# Issue 14 point 3: the volume floors (50 pairs, 1,000 for KL, 500 labels) hid flagrant breaches.

def _minute_window(now: datetime, **metrics: float | None) -> dict[str, object]:
    return {"1m": snapshot(window="1m", start=now - timedelta(minutes=1), end=now, metrics=metrics,
                           with_statistics=False)}


def test_half_the_requests_failing_at_40_pairs_a_minute_fires_at_five_minutes() -> None:
    def world(t: int, now: datetime) -> TriggerInputs:
        return inputs_from_snapshots(POLICY, _minute_window(now, sample_count=40, error_rate=0.5))  # type: ignore[arg-type]

    fired = drive(world, 600)
    assert [(t, f.trigger) for t, f in fired] == [(300, "error_rate")]
    assert "20 of 40" in fired[0][1].reason  # error_rate x pairs: no orphan counted, so conservative


def test_a_p99_of_5000_ms_at_30_pairs_a_minute_fires_a_borderline_one_waits() -> None:
    slow = latency_above_metric(1000)
    flagrant = _minute_window(T0, sample_count=30, p95_latency_ms=5000.0, p99_latency_ms=5000.0,
                              latency_count=30, **{slow: 3})
    _, fired = step(POLICY, TriggerState(), flagrant, T0)  # type: ignore[arg-type]
    assert [f.trigger for f in fired] == ["p99_latency_ms"]
    assert "3 of 30" in fired[0].reason
    # The same P99 from a single slow request of 30: beyond 1 s by the point estimate, not shown at 99 %.
    borderline = _minute_window(T0, sample_count=30, p99_latency_ms=5000.0, latency_count=30, **{slow: 1})
    assert step(POLICY, TriggerState(), borderline, T0)[1] == []  # type: ignore[arg-type]
    # Without the exact counts (a worker that does not report them) a model slow on every request still fires.
    every = _minute_window(T0, sample_count=30, p50_latency_ms=5000.0, p95_latency_ms=5000.0, p99_latency_ms=5000.0)
    assert [f.trigger for f in step(POLICY, TriggerState(), every, T0)[1]] == ["p99_latency_ms"]  # type: ignore[arg-type]


def test_a_score_shift_to_kl_half_at_900_pairs_an_hour_fires() -> None:
    rng = np.random.default_rng(4)
    edges = np.linspace(0.0, 1.0, 21)
    prod = np.histogram(rng.beta(2.0, 5.0, 900), edges)[0]
    cand = np.histogram(rng.beta(4.0, 5.0, 900), edges)[0]
    estimate = kl_estimate(cand, prod)
    assert estimate is not None and estimate.value > 0.4
    hour = {"1h": snapshot(window="1h", start=T0 - timedelta(hours=1), end=T0, sample_count=900,
                           kl_divergence=estimate.value, kl_divergence_bias=estimate.bias,
                           kl_divergence_se=estimate.se, with_statistics=False)}
    fired = step(POLICY, TriggerState(), hour, T0)[1]
    assert [(f.trigger, f.action) for f in fired] == [("kl_divergence", "manual_review")]
    assert fired[0].bound is not None and fired[0].bound > 0.25


def test_a_badly_miscalibrated_model_fires_on_200_labels() -> None:
    day = {"1d": snapshot(window="1d", start=T0 - timedelta(days=1), end=T0, label_count=200,
                          calibration_slope=0.3, calibration_slope_se=0.08, with_statistics=False)}
    fired = step(POLICY, TriggerState(), day, T0)[1]
    assert [(f.trigger, f.action) for f in fired] == [("calibration_slope", "scheduled")]
    # Without a standard error the fallback waits for triggers.fallback.min_labels labels.
    bare = {"1d": snapshot(window="1d", start=T0 - timedelta(days=1), end=T0, label_count=200,
                           calibration_slope=0.3, with_statistics=False)}
    assert step(POLICY, TriggerState(), bare, T0)[1] == []


def test_inputs_from_snapshots_pick_each_trigger_window_side_and_bound_inputs() -> None:
    now = T0 + timedelta(days=15)
    minute = snapshot(window="1m", error_rate=0.02, production_error_rate=0.0, p99_latency_ms=1200.0,
                      p95_latency_ms=1500.0, production_error_count=0, production_request_count=30_500)
    hour = snapshot(window="1h", kl_divergence=0.3, integrity_violations=150, latest_event_ts=now - timedelta(hours=2),
                    kl_divergence_bias=0.001, kl_divergence_se=0.01)
    day = snapshot(window="1d", calibration_slope=1.5, label_count=150)
    picked = inputs_from_snapshots(POLICY, {"1m": minute, "1h": hour, "1d": day})
    obs = picked.observations
    assert obs["error_rate"] == Observation(0.02, 30_000, "1m", 600, 30_000,
                                            basis="error_rate x pairs (orphans left out: conservative)")
    # P95 above 1 s: at least the requests from rank ceil(29,999 x 0.95) up are slower.
    assert (obs["p99_latency_ms"].hits, obs["p99_latency_ms"].trials) == (30_000 - math.ceil(29_999 * 0.95), 30_000)
    assert obs["kl_divergence"] == Observation(0.3, 30_000, "1h", bias=0.001, se=0.01)
    assert obs["integrity_violations"] == Observation(150, None, "1h", basis="exact count")
    assert obs["calibration_slope"] == Observation(1.5, 150, "1d", se=None)
    assert picked.latest_event_ts == now
    production = inputs_from_snapshots(POLICY, {"1m": minute}, side="production")
    assert (production.observations["error_rate"].hits, production.observations["error_rate"].trials) == (0, 30_500)
    assert production.observations["error_rate"].basis == "exact counts"
    assert set(production.observations) == {"error_rate", "p99_latency_ms"}
    # 150 labels and no standard error: the calibration trigger cannot judge; the others fire at once.
    _, fired = step(POLICY, TriggerState(), {"1m": minute, "1h": hour, "1d": day}, now)
    assert [f.trigger for f in fired] == ["p99_latency_ms", "kl_divergence", "integrity_violations"]


def test_the_fallback_label_minimum_keeps_chance_calibration_breaches_rare() -> None:
    """Without a standard error the slope is judged on triggers.fallback.min_labels labels: a calibrated
    model (labels drawn from its own scores) must rarely breach the band there. Same fold and readout."""
    policy = load_policy(None)
    trigger = policy.triggers.calibration_slope
    n, runs = policy.triggers.fallback.min_labels, 1000
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


def test_kl_without_a_standard_error_waits_for_the_fallback_pairs() -> None:
    need = POLICY.triggers.fallback.min_pairs

    def shifted(samples: int, se: float | None) -> list[str]:
        obs = Observation(0.3, samples, "1h", bias=0.0 if se else None, se=se)
        return [f.trigger for f in step(POLICY, TriggerState(), TriggerInputs({"kl_divergence": obs}, T0), T0)[1]]

    assert shifted(need - 1, None) == []
    assert shifted(need, None) == ["kl_divergence"]
    assert shifted(200, 0.01) == ["kl_divergence"]  # with an interval there is no floor


def test_the_kl_fallback_minimum_keeps_chance_divergence_rare() -> None:
    """Two samples of the same scores (plus the shadow's small noise), through the worker's fold and readout."""
    policy = load_policy(None)
    n = policy.triggers.fallback.min_pairs
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
    minute = snapshot(window="1m", error_rate=0.2, p99_latency_ms=5000.0, p50_latency_ms=5000.0, exact=False)
    hour = snapshot(window="1h", kl_divergence=0.3, latest_event_ts=now)
    picked = inputs_from_snapshots(POLICY, {"1m": minute, "1h": hour})
    assert "error_rate" not in picked.observations and "p99_latency_ms" not in picked.observations
    assert picked.observations["kl_divergence"].value == 0.3
    _, fired = step(POLICY, TriggerState(), {"1m": minute, "1h": hour}, now)
    assert [f.trigger for f in fired] == ["kl_divergence"]


# Minute closes: the event-time form (issue 14 point 4).

M0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def minute(i: int, **values: Observation) -> MinuteClose:
    """The close of minute ``i`` (ending at M0 + i min) with the given observations (the rest healthy)."""
    end = M0 + timedelta(minutes=i)
    base = {name: observation(name, GOOD[name], 1000) for name in METRIC_TRIGGERS}
    return MinuteClose(end, TriggerInputs({**base, **values}, end))


def rate(errors: int, requests: int) -> Observation:
    return Observation(errors / requests, requests, "1m", errors, requests)


def run_minutes(closes: list[MinuteClose], policy: Policy = POLICY, state: TriggerState | None = None
                ) -> tuple[TriggerState, list[TriggerFiring]]:
    state = state or TriggerState()
    now = max(c.end for c in closes)
    return step_minutes(policy, state, closes, TriggerInputs({}, now), now)


def test_sustain_is_counted_in_whole_minutes_of_event_time() -> None:
    five = [minute(i, error_rate=rate(50, 1000)) for i in range(1, 6)]
    state, fired = run_minutes(five)
    assert [(f.trigger, f.fired_at, f.breach_started_at) for f in fired] == [
        ("error_rate", M0 + timedelta(minutes=5), M0)]
    assert "pooled over 5 min" in fired[0].reason and "250 of 5000" in fired[0].reason
    assert state.last_minute == M0 + timedelta(minutes=5)
    assert run_minutes(five[:4])[1] == []
    # A healthy minute or a minute without a request breaks the run: minutes 1-3 and 5-8 never make five.
    for gap in (rate(0, 1000), Observation(None, 0, "1m", 0, 0)):
        broken = [minute(i, error_rate=gap if i == 4 else rate(50, 1000)) for i in range(1, 9)]
        assert run_minutes(broken)[1] == []
        assert [f.fired_at for f in run_minutes(broken + [minute(9, error_rate=rate(50, 1000))])[1]] == [
            M0 + timedelta(minutes=9)]


def test_pooled_minutes_show_what_no_single_minute_can() -> None:
    """2.5 % errors at 200 requests a minute: 5 of 200 shows nothing at 99 % (bound 0.0058), the five
    minutes pooled (25 of 1,000, bound 0.0146) do."""
    minutes = [minute(i, error_rate=rate(5, 200)) for i in range(1, 6)]
    assert [f.trigger for f in run_minutes(minutes)[1]] == ["error_rate"]
    one_minute = policy_with(**{"triggers.error_rate.sustain_s": 0})
    assert run_minutes(minutes, one_minute)[1] == []


def test_closes_already_stepped_or_after_now_are_ignored_and_gaps_break_runs() -> None:
    state, _ = run_minutes([minute(i, error_rate=rate(50, 1000)) for i in range(1, 4)])
    # Minutes 2-3 again change nothing; minutes 4-5 complete the run of five.
    again = [minute(i, error_rate=rate(50, 1000)) for i in range(2, 6)]
    assert [f.fired_at for f in run_minutes(again, state=state)[1]] == [M0 + timedelta(minutes=5)]
    # A close missing from the sequence (minute 4) is a minute nobody judged: the run restarts.
    skipped = [minute(i, error_rate=rate(50, 1000)) for i in (5, 6, 7, 8)]
    assert run_minutes(skipped, state=state)[1] == []
    future = minute(10, error_rate=rate(500, 1000))
    nine = M0 + timedelta(minutes=9)
    state2, fired = step_minutes(POLICY, TriggerState(), [future], TriggerInputs({}, nine), nine)
    assert (fired, state2.last_minute) == ([], None)
    with pytest.raises(ValueError, match="whole minute"):
        run_minutes([MinuteClose(M0 + timedelta(seconds=30), TriggerInputs({}, M0))])


def test_minute_state_round_trips_through_json() -> None:
    state, _ = run_minutes([minute(i, error_rate=rate(50, 1000)) for i in range(1, 4)])
    assert state.episode("error_rate").pool == [(50, 1000)] * 3
    assert TriggerState.from_json(state.to_json()) == state


def test_minute_ends_lists_the_closed_minutes_due() -> None:
    now = M0 + timedelta(minutes=3, seconds=20)
    assert minute_ends(TriggerState(), now) == [M0 + timedelta(minutes=3)]
    assert minute_ends(TriggerState(), now, first_event=M0 + timedelta(seconds=5)) == [
        M0 + timedelta(minutes=i) for i in (1, 2, 3)]
    stepped = TriggerState(last_minute=M0 + timedelta(minutes=2))
    assert minute_ends(stepped, now) == [M0 + timedelta(minutes=3)]
    assert minute_ends(stepped, M0 + timedelta(minutes=2, seconds=59)) == []
    assert minute_ends(TriggerState(), now, first_event=M0 - timedelta(days=3), limit=2) == [
        M0 + timedelta(minutes=2), M0 + timedelta(minutes=3)]
