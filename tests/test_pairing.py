"""The event-time pairing of production with shadow/canary scores (streams.join).

Every test that drives a pairer runs against both implementations: the reference
``streams.join.reference.pairing.Pairer`` and ``streams.join.pairer.NativePairer`` (the Rust engine,
``native/src/pairer.rs``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.contract.comparison import ComparisonKey
from governance.contract.wire import ScoreEvent
from governance.errors import ConfigError, StoreError
from streams.join.pairer import NativePairer
from streams.join.reference.pairing import Pairer, PairingResult, Side
from streams.join.state import CheckpointError, Interner
from streams.state.statelog import StateDelta, accumulate

AnyPairer = Pairer | NativePairer
#: Parametrizes a test over both implementations (argument ``impl``: the class).
both = pytest.mark.parametrize("impl", [pytest.param(Pairer, id="python"), pytest.param(NativePairer, id="native")])

T0 = datetime(2024, 3, 1, tzinfo=UTC)
E0 = T0.timestamp()
FAR = T0 + timedelta(days=365)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(
    rid: str,
    role: str,
    version: str,
    t: float,
    *,
    model: str = "m",
    score: float = 0.5,
    latency_ms: float = 1.0,
    error: str | None = None,
    features: dict[str, Any] | None = None,
) -> ScoreEvent:
    return ScoreEvent.model_validate(
        {
            "request_id": rid,
            "model": model,
            "version": version,
            "role": role,
            "score": score,
            "latency_ms": latency_ms,
            "ts": at(t),
            "error": error,
            "features": features,
        }
    )


def collect(results: list[PairingResult]) -> dict[str, Any]:
    """Concatenate several results into one comparable structure (order kept)."""
    pairs: dict[ComparisonKey, list[tuple[Any, ...]]] = defaultdict(list)
    sides: dict[str, dict[Side, list[Any]]] = {n: defaultdict(list) for n in ("o", "e", "l", "d")}
    forgotten = 0
    for res in results:
        for key, c in res.pairs.items():
            pairs[key].extend(
                zip(
                    c.request_ids, c.prod_score.tolist(), c.cand_score.tolist(), c.prod_latency_ms.tolist(),
                    c.cand_latency_ms.tolist(), c.prod_error.tolist(), c.cand_error.tolist(), c.ts.tolist(),
                    c.prod_features, c.cand_features, strict=True,
                )
            )  # fmt: skip
        for name, part in zip("eld", (res.evicted, res.late, res.duplicates), strict=True):
            for side, ts in part.items():
                sides[name][side].extend(ts.tolist())
        assert res.orphans.keys() == res.orphan_errors.keys()
        for side, ts in res.orphans.items():  # orphans as (ts, error)
            sides["o"][side].extend(zip(ts.tolist(), res.orphan_errors[side].tolist(), strict=True))
        forgotten += res.forgotten
    return {"pairs": dict(pairs), **{n: dict(v) for n, v in sides.items()}, "forgotten": forgotten}


def flat(part: dict[Side, list[Any]]) -> list[tuple[Side, Any]]:
    return sorted((side, t) for side, ts in part.items() for t in ts)


@both
def test_pair_columns_match_the_generated_values(impl: type[AnyPairer]) -> None:
    rng = np.random.default_rng(7)
    n = 300
    prod, cand = rng.random(n), rng.random(n)
    prod_lat, cand_lat = rng.lognormal(2, 1, n), rng.lognormal(2, 1, n)
    prod_t, cand_t = rng.uniform(0, 30, n), rng.uniform(0, 30, n)
    cand_err = rng.random(n) < 0.2
    events = []
    for i in range(n):
        events.append(ev(f"r{i}", "production", "v1", prod_t[i], score=prod[i], latency_ms=prod_lat[i]))
        events.append(
            ev(f"r{i}", "shadow", "v2", cand_t[i], score=cand[i], latency_ms=cand_lat[i],
               error="boom" if cand_err[i] else None, features={"x": float(i)})
        )  # fmt: skip
    order = rng.permutation(len(events))  # any arrival order within the window pairs everything
    result = impl().add_batch([events[i] for i in order], at(30))
    (key,) = result.pairs
    assert key == ComparisonKey("m", "v1", "v2", "shadow")
    cols = result.pairs[key]
    idx = np.array([int(r[1:]) for r in cols.request_ids])
    assert sorted(idx.tolist()) == list(range(n))
    np.testing.assert_array_equal(cols.prod_score, prod[idx])
    np.testing.assert_array_equal(cols.cand_score, cand[idx])
    np.testing.assert_array_equal(cols.prod_latency_ms, prod_lat[idx])
    np.testing.assert_array_equal(cols.cand_latency_ms, cand_lat[idx])
    np.testing.assert_array_equal(cols.cand_error, cand_err[idx])
    assert not cols.prod_error.any()
    np.testing.assert_allclose(cols.ts, E0 + np.maximum(prod_t, cand_t)[idx], rtol=0, atol=1e-6)
    assert cols.cand_features == [{"x": float(i)} for i in idx]
    assert cols.prod_features == [None] * n
    assert result.orphans == {} and result.duplicates == {}


@both
def test_production_shadow_and_canary_give_two_pairs_and_no_orphan(impl: type[AnyPairer]) -> None:
    p = impl(join_window_s=60)
    first = p.add_batch([ev("r", "production", "v1", 0, score=0.2), ev("r", "shadow", "v2", 1, score=0.3)], at(1))
    assert [(k.role, len(c)) for k, c in first.pairs.items()] == [("shadow", 1)]
    # The canary comes 59 s later: the production is still open for it.
    second = p.add_batch([ev("r", "canary", "v3", 59, score=0.9)], at(59))
    (key,) = second.pairs
    assert key == ComparisonKey("m", "v1", "v3", "canary")
    assert second.pairs[key].prod_score.tolist() == [0.2] and second.pairs[key].cand_score.tolist() == [0.9]
    assert second.pairs[key].ts.tolist() == [E0 + 59]
    assert collect([p.add_batch([], FAR)])["o"] == {}


@both
def test_candidate_before_production_and_models_kept_apart(impl: type[AnyPairer]) -> None:
    p = impl()
    res = p.add_batch(
        [ev("r", "shadow", "v2", 0, model="a"), ev("r", "production", "v1", 2, model="b"),
         ev("r", "production", "v1", 3, model="a")],
        at(3),
    )  # fmt: skip
    assert list(res.pairs) == [ComparisonKey("a", "v1", "v2", "shadow")]
    assert res.pairs[ComparisonKey("a", "v1", "v2", "shadow")].ts.tolist() == [E0 + 3]
    assert flat(collect([p.add_batch([], FAR)])["o"]) == [(Side("b", "v1", "production"), (E0 + 2, False))]


@both
def test_duplicates_are_counted_once_and_never_paired_twice(impl: type[AnyPairer]) -> None:
    p = impl()
    res = p.add_batch(
        [
            ev("r", "shadow", "v2", 0),
            ev("r", "shadow", "v2", 0),  # while pending
            ev("r", "production", "v1", 1),
            ev("r", "shadow", "v2", 2),  # after pairing
            ev("r", "production", "v1", 3),  # the open production again
            ev("r", "shadow", "v3", 4),  # another candidate version is not a duplicate
        ],
        at(4),
    )
    assert {k.candidate_version: len(c) for k, c in res.pairs.items()} == {"v2": 1, "v3": 1}
    assert flat({k: v.tolist() for k, v in res.duplicates.items()}) == [
        (Side("m", "v1", "production"), E0 + 3),
        (Side("m", "v2", "shadow"), E0),
        (Side("m", "v2", "shadow"), E0 + 2),
    ]
    assert collect([p.add_batch([], FAR)])["o"] == {}


@both
def test_orphans_expire_exactly_at_the_join_window_in_event_time(impl: type[AnyPairer]) -> None:
    p = impl(join_window_s=60)
    assert p.add_batch([ev("a", "production", "v1", 0), ev("b", "shadow", "v2", 10)], at(10)).orphans == {}
    assert p.add_batch([], at(60)).orphans == {}  # ts 0 >= 60 - 60: still remembered
    res = p.add_batch([], at(60.5))
    assert {s: t.tolist() for s, t in res.orphans.items()} == {Side("m", "v1", "production"): [E0]}
    # Arrival of a later event moves the watermark too: b expires before c is considered.
    res = p.add_batch([ev("b", "production", "v1", 71)], at(71))
    assert res.pairs == {} and {s: t.tolist() for s, t in res.orphans.items()} == {Side("m", "v2", "shadow"): [E0 + 10]}
    assert p.pending == 1


@both
def test_orphans_carry_their_error_flag_and_features_gather_by_name(impl: type[AnyPairer]) -> None:
    p = impl()
    res = p.add_batch(
        [ev("a", "shadow", "v2", 0, error="timeout"), ev("b", "shadow", "v2", 1),
         ev("c", "production", "v1", 2, features={"x": 1.0, "s": "k"}), ev("c", "shadow", "v2", 2),
         ev("d", "production", "v1", 3, features={"x": 2.0}), ev("d", "shadow", "v2", 3)],
        at(3),
    )  # fmt: skip
    cols = res.pairs[ComparisonKey("m", "v1", "v2", "shadow")]
    assert cols.features_by_name("prod") == {"x": [1.0, 2.0], "s": ["k"]}
    assert cols.features_by_name("cand") == {}
    res = p.add_batch([], FAR)
    side = Side("m", "v2", "shadow")
    assert res.orphans[side].tolist() == [E0, E0 + 1] and res.orphan_errors[side].tolist() == [True, False]


@both
def test_late_event_is_an_orphan_and_not_paired(impl: type[AnyPairer]) -> None:
    p = impl(join_window_s=60)
    res = p.add_batch([ev("x", "production", "v1", 100), ev("r", "production", "v1", 39)], at(100))
    assert {s: t.tolist() for s, t in res.late.items()} == {Side("m", "v1", "production"): [E0 + 39]}
    assert {s: t.tolist() for s, t in res.orphans.items()} == {Side("m", "v1", "production"): [E0 + 39]}
    assert p.add_batch([ev("r", "shadow", "v2", 40)], at(100)).pairs == {}


@both
def test_bound_evicts_the_oldest_as_orphans_or_forgets_paired_ones(impl: type[AnyPairer]) -> None:
    p = impl(max_pending=3)
    res = p.add_batch([ev(f"r{i}", "production", "v1", t) for i, t in enumerate([5, 1, 3, 4, 2])], at(5))
    assert p.pending == 3
    evicted = {s: t.tolist() for s, t in res.evicted.items()}
    assert evicted == {Side("m", "v1", "production"): [E0 + 1, E0 + 2]}
    assert {s: t.tolist() for s, t in res.orphans.items()} == evicted
    # r2 (ts 3) pairs; the bound then pushes out its production, which has paired: forgotten, not orphan.
    res = p.add_batch([ev("r2", "shadow", "v2", 5)], at(5))
    assert (res.pair_count, res.forgotten, res.orphans) == (1, 1, {})
    res = p.add_batch([ev("n1", "production", "v1", 6), ev("n2", "production", "v1", 6)], at(6))
    # oldest first: r3 (ts 4, unpaired) is an evicted orphan, then r0 (ts 5, arrived before r2's tombstone)
    assert {s: t.tolist() for s, t in res.evicted.items()} == {Side("m", "v1", "production"): [E0 + 4, E0 + 5]}
    res = p.add_batch([ev("n3", "production", "v1", 6)], at(6))
    assert (res.forgotten, res.orphans, p.pending) == (1, {}, 3)  # r2's shadow tombstone


@both
def test_restore_into_a_smaller_bound_evicts_the_oldest_at_the_next_call(impl: type[AnyPairer]) -> None:
    big = impl(max_pending=10)
    big.add_batch([ev(f"r{i}", "production", "v1", i) for i in range(5)], at(4))
    small = impl(max_pending=3)
    small.restore_entries(big.entries())
    res = small.add_batch([], at(4))
    assert {s: t.tolist() for s, t in res.evicted.items()} == {Side("m", "v1", "production"): [E0, E0 + 1]}
    assert small.pending == 3


def test_interner_shares_names_up_to_its_limit() -> None:
    intern = Interner(limit=2)
    first = intern["".join(["mo", "del"])]
    assert intern["".join(["mod", "el"])] is first
    assert intern["x"] == "x"
    fresh = "".join(["y", "z"])
    assert intern[fresh] is fresh and len(intern) == 2


@both
def test_arguments_are_checked(impl: type[AnyPairer]) -> None:
    with pytest.raises(ConfigError, match="join_window_s"):
        impl(join_window_s=0)
    with pytest.raises(ConfigError, match="max_pending"):
        impl(max_pending=0)
    with pytest.raises(ValueError, match="naive"):
        impl().add_batch([], datetime(2024, 1, 1))  # noqa: DTZ001


# --- properties: an independent brute-force oracle, batch cuts, checkpoints -------------------------------

_ROLES = ("production", "shadow", "canary")


@st.composite
def streams_(draw: st.DrawFn, max_size: int = 40) -> list[ScoreEvent]:
    n = draw(st.integers(0, max_size))
    t = 0.0
    events = []
    for _ in range(n):
        t += draw(st.sampled_from([0, 0, 1, 3, 10, 25, 50, -5, -30, -70]))
        events.append(
            ev(
                draw(st.sampled_from("abcde")), draw(st.sampled_from(_ROLES)), draw(st.sampled_from(["v1", "v2"])),
                t, model=draw(st.sampled_from(["m", "n"])), score=draw(st.floats(0, 1)),
                latency_ms=draw(st.floats(0, 1e4)), error=draw(st.sampled_from([None, "e"])),
                features=draw(st.sampled_from([None, {"f": 1.5, "g": "x"}])),
            )
        )  # fmt: skip
    return events


@dataclass
class _Rec:
    e: ScoreEvent
    ts: float
    paired: bool = False


def oracle(events: list[ScoreEvent], window_s: float) -> dict[str, Any]:
    """The module's rules written the slow, obvious way: rescan everything for every event."""
    watermark = -math.inf
    seen: list[_Rec] = []
    pairs: dict[ComparisonKey, list[str]] = defaultdict(list)
    orphans: list[tuple[Side, tuple[float, bool]]] = []
    dups: list[tuple[Side, float]] = []
    for e in events:
        ts = e.ts.timestamp()
        watermark = max(watermark, ts)
        side = Side(e.model, e.version, e.role)
        if ts < watermark - window_s:
            orphans.append((side, (ts, e.error is not None)))
            continue
        mine = [
            r for r in seen if r.ts >= watermark - window_s and (r.e.request_id, r.e.model) == (e.request_id, e.model)
        ]
        if any((r.e.role, r.e.version) == (e.role, e.version) for r in mine):
            dups.append((side, ts))
            continue
        rec = _Rec(e, ts)
        partners = [r for r in mine if r.e.role != "production" and not r.paired] if e.role == "production" else (
            [r for r in mine if r.e.role == "production"][:1]
        )  # fmt: skip
        for other in partners:
            prod, cand = (rec, other) if e.role == "production" else (other, rec)
            key = ComparisonKey(e.model, prod.e.version, cand.e.version, cand.e.role)  # type: ignore[arg-type]
            pairs[key].append(e.request_id)
            prod.paired = cand.paired = True
        seen.append(rec)
    orphans += [(Side(r.e.model, r.e.version, r.e.role), (r.ts, r.e.error is not None)) for r in seen if not r.paired]
    return {"pairs": dict(pairs), "orphans": sorted(orphans), "dups": sorted(dups)}


