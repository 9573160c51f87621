//! The pairer's request-id index: a seeded hasher for the id map, the group of halves per id, and the
//! slab both halves and groups live in (stable slot indices, reused through a free list).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// The request-id map's hasher: a folded multiply per 8 bytes under per-pairer random keys (several times
/// faster than SipHash on 36-character ids; the random keys keep colliding ids from being precomputed).
#[derive(Clone)]
pub(super) struct Keys(u64, u64);

impl Keys {
    pub(super) fn random() -> Self {
        let state = std::collections::hash_map::RandomState::new();
        Keys(state.hash_one(0x5eed_u64) | 1, state.hash_one(0xfeed_u64) | 1)
    }
}

fn fold(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

pub(super) struct FoldHasher {
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
pub(super) type Groups = HashMap<Arc<str>, u32, Keys>;

/// The halves of one request id (slots in arrival order) and the id itself.
pub(super) struct GroupSlot {
    pub(super) rid: Arc<str>,
    pub(super) members: Group,
}

/// The slots of one request id's halves, in arrival order (almost always 1 to 3 of them).
pub(super) enum Group {
    Inline(u8, [u32; 4]),
    Spilled(Vec<u32>),
}

impl Group {
    pub(super) fn empty() -> Self {
        Group::Inline(0, [0; 4])
    }

    pub(super) fn as_slice(&self) -> &[u32] {
        match self {
            Group::Inline(n, slots) => &slots[..*n as usize],
            Group::Spilled(v) => v,
        }
    }

    pub(super) fn push(&mut self, slot: u32) {
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
    pub(super) fn remove(&mut self, slot: u32) -> bool {
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

/// Put `item` in a free slot of `slab` (or a new one at the end); its index.
pub(super) fn slab_insert<T>(slab: &mut Vec<Option<T>>, free: &mut Vec<u32>, item: T) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_keeps_arrival_order_inline_and_spilled() {
        let mut group = Group::empty();
        for slot in [7, 3, 9, 1, 4, 8] {
            group.push(slot);
        }
        assert!(matches!(group, Group::Spilled(_)));
        assert_eq!(group.as_slice(), [7, 3, 9, 1, 4, 8]);
        assert!(!group.remove(9));
        assert!(!group.remove(42), "an absent slot changes nothing");
        assert_eq!(group.as_slice(), [7, 3, 1, 4, 8]);
        let mut small = Group::empty();
        small.push(5);
        small.push(6);
        assert!(!small.remove(5));
        assert_eq!(small.as_slice(), [6]);
        assert!(small.remove(6), "empty now");
    }

    #[test]
    fn the_slab_reuses_freed_slots() {
        let (mut slab, mut free) = (Vec::new(), Vec::new());
        assert_eq!((slab_insert(&mut slab, &mut free, 'a'), slab_insert(&mut slab, &mut free, 'b')), (0, 1));
        slab[0] = None;
        free.push(0);
        assert_eq!(slab_insert(&mut slab, &mut free, 'c'), 0);
        assert_eq!(slab, [Some('c'), Some('b')]);
    }

    #[test]
    fn equal_ids_hash_equally_and_keys_differ_per_map() {
        let keys = Keys::random();
        let hash = |keys: &Keys, id: &str| keys.hash_one(id);
        let id = "5f0c6a4e-1d2b-4c8e-9a57-3b1f2e4d6c80";
        let copy: String = id.chars().collect(); // another allocation, equal text
        assert_eq!(hash(&keys, id), hash(&keys, &copy));
        assert_ne!(hash(&keys, id), hash(&keys, "5f0c6a4e-1d2b-4c8e-9a57-3b1f2e4d6c81"));
        let mut map: Groups = HashMap::with_hasher(keys);
        map.insert(Arc::from(id), 3);
        assert_eq!(map.get(id), Some(&3));
    }
}
