//! The pairer's rules on hand-made streams whose outcome is worked out by hand in each test (the module
//! doc of `streams/pairing.py` states them), and its state entries written out from orjson's format.

use std::collections::HashMap;

use super::*;
use crate::block::{CANARY, SHADOW};
use crate::statelog::{self, BlobSink, EntrySink};

fn row(rid: &str, role: u8, version: &str, ts: f64) -> ScoreRow {
    ScoreRow {
        request_id: rid.into(),
        model: block::intern("m"),
        version: block::intern(version),
        role,
        ts,
        score: 0.5,
        latency_ms: 1.0,
        error: false,
        features: None,
    }
}

fn batch(pairer: &mut Pairer, rows: Vec<ScoreRow>, now_s: f64) -> PairingOutput {
    let block = ScoreBlock { rows };
    pairer.add_batch(&[&block], now_s)
}

/// (model, version, role, ts) of one side output, for comparisons.
fn sides(items: &[SideEvents]) -> Vec<(String, u8, Vec<f64>)> {
    items.iter().map(|s| (s.version.to_string(), s.role, s.ts.clone())).collect()
}

#[test]
fn production_pairs_with_shadow_and_canary_of_its_request() {
    let mut p = Pairer::new(60.0, 100).unwrap();
    let mut prod = row("r", PRODUCTION, "v1", 10.0);
    prod.score = 0.25;
    let mut canary = row("r", CANARY, "v3", 12.0);
    canary.error = true;
    let out = batch(&mut p, vec![row("r", SHADOW, "v2", 11.0), prod, canary], 12.0);
    // The shadow waited; production paired it at once (ts 11, the later side) and stayed open, so the
    // canary that came after paired too (ts 12).
    let c = &out.pairs.comparisons;
    assert_eq!(c.len(), 2);
    assert_eq!((&*c[0].candidate_version, c[0].role, c[0].ts.as_slice()), ("v2", SHADOW, &[11.0][..]));
    assert_eq!((c[0].prod_score.as_slice(), c[0].cand_score.as_slice()), (&[0.25][..], &[0.5][..]));
    assert_eq!((&*c[1].candidate_version, c[1].role, c[1].ts.as_slice()), ("v3", CANARY, &[12.0][..]));
    assert_eq!((c[1].prod_error.as_slice(), c[1].cand_error.as_slice()), (&[false][..], &[true][..]));
    assert_eq!(out.pair_count(), 2);
    assert!(out.orphans.is_empty() && out.duplicates.is_empty());
    assert_eq!((p.pending(), p.watermark()), (3, Some(12.0)));
}

#[test]
fn events_expire_as_orphans_in_ts_order_once_the_window_passes() {
    let mut p = Pairer::new(10.0, 100).unwrap();
    let mut b = row("b", SHADOW, "v2", 5.0);
    b.error = true;
    batch(&mut p, vec![b, row("a", PRODUCTION, "v1", 0.0)], 5.0);
    // ts 20 raises the watermark to 20: everything below 20 - 10 expires, before "c" is added.
    let out = batch(&mut p, vec![row("c", PRODUCTION, "v1", 20.0)], 20.0);
    assert_eq!(sides(&out.orphans), [("v1".into(), PRODUCTION, vec![0.0]), ("v2".into(), SHADOW, vec![5.0])]);
    assert_eq!(out.orphans[1].errors, [true]);
    assert!(out.evicted.is_empty() && out.late.is_empty());
    // ts exactly at the cutoff stays: 30 - 10 = 20.
    let out = batch(&mut p, vec![], 30.0);
    assert!(out.orphans.is_empty());
    assert_eq!(p.pending(), 1);
    let out = batch(&mut p, vec![], 30.5);
    assert_eq!(sides(&out.orphans), [("v1".into(), PRODUCTION, vec![20.0])]);
    assert_eq!(p.pending(), 0);
}