@settings(max_examples=80, deadline=None)
@given(events=streams_())
@both
def test_pairer_agrees_with_brute_force_oracle(impl: type[AnyPairer], events: list[ScoreEvent]) -> None:
    p = impl(join_window_s=60)
    got = collect([p.add_batch(events, at(0)), p.add_batch([], FAR)])
    want = oracle(events, 60)
    assert {k: [row[0] for row in rows] for k, rows in got["pairs"].items()} == want["pairs"]
    assert flat(got["o"]) == want["orphans"]
    assert flat(got["d"]) == want["dups"]
    assert p.pending == 0


def _run(pairer: AnyPairer, events: list[ScoreEvent], cuts: list[int]) -> list[PairingResult]:
    out = []
    watermark = T0 - timedelta(days=1)
    for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
        batch = events[lo:hi]
        watermark = max([watermark, *(e.ts for e in batch)])
        out.append(pairer.add_batch(batch, watermark))
    return out


@settings(max_examples=60, deadline=None)
@given(events=streams_(), data=st.data(), bound=st.sampled_from([2, 3, 5, 10_000]))
@both
def test_batch_cuts_do_not_change_pairs_orphans_or_duplicates(
    impl: type[AnyPairer], events: list[ScoreEvent], data: st.DataObject, bound: int
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=8)))
    whole, cut = impl(max_pending=bound), impl(max_pending=bound)
    assert collect([*_run(whole, events, []), whole.add_batch([], FAR)]) == collect(
        [*_run(cut, events, cuts), cut.add_batch([], FAR)]
    )


