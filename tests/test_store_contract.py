"""One contract for every window store: the same tests run against the memory and the Redis backend."""

from __future__ import annotations

import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governance.errors import StoreError
from streams.state.memory_store import MemoryWindowStore
from streams.state.redis_store import RedisWindowStore
from streams.state.statelog import StateDelta, StateLog, encode_delta, pack_log
from streams.state.store import NO_FENCE, ComparisonMeta, Fence, FencedState, FenceState, SlotBatch, WindowStore
from streams.state.windows import DAY_S, HOUR_S, MINUTE_S, Granularity, Retention, Slot, slots_for

StoreFactory = Callable[[], WindowStore]
Event = tuple[int, dict[str, int]]  # (event time in epoch s, field increments)

FIELDS = ["n", "sa", "d:0", "d:7", "d:19", "h:p:3", "h:c:3", "lat:p:41"]
event_fields = st.dictionaries(st.sampled_from(FIELDS), st.integers(-(2**40), 2**40), min_size=1, max_size=len(FIELDS))


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Builds clients of ONE store: for Redis each call is a new client on the same keys."""
    opened: list[WindowStore] = []
    if request.param == "memory":
        shared = MemoryWindowStore()

        def make() -> WindowStore:
            return shared
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")

        def make() -> WindowStore:
            store = RedisWindowStore.from_url(url, prefix=prefix)
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> WindowStore:
    return store_factory()


def _cid() -> str:
    return f"m{uuid.uuid4().hex[:8]}|v1|v2|shadow"


def _now() -> int:
    # Wall clock: the Redis server expires keys by its own clock, so TTL tests must agree with it.
    return int(time.time())


def _batch(cid: str, events: list[Event], model: str = "fraud") -> SlotBatch:
    batch = SlotBatch()
    for ts, fields in events:
        for slot in slots_for(ts):
            batch.add(cid, slot, fields)
        batch.note(cid, model, ts * 1000, ts * 1000)
    return batch


def _oracle(events: list[Event], start_s: int, end_s: int) -> dict[str, int]:
    total: Counter[str] = Counter()
    for ts, fields in events:
        if start_s <= ts < end_s:
            total.update(fields)
    return {k: v for k, v in total.items() if v}


class TestWindowStoreContract:
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        events=st.lists(st.tuples(st.integers(0, 3 * HOUR_S), event_fields), min_size=1, max_size=30),
        cuts=st.lists(st.integers(0, 30), max_size=4),
        window=st.tuples(st.integers(0, 4 * HOUR_S), st.integers(0, 4 * HOUR_S)),
    )
    def test_read_equals_the_sum_of_increments_in_the_window(
        self,
        store: WindowStore,
        events: list[tuple[int, dict[str, int]]],
        cuts: list[int],
        window: tuple[int, int],
    ) -> None:
        now = _now()
        base = now - 4 * HOUR_S
        evs = [(base + dt, f) for dt, f in events]
        cid = _cid()  # one comparison per example: examples share the store
        bounds = [0, *sorted(set(cuts)), len(evs)]
        for offset, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
            assert store.apply(_batch(cid, evs[lo:hi]), Fence(cid, 0, offset))
        start, end = base + min(window), base + max(window)
        got = store.read(cid, start, end, now)
        assert got.fields == _oracle(evs, got.plan.start_s, got.plan.end_s)
        # Merging the planned slots equals merging the minute slots of the same range (the union).
        minutes = [Slot(Granularity.MINUTE, t) for t in range(got.plan.start_s, got.plan.end_s, MINUTE_S)]
        merged: Counter[str] = Counter()
        for fields in store.read_slots(cid, minutes, now).values():
            merged.update(fields)
        assert got.fields == {k: v for k, v in merged.items() if v}
        assert got.meta == ComparisonMeta("fraud", min(t for t, _ in evs) * 1000, max(t for t, _ in evs) * 1000)
        # Many windows in one read: each equals its own read.
        ranges = [(start, end), (base, now), (end - 300, end), (start, start)]
        assert store.read_many(cid, ranges, now) == [store.read(cid, lo, hi, now) for lo, hi in ranges]

    def test_read_many_sees_a_concurrent_batch_in_every_window_or_in_none(
        self, store_factory: StoreFactory
    ) -> None:
        cid, now = _cid(), _now()
        writer, reader = store_factory(), store_factory()
        batches = 300
        done = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for b in range(batches):
                    assert writer.apply(_batch(cid, [(now - 30, {"n": 1})]), Fence(cid, 0, b))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=write)
        thread.start()
        seen: list[tuple[int, int, int]] = []
        while not done.is_set():
            # Every event is in all three windows: a read split by an apply would show them unequal.
            reads = reader.read_many(cid, [(now - 300, now + 1), (now - DAY_S, now + 1), (now - 60, now + 1)], now)
            counts = [r.fields.get("n", 0) for r in reads]
            seen.append((counts[0], counts[1], counts[2]))
        thread.join(timeout=60)
        assert not errors, errors
        assert all(a == b == c for a, b, c in seen), [s for s in seen if len(set(s)) > 1][:5]
        assert [a for a, _, _ in seen] == sorted(a for a, _, _ in seen)
        assert reader.read_many(cid, [(now - 300, now + 1)], now)[0].fields["n"] == batches

    def test_read_batch_and_metas_equal_one_read_many_and_one_meta_per_comparison(
        self, store: WindowStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Small MULTIs for Redis: the batch is split over several, as a round of 1,000 comparisons is.
        monkeypatch.setattr("streams.state.redis_store._BATCH_COMMANDS", 5)
        now = _now()
        cids = [_cid() for _ in range(4)]
        for i, cid in enumerate(cids):
            events = [(now - 7200 + 37 * k * (i + 1), {"n": k + 1, "d:7": i - k}) for k in range(40)]
            assert store.apply(_batch(cid, [e for e in events if e[0] < now]), Fence(cid, 0, 1))
        unknown = _cid()
        requests = [
            (cids[0], ((now - 300, now + 1), (now - 7200, now + 1)), now),
            (cids[1], ((now - 3600, now - 60),), now),
            (unknown, ((now - 300, now + 1),), now),
            (cids[2], ((now - 7200, now + 1), (now - 60, now + 1), (now - 60, now + 1)), now),
            (cids[0], ((now - 300, now + 1), (now - 7200, now + 1)), now),  # twice
            (cids[3], (), now),
        ]
        assert store.read_batch(requests) == [store.read_many(cid, ranges, t) for cid, ranges, t in requests]
        assert store.read_batch([]) == []
        ids = [*cids, unknown, cids[1]]
        assert store.metas(ids) == [store.meta(cid) for cid in ids]
        assert store.metas(ids)[4] is None and store.metas([]) == []

    def test_read_batch_sees_a_concurrent_batch_in_every_window_of_a_request_or_in_none(
        self, store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("streams.state.redis_store._BATCH_COMMANDS", 8)
        cid, now = _cid(), _now()
        writer, reader = store_factory(), store_factory()
        batches = 150
        done = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for b in range(batches):
                    assert writer.apply(_batch(cid, [(now - 30, {"n": 1})]), Fence(cid, 0, b))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
                errors.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=write)
        thread.start()
        ranges = ((now - 300, now + 1), (now - DAY_S, now + 1), (now - 60, now + 1))
        seen: list[list[int]] = []
        while not done.is_set():
            for reads in reader.read_batch([(cid, ranges, now)] * 3):
                seen.append([r.fields.get("n", 0) for r in reads])
        thread.join(timeout=60)
        assert not errors, errors
        # Every event is in the three windows of a request: a request split by an apply would show them unequal.
        assert all(len(set(counts)) == 1 for counts in seen), [c for c in seen if len(set(c)) > 1][:5]
        assert reader.read_batch([(cid, ranges, now)])[0][0].fields["n"] == batches

    def test_fence_rejects_replays_and_older_offsets(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        batch = _batch(cid, [(now - 90, {"n": 3, "sa": 2**59 + 1})])
        assert store.apply(batch, Fence("g/scores", 0, 10))
        assert not store.apply(batch, Fence("g/scores", 0, 10))
        assert not store.apply(batch, Fence("g/scores", 0, 9))
        # Other partitions and other fence names are independent fences.
        assert store.apply(batch, Fence("g/scores", 1, 3))
        assert store.apply(batch, Fence("other/scores", 0, 3))
        got = store.read(cid, now - 600, now, now)
        assert got.fields == {"n": 9, "sa": 3 * (2**59 + 1)}  # exact beyond 2**53: never a float
        assert store.apply(batch, Fence("g/scores", 0, 11))
        assert store.read(cid, now - 600, now, now).fields["n"] == 12

    def test_checkpoint_is_stored_with_its_fence(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        name = f"g/{cid}"
        assert store.read_fence(name, 0) is None
        blob = bytes(range(256)) * 3
        assert store.apply(_batch(cid, [(now, {"n": 1})]), Fence(name, 0, 5), blob)
        assert store.read_fence(name, 0) == FenceState(5, blob)
        # A rejected batch changes neither the fence nor its checkpoint.
        assert not store.apply(_batch(cid, [(now, {"n": 1})]), Fence(name, 0, 5), b"other")
        assert store.read_fence(name, 0) == FenceState(5, blob)
        # No checkpoint with the new fence: the old one must not survive beside it.
        assert store.apply(SlotBatch(), Fence(name, 0, 6))
        assert store.read_fence(name, 0) == FenceState(6, None)
        assert store.apply(SlotBatch(), Fence(name, 0, 7), b"")
        assert store.read_fence(name, 0) == FenceState(7, b"")
        assert store.read_fence(name, 1) is None
        assert store.read(cid, now - 60, now + 1, now).fields == {"n": 1}

    @pytest.mark.parametrize(
        "bad",
        [{"n": 1.0}, {"n": True}, {"n": 2**63}, {"n": -(2**63) - 1}, {"": 1}, {"a\nb": 1}, {"n": "1"}],
        ids=["float", "bool", "2**63", "below-int64", "empty-name", "newline-name", "str"],
    )
    def test_a_bad_batch_applies_nothing(self, store: WindowStore, bad: dict[str, object]) -> None:
        cid, now = _cid(), _now()
        batch = _batch(cid, [(now, {"n": 1})])
        batch.increments[(cid, Granularity.MINUTE, now - now % MINUTE_S)].update(bad)  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="field|increment"):
            store.apply(batch, Fence(cid, 0, 1), b"x")
        assert store.read_fence(cid, 0) is None
        assert store.read(cid, now - 60, now + 1, now).fields == {}
        with pytest.raises(StoreError, match="comparison id"):
            store.apply(_batch("a{b}", [(now, {"n": 1})]), Fence(cid, 0, 1))
        with pytest.raises(StoreError, match="offset"):
            store.apply(SlotBatch(), Fence(cid, 0, -1))

    def test_a_batch_that_would_overflow_a_total_applies_nothing(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        big = 5 * 2**60  # twice this passes 2**63
        assert store.apply(_batch(cid, [(now, {"sa": big, "n": 1})]), Fence(cid, 0, 1), b"one")
        # Other slots of the batch would be fine; the one overflowing field must refuse them all.
        second = _batch(cid, [(now - 3 * HOUR_S, {"sa": 5, "new": 1}), (now, {"n": 1, "sa": big})])
        with pytest.raises(StoreError, match="64 bits"):
            store.apply(second, Fence(cid, 0, 2), b"two")
        assert store.read_fence(cid, 0) == FenceState(1, b"one")
        assert store.read(cid, now - 4 * HOUR_S, now + 1, now).fields == {"sa": big, "n": 1}
        assert store.read_slots(cid, slots_for(now - 3 * HOUR_S), now) == {
            s: {"sa": big, "n": 1} for s in slots_for(now - 3 * HOUR_S) if s in slots_for(now)
        }
        # Cancelling to zero leaves the field absent.
        assert store.apply(_batch(cid, [(now, {"sa": -big})]), Fence(cid, 0, 3))
        assert store.read(cid, now - 60, now + 1, now).fields == {"n": 1}

    def test_windows_merge_exactly_beyond_int64(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        near = 2**63 - 1
        events = [(now - d * DAY_S, {"sa": near, "ss": -near}) for d in range(1, 6)]  # one per day slot
        assert store.apply(_batch(cid, events), Fence(cid, 0, 1))
        got = store.read(cid, now - 6 * DAY_S, now, now)
        assert got.fields == {"sa": 5 * near, "ss": -5 * near}  # 5 * (2**63 - 1) > 2**63

    def test_concurrent_writers_give_exact_totals(self, store_factory: StoreFactory) -> None:
        cid, now = _cid(), _now()
        writers, batches = 4, 15
        plans = [
            [
                [(now - 60 * ((w + b + i) % 5), {"n": 1, f"d:{(w * b + i) % 7}": w + b + i}) for i in range(20)]
                for b in range(batches)
            ]
            for w in range(writers)
        ]
        stores = [store_factory() for _ in range(writers)]  # Redis: one client per writer
        barrier = threading.Barrier(writers)
        errors: list[BaseException] = []

        def write(w: int) -> None:
            try:
                barrier.wait()
                for b, events in enumerate(plans[w]):
                    assert stores[w].apply(_batch(cid, events), Fence(cid, w, b))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        every = [e for per_writer in plans for events in per_writer for e in events]
        got = store_factory().read(cid, now - 600, now + 1, now)
        assert got.fields == _oracle(every, got.plan.start_s, got.plan.end_s)
        assert got.fields["n"] == writers * batches * 20

    def test_writers_racing_with_the_same_fence_apply_it_once(self, store_factory: StoreFactory) -> None:
        cid, now = _cid(), _now()
        racers = 6
        stores = [store_factory() for _ in range(racers)]
        batch = _batch(cid, [(now, {"n": 7, "sa": 5})])
        barrier = threading.Barrier(racers)
        results: list[bool] = []
        lock = threading.Lock()

        def race(i: int) -> None:
            barrier.wait()
            applied = stores[i].apply(batch, Fence(cid, 0, 42), f"ck{i}".encode())
            with lock:
                results.append(applied)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(results) == [False] * (racers - 1) + [True]
        assert store_factory().read(cid, now - 60, now + 1, now).fields == {"n": 7, "sa": 5}
        state = store_factory().read_fence(cid, 0)
        assert (
            state is not None and state.offset == 42 and state.checkpoint in {f"ck{i}".encode() for i in range(racers)}
        )

    def test_slots_expire_by_granularity_retention(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        ret = Retention()
        ages = {"fresh": 90, "27h": 27 * HOUR_S, "16d": 16 * DAY_S, "36d": 36 * DAY_S}
        events = [(now - age, {"n": 1, "age": age}) for age in ages.values()]
        assert store.apply(_batch(cid, events), Fence(cid, 0, 1))
        for label, age in ages.items():
            slots = slots_for(now - age)
            got = store.read_slots(cid, slots, now)
            expected = {s for s in slots if now < s.end_s + ret.of(s.granularity)}
            assert set(got) == expected, label
            for fields in got.values():
                assert fields == {"n": 1, "age": age}
        # Read at a later now: the fresh minute slot has expired, its hour and day have not.
        later = now + 27 * HOUR_S
        fresh = slots_for(now - 90)
        assert set(store.read_slots(cid, fresh, later)) == set(fresh[1:])
        # The 24 h window cannot see the 27 h old event; 35 d of days no longer hold the 36 d old one.
        assert store.read(cid, now - DAY_S, now + 1, now).fields == {"n": 1, "age": 90}
        month = store.read(cid, now - 40 * DAY_S, now + 1, now)
        assert month.plan.older_edge == "clipped"
        assert month.fields == {"n": 3, "age": 90 + 27 * HOUR_S + 16 * DAY_S}

    def test_read_of_an_empty_range_or_unknown_comparison_is_empty(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        assert store.apply(_batch(cid, [(now - 30, {"n": 4})]), Fence(cid, 0, 1))
        empty = store.read(cid, now - 30, now - 30, now)
        assert empty.fields == {} and empty.plan.slots == ()
        assert store.read(cid, now - 3 * HOUR_S, now - 2 * HOUR_S, now).fields == {}
        unknown = store.read(_cid(), now - DAY_S, now, now)
        assert unknown.fields == {} and unknown.meta is None

    def test_fields_that_cancel_out_are_absent(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        assert store.apply(_batch(cid, [(now, {"ss": 5, "n": 1})]), Fence(cid, 0, 1))
        assert store.apply(_batch(cid, [(now, {"ss": -5, "n": 1})]), Fence(cid, 0, 2))
        assert store.read(cid, now - 60, now + 1, now).fields == {"n": 2}

    def test_state_is_applied_with_its_fence_and_a_refused_batch_leaves_it_untouched(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        name = f"g/{cid}"
        assert store.read_state(name, 0) == {}
        first = StateDelta({"p/0": b"[1]", "p/1": bytes(range(256)), "m": b""}, frozenset())
        assert store.apply(_batch(cid, [(now, {"n": 1})]), Fence(name, 0, 5), b"ck", first)
        assert store.read_state(name, 0) == first.upserts
        assert store.read_state(name, 1) == {} and store.read_state(f"{name}x", 0) == {}
        stale = StateDelta({"p/9": b"x"}, frozenset({"p/0"}))
        assert not store.apply(_batch(cid, [(now, {"n": 1})]), Fence(name, 0, 5), b"other", stale)
        assert not store.apply(SlotBatch(), Fence(name, 0, 3), None, stale)
        assert store.read_state(name, 0) == first.upserts
        assert store.read_fence(name, 0) == FenceState(5, b"ck")
        # state=None leaves the map as it is, while the fence and checkpoint move on.
        assert store.apply(SlotBatch(), Fence(name, 0, 6), b"ck6")
        assert store.read_state(name, 0) == first.upserts
        assert store.read(cid, now - 60, now + 1, now).fields == {"n": 1}

    def test_deletes_and_upserts_in_one_batch(self, store: WindowStore) -> None:
        name = f"g/{_cid()}"
        assert store.apply(
            SlotBatch(), Fence(name, 2, 1), None, StateDelta({"a": b"1", "b": b"2", "c": b"3"}, frozenset())
        )
        # Deletes go first: a key in both ends up set; deleting an absent key is harmless.
        both = StateDelta({"b": b"22", "d": b"4", "c": b"33"}, frozenset({"a", "c", "zz"}))
        assert store.apply(SlotBatch(), Fence(name, 2, 2), None, both)
        assert store.read_state(name, 2) == {"b": b"22", "c": b"33", "d": b"4"}
        assert store.apply(SlotBatch(), Fence(name, 2, 3), None, StateDelta({}, frozenset({"b", "c", "d"})))
        assert store.read_state(name, 2) == {}
        assert store.read_fence(name, 2) == FenceState(3, None)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        deltas=st.lists(
            st.tuples(
                st.dictionaries(st.sampled_from("abcdefgh"), st.binary(max_size=12), max_size=6),
                st.frozensets(st.sampled_from("abcdefgh"), max_size=4),
            ),
            max_size=8,
        )
    )
    def test_state_is_the_accumulation_of_applied_deltas(
        self, store: WindowStore, deltas: list[tuple[dict[str, bytes], frozenset[str]]]
    ) -> None:
        name = f"g/{_cid()}"
        oracle: dict[str, bytes] = {}
        for offset, (upserts, deletes) in enumerate(deltas, start=1):
            assert store.apply(SlotBatch(), Fence(name, 0, offset), None, StateDelta(upserts, deletes))
            oracle = {k: v for k, v in oracle.items() if k not in deletes} | upserts
            assert store.read_state(name, 0) == oracle

    def test_large_state_deltas_apply_whole(self, store: WindowStore) -> None:
        name, n = f"g/{_cid()}", 50_000
        big = StateDelta({f"p/{i:x}": b"[%d,0.125]" % i for i in range(n)}, frozenset())
        assert store.apply(SlotBatch(), Fence(name, 0, 1), b"ck", big)
        assert store.read_state(name, 0) == big.upserts
        # 50k deletes and 50k new upserts in one batch (more than any Lua stack takes in one unpack).
        swap = StateDelta({f"l/{i:x}": b"%d" % i for i in range(n)}, frozenset(big.upserts))
        assert store.apply(SlotBatch(), Fence(name, 0, 2), b"ck", swap)
        assert store.read_state(name, 0) == swap.upserts

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        deltas=st.lists(
            st.tuples(
                st.dictionaries(st.sampled_from(["p/a", "p/b", "l/c", "l/d", "m"]), st.binary(max_size=6), max_size=4),
                st.frozensets(st.sampled_from(["p/a", "p/b", "l/c", "l/d", "m"]), max_size=3),
                st.booleans(),
            ),
            max_size=8,
        )
    )
    def test_state_log_records_accumulate_and_a_replace_starts_over(
        self, store: WindowStore, deltas: list[tuple[dict[str, bytes], frozenset[str], bool]]
    ) -> None:
        name = f"g/{_cid()}"
        oracle: dict[str, bytes] = {}
        for offset, (upserts, deletes, replace) in enumerate(deltas, start=1):
            if replace:  # a compaction: the record is the whole state
                record, oracle = StateLog(encode_delta(StateDelta(upserts, frozenset())), replace=True), dict(upserts)
            else:
                # Two joins' records under their prefixes concatenate into one record.
                mine = StateDelta({k: v for k, v in upserts.items() if k.startswith("p/")}, deletes)
                theirs = StateDelta({k: v for k, v in upserts.items() if not k.startswith("p/")}, frozenset())
                record = StateLog(encode_delta(mine) + encode_delta(theirs))
                oracle = {k: v for k, v in oracle.items() if k not in deletes} | upserts
            assert store.apply(SlotBatch(), Fence(name, 0, offset), None, record)
            assert store.read_state(name, 0) == oracle

    def test_a_malformed_state_log_record_never_reads_back_as_state(self, store: WindowStore) -> None:
        # Stores keep a record whole and decode it when the state is read: then it is refused.
        name, truncated = f"g/{_cid()}", StateLog(b"U\x05\x00\x00\x00p/1")
        good = StateLog(encode_delta(StateDelta({"k": b"v"}, frozenset())))
        assert store.apply(SlotBatch(), Fence(name, 0, 1), None, good)
        assert store.apply(SlotBatch(), Fence(name, 0, 2), None, truncated)
        with pytest.raises(StoreError, match=r"record 1.*state log record malformed at byte 0 of 8: key runs past"):
            store.read_state(name, 0)

    def test_a_packed_record_is_its_plain_record(self, store: WindowStore) -> None:
        name = f"g/{_cid()}"
        big = StateDelta({f"p/{i:x}": b'["fraud-risk-%d","fraud-risk","1.5.0",1,%d.25,2]' % (i, i) for i in range(500)},
                         frozenset())  # fmt: skip
        packed = pack_log(encode_delta(big))
        assert packed[:1] == b"Z" and len(packed) < len(encode_delta(big)) / 3
        assert pack_log(b"U\x01\x00\x00\x00k\x00\x00\x00\x00") == b"U\x01\x00\x00\x00k\x00\x00\x00\x00"  # small: plain
        assert store.apply(SlotBatch(), Fence(name, 0, 1), None, StateLog(packed))
        assert store.read_state(name, 0) == big.upserts
        assert store.apply(SlotBatch(), Fence(name, 0, 2), None, StateLog(packed[:-9]))  # cut short
        with pytest.raises(StoreError, match="zstd frame does not decompress"):
            store.read_state(name, 0)

    def test_a_prefixed_record_is_the_delta_under_the_prefix(self, store: WindowStore) -> None:
        name = f"g/{_cid()}"
        assert store.apply(SlotBatch(), Fence(name, 0, 1), None, StateDelta({"p/1": b"x", "l/2": b"y"}, frozenset()))
        delta = StateDelta({"3": bytes(range(256)), "é": b""}, frozenset({"1"}))
        assert store.apply(SlotBatch(), Fence(name, 0, 2), None, StateLog(encode_delta(delta, "p/")))
        assert store.read_state(name, 0) == {"l/2": b"y", "p/3": bytes(range(256)), "p/é": b""}

    def test_apply_many_applies_every_partition_or_none(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        name = f"g/{cid}"
        one = _batch(cid, [(now, {"n": 3, "sa": 5})])
        logged = StateLog(encode_delta(StateDelta({"p/b": b"1"}, frozenset())))
        first = [
            FencedState(Fence(name, 0, 4, expected=NO_FENCE), b"c0", StateDelta({"p/a": b"0"}, frozenset())),
            FencedState(Fence(name, 1, 7, expected=NO_FENCE), None, logged),
        ]
        assert store.apply_many(one, first)
        assert store.read(cid, now - 60, now + 1, now).fields == {"n": 3, "sa": 5}  # once, not once per partition
        assert store.read_fence(name, 0) == FenceState(4, b"c0") and store.read_fence(name, 1) == FenceState(7, None)
        assert store.read_state(name, 0) == {"p/a": b"0"} and store.read_state(name, 1) == {"p/b": b"1"}
        # Partition 1's fence moved on (another worker): the whole apply is refused, partition 0's part too.
        assert store.apply(SlotBatch(), Fence(name, 1, 9, expected=7))
        stale = [
            FencedState(Fence(name, 0, 8, expected=4), b"c1", StateDelta({"p/x": b"x"}, frozenset())),
            FencedState(Fence(name, 1, 10, expected=7), b"c1", StateDelta({"p/y": b"y"}, frozenset())),
        ]
        assert not store.apply_many(one, stale)
        assert store.read(cid, now - 60, now + 1, now).fields == {"n": 3, "sa": 5}
        assert store.read_fence(name, 0) == FenceState(4, b"c0") and store.read_state(name, 0) == {"p/a": b"0"}
        assert store.read_fence(name, 1) == FenceState(9, None) and store.read_state(name, 1) == {"p/b": b"1"}
        with pytest.raises(StoreError, match="appears twice"):
            store.apply_many(one, [FencedState(Fence(name, 2, 1)), FencedState(Fence(name, 2, 2))])
        with pytest.raises(StoreError, match="at least one fence"):
            store.apply_many(one, [])
        assert store.read(cid, now - 60, now + 1, now).fields == {"n": 3, "sa": 5}

    def test_compare_and_set_fence(self, store: WindowStore) -> None:
        cid, now = _cid(), _now()
        name = f"g/{cid}"
        one = _batch(cid, [(now, {"n": 1})])
        # Expected "no fence yet" refuses once one is stored; expected must match the stored offset exactly,
        # even when the new offset is newer (a writer based on an older state must not add its delta).
        assert not store.apply(one, Fence(name, 0, 5, expected=2), b"x", StateDelta({"k": b"x"}, frozenset()))
        assert store.read_fence(name, 0) is None and store.read_state(name, 0) == {}
        assert store.apply(one, Fence(name, 0, 5, expected=NO_FENCE), b"a", StateDelta({"k": b"a"}, frozenset()))
        assert not store.apply(one, Fence(name, 0, 9, expected=NO_FENCE), b"b", StateDelta({"k": b"b"}, frozenset()))
        assert not store.apply(one, Fence(name, 0, 9, expected=4), b"b", StateDelta({"k": b"b"}, frozenset()))
        assert store.read_fence(name, 0) == FenceState(5, b"a") and store.read_state(name, 0) == {"k": b"a"}
        assert store.apply(one, Fence(name, 0, 9, expected=5), b"c", StateDelta({"k": b"c"}, frozenset()))
        # A retry of the same batch after an unknown outcome is refused: the fence has moved.
        assert not store.apply(one, Fence(name, 0, 9, expected=5), b"c", StateDelta({"k": b"c"}, frozenset()))
        assert store.read_fence(name, 0) == FenceState(9, b"c") and store.read_state(name, 0) == {"k": b"c"}
        assert store.read(cid, now - 60, now + 1, now).fields == {"n": 2}
        for bad in (9, 10, -2, 1.5):
            with pytest.raises(StoreError, match="expected"):
                store.apply(one, Fence(name, 0, 9, expected=bad))  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "bad",
        [
            StateDelta({"": b"x"}, frozenset()),
            StateDelta({"k": "text"}, frozenset()),  # type: ignore[dict-item]
            StateDelta({}, frozenset({""})),
            StateDelta({1: b"x"}, frozenset()),  # type: ignore[dict-item]
            {"k": b"x"},
        ],
        ids=["empty-key", "str-value", "empty-delete", "int-key", "not-a-delta"],
    )
    def test_a_bad_state_delta_applies_nothing(self, store: WindowStore, bad: StateDelta) -> None:
        cid, now = _cid(), _now()
        with pytest.raises(StoreError, match="state of fence"):
            store.apply(_batch(cid, [(now, {"n": 1})]), Fence(cid, 0, 1), b"x", bad)
        assert store.read_fence(cid, 0) is None and store.read_state(cid, 0) == {}
        assert store.read(cid, now - 60, now + 1, now).fields == {}

    def test_meta_and_comparisons(self, store: WindowStore) -> None:
        now = _now()
        model = f"model{uuid.uuid4().hex[:6]}"
        a, b = f"{model}|1|2|shadow", f"{model}|1|3|canary"
        assert store.apply(_batch(a, [(now - 50, {"n": 1}), (now - 10, {"n": 1})], model), Fence(a, 0, 1))
        assert store.apply(_batch(a, [(now - 70, {"n": 1})], model), Fence(a, 0, 2))
        assert store.apply(_batch(b, [(now - 5, {"n": 1})], model), Fence(a, 1, 1))
        assert store.read(a, now - 60, now, now).meta == ComparisonMeta(model, (now - 70) * 1000, (now - 10) * 1000)
        assert store.comparisons(model) == sorted([a, b])
        assert {a, b} <= set(store.comparisons())
        assert store.comparisons(f"{model}-unknown") == []


@pytest.mark.integration
class TestRedisLayout:
    """What the contract cannot see: the documented key layout and the server-side expiry."""

    def test_state_of_earlier_versions_is_read_under_the_log_and_a_compaction_replaces_both(
        self, redis_url: str, redis_prefix: str
    ) -> None:
        import redis

        client = redis.Redis.from_url(redis_url)
        store = RedisWindowStore(client, prefix=redis_prefix)
        # Earlier versions kept the entries in a hash; the log applies on top of it.
        client.hset(f"{redis_prefix}:state:g/o:0", mapping={"p/1": b"old", "p/2": b"two"})
        assert store.apply(SlotBatch(), Fence("g/o", 0, 1), None, StateDelta({"p/3": b"new"}, frozenset({"p/1"})))
        assert store.read_state("g/o", 0) == {"p/2": b"two", "p/3": b"new"}
        snapshot = StateLog(encode_delta(StateDelta({"p/2": b"two", "p/3": b"new"}, frozenset())), replace=True)
        assert store.apply(SlotBatch(), Fence("g/o", 0, 2), None, snapshot)
        assert not client.exists(f"{redis_prefix}:state:g/o:0")
        assert client.lrange(f"{redis_prefix}:slog:g/o:0", 0, -1) == [snapshot.blob]
        assert store.read_state("g/o", 0) == {"p/2": b"two", "p/3": b"new"}
        # A refused batch appends nothing.
        assert not store.apply(SlotBatch(), Fence("g/o", 0, 2), None, StateLog(b"D\x03\x00\x00\x00p/2"))
        assert client.llen(f"{redis_prefix}:slog:g/o:0") == 1

    def test_a_malformed_state_log_record_is_a_store_error_on_read(self, redis_url: str, redis_prefix: str) -> None:
        import redis

        client = redis.Redis.from_url(redis_url)
        store = RedisWindowStore(client, prefix=redis_prefix)
        assert store.apply(SlotBatch(), Fence("g/m", 0, 1), None, StateLog(b"U\x05\x00\x00\x00p/1"))
        with pytest.raises(StoreError, match=r"record 0 of .*slog:g/m:0: state log record malformed"):
            store.read_state("g/m", 0)

    def test_keys_and_server_expiry(self, redis_url: str, redis_prefix: str) -> None:
        import redis

        client = redis.Redis.from_url(redis_url)
        store = RedisWindowStore(client, prefix=redis_prefix)
        cid, now = _cid(), _now()
        ret = Retention()
        old = now - 27 * HOUR_S
        batch = _batch(cid, [(now, {"n": 1, "sa": -7}), (old, {"n": 1})], "fraud")
        assert store.apply(batch, Fence("g/t", 3, 8), b"c")
        assert client.hgetall(f"{redis_prefix}:fields:{{{cid}}}") == {b"n": b"0", b"sa": b"1"}
        for slot in slots_for(now):
            key = f"{redis_prefix}:w:{{{cid}}}:{slot.granularity.value}:{slot.start_s}"
            assert store.slot_key(cid, slot) == key
            assert client.execute_command("EXPIRETIME", key) == slot.end_s + ret.of(slot.granularity)
            # Big-endian int64 per field index; the old event is in other slots (>= 24 h older).
            assert client.get(key) == struct.pack(">qq", 1, -7)
        # The 27 h old minute slot was deleted by the server itself, not just hidden by the read.
        assert not client.exists(store.slot_key(cid, slots_for(old)[0]))
        assert client.exists(store.slot_key(cid, slots_for(old)[1]))
        assert client.hgetall(f"{redis_prefix}:fence:g/t:3") == {b"offset": b"8", b"checkpoint": b"c"}
        assert not client.exists(f"{redis_prefix}:slog:g/t:3")  # no state given, no key
        state = StateDelta({"p/1": b"[1]"}, frozenset())
        assert store.apply(SlotBatch(), Fence("g/t", 3, 9), None, state)
        # One record per batch, appended whole to the partition's state log.
        assert client.lrange(f"{redis_prefix}:slog:g/t:3", 0, -1) == [encode_delta(state)]
        assert client.ttl(f"{redis_prefix}:slog:g/t:3") == -1
        assert client.hgetall(f"{redis_prefix}:meta:{{{cid}}}") == {
            b"model": b"fraud",
            b"first_ms": str(old * 1000).encode(),
            b"last_ms": str(now * 1000).encode(),
        }
        assert client.smembers(f"{redis_prefix}:model:fraud") == {cid.encode()}
        assert client.ttl(f"{redis_prefix}:fence:g/t:3") == -1
        store.close()

    def test_a_window_of_old_events_reads_the_slots_the_server_kept(self, redis_url: str, redis_prefix: str) -> None:
        # A comparison whose traffic stopped 3 days ago: its windows are anchored at its newest event, but
        # the server has deleted its minute slots (26 h retention by the wall clock).
        import redis

        client = redis.Redis.from_url(redis_url)
        cid = _cid()
        # Half past an hour, so the window's end (the next minute) needs rounding to the hour, whatever the clock.
        anchor = _now() - 3 * DAY_S
        anchor = anchor - anchor % HOUR_S + HOUR_S // 2
        events = [(anchor - 60 * i, {"n": 1}) for i in range(5)]
        store = RedisWindowStore(client, prefix=redis_prefix)
        assert store.apply(_batch(cid, events), Fence(cid, 0, 1))
        assert not client.exists(store.slot_key(cid, slots_for(anchor)[0]))  # the minute slot is gone
        day = store.read(cid, anchor - DAY_S, anchor + 1, anchor)
        assert day.fields == {"n": 5}
        assert day.plan.newer_edge == "hour" and all(s.granularity is not Granularity.MINUTE for s in day.plan.slots)
        # Judged at the anchor alone, the plan would pick the deleted minute slots and read nothing.
        trusting = RedisWindowStore(client, prefix=redis_prefix, clock=lambda: 0.0)
        assert trusting.read(cid, anchor - DAY_S, anchor + 1, anchor).fields == {}
        store.close()

    def test_a_refused_batch_leaves_every_key_as_it_was(self, redis_url: str, redis_prefix: str) -> None:
        import redis

        client = redis.Redis.from_url(redis_url)
        store = RedisWindowStore(client, prefix=redis_prefix)
        cid, now = _cid(), _now()
        assert store.apply(_batch(cid, [(now, {"sa": 2**63 - 1})]), Fence("g", 0, 1))
        assert store.apply(SlotBatch(), Fence("g", 0, 2), None, StateDelta({"a": b"1"}, frozenset()))
        before = {k: (client.dump(k), client.pttl(k)) for k in client.scan_iter(match=f"{redis_prefix}*")}
        # A new field and a brand-new slot key are written first, then the day slot overflows.
        refused = _batch(cid, [(now - 2 * DAY_S, {"other": 1}), (now, {"new": 1, "sa": 1})])
        with pytest.raises(StoreError, match="OVERFLOW"):
            store.apply(refused, Fence("g", 0, 3), None, StateDelta({"b": b"2"}, frozenset({"a"})))
        after = {k: (client.dump(k), client.pttl(k)) for k in client.scan_iter(match=f"{redis_prefix}*")}
        assert after.keys() == before.keys()
        for key, (dump, pttl) in before.items():
            assert after[key][0] == dump, key
            assert abs(after[key][1] - pttl) < 5_000, key  # TTL kept (minus elapsed time)
        store.close()

    def test_a_cached_field_registry_learns_new_fields(self, redis_url: str, redis_prefix: str) -> None:
        reader = RedisWindowStore.from_url(redis_url, prefix=redis_prefix)
        writer = RedisWindowStore.from_url(redis_url, prefix=redis_prefix)
        cid, now = _cid(), _now()
        assert writer.apply(_batch(cid, [(now, {"n": 1})]), Fence(cid, 0, 1))
        assert reader.read(cid, now - 60, now + 1, now).fields == {"n": 1}
        assert writer.apply(_batch(cid, [(now, {"z": 4, "y": 2})]), Fence(cid, 0, 2))
        assert reader.read(cid, now - 60, now + 1, now).fields == {"n": 1, "z": 4, "y": 2}
        reader.close()
        writer.close()

    def test_refuses_a_decoding_client_and_a_braced_prefix(self, redis_url: str) -> None:
        import redis

        decoding = redis.Redis.from_url(redis_url, decode_responses=True)
        with pytest.raises(StoreError, match="decode_responses"):
            RedisWindowStore(decoding)  # type: ignore[arg-type]
        decoding.close()
        with pytest.raises(StoreError, match="prefix"):
            RedisWindowStore.from_url(redis_url, prefix="a{b}")


class TestMemoryBound:
    def test_a_replay_keeps_only_retained_slots(self) -> None:
        # Three days of event time, one event every 10 minutes: the store must not keep them all.
        store = MemoryWindowStore()
        t0 = 1_767_225_600
        for i in range(3 * 144):
            ts = t0 + 600 * i
            assert store.apply(_batch("c|1|2|shadow", [(ts, {"n": 1})]), Fence("replay", 0, i))
        last = t0 + 600 * (3 * 144 - 1)
        ret = Retention()
        alive = {
            s
            for i in range(3 * 144)
            for s in slots_for(t0 + 600 * i)
            if ret.expires_at_s(s) > last - last % MINUTE_S  # the watermark: newest slot start applied
        }
        assert store.slot_count() == len(alive) < 3 * 144
        assert store.expire(last + 40 * DAY_S) == len(alive)
        assert store.slot_count() == 0
