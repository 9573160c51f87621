//! `streams._native`: the Python binding of `shadowgate-core` (`native/core`), and the only crate of the
//! workspace that uses PyO3. Used by `streams/decoding.py`, `streams/native_pairing.py` and
//! `streams/native_labels.py`; typed by `streams/_native.pyi`.
//!
//! Everything here converts: Python objects in, core calls (which let go of the interpreter lock while
//! they parse an envelope or join), Python objects out. The rules live in the core, tested with
//! `cargo test`; this crate is tested by the Python suite (`tests/test_native_*.py` and the tests the
//! reference and the native joins share).
//!
//! * `blocks`: `ScoreBlock`, `LabelBlock`, `Pairs`, the decoder and the JSON writer's test hooks;
//! * `pairer`: `NativePairer`, `PairingOut`; `joiner`: `NativeJoiner`, `LabelOut`.
//!
//! Restore is two-sided: the core parses the state entries it is sure of and these classes hand back the
//! keys of the others (`restore_entries` returns them, changing nothing); the Python wrapper has the
//! reference validate those (its acceptance, its error texts) and calls again with their parsed values.
//! No Python module is imported from here.

// PyO3 0.22's #[pymethods] expansion converts every PyResult's error into PyErr, which clippy since
// 1.85 reports at the signature (PyO3/pyo3#4828, rust-clippy#14272; fixed in PyO3 0.23.5). Only the
// macro's code trips it.
#![allow(clippy::useless_conversion)]

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use shadowgate_core::statelog::EntrySink;
use shadowgate_core::CoreError;

mod blocks;
mod joiner;
mod pairer;

// The joins allocate and free a few small strings and vectors per event; mimalloc does that about twice
// as fast as the system allocator (Rust allocations only: Python objects keep Python's allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A core error as the `ValueError` the Python wrappers turn into `ConfigError` or `CheckpointError`.
fn value_error(err: CoreError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

/// The reference form of a delta: (dict of upserts in the order written, list of deletes).
fn delta_to_py(py: Python<'_>, sink: EntrySink) -> PyResult<(Bound<'_, PyDict>, Bound<'_, PyList>)> {
    let upserts = PyDict::new_bound(py);
    for (key, value) in &sink.upserts {
        upserts.set_item(PyString::new_bound(py, key), PyBytes::new_bound(py, value))?;
    }
    let deletes = PyList::new_bound(py, sink.deletes.iter().map(|key| PyString::new_bound(py, key)));
    Ok((upserts, deletes))
}

/// Little-endian float64 bytes, for `numpy.frombuffer`.
fn f64_bytes<'py>(py: Python<'py>, values: &[f64]) -> Bound<'py, PyBytes> {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    PyBytes::new_bound(py, &raw)
}

/// One byte (0 or 1) per flag.
fn bool_bytes<'py>(py: Python<'py>, values: &[bool]) -> Bound<'py, PyBytes> {
    let raw: Vec<u8> = values.iter().map(|&b| b as u8).collect();
    PyBytes::new_bound(py, &raw)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<blocks::ScoreBlock>()?;
    m.add_class::<blocks::LabelBlock>()?;
    m.add_class::<blocks::Pairs>()?;
    m.add_class::<joiner::NativeJoiner>()?;
    m.add_class::<joiner::LabelOut>()?;
    m.add_function(wrap_pyfunction!(blocks::dumps_f64, m)?)?;
    m.add_function(wrap_pyfunction!(blocks::dumps_str, m)?)?;
    m.add_function(wrap_pyfunction!(blocks::decode_scores, m)?)?;
    m.add_function(wrap_pyfunction!(blocks::decode_label, m)?)?;
    m.add_function(wrap_pyfunction!(blocks::scores_outside, m)?)?;
    m.add_function(wrap_pyfunction!(blocks::labels_outside, m)?)?;
    m.add_class::<pairer::NativePairer>()?;
    m.add_class::<pairer::PairingOut>()?;
    Ok(())
}
