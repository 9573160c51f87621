"""The evaluator: read a comparison's windows, run the pure gates and triggers, return events on change.

:class:`Evaluator` is shared by the live worker's timer (``streams.worker.app``) and ``shadowgate replay``.
For one comparison at event time ``now`` it reads the windows the policy names (the stage window since
the stage started, each trigger's rolling window, and for PRODUCTION the last whole days), calls
:func:`governance.policy.evaluator.evaluate`, keeps the :class:`~governance.policy.evaluator.EvaluatorState` in a
:class:`EvaluatorStates` (Redis for the worker, memory for replay) and returns the events to publish.

Lifecycle facts (stage, when it started, model type, escalations...) come from a ``ContextSource``.
Without one, a comparison is judged as its role says (shadow → SHADOW, canary → STAGING), its stage
started at its first event, and its model type is unknown, which fails closed: the strictest shadow
rules of the policy apply (longest minimum duration, largest minimum sample).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple, Protocol

import orjson

from governance.contract.comparison import ComparisonKey, WindowSnapshot
from governance.contract.events import GovernanceEvent
from governance.contract.publishing import encode_signed_event
from governance.crypto import Signer
from governance.crypto.live import LiveKeyring
from governance.policy.checks import GateResult
from governance.policy.document import Policy
from governance.policy.evaluator import (
    ContextSource,
    EvaluationContext,
    EvaluatorState,
    MinuteClose,
    Monitor,
    current_gate,
    evaluate,
    minutes_due,
)
from streams.fold.aggregate import AggregateConfig
from streams.state.store import ComparisonMeta, ReadRequest, WindowStore
from streams.worker.evaluator_states import EvaluatorStates, HeldStates
from streams.worker.processor import integrity_id
from streams.worker.reading import (
    ReadAhead,
    WindowReader,
    comparison_keys,
    read_snapshot,
    read_spans,
    snapshot_request,
    spans_request,
)

__all__ = [
    "Emission",
    "EvaluationLoop",
    "Evaluator",
    "Job",
    "Publish",
    "RoundBatch",
    "RoundPrefetch",
    "default_context",
    "strictest_model_type",
]

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DAY_S = 86400
#: How often (s of event time) a window only the rollback triggers name is re-read for the rolling evaluation.
TRIGGER_WINDOW_REFRESH_S = 60.0


#: Sends a round's emissions; returns the comparisons all of whose emissions the broker acknowledged.
Publish = Callable[[list["Emission"]], set[str]]


class Emission(NamedTuple):
    """One signed event of a round: where it goes, its key and bytes, the event, and its comparison."""

    topic: str
    key: bytes
    value: bytes
    event: GovernanceEvent
    comparison: str


def strictest_model_type(policy: Policy) -> str:
    """The model type with the longest minimum shadow duration (then the largest sample)."""
    rules = policy.shadow.model_types
    return max(rules, key=lambda name: (rules[name].min_duration_days, rules[name].min_samples))


def default_context(policy: Policy, model_type: str | None = None) -> ContextSource:
    """Judge a comparison by its role, from its first event, as ``model_type`` (default: the strictest)."""
    kind = model_type or strictest_model_type(policy)

    def context(key: ComparisonKey, first_event: datetime | None) -> EvaluationContext:
        stage: Literal["SHADOW", "STAGING"] = "SHADOW" if key.role == "shadow" else "STAGING"
        return EvaluationContext(key=key, stage=stage, stage_started_at=first_event or datetime(1970, 1, 1, tzinfo=UTC),
                                 model_type=kind, integrity_violations_7d=None, escalations_7d=0)

    return context


def _newest(snapshot: WindowSnapshot, meta: ComparisonMeta | None) -> WindowSnapshot:
    """``snapshot`` (a cached read) with the comparison's newest event time as it is now."""
    if meta is None:
        return snapshot
    latest = datetime.fromtimestamp(meta.last_event_ms / 1000, UTC)
    return snapshot if snapshot.latest_event_ts == latest else replace(snapshot, latest_event_ts=latest)


def _findings(snapshot: WindowSnapshot) -> int:
    return int(snapshot.metric("integrity_violations") or 0) + int(snapshot.metric("feature_violations") or 0)


