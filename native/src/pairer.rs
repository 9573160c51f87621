//! The event-time join of production with shadow/canary scores: `streams/pairing.py`'s `Pairer`, natively.
//!
//! Same rules, same output order and BYTE-IDENTICAL state entries (orjson's compact JSON), so a Python
//! worker and a native worker can take over each other's partitions. The Python module is the reference;
//! `tests/test_native_pairing.py` checks both give the same results and entries on random streams.
//!
//! Layout: remembered events ("halves") live in a slab (stable slot indices, reused through a free list);
//! per request id a [`Group`] holds the slots of its halves in arrival order; a min-heap of (ts, seq, slot)
//! gives expiry and eviction order. Change tracking since the last delta (dirty slots in first-change
//! order, seqs of dropped entries already in a delta) costs in proportion to the batch, never the state.
//!
//! `restore_entries` decodes entries with `orjson.loads` (the very parser the Python pairer uses, so both
//! accept the same bytes with the same error text) and validates the Python values exactly like
//! `_parse_half`/`load_meta`; it is not on the hot path.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString};

use crate::statelog::{BlobSink, PySink, Sink};
use crate::block::{
    self, ComparisonPairs, FeatureValue, Features, Pairs, ScoreBlock, ScoreRow, PRODUCTION, ROLE_NAMES,
};

const KIND: &str = "shadowgate.pairer";
const FORMAT_VERSION: i64 = 2;
const META_KEY: &str = "m";

const PENDING: u8 = 0; // waiting for a partner
const OPEN: u8 = 1; // a production that paired, kept open for a late second candidate
const DONE: u8 = 2; // a candidate that paired: a tombstone kept only to recognise duplicates

/// The request-id map's hasher: a folded multiply per 8 bytes under per-pairer random keys (several times
/// faster than SipHash on 36-character ids; the random keys keep colliding ids from being precomputed).
#[derive(Clone)]
struct Keys(u64, u64);

impl Keys {
    fn random() -> Self {
        let state = std::collections::hash_map::RandomState::new();
        Keys(state.hash_one(0x5eed_u64) | 1, state.hash_one(0xfeed_u64) | 1)
    }
}

fn fold(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

struct FoldHasher {
    h: u64,
    k: u64,
}

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.h;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            h = fold(h ^ u64::from_le_bytes(chunk.try_into().expect("8 bytes")), self.k);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            h = fold(h ^ u64::from_le_bytes(last), self.k ^ rest.len() as u64);
        }
        self.h = h;
    }

    fn write_u8(&mut self, i: u8) {
        self.h = fold(self.h ^ i as u64, self.k);
    }

    fn finish(&self) -> u64 {
        fold(self.h, self.k.rotate_left(29))
    }
}

impl BuildHasher for Keys {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher { h: self.0, k: self.1 }
    }
}

/// Request id -> index of its group in the group slab.
type Groups = HashMap<Arc<str>, u32, Keys>;

/// The halves of one request id (slots in arrival order) and the id itself.
struct GroupSlot {
    rid: Arc<str>,
    members: Group,
}

fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// One remembered event.
struct Half {
    /// Index of its request id's group in `NativePairer::gslab`.
    gid: u32,
    model: Arc<str>,
    version: Arc<str>,
    features: Option<Features>,
    ts: f64,
    score: f64,
    latency_ms: f64,
    seq: u64,
    role: u8,
    state: u8,
    error: bool,
    /// In the dirty list since the last delta.
    dirty: bool,
}

impl Half {
    fn retire(&mut self) {
        self.state = DONE;
        self.score = 0.0;
        self.latency_ms = 0.0;
        self.features = None;
    }
}

/// The slots of one request id's halves, in arrival order (almost always 1 to 3 of them).
enum Group {
    Inline(u8, [u32; 4]),
    Spilled(Vec<u32>),
}

impl Group {
    fn empty() -> Self {
        Group::Inline(0, [0; 4])
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Group::Inline(n, slots) => &slots[..*n as usize],
            Group::Spilled(v) => v,
        }
    }

    fn push(&mut self, slot: u32) {
        match self {
            Group::Inline(n, slots) if (*n as usize) < slots.len() => {
                slots[*n as usize] = slot;
                *n += 1;
            }
            Group::Inline(_, slots) => {
                let mut v = slots.to_vec();
                v.push(slot);
                *self = Group::Spilled(v);
            }
            Group::Spilled(v) => v.push(slot),
        }
    }

    /// Remove `slot`; true when the group is now empty.
    fn remove(&mut self, slot: u32) -> bool {
        match self {
            Group::Inline(n, slots) => {
                let len = *n as usize;
                if let Some(i) = slots[..len].iter().position(|&s| s == slot) {
                    slots.copy_within(i + 1..len, i);
                    *n -= 1;
                }
                *n == 0
            }
            Group::Spilled(v) => {
                if let Some(i) = v.iter().position(|&s| s == slot) {
                    v.remove(i);
                }
                v.is_empty()
            }
        }
    }
}

