//! The label joiner's state: waiting pairs and remembered labels per request id, their (ts, seq) heaps
//! and the change tracking since the last delta.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::BinaryHeap;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use super::output::{slot, Comparison, Out};

/// A waiting pair (one of its request's).
#[derive(Clone, Copy)]
pub(super) struct Wait {
    pub(super) ts: f64,
    pub(super) seq: u64,
    pub(super) comp: u32,
    pub(super) prod: f64,
    pub(super) cand: f64,
}

/// A remembered label (one per model of its request).
#[derive(Clone)]
pub(super) struct Label {
    pub(super) model: Arc<str>,
    pub(super) value: u8,
    pub(super) ts: f64,
    pub(super) seq: u64,
    pub(super) matched: bool,
}

/// A heap entry ordered by (ts, seq), smallest first (seq is unique, so rid is never compared).
pub(super) struct HeapItem {
    pub(super) ts: f64,
    pub(super) seq: u64,
    pub(super) rid: Arc<str>,
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

/// Arc identity first: names are interned, so equal names are usually the same allocation.
#[inline]
pub(super) fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// The items of one request: almost always one, kept inline (no allocation per request). Never empty
/// in a map: the entry goes when its last item does.
pub(super) enum Few<T> {
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
    pub(super) fn push(&mut self, item: T) {
        match self {
            Few::Many(items) => items.push(item),
            Few::One(_) => {
                if let Few::One(first) = std::mem::replace(self, Few::Many(Vec::new())) {
                    *self = Few::Many(vec![first, item]);
                }
            }
        }
    }

    pub(super) fn remove(&mut self, i: usize) -> T {
        match self {
            Few::Many(items) => items.remove(i),
            Few::One(_) => match std::mem::replace(self, Few::Many(Vec::new())) {
                Few::One(item) => item,
                Few::Many(_) => unreachable!(),
            },
        }
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match self {
            Few::Many(items) => items.retain(keep),
            Few::One(item) => {
                if !keep(item) {
                    *self = Few::Many(Vec::new());
                }
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Few::Many(items) if items.is_empty())
    }
}

/// Change tracking since the last delta.
pub(super) struct Track {
    /// Entries of earlier deltas that left: (kind, seq).
    pub(super) gone: Vec<(u8, u64)>,
    /// Bit `seq - synced_seq`: a pair that came after the last delta and already left.
    pub(super) dropped: Vec<u64>,
    /// Seqs >= this were never in a delta.
    pub(super) synced_seq: u64,
}

impl Track {
    pub(super) fn forget_pair(&mut self, seq: u64) {
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

    pub(super) fn was_dropped(&self, seq: u64) -> bool {
        let bit = (seq - self.synced_seq) as usize;
        self.dropped.get(bit / 64).is_some_and(|word| word & (1 << (bit % 64)) != 0)
    }
}

pub(super) type Waits = HashMap<Arc<str>, Few<Wait>>;

/// The join's whole state (what `LabelJoiner._clear` resets).
pub(super) struct State {
    pub(super) w: f64,
    pub(super) seq: u64,
    pub(super) pairs: Waits,
    pub(super) pair_heap: BinaryHeap<HeapItem>,
    pub(super) live: usize,
    pub(super) stale: usize,
    pub(super) labels: HashMap<Arc<str>, Few<Label>>,
    pub(super) label_heap: BinaryHeap<HeapItem>,
    /// The pairs that came since the last delta (seq order); those dropped since are skipped.
    pub(super) dirty_pairs: Vec<(Arc<str>, Wait)>,
    /// Labels that came or changed since the last delta, looked up again when it is written.
    pub(super) dirty_labels: Vec<(u64, Arc<str>)>,
    /// The labels of earlier deltas among `dirty_labels` (newer ones are listed once, when they come).
    pub(super) dirty_old_labels: HashSet<u64>,
    pub(super) t: Track,
    pub(super) synced_meta: (f64, u64),
}

impl State {
    pub(super) fn new() -> Self {
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
    pub(super) fn pop_pair(&mut self, out: &mut Out, evicted: bool) -> bool {
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

    pub(super) fn drop_label(&mut self, out: &mut Out, evicted: bool) {
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

    pub(super) fn compact(&mut self) {
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
    pub(super) fn match_label(&mut self, rid: &str, model: &Arc<str>) -> Option<u8> {
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
pub(super) fn take_pairs(
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
