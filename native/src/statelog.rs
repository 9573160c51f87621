//! State deltas and snapshots as one byte string (a *state log record*), for the stores.
//!
//! A join's change tracking can come out as Python objects (a dict of upserts and a list of deletes:
//! `state_delta`, the reference form) or written straight into one record (`state_delta_blob`), which
//! the stores append as a whole: one value per batch instead of a key and a value per entry. The format
//! (`streams/joinstate.py` has the reference encoder and the decoder): a sequence of items, each
//!
//! ```text
//! b'D' key_len:u32le key                       delete
//! b'U' key_len:u32le key value_len:u32le value  upsert
//! ```
//!
//! applied in order. A record holds its deletes first, then its upserts (the order `accumulate` applies a
//! `StateDelta`), and every key carries the record's prefix (`p/` pairer, `l/` joiner), so the records of
//! two joins concatenate into one.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

/// Where a join writes its entries: Python objects or a record.
pub trait Sink {
    fn upsert(&mut self, key: &str, value: &[u8]) -> PyResult<()>;
    fn delete(&mut self, key: &str) -> PyResult<()>;
}

/// The reference form: `(dict of upserts, list of deletes)`.
pub struct PySink<'py> {
    py: Python<'py>,
    pub upserts: Bound<'py, PyDict>,
    pub deletes: Bound<'py, PyList>,
}

impl<'py> PySink<'py> {
    pub fn new(py: Python<'py>) -> Self {
        PySink { py, upserts: PyDict::new_bound(py), deletes: PyList::empty_bound(py) }
    }
}

impl Sink for PySink<'_> {
    fn upsert(&mut self, key: &str, value: &[u8]) -> PyResult<()> {
        self.upserts.set_item(PyString::new_bound(self.py, key), PyBytes::new_bound(self.py, value))
    }

    fn delete(&mut self, key: &str) -> PyResult<()> {
        self.deletes.append(PyString::new_bound(self.py, key))
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

    pub fn finish<'py>(mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.deletes.extend_from_slice(&self.upserts);
        PyBytes::new_bound(py, &self.deletes)
    }
}

impl Sink for BlobSink<'_> {
    fn upsert(&mut self, key: &str, value: &[u8]) -> PyResult<()> {
        self.upserts.push(b'U');
        Self::key(&mut self.upserts, self.prefix, key);
        self.upserts.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.upserts.extend_from_slice(value);
        Ok(())
    }

    fn delete(&mut self, key: &str) -> PyResult<()> {
        self.deletes.push(b'D');
        Self::key(&mut self.deletes, self.prefix, key);
        Ok(())
    }
}