/// Heap key: (ts, seq) with Python's tuple order (ts are never NaN; -0.0 == 0.0 falls through to seq).
#[derive(Clone, Copy)]
struct Key {
    ts: f64,
    seq: u64,
    slot: u32,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.ts
            .partial_cmp(&other.ts)
            .unwrap_or(Ordering::Equal)
            .then(self.seq.cmp(&other.seq))
    }
}

/// The remembered halves by (ts, seq), smallest first: a sorted run for keys that arrive in order (the
/// usual case: ts rise with arrival, and seq always does), a binary heap for the others. Both push and
/// pop are O(1) on in-order traffic; the order is exactly the heap's.
#[derive(Default)]
struct Queue {
    run: VecDeque<Key>,
    heap: BinaryHeap<Reverse<Key>>,
}

impl Queue {
    fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    fn push(&mut self, key: Key) {
        match self.run.back() {
            Some(last) if key < *last => self.heap.push(Reverse(key)),
            _ => self.run.push_back(key),
        }
    }

    fn peek(&self) -> Option<Key> {
        match (self.run.front(), self.heap.peek()) {
            (Some(a), Some(Reverse(b))) => Some(if a < b { *a } else { *b }),
            (Some(a), None) => Some(*a),
            (None, Some(Reverse(b))) => Some(*b),
            (None, None) => None,
        }
    }

    fn pop(&mut self) -> Option<Key> {
        match (self.run.front(), self.heap.peek()) {
            (Some(a), Some(Reverse(b))) if b < a => self.heap.pop().map(|Reverse(k)| k),
            (Some(_), _) => self.run.pop_front(),
            (None, _) => self.heap.pop().map(|Reverse(k)| k),
        }
    }

    /// All keys at once (restore).
    fn from_sorted(keys: Vec<Key>) -> Self {
        Queue {
            run: keys.into(),
            heap: BinaryHeap::new(),
        }
    }
}

/// One side's (model, version, role) outputs of one call, in production order.
struct SideAcc {
    model: Arc<str>,
    version: Arc<str>,
    role: u8,
    ts: Vec<f64>,
    errors: Vec<bool>,
}

#[derive(Default)]
struct Sides(Vec<SideAcc>);

