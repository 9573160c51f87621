//! The decoded events the native joins work on, shared by the decoder, the pairer and the label joiner.
//!
//! A [`ScoreBlock`] is the validated events of one score message (an envelope or a single event), a
//! [`LabelBlock`] those of one label message. They never hold Python objects, so the joins run on them
//! without touching the interpreter. Messages the native decoder does not take (it defers anything it
//! is not sure the contract accepts) are decoded by the Python contract and turned into blocks with
//! `from_events`, so every event reaches the joins the same way and in arrival order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyString};

/// Roles, stored as these codes everywhere (the pairer's state entries use the same numbers).
pub const PRODUCTION: u8 = 0;
pub const SHADOW: u8 = 1;
pub const CANARY: u8 = 2;
pub const ROLE_NAMES: [&str; 3] = ["production", "shadow", "canary"];

pub fn role_code(role: &str) -> Option<u8> {
    match role {
        "production" => Some(PRODUCTION),
        "shadow" => Some(SHADOW),
        "canary" => Some(CANARY),
        _ => None,
    }
}

/// A feature value as the wire allows it: a finite float, a 64-bit int, a string, or null.
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureValue {
    Null,
    Int(i64),
    Float(f64),
    Str(Box<str>),
}

/// An event's features in wire order (names are unique: a JSON object's keys, last one wins).
pub type Features = Box<[(Box<str>, FeatureValue)]>;

#[derive(Clone, Debug)]
pub struct ScoreRow {
    pub request_id: Box<str>,
    pub model: Arc<str>,
    pub version: Arc<str>,
    pub role: u8,
    /// Epoch seconds: whole microseconds / 1e6, which is exactly Python's `datetime.timestamp()`.
    pub ts: f64,
    pub score: f64,
    pub latency_ms: f64,
    /// The event reported an error (its `error` field is a string, not null).
    pub error: bool,
    pub features: Option<Features>,
}

#[derive(Clone, Debug)]
pub struct LabelRow {
    pub request_id: Box<str>,
    pub model: Arc<str>,
    pub label: u8,
    pub ts: f64,
}

/// The validated score events of one message, in message order.
#[pyclass(frozen, module = "streams._native")]
pub struct ScoreBlock {
    pub rows: Vec<ScoreRow>,
}

/// The validated label events of one message.
#[pyclass(frozen, module = "streams._native")]
pub struct LabelBlock {
    pub rows: Vec<LabelRow>,
}

/// Model and version names repeat in every event: one shared string each (bounded; past the bound a
/// name is simply not shared).
pub fn intern(name: &str) -> Arc<str> {
    static NAMES: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| Mutex::new(HashSet::new()));
    let mut names = names.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = names.get(name) {
        return found.clone();
    }
    let shared: Arc<str> = Arc::from(name);
    if names.len() < 65_536 {
        names.insert(shared.clone());
    }
    shared
}

/// Python `datetime` (aware) -> epoch seconds, exactly as `datetime.timestamp()` computes it.
pub fn py_timestamp(ts: &Bound<'_, PyAny>) -> PyResult<f64> {
    ts.call_method0("timestamp")?.extract::<f64>()
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
        Err(PyValueError::new_err(format!(
            "feature value {} is not a float, int, str or None",
            value.repr()?
        )))
    }
}

pub fn feature_to_py(py: Python<'_>, value: &FeatureValue) -> PyObject {
    match value {
        FeatureValue::Null => py.None(),
        FeatureValue::Int(v) => v.into_py(py),
        FeatureValue::Float(v) => v.into_py(py),
        FeatureValue::Str(v) => v.as_ref().into_py(py),
    }
}

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

pub fn features_to_py<'py>(py: Python<'py>, features: &Option<Features>) -> PyResult<PyObject> {
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
            let role = role_code(&role).ok_or_else(|| PyValueError::new_err(format!("unknown role {role:?}")))?;
            rows.push(ScoreRow {
                request_id: event.getattr("request_id")?.extract::<String>()?.into_boxed_str(),
                model: intern(&event.getattr("model")?.extract::<String>()?),
                version: intern(&event.getattr("version")?.extract::<String>()?),
                role,
                ts: py_timestamp(&event.getattr("ts")?)?,
                score: event.getattr("score")?.extract()?,
                latency_ms: event.getattr("latency_ms")?.extract()?,
                error: !event.getattr("error")?.is_none(),
                features: features_from_py(&event.getattr("features")?)?,
            });
        }
        Ok(ScoreBlock { rows })
    }

    fn __len__(&self) -> usize {
        self.rows.len()
    }

    /// The newest event ts of the block (epoch s), None when empty.
    #[getter]
    fn max_ts(&self) -> Option<f64> {
        self.rows.iter().map(|r| r.ts).reduce(f64::max)
    }

    /// The events as tuples (request_id, model, version, role, ts, score, latency_ms, error, features):
    /// for tests and tools, never on the hot path.
    fn rows(&self, py: Python<'_>) -> PyResult<Vec<PyObject>> {
        self.rows
            .iter()
            .map(|r| {
                Ok((
                    r.request_id.as_ref(),
                    r.model.as_ref(),
                    r.version.as_ref(),
                    ROLE_NAMES[r.role as usize],
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
                model: intern(&event.getattr("model")?.extract::<String>()?),
                label: label as u8,
                ts: py_timestamp(&event.getattr("ts")?)?,
            });
        }
        Ok(LabelBlock { rows })
    }

    fn __len__(&self) -> usize {
        self.rows.len()
    }

    /// The newest label ts of the block (epoch s), None when empty.
    #[getter]
    fn max_ts(&self) -> Option<f64> {
        self.rows.iter().map(|r| r.ts).reduce(f64::max)
    }

    /// The labels as tuples (request_id, model, label, ts): for tests and tools.
    fn rows(&self, py: Python<'_>) -> Vec<PyObject> {
        self.rows
            .iter()
            .map(|r| (r.request_id.as_ref(), r.model.as_ref(), r.label, r.ts).into_py(py))
            .collect()
    }
}