#[test]
fn late_events_and_duplicates_are_counted_never_paired() {
    let mut p = Pairer::new(10.0, 100).unwrap();
    batch(&mut p, vec![row("a", PRODUCTION, "v1", 100.0)], 100.0);
    let out = batch(
        &mut p,
        vec![row("a", SHADOW, "v2", 89.0), row("a", PRODUCTION, "v1", 95.0), row("a", SHADOW, "v2", 96.0)],
        100.0,
    );
    // 89 < 100 - 10: late (and an orphan), never matched against "a"'s production.
    assert_eq!(sides(&out.late), [("v2".into(), SHADOW, vec![89.0])]);
    assert_eq!(sides(&out.orphans), [("v2".into(), SHADOW, vec![89.0])]);
    assert_eq!(sides(&out.duplicates), [("v1".into(), PRODUCTION, vec![95.0])]);
    assert_eq!(out.pairs.comparisons[0].ts, [100.0]);
    // The paired shadow is a tombstone now: a copy of it is a duplicate too.
    let out = batch(&mut p, vec![row("a", SHADOW, "v2", 97.0)], 100.0);
    assert_eq!(sides(&out.duplicates), [("v2".into(), SHADOW, vec![97.0])]);
    assert_eq!(out.pair_count(), 0);
}

#[test]
fn past_the_bound_the_oldest_goes_evicted_or_forgotten() {
    let mut p = Pairer::new(1000.0, 3).unwrap();
    let out = batch(
        &mut p,
        vec![row("x", PRODUCTION, "v1", 3.0), row("y", PRODUCTION, "v1", 1.0), row("z", PRODUCTION, "v1", 2.0)],
        3.0,
    );
    assert!(out.evicted.is_empty());
    // A fourth: the smallest ts (y at 1) is evicted, an orphan too.
    let out = batch(&mut p, vec![row("w", SHADOW, "v2", 4.0)], 4.0);
    assert_eq!(sides(&out.evicted), [("v1".into(), PRODUCTION, vec![1.0])]);
    assert_eq!(sides(&out.orphans), sides(&out.evicted));
    assert_eq!(p.pending(), 3);
    // z's production (ts 2) pairs and stays open; the insert then evicts it, the oldest: paired, so it
    // is only forgotten.
    let out = batch(&mut p, vec![row("z", SHADOW, "v2", 5.0)], 5.0);
    assert_eq!((out.pair_count(), out.forgotten), (1, 1));
    assert!(out.orphans.is_empty());
    // The bound holds after every event, not only at the end of a batch: "a" is evicted before its
    // shadow comes, so nothing pairs.
    let mut p = Pairer::new(1000.0, 1).unwrap();
    let rows = vec![row("a", PRODUCTION, "v1", 1.0), row("b", PRODUCTION, "v1", 2.0), row("a", SHADOW, "v2", 3.0)];
    let out = batch(&mut p, rows, 3.0);
    assert_eq!(out.pair_count(), 0);
    assert_eq!(sides(&out.evicted), [("v1".into(), PRODUCTION, vec![1.0, 2.0])]);
    assert_eq!(p.pending(), 1);
}

fn features(items: &[(&str, FeatureValue)]) -> Option<Features> {
    Some(items.iter().map(|(k, v)| (Box::from(*k), v.clone())).collect())
}