impl Sides {
    fn get(&mut self, model: &Arc<str>, version: &Arc<str>, role: u8) -> &mut SideAcc {
        let i = match self
            .0
            .iter()
            .position(|s| s.role == role && same(&s.model, model) && same(&s.version, version))
        {
            Some(i) => i,
            None => {
                self.0.push(SideAcc {
                    model: model.clone(),
                    version: version.clone(),
                    role,
                    ts: Vec::new(),
                    errors: Vec::new(),
                });
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    fn push(&mut self, model: &Arc<str>, version: &Arc<str>, role: u8, ts: f64) {
        self.get(model, version, role).ts.push(ts);
    }

    fn push_error(&mut self, model: &Arc<str>, version: &Arc<str>, role: u8, ts: f64, error: bool) {
        let side = self.get(model, version, role);
        side.ts.push(ts);
        side.errors.push(error);
    }

    fn to_py(&self, py: Python<'_>) -> PyObject {
        let items: Vec<PyObject> = self
            .0
            .iter()
            .map(|s| {
                (
                    s.model.as_ref(),
                    s.version.as_ref(),
                    ROLE_NAMES[s.role as usize],
                    block::f64_bytes(py, &s.ts),
                )
                    .into_py(py)
            })
            .collect();
        PyList::new_bound(py, items).into_any().unbind()
    }
}

/// One side of a pair being emitted.
#[derive(Clone, Copy)]
struct PairSide<'a> {
    version: &'a Arc<str>,
    role: u8,
    ts: f64,
    score: f64,
    latency_ms: f64,
    error: bool,
}

impl<'a> PairSide<'a> {
    /// The side a remembered half brings to a pair.
    fn of(h: &'a Half) -> Self {
        PairSide { version: &h.version, role: h.role, ts: h.ts, score: h.score, latency_ms: h.latency_ms, error: h.error }
    }
}

/// Per-call accumulator.
#[derive(Default)]
struct Out {
    comparisons: Vec<ComparisonPairs>,
    last: usize,
    /// Rows a new comparison reserves room for (half the call's events: at most one pair per two).
    expected: usize,
    orphans: Sides,
    evicted: Sides,
    late: Sides,
    duplicates: Sides,
    forgotten: u64,
}

impl Out {
    fn orphan(&mut self, h: &Half) {
        self.orphans.push_error(&h.model, &h.version, h.role, h.ts, h.error);
    }

    #[allow(clippy::too_many_arguments)]
    fn pair(
        &mut self,
        rid: &str,
        model: &Arc<str>,
        prod: PairSide<'_>,
        cand: PairSide<'_>,
        prod_features: Option<Features>,
        cand_features: Option<Features>,
    ) {
        let hit = |c: &ComparisonPairs| {
            c.role == cand.role
                && same(&c.model, model)
                && same(&c.production_version, prod.version)
                && same(&c.candidate_version, cand.version)
        };
        let i = if self.last < self.comparisons.len() && hit(&self.comparisons[self.last]) {
            self.last
        } else {
            match self.comparisons.iter().position(hit) {
                Some(i) => i,
                None => {
                    let mut c =
                        ComparisonPairs::new(model.clone(), prod.version.clone(), cand.version.clone(), cand.role);
                    let n = self.expected;
                    c.request_ids.reserve(n);
                    c.prod_score.reserve(n);
                    c.cand_score.reserve(n);
                    c.prod_latency_ms.reserve(n);
                    c.cand_latency_ms.reserve(n);
                    c.prod_error.reserve(n);
                    c.cand_error.reserve(n);
                    c.ts.reserve(n);
                    c.prod_features.reserve(n);
                    c.cand_features.reserve(n);
                    self.comparisons.push(c);
                    self.comparisons.len() - 1
                }
            }
        };
        self.last = i;
        let c = &mut self.comparisons[i];
        c.request_ids.push(rid.into());
        c.prod_score.push(prod.score);
        c.cand_score.push(cand.score);
        c.prod_latency_ms.push(prod.latency_ms);
        c.cand_latency_ms.push(cand.latency_ms);
        c.prod_error.push(prod.error);
        c.cand_error.push(cand.error);
        c.ts.push(if prod.ts > cand.ts { prod.ts } else { cand.ts });
        c.prod_features.push(prod_features);
        c.cand_features.push(cand_features);
    }
}

/// What one `add_batch` produced (see `PairingResult` in `streams/pairing.py`): the pairs as a `Pairs`
/// the label joiner takes directly, per-side outputs as lists of (model, version, role, ts as float64
/// bytes), the orphans' error flags as uint8 bytes aligned with `orphans`.
#[pyclass(frozen, module = "streams._native")]
pub struct PairingOut {
    #[pyo3(get)]
    pairs: Py<Pairs>,
    orphans: Sides,
    evicted: Sides,
    late: Sides,
    duplicates: Sides,
    #[pyo3(get)]
    forgotten: u64,
    #[pyo3(get)]
    watermark_s: Option<f64>,
}

#[pymethods]
impl PairingOut {
    #[getter]
    fn orphans(&self, py: Python<'_>) -> PyObject {
        self.orphans.to_py(py)
    }

    #[getter]
    fn orphan_errors(&self, py: Python<'_>) -> PyObject {
        let items: Vec<Bound<'_, PyBytes>> = self
            .orphans
            .0
            .iter()
            .map(|s| block::bool_bytes(py, &s.errors))
            .collect();
        PyList::new_bound(py, items).into_any().unbind()
    }

    #[getter]
    fn evicted(&self, py: Python<'_>) -> PyObject {
        self.evicted.to_py(py)
    }

    #[getter]
    fn late(&self, py: Python<'_>) -> PyObject {
        self.late.to_py(py)
    }

    #[getter]
    fn duplicates(&self, py: Python<'_>) -> PyObject {
        self.duplicates.to_py(py)
    }

    #[getter]
    fn pair_count(&self) -> usize {
        self.pairs.get().comparisons.iter().map(ComparisonPairs::len).sum()
    }
}

/// The pairer of one partition (see `streams/pairing.py`). Not thread-safe: one per partition.
#[pyclass(module = "streams._native")]
pub struct NativePairer {
    window_s: f64,
    max_pending: usize,
    w: f64,
    seq: u64,
    slots: Vec<Option<Half>>,
    free: Vec<u32>,
    groups: Groups,
    gslab: Vec<Option<GroupSlot>>,
    gfree: Vec<u32>,
    heap: Queue,
    /// (seq, slot) in first-change order since the last delta; entries of dropped halves go stale.
    dirty: Vec<(u64, u32)>,
    /// Seqs of dropped halves that were in a delta.
    gone: Vec<u64>,
    synced_seq: u64,
    synced_meta: (f64, u64),
    buf: Vec<u8>,
}

fn py_repr(value: &Bound<'_, PyAny>) -> String {
    value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unrepresentable>".to_owned())
}

/// `f"{value!r:.80}"`
fn repr80(value: &Bound<'_, PyAny>) -> String {
    py_repr(value).chars().take(80).collect()
}

fn err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

impl NativePairer {
    fn clear(&mut self) {
        self.w = f64::NEG_INFINITY;
        self.seq = 0;
        self.slots = Vec::new();
        self.free = Vec::new();
        self.groups = HashMap::with_hasher(Keys::random());
        self.gslab = Vec::new();
        self.gfree = Vec::new();
        self.heap = Queue::default();
        self.dirty = Vec::new();
        self.gone = Vec::new();
        self.synced_seq = 0;
        self.synced_meta = (f64::NEG_INFINITY, 0);
    }

    fn half(&self, slot: u32) -> &Half {
        self.slots[slot as usize].as_ref().expect("live slot")
    }

    fn store(&mut self, half: Half) -> u32 {
        slab_insert(&mut self.slots, &mut self.free, half)
    }

    /// A group for a new request id (the caller maps the id to it).
    fn new_group(&mut self, rid: Arc<str>) -> u32 {
        let group = GroupSlot {
            rid,
            members: Group::empty(),
        };
        slab_insert(&mut self.gslab, &mut self.gfree, group)
    }

    fn rid(&self, h: &Half) -> &str {
        &self.gslab[h.gid as usize].as_ref().expect("live group").rid
    }

    fn mark(dirty: &mut Vec<(u64, u32)>, h: &mut Half, slot: u32) {
        if !h.dirty {
            h.dirty = true;
            dirty.push((h.seq, slot));
        }
    }

    fn add(&mut self, row: &ScoreRow, out: &mut Out) {
        let ts = row.ts;
        if ts > self.w {
            self.w = ts;
            self.expire(out);
        }
        if ts < self.w - self.window_s {
            out.late.push(&row.model, &row.version, row.role, ts);
            out.orphans
                .push_error(&row.model, &row.version, row.role, ts, row.error);
            return;
        }
        let seq = self.seq;
        let mut state = PENDING;
        let mut keep_features = true;
        let slots = &mut self.slots;
        let gid = self.groups.get(&*row.request_id).copied();
        if let Some(gid) = gid {
            let members = self.gslab[gid as usize]
                .as_ref()
                .expect("live group")
                .members
                .as_slice();
            for &slot in members {
                let o = slots[slot as usize].as_ref().expect("live slot");
                if o.role == row.role && same(&o.model, &row.model) && same(&o.version, &row.version) {
                    out.duplicates.push(&row.model, &row.version, row.role, ts);
                    return;
                }
            }
            let me = PairSide {
                version: &row.version,
                role: row.role,
                ts,
                score: row.score,
                latency_ms: row.latency_ms,
                error: row.error,
            };
            if row.role == PRODUCTION {
                for &slot in members {
                    let o = slots[slot as usize].as_mut().expect("live slot");
                    if o.state == PENDING && o.role != PRODUCTION && same(&o.model, &row.model) {
                        let cand_features = o.features.take();
                        let cand = PairSide::of(o);
                        out.pair(
                            &row.request_id,
                            &row.model,
                            me,
                            cand,
                            row.features.clone(),
                            cand_features,
                        );
                        o.retire();
                        Self::mark(&mut self.dirty, o, slot);
                        state = OPEN;
                    }
                }
            } else {
                for &slot in members {
                    let o = slots[slot as usize].as_mut().expect("live slot");
                    if o.role == PRODUCTION && same(&o.model, &row.model) {
                        let prod = PairSide::of(o);
                        out.pair(
                            &row.request_id,
                            &row.model,
                            prod,
                            me,
                            o.features.clone(),
                            row.features.clone(),
                        );
                        if o.state != OPEN {
                            o.state = OPEN;
                            Self::mark(&mut self.dirty, o, slot);
                        }
                        state = DONE;
                        keep_features = false;
                        break;
                    }
                }
            }
        }
        let gid = match gid {
            Some(gid) => gid,
            None => {
                let rid: Arc<str> = Arc::from(&*row.request_id);
                let gid = self.new_group(rid.clone());
                self.groups.insert(rid, gid);
                gid
            }
        };
        let done = state == DONE;
        let half = Half {
            gid,
            model: row.model.clone(),
            version: row.version.clone(),
            features: if keep_features { row.features.clone() } else { None },
            ts,
            score: if done { 0.0 } else { row.score },
            latency_ms: if done { 0.0 } else { row.latency_ms },
            seq,
            role: row.role,
            state,
            error: row.error,
            dirty: true,
        };
        let slot = self.store(half);
        self.gslab[gid as usize]
            .as_mut()
            .expect("live group")
            .members
            .push(slot);
        self.heap.push(Key { ts, seq, slot });
        self.dirty.push((seq, slot));
        self.seq += 1;
        if self.heap.len() > self.max_pending {
            self.evict(out);
        }
    }

    fn expire(&mut self, out: &mut Out) {
        let cutoff = self.w - self.window_s;
        while let Some(top) = self.heap.peek() {
            // `ts >= cutoff` keeps it (Python's `while heap[0][0] < cutoff`; ts are never NaN)
            if top.ts >= cutoff {
                break;
            }
            let slot = top.slot;
            self.heap.pop();
            self.drop_half(slot, out, false);
        }
    }

    fn evict(&mut self, out: &mut Out) {
        if let Some(top) = self.heap.pop() {
            self.drop_half(top.slot, out, true);
        }
    }

    fn drop_half(&mut self, slot: u32, out: &mut Out, evicted: bool) {
        let half = self.slots[slot as usize].take().expect("live slot");
        self.free.push(slot);
        let gid = half.gid as usize;
        if self.gslab[gid].as_mut().expect("live group").members.remove(slot) {
            let group = self.gslab[gid].take().expect("live group");
            self.groups.remove(&*group.rid);
            self.gfree.push(half.gid);
        }
        if half.seq < self.synced_seq {
            self.gone.push(half.seq);
        }
        if half.state == PENDING {
            out.orphan(&half);
            if evicted {
                out.evicted.push(&half.model, &half.version, half.role, half.ts);
            }
        } else if evicted {
            out.forgotten += 1;
        }
        // Stale dirty entries pile up only between deltas; keep them proportional to what is remembered.
        if self.dirty.len() > 2 * self.heap.len() + 4096 {
            let slots = &self.slots;
            self.dirty
                .retain(|&(seq, slot)| matches!(&slots[slot as usize], Some(h) if h.seq == seq));
        }
    }

    fn encode(buf: &mut Vec<u8>, h: &Half, rid: &str) {
        buf.clear();
        buf.push(b'[');
        write_str(buf, rid);
        buf.push(b',');
        write_str(buf, &h.model);
        buf.push(b',');
        write_str(buf, &h.version);
        buf.push(b',');
        buf.push(b'0' + h.role);
        buf.push(b',');
        write_f64(buf, h.ts);
        buf.push(b',');
        buf.push(b'0' + h.state);
        if h.state != DONE {
            buf.push(b',');
            write_f64(buf, h.score);
            buf.push(b',');
            write_f64(buf, h.latency_ms);
            buf.push(b',');
            buf.push(if h.error { b'1' } else { b'0' });
            buf.push(b',');
            write_features(buf, &h.features);
        }
        buf.push(b']');
    }

    fn meta(&mut self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(40);
        buf.extend_from_slice(b"[2,");
        if self.w == f64::NEG_INFINITY {
            buf.extend_from_slice(b"null");
        } else {
            write_f64(&mut buf, self.w);
        }
        buf.push(b',');
        buf.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        buf.push(b']');
        buf
    }

    fn result(&self, py: Python<'_>, out: Out) -> PyResult<PairingOut> {
        Ok(PairingOut {
            pairs: Py::new(
                py,
                Pairs {
                    comparisons: out.comparisons,
                },
            )?,
            orphans: out.orphans,
            evicted: out.evicted,
            late: out.late,
            duplicates: out.duplicates,
            forgotten: out.forgotten,
            watermark_s: self.watermark(),
        })
    }

    fn watermark(&self) -> Option<f64> {
        if self.w == f64::NEG_INFINITY {
            None
        } else {
            Some(self.w)
        }
    }
}

impl NativePairer {
    /// `add_batch` without the interpreter: every row of `blocks` in order, then the watermark raised to
    /// `now_s` and the bound enforced.
    fn add_rows(&mut self, blocks: &[&ScoreBlock], now_s: f64) -> Out {
        let mut out = Out { expected: blocks.iter().map(|b| b.rows.len()).sum::<usize>() / 2, ..Out::default() };
        for b in blocks {
            for row in &b.rows {
                self.add(row, &mut out);
            }
        }
        if now_s > self.w {
            self.w = now_s;
            self.expire(&mut out);
        }
        while self.heap.len() > self.max_pending {
            self.evict(&mut out);
        }
        out
    }

    /// Write the changes since the previous delta to `sink` and restart the tracking.
    fn delta_into(&mut self, sink: &mut impl Sink) -> PyResult<()> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut buf = std::mem::take(&mut self.buf);
        let mut key = [0u8; 16];
        for &(seq, slot) in &dirty {
            if let Some(h) = self.slots[slot as usize].as_mut() {
                if h.seq == seq && h.dirty {
                    h.dirty = false;
                    let rid = &self.gslab[h.gid as usize].as_ref().expect("live group").rid;
                    Self::encode(&mut buf, h, rid);
                    sink.upsert(hex(&mut key, seq), &buf)?;
                }
            }
        }
        self.buf = buf;
        let meta = (self.w, self.seq);
        if meta != self.synced_meta {
            sink.upsert(META_KEY, &self.meta())?;
        }
        for &seq in &self.gone {
            sink.delete(hex(&mut key, seq))?;
        }
        self.gone.clear();
        let mut dirty = dirty;
        dirty.clear();
        self.dirty = dirty;
        self.synced_seq = self.seq;
        self.synced_meta = meta;
        Ok(())
    }

    fn entries_into(&mut self, sink: &mut impl Sink) -> PyResult<()> {
        let mut live: Vec<(u64, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, h)| h.as_ref().map(|h| (h.seq, slot as u32)))
            .collect();
        live.sort_unstable();
        let mut buf = std::mem::take(&mut self.buf);
        let mut key = [0u8; 16];
        for (seq, slot) in live {
            let h = self.half(slot);
            Self::encode(&mut buf, h, self.rid(h));
            sink.upsert(hex(&mut key, seq), &buf)?;
        }
        self.buf = buf;
        if (self.w, self.seq) != (f64::NEG_INFINITY, 0) {
            sink.upsert(META_KEY, &self.meta())?;
        }
        Ok(())
    }
}

