//! The pairer's expiry order: remembered halves by (ts, seq), smallest first.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

/// Heap key: (ts, seq) with Python's tuple order (ts are never NaN; -0.0 == 0.0 falls through to seq).
#[derive(Clone, Copy)]
pub(super) struct Key {
    pub(super) ts: f64,
    pub(super) seq: u64,
    pub(super) slot: u32,
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
        self.ts.partial_cmp(&other.ts).unwrap_or(Ordering::Equal).then(self.seq.cmp(&other.seq))
    }
}

/// The remembered halves by (ts, seq), smallest first: a sorted run for keys that arrive in order (the
/// usual case: ts rise with arrival, and seq always does), a binary heap for the others. Both push and
/// pop are O(1) on in-order traffic; the order is exactly the heap's.
#[derive(Default)]
pub(super) struct Queue {
    run: VecDeque<Key>,
    heap: BinaryHeap<Reverse<Key>>,
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    pub(super) fn push(&mut self, key: Key) {
        match self.run.back() {
            Some(last) if key < *last => self.heap.push(Reverse(key)),
            _ => self.run.push_back(key),
        }
    }

    pub(super) fn peek(&self) -> Option<Key> {
        match (self.run.front(), self.heap.peek()) {
            (Some(a), Some(Reverse(b))) => Some(if a < b { *a } else { *b }),
            (Some(a), None) => Some(*a),
            (None, Some(Reverse(b))) => Some(*b),
            (None, None) => None,
        }
    }

    pub(super) fn pop(&mut self) -> Option<Key> {
        match (self.run.front(), self.heap.peek()) {
            (Some(a), Some(Reverse(b))) if b < a => self.heap.pop().map(|Reverse(k)| k),
            (Some(_), _) => self.run.pop_front(),
            (None, _) => self.heap.pop().map(|Reverse(k)| k),
        }
    }

    /// All keys at once (restore).
    pub(super) fn from_sorted(keys: Vec<Key>) -> Self {
        Queue { run: keys.into(), heap: BinaryHeap::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ts: f64, seq: u64) -> Key {
        Key { ts, seq, slot: seq as u32 }
    }

    #[test]
    fn pops_in_ts_then_seq_order_whatever_the_arrival_order() {
        // A deterministic shuffle of ts with repeats (ties broken by seq), -0.0 equal to 0.0.
        let ts = [5.0, 1.0, 1.0, 7.5, -0.0, 0.0, 3.0, 9.0, 2.0, 1.0, 8.0, 8.0];
        let mut queue = Queue::default();
        for (seq, &t) in ts.iter().enumerate() {
            queue.push(key(t, seq as u64));
        }
        assert_eq!(queue.len(), ts.len());
        let mut want: Vec<(f64, u64)> = ts.iter().enumerate().map(|(s, &t)| (t, s as u64)).collect();
        want.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
        let mut got = Vec::new();
        while let Some(top) = queue.peek() {
            let popped = queue.pop().expect("peeked");
            assert_eq!((popped.ts.to_bits(), popped.seq), (top.ts.to_bits(), top.seq));
            got.push((popped.ts, popped.seq));
        }
        assert_eq!(got, want);
        assert_eq!(queue.pop().map(|k| k.seq), None);
    }

    #[test]
    fn in_order_keys_stay_in_the_run() {
        let mut queue = Queue::from_sorted(vec![key(1.0, 0), key(2.0, 1)]);
        queue.push(key(2.0, 2));
        queue.push(key(3.0, 3));
        assert!(queue.heap.is_empty());
        queue.push(key(0.5, 4));
        assert_eq!(queue.heap.len(), 1);
        assert_eq!(queue.pop().map(|k| k.seq), Some(4));
    }
}
