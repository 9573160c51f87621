//! State deltas and snapshots as one byte string (a *state log record*), for the stores.
//!
//! A join's change tracking can come out as a list of upserts and deletes ([`EntrySink`]: `state_delta`,
//! the reference form) or written straight into one record ([`BlobSink`]: `state_delta_blob`), which
//! the stores append as a whole: one value per batch instead of a key and a value per entry. The format
//! (`streams/joinstate.py` has the reference encoder and the decoder the stores use): a sequence of
//! items, each
//!
//! ```text
//! b'D' key_len:u32le key                       delete
//! b'U' key_len:u32le key value_len:u32le value  upsert
//! ```
//!
//! applied in order. A record holds its deletes first, then its upserts (the order `accumulate` applies a
//! `StateDelta`), and every key carries the record's prefix (`p/` pairer, `l/` joiner), so the records of
//! two joins concatenate into one. [`decode`] and [`apply`] read records back (the tests' round trips).

use std::collections::HashMap;

use crate::CoreError;

/// Where a join writes its entries.
pub trait Sink {
    fn upsert(&mut self, key: &str, value: &[u8]);
    fn delete(&mut self, key: &str);
}

/// The reference form: upserts and deletes in the order the join wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntrySink {
    pub upserts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
}

impl Sink for EntrySink {
    fn upsert(&mut self, key: &str, value: &[u8]) {
        self.upserts.push((key.to_owned(), value.to_vec()));
    }

    fn delete(&mut self, key: &str) {
        self.deletes.push(key.to_owned());
    }
}

/// One record: deletes first, then upserts, every key under `prefix`.
pub struct BlobSink<'a> {
    prefix: &'a str,
    deletes: Vec<u8>,
    upserts: Vec<u8>,
}

impl<'a> BlobSink<'a> {
    pub fn new(prefix: &'a str) -> Self {
        BlobSink { prefix, deletes: Vec::new(), upserts: Vec::with_capacity(4096) }
    }

    fn key(out: &mut Vec<u8>, prefix: &str, key: &str) {
        out.extend_from_slice(&((prefix.len() + key.len()) as u32).to_le_bytes());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(key.as_bytes());
    }

    /// The record.
    pub fn finish(mut self) -> Vec<u8> {
        self.deletes.extend_from_slice(&self.upserts);
        self.deletes
    }
}

impl Sink for BlobSink<'_> {
    fn upsert(&mut self, key: &str, value: &[u8]) {
        self.upserts.push(b'U');
        Self::key(&mut self.upserts, self.prefix, key);
        self.upserts.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.upserts.extend_from_slice(value);
    }

    fn delete(&mut self, key: &str) {
        self.deletes.push(b'D');
        Self::key(&mut self.deletes, self.prefix, key);
    }
}

/// One item of a record: a key and its new value, or None for a delete.
pub type Item = (String, Option<Vec<u8>>);

/// The items of one plain (not zstd-packed) record, in order; an error names the byte offset where the
/// record stops making sense.
pub fn decode(record: &[u8]) -> Result<Vec<Item>, CoreError> {
    fn u32_at(record: &[u8], at: usize) -> Option<usize> {
        Some(u32::from_le_bytes(record.get(at..at + 4)?.try_into().ok()?) as usize)
    }
    let malformed = |at: usize, why: &str| {
        CoreError::Invalid(format!("state log record malformed at byte {at} of {}: {why}", record.len()))
    };
    let mut items = Vec::new();
    let mut at = 0;
    while at < record.len() {
        let op = record[at];
        let key_len = u32_at(record, at + 1).ok_or_else(|| malformed(at, "truncated key length"))?;
        let key = record.get(at + 5..at + 5 + key_len).ok_or_else(|| malformed(at, "key runs past the end"))?;
        let key = std::str::from_utf8(key).map_err(|_| malformed(at, "key is not UTF-8"))?.to_owned();
        let next = at + 5 + key_len;
        match op {
            b'D' => {
                items.push((key, None));
                at = next;
            }
            b'U' => {
                let value_len = u32_at(record, next).ok_or_else(|| malformed(at, "truncated value length"))?;
                let value = record
                    .get(next + 4..next + 4 + value_len)
                    .ok_or_else(|| malformed(at, "value runs past the end"))?;
                items.push((key, Some(value.to_vec())));
                at = next + 4 + value_len;
            }
            other => return Err(malformed(at, &format!("unknown item type {other:#04x}"))),
        }
    }
    Ok(items)
}

/// Apply one record to `entries` in place; nothing is applied when it is malformed.
pub fn apply(entries: &mut HashMap<String, Vec<u8>>, record: &[u8]) -> Result<(), CoreError> {
    for (key, value) in decode(record)? {
        match value {
            Some(value) => {
                entries.insert(key, value);
            }
            None => {
                entries.remove(&key);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_holds_deletes_then_upserts_under_its_prefix() {
        let mut sink = BlobSink::new("p/");
        sink.upsert("1", b"[1]");
        sink.delete("0");
        sink.upsert("m", b"");
        let record = sink.finish();
        // Written out by hand from the format: D, u32 key length 3, "p/0", then the upserts.
        let mut want = Vec::new();
        want.extend_from_slice(b"D\x03\x00\x00\x00p/0");
        want.extend_from_slice(b"U\x03\x00\x00\x00p/1\x03\x00\x00\x00[1]");
        want.extend_from_slice(b"U\x03\x00\x00\x00p/m\x00\x00\x00\x00");
        assert_eq!(record, want);
        assert_eq!(
            decode(&record).unwrap(),
            vec![("p/0".into(), None), ("p/1".into(), Some(b"[1]".to_vec())), ("p/m".into(), Some(Vec::new()))]
        );
    }

    #[test]
    fn records_of_two_joins_concatenate_and_apply_in_order() {
        let mut entries: HashMap<String, Vec<u8>> =
            [("p/0".to_owned(), b"old".to_vec()), ("l/p1".to_owned(), b"x".to_vec())].into();
        let mut pairer = BlobSink::new("p/");
        pairer.delete("0");
        pairer.upsert("2", b"new");
        let mut joiner = BlobSink::new("l/");
        joiner.delete("p1");
        joiner.upsert("p1", b"again"); // a delete and an upsert of one key: the upsert wins
        let mut record = pairer.finish();
        record.extend(joiner.finish());
        apply(&mut entries, &record).unwrap();
        let want: HashMap<String, Vec<u8>> =
            [("p/2".to_owned(), b"new".to_vec()), ("l/p1".to_owned(), b"again".to_vec())].into();
        assert_eq!(entries, want);
    }

    #[test]
    fn malformed_records_are_refused_whole() {
        let mut good = BlobSink::new("");
        good.upsert("k", b"v");
        let good = good.finish();
        let mut entries = HashMap::new();
        for (record, why) in [
            (&good[..good.len() - 1], "at byte 0 of 10: value runs past the end"),
            (&good[..3], "at byte 0 of 3: truncated key length"),
            (&b"X\x00\x00\x00\x00"[..], "at byte 0 of 5: unknown item type 0x58"),
            (&b"D\x05\x00\x00\x00ab"[..], "at byte 0 of 7: key runs past the end"),
            (&b"D\x01\x00\x00\x00\xff"[..], "at byte 0 of 6: key is not UTF-8"),
        ] {
            let err = apply(&mut entries, record).unwrap_err();
            assert_eq!(err.to_string(), format!("state log record malformed {why}"));
        }
        let mut tail = good.clone();
        tail.push(b'D');
        assert!(apply(&mut entries, &tail).is_err());
        assert!(entries.is_empty(), "nothing applied from a malformed record");
    }
}