#[pymethods]
impl NativePairer {
    #[new]
    #[pyo3(signature = (join_window_s = None, max_pending = None))]
    fn new(join_window_s: Option<&Bound<'_, PyAny>>, max_pending: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let window: f64 = join_window_s.map_or(Ok(60.0), |v| v.extract())?;
        if !window.is_finite() || window <= 0.0 {
            let shown = join_window_s.map_or_else(|| window.to_string(), py_repr);
            return Err(err(format!("join_window_s={shown}: must be a finite number > 0")));
        }
        let bound: i64 = max_pending.map_or(Ok(200_000), |v| v.extract())?;
        if bound < 1 {
            let shown = max_pending.map_or_else(|| bound.to_string(), py_repr);
            return Err(err(format!("max_pending={shown}: must be an integer >= 1")));
        }
        let mut pairer = NativePairer {
            window_s: window,
            max_pending: usize::try_from(bound).unwrap_or(usize::MAX),
            w: f64::NEG_INFINITY,
            seq: 0,
            slots: Vec::new(),
            free: Vec::new(),
            groups: HashMap::with_hasher(Keys::random()),
            gslab: Vec::new(),
            gfree: Vec::new(),
            heap: Queue::default(),
            dirty: Vec::new(),
            gone: Vec::new(),
            synced_seq: 0,
            synced_meta: (f64::NEG_INFINITY, 0),
            buf: Vec::with_capacity(256),
        };
        pairer.clear();
        Ok(pairer)
    }