/// The pairs of one comparison in one call of the pairer, in emission order, as parallel columns.
#[derive(Clone, Debug, Default)]
pub struct ComparisonPairs {
    pub model: Arc<str>,
    pub production_version: Arc<str>,
    pub candidate_version: Arc<str>,
    /// SHADOW or CANARY
    pub role: u8,
    pub request_ids: Vec<Box<str>>,
    pub prod_score: Vec<f64>,
    pub cand_score: Vec<f64>,
    pub prod_latency_ms: Vec<f64>,
    pub cand_latency_ms: Vec<f64>,
    pub prod_error: Vec<bool>,
    pub cand_error: Vec<bool>,
    /// The later of the two sides' event ts (epoch s).
    pub ts: Vec<f64>,
    pub prod_features: Vec<Option<Features>>,
    pub cand_features: Vec<Option<Features>>,
}

impl ComparisonPairs {
    pub fn new(model: Arc<str>, production_version: Arc<str>, candidate_version: Arc<str>, role: u8) -> Self {
        ComparisonPairs { model, production_version, candidate_version, role, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.request_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.request_ids.is_empty()
    }
}

/// The pairs one pairer call produced, per comparison in order of each comparison's first pair (the
/// order of `PairingResult.pairs`). The label joiner reads them without a round trip through Python.
#[pyclass(frozen, module = "streams._native")]
#[derive(Default)]
pub struct Pairs {
    pub comparisons: Vec<ComparisonPairs>,
}

pub fn f64_bytes<'py>(py: Python<'py>, values: &[f64]) -> Bound<'py, pyo3::types::PyBytes> {
    let mut raw = Vec::with_capacity(values.len() * 8);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    pyo3::types::PyBytes::new_bound(py, &raw)
}

pub fn bool_bytes<'py>(py: Python<'py>, values: &[bool]) -> Bound<'py, pyo3::types::PyBytes> {
    let raw: Vec<u8> = values.iter().map(|&b| b as u8).collect();
    pyo3::types::PyBytes::new_bound(py, &raw)
}

