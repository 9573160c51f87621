//! The event-time join of production with shadow/canary scores: `streams/pairing.py`'s `Pairer` in Rust.
//!
//! Same rules, same output order and BYTE-IDENTICAL state entries (orjson's compact JSON), so a Python
//! worker and a native worker can take over each other's partitions. The Python module is the reference;
//! `tests/test_native_pairing.py` checks both give the same results and entries on random streams.
//!
//! Layout: remembered events ("halves") live in a slab (stable slot indices, reused through a free list);
//! per request id a group holds the slots of its halves in arrival order ([`groups`]); a queue of (ts, seq,
//! slot) gives expiry and eviction order ([`queue`]). Change tracking since the last delta (dirty slots in
//! first-change order, seqs of dropped entries already in a delta) costs in proportion to the batch, never
//! the state.
//!
//! Restore: [`parse_entry`] reads the entries it is sure of (see [`crate::entry`]); the caller has the
//! reference validate the others (`streams.native_pairing`) and passes every entry, parsed, to
//! [`Pairer::restore`]. It is not on the hot path.

mod groups;
mod output;
mod queue;

use std::collections::HashMap;
use std::sync::Arc;

use crate::block::{self, FeatureValue, Features, ScoreBlock, ScoreRow, PRODUCTION};
use crate::entry;
use crate::jsonfmt;
use crate::statelog::Sink;
use crate::CoreError;
use groups::{slab_insert, Group, GroupSlot, Groups, Keys};
use output::{Out, PairSide};
pub use output::{PairingOutput, SideEvents};
use queue::{Key, Queue};

const META_KEY: &str = "m";

const PENDING: u8 = 0; // waiting for a partner
const OPEN: u8 = 1; // a production that paired, kept open for a late second candidate
const DONE: u8 = 2; // a candidate that paired: a tombstone kept only to recognise duplicates

/// Arc identity first: names are interned, so equal names are usually the same allocation.
#[inline]
fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// One remembered event.
struct Half {
    /// Index of its request id's group in `Pairer::gslab`.
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

/// The pairer of one partition (see `streams/pairing.py`). Not thread-safe: one per partition.
pub struct Pairer {
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

/// One remembered event as restore takes it: an entry parsed by [`parse_entry`] or by the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoredHalf {
    pub seq: u64,
    pub request_id: Box<str>,
    pub model: Arc<str>,
    pub version: Arc<str>,
    /// 0 production, 1 shadow, 2 canary
    pub role: u8,
    pub ts: f64,
    /// 0 waiting for a partner, 1 a production that paired (open), 2 a paired candidate (tombstone)
    pub state: u8,
    pub score: f64,
    pub latency_ms: f64,
    pub error: bool,
    pub features: Option<Features>,
}

impl Pairer {
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
        let group = GroupSlot { rid, members: Group::empty() };
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
            out.orphans.push_error(&row.model, &row.version, row.role, ts, row.error);
            return;
        }
        let seq = self.seq;
        let mut state = PENDING;
        let mut keep_features = true;
        let slots = &mut self.slots;
        let gid = self.groups.get(&*row.request_id).copied();
        if let Some(gid) = gid {
            let members = self.gslab[gid as usize].as_ref().expect("live group").members.as_slice();
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
                        out.pair(&row.request_id, &row.model, me, cand, row.features.clone(), cand_features);
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
                        out.pair(&row.request_id, &row.model, prod, me, o.features.clone(), row.features.clone());
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
        self.gslab[gid as usize].as_mut().expect("live group").members.push(slot);
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
            self.dirty.retain(|&(seq, slot)| matches!(&slots[slot as usize], Some(h) if h.seq == seq));
        }
    }

    fn encode(buf: &mut Vec<u8>, h: &Half, rid: &str) {
        buf.clear();
        buf.push(b'[');
        jsonfmt::write_str(buf, rid);
        buf.push(b',');
        jsonfmt::write_str(buf, &h.model);
        buf.push(b',');
        jsonfmt::write_str(buf, &h.version);
        buf.push(b',');
        buf.push(b'0' + h.role);
        buf.push(b',');
        jsonfmt::write_f64(buf, h.ts);
        buf.push(b',');
        buf.push(b'0' + h.state);
        if h.state != DONE {
            buf.push(b',');
            jsonfmt::write_f64(buf, h.score);
            buf.push(b',');
            jsonfmt::write_f64(buf, h.latency_ms);
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
            jsonfmt::write_f64(&mut buf, self.w);
        }
        buf.push(b',');
        jsonfmt::write_u64(&mut buf, self.seq);
        buf.push(b']');
        buf
    }

    /// The newest event ts seen or `now` passed (epoch s), None before any.
    pub fn watermark(&self) -> Option<f64> {
        if self.w == f64::NEG_INFINITY {
            None
        } else {
            Some(self.w)
        }
    }
}