    #[getter]
    fn join_window_s(&self) -> f64 {
        self.window_s
    }

    /// Events remembered now (waiting, open productions and paired tombstones).
    #[getter]
    fn pending(&self) -> usize {
        self.heap.len()
    }

    #[getter]
    fn watermark_s(&self) -> Option<f64> {
        self.watermark()
    }

    /// All rows of `blocks` in order, then the watermark raised to `now_s` (the partition's max ts) and
    /// the bound applied: `Pairer.add_batch`.
    fn add_batch(&mut self, py: Python<'_>, blocks: Vec<Bound<'_, ScoreBlock>>, now_s: f64) -> PyResult<PairingOut> {
        let rows: Vec<&ScoreBlock> = blocks.iter().map(|b| b.get()).collect();
        // The join touches no Python object: other threads (Faust's event loop) run meanwhile.
        let out = py.allow_threads(|| self.add_rows(&rows, now_s));
        self.result(py, out)
    }

    /// (upserts, deletes) since the previous call (or restore): `Pairer.state_delta`.
    fn state_delta<'py>(&mut self, py: Python<'py>) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let mut sink = PySink::new(py);
        self.delta_into(&mut sink)?;
        Ok((sink.upserts, sink.deletes))
    }

    /// The same delta as one state log record, every key under `prefix` (`streams/joinstate.py`).
    fn state_delta_blob<'py>(&mut self, py: Python<'py>, prefix: &str) -> PyResult<Bound<'py, PyBytes>> {
        let mut sink = BlobSink::new(prefix);
        self.delta_into(&mut sink)?;
        Ok(sink.finish(py))
    }

    /// The whole state as entries (items in seq order, then the meta entry): `Pairer.entries`.
    fn entries<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut sink = PySink::new(py);
        self.entries_into(&mut sink)?;
        Ok(sink.upserts)
    }

    /// The whole state as one state log record of upserts, every key under `prefix`.
    fn entries_blob<'py>(&mut self, py: Python<'py>, prefix: &str) -> PyResult<Bound<'py, PyBytes>> {
        let mut sink = BlobSink::new(prefix);
        self.entries_into(&mut sink)?;
        Ok(sink.finish(py))
    }

    /// Replace the whole state by accumulated entries; on any error (ValueError with the message of the
    /// Python pairer's CheckpointError) the current state is kept: `Pairer.restore_entries`.
    fn restore_entries(&mut self, py: Python<'_>, entries: &Bound<'_, PyDict>) -> PyResult<()> {
        let Some((watermark, next_seq)) = load_meta(py, entries)? else {
            self.clear();
            return Ok(());
        };
        let mut halves: Vec<(Half, String)> = Vec::new();
        for (key, raw) in entries.iter() {
            let key_str: String = key.extract()?;
            if key_str == META_KEY {
                continue;
            }
            let seq = parse_seq(&key, &key_str)?;
            if seq.is_none_or(|s| s >= next_seq) {
                let shown = match seq {
                    Some(s) => s.to_string(),
                    None => py.eval_bound(&format!("int({key_str:?}, 16)"), None, None)?.to_string(),
                };
                return Err(err(format!(
                    "{KIND} state entry {}: seq {shown} is not below next_seq {next_seq}",
                    py_repr(&key)
                )));
            }
            let doc = load_entry(py, &key, &raw)?;
            halves.push(parse_half(&key, seq.unwrap_or_default(), &doc)?);
        }
        halves.sort_unstable_by_key(|(h, _)| h.seq);
        self.clear();
        self.w = watermark;
        self.seq = next_seq;
        let mut heap = Vec::with_capacity(halves.len());
        for (mut half, rid) in halves {
            let (ts, seq) = (half.ts, half.seq);
            half.gid = match self.groups.get(&*rid) {
                Some(&gid) => gid,
                None => {
                    let rid: Arc<str> = Arc::from(rid);
                    let gid = self.new_group(rid.clone());
                    self.groups.insert(rid, gid);
                    gid
                }
            };
            let gid = half.gid as usize;
            let slot = self.store(half);
            self.gslab[gid].as_mut().expect("live group").members.push(slot);
            heap.push(Key { ts, seq, slot });
        }
        heap.sort_unstable();
        self.heap = Queue::from_sorted(heap);
        self.synced_seq = next_seq;
        self.synced_meta = (watermark, next_seq);
        Ok(())
    }
}

