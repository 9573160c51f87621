"""Offline evaluation of recorded traffic: the embedded default for logged shadow traffic.

``replay_file(path)`` reads JSON lines (score events, ``{"events": [...]}`` envelopes and label events,
in the order they were logged), feeds them through the same :class:`~streams.processor.Processor` as the
live worker, with a :class:`~streams.memory_store.MemoryWindowStore` instead of Redis and no Kafka, and
returns the same document as ``shadowgate windows --json``. A line is a label when it has a ``label``
key and no ``role``. Every line is one record of one partition at offset = line number, so pairing,
orphans and the label join behave as on a single-partition topic. Invalid lines are counted (and
reported in ``dead_letters``), never fatal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from streams.aggregate import AggregateConfig
from streams.memory_store import MemoryWindowStore
from streams.processor import DeadLetter, Processor, Record
from streams.snapshots import DEFAULT_WINDOWS, read_windows

__all__ = ["replay_file", "replay_lines"]

_BATCH = 5000
_SCORES = "replay.scores"
_LABELS = "replay.labels"


def _is_label(line: bytes) -> bool:
    # Cheap routing without a full parse: the processor validates the line properly.
    return b'"label"' in line and b'"role"' not in line


def replay_lines(
    lines: Iterator[bytes],
    *,
    windows: Sequence[str] = DEFAULT_WINDOWS,
    config: AggregateConfig | None = None,
    join_window_s: float = 60.0,
    label_horizon_s: float = 3 * 86400.0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay raw lines; return ``{"comparisons": [...], "events": [], "dead_letters": [...], "stats": {...}}``."""
    store = MemoryWindowStore()
    processor = Processor(store, scores_topic=_SCORES, labels_topic=_LABELS, fence_name="replay",
                          config=config, join_window_s=join_window_s, label_horizon_s=label_horizon_s)
    dead: list[DeadLetter] = []
    totals = {"lines": 0, "score_events": 0, "labels": 0, "pairs": 0, "labeled_pairs": 0, "orphans": 0,
              "duplicates": 0}
    batch: list[Record] = []

    def flush() -> None:
        outcome = processor.process(batch)
        dead.extend(outcome.dead_letters)
        for name in ("score_events", "labels", "pairs", "labeled_pairs", "orphans", "duplicates"):
            totals[name] += getattr(outcome, name)
        batch.clear()

    for number, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            continue
        totals["lines"] += 1
        batch.append(Record(_LABELS if _is_label(line) else _SCORES, 0, number, None, line))
        if len(batch) >= _BATCH:
            flush()
            if progress is not None and totals["lines"] % 100_000 < _BATCH:
                progress(totals["lines"])
    if batch:
        flush()
    doc = read_windows(store, windows=windows, config=config)
    doc["events"] = []
    doc["dead_letters"] = [
        {"line": d.record.offset + 1, "reason": d.reason, "model": d.model} for d in dead[:1000]
    ]
    totals["dead_letters"] = len(dead)
    doc["stats"] = totals
    return doc


def replay_file(path: Path, **kwargs: Any) -> dict[str, Any]:
    """Replay a JSON-lines file (see module doc)."""
    with path.open("rb") as fh:
        return replay_lines(iter(fh), **kwargs)


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)