def _cadence_s(length_s: int) -> int:
    """How often (s of event time, a whole number of minutes) a trigger window of ``length_s`` is re-read."""
    return max(60, (length_s // 12) // 60 * 60)


def _phase_s(comparison_id: str, cadence_s: int) -> int:
    """The comparison's own offset (whole minutes, below ``cadence_s``) of the instants its windows are re-read
    at: a function of its id only, so live, backlog and replay agree, and a fleet's re-reads of a long window
    spread over the cadence's minutes instead of falling in one round."""
    return zlib.crc32(comparison_id.encode()) % (cadence_s // 60) * 60


@functools.lru_cache(maxsize=256)
def _seconds(name: str) -> int | None:
    """``1m`` -> 60, ``14d`` -> 1209600; None if not a duration (cached: a round asks ~15 times per comparison)."""
    match = _DURATION.match(name)
    return int(match.group(1)) * _UNIT_S[match.group(2)] if match else None


class RoundPrefetch(Protocol):
    """What the contexts of a round read, fetched for all its comparisons at once (``RoundFacts``)."""

    def prefetch(self, keys: Sequence[ComparisonKey]) -> None: ...

    def clear(self) -> None: ...


@dataclass(frozen=True)
class Job:
    """One comparison a round evaluates: at event time ``now`` (None: its newest event), its freshness judged at
    ``clock``, with ``flush`` (see :meth:`Evaluator.evaluate`)."""

    key: ComparisonKey
    now: datetime | None = None
    clock: datetime | None = None
    flush: bool = False


@dataclass
class RoundBatch:
    """What :meth:`Evaluator.evaluate_many` fetched ahead for its jobs, and the states they produced."""

    reads: ReadAhead
    judged: dict[str, list[tuple[str, EvaluationContext]]] = field(default_factory=dict)
    states: dict[str, bytes | None] = field(default_factory=dict)
    puts: dict[str, bytes] = field(default_factory=dict)
    _parsed: dict[str, EvaluatorState] = field(default_factory=dict)

    def state(self, state_id: str) -> EvaluatorState:
        """The fetched state of ``state_id``, parsed once (it is frozen: planning and evaluation share it)."""
        parsed = self._parsed.get(state_id)
        if parsed is None:
            raw = self.states.get(state_id)
            parsed = self._parsed[state_id] = EvaluatorState.from_json(raw) if raw else EvaluatorState()
        return parsed


class Evaluator:
    """Evaluates comparisons on demand; see the module docstring."""

    def __init__(
        self,
        store: WindowStore,
        policy: Policy,
        states: EvaluatorStates,
        context: ContextSource | None = None,
        config: AggregateConfig | None = None,
        *,
        monitor: Monitor | None = None,
        max_refresh_s: float = 900.0,
        close_delay_s: float = 60.0,
        republish_s: float = 0.0,
        prefetch: RoundPrefetch | None = None,
    ) -> None:
        if close_delay_s < 0:
            raise ValueError(f"close_delay_s must be >= 0, got {close_delay_s}")
        self.store = store
        self.close_delay = timedelta(seconds=close_delay_s)
        self.republish_s = republish_s
        # The P99 trigger's threshold: every window read counts the latencies above it (its exact input).
        self.latency_above_ms = (policy.triggers.p99_latency_ms.threshold,)
        self.policy = policy
        self.states = states
        self.context = context or default_context(policy)
        self.config = config or AggregateConfig()
        self.max_refresh_s = max_refresh_s
        self.monitor = monitor
        self.prefetch = prefetch
        self._cache: dict[tuple[str, str], tuple[datetime, WindowSnapshot]] = {}
        self._triggers_of: Policy | None = None
        self._trigger_list: list[tuple[str, str]] = []
        self._trigger_only_set: set[str] = set()
        self._closes: dict[tuple[str, str], tuple[datetime, WindowSnapshot]] = {}  # the last read at a cadence

    def _refresh_s(self, length_s: float) -> float:
        # Windows of up to two minutes are read at every evaluation (the rollback triggers' 1 m windows are
        # not: see _reusable). A longer window moves little in a short time: it is re-read at 1/60 of its
        # length (1 h: every minute), at most every max_refresh_s.
        if length_s <= 120.0:
            return 0.0
        return min(length_s / 60.0, self.max_refresh_s)

    def _triggers(self) -> list[tuple[str, str]]:
        """(trigger name, window name) of each rollback trigger with a window; computed once per policy (frozen)."""
        if self._triggers_of is not self.policy:
            triggers = self.policy.triggers.model_dump().items()
            self._trigger_list = [(name, trigger["window"]) for name, trigger in triggers
                                  if isinstance(trigger, dict) and isinstance(trigger.get("window"), str)]  # fmt: skip
            w = self.policy.windows
            self._trigger_only_set = {window for _, window in self._trigger_list} - {w.stage, w.production}
            self._triggers_of = self.policy
        return self._trigger_list

    def _reusable(self, cid: str, name: str, now: datetime, span_s: float) -> WindowSnapshot | None:
        """The cached read of window ``name`` of ``cid`` if it may stand in at ``now``. A window only the rollback
        triggers name serves only the source's freshness and the evidence of SOURCE_UNHEALTHY (the triggers
        judge the minute closes, :meth:`minute_closes`): it is re-read once per ``TRIGGER_WINDOW_REFRESH_S`` of
        event time (or its own refresh, if longer), at a phase of its own so a fleet's re-reads are spread over
        the rounds, and its newest event time is kept current from the comparison's meta (:meth:`snapshots`)."""
        if name not in self._trigger_only():
            return self._cached(cid, name, now, self._refresh_s(span_s))
        cached = self._cache.get((cid, name))
        if cached is None or now < cached[0]:
            return None
        period = max(self._refresh_s(span_s), TRIGGER_WINDOW_REFRESH_S)
        phase = zlib.crc32(cid.encode()) % int(period)
        return cached[1] if (cached[0].timestamp() + phase) // period == (now.timestamp() + phase) // period else None

    def _trigger_only(self) -> set[str]:
        """The windows that only rollback triggers read (not the stage's, nor production's); once per policy."""
        self._triggers()
        return self._trigger_only_set

    def _lite_windows(self, context: EvaluationContext) -> set[str]:
        """Windows read only by triggers that need no ranking metric (no calibration slope)."""
        full = {self.policy.windows.stage, self.policy.windows.production}
        lite: set[str] = set()
        for name, window in self._triggers():
            (full if name == "calibration_slope" else lite).add(window)
        return lite - full

    def windows(self, context: EvaluationContext) -> dict[str, tuple[datetime | None, int | None]]:
        """Window name -> (fixed start or None, rolling length in s or None) that this stage needs."""
        w = self.policy.windows
        wanted: dict[str, tuple[datetime | None, int | None]] = {}
        for _, window in self._triggers():
            seconds = _seconds(window)
            if seconds is not None:
                wanted[window] = (None, seconds)
        if context.stage == "PRODUCTION":
            seconds = _seconds(w.production)
            if seconds is not None:
                wanted[w.production] = (None, seconds)
            for day in range(1, self.policy.production.stability_days + 1):
                wanted[f"{w.daily_prefix}{day}"] = (None, -day)  # negative: whole day `day` days back
        else:
            wanted[w.stage] = (context.stage_started_at, None)
        return wanted

    def _spans(self, context: EvaluationContext, now: datetime) -> list[tuple[str, datetime | None, datetime, float]]:
        """(name, start, end, span in s) of each window this stage needs at ``now``."""
        out = []
        for name, (start, length_s) in self.windows(context).items():
            # Windows are [start, end) in whole seconds: end one second past ``now`` so the events of
            # now's own second (the newest event, at an idle re-evaluation) are in.
            end = now + timedelta(seconds=1)
            if length_s is not None and length_s < 0:
                day_end = datetime.fromtimestamp((int(now.timestamp()) // _DAY_S) * _DAY_S, UTC) + timedelta(
                    days=1 + length_s
                )
                start, end = day_end - timedelta(days=1), day_end
                span_s = float(_DAY_S)
            elif length_s is not None:
                start = now - timedelta(seconds=length_s)
                span_s = float(length_s)
            else:
                span_s = (now - start).total_seconds() if start is not None else 0.0
            out.append((name, start, end, span_s))
        return out

    def _cached(self, cid: str, name: str, now: datetime, refresh_s: float) -> WindowSnapshot | None:
        """The cached window ``name`` of ``cid`` if it was read at most ``refresh_s`` before ``now``."""
        cached = self._cache.get((cid, name))
        if cached is not None and timedelta(0) <= now - cached[0] < timedelta(seconds=refresh_s):
            return cached[1]
        return None

    def snapshots(
        self, key: ComparisonKey, context: EvaluationContext, now: datetime, reader: WindowReader | None = None
    ) -> dict[str, WindowSnapshot]:
        """The windows of ``key`` at ``now``; long windows come from a cache refreshed at 1/12 of their length.
        ``reader``: where the reads go (default the store; a round's :class:`ReadAhead`)."""
        out: dict[str, WindowSnapshot] = {}
        cid = key.as_id()
        trigger_only = self._trigger_only()
        for name, start, end, span_s in self._spans(context, now):
            cached = self._reusable(cid, name, now, span_s)
            if cached is not None:
                out[name] = _newest(cached, (reader or self.store).meta(cid)) if name in trigger_only else cached
                continue
            tests = name == self.policy.windows.stage
            full = name not in self._lite_windows(context)
            # No KL bounds here: the triggers judge the minute closes (minute_closes), not these windows.
            snap = read_snapshot(reader or self.store, key, name, end, self.config, start=start, tests=tests,
                                 full=full, latency_above_ms=self.latency_above_ms, kl_bounds=False)  # fmt: skip
            self._cache[(cid, name)] = (now, snap)
            out[name] = snap
        return out

    def trigger_windows(self) -> dict[str, int]:
        """Each rollback trigger's window name -> its length in seconds (``1m`` -> 60)."""
        out: dict[str, int] = {}
        for _, window in self._triggers():
            seconds = _seconds(window)
            if seconds is not None:
                out[window] = seconds
        return out

    def _close_reads(self, cid: str, ends: list[datetime]) -> list[dict[str, tuple[datetime, datetime]]]:
        """For each end of ``ends``, the trigger windows :meth:`minute_closes` reads there (``name -> [start,
        end)``); the others it takes from its cache, as read at an earlier end or an earlier evaluation."""
        lengths = self.trigger_windows()
        seen: dict[str, datetime] = {}
        for name in lengths:
            cached = self._closes.get((cid, name))
            if cached is not None:
                seen[name] = cached[0]
        out = []
        for end in ends:
            end_s = int(end.timestamp())
            spans: dict[str, tuple[datetime, datetime]] = {}
            for name, length in lengths.items():
                cadence = _cadence_s(length)
                at = datetime.fromtimestamp(end_s - (end_s - _phase_s(cid, cadence)) % cadence, UTC)
                if seen.get(name) != at:
                    spans[name] = (at - timedelta(seconds=length), at)
                    seen[name] = at
            out.append(spans)
        return out

    def minute_closes(
        self, key: ComparisonKey, ends: list[datetime], now: datetime, reader: WindowReader | None = None
    ) -> list[MinuteClose]:
        """For each closed minute ``T`` of ``ends``, every trigger window as it stood at ``T``.

        A window of length ``L`` is read once per its cadence ``max(1 min, L / 12)`` of event time (``1m`` every
        minute, ``1h`` every 5 minutes, ``1d`` every 2 hours), at the instants ``phase + k * cadence`` (``phase``:
        whole minutes below the cadence, from the comparison's id, so a fleet's day windows are not all read at
        one round): at ``T`` it is the window ``[T' - L, T')`` with ``T'`` the last such instant at or before
        ``T``. The instants depend on event time and the id only, so live, backlog and replay judge the same
        windows at the same minutes; a long window moves
        little in ``L / 12``, and reading a day's window every minute would cost a replay of 14 days about
        20,000 day-window reads. Windows read at one ``T`` come from one consistent read; ranking metrics
        only for the calibration window, KL bounds only for the KL window.
        """
        lengths = self.trigger_windows()
        full = {self.policy.triggers.calibration_slope.window}
        kl = {self.policy.triggers.kl_divergence.window}
        cid = key.as_id()
        closes = []
        for end, spans in zip(ends, self._close_reads(cid, ends), strict=True):
            snaps = {name: self._closes[(cid, name)][1] for name in lengths if name not in spans}
            if spans:
                read = read_spans(reader or self.store, key, spans, now, self.config, full=full, kl_bounds=kl,
                                  latency_above_ms=self.latency_above_ms)  # fmt: skip
                for name, snap in read.items():
                    self._closes[(cid, name)] = (spans[name][1], snap)
                snaps.update(read)
            closes.append(MinuteClose(end, snaps))
        return closes

    def forget(self, comparison_id: str) -> None:
        """Drop the cached windows of a comparison: the next evaluation re-reads them all."""
        self._cache = {k: v for k, v in self._cache.items() if k[0] != comparison_id}
        self._closes = {k: v for k, v in self._closes.items() if k[0] != comparison_id}

    def _integrity_window(
        self, key: ComparisonKey, now: datetime
    ) -> tuple[str, list[tuple[str, WindowSnapshot | None]]]:
        """The integrity window's name and, for the comparison and its model's pseudo comparison, the cached
        window (None: to be read)."""
        name = f"integrity-{self.policy.shadow.lookback_days}d"
        return name, [(cid, self._cached(cid, name, now, self.max_refresh_s))
                      for cid in (key.as_id(), integrity_id(key.model))]  # fmt: skip

    def integrity_violations(
        self, key: ComparisonKey, context: EvaluationContext, now: datetime, reader: WindowReader | None = None
    ) -> int:
        """Integrity findings of the model in the policy's lookback (spec 3.2 check 5), from the windows: invalid
        messages, and feature values the feature catalog does not know or types otherwise (spec 5.2).

        Counted on this comparison and on the model's pseudo comparison (violations seen before any
        comparison of the model existed); cached like the other long windows. (The 8.1 rollback trigger counts
        invalid messages only: an ungoverned feature blocks a promotion, it does not roll a model back.)
        """
        source = reader or self.store
        days = self.policy.shadow.lookback_days
        name, cached = self._integrity_window(key, now)
        total = 0
        for cid, snap in cached:
            if snap is None:
                if source.meta(cid) is None:
                    continue
                snap = read_snapshot(source, key, name, now + timedelta(seconds=1),  # now's own second too
                                     self.config, start=now - timedelta(days=days), tests=False, full=False,
                                     kl_bounds=False, comparison_id=cid)  # fmt: skip
                self._cache[(cid, name)] = (now, snap)
            total += _findings(snap)
        return total

    def _judged(self, key: ComparisonKey, first: datetime) -> list[tuple[str, EvaluationContext]]:
        """(state id, context) of each side of ``key`` this worker judges: the candidate, the serving production."""
        cid = key.as_id()
        judged: list[tuple[str, EvaluationContext]] = []
        context = self.context(key, first)
        if context is not None:
            judged.append((cid, context))
        if self.monitor is not None and (context is None or context.stage != "PRODUCTION"):
            production = self.monitor(key)
            if production is not None and self._monitors(key):
                judged.append((f"{cid}#production", production))
        return judged

    def judge(
        self, key: ComparisonKey, now: datetime | None = None, clock: datetime | None = None
    ) -> list[tuple[EvaluationContext, GateResult, dict[str, WindowSnapshot]]]:
        """The gate of each judged side of ``key`` at ``now`` (default: its newest event) on freshly read windows,
        with the windows it read; no evaluator state is read or written, nothing is emitted."""
        meta = self.store.meta(key.as_id())
        if meta is None:
            return []
        first = datetime.fromtimestamp(meta.first_event_ms / 1000, UTC)
        now = now or datetime.fromtimestamp(meta.last_event_ms / 1000, UTC)
        self.forget(key.as_id())
        out = []
        for _, ctx in self._judged(key, first):
            if ctx.stage_started_at is not None and ctx.stage_started_at > now:
                continue
            if ctx.integrity_violations_7d is None:
                ctx = replace(ctx, integrity_violations_7d=self.integrity_violations(key, ctx, now))
            snaps = self.snapshots(key, ctx, now)
            result = current_gate(self.policy, ctx, snaps, now, clock)
            if result is not None:
                out.append((ctx, result, snaps))
        return out

    def evaluate(
        self,
        key: ComparisonKey,
        now: datetime | None = None,
        clock: datetime | None = None,
        *,
        flush: bool = False,
        batch: RoundBatch | None = None,
    ) -> list[GovernanceEvent]:
        """Evaluate ``key`` at event time ``now`` (default: its newest event); return the events.

        The rollback triggers are stepped once per whole minute of event time closed since the last
        evaluation (:func:`~governance.policy.evaluator.minutes_due`), on the trigger windows ending at that
        minute: the minute ``[T - 60 s, T)`` is closed once the comparison's newest event has passed
        ``T + close_delay_s`` (default 60 s, the join window: its orphans are counted by then), plus the
        comparison's own share of a fifteenth of that (:meth:`_watermark`). So the same
        events give the same rollback decisions and event ids whether they come live, as a backlog, or in
        a replay. ``flush``: the comparison's stream stopped (no new event for a while, or the end of a
        replay): every minute up to the end of the one its newest event is in is closed now, so a breach in its
        last minutes is judged without waiting for traffic that may never come. ``clock`` (the live worker's
        wall clock) is what the source's freshness is judged at; None (replay): at ``now``.

        The candidate side is judged by the stage its context names (SHADOW, STAGING); when a monitor
        says the production side is the serving PRODUCTION version, the production checks and triggers
        run too, with their own state, on one comparison per production version (the first by id), so a
        serving version compared with both a shadow and a canary is not rolled back twice.

        ``batch`` (from :meth:`evaluate_many`): the reads, contexts and states fetched ahead for the round; the
        new states are left in it for the round to store together, instead of being stored here.
        """
        reader: WindowReader = batch.reads if batch is not None else self.store
        meta = reader.meta(key.as_id())
        if meta is None:
            return []
        if now is None:
            now = datetime.fromtimestamp(meta.last_event_ms / 1000, UTC)
        first, watermark, until = self._watermark(key.as_id(), meta, now, flush)
        judged = batch.judged.get(key.as_id()) if batch is not None else None
        events: list[GovernanceEvent] = []
        puts: dict[str, bytes] = {}
        for state_id, ctx in judged if judged is not None else self._judged(key, first):
            if ctx.stage_started_at is not None and ctx.stage_started_at > now:
                # The stage began after the newest event (a transition the stream has not caught up with):
                # none of its traffic is here yet, so there is nothing to judge, only an empty window.
                continue
            if ctx.integrity_violations_7d is None:
                ctx = replace(ctx, integrity_violations_7d=self.integrity_violations(key, ctx, now, reader))
            if batch is not None and state_id in batch.states:
                state = batch.state(state_id)
            else:
                raw = self.states.get(state_id)
                state = EvaluatorState.from_json(raw) if raw else EvaluatorState()
            ends = minutes_due(state, watermark, first) if watermark >= first else []
            closes = self.minute_closes(key, ends, now, reader) if ends else []
            new_state, produced = evaluate(self.policy, self.snapshots(key, ctx, now, reader), ctx, state, now, closes,
                                           clock, self.republish_s, until)  # fmt: skip
            puts[state_id] = new_state.to_json()
            events += produced
        if batch is not None:
            batch.puts.update(puts)  # only once every side is evaluated: the round stores them with its events
        else:
            for state_id, state_bytes in puts.items():
                self.states.put(state_id, state_bytes)
        return sorted(events, key=lambda event: event.ts)

    def _watermark(
        self, cid: str, meta: ComparisonMeta, now: datetime, flush: bool
    ) -> tuple[datetime, datetime, datetime | None]:
        """(first event, watermark up to which minutes close, the flush's close limit or None). A minute closes
        ``close_delay`` after its end plus the comparison's own share of a fifteenth of it (up to 4 s of the
        default 60 s, from its id: the same live, in a backlog and in a replay), so the minute closes of a
        fleet, whose comparisons pass each minute's end together, spread over a few rounds."""
        first = datetime.fromtimestamp(meta.first_event_ms / 1000, UTC)
        newest = datetime.fromtimestamp(meta.last_event_ms / 1000, UTC)
        stagger = self.close_delay * (zlib.crc32(cid.encode()) % 1000 / 1000 / 15)
        watermark = min(now, newest) - self.close_delay - stagger
        until = None
        if flush:  # no more events: the minute of the newest one is complete
            until = datetime.fromtimestamp((math.floor(newest.timestamp()) // 60 + 1) * 60, UTC)
            watermark = until
        return first, watermark, until

    def evaluate_many(
        self, jobs: Sequence[Job], metas: Mapping[str, ComparisonMeta | None] | None = None
    ) -> list[list[GovernanceEvent] | Exception]:
        """:meth:`evaluate` of each job, with the Redis work of all of them batched; the events or error of each.

        Same results as one :meth:`evaluate` per job, in order (each job's reads come from one consistent
        state, as they would). Before the evaluations: the metas (``metas``, those fetched by the caller, and
        the models' pseudo comparisons), every evaluator state (one ``get_many``) and every window read the
        jobs will make (planned as :meth:`snapshots`, :meth:`minute_closes` and :meth:`integrity_violations`
        will ask, then ONE :meth:`~streams.state.store.WindowStore.read_batch`); after them, every new state
        in ONE ``put_many``; with a ``prefetch`` (the worker's lifecycle facts), what the contexts read, in one
        read before the round. A job whose evaluation raises gets its exception and no state stored; a failing
        fetch or store raises (InfrastructureError when the server does not answer) and stores no state at all,
        so nothing of the round is acknowledged and the next round evaluates the jobs again.
        """
        if self.prefetch is None:
            return self._evaluate_many(jobs, metas)
        # The contexts' lifecycle facts of every job in one read, as they stand when the round begins.
        self.prefetch.prefetch([job.key for job in jobs])
        try:
            return self._evaluate_many(jobs, metas)
        finally:
            self.prefetch.clear()

    def _evaluate_many(
        self, jobs: Sequence[Job], metas: Mapping[str, ComparisonMeta | None] | None
    ) -> list[list[GovernanceEvent] | Exception]:
        batch = RoundBatch(ReadAhead(self.store, metas))
        batch.reads.fetch_metas(job.key.as_id() for job in jobs)
        plans: list[tuple[Job, ComparisonMeta, datetime]] = []
        for job in jobs:
            cid = job.key.as_id()
            meta = batch.reads.meta(cid)
            if meta is None:
                continue
            now = job.now or datetime.fromtimestamp(meta.last_event_ms / 1000, UTC)
            first = datetime.fromtimestamp(meta.first_event_ms / 1000, UTC)
            try:
                batch.judged[cid] = [(sid, ctx) for sid, ctx in self._judged(job.key, first)
                                     if ctx.stage_started_at is None or ctx.stage_started_at <= now]  # fmt: skip
            except Exception:  # noqa: S112 - its evaluate() calls the context again and reports the error
                continue
            plans.append((job, meta, now))
        ids = [sid for sides in batch.judged.values() for sid, _ in sides]
        batch.states.update(zip(ids, self.states.get_many(ids), strict=True))
        # The pseudo comparisons' metas (whether their integrity window exists) before the reads. A job whose
        # planning raises is left to its evaluate(), which raises the same and is reported alone (e.g. an
        # instant past year 9999): one comparison never stops the round.
        pseudo: list[str] = []
        for job, _, now in plans:
            try:
                if self._needs_integrity(batch, job.key):
                    pseudo += [cid for cid, snap in self._integrity_window(job.key, now)[1] if snap is None]
            except Exception:  # noqa: S112 - see above
                continue
        batch.reads.fetch_metas(pseudo)
        requests: list[ReadRequest] = []
        for job, meta, now in plans:
            try:
                requests += self._requests(batch, job, meta, now)
            except Exception:  # noqa: S112 - see above
                continue
        batch.reads.fetch(requests)
        results: list[list[GovernanceEvent] | Exception] = []
        for job in jobs:
            try:
                results.append(self.evaluate(job.key, job.now, clock=job.clock, flush=job.flush, batch=batch))
            except Exception as exc:  # one comparison that cannot be evaluated must not stop the others
                results.append(exc)
        self.states.put_many(batch.puts)
        return results

    def _needs_integrity(self, batch: RoundBatch, key: ComparisonKey) -> bool:
        return any(ctx.integrity_violations_7d is None for _, ctx in batch.judged.get(key.as_id(), []))

    def _requests(self, batch: RoundBatch, job: Job, meta: ComparisonMeta, now: datetime) -> Iterator[ReadRequest]:
        """The window reads :meth:`evaluate` will make for ``job`` (what is cached now is not read)."""
        cid = job.key.as_id()
        first, watermark, _ = self._watermark(cid, meta, now, job.flush)
        if self._needs_integrity(batch, job.key):
            name, cached = self._integrity_window(job.key, now)
            days = self.policy.shadow.lookback_days
            for pid, snap in cached:
                if snap is None and batch.reads.meta(pid) is not None:
                    yield snapshot_request(pid, name, now + timedelta(seconds=1), now - timedelta(days=days))
        for state_id, ctx in batch.judged.get(cid, []):
            state = batch.state(state_id)
            if watermark >= first:
                for spans in self._close_reads(cid, minutes_due(state, watermark, first)):
                    if spans:
                        yield spans_request(cid, spans, now)[1]
            for name, start, end, span_s in self._spans(ctx, now):
                if self._reusable(cid, name, now, span_s) is None:
                    yield snapshot_request(cid, name, end, start)

    def _monitors(self, key: ComparisonKey) -> bool:
        """Whether ``key`` is the comparison that monitors its production version (the first by id)."""
        same = [k for k in comparison_keys(self.store, key.model) if k.production_version == key.production_version]
        return not same or key == min(same)


class EvaluationLoop:
    """One evaluation round of the worker: every comparison this worker leases, at its watermark.

    A comparison is evaluated when its newest event time advanced past the last evaluated second, and
    again at the same event time once ``idle_s`` seconds of ``clock`` passed (its windows re-read), so
    labels that arrive after the last score still reach its gates and triggers, for ``idle_horizon_s``
    (the label horizon) of wall time after its newest event; the
    Redis lease (``3 x`` the timer period) makes exactly one worker the evaluator of each comparison, and
    the evaluator state lives in Redis, so a comparison moves to another worker without losing its
    trigger and dedup state. A comparison whose evaluation raises is logged and reported to ``on_error`` (its
    id); the round goes on with the others, and that comparison is tried again when its event time moves (or it
    has stood idle).

    A round hands what it emitted to ``publish`` (:data:`Publish`), and writes a comparison's evaluator state
    back only when all of its events were delivered (:class:`HeldStates`); a comparison whose publish failed is
    reported to ``on_error``, keeps its last written state and is evaluated again in the next round, so it emits
    the same events (same ids) again instead of losing them. Returns the delivered ``(topic, key, signed
    record bytes, event)``; without ``publish`` every emission counts as delivered (nothing sends them).
    """

    def __init__(
        self,
        evaluator: Evaluator,
        signer: Signer | LiveKeyring | None,
        topics: dict[str, str],
        lease_s: float,
        owner: str,
        *,
        idle_s: float = 60.0,
        idle_horizon_s: float = 3 * 86400.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.on_error = on_error
        self.signer = signer
        self.topics = topics
        self.lease_s = lease_s
        self.owner = owner
        self.idle_s = idle_s
        self.idle_horizon_s = idle_horizon_s
        self.clock = clock
        self.wall = wall
        self._last: dict[str, tuple[int, float]] = {}  # comparison -> (event time, clock) of its last evaluation
        self._retry: dict[str, bool] = {}  # comparison -> flush: its last publish failed, evaluate it again
        self.states = HeldStates(evaluator.states)
        evaluator.states = self.states  # the loop's evaluator writes states back through it

    def round(self, publish: Publish | None = None) -> list[tuple[str, bytes, bytes, GovernanceEvent]]:
        """Evaluate every comparison due (see the class docstring) in one batch; publish its events; the delivered.

        The round's Redis work is a few round trips whatever the number of comparisons: the list of
        comparisons, their metas, their leases, then :meth:`Evaluator.evaluate_many` (states, window reads),
        then the new states of the comparisons with nothing to publish in one write, and those of the delivered
        ones in another. If a batch step fails the round raises and records nothing: no state stored, no
        event returned, and the next round evaluates the same comparisons again (same events, same ids).
        """
        evaluator, states = self.evaluator, self.states
        for cid in states.held():  # a round that stopped before settling: nothing of it counts as delivered
            states.discard(cid)
        keys = comparison_keys(evaluator.store)
        metas = dict(zip((key.as_id() for key in keys), evaluator.store.metas([key.as_id() for key in keys]),
                         strict=True))  # fmt: skip
        known = [key for key in keys if metas[key.as_id()] is not None]
        leased = states.lease_many([key.as_id() for key in known], self.owner, self.lease_s)
        jobs: list[Job] = []
        stamps: dict[str, tuple[int, float]] = {}
        retried: dict[str, bool] = {}
        for key, granted in zip(known, leased, strict=True):
            cid = key.as_id()
            meta = metas[cid]
            if not granted or meta is None:
                continue
            now_s = math.floor(meta.last_event_ms / 1000)
            last = self._last.get(cid)
            if cid in self._retry:
                idle = retried[cid] = self._retry.pop(cid)
            elif last is not None and now_s <= last[0]:
                # Event time stands still; labels (or late orphans) may still land in its windows, until
                # the label horizon has passed its newest event (then nothing can change them).
                if not self.idle_s or now_s < last[0] or self.clock() - last[1] < self.idle_s:
                    continue
                if self.wall() - now_s > self.idle_horizon_s:
                    continue
                evaluator.forget(cid)
                idle = True
            else:
                idle = False
            stamps[cid] = (now_s, self.clock())
            # Idle: its event time stood still for idle_s of the clock; its stream stopped, so the minute
            # of its newest event is closed too (flush) rather than waiting for traffic that may not come.
            jobs.append(Job(key, datetime.fromtimestamp(now_s, UTC), datetime.fromtimestamp(self.wall(), UTC), idle))
        try:
            emitted = self._settle(jobs, evaluator.evaluate_many(jobs, metas), stamps, publish)
        except Exception:
            self._retry.update(retried)  # still owed
            raise
        self._last.update(stamps)  # only now: a round that raised above is tried again in full
        return emitted

    def _settle(
        self, jobs: list[Job], results: list[list[GovernanceEvent] | Exception], stamps: dict[str, tuple[int, float]],
        publish: Publish | None,
    ) -> list[tuple[str, bytes, bytes, GovernanceEvent]]:
        """Publish the round's events; store the states of the comparisons with nothing to publish and of the
        delivered ones; the others are evaluated again next round."""
        states = self.states
        emitted: list[Emission] = []
        quiet: list[str] = []
        flushed = {job.key.as_id(): job.flush for job in jobs}
        for job, result in zip(jobs, results, strict=True):
            cid = job.key.as_id()
            if isinstance(result, Exception):
                log.error("evaluation of %s at event time %d failed; the other comparisons go on", cid,
                          stamps[cid][0], exc_info=result)  # fmt: skip
                states.discard(cid)
                if self.on_error is not None:
                    self.on_error(cid)
                continue
            if not result:
                quiet.append(cid)  # nothing to deliver
                continue
            emitted += [Emission(self._topic(e), job.key.model.encode(), self.sign(e), e, cid) for e in result]
        states.commit_many(quiet)
        delivered = {e.comparison for e in emitted} if publish is None or not emitted else publish(emitted)
        sent = list(dict.fromkeys(e.comparison for e in emitted))
        states.commit_many([cid for cid in sent if cid in delivered])
        for cid in sent:
            if cid in delivered:
                continue
            states.discard(cid)
            self._retry[cid] = flushed[cid]
            log.warning("the events of %s were not delivered; it keeps its last state and is evaluated again", cid)
            if self.on_error is not None:
                self.on_error(cid)
        return [(e.topic, e.key, e.value, e.event) for e in emitted if e.comparison in delivered]

    def _topic(self, event: GovernanceEvent) -> str:
        kind = type(event).__name__
        if kind in ("GateReady", "GateBlocked"):
            return self.topics["gates"]
        if kind == "RollbackTrigger":
            return self.topics["rollbacks"]
        return self.topics["alerts"]

    def sign(self, event: GovernanceEvent) -> bytes:
        """``event`` as message bytes, signed by the key active now (unsigned without a signer)."""
        if self.signer is None:
            return orjson.dumps(event.model_dump(mode="json"))
        now = datetime.now(UTC)
        # A LiveKeyring follows `keys rotate` and a rotation by the governance consumer without a restart: the key
        # active now signs (a retired one would fail verification once its overlap ends).
        signer = self.signer.signer(now) if isinstance(self.signer, LiveKeyring) else self.signer
        return encode_signed_event(event, signer, now)
