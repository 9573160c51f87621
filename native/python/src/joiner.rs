//! `NativeJoiner` and `LabelOut`: the core label joiner (`shadowgate_core::joiner`) as Python classes.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use shadowgate_core::block::{self, CANARY, ROLE_NAMES, SHADOW};
use shadowgate_core::joiner::{self, Comparison, Joiner, LabelOutput, RestoredEntry};
use shadowgate_core::statelog::{BlobSink, EntrySink};

use crate::blocks::{LabelBlock, Pairs};
use crate::{delta_to_py, value_error};

/// The result of one call, turned into Python objects on demand (`streams.native_labels.to_label_result`).
#[pyclass(frozen, module = "streams._native")]
pub struct LabelOut(LabelOutput);

/// Writable little-endian float64 columns (`numpy.frombuffer` of a bytearray is writable, as the
/// reference's arrays are).
fn f64_array<'py>(py: Python<'py>, values: &[f64]) -> Bound<'py, PyByteArray> {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    PyByteArray::new_bound(py, &raw)
}

fn names(c: &Comparison) -> (&str, &str, &str, &'static str) {
    (&c.model, &c.production_version, &c.candidate_version, ROLE_NAMES[c.role as usize])
}

fn ts_lists<'py>(py: Python<'py>, items: &[(Arc<Comparison>, Vec<f64>)]) -> Bound<'py, PyList> {
    PyList::new_bound(
        py,
        items.iter().map(|(c, ts)| -> PyObject {
            let (m, p, k, r) = names(c);
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
            self.0.joined.iter().map(|(c, j)| {
                let (m, p, k, r) = names(c);
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
        ts_lists(py, &self.0.unlabeled)
    }

    #[getter]
    fn evicted<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        ts_lists(py, &self.0.evicted)
    }

    #[getter]
    fn label_count(&self) -> usize {
        self.0.label_count()
    }

    #[getter]
    fn unmatched_labels(&self) -> u64 {
        self.0.unmatched_labels
    }

    #[getter]
    fn evicted_labels(&self) -> u64 {
        self.0.evicted_labels
    }

    #[getter]
    fn duplicate_labels(&self) -> u64 {
        self.0.duplicate_labels
    }

    #[getter]
    fn conflicting_labels(&self) -> u64 {
        self.0.conflicting_labels
    }

    #[getter]
    fn watermark_s(&self) -> Option<f64> {
        self.0.watermark_s
    }
}

/// The label joiner of one partition (see `streams/native_labels.py` for the Python-facing adapter).
#[pyclass(module = "streams._native")]
pub struct NativeJoiner(Joiner);

#[pymethods]
impl NativeJoiner {
    #[new]
    fn new(horizon_s: f64, max_pending: usize, max_labels: usize) -> PyResult<Self> {
        Joiner::new(horizon_s, max_pending, max_labels).map(NativeJoiner).map_err(value_error)
    }

    #[getter]
    fn pending_pairs(&self) -> usize {
        self.0.pending_pairs()
    }

    #[getter]
    fn pending_labels(&self) -> usize {
        self.0.pending_labels()
    }

    #[getter]
    fn watermark_s(&self) -> Option<f64> {
        self.0.watermark()
    }

    /// `LabelJoiner.add_pairs`: join a pairer's output with the labels already here; keep the rest.
    fn add_pairs(&mut self, py: Python<'_>, pairs: PyRef<'_, Pairs>, now_s: f64) -> LabelOut {
        let pairs: &block::Pairs = &pairs.0;
        let joiner = &mut self.0;
        // The join touches no Python object: other threads (Faust's event loop) run meanwhile.
        LabelOut(py.allow_threads(|| joiner.add_pairs(pairs, now_s)))
    }

    /// `LabelJoiner.add_labels` over all labels of the blocks in order, as one call.
    fn add_labels(&mut self, py: Python<'_>, blocks: Vec<PyRef<'_, LabelBlock>>, now_s: f64) -> LabelOut {
        let blocks: Vec<&block::LabelBlock> = blocks.iter().map(|b| &b.0).collect();
        let joiner = &mut self.0;
        LabelOut(py.allow_threads(|| joiner.add_labels(&blocks, now_s)))
    }

    /// `LabelJoiner.state_delta`: (upserts, deletes) since the previous call; the next starts empty.
    fn state_delta<'py>(&mut self, py: Python<'py>) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
        let mut sink = EntrySink::default();
        self.0.delta_into(&mut sink);
        delta_to_py(py, sink)
    }

    /// The same delta as one state log record, every key under `prefix` (`streams/joinstate.py`).
    fn state_delta_blob<'py>(&mut self, py: Python<'py>, prefix: &str) -> Bound<'py, PyBytes> {
        let inner = &mut self.0;
        let blob = py.allow_threads(|| {
            let mut sink = BlobSink::new(prefix);
            inner.delta_into(&mut sink);
            sink.finish()
        });
        PyBytes::new_bound(py, &blob)
    }

    /// `LabelJoiner.entries`: the whole state as entries (in seq order).
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut sink = EntrySink::default();
        self.0.entries_into(&mut sink);
        Ok(delta_to_py(py, sink)?.0)
    }

    /// The whole state as one state log record of upserts, every key under `prefix`.
    fn entries_blob<'py>(&self, py: Python<'py>, prefix: &str) -> Bound<'py, PyBytes> {
        let inner = &self.0;
        let blob = py.allow_threads(|| {
            let mut sink = BlobSink::new(prefix);
            inner.entries_into(&mut sink);
            sink.finish()
        });
        PyBytes::new_bound(py, &blob)
    }

    /// Replace the whole state by `entries` (the meta entry `"m"` already read by the caller: its
    /// watermark, `-inf` for none, and next seq). An entry in `resolved` is taken as the reference parsed
    /// it: a pair `p..` as (seq, request_id, model, production_version, candidate_version, role, prod,
    /// cand, ts), a label `l..` as (seq, request_id, model, label, ts, matched). Every other entry is
    /// parsed here when the fast path is sure of it.
    ///
    /// Returns the keys of the entries it could not take (in `entries`' order), changing nothing; or an
    /// empty list once the state is replaced. ValueError (state kept) for resolved values no valid entry
    /// holds.
    fn restore_entries(
        &mut self,
        entries: &Bound<'_, PyDict>,
        watermark_s: f64,
        next_seq: u64,
        resolved: &Bound<'_, PyDict>,
    ) -> PyResult<Vec<PyObject>> {
        let mut items = Vec::with_capacity(entries.len());
        let mut deferred = Vec::new();
        let any_resolved = !resolved.is_empty();
        for (key, raw) in entries.iter() {
            // A key that is no str (or not valid UTF-8) is the reference's to refuse.
            let name = key.downcast::<PyString>().ok().and_then(|k| k.to_str().ok());
            if name == Some("m") {
                continue;
            }
            if any_resolved {
                if let Some(parsed) = resolved.get_item(&key)? {
                    items.push(entry_from_py(name.unwrap_or_default(), &parsed)?);
                    continue;
                }
            }
            let taken = match (name, raw.downcast::<PyBytes>()) {
                (Some(name), Ok(raw)) => joiner::parse_entry(name, raw.as_bytes(), next_seq),
                _ => None,
            };
            match taken {
                Some(item) => items.push(item),
                None => deferred.push(key.unbind()),
            }
        }
        if !deferred.is_empty() {
            return Ok(deferred);
        }
        self.0.restore(watermark_s, next_seq, items).map_err(value_error)?;
        Ok(Vec::new())
    }
}

