//! What one pairer call produced: pairs per comparison and events per side.

use std::sync::Arc;

use super::{same, Half};
use crate::block::{ComparisonPairs, Features, Pairs};

/// What one [`super::Pairer::add_batch`] produced (`PairingResult` in `streams/pairing.py`).
#[derive(Clone, Debug, Default)]
pub struct PairingOutput {
    /// The pairs, per comparison in order of each comparison's first pair.
    pub pairs: Pairs,
    /// Events that expired (or were evicted, or came late) without pairing, with their error flags.
    pub orphans: Vec<SideEvents>,
    /// The part of `orphans` pushed out by the bound.
    pub evicted: Vec<SideEvents>,
    /// The part of `orphans` that came after their window had closed.
    pub late: Vec<SideEvents>,
    pub duplicates: Vec<SideEvents>,
    /// Paired events evicted early (a later duplicate of them can no longer be recognised).
    pub forgotten: u64,
    pub watermark_s: Option<f64>,
}

impl PairingOutput {
    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }
}

/// One side's (model, version, role) events of one call, in the order the pairer met them.
#[derive(Clone, Debug)]
pub struct SideEvents {
    pub model: Arc<str>,
    pub version: Arc<str>,
    pub role: u8,
    /// Event ts (epoch s).
    pub ts: Vec<f64>,
    /// Per event: it reported an error (filled for orphans only; empty for the other outputs).
    pub errors: Vec<bool>,
}

/// Side outputs of one call, sides in order of first occurrence.
#[derive(Default)]
pub(super) struct Sides(pub(super) Vec<SideEvents>);

impl Sides {
    fn get(&mut self, model: &Arc<str>, version: &Arc<str>, role: u8) -> &mut SideEvents {
        let found = self.0.iter().position(|s| s.role == role && same(&s.model, model) && same(&s.version, version));
        let i = match found {
            Some(i) => i,
            None => {
                let side = SideEvents {
                    model: model.clone(),
                    version: version.clone(),
                    role,
                    ts: Vec::new(),
                    errors: Vec::new(),
                };
                self.0.push(side);
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    pub(super) fn push(&mut self, model: &Arc<str>, version: &Arc<str>, role: u8, ts: f64) {
        self.get(model, version, role).ts.push(ts);
    }

    pub(super) fn push_error(&mut self, model: &Arc<str>, version: &Arc<str>, role: u8, ts: f64, error: bool) {
        let side = self.get(model, version, role);
        side.ts.push(ts);
        side.errors.push(error);
    }
}

impl Out {
    /// The call's output, with the pairer's watermark after it.
    pub(super) fn finish(self, watermark_s: Option<f64>) -> PairingOutput {
        PairingOutput {
            pairs: Pairs { comparisons: self.comparisons },
            orphans: self.orphans.0,
            evicted: self.evicted.0,
            late: self.late.0,
            duplicates: self.duplicates.0,
            forgotten: self.forgotten,
            watermark_s,
        }
    }
}

/// One side of a pair being emitted.
#[derive(Clone, Copy)]
pub(super) struct PairSide<'a> {
    pub(super) version: &'a Arc<str>,
    pub(super) role: u8,
    pub(super) ts: f64,
    pub(super) score: f64,
    pub(super) latency_ms: f64,
    pub(super) error: bool,
}

impl<'a> PairSide<'a> {
    /// The side a remembered half brings to a pair.
    pub(super) fn of(h: &'a Half) -> Self {
        PairSide {
            version: &h.version,
            role: h.role,
            ts: h.ts,
            score: h.score,
            latency_ms: h.latency_ms,
            error: h.error,
        }
    }
}

/// Per-call accumulator.
#[derive(Default)]
pub(super) struct Out {
    pub(super) comparisons: Vec<ComparisonPairs>,
    /// The comparison of the previous pair (the next is usually the same).
    pub(super) last: usize,
    /// Rows a new comparison reserves room for (half the call's events: at most one pair per two).
    pub(super) expected: usize,
    pub(super) orphans: Sides,
    pub(super) evicted: Sides,
    pub(super) late: Sides,
    pub(super) duplicates: Sides,
    pub(super) forgotten: u64,
}

impl Out {
    pub(super) fn orphan(&mut self, h: &Half) {
        self.orphans.push_error(&h.model, &h.version, h.role, h.ts, h.error);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn pair(
        &mut self,
        rid: &str,
        model: &Arc<str>,
        prod: PairSide<'_>,
        cand: PairSide<'_>,
        prod_features: Option<Features>,
        cand_features: Option<Features>,
    ) {
        let hit = |c: &ComparisonPairs| {
            c.role == cand.role
                && same(&c.model, model)
                && same(&c.production_version, prod.version)
                && same(&c.candidate_version, cand.version)
        };
        let i = if self.last < self.comparisons.len() && hit(&self.comparisons[self.last]) {
            self.last
        } else {
            match self.comparisons.iter().position(hit) {
                Some(i) => i,
                None => {
                    let mut c =
                        ComparisonPairs::new(model.clone(), prod.version.clone(), cand.version.clone(), cand.role);
                    let n = self.expected;
                    c.request_ids.reserve(n);
                    c.prod_score.reserve(n);
                    c.cand_score.reserve(n);
                    c.prod_latency_ms.reserve(n);
                    c.cand_latency_ms.reserve(n);
                    c.prod_error.reserve(n);
                    c.cand_error.reserve(n);
                    c.ts.reserve(n);
                    c.prod_features.reserve(n);
                    c.cand_features.reserve(n);
                    self.comparisons.push(c);
                    self.comparisons.len() - 1
                }
            }
        };
        self.last = i;
        let c = &mut self.comparisons[i];
        c.request_ids.push(rid.into());
        c.prod_score.push(prod.score);
        c.cand_score.push(cand.score);
        c.prod_latency_ms.push(prod.latency_ms);
        c.cand_latency_ms.push(cand.latency_ms);
        c.prod_error.push(prod.error);
        c.cand_error.push(cand.error);
        c.ts.push(if prod.ts > cand.ts { prod.ts } else { cand.ts });
        c.prod_features.push(prod_features);
        c.cand_features.push(cand_features);
    }
}
