//! Decoded events and pairs as Python classes, the decoder, and the JSON writer's test hooks.
//!
//! The classes hold core values and never Python objects, so the joins read them without the interpreter.
//! Messages the native decoder does not take are decoded by the Python contract and turned into blocks
//! with `from_events`, so every event reaches the joins the same way and in arrival order.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyString, PyTuple};
use shadowgate_core::block::{self, ComparisonPairs, FeatureValue, Features, LabelRow, PairSide, ScoreRow};
use shadowgate_core::{decode, jsonfmt};

use crate::{bool_bytes, f64_bytes, value_error};

/// The validated score events of one message, in message order.
#[pyclass(frozen, module = "streams._native")]
pub struct ScoreBlock(pub block::ScoreBlock);

/// The validated label events of one message.
#[pyclass(frozen, module = "streams._native")]
pub struct LabelBlock(pub block::LabelBlock);

/// The pairs of one pairer call, per comparison (what the label joiner and the fold read).
#[pyclass(frozen, module = "streams._native")]
#[derive(Default)]
pub struct Pairs(pub block::Pairs);

/// Python `datetime` (aware) -> epoch seconds, exactly as `datetime.timestamp()` computes it.
fn py_timestamp(ts: &Bound<'_, PyAny>) -> PyResult<f64> {
    ts.call_method0("timestamp")?.extract::<f64>()
}

fn interned(value: Bound<'_, PyAny>) -> PyResult<Arc<str>> {
    Ok(block::intern(&value.extract::<String>()?))
}

/// A Python feature value -> FeatureValue. Ints beyond 64 bits become the nearest float (the Python
/// pairer does the same when it first stores such a value).
pub fn feature_from_py(value: &Bound<'_, PyAny>) -> PyResult<FeatureValue> {
    if value.is_none() {
        Ok(FeatureValue::Null)
    } else if value.is_instance_of::<PyString>() {
        Ok(FeatureValue::Str(value.extract::<String>()?.into_boxed_str()))
    } else if value.is_instance_of::<PyInt>() {
        match value.extract::<i64>() {
            Ok(v) => Ok(FeatureValue::Int(v)),
            Err(_) => Ok(FeatureValue::Float(value.extract::<f64>()?)),
        }
    } else if value.is_instance_of::<PyFloat>() {
        Ok(FeatureValue::Float(value.extract::<f64>()?))
    } else {
        Err(PyValueError::new_err(format!("feature value {} is not a float, int, str or None", value.repr()?)))
    }
}

fn feature_to_py(py: Python<'_>, value: &FeatureValue) -> PyObject {
    match value {
        FeatureValue::Null => py.None(),
        FeatureValue::Int(v) => v.into_py(py),
        FeatureValue::Float(v) => v.into_py(py),
        FeatureValue::Str(v) => v.as_ref().into_py(py),
    }
}

/// None or a dict of feature values, in the dict's order.
pub fn features_from_py(features: &Bound<'_, PyAny>) -> PyResult<Option<Features>> {
    if features.is_none() {
        return Ok(None);
    }
    let dict = features.downcast::<PyDict>()?;
    let mut out = Vec::with_capacity(dict.len());
    for (name, value) in dict.iter() {
        out.push((name.extract::<String>()?.into_boxed_str(), feature_from_py(&value)?));
    }
    Ok(Some(out.into_boxed_slice()))
}

fn features_to_py(py: Python<'_>, features: &Option<Features>) -> PyResult<PyObject> {
    match features {
        None => Ok(py.None()),
        Some(items) => {
            let dict = PyDict::new_bound(py);
            for (name, value) in items.iter() {
                dict.set_item(name.as_ref(), feature_to_py(py, value))?;
            }
            Ok(dict.into_any().unbind())
        }
    }
}

