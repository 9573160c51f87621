//! The event-time join of pairs with late labels: `streams/labels.py` (`LabelJoiner`) in Rust.
//!
//! The Python module is the reference: its module doc states the rules, its code the exact semantics,
//! and this file follows it step by step (watermark raise and expiry at the start of each call, the
//! (ts, seq) heaps with stale entries of matched pairs, eviction past the bounds, the output orders).
//! State entries are byte-identical to the Python joiner's (orjson arrays, see `jsonfmt`), so a Python
//! and a native worker can take over each other's partitions.
//!
//! Change tracking is proportional to what the calls touched: the seqs dirtied since the last delta
//! (looked up again when the delta is written, so an entry that came and went in between is skipped)
//! and the keys of synced entries that left.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::BinaryHeap;

use foldhash::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use serde_json::Value;

use crate::block::{intern, role_code, LabelBlock, Pairs, PRODUCTION, ROLE_NAMES};
use crate::jsonfmt;
use crate::statelog::{BlobSink, PySink, Sink};

const KIND: &str = "shadowgate.labels";
const VERSION: i64 = 2;
const META_KEY: &str = "m";

/// One comparison (model, production version, candidate version, role) and its encoded id.
struct Comparison {
    model: Arc<str>,
    production_version: Arc<str>,
    candidate_version: Arc<str>,
    role: u8,
    /// `ComparisonKey.as_id()` as a JSON string, written into every pair entry.
    id_json: Box<[u8]>,
}

type CompKey = (Arc<str>, Arc<str>, Arc<str>, u8);

/// A waiting pair (one of its request's).
#[derive(Clone, Copy)]
struct Wait {
    ts: f64,
    seq: u64,
    comp: u32,
    prod: f64,
    cand: f64,
}

/// A remembered label (one per model of its request).
#[derive(Clone)]
struct Label {
    model: Arc<str>,
    value: u8,
    ts: f64,
    seq: u64,
    matched: bool,
}

/// A heap entry ordered by (ts, seq), smallest first (seq is unique, so rid is never compared).
struct HeapItem {
    ts: f64,
    seq: u64,
    rid: Arc<str>,
}

impl HeapItem {
    fn key_cmp(&self, other: &Self) -> Ordering {
        // As Python compares the tuples: ts first (finite; -0.0 == 0.0), then seq.
        match self.ts.partial_cmp(&other.ts) {
            Some(Ordering::Equal) | None => self.seq.cmp(&other.seq),
            Some(order) => order,
        }
    }
}

impl PartialEq for HeapItem {
    fn eq(&self, other: &Self) -> bool {
        self.key_cmp(other) == Ordering::Equal
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        other.key_cmp(self) // reversed: BinaryHeap is a max-heap
    }
}

#[derive(Default)]
struct Joined {
    request_ids: Vec<Arc<str>>,
    prod: Vec<f64>,
    cand: Vec<f64>,
    label: Vec<i8>,
    ts: Vec<f64>,
}

/// What one call produced, per comparison index in order of first occurrence.
#[derive(Default)]
struct Out {
    joined: Vec<(u32, Joined)>,
    unlabeled: Vec<(u32, Vec<f64>)>,
    evicted: Vec<(u32, Vec<f64>)>,
    unmatched: u64,
    evicted_labels: u64,
    duplicates: u64,
    conflicts: u64,
}

fn slot<T: Default>(items: &mut Vec<(u32, T)>, comp: u32) -> &mut T {
    let pos = match items.last() {
        Some((last, _)) if *last == comp => items.len() - 1,
        _ => match items.iter().position(|(c, _)| *c == comp) {
            Some(pos) => pos,
            None => {
                items.push((comp, T::default()));
                items.len() - 1
            }
        },
    };
    &mut items[pos].1
}

impl Out {
    fn join(&mut self, comp: u32, rid: Arc<str>, prod: f64, cand: f64, label: u8, ts: f64) {
        let cols = slot(&mut self.joined, comp);
        cols.request_ids.push(rid);
        cols.prod.push(prod);
        cols.cand.push(cand);
        cols.label.push(label as i8);
        cols.ts.push(ts);
    }
}

#[inline]
fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// The items of one request: almost always one, kept inline (no allocation per request). Never empty
/// in a map: the entry goes when its last item does.
enum Few<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> std::ops::Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Few::One(item) => std::slice::from_ref(item),
            Few::Many(items) => items,
        }
    }
}

impl<T> std::ops::DerefMut for Few<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Few::One(item) => std::slice::from_mut(item),
            Few::Many(items) => items,
        }
    }
}

impl<T> Few<T> {
    fn push(&mut self, item: T) {
        match self {
            Few::Many(items) => items.push(item),
            Few::One(_) => {
                if let Few::One(first) = std::mem::replace(self, Few::Many(Vec::new())) {
                    *self = Few::Many(vec![first, item]);
                }
            }
        }
    }