// --- restore: validation exactly as streams/joinstate.py and streams/pairing.py do it ---------------

fn orjson<'py>(py: Python<'py>) -> PyResult<&'py Bound<'py, PyAny>> {
    static MODULE: GILOnceCell<Py<PyModule>> = GILOnceCell::new();
    Ok(MODULE
        .get_or_try_init(py, || py.import_bound("orjson").map(Bound::unbind))?
        .bind(py)
        .as_any())
}

/// `load_entry`: one entry's JSON array.
fn load_entry<'py>(py: Python<'py>, key: &Bound<'py, PyAny>, raw: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let module = orjson(py)?;
    let doc = match module.getattr("loads")?.call1((raw,)) {
        Ok(doc) => doc,
        Err(e) => {
            let decode_error = module.getattr("JSONDecodeError")?;
            if e.is_instance_bound(py, &decode_error) {
                return Err(err(format!(
                    "{KIND} state entry {} is not valid JSON: {}",
                    py_repr(key),
                    e.value_bound(py).str()?
                )));
            }
            return Err(e);
        }
    };
    match doc.downcast_into::<PyList>() {
        Ok(list) => Ok(list),
        Err(e) => {
            let doc = e.into_inner();
            Err(err(format!(
                "{KIND} state entry {} must be a JSON array, got {}",
                py_repr(key),
                doc.get_type().qualname()?
            )))
        }
    }
}

