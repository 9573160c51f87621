"""Automatic rollback triggers (spec 8.1): statistical decisions, sustained in event time, once per episode.

**What one observation says.** Each trigger reads one window (its policy ``window``) and classifies it:

* ``unknown`` - nothing to judge: the window is missing or could only be read with rounded edges, the
  value is None or not finite, no request in it;
* ``ok`` - the point estimate is within the threshold;
* ``holds`` - the point estimate is beyond the threshold. The trigger fires only when, in addition, the
  data show the crossing with the policy's one-sided ``triggers.confidence`` (bounds in
  :mod:`governance.policy.bounds`): the exact binomial lower bound of the error rate above its threshold;
  for P99 latency the same bound on the share of requests slower than the threshold above 1 % (the P99
  is above ``T`` exactly when more than 1 % of requests are slower than ``T``); ``KL - bias - z se``
  above 0.25; the Wald interval of the calibration slope wholly outside [0.6, 1.4]. The integrity count is
  exact (a count, not an estimate), so it needs no bound. A flagrant breach on little traffic is shown
  at once; a borderline one waits for more data; a model exactly at a threshold fires on at most
  ``1 - confidence`` of the evaluations.

**Episodes.** Each trigger of one comparison lives in one :class:`Episode`::

    armed --holds--> breaching --held sustain_s, shown with confidence--> fired --ok--> recovering
    breaching --ok or unknown--> armed      recovering --ok for rearm_s--> armed
    recovering --holds or unknown--> fired

A trigger fires once per episode and re-arms after ``triggers.rearm_s`` of continuous recovery.

**Time.** :func:`step_minutes` is the event-time form: one step per whole minute of event time that has
closed (``MinuteClose``: the trigger windows ending at that minute). A breach holds for ``sustain_s``
when it holds in every minute of the last ``sustain_s`` (a minute with no request is unknown and breaks
the run); for a one-minute window the confidence is then judged on those minutes pooled (5 x 1 minute for
the error rate), otherwise on the window ending at the close. A firing happens at, and is stamped with,
the end of the minute that completed the evidence, so a backlog processed in one call, a replay and a
live worker stepping every second reach the same firings at the same instants. :func:`step` is the older
form: one step per call at ``now`` on the rolling windows, sustain timed between calls (what a caller
that passes no minute closes gets).

**SOURCE_UNHEALTHY** (``source_unhealthy``): the newest event of the ``now`` snapshots is older than
``source.staleness_limit_s`` (or there is none), judged at ``clock`` when the caller gives one (the live
worker gives its wall clock: its ``now`` is the newest event, which never looks old) and at the event time
``now`` otherwise (replay). The firing is stamped with ``now`` either way, so its event stays in event-time
order. It fires an alert (action None, never a rollback). In :func:`step` it also turns every other
trigger's observation unknown (stale rolling windows roll nothing back); minute closes are complete
minutes of data that did arrive, judged on their own.

Pure, deterministic; a ``now`` earlier than the previous step changes nothing; repeating a step with the
same inputs fires nothing new. State is a pydantic model that round-trips through JSON for Redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from governance.contract.comparison import WindowSnapshot
from governance.contract.findings import Action, AlertSeverity
from governance.policy.bounds import normal_lower_bound, normal_upper_bound, rate_lower_bound
from governance.policy.document import Policy, RangeTrigger, ThresholdTrigger, window_seconds
from governance.policy.observations import (
    ERROR_COUNT,
    KL_BIAS,
    KL_SE,
    LATENCY_COUNT,
    METRIC_TRIGGERS,
    RATE_TRIGGERS,
    REQUEST_COUNT,
    SLOPE_SE,
    Observation,
    TriggerInputs,
    finite,
    inputs_from_snapshots,
    latency_above_metric,
    latency_hits,
    trigger_policy,
)

__all__ = [
    "ERROR_COUNT",
    "KL_BIAS",
    "KL_SE",
    "LATENCY_COUNT",
    "MAX_MINUTES",
    "METRIC_TRIGGERS",
    "REQUEST_COUNT",
    "SLOPE_SE",
    "SOURCE_UNHEALTHY",
    "Episode",
    "MinuteClose",
    "Observation",
    "TriggerFiring",
    "TriggerInputs",
    "TriggerState",
    "inputs_from_snapshots",
    "latency_above_metric",
    "minute_ends",
    "step",
    "step_minutes",
]

SOURCE_UNHEALTHY = "source_unhealthy"
# At most this many minute closes are expected per call (a day: the store keeps minute slots for 26 h).
MAX_MINUTES = 1440

_MINUTE = timedelta(minutes=1)
_P99_TAIL = 0.01  # P99 > T  <=>  more than 1 % of requests slower than T
Phase = Literal["armed", "breaching", "fired", "recovering"]
_Signal = Literal["holds", "ok", "unknown"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Episode(_Frozen):
    """One trigger's state: ``since`` is when the current breach (or recovery) began.

    ``pool`` holds the (hits, trials) of the minutes of the current breach run, at most the sustain
    period's worth, for a rate trigger stepped on minute closes.
    """

    phase: Phase = "armed"
    since: AwareDatetime | None = None
    fired_at: AwareDatetime | None = None
    pool: list[tuple[int, int]] = Field(default_factory=list)


class TriggerState(_Frozen):
    """Every trigger's episode for one comparison, the event time of the last step and the last minute closed."""

    episodes: dict[str, Episode] = Field(default_factory=dict)
    last_step: AwareDatetime | None = None
    last_minute: AwareDatetime | None = None

    def episode(self, name: str) -> Episode:
        return self.episodes.get(name, Episode())

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> TriggerState:
        return cls.model_validate_json(data)