    fn remove(&mut self, i: usize) -> T {
        match self {
            Few::Many(items) => items.remove(i),
            Few::One(_) => match std::mem::replace(self, Few::Many(Vec::new())) {
                Few::One(item) => item,
                Few::Many(_) => unreachable!(),
            },
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match self {
            Few::Many(items) => items.retain(keep),
            Few::One(item) => {
                if !keep(item) {
                    *self = Few::Many(Vec::new());
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Few::Many(items) if items.is_empty())
    }
}

/// Change tracking since the last delta.
struct Track {
    /// Entries of earlier deltas that left: (kind, seq).
    gone: Vec<(u8, u64)>,
    /// Bit `seq - synced_seq`: a pair that came after the last delta and already left.
    dropped: Vec<u64>,
    /// Seqs >= this were never in a delta.
    synced_seq: u64,
}

impl Track {
    fn forget_pair(&mut self, seq: u64) {
        if seq < self.synced_seq {
            self.gone.push((b'p', seq));
        } else {
            let bit = (seq - self.synced_seq) as usize;
            if bit / 64 >= self.dropped.len() {
                self.dropped.resize(bit / 64 + 1, 0);
            }
            self.dropped[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn was_dropped(&self, seq: u64) -> bool {
        let bit = (seq - self.synced_seq) as usize;
        self.dropped.get(bit / 64).is_some_and(|word| word & (1 << (bit % 64)) != 0)
    }
}

type Waits = HashMap<Arc<str>, Few<Wait>>;

/// The join's whole state (what `LabelJoiner._clear` resets).
struct State {
    w: f64,
    seq: u64,
    pairs: Waits,
    pair_heap: BinaryHeap<HeapItem>,
    live: usize,
    stale: usize,
    labels: HashMap<Arc<str>, Few<Label>>,
    label_heap: BinaryHeap<HeapItem>,
    /// The pairs that came since the last delta (seq order); those dropped since are skipped.
    dirty_pairs: Vec<(Arc<str>, Wait)>,
    /// Labels that came or changed since the last delta, looked up again when it is written.
    dirty_labels: Vec<(u64, Arc<str>)>,
    /// The labels of earlier deltas among `dirty_labels` (newer ones are listed once, when they come).
    dirty_old_labels: HashSet<u64>,
    t: Track,
    synced_meta: (f64, u64),
}

impl State {
    fn new() -> Self {
        State {
            w: f64::NEG_INFINITY,
            seq: 0,
            pairs: HashMap::default(),
            pair_heap: BinaryHeap::new(),
            live: 0,
            stale: 0,
            labels: HashMap::default(),
            label_heap: BinaryHeap::new(),
            dirty_pairs: Vec::new(),
            dirty_labels: Vec::new(),
            dirty_old_labels: HashSet::default(),
            t: Track { gone: Vec::new(), dropped: Vec::new(), synced_seq: 0 },
            synced_meta: (f64::NEG_INFINITY, 0),
        }
    }

    /// Pop the oldest heap entry; true if it was a waiting pair (now unlabeled), false if stale.
    fn pop_pair(&mut self, out: &mut Out, evicted: bool) -> bool {
        let item = self.pair_heap.pop().expect("pair heap is not empty");
        if let Some(waits) = self.pairs.get_mut(&*item.rid) {
            if let Some(i) = waits.iter().position(|w| w.seq == item.seq) {
                let wait = waits.remove(i);
                if waits.is_empty() {
                    self.pairs.remove(&*item.rid);
                }
                self.live -= 1;
                self.t.forget_pair(wait.seq);
                slot(&mut out.unlabeled, wait.comp).push(wait.ts);
                if evicted {
                    slot(&mut out.evicted, wait.comp).push(wait.ts);
                }
                return true;
            }
        }
        self.stale -= 1;
        false
    }

    fn drop_label(&mut self, out: &mut Out, evicted: bool) {
        let item = self.label_heap.pop().expect("label heap is not empty");
        let labels = self.labels.get_mut(&*item.rid).expect("a heap entry's label is remembered");
        let i = labels.iter().position(|l| l.seq == item.seq).expect("a heap entry's label is remembered");
        let label = labels.remove(i);
        if labels.is_empty() {
            self.labels.remove(&*item.rid);
        }
        if label.seq < self.t.synced_seq {
            self.t.gone.push((b'l', label.seq));
        }
        out.unmatched += u64::from(!label.matched);
        out.evicted_labels += u64::from(evicted);
    }

    fn compact(&mut self) {
        // Matched pairs leave stale heap entries; rebuild once they outnumber the live ones.
        if self.stale > 1024 && self.stale > self.live {
            let items: Vec<HeapItem> = self
                .pairs
                .iter()
                .flat_map(|(rid, waits)| waits.iter().map(|w| HeapItem { ts: w.ts, seq: w.seq, rid: rid.clone() }))
                .collect();
            self.pair_heap = BinaryHeap::from(items);
            self.stale = 0;
        }
        // Without deltas, forget what left since (as the reference's dicts of dirty entries do).
        if self.dirty_pairs.len() > 2 * self.live + 4096 {
            let t = &self.t;
            self.dirty_pairs.retain(|(_, w)| !t.was_dropped(w.seq));
        }
        if self.dirty_labels.len() > 2 * self.label_heap.len() + 4096 {
            let labels = &self.labels;
            self.dirty_labels.retain(|(seq, rid)| labels.get(rid).is_some_and(|ls| ls.iter().any(|l| l.seq == *seq)));
        }
    }

    /// The value of the label of (rid, model), marking it matched; None if there is none.
    fn match_label(&mut self, rid: &str, model: &Arc<str>) -> Option<u8> {
        if self.labels.is_empty() {
            return None;
        }
        let labels = self.labels.get_mut(rid)?;
        let label = labels.iter_mut().find(|l| same(&l.model, model))?;
        let value = label.value;
        if !label.matched {
            label.matched = true;
            let seq = label.seq;
            // A label that came since the last delta is listed already.
            if seq < self.t.synced_seq && self.dirty_old_labels.insert(seq) {
                let key = self.labels.get_key_value(rid).expect("just found").0.clone();
                self.dirty_labels.push((seq, key));
            }
        }
        Some(value)
    }
}

/// Join the waiting pairs of (rid, model) with a label's value; how many it took.
#[allow(clippy::too_many_arguments)]
fn take_pairs(
    pairs: &mut Waits,
    comps: &[Arc<Comparison>],
    t: &mut Track,
    rid: &Arc<str>,
    model: &Arc<str>,
    value: u8,
    out: &mut Out,
) -> usize {
    if pairs.is_empty() {
        return 0;
    }
    let Entry::Occupied(mut entry) = pairs.entry(rid.clone()) else {
        return 0;
    };
    let matches = |w: &Wait| same(&comps[w.comp as usize].model, model);
    let mut taken = 0;
    for w in entry.get().iter().filter(|w| matches(w)) {
        out.join(w.comp, rid.clone(), w.prod, w.cand, value, w.ts);
        t.forget_pair(w.seq);
        taken += 1;
    }
    if taken > 0 {
        entry.get_mut().retain(|w| !matches(w));
        if entry.get().is_empty() {
            entry.remove();
        }
    }
    taken
}

/// The native `LabelJoiner` (see `streams/native_labels.py` for the Python-facing adapter).
#[pyclass(module = "streams._native")]
pub struct NativeJoiner {
    horizon_s: f64,
    max_pairs: usize,
    max_labels: usize,
    comps: Vec<Arc<Comparison>>,
    comp_index: HashMap<CompKey, u32>,
    comp_by_id: HashMap<Box<str>, u32>,
    s: State,
}

/// The result of one call, turned into Python objects on demand (`streams.native_labels.to_result`).
#[pyclass(frozen, module = "streams._native")]
pub struct LabelOut {
    joined: Vec<(Arc<Comparison>, Joined)>,
    unlabeled: Vec<(Arc<Comparison>, Vec<f64>)>,
    evicted: Vec<(Arc<Comparison>, Vec<f64>)>,
    #[pyo3(get)]
    unmatched_labels: u64,
    #[pyo3(get)]
    evicted_labels: u64,
    #[pyo3(get)]
    duplicate_labels: u64,
    #[pyo3(get)]
    conflicting_labels: u64,
    #[pyo3(get)]
    watermark_s: Option<f64>,
}

fn f64_array<'py>(py: Python<'py>, values: &[f64]) -> Bound<'py, PyByteArray> {
    let mut raw = Vec::with_capacity(values.len() * 8);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    PyByteArray::new_bound(py, &raw)
}

fn comp_names(c: &Comparison) -> (&str, &str, &str, &'static str) {
    (&c.model, &c.production_version, &c.candidate_version, ROLE_NAMES[c.role as usize])
}

fn ts_lists<'py>(py: Python<'py>, items: &[(Arc<Comparison>, Vec<f64>)]) -> Bound<'py, PyList> {
    PyList::new_bound(
        py,
        items.iter().map(|(c, ts)| -> PyObject {
            let (m, p, k, r) = comp_names(c);
            (m, p, k, r, f64_array(py, ts)).into_py(py)
        }),
    )
}

#[pymethods]
impl LabelOut {
    /// Per comparison: (model, production_version, candidate_version, role, prod_score, cand_score,
    /// label, ts, request_ids); the columns as little-endian bytearrays (float64, float64, int8, float64).
    #[getter]
    fn joined<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        PyList::new_bound(
            py,
            self.joined.iter().map(|(c, j)| {
                let (m, p, k, r) = comp_names(c);
                let labels: Vec<u8> = j.label.iter().map(|&v| v as u8).collect();
                let rids = PyList::new_bound(py, j.request_ids.iter().map(|rid| PyString::new_bound(py, rid)));
                PyTuple::new_bound(
                    py,
                    [
                        m.into_py(py),
                        p.into_py(py),
                        k.into_py(py),
                        r.into_py(py),
                        f64_array(py, &j.prod).into_any().unbind(),
                        f64_array(py, &j.cand).into_any().unbind(),
                        PyByteArray::new_bound(py, &labels).into_any().unbind(),
                        f64_array(py, &j.ts).into_any().unbind(),
                        rids.into_any().unbind(),
                    ],
                )
                .into_any()
                .unbind()
            }),
        )
    }

    /// Per comparison: (model, production_version, candidate_version, role, ts as float64 bytearray).
    #[getter]
    fn unlabeled<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        ts_lists(py, &self.unlabeled)
    }