#[pymethods]
impl ScoreBlock {
    /// A block of events the Python contract validated (`ScoreLike` objects), in order.
    #[staticmethod]
    fn from_events(events: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut rows = Vec::new();
        for event in events.iter()? {
            let event = event?;
            let role: String = event.getattr("role")?.extract()?;
            let role =
                block::role_code(&role).ok_or_else(|| PyValueError::new_err(format!("unknown role {role:?}")))?;
            rows.push(ScoreRow {
                request_id: event.getattr("request_id")?.extract::<String>()?.into_boxed_str(),
                model: interned(event.getattr("model")?)?,
                version: interned(event.getattr("version")?)?,
                role,
                ts: py_timestamp(&event.getattr("ts")?)?,
                score: event.getattr("score")?.extract()?,
                latency_ms: event.getattr("latency_ms")?.extract()?,
                error: !event.getattr("error")?.is_none(),
                features: features_from_py(&event.getattr("features")?)?,
            });
        }
        Ok(ScoreBlock(block::ScoreBlock { rows }))
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    /// The newest event ts of the block (epoch s), None when empty.
    #[getter]
    fn max_ts(&self) -> Option<f64> {
        self.0.max_ts()
    }

    /// The events as tuples (request_id, model, version, role, ts, score, latency_ms, error, features):
    /// for tests and tools, never on the hot path.
    fn rows(&self, py: Python<'_>) -> PyResult<Vec<PyObject>> {
        self.0
            .rows
            .iter()
            .map(|r| {
                Ok((
                    r.request_id.as_ref(),
                    r.model.as_ref(),
                    r.version.as_ref(),
                    block::ROLE_NAMES[r.role as usize],
                    r.ts,
                    r.score,
                    r.latency_ms,
                    r.error,
                    features_to_py(py, &r.features)?,
                )
                    .into_py(py))
            })
            .collect()
    }
}

#[pymethods]
impl LabelBlock {
    /// A block of labels the Python contract validated (`LabelLike` objects), in order.
    #[staticmethod]
    fn from_events(events: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut rows = Vec::new();
        for event in events.iter()? {
            let event = event?;
            let label: i64 = event.getattr("label")?.extract()?;
            if label != 0 && label != 1 {
                return Err(PyValueError::new_err(format!("label {label} is not 0 or 1")));
            }
            rows.push(LabelRow {
                request_id: event.getattr("request_id")?.extract::<String>()?.into_boxed_str(),
                model: interned(event.getattr("model")?)?,
                label: label as u8,
                ts: py_timestamp(&event.getattr("ts")?)?,
            });
        }
        Ok(LabelBlock(block::LabelBlock { rows }))
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    /// The newest label ts of the block (epoch s), None when empty.
    #[getter]
    fn max_ts(&self) -> Option<f64> {
        self.0.max_ts()
    }

    /// The labels as tuples (request_id, model, label, ts): for tests and tools.
    fn rows(&self, py: Python<'_>) -> Vec<PyObject> {
        self.0.rows.iter().map(|r| (r.request_id.as_ref(), r.model.as_ref(), r.label, r.ts).into_py(py)).collect()
    }
}

/// Score messages: a block of the message's events, or None to let the Python contract decide.
#[pyfunction]
pub fn decode_scores(py: Python<'_>, raw: &[u8]) -> Option<ScoreBlock> {
    // An envelope's parse runs without the interpreter (other threads run meanwhile); a small message is
    // cheaper to parse than to let go of the GIL and take it back.
    let block = if raw.len() >= RELEASE_GIL_BYTES {
        py.allow_threads(|| decode::decode_scores(raw))
    } else {
        decode::decode_scores(raw)
    };
    block.map(ScoreBlock)
}

const RELEASE_GIL_BYTES: usize = 16 * 1024;

/// One label message: a block of its one label, or None to let the Python contract decide.
#[pyfunction]
pub fn decode_label(raw: &[u8]) -> Option<LabelBlock> {
    decode::decode_label(raw).map(LabelBlock)
}

/// The score blocks with an event outside `[low, high]` (epoch s): (block index, event index, ts) of the
/// first such event of each, in block order. One call per batch: the event-time bound without a Python
/// object per event.
#[pyfunction]
pub fn scores_outside(blocks: Vec<PyRef<'_, ScoreBlock>>, low: f64, high: f64) -> Vec<(usize, usize, f64)> {
    block::blocks_outside(blocks.iter().map(|b| &b.0), low, high)
}

/// The label blocks with a label outside `[low, high]`, as [`scores_outside`] gives them.
#[pyfunction]
pub fn labels_outside(blocks: Vec<PyRef<'_, LabelBlock>>, low: f64, high: f64) -> Vec<(usize, usize, f64)> {
    block::blocks_outside(blocks.iter().map(|b| &b.0), low, high)
}

/// `orjson.dumps(value)` of a float, for the tests that check `jsonfmt` against orjson.
#[pyfunction]
pub fn dumps_f64(py: Python<'_>, value: f64) -> Bound<'_, PyBytes> {
    let mut out = Vec::new();
    jsonfmt::write_f64(&mut out, value);
    PyBytes::new_bound(py, &out)
}

/// `orjson.dumps(value)` of a string, for the tests that check `jsonfmt` against orjson.
#[pyfunction]
pub fn dumps_str<'py>(py: Python<'py>, value: &str) -> Bound<'py, PyBytes> {
    let mut out = Vec::new();
    jsonfmt::write_str(&mut out, value);
    PyBytes::new_bound(py, &out)
}

fn side(side: &str) -> PyResult<PairSide> {
    PairSide::parse(side).map_err(value_error)
}

#[pymethods]
impl Pairs {
    /// No pairs (what a partition without scores hands the label joiner).
    #[new]
    fn new() -> Self {
        Pairs::default()
    }

