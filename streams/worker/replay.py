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
from streams.worker.processor import DeadLetter, Processor
from streams.worker.reading import DEFAULT_WINDOWS, read_windows
from streams.worker.rounds import Evaluator, MemoryEvaluatorStates, default_context

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
) -> dict[str, Any]:
    """Replay raw lines; return ``{"comparisons", "events", "dead_letters", "stats"}`` (see module doc).

    ``bounds``: event time admitted around ``now_s`` (default: the wall clock when the replay starts)."""
    policy = policy or load_policy(None)
    store = MemoryWindowStore()
    window = None if bounds is None else bounds.window(time.time() if now_s is None else now_s)
    processor = Processor(store, scores_topic=_SCORES, labels_topic=_LABELS, fence_name="replay",
                          config=config, join_window_s=join_window_s, label_horizon_s=label_horizon_s,
                          bounds=bounds, clock=(lambda: window.now_s) if window else time.time)
    evaluator = Evaluator(store, policy, MemoryEvaluatorStates(), default_context(policy, model_type), config)
    dead: list[DeadLetter] = []
    events: list[GovernanceEvent] = []
    totals = {"lines": 0, "score_events": 0, "labels": 0, "pairs": 0, "labeled_pairs": 0, "orphans": 0,
              "duplicates": 0, "evaluations": 0, "ahead": 0, "behind": 0}
    failed: list[dict[str, Any]] = []
    batch: list[Record] = []
    interval: int | None = None
    evaluated: dict[str, datetime] = {}  # comparison -> event time of its last evaluation

    def flush(grid_s: float | None) -> None:
        if not batch:
            return
        outcome = processor.process(batch)
        dead.extend(outcome.dead_letters)
        for name in ("score_events", "labels", "pairs", "labeled_pairs", "orphans", "duplicates", "ahead",
                     "behind"):  # fmt: skip
            totals[name] += getattr(outcome, name)
        batch.clear()
        if grid_s is None:
            return
        now = datetime.fromtimestamp(grid_s, UTC)
        for cid in sorted(outcome.comparisons):
            if evaluate(cid, now):
                evaluated[cid] = now
        # Labels only (its traffic stopped): judged again at its last time with fresh windows, as the
        # live worker does once a comparison has been idle.
        for cid in sorted(outcome.labeled - outcome.comparisons):
            if cid in evaluated:
                evaluator.forget(cid)
                evaluate(cid, evaluated[cid])

    def evaluate(cid: str, now: datetime) -> bool:
        try:
            events.extend(evaluator.evaluate(ComparisonKey.from_id(cid), now))
        except Exception as exc:  # one comparison that cannot be evaluated must not stop the replay of the others
            failed.append({"comparison": cid, "at": now.isoformat(), "error": f"{type(exc).__name__}: {exc}"})
            return False
        totals["evaluations"] += 1
        return True

    for number, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        totals["lines"] += 1
        ts = _event_time_s(line)
        if ts is not None and window is not None and not window.admits(ts):
            ts = None  # a dead letter (the processor says why): its time moves nothing
        if ts is not None and not _representable(ts + evaluate_every_s):
            ts = None  # a grid point past the year 9999 cannot be evaluated at (only without bounds)
        if ts is not None:
            slot = math.floor(ts / evaluate_every_s)
            if interval is not None and slot > interval:
                flush((interval + 1) * evaluate_every_s)
            interval = slot if interval is None else max(interval, slot)
        batch.append(Record(_LABELS if _is_label(line) else _SCORES, 0, number, None, line))
        if len(batch) >= _MAX_BATCH:
            flush(None)
        if progress is not None and totals["lines"] % 100_000 == 0:
            progress(totals["lines"])
    flush(None if interval is None else (interval + 1) * evaluate_every_s)
    doc = read_windows(store, windows=windows, config=config)
    events.sort(key=lambda e: e.ts)
    doc["events"] = [orjson.loads(e.to_json()) for e in events]
    doc["dead_letters"] = [
        {"line": d.record.offset + 1, "reason": d.reason, "model": d.model} for d in dead[:1000]
    ]
    totals["dead_letters"] = len(dead)
    doc["stats"] = totals
    if failed:
        doc["evaluation_errors"] = failed[:1000]
    doc["policy_hash"] = policy.hash()
    return doc


def replay_file(path: Path, **kwargs: Any) -> dict[str, Any]:
    """Replay a JSON-lines file (see module doc)."""
    with path.open("rb") as fh:
        return replay_lines(iter(fh), **kwargs)