    #[getter]
    fn evicted<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        ts_lists(py, &self.evicted)
    }

    #[getter]
    fn label_count(&self) -> usize {
        self.joined.iter().map(|(_, j)| j.request_ids.len()).sum()
    }
}

/// Lowercase hex of a seq after a one-letter kind: the entry key.
fn entry_key(buf: &mut String, kind: u8, seq: u64) -> &str {
    buf.clear();
    buf.push(kind as char);
    let _ = write!(buf, "{seq:x}");
    buf.as_str()
}

fn encode_pair(buf: &mut Vec<u8>, rid: &str, wait: &Wait, comp: &Comparison) {
    buf.clear();
    buf.push(b'[');
    jsonfmt::write_str(buf, rid);
    buf.push(b',');
    buf.extend_from_slice(&comp.id_json);
    buf.push(b',');
    jsonfmt::write_f64(buf, wait.prod); // NaN (an errored side) -> null
    buf.push(b',');
    jsonfmt::write_f64(buf, wait.cand);
    buf.push(b',');
    jsonfmt::write_f64(buf, wait.ts);
    buf.push(b']');
}

fn encode_label(buf: &mut Vec<u8>, rid: &str, label: &Label) {
    buf.clear();
    buf.push(b'[');
    jsonfmt::write_str(buf, rid);
    buf.push(b',');
    jsonfmt::write_str(buf, &label.model);
    buf.push(b',');
    buf.push(b'0' + label.value);
    buf.push(b',');
    jsonfmt::write_f64(buf, label.ts);
    buf.push(b',');
    buf.push(if label.matched { b'1' } else { b'0' });
    buf.push(b']');
}

