"""Offline evaluation of recorded traffic: the embedded default for logged shadow traffic.

``replay_file(path)`` reads JSON lines (score events, ``{"events": [...]}`` envelopes and label events,
in the order they were logged), feeds them through the same :class:`~streams.worker.processor.Processor` and
:class:`~streams.worker.rounds.Evaluator` as the live worker, with a
:class:`~streams.state.memory_store.MemoryWindowStore` instead of Redis and no Kafka, and returns the same
document as ``shadowgate windows --json`` plus the governance events the live worker would emit:

* A line is a label when it has a ``label`` key and no ``role``. Every line is one record of one
  partition at offset = line number, so pairing, orphans and the label join behave as on a
  single-partition topic. Invalid lines are counted and listed in ``dead_letters``, never fatal.
* Event time drives everything: lines are grouped into intervals of ``evaluate_every_s`` of event time
  (a line's time is its ``ts``, an envelope's its newest event's); after each interval every comparison
  that received data in it is evaluated at the interval's end (a grid point, as in the live worker), and
  the events are collected in event-time order. A comparison that received only labels in an interval
  (its traffic stopped) is evaluated again at its last evaluation time with its windows re-read, as the
  live worker does when a comparison stands idle. Events are unsigned here (nothing is acted on).
* Event-time bounds (``bounds``, :mod:`streams.decode.bounds`): the replay bounds event time as the live
  worker does, around ONE clock ``now_s`` for the whole file (``shadowgate replay --now``, default the wall
  clock; the live worker reads its clock once per batch): a line dated past ``now + lead`` or before
  ``now - lag`` is a dead letter with the same reason, and no time outside the bounds moves the interval
  grid. So traffic replayed shortly after it was recorded gives the live worker's windows; older recordings
  are replayed ``--now`` at the time they were recorded. Without ``bounds`` (the Python API's default)
  every time is taken as it is.
* A comparison whose evaluation fails (its windows cannot be read) is listed under ``evaluation_errors``;
  the others are evaluated as usual.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from governance.contract.comparison import ComparisonKey
from governance.contract.events import GovernanceEvent
from governance.contract.kafkaio import Record
from governance.policy.document import Policy, load_policy
from streams.decode.bounds import EventTimeBounds
from streams.fold.aggregate import AggregateConfig
from streams.state.memory_store import MemoryWindowStore
from streams.worker.evaluator_states import MemoryEvaluatorStates
from streams.worker.processor import BatchOutcome, DeadLetter, Processor
from streams.worker.reading import DEFAULT_WINDOWS, read_windows
from streams.worker.rounds import Evaluator, default_context

__all__ = ["replay_file", "replay_lines"]

_SCORES = "replay.scores"
_LABELS = "replay.labels"
_MAX_BATCH = 20_000


def _representable(ts_s: float) -> bool:
    try:
        datetime.fromtimestamp(ts_s, UTC)
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _is_label(line: bytes) -> bool:
    # Cheap routing without validation: the processor validates the line properly.
    return b'"label"' in line and b'"role"' not in line


def _event_time_s(line: bytes) -> float | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    items = doc.get("events") if isinstance(doc.get("events"), list) else [doc]
    best: float | None = None
    for item in items or []:
        ts = item.get("ts") if isinstance(item, dict) else None
        if isinstance(ts, str):
            try:
                value = datetime.fromisoformat(ts)
            except ValueError:
                continue
            if value.tzinfo is not None:
                best = max(best or -math.inf, value.timestamp())
    return best


class _Replay:
    """One replay: the processor and evaluator on a memory store, the pending batch and what was collected."""

    def __init__(self, policy: Policy, config: AggregateConfig | None, model_type: str | None, *,
                 evaluate_every_s: float, join_window_s: float, label_horizon_s: float,
                 bounds: EventTimeBounds | None, now_s: float | None, close_delay_s: float | None = None) -> None:
        self.store = MemoryWindowStore()
        # One clock for the whole file (the live worker reads its clock once per batch).
        self.window = None if bounds is None else bounds.window(time.time() if now_s is None else now_s)
        window = self.window
        self.processor = Processor(self.store, scores_topic=_SCORES, labels_topic=_LABELS, fence_name="replay",
                                   config=config, join_window_s=join_window_s, label_horizon_s=label_horizon_s,
                                   bounds=bounds, clock=(lambda: window.now_s) if window else time.time)
        self.evaluator = Evaluator(self.store, policy, MemoryEvaluatorStates(), default_context(policy, model_type),
                                   config, close_delay_s=join_window_s if close_delay_s is None else close_delay_s)
        self.every_s = evaluate_every_s
        self.dead: list[DeadLetter] = []
        self.events: list[GovernanceEvent] = []
        self.totals = {"lines": 0, "score_events": 0, "labels": 0, "pairs": 0, "labeled_pairs": 0, "orphans": 0,
                       "duplicates": 0, "evaluations": 0, "ahead": 0, "behind": 0}
        self.failed: list[dict[str, Any]] = []
        self.batch: list[Record] = []
        self.interval: int | None = None
        self.evaluated: dict[str, datetime] = {}  # comparison -> event time of its last evaluation

    def read(self, number: int, line: bytes) -> None:
        """Take one non-empty line; one whose event time starts a new interval first closes the current one."""
        self.totals["lines"] += 1
        ts = _event_time_s(line)
        if ts is not None and self.window is not None and not self.window.admits(ts):
            ts = None  # a dead letter (the processor says why): its time moves nothing
        if ts is not None and not _representable(ts + self.every_s):
            ts = None  # a grid point past the year 9999 cannot be evaluated at (only without bounds)
        if ts is not None:
            slot = math.floor(ts / self.every_s)
            if self.interval is not None and slot > self.interval:
                self._flush((self.interval + 1) * self.every_s)
            self.interval = slot if self.interval is None else max(self.interval, slot)
        self.batch.append(Record(_LABELS if _is_label(line) else _SCORES, 0, number, None, line))
        if len(self.batch) >= _MAX_BATCH:
            self._flush(None)

    def finish(self) -> None:
        """Process what is pending, evaluate the last interval, then close every comparison's last minutes.

        The file ended: as the live worker does once a comparison's stream stood still (its idle
        re-evaluation), the minute of each comparison's newest event is closed, so a breach in its last
        minutes is judged (the same decision, with the same event id, as the live worker's)."""
        self._flush(None if self.interval is None else (self.interval + 1) * self.every_s)
        for cid in sorted(self.evaluated):
            try:
                self.events.extend(self.evaluator.evaluate(ComparisonKey.from_id(cid), self.evaluated[cid], flush=True))
            except Exception as exc:  # as _evaluate_one: one comparison must not stop the others
                self.failed.append({"comparison": cid, "at": self.evaluated[cid].isoformat(),
                                    "error": f"{type(exc).__name__}: {exc}"})

    def _flush(self, grid_s: float | None) -> None:
        if not self.batch:
            return
        outcome = self.processor.process(self.batch)
        self.dead.extend(outcome.dead_letters)
        for name in ("score_events", "labels", "pairs", "labeled_pairs", "orphans", "duplicates", "ahead",
                     "behind"):  # fmt: skip
            self.totals[name] += getattr(outcome, name)
        self.batch.clear()
        if grid_s is not None:
            self._evaluate(outcome, datetime.fromtimestamp(grid_s, UTC))

    def _evaluate(self, outcome: BatchOutcome, now: datetime) -> None:
        for cid in sorted(outcome.comparisons):
            if self._evaluate_one(cid, now):
                self.evaluated[cid] = now
        # Labels only (its traffic stopped): judged again at its last time with fresh windows, as the
        # live worker does once a comparison has been idle.
        for cid in sorted(outcome.labeled - outcome.comparisons):
            if cid in self.evaluated:
                self.evaluator.forget(cid)
                self._evaluate_one(cid, self.evaluated[cid])

    def _evaluate_one(self, cid: str, now: datetime) -> bool:
        try:
            self.events.extend(self.evaluator.evaluate(ComparisonKey.from_id(cid), now))
        except Exception as exc:  # one comparison that cannot be evaluated must not stop the replay of the others
            self.failed.append({"comparison": cid, "at": now.isoformat(), "error": f"{type(exc).__name__}: {exc}"})
            return False
        self.totals["evaluations"] += 1
        return True

    def document(self, windows: Sequence[str], config: AggregateConfig | None, policy: Policy) -> dict[str, Any]:
        """The windows document with the events in event-time order, the dead letters and the totals."""
        doc = read_windows(self.store, windows=windows, config=config)
        self.events.sort(key=lambda e: e.ts)
        doc["events"] = [orjson.loads(e.to_json()) for e in self.events]
        doc["dead_letters"] = [
            {"line": d.record.offset + 1, "reason": d.reason, "model": d.model} for d in self.dead[:1000]
        ]
        self.totals["dead_letters"] = len(self.dead)
        doc["stats"] = self.totals
        if self.failed:
            doc["evaluation_errors"] = self.failed[:1000]
        doc["policy_hash"] = policy.hash()
        return doc


def replay_lines(
    lines: Iterator[bytes],
    *,
    windows: Sequence[str] = DEFAULT_WINDOWS,
    config: AggregateConfig | None = None,
    policy: Policy | None = None,
    model_type: str | None = None,
    evaluate_every_s: float = 60.0,
    join_window_s: float = 60.0,
    label_horizon_s: float = 3 * 86400.0,
    progress: Callable[[int], None] | None = None,
    bounds: EventTimeBounds | None = None,
    now_s: float | None = None,
    close_delay_s: float | None = None,
) -> dict[str, Any]:
    """Replay raw lines; return ``{"comparisons", "events", "dead_letters", "stats"}`` (see module doc).

    ``bounds``: event time admitted around ``now_s`` (default: the wall clock when the replay starts).
    ``close_delay_s``: how far past a minute the newest event must be before its triggers are judged (default:
    the join window), as the live worker's SHADOWGATE_MINUTE_CLOSE_S."""
    policy = policy or load_policy(None)
    replay = _Replay(policy, config, model_type, evaluate_every_s=evaluate_every_s, join_window_s=join_window_s,
                     label_horizon_s=label_horizon_s, bounds=bounds, now_s=now_s, close_delay_s=close_delay_s)
    for number, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        replay.read(number, line)
        if progress is not None and replay.totals["lines"] % 100_000 == 0:
            progress(replay.totals["lines"])
    replay.finish()
    return replay.document(windows, config, policy)


def replay_file(path: Path, **kwargs: Any) -> dict[str, Any]:
    """Replay a JSON-lines file (see module doc)."""
    with path.open("rb") as fh:
        return replay_lines(iter(fh), **kwargs)
