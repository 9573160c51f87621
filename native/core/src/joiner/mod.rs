//! The event-time join of pairs with late labels: `streams/labels.py` (`LabelJoiner`) in Rust.
//!
//! The Python module is the reference: its module doc states the rules, its code the exact semantics,
//! and this module follows it step by step (watermark raise and expiry at the start of each call, the
//! (ts, seq) heaps with stale entries of matched pairs, eviction past the bounds, the output orders).
//! State entries are byte-identical to the Python joiner's (orjson arrays, see `jsonfmt`), so a Python
//! and a native worker can take over each other's partitions.
//!
//! Change tracking is proportional to what the calls touched: the seqs dirtied since the last delta
//! (looked up again when the delta is written, so an entry that came and went in between is skipped)
//! and the keys of synced entries that left.
//!
//! Restore: [`parse_entry`] reads the entries it is sure of (see [`crate::entry`]); the caller has the
//! reference validate the others (`streams.native_labels`) and passes every entry, parsed, to
//! [`Joiner::restore`].

mod output;
mod state;

use std::collections::hash_map::Entry;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::sync::Arc;

use foldhash::HashMap;

use crate::block::{intern, role_code, LabelBlock, Pairs, CANARY, PRODUCTION, ROLE_NAMES, SHADOW};
use crate::entry;
use crate::jsonfmt;
use crate::statelog::Sink;
use crate::CoreError;
use output::{slot, Out};
pub use output::{Comparison, Joined, LabelOutput};
use state::{same, take_pairs, Few, HeapItem, Label, State, Wait};

const VERSION: i64 = 2;
const META_KEY: &str = "m";

type CompKey = (Arc<str>, Arc<str>, Arc<str>, u8);

/// The label joiner of one partition (`LabelJoiner`). Not thread-safe: one per partition.
pub struct Joiner {
    horizon_s: f64,
    max_pairs: usize,
    max_labels: usize,
    comps: Vec<Arc<Comparison>>,
    comp_index: HashMap<CompKey, u32>,
    s: State,
}

/// One remembered item as restore takes it: an entry parsed by [`parse_entry`] or by the reference.
#[derive(Clone, Debug, PartialEq)]
pub enum RestoredEntry {
    /// A pair waiting for its label (key `p<seq hex>`).
    Pair {
        seq: u64,
        request_id: Arc<str>,
        model: Arc<str>,
        production_version: Arc<str>,
        candidate_version: Arc<str>,
        /// SHADOW or CANARY
        role: u8,
        /// NaN for a side that reported an error.
        prod: f64,
        cand: f64,
        ts: f64,
    },
    /// A remembered label (key `l<seq hex>`).
    Label { seq: u64, request_id: Arc<str>, model: Arc<str>, value: u8, ts: f64, matched: bool },
}

impl RestoredEntry {
    fn seq(&self) -> u64 {
        match self {
            RestoredEntry::Pair { seq, .. } | RestoredEntry::Label { seq, .. } => *seq,
        }
    }
}

impl Joiner {
    /// A joiner with the reference's checks: the horizon finite and > 0, both bounds >= 1.
    pub fn new(horizon_s: f64, max_pending: usize, max_labels: usize) -> Result<Self, CoreError> {
        if !horizon_s.is_finite() || horizon_s <= 0.0 {
            return Err(CoreError::Config(format!("horizon_s={horizon_s}: must be a finite number > 0")));
        }
        for (name, value) in [("max_pending", max_pending), ("max_labels", max_labels)] {
            if value < 1 {
                return Err(CoreError::Config(format!("{name}={value}: must be an integer >= 1")));
            }
        }
        Ok(Joiner {
            horizon_s,
            max_pairs: max_pending,
            max_labels,
            comps: Vec::new(),
            comp_index: HashMap::default(),
            s: State::new(),
        })
    }

    /// Pairs waiting for their label.
    pub fn pending_pairs(&self) -> usize {
        self.s.live
    }

    /// Labels remembered (matched or not).
    pub fn pending_labels(&self) -> usize {
        self.s.label_heap.len()
    }