fn encode_meta(buf: &mut Vec<u8>, w: f64, seq: u64) {
    buf.clear();
    buf.push(b'[');
    jsonfmt::write_i64(buf, VERSION);
    buf.push(b',');
    if w == f64::NEG_INFINITY {
        jsonfmt::write_null(buf);
    } else {
        jsonfmt::write_f64(buf, w);
    }
    buf.push(b',');
    jsonfmt::write_u64(buf, seq);
    buf.push(b']');
}

impl NativeJoiner {
    fn comparison(&mut self, model: &Arc<str>, prod: &Arc<str>, cand: &Arc<str>, role: u8) -> u32 {
        let key: CompKey = (model.clone(), prod.clone(), cand.clone(), role);
        if let Some(&idx) = self.comp_index.get(&key) {
            return idx;
        }
        let id = format!("{model}|{prod}|{cand}|{}", ROLE_NAMES[role as usize]);
        let mut id_json = Vec::new();
        jsonfmt::write_str(&mut id_json, &id);
        let idx = self.comps.len() as u32;
        self.comps.push(Arc::new(Comparison {
            model: model.clone(),
            production_version: prod.clone(),
            candidate_version: cand.clone(),
            role,
            id_json: id_json.into_boxed_slice(),
        }));
        self.comp_index.insert(key, idx);
        self.comp_by_id.insert(id.into_boxed_str(), idx);
        idx
    }

    /// `ComparisonKey.from_id` for ids it accepts; None otherwise.
    fn comparison_of_id(&mut self, id: &str) -> Option<u32> {
        if let Some(&idx) = self.comp_by_id.get(id) {
            return Some(idx);
        }
        let parts: Vec<&str> = id.split('|').collect();
        if parts.len() != 4 {
            return None;
        }
        let role = match role_code(parts[3]) {
            Some(code) if code != PRODUCTION => code,
            _ => return None,
        };
        Some(self.comparison(&intern(parts[0]), &intern(parts[1]), &intern(parts[2]), role))
    }

    fn advance(&mut self, watermark: f64, out: &mut Out) {
        let s = &mut self.s;
        if !(watermark > s.w) {
            return;
        }
        s.w = watermark;
        let cutoff = watermark - self.horizon_s;
        while s.pair_heap.peek().is_some_and(|top| top.ts < cutoff) {
            s.pop_pair(out, false);
        }
        while s.label_heap.peek().is_some_and(|top| top.ts < cutoff) {
            s.drop_label(out, false);
        }
        s.compact();
    }