/// An entry the reference parsed (`streams.native_labels` builds the tuple from `_parse_wait` or
/// `_parse_label`); the key's first letter says which.
fn entry_from_py(key: &str, parsed: &Bound<'_, PyAny>) -> PyResult<RestoredEntry> {
    let t = parsed.downcast::<PyTuple>()?;
    let text = |i: usize| -> PyResult<Arc<str>> { Ok(Arc::from(t.get_item(i)?.extract::<String>()?)) };
    let name = |i: usize| -> PyResult<Arc<str>> { Ok(block::intern(&t.get_item(i)?.extract::<String>()?)) };
    match (key.as_bytes().first(), t.len()) {
        (Some(b'p'), 9) => {
            let role: String = t.get_item(5)?.extract()?;
            let role = block::role_code(&role).filter(|&code| code == SHADOW || code == CANARY).ok_or_else(|| {
                PyValueError::new_err(format!("a resolved pair's role {role:?} is not a candidate role"))
            })?;
            Ok(RestoredEntry::Pair {
                seq: t.get_item(0)?.extract()?,
                request_id: text(1)?,
                model: name(2)?,
                production_version: name(3)?,
                candidate_version: name(4)?,
                role,
                prod: t.get_item(6)?.extract()?,
                cand: t.get_item(7)?.extract()?,
                ts: t.get_item(8)?.extract()?,
            })
        }
        (Some(b'l'), 6) => Ok(RestoredEntry::Label {
            seq: t.get_item(0)?.extract()?,
            request_id: text(1)?,
            model: name(2)?,
            value: t.get_item(3)?.extract()?,
            ts: t.get_item(4)?.extract()?,
            matched: t.get_item(5)?.extract()?,
        }),
        _ => Err(PyValueError::new_err(format!("resolved entry {key:?}: {} is no pair or label", t.repr()?))),
    }
}
