"""Slot arithmetic and window plans (streams.windows): pure, checked against independent oracles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.errors import ConfigError
from streams.state.windows import (
    DAY_S,
    HOUR_S,
    MINUTE_S,
    Granularity,
    Plan,
    Retention,
    Slot,
    named_window,
    plan,
    slots_for,
    to_epoch_s,
)

NOW_S = 1_767_225_600 + 13 * HOUR_S + 27 * MINUTE_S + 41  # 2026-01-01 13:27:41 UTC
STEP = {Granularity.MINUTE: 60, Granularity.HOUR: 3600, Granularity.DAY: 86400}

times = st.integers(min_value=NOW_S - 40 * DAY_S, max_value=NOW_S + DAY_S)
retentions = st.builds(
    lambda m, h, d: Retention(m, m + h, m + h + d),
    st.integers(1, 3 * DAY_S),
    st.integers(0, 20 * DAY_S),
    st.integers(0, 30 * DAY_S),
)


def _retained(slot: Slot, now_s: int, ret: Retention) -> bool:
    # Oracle written from the definition, not from Retention.expires_at_s.
    return now_s < slot.start_s + STEP[slot.granularity] + ret.of(slot.granularity)


def _assert_tiles(p: Plan) -> None:
    t = p.start_s
    for slot in p.slots:
        assert slot.start_s == t, f"gap or overlap at {t}: {slot}"
        assert slot.start_s % STEP[slot.granularity] == 0
        t = slot.start_s + STEP[slot.granularity]
    assert t == p.end_s


def _min_tiling(start: int, end: int, now_s: int, ret: Retention) -> int:
    # Dynamic programming over minute boundaries: fewest aligned, retained slots tiling [start, end).
    unreachable = 10**9
    n = (end - start) // MINUTE_S
    best = [0] + [unreachable] * n
    for i in range(1, n + 1):
        t_end = start + i * MINUTE_S
        for g, step in STEP.items():
            t0 = t_end - step
            if t0 >= start and t0 % step == 0 and _retained(Slot(g, t0), now_s, ret):
                best[i] = min(best[i], best[(t0 - start) // MINUTE_S] + 1)
    return best[n]


@st.composite
def cases(draw: st.DrawFn, max_length_s: int) -> tuple[int, int, int, Retention]:
    """(start_s, end_s, now_s, retention), often with the start near a retention horizon."""
    ret = draw(retentions)
    now = draw(times)
    horizon = draw(st.sampled_from([None, ret.minute_s, ret.hour_s, ret.day_s]))
    if horizon is None:
        back = draw(st.integers(-DAY_S, 40 * DAY_S))
    else:
        back = horizon + draw(st.integers(-2 * HOUR_S, 2 * HOUR_S))
    length = draw(st.one_of(st.integers(0, 2 * HOUR_S), st.integers(0, max_length_s)))
    return now - back, now - back + length, now, ret


@settings(max_examples=300, deadline=None)
@given(case=cases(20 * DAY_S))
def test_plan_tiles_the_rounded_range_with_retained_slots(case: tuple[int, int, int, Retention]) -> None:
    start, end, now, ret = case
    p = plan(start, end, now, ret)
    _assert_tiles(p)
    assert all(_retained(s, now, ret) for s in p.slots)
    req_start_m = start - start % MINUTE_S
    req_end_m = -(-end // MINUTE_S) * MINUTE_S
    if end > start and p.older_edge != "clipped":
        assert p.slots, "a range with retained data must plan slots"
    if p.slots:
        # The newer edge only ever moves outward; the older one too, unless clipped by day retention.
        assert p.end_s >= req_end_m
        if p.older_edge == "clipped":
            assert p.start_s > req_start_m
            assert not _retained(Slot(Granularity.DAY, p.start_s - DAY_S), now, ret)
        else:
            assert p.start_s <= req_start_m
    edge_step = {"exact": MINUTE_S, "hour": HOUR_S, "day": DAY_S}
    if p.slots and p.older_edge != "clipped":
        # Rounded to the coarsest needed grid, never further than one step of it.
        assert p.start_s == req_start_m - req_start_m % edge_step[p.older_edge]
    if p.slots:
        assert p.end_s == -(-req_end_m // edge_step[p.newer_edge]) * edge_step[p.newer_edge]


@settings(max_examples=150, deadline=None)
@given(case=cases(3 * DAY_S))
def test_plan_uses_the_fewest_slots(case: tuple[int, int, int, Retention]) -> None:
    start, end, now, ret = case
    p = plan(start, end, now, ret)
    if p.slots:
        assert len(p.slots) == _min_tiling(p.start_s, p.end_s, now, ret)


@settings(max_examples=120, deadline=None)
@given(case=cases(DAY_S))
def test_plan_covers_the_smallest_retained_superset(case: tuple[int, int, int, Retention]) -> None:
    # No range strictly inside the plan's, still covering the request, can be tiled by retained slots:
    # the plan rounded an edge only because retention forced it.
    start, end, now, ret = case
    p = plan(start, end, now, ret)
    if not p.slots or p.older_edge == "clipped":
        return
    s0, e0 = start - start % MINUTE_S, -(-end // MINUTE_S) * MINUTE_S
    starts = {s0 - s0 % step for step in (MINUTE_S, HOUR_S, DAY_S)}
    ends = {-(-e0 // step) * step for step in (MINUTE_S, HOUR_S, DAY_S)}
    for s in starts:
        for e in ends:
            if p.start_s <= s and e <= p.end_s and (s, e) != (p.start_s, p.end_s):
                assert _min_tiling(s, e, now, ret) >= 10**9, f"[{s}, {e}) was tileable"


def test_plan_of_named_windows_at_a_fixed_now() -> None:
    counts = {}
    for name in ("5m", "1h", "24h", "7d", "14d"):
        p = plan(*named_window(name, NOW_S), NOW_S)
        _assert_tiles(p)
        counts[name] = (len(p.slots), p.older_edge)
    # now = 13:27:41 -> windows end at 13:28. 5m: 13:23..13:27; 1h: 32 + 28 minutes;
    # 24h: 32 min + 10 h + 13 h + 28 min; 7d/14d: the older edge is past 26 h of minutes, so it is
    # rounded down to 13:00 and read as 11 hours + whole days + 13 h + 28 min.
    assert counts == {
        "5m": (5, "exact"),
        "1h": (60, "exact"),
        "24h": (83, "exact"),
        "7d": (11 + 6 + 13 + 28, "hour"),
        "14d": (11 + 13 + 13 + 28, "hour"),
    }


def test_plan_clips_beyond_day_retention_and_rounds_old_ranges() -> None:
    p = plan(NOW_S - 40 * DAY_S, NOW_S, NOW_S)
    assert p.older_edge == "clipped"
    assert p.slots[0] == Slot(Granularity.DAY, NOW_S - NOW_S % DAY_S - 35 * DAY_S)
    # Entirely older than the minute retention: both edges go to whole hours.
    old = plan(NOW_S - 30 * HOUR_S + 7 * MINUTE_S, NOW_S - 30 * HOUR_S + 9 * MINUTE_S, NOW_S)
    assert (old.older_edge, old.newer_edge) == ("hour", "hour")
    assert old.slots == (Slot(Granularity.HOUR, NOW_S - NOW_S % HOUR_S - 30 * HOUR_S),)
    # Entirely expired.
    gone = plan(NOW_S - 50 * DAY_S, NOW_S - 40 * DAY_S, NOW_S)
    assert gone.slots == () and gone.older_edge == "clipped"


def test_empty_and_inverted_ranges_plan_nothing() -> None:
    assert plan(NOW_S, NOW_S, NOW_S).slots == ()
    assert plan(NOW_S, NOW_S - 600, NOW_S).slots == ()


@given(ts=st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_slots_for_contains_the_event(ts: float) -> None:
    minute, hour, day = slots_for(ts)
    when = datetime.fromtimestamp(int(ts // 1), UTC)
    assert minute == Slot(Granularity.MINUTE, int(when.replace(second=0).timestamp()))
    assert hour == Slot(Granularity.HOUR, int(when.replace(minute=0, second=0).timestamp()))
    assert day == Slot(Granularity.DAY, int(when.replace(hour=0, minute=0, second=0).timestamp()))
    for s in (minute, hour, day):
        assert s.start_s <= ts < s.end_s


def test_a_named_window_at_a_whole_minute_includes_the_minute_it_opens() -> None:
    # Windows end at a comparison's newest event: one in the first second of a minute must be in them.
    minute = NOW_S - NOW_S % MINUTE_S
    assert named_window("5m", minute) == (minute + MINUTE_S - 300, minute + MINUTE_S)
    assert named_window("5m", minute) == named_window("5m", minute + 59)


def test_named_windows() -> None:
    end = NOW_S - NOW_S % MINUTE_S + MINUTE_S
    assert named_window("5m", NOW_S) == (end - 300, end)
    assert named_window("14d", NOW_S) == (end - 14 * DAY_S, end)
    since = datetime.fromtimestamp(NOW_S, UTC) - timedelta(days=3, seconds=5)
    assert named_window(f"since={since.isoformat()}", NOW_S) == (NOW_S - 3 * DAY_S - 5, end)
    assert named_window("since=2026-01-01T00:00:00Z", NOW_S)[0] == 1_767_225_600
    assert named_window("since=2026-01-01T01:00:00+01:00", NOW_S)[0] == 1_767_225_600
    for bad in ("2h", "since=yesterday", "since=2026-01-01T00:00:00", "since=2030-01-01T00:00:00Z"):
        with pytest.raises(ConfigError, match="window"):
            named_window(bad, NOW_S)


def test_to_epoch_s_refuses_naive() -> None:
    assert to_epoch_s(datetime(2026, 1, 1, tzinfo=UTC)) == 1_767_225_600
    with pytest.raises(ValueError, match="naive"):
        to_epoch_s(datetime(2026, 1, 1))  # noqa: DTZ001 - the naive datetime is the point of the test


@pytest.mark.parametrize(
    ("minute_s", "hour_s", "day_s"), [(0, 10, 10), (10, 5, 20), (10, 20, 15), (1.5, 20, 30), (True, 2, 3)]
)
def test_retention_refuses_bad_values(minute_s: int, hour_s: int, day_s: int) -> None:
    with pytest.raises(ConfigError, match="retention"):
        Retention(minute_s, hour_s, day_s)


def test_retention_defaults_and_expiry() -> None:
    ret = Retention()
    assert (ret.minute_s, ret.hour_s, ret.day_s) == (26 * HOUR_S, 15 * DAY_S, 35 * DAY_S)
    slot = Slot(Granularity.HOUR, 7200)
    assert ret.expires_at_s(slot) == 10800 + 15 * DAY_S