    fn finish(&self, out: Out) -> LabelOut {
        let comp = |idx: u32| self.comps[idx as usize].clone();
        LabelOut {
            joined: out.joined.into_iter().map(|(c, j)| (comp(c), j)).collect(),
            unlabeled: out.unlabeled.into_iter().map(|(c, v)| (comp(c), v)).collect(),
            evicted: out.evicted.into_iter().map(|(c, v)| (comp(c), v)).collect(),
            unmatched_labels: out.unmatched,
            evicted_labels: out.evicted_labels,
            duplicate_labels: out.duplicates,
            conflicting_labels: out.conflicts,
            watermark_s: self.watermark(),
        }
    }

    fn watermark(&self) -> Option<f64> {
        if self.s.w == f64::NEG_INFINITY {
            None
        } else {
            Some(self.s.w)
        }
    }
}

/// Python's `max(a, b)` of two floats: `b` only when it is greater.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// A number of a fast-path entry as Python's `float()` of what orjson gives; None where orjson and
/// serde_json could differ (`-0` is an int 0 for orjson) or it is no number.
fn num(value: &Value) -> Option<f64> {
    let v = value.as_f64()?;
    if v == 0.0 && v.is_sign_negative() {
        return None;
    }
    Some(v)
}

fn flag(value: &Value) -> Option<u8> {
    match value.as_u64() {
        Some(v @ (0 | 1)) => Some(v as u8),
        _ => None,
    }
}

/// The canonical lowercase-hex seq of an entry key (after its kind letter), if it fits 64 bits.
fn fast_seq(digits: &str) -> Option<u64> {
    let ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !(digits.starts_with('0') && digits.len() > 1)
        && digits.len() <= 16;
    if ok {
        u64::from_str_radix(digits, 16).ok()
    } else {
        None
    }
}

enum Parsed {
    Wait(Arc<str>, Wait),
    Label(Arc<str>, Label),
}

impl NativeJoiner {
    fn add_pairs_core(&mut self, pairs: &Pairs, now_s: f64) -> LabelOut {
        let mut out = Out::default();
        let mut newest = f64::NEG_INFINITY;
        for c in &pairs.comparisons {
            if let Some(top) = c.ts.iter().copied().reduce(f64::max) {
                newest = py_max(newest, top);
            }
        }
        self.advance(py_max(now_s, newest), &mut out);
        let cutoff = self.s.w - self.horizon_s;
        for c in &pairs.comparisons {
            let comp = self.comparison(&c.model, &c.production_version, &c.candidate_version, c.role);
            let model = self.comps[comp as usize].model.clone();
            let s = &mut self.s;
            for i in 0..c.len() {
                let rid: &str = &c.request_ids[i];
                let prod = if c.prod_error[i] { f64::NAN } else { c.prod_score[i] };
                let cand = if c.cand_error[i] { f64::NAN } else { c.cand_score[i] };
                let ts = c.ts[i];
                if let Some(label) = s.match_label(rid, &model) {
                    out.join(comp, Arc::from(rid), prod, cand, label, ts);
                } else if ts < cutoff {
                    slot(&mut out.unlabeled, comp).push(ts);
                } else {
                    let seq = s.seq;
                    let wait = Wait { ts, seq, comp, prod, cand };
                    let key = match s.pairs.entry(Arc::from(rid)) {
                        Entry::Occupied(mut e) => {
                            e.get_mut().push(wait); // another comparison's pair of the request
                            e.key().clone()
                        }
                        Entry::Vacant(e) => {
                            let key = e.key().clone();
                            e.insert(Few::One(wait));
                            key
                        }
                    };
                    s.dirty_pairs.push((key.clone(), wait));
                    s.pair_heap.push(HeapItem { ts, seq, rid: key });
                    s.seq += 1;
                    s.live += 1;
                    if s.live > self.max_pairs {
                        while !s.pop_pair(&mut out, true) {}
                    }
                }
            }
        }
        self.finish(out)
    }

    fn add_labels_core(&mut self, blocks: &[&LabelBlock], now_s: f64) -> LabelOut {
        let mut out = Out::default();
        let newest = blocks.iter().flat_map(|b| b.rows.iter()).map(|r| r.ts).fold(f64::NEG_INFINITY, py_max);
        self.advance(py_max(now_s, newest), &mut out);
        let cutoff = self.s.w - self.horizon_s;
        let comps = &self.comps;
        let s = &mut self.s;
        for row in blocks.iter().flat_map(|b| b.rows.iter()) {
            let rid: Arc<str> = Arc::from(&*row.request_id);
            let entry = s.labels.entry(rid.clone());
            if let Entry::Occupied(known) = &entry {
                if let Some(known) = known.get().iter().find(|l| same(&l.model, &row.model)) {
                    if known.value == row.label {
                        out.duplicates += 1;
                    } else {
                        out.conflicts += 1;
                    }
                    continue;
                }
            }
            let taken = take_pairs(&mut s.pairs, comps, &mut s.t, &rid, &row.model, row.label, &mut out);
            s.live -= taken;
            s.stale += taken; // their heap entries stay until popped or compacted
            if row.ts < cutoff {
                out.unmatched += u64::from(taken == 0);
                continue;
            }
            let seq = s.seq;
            let label = Label { model: row.model.clone(), value: row.label, ts: row.ts, seq, matched: taken > 0 };
            match entry {
                Entry::Occupied(mut e) => e.get_mut().push(label),
                Entry::Vacant(e) => {
                    e.insert(Few::One(label));
                }
            }
            s.dirty_labels.push((seq, rid.clone()));
            s.label_heap.push(HeapItem { ts: row.ts, seq, rid });
            s.seq += 1;
            if s.label_heap.len() > self.max_labels {
                s.drop_label(&mut out, true);
            }
        }
        s.compact();
        self.finish(out)
    }

