"""The event-time join of pairs with late labels: the reference (streams.labels) and the native joiner
(streams.native_labels), every test run against both."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.contract.comparison import ComparisonKey
from governance.contract.wire import LabelEvent, ScoreEvent
from governance.errors import ConfigError
from streams.join.joiner import NativeLabelJoiner
from streams.join.reference.labels import LabelJoiner, LabelResult
from streams.join.reference.pairing import PairColumns, Pairer
from streams.join.state import CheckpointError
from streams.state.statelog import StateDelta, accumulate

T0 = datetime(2024, 3, 1, tzinfo=UTC)
E0 = T0.timestamp()
SHADOW = ComparisonKey("m", "v1", "v2", "shadow")
CANARY = ComparisonKey("m", "v1", "v3", "canary")

Joiner = LabelJoiner | NativeLabelJoiner
JoinerType = type[LabelJoiner] | type[NativeLabelJoiner]
both = pytest.mark.parametrize("make", [LabelJoiner, NativeLabelJoiner], ids=["python", "native"])


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def lab(rid: str, label: int, t: float, model: str = "m") -> LabelEvent:
    return LabelEvent.model_validate({"request_id": rid, "model": model, "label": label, "ts": at(t)})


def cols(rows: list[tuple[str, float, float, float]], errors: tuple[bool, bool] = (False, False)) -> PairColumns:
    """Pairs (request_id, prod_score, cand_score, t) as the pairer would emit them."""
    n = len(rows)
    return PairColumns(
        prod_score=np.array([r[1] for r in rows]),
        cand_score=np.array([r[2] for r in rows]),
        prod_latency_ms=np.ones(n),
        cand_latency_ms=np.ones(n),
        prod_error=np.full(n, errors[0]),
        cand_error=np.full(n, errors[1]),
        ts=np.array([E0 + r[3] for r in rows]),
        request_ids=[r[0] for r in rows],
        prod_features=[None] * n,
        cand_features=[None] * n,
    )


def joined(results: list[LabelResult]) -> dict[ComparisonKey, list[tuple[Any, ...]]]:
    out: dict[ComparisonKey, list[tuple[Any, ...]]] = defaultdict(list)
    for res in results:
        for key, c in res.joined.items():
            out[key].extend(
                zip(c.request_ids, c.prod_score.tolist(), c.cand_score.tolist(), c.label.tolist(), c.ts.tolist(),
                    strict=True)
            )  # fmt: skip
    return dict(out)


@both
def test_labels_after_pairing_join_the_pairers_output(make: JoinerType) -> None:
    rng = np.random.default_rng(3)
    n = 200
    prod, cand, y = rng.random(n), rng.random(n), rng.integers(0, 2, n)
    events = []
    for i in range(n):
        for role, version, score in (("production", "v1", prod[i]), ("shadow", "v2", cand[i])):
            events.append(
                ScoreEvent.model_validate(
                    {"request_id": f"r{i}", "model": "m", "version": version, "role": role, "score": score,
                     "latency_ms": 1.0, "ts": at(i * 0.1), "error": "x" if role == "shadow" and i % 10 == 0 else None}
                )
            )  # fmt: skip
    pairs = Pairer().add_batch(events, at(20)).pairs
    joiner = make(horizon_s=86400)
    assert joiner.add_pairs(pairs, at(20)).joined == {}
    assert joiner.pending_pairs == n
    # Labels come two hours later, in another order.
    res = joiner.add_labels([lab(f"r{i}", int(y[i]), 7200 + i) for i in rng.permutation(n).tolist()], at(7200))
    got = res.joined[SHADOW]
    idx = np.array([int(r[1:]) for r in got.request_ids])
    assert sorted(idx.tolist()) == list(range(n)) and res.label_count == n
    np.testing.assert_array_equal(got.prod_score, prod[idx])
    want_cand = np.where(idx % 10 == 0, np.nan, cand[idx])  # an errored side made no judgement
    np.testing.assert_array_equal(got.cand_score, want_cand)
    np.testing.assert_array_equal(got.label, y[idx])
    np.testing.assert_allclose(got.ts, E0 + idx * 0.1, rtol=0, atol=1e-6)
    assert joiner.pending_pairs == 0 and joiner.pending_labels == n


@both
def test_label_before_pairs_serves_the_shadow_and_the_canary_pair(make: JoinerType) -> None:
    joiner = make(horizon_s=3600)
    assert joiner.add_labels([lab("r", 1, 5)], at(5)).joined == {}
    first = joiner.add_pairs({SHADOW: cols([("r", 0.2, 0.3, 4)])}, at(5))
    second = joiner.add_pairs({CANARY: cols([("r", 0.2, 0.9, 30)])}, at(30))
    assert joined([first, second]) == {SHADOW: [("r", 0.2, 0.3, 1, E0 + 4)], CANARY: [("r", 0.2, 0.9, 1, E0 + 30)]}
    end = joiner.add_labels([], at(10_000))
    assert (end.unmatched_labels, end.unlabeled, joiner.pending_labels) == (0, {}, 0)


@both
def test_models_are_kept_apart(make: JoinerType) -> None:
    joiner = make()
    joiner.add_labels([lab("r", 1, 0, model="other")], at(0))
    assert joiner.add_pairs({SHADOW: cols([("r", 0.1, 0.2, 0)])}, at(0)).joined == {}
    assert joined([joiner.add_labels([lab("r", 0, 1)], at(1))]) == {SHADOW: [("r", 0.1, 0.2, 0, E0)]}


@both
def test_expiry_at_the_horizon_in_event_time(make: JoinerType) -> None:
    joiner = make(horizon_s=100)
    joiner.add_pairs({SHADOW: cols([("a", 0.1, 0.2, 0), ("b", 0.3, 0.4, 10)])}, at(10))
    # ts 0 >= 100 - 100: still waiting, joins.
    assert joined([joiner.add_labels([lab("a", 1, 100)], at(100))]) == {SHADOW: [("a", 0.1, 0.2, 1, E0)]}
    res = joiner.add_labels([], at(110.5))
    assert {k: v.tolist() for k, v in res.unlabeled.items()} == {SHADOW: [E0 + 10]} and res.evicted == {}
    # b's label comes too late: nothing waits for it, and it expires unmatched.
    assert joiner.add_labels([lab("b", 1, 111)], at(111)).joined == {}
    # A pair already past the horizon on arrival is unlabeled at once.
    res = joiner.add_pairs({SHADOW: cols([("c", 0.5, 0.5, 5)])}, at(111))
    assert {k: v.tolist() for k, v in res.unlabeled.items()} == {SHADOW: [E0 + 5]} and joiner.pending_pairs == 0
    # a's label (matched) and b's (unmatched) expire: only b's counts as unmatched.
    assert joiner.add_labels([], at(300)).unmatched_labels == 1 and joiner.pending_labels == 0


@both
def test_duplicate_and_conflicting_labels_do_not_join_twice(make: JoinerType) -> None:
    joiner = make()
    joiner.add_pairs({SHADOW: cols([("r", 0.1, 0.2, 0)])}, at(0))
    res = joiner.add_labels([lab("r", 1, 10), lab("r", 1, 11), lab("r", 0, 12)], at(12))
    assert (res.label_count, res.duplicate_labels, res.conflicting_labels) == (1, 1, 1)
    # The first label wins for a later pair of the same request too.
    assert joined([joiner.add_pairs({CANARY: cols([("r", 0.1, 0.7, 1)])}, at(12))])[CANARY][0][3] == 1


@both
def test_bounds_evict_the_oldest_pairs_and_labels(make: JoinerType) -> None:
    joiner = make(max_pending=2, max_labels=2)
    res = joiner.add_pairs({SHADOW: cols([("a", 0.1, 0.1, 3), ("b", 0.2, 0.2, 1), ("c", 0.3, 0.3, 2)])}, at(3))
    assert {k: v.tolist() for k, v in res.evicted.items()} == {SHADOW: [E0 + 1]}
    assert {k: v.tolist() for k, v in res.unlabeled.items()} == {SHADOW: [E0 + 1]} and joiner.pending_pairs == 2
    res = joiner.add_labels([lab("a", 1, 5), lab("x", 1, 4), lab("y", 0, 6)], at(6))
    assert res.label_count == 1 and (res.evicted_labels, res.unmatched_labels) == (1, 1)  # x: oldest, unmatched
    assert joiner.pending_labels == 2


@both
def test_compaction_of_matched_pairs_keeps_expiry_exact(make: JoinerType) -> None:
    n = 3000
    joiner = make(horizon_s=1000)
    pairs = {key: cols([(f"r{i}", 0.5, 0.5, i * 0.1) for i in range(n)]) for key in (SHADOW, CANARY)}
    joiner.add_pairs(pairs, at(300))
    # Matching 2/3 of them leaves 4000 stale heap entries beside 2000 live ones: the heap is rebuilt.
    res = joiner.add_labels([lab(f"r{i}", i % 2, 400) for i in range(n) if i % 3], at(400))
    assert res.label_count == 4000
    res = joiner.add_labels([], at(5000))
    want = [E0 + i * 0.1 for i in range(0, n, 3)]
    assert {k: sorted(v.tolist()) for k, v in res.unlabeled.items()} == {SHADOW: want, CANARY: want}
    assert joiner.pending_pairs == 0


@both
def test_arguments_are_checked(make: JoinerType) -> None:
    with pytest.raises(ConfigError, match="horizon_s"):
        make(horizon_s=math.inf)
    with pytest.raises(ConfigError, match="max_labels"):
        make(max_labels=0)
    with pytest.raises(ValueError, match="naive"):
        make().add_labels([], datetime(2024, 1, 1))  # noqa: DTZ001


# --- properties ------------------------------------------------------------------------------------------

Op = tuple[str, str, str, int, float]  # (kind, request_id, model, label or candidate-version index, t)


@st.composite
def ops_(draw: st.DrawFn) -> list[Op]:
    t, ops = 0.0, []
    for _ in range(draw(st.integers(0, 40))):
        t += draw(st.sampled_from([0, 1, 5, 30, -20, -60]))
        kind = draw(st.sampled_from(["pair", "label"]))
        ops.append((kind, draw(st.sampled_from("abcd")), draw(st.sampled_from("mn")), draw(st.integers(0, 1)), t))
    return ops


def _key(model: str, which: int) -> ComparisonKey:
    return ComparisonKey(model, "v1", ("v2", "v3")[which], ("shadow", "canary")[which])


def _apply(joiner: Joiner, batch: list[Op]) -> LabelResult:
    now = at(max(op[4] for op in batch))
    if batch and batch[0][0] == "label":
        return joiner.add_labels([lab(rid, y, t, model) for _, rid, model, y, t in batch], now)
    grouped: dict[ComparisonKey, list[tuple[str, float, float, float]]] = defaultdict(list)
    for _, rid, model, which, t in batch:
        grouped[_key(model, which)].append((rid, 0.25, 0.75, t))
    return joiner.add_pairs({k: cols(v) for k, v in grouped.items()}, now)


def _summary(results: list[LabelResult]) -> tuple[Any, ...]:
    unlabeled = sorted((k.as_id(), t) for r in results for k, v in r.unlabeled.items() for t in v.tolist())
    counts = [(r.unmatched_labels, r.evicted_labels, r.duplicate_labels, r.conflicting_labels) for r in results]
    return joined(results), unlabeled, tuple(map(sum, zip(*counts, strict=True))) if counts else ()


def oracle(ops: list[Op], horizon_s: float) -> tuple[Counter[tuple[str, str, int]], list[tuple[str, float]], int]:
    """Plain lists, rescanned every step: joined (comparison, rid, label), unlabeled, duplicates+conflicts."""
    watermark = -math.inf
    waiting: list[tuple[str, ComparisonKey, float]] = []
    kept: list[tuple[str, str, int, float]] = []
    done: Counter[tuple[str, str, int]] = Counter()
    unlabeled: list[tuple[str, float]] = []
    repeats = 0
    for kind, rid, model, value, t in ops:
        watermark = max(watermark, t)
        cutoff = watermark - horizon_s
        unlabeled += [(k.as_id(), ts) for _, k, ts in waiting if ts < cutoff]
        waiting = [w for w in waiting if w[2] >= cutoff]
        kept = [x for x in kept if x[3] >= cutoff]
        labels = [x for x in kept if (x[0], x[1]) == (rid, model)]
        if kind == "pair":
            key = _key(model, value)
            if labels:
                done[(key.as_id(), rid, labels[0][2])] += 1
            elif t < cutoff:
                unlabeled.append((key.as_id(), t))
            else:
                waiting.append((rid, key, t))
        elif labels:
            repeats += 1
        else:
            for w in [w for w in waiting if (w[0], w[1].model) == (rid, model)]:
                done[(w[1].as_id(), rid, value)] += 1
                waiting.remove(w)
            if t >= cutoff:
                kept.append((rid, model, value, t))
    unlabeled += [(k.as_id(), ts) for _, k, ts in waiting]  # the final flush
    return done, sorted((k, E0 + t) for k, t in unlabeled), repeats


@both
@settings(max_examples=80, deadline=None)
@given(ops=ops_())
def test_joiner_agrees_with_a_brute_force_oracle(make: JoinerType, ops: list[Op]) -> None:
    joiner = make(horizon_s=60)
    results = [_apply(joiner, [op]) for op in ops]
    results.append(joiner.add_labels([], at(1e6)))
    got = Counter((k.as_id(), row[0], row[3]) for k, rows in joined(results).items() for row in rows)
    want_joined, want_unlabeled, repeats = oracle(ops, 60)
    assert got == want_joined
    assert _summary(results)[1] == want_unlabeled
    assert sum(r.duplicate_labels + r.conflicting_labels for r in results) == repeats
    assert joiner.pending_pairs == joiner.pending_labels == 0


@both
@settings(max_examples=60, deadline=None)
@given(ops=ops_(), data=st.data(), bounds=st.sampled_from([(2, 2), (3, 1), (1000, 1000)]))
def test_accumulated_deltas_restore_a_joiner_that_continues_as_if_never_stopped(
    make: JoinerType, ops: list[Op], data: st.DataObject, bounds: tuple[int, int]
) -> None:
    # Calls of one kind each: runs of consecutive pair ops or label ops.
    batches: list[list[Op]] = []
    for op in ops:
        if batches and batches[-1][0][0] == op[0] and data.draw(st.booleans()):
            batches[-1].append(op)
        else:
            batches.append([op])
    crash = data.draw(st.integers(0, len(batches)))
    takes = data.draw(st.lists(st.booleans(), min_size=crash, max_size=crash))  # deltas after some calls
    reference = make(60, *bounds)
    stored: dict[str, bytes] = {}
    for batch, take in zip(batches[:crash], takes, strict=True):
        _apply(reference, batch)
        if take:
            accumulate(stored, reference.state_delta())
            assert stored == reference.entries()
    accumulate(stored, reference.state_delta())  # the crash follows a delta
    restored = make(60, *bounds)
    restored.restore_entries(stored)
    assert restored.entries() == stored == reference.entries()
    assert (restored.pending_pairs, restored.pending_labels) == (reference.pending_pairs, reference.pending_labels)
    for batch in batches[crash:]:
        assert _summary([_apply(restored, batch)]) == _summary([_apply(reference, batch)])
        delta = reference.state_delta()
        assert restored.state_delta() == delta
        accumulate(stored, delta)
        assert stored == reference.entries()
    assert _summary([restored.add_labels([], at(1e6))]) == _summary([reference.add_labels([], at(1e6))])
    assert restored.state_delta() == reference.state_delta()


@both
def test_a_delta_holds_only_what_the_calls_touched(make: JoinerType) -> None:
    n = 4000
    joiner = make(horizon_s=3600)
    joiner.add_pairs({SHADOW: cols([(f"r{i}", 0.5, 0.5, i * 0.01) for i in range(n)])}, at(40))
    assert len(joiner.state_delta().upserts) == n + 1
    # Two labels: their pairs leave, the labels stay (matched) for a later canary pair of the request.
    joiner.add_labels([lab("r1", 1, 50), lab("r7", 0, 50)], at(50))
    delta = joiner.state_delta()
    assert delta.deletes == {"p1", "p7"} and set(delta.upserts) == {f"l{n:x}", f"l{n + 1:x}", "m"}
    assert orjson.loads(delta.upserts[f"l{n:x}"]) == ["r1", "m", 1, E0 + 50, 1]
    # A pair that comes, waits and joins between two deltas never shows up in one; its label does.
    joiner.add_pairs({CANARY: cols([("z", 0.5, 0.5, 50)])}, at(50))
    joiner.add_labels([lab("z", 1, 50)], at(50))
    delta = joiner.state_delta()
    assert not delta.deletes and set(delta.upserts) == {f"l{n + 3:x}", "m"}
    assert joiner.state_delta() == StateDelta.empty()
    joiner.add_labels([], at(9000))
    delta = joiner.state_delta()
    assert len(delta.deletes) == n - 2 + 3 and set(delta.upserts) == {"m"}  # the other pairs, three labels
    assert joiner.pending_pairs == joiner.pending_labels == 0


@both
def test_entries_keep_nan_scores_and_bad_ones_are_refused_without_damage(make: JoinerType) -> None:
    joiner = make()
    joiner.add_pairs({SHADOW: cols([("r", 0.4, 0.6, 0)], errors=(False, True))}, at(0))
    joiner.add_labels([lab("q", 1, 0)], at(0))
    entries = joiner.entries()
    assert orjson.loads(entries["p0"]) == ["r", SHADOW.as_id(), 0.4, None, E0]
    assert orjson.loads(entries["l1"]) == ["q", "m", 1, E0, 0]
    assert orjson.loads(entries["m"]) == [2, E0, 2]
    for bad in (
        {**entries, "p0": b"not json"},
        {**entries, "m": orjson.dumps([9, E0, 2])},
        {**entries, "x0": entries["p0"]},
        {**entries, "p0": orjson.dumps(["r", "no-key", 0.1, 0.2, 0.0])},
        {**entries, "l1": orjson.dumps(["q", "m", 2, 0.0, 0])},
        {**entries, "m": orjson.dumps([2, E0, 1])},
        {"p0": entries["p0"]},
    ):
        with pytest.raises(CheckpointError, match="shadowgate.labels state"):
            joiner.restore_entries(bad)
    assert joiner.entries() == entries
    fresh = make()
    fresh.restore_entries(entries)
    res = fresh.add_labels([lab("r", 1, 1)], at(1))
    assert res.joined[SHADOW].prod_score.tolist() == [0.4] and math.isnan(res.joined[SHADOW].cand_score[0])