fn is_int(v: &Bound<'_, PyAny>) -> bool {
    v.is_instance_of::<PyInt>() && !v.is_instance_of::<PyBool>()
}

fn is_num(v: &Bound<'_, PyAny>) -> bool {
    (v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>()) && !v.is_instance_of::<PyBool>()
}

/// An int value in `allowed` (the `v not in (...) or not is_int(v)` checks).
fn int_in(v: &Bound<'_, PyAny>, allowed: &[i64]) -> bool {
    is_int(v) && v.extract::<i64>().is_ok_and(|x| allowed.contains(&x))
}

/// `load_meta`: (watermark_s, next_seq), or None for an empty state.
fn load_meta(py: Python<'_>, entries: &Bound<'_, PyDict>) -> PyResult<Option<(f64, u64)>> {
    let Some(raw) = entries.get_item(META_KEY)? else {
        if !entries.is_empty() {
            return Err(err(format!(
                "{KIND} state: {} entries but no meta entry 'm'",
                entries.len()
            )));
        }
        return Ok(None);
    };
    let key = PyString::new_bound(py, META_KEY);
    let doc = load_entry(py, key.as_any(), &raw)?;
    if doc.len() != 3 || doc.get_item(0)?.ne(FORMAT_VERSION)? {
        return Err(err(format!(
            "{KIND} state meta {}: expected [{FORMAT_VERSION}, watermark_s, next_seq] \
             (this build reads format version {FORMAT_VERSION})",
            repr80(doc.as_any())
        )));
    }
    let watermark = doc.get_item(1)?;
    let next_seq = doc.get_item(2)?;
    let bad = !(watermark.is_none() || is_num(&watermark)) || !is_int(&next_seq) || next_seq.lt(0)?;
    if bad {
        return Err(err(format!(
            "{KIND} state meta {}: watermark must be a number or null, next_seq an int",
            repr80(doc.as_any())
        )));
    }
    let watermark = if watermark.is_none() {
        f64::NEG_INFINITY
    } else {
        watermark.extract::<f64>()?
    };
    // orjson reads integers up to 2**64 - 1 (larger ones become floats, refused above)
    Ok(Some((watermark, next_seq.extract::<u64>()?)))
}

/// `parse_seq`: the key's canonical lowercase hex (None: beyond 64 bits, so never below next_seq).
fn parse_seq(key: &Bound<'_, PyAny>, digits: &str) -> PyResult<Option<u64>> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !(digits.starts_with('0') && digits.len() > 1);
    if !canonical {
        return Err(err(format!(
            "{KIND} state key {} is not a known entry key (canonical hex sequence)",
            py_repr(key)
        )));
    }
    Ok(u64::from_str_radix(digits, 16).ok())
}