    /// Write the changes since the previous delta to `sink` and restart the tracking.
    fn delta_into(&mut self, sink: &mut impl Sink) -> PyResult<()> {
        let mut buf = Vec::with_capacity(256);
        let mut key = String::with_capacity(20);
        let s = &mut self.s;
        for (rid, wait) in std::mem::take(&mut s.dirty_pairs) {
            if !s.t.was_dropped(wait.seq) {
                encode_pair(&mut buf, &rid, &wait, &self.comps[wait.comp as usize]);
                sink.upsert(entry_key(&mut key, b'p', wait.seq), &buf)?;
            }
        }
        for (seq, rid) in std::mem::take(&mut s.dirty_labels) {
            if let Some(label) = s.labels.get(&rid).and_then(|ls| ls.iter().find(|l| l.seq == seq)) {
                encode_label(&mut buf, &rid, label);
                sink.upsert(entry_key(&mut key, b'l', seq), &buf)?;
            }
        }
        let meta = (s.w, s.seq);
        if meta != s.synced_meta {
            encode_meta(&mut buf, meta.0, meta.1);
            sink.upsert(META_KEY, &buf)?;
        }
        for (kind, seq) in std::mem::take(&mut s.t.gone) {
            sink.delete(entry_key(&mut key, kind, seq))?;
        }
        s.dirty_old_labels.clear();
        s.t.dropped.clear();
        s.t.synced_seq = s.seq;
        s.synced_meta = meta;
        Ok(())
    }

    fn entries_into(&self, sink: &mut impl Sink) -> PyResult<()> {
        let mut items: Vec<(u64, u8, &Arc<str>, usize)> = Vec::with_capacity(self.s.live + self.s.label_heap.len());
        for (rid, waits) in &self.s.pairs {
            items.extend((0..waits.len()).map(|i| (waits[i].seq, b'p', rid, i)));
        }
        for (rid, labels) in &self.s.labels {
            items.extend((0..labels.len()).map(|i| (labels[i].seq, b'l', rid, i)));
        }
        items.sort_unstable_by_key(|item| (item.0, item.1));
        let mut buf = Vec::with_capacity(256);
        let mut key = String::with_capacity(20);
        for (seq, kind, rid, i) in items {
            if kind == b'p' {
                let wait = &self.s.pairs[rid][i];
                encode_pair(&mut buf, rid, wait, &self.comps[wait.comp as usize]);
            } else {
                encode_label(&mut buf, rid, &self.s.labels[rid][i]);
            }
            sink.upsert(entry_key(&mut key, kind, seq), &buf)?;
        }
        if self.s.w != f64::NEG_INFINITY || self.s.seq != 0 {
            encode_meta(&mut buf, self.s.w, self.s.seq);
            sink.upsert(META_KEY, &buf)?;
        }
        Ok(())
    }
}

#[pymethods]
impl NativeJoiner {
    #[new]
    fn new(horizon_s: f64, max_pending: usize, max_labels: usize) -> PyResult<Self> {
        if !horizon_s.is_finite() || horizon_s <= 0.0 {
            return Err(PyValueError::new_err(format!("horizon_s={horizon_s}: must be a finite number > 0")));
        }
        for (name, value) in [("max_pending", max_pending), ("max_labels", max_labels)] {
            if value < 1 {
                return Err(PyValueError::new_err(format!("{name}={value}: must be an integer >= 1")));
            }
        }
        Ok(NativeJoiner {
            horizon_s,
            max_pairs: max_pending,
            max_labels,
            comps: Vec::new(),
            comp_index: HashMap::default(),
            comp_by_id: HashMap::default(),
            s: State::new(),
        })
    }

    #[getter]
    fn pending_pairs(&self) -> usize {
        self.s.live
    }

    #[getter]
    fn pending_labels(&self) -> usize {
        self.s.label_heap.len()
    }

    #[getter]
    fn watermark_s(&self) -> Option<f64> {
        self.watermark()
    }

