"""Automatic rollback triggers (spec 8.1) as a pure state machine with sustain and re-arm semantics.

Each trigger of one comparison lives in one :class:`Episode`::

    armed --breach--> breaching --held for sustain_s--> fired --ok--> recovering --ok for rearm_s--> armed
    breaching --ok or unknown--> armed            recovering --breach or unknown--> fired

* **Sustain.** A trigger fires when its condition has held at every observation from the first breaching
  one for at least ``sustain_s`` of event time (``now`` minus the first breaching observation's ``now``),
  so with error rate > 1 % and ``sustain_s`` = 300 a 3-minute spike never fires and a 6-minute one fires
  at the 5-minute mark. ``sustain_s`` = 0 fires on the first breaching observation.
* **Once per episode.** A fired trigger does not fire again until it has re-armed.
* **Re-arm.** After firing, the metric must be observed recovered continuously for ``triggers.rearm_s``;
  a breach during recovery restarts the recovery clock without firing again.
* **Unknown data** (window missing, value None or not finite, fewer samples than the trigger needs) is
  neither breach nor recovery: it cancels a pending breach and restarts a pending recovery, so a trigger
  never fires, and never re-arms, on evidence it did not see continuously.
* **SOURCE_UNHEALTHY** (``source_unhealthy``): the newest event of the snapshots is older than
  ``source.staleness_limit_s`` (or there is none). It fires an alert (action None, never a rollback);
  while it holds, every other trigger sees unknown data, so stale windows cannot roll anything back.

Time is event time passed in as ``now`` (the evaluator's watermark); a ``now`` earlier than the previous
step is ignored (state returned unchanged, nothing fired), and repeating a step with the same inputs and
``now`` fires nothing new (idempotent). State is a pydantic model that round-trips through JSON
(:meth:`TriggerState.to_json` / :meth:`TriggerState.from_json`), for storage in Redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from governance.contract.comparison import WindowSnapshot
from governance.contract.findings import Action, AlertSeverity
from governance.policy.checks import metric_count
from governance.policy.document import Policy, RangeTrigger, ThresholdTrigger

__all__ = [
    "METRIC_TRIGGERS",
    "SOURCE_UNHEALTHY",
    "Episode",
    "Observation",
    "TriggerFiring",
    "TriggerInputs",
    "TriggerState",
    "inputs_from_snapshots",
    "step",
]

SOURCE_UNHEALTHY = "source_unhealthy"
METRIC_TRIGGERS: tuple[str, ...] = (
    "error_rate",
    "p99_latency_ms",
    "kl_divergence",
    "integrity_violations",
    "calibration_slope",
)
Phase = Literal["armed", "breaching", "fired", "recovering"]
_Signal = Literal["breach", "ok", "unknown"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Episode(_Frozen):
    """One trigger's state: ``since`` is when the current breach (or recovery) began."""

    phase: Phase = "armed"
    since: AwareDatetime | None = None
    fired_at: AwareDatetime | None = None


class TriggerState(_Frozen):
    """Every trigger's episode for one comparison, and the event time of the last step."""

    episodes: dict[str, Episode] = Field(default_factory=dict)
    last_step: AwareDatetime | None = None

    def episode(self, name: str) -> Episode:
        return self.episodes.get(name, Episode())

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> TriggerState:
        return cls.model_validate_json(data)


@dataclass(frozen=True)
class Observation:
    """One trigger's input: the value, and the sample count it rests on (None when a count is exact)."""

    value: float | None
    samples: int | None = None
    window: str | None = None


@dataclass(frozen=True)
class TriggerInputs:
    """What one step sees: an observation per metric trigger and the newest event time of the sources."""

    observations: Mapping[str, Observation] = field(default_factory=dict)
    latest_event_ts: datetime | None = None


class TriggerFiring(_Frozen):
    """A trigger that fired at ``fired_at``; ``action`` None means alert only (SOURCE_UNHEALTHY)."""

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


def _trigger(policy: Policy, name: str) -> ThresholdTrigger | RangeTrigger:
    trigger: ThresholdTrigger | RangeTrigger = getattr(policy.triggers, name)
    return trigger


def inputs_from_snapshots(
    policy: Policy,
    snapshots: Mapping[str, WindowSnapshot],
    side: Literal["candidate", "production"] = "candidate",
) -> TriggerInputs:
    """Pick each trigger's metric from the window its policy entry names.

    ``side`` chooses the judged model: bare metric names for the candidate, ``production_`` names for the
    production model. The KL divergence compares the two sides, so it has no side. Error rate, latency and
    KL rest on ``sample_count`` pairs, the calibration slope on ``label_count`` labels; the integrity
    violation count is exact. A window the store could only answer with rounded edges (``exact`` False:
    its minute slots expired, as for a comparison idle for more than a day) is another measurement than
    the policy's, so its trigger sees no observation (unknown). The newest event time is the maximum over
    all snapshots.
    """
    prefix = "production_" if side == "production" else ""
    observations: dict[str, Observation] = {}
    for name in METRIC_TRIGGERS:
        trigger = _trigger(policy, name)
        snapshot = snapshots.get(trigger.window)
        if snapshot is None or not snapshot.exact:
            continue
        metric = name if name == "kl_divergence" else prefix + name
        if name == "integrity_violations":
            samples = None
        elif name == "calibration_slope":
            samples = metric_count(snapshot, "label_count") or 0
        else:
            samples = metric_count(snapshot, "sample_count") or 0
        observations[name] = Observation(snapshot.metric(metric), samples, trigger.window)
    stamps = [s.latest_event_ts for s in snapshots.values() if s.latest_event_ts is not None]
    return TriggerInputs(observations, max(stamps) if stamps else None)


