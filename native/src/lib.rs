//! `streams._native`: shadowgate's hot path in Rust (used by `streams/processor.py` through `streams/decoding.py`, `streams/native_pairing.py` and `streams/native_labels.py`).
//!
//! * `block`: decoded events ([`block::ScoreBlock`], [`block::LabelBlock`]);
//! * `decode`: score and label messages -> blocks, deferring to the Python contract when unsure;
//! * `pairer`: the event-time join of production with shadow/canary scores (`streams/pairing.py`);
//! * `joiner`: the join of pairs with late labels (`streams/labels.py`).
//!
//! The Python modules are the reference: the native classes give the same results and the same state
//! entries, checked by the same tests run against both.

use pyo3::prelude::*;

// The joins allocate and free a few small strings and vectors per event; mimalloc does that about twice
// as fast as the system allocator (Rust allocations only: Python objects keep Python's allocator).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod block;
pub mod joiner;
pub mod jsonfmt;
pub mod decode;
pub mod pairer;
pub mod statelog;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<block::ScoreBlock>()?;
    m.add_class::<block::LabelBlock>()?;
    m.add_class::<block::Pairs>()?;
    m.add_class::<joiner::NativeJoiner>()?;
    m.add_class::<joiner::LabelOut>()?;
    m.add_function(wrap_pyfunction!(jsonfmt::dumps_f64, m)?)?;
    m.add_function(wrap_pyfunction!(jsonfmt::dumps_str, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_scores, m)?)?;
    m.add_function(wrap_pyfunction!(decode::decode_label, m)?)?;
    m.add_class::<pairer::NativePairer>()?;
    m.add_class::<pairer::PairingOut>()?;
    Ok(())
}