    /// `LabelJoiner.add_pairs`: join a pairer's output with the labels already here; keep the rest.
    fn add_pairs(&mut self, py: Python<'_>, pairs: PyRef<'_, Pairs>, now_s: f64) -> LabelOut {
        let pairs: &Pairs = &pairs;
        // The join touches no Python object: other threads (Faust's event loop) run meanwhile.
        py.allow_threads(|| self.add_pairs_core(pairs, now_s))
    }

    /// `LabelJoiner.add_labels` over all labels of the blocks in order, as one call.
    fn add_labels(&mut self, py: Python<'_>, blocks: Vec<PyRef<'_, LabelBlock>>, now_s: f64) -> LabelOut {
        let blocks: Vec<&LabelBlock> = blocks.iter().map(|b| &**b).collect();
        py.allow_threads(|| self.add_labels_core(&blocks, now_s))
    }

    /// `LabelJoiner.state_delta`: (upserts, deletes) since the previous call; the next starts empty.
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

    /// `LabelJoiner.entries`: the whole state as entries (in seq order).
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut sink = PySink::new(py);
        self.entries_into(&mut sink)?;
        Ok(sink.upserts)
    }

    /// The whole state as one state log record of upserts, every key under `prefix`.
    fn entries_blob<'py>(&self, py: Python<'py>, prefix: &str) -> PyResult<Bound<'py, PyBytes>> {
        let mut sink = BlobSink::new(prefix);
        self.entries_into(&mut sink)?;
        Ok(sink.finish(py))
    }

    /// `LabelJoiner.restore_entries`: replace the whole state by accumulated entries; on any error
    /// (ValueError with the reference's message) the current state is kept.
    ///
    /// Entries are parsed here; one this fast path does not accept as surely valid (and every invalid
    /// one) goes through the reference's own validators (`streams.joinstate`, `streams.labels`), so
    /// what is accepted, what it means and the error texts are the reference's by construction.
    fn restore_entries(&mut self, py: Python<'_>, entries: &Bound<'_, PyDict>) -> PyResult<()> {
        let joinstate = py.import_bound("streams.join.state")?;
        let checkpoint_error = joinstate.getattr("CheckpointError")?;
        let as_value_error = |err: PyErr| -> PyErr {
            if err.is_instance_bound(py, &checkpoint_error) {
                PyValueError::new_err(err.value_bound(py).str().map(|s| s.to_string()).unwrap_or_default())
            } else {
                err
            }
        };
        let meta = joinstate.call_method1("load_meta", (KIND, VERSION, entries)).map_err(as_value_error)?;
        if meta.is_none() {
            self.s = State::new();
            return Ok(());
        }
        let (watermark, next_seq): (f64, Bound<'_, PyAny>) = meta.extract()?;
        let next_seq: u64 = next_seq
            .extract()
            .map_err(|_| PyValueError::new_err(format!("{KIND} state meta: next_seq {next_seq} exceeds 64 bits")))?;
        let mut waits: Vec<Parsed> = Vec::new();
        let mut labs: Vec<Parsed> = Vec::new();
        let mut slow: Option<(Bound<'_, PyModule>, Bound<'_, PyAny>)> = None;
        for (name, raw) in entries.iter() {
            if let Ok(key) = name.downcast::<PyString>() {
                if key.to_str()? == META_KEY {
                    continue;
                }
            }
            let parsed = match self.fast_entry(&name, &raw, next_seq) {
                Some(parsed) => parsed,
                None => {
                    if slow.is_none() {
                        let labels = py.import_bound("streams.join.reference.labels")?;
                        let interner = joinstate.getattr("Interner")?.call0()?;
                        slow = Some((labels, interner));
                    }
                    let (labels, interner) = slow.as_ref().expect("just set");
                    self.slow_entry(&joinstate, labels, interner, &name, &raw, next_seq).map_err(as_value_error)?
                }
            };
            match parsed {
                Parsed::Wait(..) => waits.push(parsed),
                Parsed::Label(..) => labs.push(parsed),
            }
        }
        let seq_of = |p: &Parsed| match p {
            Parsed::Wait(_, w) => w.seq,
            Parsed::Label(_, l) => l.seq,
        };
        waits.sort_by_key(seq_of);
        labs.sort_by_key(seq_of);
        let mut s = State::new();
        s.w = watermark;
        s.seq = next_seq;
        let mut pair_items = Vec::with_capacity(waits.len());
        s.live = waits.len();
        for parsed in waits {
            if let Parsed::Wait(rid, wait) = parsed {
                let key = match s.pairs.entry(rid) {
                    Entry::Occupied(mut e) => {
                        e.get_mut().push(wait);
                        e.key().clone()
                    }
                    Entry::Vacant(e) => {
                        let key = e.key().clone();
                        e.insert(Few::One(wait));
                        key
                    }
                };
                pair_items.push(HeapItem { ts: wait.ts, seq: wait.seq, rid: key });
            }
        }
        let mut label_items = Vec::with_capacity(labs.len());
        for parsed in labs {
            if let Parsed::Label(rid, label) = parsed {
                let (ts, seq) = (label.ts, label.seq);
                let key = match s.labels.entry(rid) {
                    Entry::Occupied(mut e) => {
                        e.get_mut().push(label);
                        e.key().clone()
                    }
                    Entry::Vacant(e) => {
                        let key = e.key().clone();
                        e.insert(Few::One(label));
                        key
                    }
                };
                label_items.push(HeapItem { ts, seq, rid: key });
            }
        }
        s.pair_heap = BinaryHeap::from(pair_items);
        s.label_heap = BinaryHeap::from(label_items);
        s.t.synced_seq = next_seq;
        s.synced_meta = (watermark, next_seq);
        self.s = s;
        Ok(())
    }
}