fn side_features<'a>(c: &'a ComparisonPairs, side: &str) -> PyResult<&'a Vec<Option<Features>>> {
    match side {
        "prod" => Ok(&c.prod_features),
        "cand" => Ok(&c.cand_features),
        _ => Err(PyValueError::new_err(format!("side {side:?}: must be 'prod' or 'cand'"))),
    }
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
            let role = match role_code(&role) {
                Some(code) if code != PRODUCTION => code,
                _ => return Err(PyValueError::new_err(format!("candidate role {role:?}: must be shadow or canary"))),
            };
            let mut c = ComparisonPairs::new(
                intern(&item.get_item(0)?.extract::<String>()?),
                intern(&item.get_item(1)?.extract::<String>()?),
                intern(&item.get_item(2)?.extract::<String>()?),
                role,
            );
            c.request_ids = item
                .get_item(4)?
                .extract::<Vec<String>>()?
                .into_iter()
                .map(String::into_boxed_str)
                .collect();
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
            let n = c.request_ids.len();
            let lens = [
                c.prod_score.len(), c.cand_score.len(), c.prod_latency_ms.len(), c.cand_latency_ms.len(),
                c.prod_error.len(), c.cand_error.len(), c.ts.len(), c.prod_features.len(), c.cand_features.len(),
            ];
            if lens.iter().any(|&len| len != n) {
                return Err(PyValueError::new_err(format!("columns of unequal length: {n} request ids, {lens:?}")));
            }
            comparisons.push(c);
        }
        Ok(Pairs { comparisons })
    }

    fn __len__(&self) -> usize {
        self.comparisons.iter().map(ComparisonPairs::len).sum()
    }

    /// (model, production_version, candidate_version, role) of each comparison, in order.
    fn comparisons(&self) -> Vec<(String, String, String, &'static str)> {
        self.comparisons
            .iter()
            .map(|c| {
                (
                    c.model.to_string(),
                    c.production_version.to_string(),
                    c.candidate_version.to_string(),
                    ROLE_NAMES[c.role as usize],
                )
            })
            .collect()
    }

    /// Comparison `i`'s numeric columns as little-endian bytes for `numpy.frombuffer`: float64
    /// prod_score, cand_score, prod_latency_ms, cand_latency_ms, ts, then uint8 (0/1) prod_error, cand_error.
    fn columns<'py>(&self, py: Python<'py>, i: usize) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
        let c = self.get(i)?;
        Ok(pyo3::types::PyTuple::new_bound(
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
        Ok(self.get(i)?.request_ids.iter().map(|r| r.as_ref()).collect())
    }

    /// One side's features per pair ("prod" or "cand"): a dict or None per row, as the Python pairer has them.
    fn features(&self, py: Python<'_>, i: usize, side: &str) -> PyResult<Vec<PyObject>> {
        side_features(self.get(i)?, side)?.iter().map(|f| features_to_py(py, f)).collect()
    }

    /// One side's features per name as arrays, without a Python object per value: {name: (uint32 row
    /// indices, float64 numbers (NaN where the value is null or a string), int32 codes (index into
    /// `strings` where the value is a string, else -1), strings (distinct, in order of appearance))},
    /// names in order of first appearance; rows without the feature add nothing.
    fn feature_arrays<'py>(&self, py: Python<'py>, i: usize, side: &str) -> PyResult<Bound<'py, PyDict>> {
        struct Column<'a> {
            rows: Vec<u8>,
            numbers: Vec<u8>,
            codes: Vec<u8>,
            strings: Vec<&'a str>,
            index: std::collections::HashMap<&'a str, i32>,
        }
        let rows = side_features(self.get(i)?, side)?;
        let mut order: Vec<&str> = Vec::new();
        let mut columns: std::collections::HashMap<&str, Column<'_>> = std::collections::HashMap::new();
        for (row, features) in rows.iter().enumerate() {
            for (name, value) in features.iter().flat_map(|f| f.iter()) {
                let column = columns.entry(name.as_ref()).or_insert_with(|| {
                    order.push(name.as_ref());
                    Column { rows: Vec::new(), numbers: Vec::new(), codes: Vec::new(), strings: Vec::new(),
                             index: std::collections::HashMap::new() }
                });
                column.rows.extend_from_slice(&(row as u32).to_le_bytes());
                let (number, code) = match value {
                    FeatureValue::Null => (f64::NAN, -1),
                    FeatureValue::Int(v) => (*v as f64, -1),
                    FeatureValue::Float(v) => (*v, -1),
                    FeatureValue::Str(s) => {
                        let next = column.strings.len() as i32;
                        let code = *column.index.entry(s.as_ref()).or_insert(next);
                        if code == next {
                            column.strings.push(s.as_ref());
                        }
                        (f64::NAN, code)
                    }
                };
                column.numbers.extend_from_slice(&number.to_le_bytes());
                column.codes.extend_from_slice(&code.to_le_bytes());
            }
        }
        let out = PyDict::new_bound(py);
        for name in order {
            if let Some(c) = columns.remove(name) {
                let arrays = (
                    pyo3::types::PyBytes::new_bound(py, &c.rows),
                    pyo3::types::PyBytes::new_bound(py, &c.numbers),
                    pyo3::types::PyBytes::new_bound(py, &c.codes),
                    c.strings,
                );
                out.set_item(name, arrays)?;
            }
        }
        Ok(out)
    }

    /// One side's features per name: {name: (uint32 row indices as bytes, values)}, names in order of
    /// first appearance; rows without the feature add nothing. What the fold needs, without a dict per row.
    fn feature_columns<'py>(&self, py: Python<'py>, i: usize, side: &str) -> PyResult<Bound<'py, PyDict>> {
        let rows = side_features(self.get(i)?, side)?;
        let mut order: Vec<&str> = Vec::new();
        let mut columns: std::collections::HashMap<&str, (Vec<u8>, Vec<PyObject>)> = std::collections::HashMap::new();
        for (row, features) in rows.iter().enumerate() {
            for (name, value) in features.iter().flat_map(|f| f.iter()) {
                let entry = columns.entry(name.as_ref()).or_insert_with(|| {
                    order.push(name.as_ref());
                    (Vec::new(), Vec::new())
                });
                entry.0.extend_from_slice(&(row as u32).to_le_bytes());
                entry.1.push(feature_to_py(py, value));
            }
        }
        let out = PyDict::new_bound(py);
        for name in order {
            let (idx, values) = columns.remove(name).unwrap_or_default();
            out.set_item(name, (pyo3::types::PyBytes::new_bound(py, &idx), values))?;
        }
        Ok(out)
    }
}

impl Pairs {
    fn get(&self, i: usize) -> PyResult<&ComparisonPairs> {
        self.comparisons
            .get(i)
            .ok_or_else(|| PyValueError::new_err(format!("comparison index {i} out of range")))
    }
}