/// `_parse_half`: the half (its group still to be set) and its request id.
fn parse_half(key: &Bound<'_, PyAny>, seq: u64, entry: &Bound<'_, PyList>) -> PyResult<(Half, String)> {
    let py = key.py();
    let where_ = format!("{KIND} state entry {}", py_repr(key));
    let entry = if entry.len() == 6 && entry.get_item(5)?.eq(DONE)? {
        let padded = PyList::new_bound(py, entry.iter());
        padded.append(0.0)?;
        padded.append(0.0)?;
        padded.append(0)?;
        padded.append(py.None())?;
        padded
    } else {
        entry.clone()
    };
    if entry.len() != 10 {
        return Err(err(format!(
            "{where_}: expected 10 fields (6 for a tombstone), got {}",
            repr80(entry.as_any())
        )));
    }
    let f: Vec<Bound<'_, PyAny>> = entry.iter().collect();
    let (rid, model, version, role, ts, state, score, latency_ms, error, features) =
        (&f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &f[9]);
    let strings = [rid, model, version].iter().all(|v| v.is_instance_of::<PyString>());
    if !strings || !int_in(role, &[0, 1, 2]) {
        return Err(err(format!(
            "{where_}: request_id/model/version must be strings and role 0, 1 or 2"
        )));
    }
    if ![ts, score, latency_ms].iter().all(|v| is_num(v)) {
        return Err(err(format!("{where_}: ts, score and latency_ms must be numbers")));
    }
    if !int_in(state, &[0, 1, 2]) || !int_in(error, &[0, 1]) {
        return Err(err(format!("{where_}: state must be 0-2 and error 0 or 1")));
    }
    let features = if features.is_none() {
        None
    } else if let Ok(dict) = features.downcast::<PyDict>() {
        let mut items = Vec::with_capacity(dict.len());
        for (name, value) in dict.iter() {
            let value = if value.is_instance_of::<PyBool>() {
                None
            } else {
                block::feature_from_py(&value).ok()
            };
            let Some(value) = value else {
                // The Python pairer would keep such a value; no pairer ever writes one.
                return Err(err(format!(
                    "{where_}: feature values must be numbers, strings or null (native pairer)"
                )));
            };
            items.push((name.extract::<String>()?.into_boxed_str(), value));
        }
        Some(items.into_boxed_slice())
    } else {
        return Err(err(format!("{where_}: features must be an object or null")));
    };
    let model: String = model.extract()?;
    let version: String = version.extract()?;
    let half = Half {
        gid: 0,
        model: block::intern(&model),
        version: block::intern(&version),
        features,
        ts: ts.extract()?,
        score: score.extract()?,
        latency_ms: latency_ms.extract()?,
        seq,
        role: role.extract::<u8>()?,
        state: state.extract::<u8>()?,
        error: error.extract::<u8>()? == 1,
        dirty: false,
    };
    Ok((half, rid.extract()?))
}

// --- orjson's output, byte for byte -------------------------------------------------------------------

fn hex(buf: &mut [u8; 16], mut v: u64) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ascii")
}

/// Any byte below 0x20, `"` or `\\` (eight bytes at a time).
fn needs_escape(bytes: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |w: u64| w.wrapping_sub(LO) & !w & HI;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // bytes < 0x20: (w - 0x20..) & !w & 0x80.. flags them (ASCII or not, no false negatives)
        if (w.wrapping_sub(0x20 * LO) & !w & HI)
            | zero_byte(w ^ (b'"' as u64 * LO))
            | zero_byte(w ^ (b'\\' as u64 * LO))
            != 0
        {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A string as orjson writes it: `"` and `\` escaped, control characters as \b \t \n \f \r or \u00xx,
/// everything else (DEL, U+2028, non-ASCII, `/`) as is.
pub fn write_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        buf.extend_from_slice(bytes);
        buf.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            0x08 => buf.extend_from_slice(b"\\b"),
            0x09 => buf.extend_from_slice(b"\\t"),
            0x0a => buf.extend_from_slice(b"\\n"),
            0x0c => buf.extend_from_slice(b"\\f"),
            0x0d => buf.extend_from_slice(b"\\r"),
            _ => buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// A float as orjson writes it: the shortest round-trip digits, fixed notation for decimal exponents
/// -5..=15 (always with a fraction: `1.0`, `-0.0`), otherwise `1.5e+16` / `1e-7`; NaN and infinities as
/// null. Żmij (already under serde_json) lays floats out exactly so; the tests compare with orjson over
/// random bit patterns.
pub fn write_f64(buf: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        buf.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        buf.extend_from_slice(b"null");
    }
}

fn write_features(buf: &mut Vec<u8>, features: &Option<Features>) {
    let Some(items) = features else {
        buf.extend_from_slice(b"null");
        return;
    };
    buf.push(b'{');
    for (i, (name, value)) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_str(buf, name);
        buf.push(b':');
        match value {
            FeatureValue::Null => buf.extend_from_slice(b"null"),
            FeatureValue::Int(v) => buf.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes()),
            FeatureValue::Float(v) => write_f64(buf, *v),
            FeatureValue::Str(s) => write_str(buf, s),
        }
    }
    buf.push(b'}');
}

/// Put `item` in a free slot of `slab` (or a new one at the end); its index.
fn slab_insert<T>(slab: &mut Vec<Option<T>>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(slot) => {
            slab[slot as usize] = Some(item);
            slot
        }
        None => {
            slab.push(Some(item));
            (slab.len() - 1) as u32
        }
    }
}