@dataclass(frozen=True)
class MinuteClose:
    """The trigger windows as they stood when one whole minute of event time closed.

    ``end`` is a whole minute (UTC epoch seconds divisible by 60); ``snapshots`` maps each trigger
    window name to that window ending at ``end`` (``[end - length, end)``), as :func:`step_minutes` wants
    (or gives the observations directly, as :class:`TriggerInputs`).
    """

    end: datetime
    snapshots: Mapping[str, WindowSnapshot] | TriggerInputs


class TriggerFiring(_Frozen):
    """A trigger that fired at ``fired_at``; ``action`` None means alert only (SOURCE_UNHEALTHY).

    ``bound`` is the confidence bound that crossed the threshold (None: point estimate or exact count).
    """

    trigger: str
    action: Action | None
    alert: bool
    severity: AlertSeverity
    value: float | None
    threshold: float
    upper_threshold: float | None = None
    comparator: Literal[">", ">=", "outside"]
    window: str | None
    breach_started_at: AwareDatetime
    fired_at: AwareDatetime
    runbook: str
    reason: str
    bound: float | None = None


def _beyond(trigger: ThresholdTrigger, value: float, threshold: float) -> bool:
    return value > threshold if trigger.fires_when == ">" else value >= threshold


def _rate_counts(policy: Policy, name: str, observation: Observation) -> tuple[int, int] | None:
    """(hits, trials) of a rate trigger's observation; None when there is no request to count."""
    hits, trials = observation.hits, observation.trials
    if hits is None or trials is None:
        value, samples, trigger = finite(observation.value), observation.samples, trigger_policy(policy, name)
        if value is None or not samples or not isinstance(trigger, ThresholdTrigger):
            return None
        trials = samples
        if name == "error_rate":
            hits = min(math.floor(value * samples + 1e-9), samples)
        else:  # only the P99 itself is known: at least the requests above its rank are slower
            hits = latency_hits({0.99: value}, samples, trigger.threshold)
    if trials < 1 or not 0 <= hits <= trials:
        return None
    return hits, trials


def _signal(policy: Policy, name: str, observation: Observation | None) -> _Signal:
    """unknown / ok / holds on the point estimate (see the module docstring)."""
    trigger = trigger_policy(policy, name)
    if observation is None:
        return "unknown"
    value = finite(observation.value)
    if value is None:
        return "unknown"
    if name in RATE_TRIGGERS and _rate_counts(policy, name, observation) is None:
        return "unknown"
    if isinstance(trigger, RangeTrigger):
        if observation.se is None and (observation.samples or 0) < policy.triggers.fallback.min_labels:
            return "unknown"
        return "holds" if value < trigger.low or value > trigger.high else "ok"
    thin = (observation.samples or 0) < policy.triggers.fallback.min_pairs
    if name == "kl_divergence" and observation.se is None and thin:
        return "unknown"
    return "holds" if _beyond(trigger, value, trigger.threshold) else "ok"


@dataclass(frozen=True)
class _Decision:
    confident: bool
    bound: float | None
    detail: str


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g} %"