impl NativeJoiner {
    /// One entry, when it is surely valid and means the same to the reference; None to ask the reference.
    fn fast_entry(&mut self, name: &Bound<'_, PyAny>, raw: &Bound<'_, PyAny>, next_seq: u64) -> Option<Parsed> {
        let name = name.downcast::<PyString>().ok()?.to_str().ok()?;
        let raw = raw.downcast::<PyBytes>().ok()?.as_bytes();
        let kind = *name.as_bytes().first()?;
        if kind != b'p' && kind != b'l' {
            return None;
        }
        let seq = fast_seq(&name[1..])?;
        if seq >= next_seq {
            return None;
        }
        let doc: Value = serde_json::from_slice(raw).ok()?;
        let items = doc.as_array()?;
        if items.len() != 5 {
            return None;
        }
        let rid: Arc<str> = Arc::from(items[0].as_str()?);
        if kind == b'p' {
            let score = |v: &Value| if v.is_null() { Some(f64::NAN) } else { num(v) };
            let (prod, cand, ts) = (score(&items[2])?, score(&items[3])?, num(&items[4])?);
            let comp = self.comparison_of_id(items[1].as_str()?)?;
            Some(Parsed::Wait(rid, Wait { ts, seq, comp, prod, cand }))
        } else {
            let model = intern(items[1].as_str()?);
            let (value, ts, matched) = (flag(&items[2])?, num(&items[3])?, flag(&items[4])?);
            Some(Parsed::Label(rid, Label { model, value, ts, seq, matched: matched == 1 }))
        }
    }

    /// One entry through the reference's validators (the body of `LabelJoiner.restore_entries`' loop).
    fn slow_entry(
        &mut self,
        joinstate: &Bound<'_, PyModule>,
        labels: &Bound<'_, PyModule>,
        interner: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        raw: &Bound<'_, PyAny>,
        next_seq: u64,
    ) -> PyResult<Parsed> {
        let py = name.py();
        let digits = name.get_item(pyo3::types::PySlice::new_bound(py, 1, isize::MAX, 1))?;
        let seq = joinstate.call_method1("parse_seq", (KIND, name, digits))?;
        if seq.ge(next_seq)? {
            let message = format!("{KIND} state entry {}: seq {seq} is not below next_seq {next_seq}", name.repr()?);
            return Err(PyValueError::new_err(message));
        }
        let first: String = name.get_item(0)?.extract()?;
        let seq_u64: u64 = seq.extract()?;
        match first.as_str() {
            "p" => {
                let doc = joinstate.call_method1("load_entry", (KIND, name, raw))?;
                let parsed = labels.call_method1("_parse_wait", (name, &seq, doc))?;
                let (rid, wait): (String, Bound<'_, PyTuple>) = parsed.extract()?;
                let (ts, _, key, prod, cand): (f64, Bound<'_, PyAny>, Bound<'_, PyAny>, f64, f64) = wait.extract()?;
                let id: String = key.call_method0("as_id")?.extract()?;
                let comp = self
                    .comparison_of_id(&id)
                    .ok_or_else(|| PyValueError::new_err(format!("comparison id {id:?} the reference accepted")))?;
                Ok(Parsed::Wait(Arc::from(rid.as_str()), Wait { ts, seq: seq_u64, comp, prod, cand }))
            }
            "l" => {
                let doc = joinstate.call_method1("load_entry", (KIND, name, raw))?;
                let parsed = labels.call_method1("_parse_label", (name, &seq, doc, interner))?;
                let (rid, label): (String, Bound<'_, PyTuple>) = parsed.extract()?;
                let (model, value, ts, _, matched): (String, u8, f64, Bound<'_, PyAny>, bool) = label.extract()?;
                Ok(Parsed::Label(
                    Arc::from(rid.as_str()),
                    Label { model: intern(&model), value, ts, seq: seq_u64, matched },
                ))
            }
            _ => {
                let message =
                    format!("{KIND} state key {}: must start with 'p' (pair) or 'l' (label)", name.repr()?);
                Err(PyValueError::new_err(message))
            }
        }
    }
}
