"""The processor without the native core (streams.joins.ReferenceJoins, switched by streams.native.AVAILABLE)
against the processor on it: same windows, same counts, same dead letters and byte-identical stored state,
so either can take over a partition the other checkpointed."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.contract.wire import LabelEvent, ScoreEvent
from governance.errors import ConfigError
from shadowgate.traffic import TrafficSpec
from streams import native
from streams.join.engines import NativeJoins, ReferenceJoins, feature_arrays
from streams.state.memory_store import MemoryWindowStore
from streams.state.store import WindowStore
from streams.worker.processor import Processor, Record
from tests.test_processor import INVALID, PARTITIONS, _events, _fields, _processor, _records, _spec, _start

FENCE = "g/scores+labels"
# The native side of these tests needs the extension; CI builds it (a missing build fails there).
needs_native = pytest.mark.skipif(not native.AVAILABLE, reason="streams._native not built (no cargo)")


def _make(store: WindowStore, use_native: bool, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Processor:
    """A processor built with the native core switched on or off (the switch is read when it is built)."""
    with monkeypatch.context() as patch:
        if not use_native:
            patch.setattr(native, "AVAILABLE", False)
        processor = _processor(store, **kwargs)
    assert processor.native is use_native
    return processor


def _stream() -> list[Record]:
    """Shadow and canary traffic of one production (features, errored candidates, late labels), with
    duplicates, orphans (a dropped production) and invalid messages mixed in."""
    shadow = _events(_spec(300, cand_error_rate=0.05))
    # Same seed: the same request ids. Only its canary events are kept: they pair with the shadow
    # traffic's productions, so requests have two pairs and one label serves both.
    canary = [
        e
        for e in _events(_spec(300, role="canary", candidate_version="1.6.0", cand_error_rate=0.1))
        if isinstance(e, ScoreEvent) and e.role == "canary"
    ]
    # Later traffic moves the score time past the join window: what waited without a partner is an orphan.
    later = _events(TrafficSpec(pairs=50, start=_start() + timedelta(seconds=120), rate_per_s=50.0, seed=3))
    events: list[ScoreEvent | LabelEvent] = sorted([*shadow, *canary, *later], key=lambda e: e.ts)  # stable
    mixed: list[ScoreEvent | LabelEvent] = []
    for i, event in enumerate(events):
        if isinstance(event, ScoreEvent) and event.role == "production" and i % 29 == 0:
            continue  # its candidates become orphans, its label finds no pair
        mixed.append(event)
        if isinstance(event, ScoreEvent) and i % 41 == 0:
            mixed.append(event)  # a duplicate
    records = _records(mixed, envelope=8)  # envelopes under the 4096-byte limit, the oversized message over it
    middle = len(records) // 2
    records[middle:middle] = [Record(topic, 0, 0, b"k", value) for _, topic, value, _, _ in INVALID]
    # Offsets in order per topic and partition, as Kafka gives them.
    offsets: dict[tuple[str, int], int] = {}
    for i, r in enumerate(records):
        offset = offsets.get((r.topic, r.partition), 0)
        offsets[(r.topic, r.partition)] = offset + 1
        records[i] = r._replace(offset=offset)
    return records


STREAM = _stream()
TIGHT = {"max_pending": 40, "max_label_pending": 30}  # bounds that evict


def _counts(processor: Processor, batch: list[Record]) -> tuple[Any, ...]:
    o = processor.process(batch)
    counts = (o.records, o.skipped, o.score_events, o.labels, o.pairs, o.labeled_pairs, o.orphans, o.duplicates)
    rest = (o.evicted, o.unplaced_violations, sorted(o.comparisons), sorted(o.labeled), o.watermark_s)
    return counts, rest, [(d.record, d.reason, d.model) for d in o.dead_letters]


@needs_native
@pytest.mark.parametrize("bounds", [{}, TIGHT], ids=["default-bounds", "tight-bounds"])
def test_the_reference_joins_give_the_native_windows_counts_and_state(
    monkeypatch: pytest.MonkeyPatch, bounds: dict[str, int]
) -> None:
    stores = {True: MemoryWindowStore(), False: MemoryWindowStore()}
    processors = {flag: _make(stores[flag], flag, monkeypatch, max_message_bytes=4096, **bounds) for flag in stores}
    assert isinstance(processors[True]._new_state().joins, NativeJoins)  # white-box: the switch took
    assert isinstance(processors[False]._new_state().joins, ReferenceJoins)
    totals = np.zeros(5, dtype=np.int64)
    for lo in range(0, len(STREAM), 53):
        batch = STREAM[lo : lo + 53]
        native_counts = _counts(processors[True], batch)
        assert _counts(processors[False], batch) == native_counts
        counts, rest, _ = native_counts
        totals += (counts[4], counts[5], counts[6], counts[7], rest[0])
    for partition in range(PARTITIONS):
        assert stores[False].read_state(FENCE, partition) == stores[True].read_state(FENCE, partition)
    fields = _fields(stores[True])
    assert _fields(stores[False]) == fields
    pairs, labeled, orphans, duplicates, evicted = totals.tolist()
    # The stream exercises what it is meant to: both comparisons, labels, orphans, duplicates, evictions.
    assert len(fields) >= 2 and pairs > 400 and labeled > 0 and orphans > 0 and duplicates > 0
    assert (evicted > 0) == bool(bounds)


@needs_native
@pytest.mark.parametrize("compact", [1, 32 * 1024 * 1024], ids=["compacting", "appending"])
@pytest.mark.parametrize("first", [True, False], ids=["native-then-reference", "reference-then-native"])
def test_either_path_takes_over_the_state_the_other_stored(
    monkeypatch: pytest.MonkeyPatch, compact: int, first: bool
) -> None:
    single = MemoryWindowStore()
    _make(single, True, monkeypatch).process(STREAM)
    store = MemoryWindowStore()
    half = len(STREAM) // 2
    before = _make(store, first, monkeypatch, compact_min_bytes=compact)
    for lo in range(0, half, 97):
        before.process(STREAM[lo : min(lo + 97, half)])
    after = _make(store, not first, monkeypatch, compact_min_bytes=compact)  # nothing in memory: all from the store
    for lo in range(half, len(STREAM), 97):
        after.process(STREAM[lo : lo + 97])
    assert _fields(store) == _fields(single)


def test_without_the_native_core_the_processor_warns_once_and_runs_the_reference(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(native, "AVAILABLE", False)
    with caplog.at_level(logging.WARNING, logger="streams.joins"):
        processor = _processor(MemoryWindowStore())
        outcome = processor.process(STREAM[:200])
    assert not processor.native and outcome.pairs > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [native.MISSING_WARNING]
    assert "install Rust (rustup) and reinstall" in native.MISSING_WARNING
    with pytest.raises(ConfigError, match="native core not built"):
        _processor(MemoryWindowStore(), native=True)


_WITHOUT_EXTENSION = """
import logging, sys
sys.modules["streams._native"] = None  # as on a machine without cargo: importing it raises ImportError
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
import streams.worker.app  # the worker's modules import without the extension
from streams import native
from streams.state.memory_store import MemoryWindowStore
from streams.worker.processor import Processor
from tests.test_joins import STREAM
assert not native.AVAILABLE
processor = Processor(MemoryWindowStore(), scores_topic="scores", labels_topic="labels", fence_name="f")
print(processor.native, processor.process(STREAM).pairs)
"""


def test_the_worker_imports_and_runs_without_the_extension() -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTENSION], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", str(_processor(MemoryWindowStore()).process(STREAM).pairs)]
    ours = [line for line in done.stderr.splitlines() if line.startswith("streams")]
    assert ours == [f"streams.join.engines: {native.MISSING_WARNING}"]  # one warning, at start


VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=3),
)
ROWS = st.lists(st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "c.d"]), VALUES)), max_size=12)


@needs_native
@settings(max_examples=300, deadline=None)
@given(prod=ROWS, cand=ROWS)
def test_feature_arrays_of_the_reference_path_are_the_native_ones(
    prod: list[dict[str, Any] | None], cand: list[dict[str, Any] | None]
) -> None:
    n = min(len(prod), len(cand))
    prod, cand = prod[:n], cand[:n]
    pairs = native.core.Pairs.from_columns(
        [("m", "1", "2", "shadow", [f"r{i}" for i in range(n)], [0.5] * n, [0.5] * n, [1.0] * n, [1.0] * n,
          [False] * n, [False] * n, [0.0] * n, prod, cand)]
    )  # fmt: skip
    for side, rows in (("prod", prod), ("cand", cand)):
        want = pairs.feature_arrays(0, side) if n else {}
        got = feature_arrays(rows)
        assert list(got) == list(want)  # names in order of first appearance
        for name, (rows_raw, numbers, codes, strings) in want.items():
            indices, column = got[name]
            assert indices.tolist() == np.frombuffer(rows_raw, dtype=np.uint32).tolist()
            assert column.numbers.tobytes() == np.frombuffer(numbers, dtype=np.float64).tobytes()  # NaN, -0.0
            assert column.codes.tolist() == np.frombuffer(codes, dtype=np.int32).tolist()
            assert column.strings == strings