def _decide(policy: Policy, name: str, observation: Observation, pool: Sequence[tuple[int, int]]) -> _Decision:
    """Whether the data show the breach with the policy's confidence; ``pool`` is the rate evidence."""
    trigger = trigger_policy(policy, name)
    c = policy.triggers.confidence
    value = observation.value if observation.value is not None else math.nan
    if name in RATE_TRIGGERS and isinstance(trigger, ThresholdTrigger):
        hits, trials = sum(h for h, _ in pool), sum(t for _, t in pool)
        if trials < 1:
            return _Decision(False, None, "no request counted")
        limit = trigger.threshold if name == "error_rate" else _P99_TAIL
        bound = rate_lower_bound(hits, trials, c)
        what = "requests in error" if name == "error_rate" else f"requests slower than {_fmt(trigger.threshold)} ms"
        minutes = f", pooled over {len(pool)} min" if len(pool) > 1 else ""
        basis = f"; {observation.basis}" if observation.basis else ""
        detail = (f"{_pct(c)} lower bound {_fmt(bound)} on the share of {what} ({hits} of {trials}{minutes}"
                  f"{basis}) {'>' if _beyond(trigger, bound, limit) else 'not >'} {_fmt(limit)}")
        return _Decision(_beyond(trigger, bound, limit), bound, detail)
    if name == "integrity_violations":
        return _Decision(True, None, "exact count")
    if isinstance(trigger, RangeTrigger):
        if observation.se is None:
            return _Decision(True, None, f"point estimate on {observation.samples} labels (no standard error: "
                             f"fallback, at least {policy.triggers.fallback.min_labels} labels)")
        low, high = normal_lower_bound(value, observation.se, c), normal_upper_bound(value, observation.se, c)
        outside = low > trigger.high or high < trigger.low
        bound = low if value > trigger.high else high
        return _Decision(outside, bound, f"{_pct(c)} interval [{_fmt(low)}, {_fmt(high)}] (se {_fmt(observation.se)}) "
                         f"{'outside' if outside else 'not outside'} [{_fmt(trigger.low)}, {_fmt(trigger.high)}]")
    if observation.se is None:
        return _Decision(True, None, f"point estimate on {observation.samples} pairs (no standard error: fallback, "
                         f"at least {policy.triggers.fallback.min_pairs} pairs)")
    bound = normal_lower_bound(value - (observation.bias or 0.0), observation.se, c)
    confident = _beyond(trigger, bound, trigger.threshold)
    return _Decision(confident, bound, f"{_pct(c)} lower bound {_fmt(bound)} (bias {_fmt(observation.bias or 0.0)}, "
                     f"se {_fmt(observation.se)}) {'>' if confident else 'not >'} {_fmt(trigger.threshold)}")


def _pooling(policy: Policy, name: str) -> int:
    """How many minute closes a rate trigger pools: its sustain period's, when its window is one minute."""
    trigger = trigger_policy(policy, name)
    if name not in RATE_TRIGGERS or window_seconds(trigger.window) != 60:
        return 1
    return max(1, math.ceil(trigger.sustain_s / 60))


def _advance(
    policy: Policy,
    name: str,
    episode: Episode,
    observation: Observation | None,
    signal: _Signal,
    at: datetime,
    start: datetime,
    pooling: int,
) -> tuple[Episode, _Decision | None]:
    """The transition of one episode; returns the new episode and the decision if it fired now.

    ``at`` is the instant of the observation, ``start`` the start of the evidence it adds (``at`` for a
    rolling observation, the minute's start for a minute close).
    """
    phase = episode.phase
    rearm = timedelta(seconds=policy.triggers.rearm_s)
    if signal == "unknown":
        if phase == "breaching":
            return Episode(), None
        if phase == "recovering":
            return Episode(phase="fired", fired_at=episode.fired_at), None
        return episode, None
    if signal == "ok":
        if phase in ("armed", "breaching"):
            return Episode(), None
        since = episode.since if phase == "recovering" and episode.since is not None else start
        if at - since >= rearm:
            return Episode(), None
        return Episode(phase="recovering", since=since, fired_at=episode.fired_at), None
    if phase == "fired":
        return episode, None
    if phase == "recovering":
        return Episode(phase="fired", fired_at=episode.fired_at), None
    if observation is None:  # _signal gives "holds" only with an observation
        return Episode(), None
    since = episode.since if phase == "breaching" and episode.since is not None else start
    pool = list(episode.pool) if phase == "breaching" else []
    counts = _rate_counts(policy, name, observation) if name in RATE_TRIGGERS else None
    if counts is not None:
        pool = [*pool, counts][-pooling:]
    if at - since >= timedelta(seconds=trigger_policy(policy, name).sustain_s):
        decision = _decide(policy, name, observation, pool)
        if decision.confident:
            return Episode(phase="fired", since=since, fired_at=at), decision
    return Episode(phase="breaching", since=since, pool=pool), None


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _metric_firing(
    policy: Policy, name: str, observation: Observation, since: datetime, at: datetime, decision: _Decision
) -> TriggerFiring:
    trigger = trigger_policy(policy, name)
    value = observation.value
    held = int((at - since).total_seconds())
    shown = "n/a" if value is None else _fmt(value)
    upper: float | None = None
    comparator: Literal[">", ">=", "outside"]
    if isinstance(trigger, RangeTrigger):
        condition = f"{name} {shown} outside [{_fmt(trigger.low)}, {_fmt(trigger.high)}]"
        threshold, upper, comparator = trigger.low, trigger.high, "outside"
    else:
        condition = f"{name} {shown} {trigger.fires_when} {_fmt(trigger.threshold)}"
        threshold, comparator = trigger.threshold, trigger.fires_when
    return TriggerFiring(
        trigger=name,
        action=trigger.action,
        alert=trigger.alert,
        severity=trigger.severity,
        value=finite(value),
        threshold=threshold,
        upper_threshold=upper,
        comparator=comparator,
        window=observation.window,
        breach_started_at=since,
        fired_at=at,
        runbook=trigger.runbook,
        reason=f"{condition} for {held} s (sustain {trigger.sustain_s} s, window {observation.window}; "
        f"{decision.detail}): {trigger.action.replace('_', ' ')}",
        bound=decision.bound,
    )