    /// Replace the whole state by restored items (any order) under the meta entry's watermark (`-inf`
    /// for none) and next seq: what `LabelJoiner.restore_entries` builds. On error the state is kept.
    ///
    /// The items must be what valid entries hold (the caller validated them): an error here means a
    /// caller's bug, not a bad checkpoint.
    pub fn restore(&mut self, watermark_s: f64, next_seq: u64, items: Vec<RestoredEntry>) -> Result<(), CoreError> {
        let (mut waits, mut labs): (Vec<RestoredEntry>, Vec<RestoredEntry>) =
            items.into_iter().partition(|item| matches!(item, RestoredEntry::Pair { .. }));
        waits.sort_by_key(RestoredEntry::seq);
        labs.sort_by_key(RestoredEntry::seq);
        for list in [&waits, &labs] {
            for (i, item) in list.iter().enumerate() {
                let bad_role = matches!(item, RestoredEntry::Pair { role, .. } if *role != SHADOW && *role != CANARY);
                let bad_label = matches!(item, RestoredEntry::Label { value, .. } if *value > 1);
                if item.seq() >= next_seq || (i > 0 && list[i - 1].seq() == item.seq()) || bad_role || bad_label {
                    return Err(CoreError::Invalid(format!(
                        "restored entry seq {}: not a valid entry below next_seq {next_seq}, or a repeated seq",
                        item.seq()
                    )));
                }
            }
        }
        let mut s = State::new();
        s.w = watermark_s;
        s.seq = next_seq;
        s.live = waits.len();
        let mut pair_items = Vec::with_capacity(waits.len());
        for item in waits {
            let RestoredEntry::Pair {
                seq,
                request_id,
                model,
                production_version,
                candidate_version,
                role,
                prod,
                cand,
                ts,
            } = item
            else {
                unreachable!("partitioned above");
            };
            let comp = self.comparison(&model, &production_version, &candidate_version, role);
            let wait = Wait { ts, seq, comp, prod, cand };
            // Seq order keeps each request's arrival order.
            let key = match s.pairs.entry(request_id) {
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
            pair_items.push(HeapItem { ts, seq, rid: key });
        }
        let mut label_items = Vec::with_capacity(labs.len());
        for item in labs {
            let RestoredEntry::Label { seq, request_id, model, value, ts, matched } = item else {
                unreachable!("partitioned above");
            };
            let label = Label { model, value, ts, seq, matched };
            let key = match s.labels.entry(request_id) {
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
        s.pair_heap = BinaryHeap::from(pair_items);
        s.label_heap = BinaryHeap::from(label_items);
        s.t.synced_seq = next_seq;
        s.synced_meta = (watermark_s, next_seq);
        self.s = s;
        Ok(())
    }
}

/// One state entry (key `p<seq hex>` or `l<seq hex>`, value the orjson array) as the reference reads it,
/// when this fast path is sure of it; None to have the reference validate it. `next_seq` is the meta's.
pub fn parse_entry(key: &str, raw: &[u8], next_seq: u64) -> Option<RestoredEntry> {
    let kind = *key.as_bytes().first()?;
    if kind != b'p' && kind != b'l' {
        return None;
    }
    let seq = entry::seq(&key[1..]).filter(|&seq| seq < next_seq)?;
    let items = entry::items(raw)?;
    if items.len() != 5 {
        return None;
    }
    let request_id: Arc<str> = Arc::from(entry::string(items[0])?);
    if kind == b'p' {
        // `ComparisonKey.from_id`: four parts, the last a candidate role.
        let id = entry::string(items[1])?;
        let parts: Vec<&str> = id.split('|').collect();
        let [model, production_version, candidate_version, role] = parts[..] else {
            return None;
        };
        let role = role_code(role).filter(|&code| code != PRODUCTION)?;
        let score = |v| if entry::is_null(v) { Some(f64::NAN) } else { entry::number(v) };
        Some(RestoredEntry::Pair {
            seq,
            request_id,
            model: intern(model),
            production_version: intern(production_version),
            candidate_version: intern(candidate_version),
            role,
            prod: score(items[2])?,
            cand: score(items[3])?,
            ts: entry::number(items[4])?,
        })
    } else {
        Some(RestoredEntry::Label {
            seq,
            request_id,
            model: intern(&entry::string(items[1])?),
            value: entry::small(items[2], 1)?,
            ts: entry::number(items[3])?,
            matched: entry::small(items[4], 1)? == 1,
        })
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

impl Joiner {
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
        idx
    }

    fn advance(&mut self, watermark: f64, out: &mut Out) {
        let s = &mut self.s;
        // Only forward; a NaN (never from valid input) leaves the watermark alone.
        if watermark.partial_cmp(&s.w) != Some(std::cmp::Ordering::Greater) {
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

    fn finish(&self, out: Out) -> LabelOutput {
        let comp = |idx: u32| self.comps[idx as usize].clone();
        LabelOutput {
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

    /// The newest ts seen or `now` passed (epoch s), None before any.
    pub fn watermark(&self) -> Option<f64> {
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

impl Joiner {
    /// `LabelJoiner.add_pairs`: join a pairer's output with the labels already here; keep the rest.
    pub fn add_pairs(&mut self, pairs: &Pairs, now_s: f64) -> LabelOutput {
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

    /// `LabelJoiner.add_labels` over all labels of the blocks in order, as one call.
    pub fn add_labels(&mut self, blocks: &[&LabelBlock], now_s: f64) -> LabelOutput {
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
    pub fn delta_into(&mut self, sink: &mut impl Sink) {
        let mut buf = Vec::with_capacity(256);
        let mut key = String::with_capacity(20);
        let s = &mut self.s;
        for (rid, wait) in std::mem::take(&mut s.dirty_pairs) {
            if !s.t.was_dropped(wait.seq) {
                encode_pair(&mut buf, &rid, &wait, &self.comps[wait.comp as usize]);
                sink.upsert(entry_key(&mut key, b'p', wait.seq), &buf);
            }
        }
        for (seq, rid) in std::mem::take(&mut s.dirty_labels) {
            if let Some(label) = s.labels.get(&rid).and_then(|ls| ls.iter().find(|l| l.seq == seq)) {
                encode_label(&mut buf, &rid, label);
                sink.upsert(entry_key(&mut key, b'l', seq), &buf);
            }
        }
        let meta = (s.w, s.seq);
        if meta != s.synced_meta {
            encode_meta(&mut buf, meta.0, meta.1);
            sink.upsert(META_KEY, &buf);
        }
        for (kind, seq) in std::mem::take(&mut s.t.gone) {
            sink.delete(entry_key(&mut key, kind, seq));
        }
        s.dirty_old_labels.clear();
        s.t.dropped.clear();
        s.t.synced_seq = s.seq;
        s.synced_meta = meta;
    }

    /// `LabelJoiner.entries`: the whole state as entries (in seq order).
    pub fn entries_into(&self, sink: &mut impl Sink) {
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
            sink.upsert(entry_key(&mut key, kind, seq), &buf);
        }
        if self.s.w != f64::NEG_INFINITY || self.s.seq != 0 {
            encode_meta(&mut buf, self.s.w, self.s.seq);
            sink.upsert(META_KEY, &buf);
        }
    }
}

#[cfg(test)]
mod tests;