def _minimum(policy: Policy, name: str) -> int:
    """Samples a trigger's window needs before its value means anything (fewer: unknown, never a breach).

    The calibration slope counts labels. KL compares two 20-bin histograms: it needs the pairs the gates
    need for a divergence check (``conclusive.min_pairs``), since on few pairs it is large by chance (two
    samples of the same scores give KL > 0.25 in 39 % of 50-pair windows, 3 % of 100-pair ones).
    """
    if name == "calibration_slope":
        return policy.triggers.min_labels
    if name == "kl_divergence":
        return max(policy.triggers.min_samples, policy.conclusive.min_pairs)
    return policy.triggers.min_samples


def _signal(policy: Policy, name: str, observation: Observation | None) -> _Signal:
    trigger = _trigger(policy, name)
    if observation is None or observation.value is None or not math.isfinite(observation.value):
        return "unknown"
    need = _minimum(policy, name)
    if name != "integrity_violations" and (observation.samples is None or observation.samples < need):
        return "unknown"
    value = observation.value
    if isinstance(trigger, RangeTrigger):
        breached = value < trigger.low or value > trigger.high
    else:
        breached = value > trigger.threshold if trigger.fires_when == ">" else value >= trigger.threshold
    return "breach" if breached else "ok"


def _advance(episode: Episode, signal: _Signal, now: datetime, sustain_s: int, rearm_s: int) -> tuple[Episode, bool]:
    """The transition of one episode; returns the new episode and whether it fired now."""
    phase = episode.phase
    if signal == "unknown":
        if phase == "breaching":
            return Episode(), False
        if phase == "recovering":
            return Episode(phase="fired", since=None, fired_at=episode.fired_at), False
        return episode, False
    if signal == "breach":
        if phase == "fired":
            return episode, False
        if phase == "recovering":
            return Episode(phase="fired", since=None, fired_at=episode.fired_at), False
        since = episode.since if phase == "breaching" and episode.since is not None else now
        if now - since >= timedelta(seconds=sustain_s):
            return Episode(phase="fired", since=since, fired_at=now), True
        return Episode(phase="breaching", since=since), False
    if phase in ("armed", "breaching"):
        return Episode(), False
    since = episode.since if phase == "recovering" and episode.since is not None else now
    if now - since >= timedelta(seconds=rearm_s):
        return Episode(), False
    return Episode(phase="recovering", since=since, fired_at=episode.fired_at), False


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _metric_firing(
    policy: Policy, name: str, observation: Observation, since: datetime, now: datetime
) -> TriggerFiring:
    trigger = _trigger(policy, name)
    value = observation.value
    held = int((now - since).total_seconds())
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
        value=value,
        threshold=threshold,
        upper_threshold=upper,
        comparator=comparator,
        window=observation.window,
        breach_started_at=since,
        fired_at=now,
        runbook=trigger.runbook,
        reason=f"{condition} for {held} s (sustain {trigger.sustain_s} s, window {observation.window}): "
        f"{trigger.action.replace('_', ' ')}",
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


def step(
    policy: Policy,
    state: TriggerState,
    inputs: TriggerInputs | Mapping[str, WindowSnapshot],
    now: datetime,
    side: Literal["candidate", "production"] = "candidate",
) -> tuple[TriggerState, list[TriggerFiring]]:
    """Advance every trigger of one comparison to ``now``; firings come in a fixed order (source first).

    ``inputs`` is either the observations or the comparison's snapshots keyed by window name (then
    :func:`inputs_from_snapshots` picks the values). See the module docstring for the guarantees.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware UTC datetime, got naive {now.isoformat()}")
    if state.last_step is not None and now < state.last_step:
        return state, []
    values = inputs if isinstance(inputs, TriggerInputs) else inputs_from_snapshots(policy, inputs, side)
    rearm_s = policy.triggers.rearm_s
    episodes: dict[str, Episode] = {}
    fired: list[TriggerFiring] = []

    latest = values.latest_event_ts
    age_s = None if latest is None else max((now - latest).total_seconds(), 0.0)
    unhealthy = age_s is None or age_s > policy.source.staleness_limit_s
    episode, now_fired = _advance(state.episode(SOURCE_UNHEALTHY), "breach" if unhealthy else "ok", now, 0, rearm_s)
    episodes[SOURCE_UNHEALTHY] = episode
    if now_fired:
        fired.append(_source_firing(policy, age_s, now))

    for name in METRIC_TRIGGERS:
        observation = values.observations.get(name)
        signal = "unknown" if unhealthy else _signal(policy, name, observation)
        sustain_s = _trigger(policy, name).sustain_s
        episode, now_fired = _advance(state.episode(name), signal, now, sustain_s, rearm_s)
        episodes[name] = episode
        if now_fired and observation is not None and episode.since is not None:
            fired.append(_metric_firing(policy, name, observation, episode.since, now))
    return TriggerState(episodes=episodes, last_step=now), fired