def _source_firing(policy: Policy, age_s: float | None, now: datetime) -> TriggerFiring:
    limit = float(policy.source.staleness_limit_s)
    age = "no event yet" if age_s is None else f"newest event {_fmt(age_s)} s old > {_fmt(limit)} s"
    return TriggerFiring(
        trigger=SOURCE_UNHEALTHY,
        action=None,
        alert=True,
        severity=policy.source.severity,
        value=age_s,
        threshold=limit,
        comparator=">",
        window=None,
        breach_started_at=now,
        fired_at=now,
        runbook=policy.source.runbook,
        reason=f"SOURCE_UNHEALTHY: {age}; promotion paused, no rollback on stale data",
    )


def _aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware UTC datetime, got naive {now.isoformat()}")


def _source(
    policy: Policy, state: TriggerState, values: TriggerInputs, now: datetime, clock: datetime | None = None
) -> tuple[Episode, list[TriggerFiring], bool]:
    latest = values.latest_event_ts
    age_s = None if latest is None else max(((clock or now) - latest).total_seconds(), 0.0)
    unhealthy = age_s is None or age_s > policy.source.staleness_limit_s
    episode, now_fired = _source_advance(policy, state.episode(SOURCE_UNHEALTHY), unhealthy, now)
    return episode, [_source_firing(policy, age_s, now)] if now_fired else [], unhealthy


def _source_advance(policy: Policy, episode: Episode, unhealthy: bool, now: datetime) -> tuple[Episode, bool]:
    """SOURCE_UNHEALTHY's own episode: fires on the first stale observation, re-arms like the others."""
    if unhealthy:
        if episode.phase in ("armed", "breaching"):
            return Episode(phase="fired", since=now, fired_at=now), True
        return Episode(phase="fired", since=episode.since, fired_at=episode.fired_at), False
    if episode.phase in ("armed", "breaching"):
        return Episode(), False
    since = episode.since if episode.phase == "recovering" and episode.since is not None else now
    if now - since >= timedelta(seconds=policy.triggers.rearm_s):
        return Episode(), False
    return Episode(phase="recovering", since=since, fired_at=episode.fired_at), False


def _values(
    policy: Policy,
    inputs: TriggerInputs | Mapping[str, WindowSnapshot],
    side: Literal["candidate", "production"],
) -> TriggerInputs:
    return inputs if isinstance(inputs, TriggerInputs) else inputs_from_snapshots(policy, inputs, side)


