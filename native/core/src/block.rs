//! The decoded events the joins work on, shared by the decoder, the pairer and the label joiner.
//!
//! A [`ScoreBlock`] is the validated events of one score message (an envelope or a single event), a
//! [`LabelBlock`] those of one label message. Messages the decoder does not take (it defers anything it
//! is not sure the contract accepts) are decoded by the Python contract and turned into blocks by the
//! binding, so every event reaches the joins the same way and in arrival order. [`Pairs`] is what one
//! pairer call produced, per comparison, as columns.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use crate::CoreError;

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
#[derive(Clone, Debug, Default)]
pub struct ScoreBlock {
    pub rows: Vec<ScoreRow>,
}

/// The validated label events of one message.
#[derive(Clone, Debug, Default)]
pub struct LabelBlock {
    pub rows: Vec<LabelRow>,
}

/// The newest ts of some rows (epoch s), None when there are none.
fn newest(ts: impl Iterator<Item = f64>) -> Option<f64> {
    ts.reduce(f64::max)
}

/// The first (index, ts) of some rows outside `[low, high]` (epoch s), None when every one is inside.
fn first_outside(ts: impl Iterator<Item = f64>, low: f64, high: f64) -> Option<(usize, f64)> {
    ts.enumerate().find(|&(_, t)| !(low..=high).contains(&t))
}

/// Per block, the first event outside `[low, high]`: (block index, event index, ts) of each block that
/// has one, in block order. The event-time bound of a batch in one pass, without a Python object per event.
pub fn blocks_outside<'a, B: TimedBlock + 'a>(
    blocks: impl IntoIterator<Item = &'a B>,
    low: f64,
    high: f64,
) -> Vec<(usize, usize, f64)> {
    blocks
        .into_iter()
        .enumerate()
        .filter_map(|(i, block)| block.first_outside(low, high).map(|(row, ts)| (i, row, ts)))
        .collect()
}

/// A block whose events carry an event time.
pub trait TimedBlock {
    /// The first (event index, ts) outside `[low, high]`, None when every event is inside.
    fn first_outside(&self, low: f64, high: f64) -> Option<(usize, f64)>;
}

impl TimedBlock for ScoreBlock {
    fn first_outside(&self, low: f64, high: f64) -> Option<(usize, f64)> {
        first_outside(self.rows.iter().map(|r| r.ts), low, high)
    }
}

impl TimedBlock for LabelBlock {
    fn first_outside(&self, low: f64, high: f64) -> Option<(usize, f64)> {
        first_outside(self.rows.iter().map(|r| r.ts), low, high)
    }
}

impl ScoreBlock {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The newest event ts of the block (epoch s), None when empty.
    pub fn max_ts(&self) -> Option<f64> {
        newest(self.rows.iter().map(|r| r.ts))
    }
}

impl LabelBlock {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The newest label ts of the block (epoch s), None when empty.
    pub fn max_ts(&self) -> Option<f64> {
        newest(self.rows.iter().map(|r| r.ts))
    }
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

/// One side of a pair: production or candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairSide {
    Prod,
    Cand,
}

impl PairSide {
    /// `"prod"` or `"cand"`.
    pub fn parse(side: &str) -> Result<Self, CoreError> {
        match side {
            "prod" => Ok(PairSide::Prod),
            "cand" => Ok(PairSide::Cand),
            _ => Err(CoreError::Invalid(format!("side {side:?}: must be 'prod' or 'cand'"))),
        }
    }
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

    /// Every column as long as `request_ids` (columns built from outside the pairer must be checked).
    pub fn check_lengths(&self) -> Result<(), CoreError> {
        let n = self.request_ids.len();
        let lens = [
            self.prod_score.len(),
            self.cand_score.len(),
            self.prod_latency_ms.len(),
            self.cand_latency_ms.len(),
            self.prod_error.len(),
            self.cand_error.len(),
            self.ts.len(),
            self.prod_features.len(),
            self.cand_features.len(),
        ];
        if lens.iter().any(|&len| len != n) {
            return Err(CoreError::Invalid(format!("columns of unequal length: {n} request ids, {lens:?}")));
        }
        Ok(())
    }

    /// One side's features per pair.
    pub fn features(&self, side: PairSide) -> &[Option<Features>] {
        match side {
            PairSide::Prod => &self.prod_features,
            PairSide::Cand => &self.cand_features,
        }
    }
}

/// The pairs one pairer call produced, per comparison in order of each comparison's first pair (the
/// order of `PairingResult.pairs`). The label joiner reads them as they are.
#[derive(Clone, Debug, Default)]
pub struct Pairs {
    pub comparisons: Vec<ComparisonPairs>,
}

impl Pairs {
    /// All pairs of all comparisons.
    pub fn len(&self) -> usize {
        self.comparisons.iter().map(ComparisonPairs::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.comparisons.iter().all(ComparisonPairs::is_empty)
    }

    /// Comparison `i`.
    pub fn get(&self, i: usize) -> Result<&ComparisonPairs, CoreError> {
        self.comparisons.get(i).ok_or_else(|| CoreError::Invalid(format!("comparison index {i} out of range")))
    }
}

/// One feature's values over the rows of one side, as arrays: what the fold bins without an object per
/// value (`streams.features.FeatureColumn`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FeatureArrays<'a> {
    pub name: &'a str,
    /// The rows (pair indices) that have the feature, ascending.
    pub rows: Vec<u32>,
    /// The value of each of those rows when it is a number, NaN when it is null or a string.
    pub numbers: Vec<f64>,
    /// Index into `strings` when the value is a string, else -1.
    pub codes: Vec<i32>,
    /// The distinct strings, in order of first appearance.
    pub strings: Vec<&'a str>,
}

