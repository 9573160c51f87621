//! `NativePairer` and `PairingOut`: the core pairer (`shadowgate_core::pairer`) as Python classes.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyTuple};
use shadowgate_core::block;
use shadowgate_core::pairer::{self, Pairer, RestoredHalf, SideEvents};
use shadowgate_core::statelog::{BlobSink, EntrySink};

use crate::blocks::{feature_from_py, Pairs, ScoreBlock};
use crate::{bool_bytes, delta_to_py, f64_bytes, value_error};

/// What one `add_batch` produced (see `PairingResult` in `streams/pairing.py`): the pairs as a `Pairs`
/// the label joiner takes directly, per-side outputs as lists of (model, version, role, ts as float64
/// bytes), the orphans' error flags as uint8 bytes aligned with `orphans`.
#[pyclass(frozen, module = "streams._native")]
pub struct PairingOut {
    #[pyo3(get)]
    pairs: Py<Pairs>,
    orphans: Vec<SideEvents>,
    evicted: Vec<SideEvents>,
    late: Vec<SideEvents>,
    duplicates: Vec<SideEvents>,
    #[pyo3(get)]
    forgotten: u64,
    #[pyo3(get)]
    watermark_s: Option<f64>,
}

fn sides_to_py<'py>(py: Python<'py>, sides: &[SideEvents]) -> Bound<'py, PyList> {
    PyList::new_bound(
        py,
        sides.iter().map(|s| -> PyObject {
            (s.model.as_ref(), s.version.as_ref(), block::ROLE_NAMES[s.role as usize], f64_bytes(py, &s.ts)).into_py(py)
        }),
    )
}

#[pymethods]
impl PairingOut {
    #[getter]
    fn orphans<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        sides_to_py(py, &self.orphans)
    }

    #[getter]
    fn orphan_errors<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        PyList::new_bound(py, self.orphans.iter().map(|s| bool_bytes(py, &s.errors)))
    }

    #[getter]
    fn evicted<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        sides_to_py(py, &self.evicted)
    }

    #[getter]
    fn late<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        sides_to_py(py, &self.late)
    }

    #[getter]
    fn duplicates<'py>(&self, py: Python<'py>) -> Bound<'py, PyList> {
        sides_to_py(py, &self.duplicates)
    }

    #[getter]
    fn pair_count(&self) -> usize {
        self.pairs.get().0.len()
    }
}

/// The pairer of one partition (see `streams/pairing.py`). Not thread-safe: one per partition.
#[pyclass(module = "streams._native")]
pub struct NativePairer(Pairer);

#[pymethods]
impl NativePairer {
    #[new]
    #[pyo3(signature = (join_window_s = 60.0, max_pending = 200_000))]
    fn new(join_window_s: f64, max_pending: usize) -> PyResult<Self> {
        Pairer::new(join_window_s, max_pending).map(NativePairer).map_err(value_error)
    }

    #[getter]
    fn join_window_s(&self) -> f64 {
        self.0.join_window_s()
    }

    /// Events remembered now (waiting, open productions and paired tombstones).
    #[getter]
    fn pending(&self) -> usize {
        self.0.pending()
    }

    #[getter]
    fn watermark_s(&self) -> Option<f64> {
        self.0.watermark()
    }

    /// All rows of `blocks` in order, then the watermark raised to `now_s` (the partition's max ts) and
    /// the bound applied: `Pairer.add_batch`.
    fn add_batch(&mut self, py: Python<'_>, blocks: Vec<Bound<'_, ScoreBlock>>, now_s: f64) -> PyResult<PairingOut> {
        let rows: Vec<&block::ScoreBlock> = blocks.iter().map(|b| &b.get().0).collect();
        // The join touches no Python object: other threads (Faust's event loop) run meanwhile.
        let pairer = &mut self.0;
        let out = py.allow_threads(|| pairer.add_batch(&rows, now_s));
        Ok(PairingOut {
            pairs: Py::new(py, Pairs(out.pairs))?,
            orphans: out.orphans,
            evicted: out.evicted,
            late: out.late,
            duplicates: out.duplicates,
            forgotten: out.forgotten,
            watermark_s: out.watermark_s,
        })
    }

    /// (upserts, deletes) since the previous call (or restore): `Pairer.state_delta`.
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

    /// The whole state as entries (items in seq order, then the meta entry): `Pairer.entries`.
    fn entries<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mut sink = EntrySink::default();
        self.0.entries_into(&mut sink);
        Ok(delta_to_py(py, sink)?.0)
    }

    /// The whole state as one state log record of upserts, every key under `prefix`.
    fn entries_blob<'py>(&mut self, py: Python<'py>, prefix: &str) -> Bound<'py, PyBytes> {
        let inner = &mut self.0;
        let blob = py.allow_threads(|| {
            let mut sink = BlobSink::new(prefix);
            inner.entries_into(&mut sink);
            sink.finish()
        });
        PyBytes::new_bound(py, &blob)
    }

    /// Replace the whole state by `entries` (the meta entry `"m"` already read by the caller: its
    /// watermark, `-inf` for none, and next seq). An entry in `resolved` is taken as the reference parsed
    /// it: (seq, request_id, model, version, role code, ts, state, score, latency_ms, error, features).
    /// Every other entry is parsed here when the fast path is sure of it.
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
        let mut halves = Vec::with_capacity(entries.len());
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
                    halves.push(half_from_py(&parsed)?);
                    continue;
                }
            }
            let taken = match (name, raw.downcast::<PyBytes>()) {
                (Some(name), Ok(raw)) => pairer::parse_entry(name, raw.as_bytes(), next_seq),
                _ => None,
            };
            match taken {
                Some(half) => halves.push(half),
                None => deferred.push(key.unbind()),
            }
        }
        if !deferred.is_empty() {
            return Ok(deferred);
        }
        self.0.restore(watermark_s, next_seq, halves).map_err(value_error)?;
        Ok(Vec::new())
    }
}

/// A half the reference parsed (`streams.native_pairing` builds the tuple from `_parse_half`).
fn half_from_py(parsed: &Bound<'_, PyAny>) -> PyResult<RestoredHalf> {
    let t = parsed.downcast::<PyTuple>()?;
    if t.len() != 11 {
        return Err(PyValueError::new_err(format!("a resolved half has 11 fields, got {}", t.repr()?)));
    }
    let features = t.get_item(10)?;
    let features = if features.is_none() {
        None
    } else {
        let dict = features.downcast::<PyDict>()?;
        let mut items = Vec::with_capacity(dict.len());
        for (name, value) in dict.iter() {
            // A bool is an int to Python; the wrapper refuses it before (the native pairer keeps none).
            if value.is_instance_of::<PyBool>() {
                return Err(PyValueError::new_err(format!(
                    "feature value {} is not a float, int, str or None",
                    value.repr()?
                )));
            }
            items.push((name.extract::<String>()?.into_boxed_str(), feature_from_py(&value)?));
        }
        Some(items.into_boxed_slice())
    };
    let text = |i: usize| -> PyResult<String> { t.get_item(i)?.extract() };
    Ok(RestoredHalf {
        seq: t.get_item(0)?.extract()?,
        request_id: text(1)?.into_boxed_str(),
        model: block::intern(&text(2)?),
        version: block::intern(&text(3)?),
        role: t.get_item(4)?.extract()?,
        ts: t.get_item(5)?.extract()?,
        state: t.get_item(6)?.extract()?,
        score: t.get_item(7)?.extract()?,
        latency_ms: t.get_item(8)?.extract()?,
        error: t.get_item(9)?.extract()?,
        features,
    })
}