impl Pairer {
    /// `add_batch`'s work: every row of `blocks` in order, then the watermark raised to
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
    pub fn delta_into(&mut self, sink: &mut impl Sink) {
        let dirty = std::mem::take(&mut self.dirty);
        let mut buf = std::mem::take(&mut self.buf);
        let mut key = [0u8; 16];
        for &(seq, slot) in &dirty {
            if let Some(h) = self.slots[slot as usize].as_mut() {
                if h.seq == seq && h.dirty {
                    h.dirty = false;
                    let rid = &self.gslab[h.gid as usize].as_ref().expect("live group").rid;
                    Self::encode(&mut buf, h, rid);
                    sink.upsert(hex(&mut key, seq), &buf);
                }
            }
        }
        self.buf = buf;
        let meta = (self.w, self.seq);
        if meta != self.synced_meta {
            sink.upsert(META_KEY, &self.meta());
        }
        for &seq in &self.gone {
            sink.delete(hex(&mut key, seq));
        }
        self.gone.clear();
        let mut dirty = dirty;
        dirty.clear();
        self.dirty = dirty;
        self.synced_seq = self.seq;
        self.synced_meta = meta;
    }

    pub fn entries_into(&mut self, sink: &mut impl Sink) {
        let mut live: Vec<(u64, u32)> =
            self.slots.iter().enumerate().filter_map(|(slot, h)| h.as_ref().map(|h| (h.seq, slot as u32))).collect();
        live.sort_unstable();
        let mut buf = std::mem::take(&mut self.buf);
        let mut key = [0u8; 16];
        for (seq, slot) in live {
            let h = self.half(slot);
            Self::encode(&mut buf, h, self.rid(h));
            sink.upsert(hex(&mut key, seq), &buf);
        }
        self.buf = buf;
        if (self.w, self.seq) != (f64::NEG_INFINITY, 0) {
            sink.upsert(META_KEY, &self.meta());
        }
    }
}