/// One side's features per name, names in order of first appearance; rows without a feature add nothing
/// to its arrays.
pub fn feature_arrays(rows: &[Option<Features>]) -> Vec<FeatureArrays<'_>> {
    let mut columns: Vec<FeatureArrays<'_>> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut codes: Vec<HashMap<&str, i32>> = Vec::new();
    for (row, features) in rows.iter().enumerate() {
        for (name, value) in features.iter().flat_map(|f| f.iter()) {
            let i = *by_name.entry(name.as_ref()).or_insert_with(|| {
                columns.push(FeatureArrays { name: name.as_ref(), ..Default::default() });
                codes.push(HashMap::new());
                columns.len() - 1
            });
            let column = &mut columns[i];
            column.rows.push(row as u32);
            let (number, code) = match value {
                FeatureValue::Null => (f64::NAN, -1),
                FeatureValue::Int(v) => (*v as f64, -1),
                FeatureValue::Float(v) => (*v, -1),
                FeatureValue::Str(s) => {
                    let next = column.strings.len() as i32;
                    let code = *codes[i].entry(s.as_ref()).or_insert(next);
                    if code == next {
                        column.strings.push(s.as_ref());
                    }
                    (f64::NAN, code)
                }
            };
            column.numbers.push(number);
            column.codes.push(code);
        }
    }
    columns
}

/// One side's features per name with the values themselves: (name, rows, values), names in order of
/// first appearance.
pub fn feature_values(rows: &[Option<Features>]) -> Vec<(&str, Vec<u32>, Vec<&FeatureValue>)> {
    let mut columns: Vec<(&str, Vec<u32>, Vec<&FeatureValue>)> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (row, features) in rows.iter().enumerate() {
        for (name, value) in features.iter().flat_map(|f| f.iter()) {
            let i = *by_name.entry(name.as_ref()).or_insert_with(|| {
                columns.push((name.as_ref(), Vec::new(), Vec::new()));
                columns.len() - 1
            });
            columns[i].1.push(row as u32);
            columns[i].2.push(value);
        }
    }
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(items: &[(&str, FeatureValue)]) -> Option<Features> {
        Some(items.iter().map(|(name, value)| (Box::from(*name), value.clone())).collect())
    }

    #[test]
    fn feature_arrays_gather_each_name_in_order_of_first_appearance() {
        use FeatureValue::*;
        let rows = vec![
            features(&[("b", Int(3)), ("a", Str("x".into()))]),
            None,
            features(&[("a", Str("y".into())), ("c", Null)]),
            features(&[("a", Str("x".into())), ("b", Float(-0.5))]),
        ];
        let arrays = feature_arrays(&rows);
        let names: Vec<&str> = arrays.iter().map(|c| c.name).collect();
        assert_eq!(names, ["b", "a", "c"]);
        let (b, a, c) = (&arrays[0], &arrays[1], &arrays[2]);
        assert_eq!(
            (b.rows.as_slice(), b.numbers.as_slice(), b.codes.as_slice()),
            (&[0, 3][..], &[3.0, -0.5][..], &[-1, -1][..])
        );
        assert_eq!(
            (a.rows.as_slice(), a.codes.as_slice(), a.strings.as_slice()),
            (&[0, 2, 3][..], &[0, 1, 0][..], &["x", "y"][..])
        );
        assert!(a.numbers.iter().all(|n| n.is_nan()));
        assert_eq!((c.rows.as_slice(), c.codes.as_slice()), (&[2][..], &[-1][..]));
        assert!(c.numbers[0].is_nan());
        let values = feature_values(&rows);
        assert_eq!(values[1], ("a", vec![0, 2, 3], vec![&Str("x".into()), &Str("y".into()), &Str("x".into())]));
    }

    #[test]
    fn unequal_columns_and_bad_indices_are_refused() {
        let mut c = ComparisonPairs::new(intern("m"), intern("1"), intern("2"), SHADOW);
        c.request_ids.push("r".into());
        assert_eq!(
            c.check_lengths(),
            Err(CoreError::Invalid("columns of unequal length: 1 request ids, [0, 0, 0, 0, 0, 0, 0, 0, 0]".into()))
        );
        let pairs = Pairs { comparisons: vec![c] };
        assert_eq!(pairs.len(), 1);
        assert!(pairs.get(0).is_ok());
        assert_eq!(pairs.get(1).unwrap_err().to_string(), "comparison index 1 out of range");
        assert_eq!(PairSide::parse("both").unwrap_err().to_string(), "side \"both\": must be 'prod' or 'cand'");
    }

    #[test]
    fn blocks_outside_a_time_range_name_their_first_event_outside() {
        let row = |ts: f64| LabelRow { request_id: "r".into(), model: intern("m"), label: 1, ts };
        let block = |ts: &[f64]| LabelBlock { rows: ts.iter().map(|&t| row(t)).collect() };
        let blocks = [block(&[10.0, 20.0]), block(&[10.0, 31.0, 5.0]), block(&[]), block(&[9.0]), block(&[30.0])];
        assert_eq!(blocks_outside(&blocks, 10.0, 30.0), vec![(1, 1, 31.0), (3, 0, 9.0)]);
        assert_eq!(blocks_outside(&blocks, f64::NEG_INFINITY, f64::INFINITY), vec![]);
        assert_eq!(blocks_outside(&blocks[..0], 0.0, 0.0), vec![]);
    }

    #[test]
    fn names_are_shared() {
        let a = intern(&String::from("model-a"));
        let b = intern(&String::from("model-a"));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