    /// Pairs from Python columns, for tests and for feeding the native joiner from the Python pairer:
    /// items of (model, production_version, candidate_version, role, request_ids, prod_score, cand_score,
    /// prod_latency_ms, cand_latency_ms, prod_error, cand_error, ts, prod_features, cand_features).
    #[staticmethod]
    fn from_columns(items: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut comparisons = Vec::new();
        for item in items.iter()? {
            let item = item?;
            let role: String = item.get_item(3)?.extract()?;
            let role = match block::role_code(&role) {
                Some(code) if code != block::PRODUCTION => code,
                _ => return Err(PyValueError::new_err(format!("candidate role {role:?}: must be shadow or canary"))),
            };
            let mut c = ComparisonPairs::new(
                interned(item.get_item(0)?)?,
                interned(item.get_item(1)?)?,
                interned(item.get_item(2)?)?,
                role,
            );
            c.request_ids =
                item.get_item(4)?.extract::<Vec<String>>()?.into_iter().map(String::into_boxed_str).collect();
            c.prod_score = item.get_item(5)?.extract()?;
            c.cand_score = item.get_item(6)?.extract()?;
            c.prod_latency_ms = item.get_item(7)?.extract()?;
            c.cand_latency_ms = item.get_item(8)?.extract()?;
            c.prod_error = item.get_item(9)?.extract()?;
            c.cand_error = item.get_item(10)?.extract()?;
            c.ts = item.get_item(11)?.extract()?;
            for (index, target) in [(12, &mut c.prod_features), (13, &mut c.cand_features)] {
                for features in item.get_item(index)?.iter()? {
                    target.push(features_from_py(&features?)?);
                }
            }
            c.check_lengths().map_err(value_error)?;
            comparisons.push(c);
        }
        Ok(Pairs(block::Pairs { comparisons }))
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    /// (model, production_version, candidate_version, role) of each comparison, in order.
    fn comparisons(&self) -> Vec<(&str, &str, &str, &'static str)> {
        self.0
            .comparisons
            .iter()
            .map(|c| (&*c.model, &*c.production_version, &*c.candidate_version, block::ROLE_NAMES[c.role as usize]))
            .collect()
    }

    /// Comparison `i`'s numeric columns as little-endian bytes for `numpy.frombuffer`: float64
    /// prod_score, cand_score, prod_latency_ms, cand_latency_ms, ts, then uint8 (0/1) prod_error, cand_error.
    fn columns<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, PyTuple>> {
        let c = self.0.get(i).map_err(value_error)?;
        Ok(PyTuple::new_bound(
            py,
            [
                f64_bytes(py, &c.prod_score),
                f64_bytes(py, &c.cand_score),
                f64_bytes(py, &c.prod_latency_ms),
                f64_bytes(py, &c.cand_latency_ms),
                f64_bytes(py, &c.ts),
                bool_bytes(py, &c.prod_error),
                bool_bytes(py, &c.cand_error),
            ],
        ))
    }

    fn request_ids(&self, i: usize) -> PyResult<Vec<&str>> {
        Ok(self.0.get(i).map_err(value_error)?.request_ids.iter().map(|r| r.as_ref()).collect())
    }

    /// One side's features per pair ("prod" or "cand"): a dict or None per row, as the Python pairer has them.
    fn features(&self, py: Python<'_>, i: usize, side: &str) -> PyResult<Vec<PyObject>> {
        let c = self.0.get(i).map_err(value_error)?;
        c.features(self::side(side)?).iter().map(|f| features_to_py(py, f)).collect()
    }

    /// One side's features per name as arrays, without a Python object per value: {name: (uint32 row
    /// indices, float64 numbers (NaN where the value is null or a string), int32 codes (index into
    /// `strings` where the value is a string, else -1), strings (distinct, in order of appearance))},
    /// names in order of first appearance; rows without the feature add nothing.
    fn feature_arrays<'py>(&self, py: Python<'py>, i: usize, side: &str) -> PyResult<Bound<'py, PyDict>> {
        let c = self.0.get(i).map_err(value_error)?;
        let features = c.features(self::side(side)?);
        // The columns are built without the GIL (another partition's fold may run meanwhile).
        let columns = py.allow_threads(|| {
            block::feature_arrays(features)
                .into_iter()
                .map(|column| {
                    let rows: Vec<u8> = column.rows.iter().flat_map(|r| r.to_le_bytes()).collect();
                    let codes: Vec<u8> = column.codes.iter().flat_map(|c| c.to_le_bytes()).collect();
                    (column.name, rows, column.numbers, codes, column.strings)
                })
                .collect::<Vec<_>>()
        });
        let out = PyDict::new_bound(py);
        for (name, rows, numbers, codes, strings) in columns {
            let arrays =
                (PyBytes::new_bound(py, &rows), f64_bytes(py, &numbers), PyBytes::new_bound(py, &codes), strings);
            out.set_item(name, arrays)?;
        }
        Ok(out)
    }

    /// One side's features per name: {name: (uint32 row indices as bytes, values)}, names in order of
    /// first appearance; rows without the feature add nothing.
    fn feature_columns<'py>(&self, py: Python<'py>, i: usize, side: &str) -> PyResult<Bound<'py, PyDict>> {
        let c = self.0.get(i).map_err(value_error)?;
        let out = PyDict::new_bound(py);
        for (name, rows, values) in block::feature_values(c.features(self::side(side)?)) {
            let rows: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
            let values: Vec<PyObject> = values.into_iter().map(|v| feature_to_py(py, v)).collect();
            out.set_item(name, (PyBytes::new_bound(py, &rows), values))?;
        }
        Ok(out)
    }
}