@settings(max_examples=60, deadline=None)
@given(events=streams_(), data=st.data(), bound=st.sampled_from([3, 10_000]))
@both
def test_accumulated_deltas_restore_a_pairer_that_continues_as_if_never_stopped(
    impl: type[AnyPairer], events: list[ScoreEvent], data: st.DataObject, bound: int
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    batches = [events[lo:hi] for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    crash = data.draw(st.integers(0, len(batches)))
    # Deltas are taken after some batches (not necessarily each); the crash follows a delta.
    takes = [*data.draw(st.lists(st.booleans(), min_size=crash, max_size=crash)), True]
    watermark = T0 - timedelta(days=1)
    reference = impl(max_pending=bound)
    stored: dict[str, bytes] = {}
    for batch, take in zip([*batches[:crash], []], takes, strict=True):
        watermark = max([watermark, *(e.ts for e in batch)])
        reference.add_batch(batch, watermark)
        if take:
            accumulate(stored, reference.state_delta())
            assert stored == reference.entries()
    restored = impl(max_pending=bound)
    restored.restore_entries(stored)
    assert restored.entries() == stored
    assert restored.pending == reference.pending and restored.watermark_s == reference.watermark_s
    for batch in [*batches[crash:], []]:
        watermark = max([watermark, *(e.ts for e in batch)]) if batch else FAR
        assert collect([restored.add_batch(batch, watermark)]) == collect([reference.add_batch(batch, watermark)])
        delta = reference.state_delta()
        assert restored.state_delta() == delta
        accumulate(stored, delta)
        assert stored == reference.entries()


@both
def test_a_delta_holds_only_what_the_batch_touched(impl: type[AnyPairer]) -> None:
    p = impl(join_window_s=3600)
    p.add_batch([ev(f"r{i}", "production", "v1", i * 0.01) for i in range(5000)], at(50))
    first = p.state_delta()
    assert len(first.upserts) == 5001 and not first.deletes  # every event plus the meta entry
    # Two pairs (their productions become open, the shadows are tombstones), one new half-pair.
    p.add_batch([ev("r1", "shadow", "v2", 60), ev("r2", "shadow", "v2", 60), ev("x", "shadow", "v2", 60)], at(60))
    delta = p.state_delta()
    assert set(delta.upserts) == {f"{seq:x}" for seq in (1, 2, 5000, 5001, 5002)} | {"m"}
    assert not delta.deletes
    # Expiry deletes exactly the expired events; one that came and went between deltas leaves no trace.
    p.add_batch([ev("y", "production", "v1", 3600.005)], at(3600.005))
    p.add_batch([], at(9000))
    delta = p.state_delta()
    assert len(delta.deletes) == 5003 and set(delta.upserts) == {"m"} and p.pending == 0
    assert p.state_delta() == StateDelta.empty()


@both
def test_entries_are_compact_json_arrays_and_bad_ones_are_refused_without_damage(impl: type[AnyPairer]) -> None:
    p = impl()
    p.add_batch([ev("r", "production", "v1", 0, features={"a": 1, "b": "z", "c": None})], at(0))
    p.add_batch([ev("q", "production", "v1", 1), ev("q", "shadow", "v2", 1, error="e")], at(1))
    entries = p.entries()
    assert orjson.loads(entries["m"]) == [2, E0 + 1, 3]
    assert orjson.loads(entries["0"]) == ["r", "m", "v1", 0, E0, 0, 0.5, 1.0, 0, {"a": 1, "b": "z", "c": None}]
    assert orjson.loads(entries["1"]) == ["q", "m", "v1", 0, E0 + 1, 1, 0.5, 1.0, 0, None]  # open production
    assert orjson.loads(entries["2"]) == ["q", "m", "v2", 1, E0 + 1, 2]  # tombstone: identity only
    meta = orjson.loads(entries["m"])
    bad = [
        {**entries, "0": b"\x80\x04pickle"},
        {**entries, "0": orjson.dumps({"r": 1})},
        {k: v for k, v in entries.items() if k != "m"},
        {**entries, "m": orjson.dumps([1, *meta[1:]])},  # another format version
        {**entries, "m": orjson.dumps([2, meta[1], 2])},  # next_seq below an entry's seq
        {**entries, "00": entries["0"]},  # non-canonical key
        {**entries, "zz": entries["0"]},
        {**entries, "0": orjson.dumps(["r", "m"])},
        {**entries, "0": orjson.dumps(["r", "m", "v1", 7, E0, 0, 0.5, 1.0, 0, None])},  # unknown role
        {**entries, "0": orjson.dumps(["r", "m", "v1", 0, E0, 0, 0.5, 1.0, True, None])},
    ]
    for data in bad:
        with pytest.raises(CheckpointError, match="shadowgate.pairer state") as info:
            p.restore_entries(data)
        assert isinstance(info.value, StoreError)
    assert p.entries() == entries
    res = p.add_batch([ev("r", "shadow", "v2", 1)], at(1))
    assert res.pairs[ComparisonKey("m", "v1", "v2", "shadow")].prod_features == [{"a": 1, "b": "z", "c": None}]
    fresh = impl()
    fresh.restore_entries({})
    assert fresh.entries() == {} and fresh.pending == 0


@both
def test_an_integer_feature_beyond_64_bits_is_kept_as_the_nearest_float(impl: type[AnyPairer]) -> None:
    big = 123456789012345678901234567890
    p = impl()
    p.add_batch([ev("r", "production", "v1", 0, features={"n": big, "k": 3})], at(0))
    stored: dict[str, bytes] = {}
    accumulate(stored, p.state_delta())
    restored = impl()
    restored.restore_entries(stored)
    # Running and restored pairer hold the same value from the delta on: their pairs agree.
    for pairer in (p, restored):
        cols = pairer.add_batch([ev("r", "shadow", "v2", 1)], at(1)).pairs[ComparisonKey("m", "v1", "v2", "shadow")]
        assert cols.prod_features == [{"n": float(big), "k": 3}]
