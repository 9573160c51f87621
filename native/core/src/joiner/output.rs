//! What one joiner call produced, per comparison in order of first occurrence.

use std::sync::Arc;

/// One comparison (model, production version, candidate version, role) and its encoded id.
#[derive(Debug)]
pub struct Comparison {
    pub model: Arc<str>,
    pub production_version: Arc<str>,
    pub candidate_version: Arc<str>,
    /// SHADOW or CANARY
    pub role: u8,
    /// `ComparisonKey.as_id()` as a JSON string, written into every pair entry.
    pub(super) id_json: Box<[u8]>,
}

/// What one call of [`super::Joiner::add_pairs`] or [`super::Joiner::add_labels`] produced
/// (`LabelResult` in `streams/labels.py`).
#[derive(Clone, Debug, Default)]
pub struct LabelOutput {
    pub joined: Vec<(Arc<Comparison>, Joined)>,
    /// Pairs that gave up waiting (expired, late or evicted): their event ts.
    pub unlabeled: Vec<(Arc<Comparison>, Vec<f64>)>,
    /// The part of `unlabeled` pushed out by the bound.
    pub evicted: Vec<(Arc<Comparison>, Vec<f64>)>,
    /// Labels dropped (expired, late or evicted) without ever matching a pair.
    pub unmatched_labels: u64,
    pub evicted_labels: u64,
    pub duplicate_labels: u64,
    pub conflicting_labels: u64,
    pub watermark_s: Option<f64>,
}

impl LabelOutput {
    /// Labelled pairs of all comparisons.
    pub fn label_count(&self) -> usize {
        self.joined.iter().map(|(_, j)| j.request_ids.len()).sum()
    }
}

/// The labelled pairs of one comparison in one call, in emission order, as parallel columns.
#[derive(Clone, Debug, Default)]
pub struct Joined {
    pub request_ids: Vec<Arc<str>>,
    /// NaN where production reported an error.
    pub prod: Vec<f64>,
    /// NaN where the candidate reported an error.
    pub cand: Vec<f64>,
    pub label: Vec<i8>,
    /// The pair's event ts (epoch s).
    pub ts: Vec<f64>,
}

/// What one call produced, per comparison index in order of first occurrence.
#[derive(Default)]
pub(super) struct Out {
    pub(super) joined: Vec<(u32, Joined)>,
    pub(super) unlabeled: Vec<(u32, Vec<f64>)>,
    pub(super) evicted: Vec<(u32, Vec<f64>)>,
    pub(super) unmatched: u64,
    pub(super) evicted_labels: u64,
    pub(super) duplicates: u64,
    pub(super) conflicts: u64,
}

/// The entry of comparison `comp` in a per-comparison output (the last one used, usually).
pub(super) fn slot<T: Default>(items: &mut Vec<(u32, T)>, comp: u32) -> &mut T {
    let pos = match items.last() {
        Some((last, _)) if *last == comp => items.len() - 1,
        _ => match items.iter().position(|(c, _)| *c == comp) {
            Some(pos) => pos,
            None => {
                items.push((comp, T::default()));
                items.len() - 1
            }
        },
    };
    &mut items[pos].1
}

impl Out {
    pub(super) fn join(&mut self, comp: u32, rid: Arc<str>, prod: f64, cand: f64, label: u8, ts: f64) {
        let cols = slot(&mut self.joined, comp);
        cols.request_ids.push(rid);
        cols.prod.push(prod);
        cols.cand.push(cand);
        cols.label.push(label as i8);
        cols.ts.push(ts);
    }
}