impl Pairer {
    /// A pairer with the reference's checks: the window finite and > 0, the bound >= 1.
    pub fn new(join_window_s: f64, max_pending: usize) -> Result<Self, CoreError> {
        if !join_window_s.is_finite() || join_window_s <= 0.0 {
            return Err(CoreError::Config(format!("join_window_s={join_window_s}: must be a finite number > 0")));
        }
        if max_pending < 1 {
            return Err(CoreError::Config(format!("max_pending={max_pending}: must be an integer >= 1")));
        }
        let mut pairer = Pairer {
            window_s: join_window_s,
            max_pending,
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

    pub fn join_window_s(&self) -> f64 {
        self.window_s
    }

    /// Events remembered now (waiting, open productions and paired tombstones).
    pub fn pending(&self) -> usize {
        self.heap.len()
    }

    /// All rows of `blocks` in order, then the watermark raised to `now_s` (the partition's max ts) and
    /// the bound applied: `Pairer.add_batch`.
    pub fn add_batch(&mut self, blocks: &[&ScoreBlock], now_s: f64) -> PairingOutput {
        let out = self.add_rows(blocks, now_s);
        out.finish(self.watermark())
    }

    /// Replace the whole state by restored halves (any order) under the meta entry's watermark (`-inf`
    /// for none) and next seq: what `Pairer.restore_entries` builds. On error the state is kept.
    ///
    /// The halves must be what valid entries hold (the caller validated them): an error here means a
    /// caller's bug, not a bad checkpoint.
    pub fn restore(&mut self, watermark_s: f64, next_seq: u64, mut halves: Vec<RestoredHalf>) -> Result<(), CoreError> {
        halves.sort_unstable_by_key(|h| h.seq);
        for (i, h) in halves.iter().enumerate() {
            if h.seq >= next_seq || (i > 0 && halves[i - 1].seq == h.seq) || h.role > 2 || h.state > DONE {
                return Err(CoreError::Invalid(format!(
                    "restored half seq {} (role {}, state {}): not a valid entry below next_seq {next_seq}, or a repeated seq",
                    h.seq, h.role, h.state
                )));
            }
        }
        self.clear();
        self.w = watermark_s;
        self.seq = next_seq;
        let mut heap = Vec::with_capacity(halves.len());
        for r in halves {
            let gid = match self.groups.get(&*r.request_id) {
                Some(&gid) => gid,
                None => {
                    let rid: Arc<str> = Arc::from(r.request_id);
                    let gid = self.new_group(rid.clone());
                    self.groups.insert(rid, gid);
                    gid
                }
            };
            let (ts, seq) = (r.ts, r.seq);
            let half = Half {
                gid,
                model: r.model,
                version: r.version,
                features: r.features,
                ts,
                score: r.score,
                latency_ms: r.latency_ms,
                seq,
                role: r.role,
                state: r.state,
                error: r.error,
                dirty: false,
            };
            let slot = self.store(half);
            self.gslab[gid as usize].as_mut().expect("live group").members.push(slot);
            heap.push(Key { ts, seq, slot });
        }
        heap.sort_unstable();
        self.heap = Queue::from_sorted(heap);
        self.synced_seq = next_seq;
        self.synced_meta = (watermark_s, next_seq);
        Ok(())
    }
}

/// One state entry (key: the seq in hex; value: the orjson array) as the reference reads it, when this
/// fast path is sure of it; None to have the reference validate it. `next_seq` is the meta entry's.
pub fn parse_entry(key: &str, raw: &[u8], next_seq: u64) -> Option<RestoredHalf> {
    let seq = entry::seq(key).filter(|&seq| seq < next_seq)?;
    let items = entry::items(raw)?;
    // A tombstone is 6 fields ending in the int 2; the reference pads it with 0.0, 0.0, 0, null.
    let tombstone = items.len() == 6 && entry::small(items[5], DONE) == Some(DONE);
    if !tombstone && items.len() != 10 {
        return None;
    }
    let mut half = RestoredHalf {
        seq,
        request_id: entry::string(items[0])?.into_boxed_str(),
        model: block::intern(&entry::string(items[1])?),
        version: block::intern(&entry::string(items[2])?),
        role: entry::small(items[3], 2)?,
        ts: entry::number(items[4])?,
        state: entry::small(items[5], DONE)?,
        score: 0.0,
        latency_ms: 0.0,
        error: false,
        features: None,
    };
    if !tombstone {
        half.score = entry::number(items[6])?;
        half.latency_ms = entry::number(items[7])?;
        half.error = entry::small(items[8], 1)? == 1;
        half.features = if entry::is_null(items[9]) { None } else { Some(features(items[9])?) };
    }
    Some(half)
}

/// A features object whose values are all null, 64-bit ints, floats or strings.
fn features(value: &serde_json::value::RawValue) -> Option<Features> {
    let mut items = Vec::new();
    for (name, value) in entry::object(value)? {
        let value = if entry::is_null(value) {
            FeatureValue::Null
        } else if let Some(v) = entry::int(value) {
            FeatureValue::Int(v)
        } else if let Some(v) = entry::float(value) {
            FeatureValue::Float(v)
        } else {
            FeatureValue::Str(entry::string(value)?.into_boxed_str())
        };
        items.push((name.into_boxed_str(), value));
    }
    Some(items.into_boxed_slice())
}

/// Lowercase hex of a seq: an entry's key.
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

/// Features as orjson writes the dict (or null).
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
        jsonfmt::write_str(buf, name);
        buf.push(b':');
        match value {
            FeatureValue::Null => buf.extend_from_slice(b"null"),
            FeatureValue::Int(v) => jsonfmt::write_i64(buf, *v),
            FeatureValue::Float(v) => jsonfmt::write_f64(buf, *v),
            FeatureValue::Str(s) => jsonfmt::write_str(buf, s),
        }
    }
    buf.push(b'}');
}

#[cfg(test)]
mod tests;