def step(
    policy: Policy,
    state: TriggerState,
    inputs: TriggerInputs | Mapping[str, WindowSnapshot],
    now: datetime,
    side: Literal["candidate", "production"] = "candidate",
    clock: datetime | None = None,
) -> tuple[TriggerState, list[TriggerFiring]]:
    """Advance every trigger of one comparison to ``now`` on the rolling windows; firings in a fixed order.

    ``inputs`` is either the observations or the comparison's snapshots keyed by window name (then
    :func:`inputs_from_snapshots` picks the values). Sustain is timed between calls (see the module
    docstring; :func:`step_minutes` is the event-time form).
    """
    _aware(now)
    if state.last_step is not None and now < state.last_step:
        return state, []
    values = _values(policy, inputs, side)
    source, fired, unhealthy = _source(policy, state, values, now, clock)
    episodes: dict[str, Episode] = {SOURCE_UNHEALTHY: source}
    for name in METRIC_TRIGGERS:
        observation = values.observations.get(name)
        signal: _Signal = "unknown" if unhealthy else _signal(policy, name, observation)
        episode, decision = _advance(policy, name, state.episode(name), observation, signal, now, now, 1)
        episodes[name] = episode
        if decision is not None and observation is not None and episode.since is not None:
            fired.append(_metric_firing(policy, name, observation, episode.since, now, decision))
    return TriggerState(episodes=episodes, last_step=now, last_minute=state.last_minute), fired


def _minute(at: datetime) -> datetime:
    return datetime.fromtimestamp((math.floor(at.timestamp()) // 60) * 60, UTC)


def minute_ends(
    state: TriggerState, now: datetime, first_event: datetime | None = None, limit: int = MAX_MINUTES
) -> list[datetime]:
    """The whole minutes of event time that have closed since the last step and are due at ``now``.

    Each ``T`` with ``last_minute < T <= now`` (a minute ``[T - 60 s, T)`` is complete once the event-time
    watermark ``now`` reaches ``T``); on a fresh state, from the first minute end after ``first_event``
    (None: only the latest). At most the latest ``limit``; a gap in the closes is unknown to the triggers.
    The caller reads each trigger window ending at each ``T`` into a :class:`MinuteClose`.
    """
    _aware(now)
    latest = _minute(now)
    if state.last_minute is not None:
        first = state.last_minute + _MINUTE
    elif first_event is not None:
        first = _minute(first_event) + _MINUTE
    else:
        first = latest
    count = int((latest - first) / _MINUTE) + 1
    if count <= 0:
        return []
    count = min(count, limit)
    return [latest - i * _MINUTE for i in range(count - 1, -1, -1)]


def step_minutes(
    policy: Policy,
    state: TriggerState,
    closes: Sequence[MinuteClose],
    inputs: TriggerInputs | Mapping[str, WindowSnapshot],
    now: datetime,
    side: Literal["candidate", "production"] = "candidate",
    clock: datetime | None = None,
    until: datetime | None = None,
) -> tuple[TriggerState, list[TriggerFiring]]:
    """Advance every metric trigger once per minute close (event time), and SOURCE_UNHEALTHY at ``now``.

    ``closes`` are the minutes :func:`minute_ends` named (others are ignored: already stepped, or ending
    after ``until``, default ``now``: a caller that knows no more event will come for the minute ``now`` is in,
    a stream that stopped, may close it); ``inputs`` are the rolling windows at ``now``, read only for the
    source's freshness.
    A firing's ``fired_at`` is the end of the minute that completed its evidence. ValueError when a close
    does not end on a whole minute.
    """
    _aware(now)
    if state.last_step is not None and now < state.last_step:
        return state, []
    source, fired, _ = _source(policy, state, _values(policy, inputs, side), now, clock)
    episodes = {name: state.episode(name) for name in METRIC_TRIGGERS}
    last = state.last_minute
    for close in sorted(closes, key=lambda c: c.end):
        _aware(close.end)
        end = close.end.astimezone(UTC)
        if end.timestamp() % 60:
            raise ValueError(f"a minute close must end on a whole minute, got {end.isoformat()}")
        if (last is not None and end <= last) or end > (until or now):
            continue
        gap = last is not None and end - last > _MINUTE
        observations = _values(policy, close.snapshots, side).observations
        for name in METRIC_TRIGGERS:
            episode = episodes[name]
            if gap:  # minutes nobody showed us: the run they would have continued is broken
                episode, _ = _advance(policy, name, episode, None, "unknown", end - _MINUTE, end - _MINUTE, 1)
            observation = observations.get(name)
            signal = _signal(policy, name, observation)
            episode, decision = _advance(
                policy, name, episode, observation, signal, end, end - _MINUTE, _pooling(policy, name)
            )
            episodes[name] = episode
            if decision is not None and observation is not None and episode.since is not None:
                fired.append(_metric_firing(policy, name, observation, episode.since, end, decision))
        last = end
    return TriggerState(episodes={SOURCE_UNHEALTHY: source, **episodes}, last_step=now, last_minute=last), fired