#[test]
fn entries_are_the_arrays_orjson_writes() {
    let mut p = Pairer::new(60.0, 100).unwrap();
    let mut prod = row("r\"1", PRODUCTION, "v1", 1.5);
    prod.score = 0.25;
    prod.latency_ms = 1e16;
    prod.features = features(&[
        ("a", FeatureValue::Int(1)),
        ("b", FeatureValue::Str("x".into())),
        ("c", FeatureValue::Null),
        ("d", FeatureValue::Float(0.1)),
    ]);
    batch(&mut p, vec![prod, row("r\"1", SHADOW, "v2", 2.0)], 2.0);
    let mut sink = EntrySink::default();
    p.entries_into(&mut sink);
    let got: Vec<(&str, &str)> =
        sink.upserts.iter().map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap())).collect();
    assert_eq!(
        got,
        [
            ("0", r#"["r\"1","m","v1",0,1.5,1,0.25,1e+16,0,{"a":1,"b":"x","c":null,"d":0.1}]"#),
            ("1", r#"["r\"1","m","v2",1,2.0,2]"#), // a paired candidate: a tombstone
            ("m", "[2,2.0,2]"),
        ]
    );
}

/// A stream with pairs, orphans, late events, duplicates, features and evictions, cut into batches.
fn stream() -> Vec<(Vec<ScoreRow>, f64)> {
    let mut batches = Vec::new();
    let mut t = 0.0;
    for b in 0..30 {
        let mut rows = Vec::new();
        for i in 0..7 {
            let k = b * 7 + i;
            t += [0.0, 0.5, 3.25][k % 3];
            let rid = format!("r{}", k % 11);
            let role = [PRODUCTION, SHADOW, CANARY, PRODUCTION][k % 4];
            let version = ["v1", "v2", "v3", "v1"][k % 4];
            let jitter = [0.0, -2.0, -25.0, 1e-6][k % 4];
            let mut r = row(&rid, role, version, t + jitter);
            r.score = (k % 10) as f64 / 10.0;
            r.error = k % 13 == 0;
            if k % 5 == 0 {
                r.features = features(&[("n", FeatureValue::Int(k as i64)), ("s", FeatureValue::Str("é\n".into()))]);
            }
            rows.push(r);
        }
        batches.push((rows, t));
    }
    batches
}

/// Everything an output holds, in a comparable form (Debug writes floats exactly: shortest round trip).
fn canon(out: &PairingOutput) -> String {
    format!(
        "{:?}",
        (&out.pairs, &out.orphans, &out.evicted, &out.late, &out.duplicates, out.forgotten, out.watermark_s)
    )
}

fn entries_of(p: &mut Pairer) -> HashMap<String, Vec<u8>> {
    let mut sink = EntrySink::default();
    p.entries_into(&mut sink);
    sink.upserts.into_iter().collect()
}

/// The entries' meta: (watermark or -inf, next seq), read back independently of the pairer.
fn meta(entries: &HashMap<String, Vec<u8>>) -> (f64, u64) {
    let doc: serde_json::Value = serde_json::from_slice(&entries["m"]).unwrap();
    (doc[1].as_f64().unwrap_or(f64::NEG_INFINITY), doc[2].as_u64().unwrap())
}

#[test]
fn deltas_accumulate_to_the_entries_and_a_restored_pairer_carries_on_identically() {
    let batches = stream();
    let mut p = Pairer::new(20.0, 9).unwrap();
    let mut stored: HashMap<String, Vec<u8>> = HashMap::new();
    for (i, (rows, now)) in batches.iter().enumerate() {
        batch(&mut p, rows.clone(), *now);
        if i % 3 == 0 {
            let mut sink = BlobSink::new("");
            p.delta_into(&mut sink);
            statelog::apply(&mut stored, &sink.finish()).unwrap();
            assert_eq!(stored, entries_of(&mut p), "after batch {i}");
        }
        if i == 15 {
            // A takeover: every stored entry is one the fast path reads (a pairer wrote it).
            let (watermark, next_seq) = meta(&stored);
            let halves: Vec<RestoredHalf> = stored
                .iter()
                .filter(|(k, _)| k.as_str() != "m")
                .map(|(k, v)| parse_entry(k, v, next_seq).expect("written by a pairer"))
                .collect();
            let mut restored = Pairer::new(20.0, 9).unwrap();
            restored.restore(watermark, next_seq, halves).unwrap();
            assert_eq!(entries_of(&mut restored), stored);
            for (rows, now) in &batches[16..] {
                let (a, b) = (batch(&mut p, rows.clone(), *now), batch(&mut restored, rows.clone(), *now));
                assert_eq!(canon(&a), canon(&b));
                let (mut da, mut db) = (EntrySink::default(), EntrySink::default());
                p.delta_into(&mut da);
                restored.delta_into(&mut db);
                assert_eq!(da, db);
            }
            assert!(p.pending() > 0, "the stream leaves something remembered");
            return;
        }
    }
    unreachable!("the takeover happens at batch 15");
}

#[test]
fn a_delta_deletes_only_what_an_earlier_delta_wrote() {
    let mut p = Pairer::new(10.0, 100).unwrap();
    batch(&mut p, vec![row("a", PRODUCTION, "v1", 0.0)], 0.0);
    let mut first = EntrySink::default();
    p.delta_into(&mut first);
    assert_eq!(first.upserts.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["0", "m"]);
    // "b" comes and goes between two deltas: never written, so never deleted; "a" was written.
    batch(&mut p, vec![row("b", PRODUCTION, "v1", 5.0)], 5.0);
    batch(&mut p, vec![], 100.0);
    let mut second = EntrySink::default();
    p.delta_into(&mut second);
    assert_eq!(second.deletes, ["0"]);
    assert_eq!(second.upserts, [("m".to_owned(), b"[2,100.0,2]".to_vec())]);
    let mut third = EntrySink::default();
    p.delta_into(&mut third);
    assert_eq!(third, EntrySink::default(), "nothing changed since");
}

#[test]
fn parse_entry_takes_what_it_is_sure_of_and_defers_the_rest() {
    let take = |raw: &str| parse_entry("a", raw.as_bytes(), 11);
    let half = take(r#"["r","m","v",2,1700000000,0,1,2.5e0,1,{"k":1,"j":1E2,"s":"x","n":null}]"#).unwrap();
    assert_eq!((half.seq, &*half.request_id, half.role, half.ts, half.state), (10, "r", 2, 1.7e9, 0));
    assert_eq!((half.score, half.latency_ms, half.error), (1.0, 2.5, true));
    assert_eq!(
        half.features,
        features(&[
            ("k", FeatureValue::Int(1)),
            ("j", FeatureValue::Float(100.0)),
            ("s", FeatureValue::Str("x".into())),
            ("n", FeatureValue::Null)
        ])
    );
    let tomb = take(r#"["r","m","v",1,5.5,2]"#).unwrap();
    assert_eq!((tomb.state, tomb.score, tomb.latency_ms, tomb.error, tomb.features), (2, 0.0, 0.0, false, None));
    for deferred in [
        r#"["r","m","v",0,-0,0,0.5,1.0,0,null]"#,           // -0: orjson's int 0
        r#"["r","m","v",0,1.0,0,0.5,1.0,0,{"k":1,"k":2}]"#, // a repeated feature name
        r#"["r","m","v",0,1.0,0,0.5,1.0,0,{"k":true}]"#,    // a bool feature (native keeps none)
        r#"["r","m","v",0,1.0,0,0.5,1.0,0,{"k":18446744073709551616}]"#,
        r#"["r","m","v",0,1.0,2.0]"#,              // a tombstone's state must be the int 2
        r#"["r","m","v",0,1.0,1]"#,                // 6 fields, not a tombstone
        r#"["r","m","v",3,1.0,0,0.5,1.0,0,null]"#, // role 3
        r#"["r","m","v",0,1.0,0,0.5,1.0,true,null]"#, // error must be the int 0 or 1
        r#"["r","m","v",0,1e400,0,0.5,1.0,0,null]"#, // not finite
        r#"["r","m","v",0,1.0,0,0.5,1.0,0,null,7]"#, // 11 fields
        r#"["\ud800","m","v",0,1.0,2]"#,           // a lone surrogate
        r#"{"r":1}"#,
        "[1, 2",
    ] {
        assert_eq!(take(deferred), None, "{deferred}");
    }
    let good = r#"["r","m","v",0,1.0,2]"#.as_bytes();
    assert!(parse_entry("a", good, 11).is_some());
    assert_eq!(parse_entry("b", good, 11), None, "seq 11 is not below next_seq 11");
    assert_eq!(parse_entry("0a", good, 11), None, "not canonical");
    assert_eq!(parse_entry("m", good, 11), None);
}

#[test]
fn restore_refuses_halves_no_valid_state_holds_and_keeps_the_state() {
    let half = |seq: u64, role: u8| RestoredHalf {
        seq,
        request_id: "r".into(),
        model: block::intern("m"),
        version: block::intern("v"),
        role,
        ts: 1.0,
        state: PENDING,
        score: 0.5,
        latency_ms: 1.0,
        error: false,
        features: None,
    };
    let mut p = Pairer::new(60.0, 10).unwrap();
    p.restore(1.0, 2, vec![half(1, 0)]).unwrap();
    let before = entries_of(&mut p);
    for bad in [vec![half(2, 0)], vec![half(0, 0), half(0, 1)], vec![half(0, 3)]] {
        assert!(matches!(p.restore(1.0, 2, bad), Err(CoreError::Invalid(_))));
    }
    assert_eq!(entries_of(&mut p), before);
    p.restore(f64::NEG_INFINITY, 0, Vec::new()).unwrap();
    assert!(entries_of(&mut p).is_empty(), "an empty state has no meta entry");
    assert_eq!(p.watermark(), None);
}

#[test]
fn settings_are_checked() {
    assert_eq!(
        Pairer::new(0.0, 1).err(),
        Some(CoreError::Config("join_window_s=0: must be a finite number > 0".into()))
    );
    assert!(Pairer::new(f64::NAN, 1).is_err());
    assert_eq!(Pairer::new(1.0, 0).err(), Some(CoreError::Config("max_pending=0: must be an integer >= 1".into())));
}
