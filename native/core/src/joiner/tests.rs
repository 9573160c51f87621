//! The label joiner's rules on hand-made calls whose outcome is worked out by hand in each test (the
//! module doc of `streams/labels.py` states them), and its state entries written out from orjson's format.

use std::collections::HashMap;

use super::*;
use crate::block::{ComparisonPairs, LabelRow};
use crate::statelog::{self, BlobSink, EntrySink};

/// Pairs of one comparison of model "m": (request id, prod score, cand score, ts), no errors.
fn pairs(role: u8, rows: &[(&str, f64, f64, f64)]) -> Pairs {
    let cand = if role == SHADOW { "v2" } else { "v3" };
    let mut c = ComparisonPairs::new(intern("m"), intern("v1"), intern(cand), role);
    for &(rid, prod, cand, ts) in rows {
        c.request_ids.push(rid.into());
        c.prod_score.push(prod);
        c.cand_score.push(cand);
        c.prod_latency_ms.push(1.0);
        c.cand_latency_ms.push(1.0);
        c.prod_error.push(false);
        c.cand_error.push(false);
        c.ts.push(ts);
        c.prod_features.push(None);
        c.cand_features.push(None);
    }
    Pairs { comparisons: vec![c] }
}

fn labels(rows: &[(&str, u8, f64)]) -> LabelBlock {
    let rows = rows
        .iter()
        .map(|&(rid, label, ts)| LabelRow { request_id: rid.into(), model: intern("m"), label, ts })
        .collect();
    LabelBlock { rows }
}

fn add_labels(j: &mut Joiner, rows: &[(&str, u8, f64)], now_s: f64) -> LabelOutput {
    j.add_labels(&[&labels(rows)], now_s)
}

/// (candidate version, request ids, labels, ts) of one joined comparison.
type JoinedRows = (String, Vec<String>, Vec<i8>, Vec<f64>);

fn joined(out: &LabelOutput) -> Vec<JoinedRows> {
    out.joined
        .iter()
        .map(|(c, j)| {
            let rids = j.request_ids.iter().map(|r| r.to_string()).collect();
            (c.candidate_version.to_string(), rids, j.label.clone(), j.ts.clone())
        })
        .collect()
}

fn unlabeled(items: &[(Arc<Comparison>, Vec<f64>)]) -> Vec<(String, Vec<f64>)> {
    items.iter().map(|(c, ts)| (c.candidate_version.to_string(), ts.clone())).collect()
}

#[test]
fn a_label_serves_every_pair_of_its_request_whichever_comes_first() {
    let mut j = Joiner::new(100.0, 10, 10).unwrap();
    let out = j.add_pairs(&pairs(SHADOW, &[("a", 0.1, 0.2, 5.0), ("b", 0.3, 0.4, 6.0)]), 6.0);
    assert!(out.joined.is_empty() && out.unlabeled.is_empty());
    assert_eq!(j.pending_pairs(), 2);
    let out = add_labels(&mut j, &[("a", 1, 7.0), ("z", 0, 7.0)], 7.0);
    // The pair's ts, not the label's: the label lands in the slot of its pair.
    assert_eq!(joined(&out), [("v2".to_owned(), vec!["a".to_owned()], vec![1], vec![5.0])]);
    assert_eq!((out.joined[0].1.prod.clone(), out.joined[0].1.cand.clone()), (vec![0.1], vec![0.2]));
    assert_eq!((j.pending_pairs(), j.pending_labels()), (1, 2));
    // The canary pair of "a" comes after its label: joined at once, the label stays for others.
    let out = j.add_pairs(&pairs(CANARY, &[("a", 0.5, 0.6, 8.0)]), 8.0);
    assert_eq!(joined(&out), [("v3".to_owned(), vec!["a".to_owned()], vec![1], vec![8.0])]);
    assert_eq!(out.label_count(), 1);
    assert_eq!(j.pending_labels(), 2);
}

#[test]
fn pairs_and_labels_wait_up_to_the_horizon() {
    let mut j = Joiner::new(30.0, 10, 10).unwrap();
    j.add_pairs(&pairs(SHADOW, &[("a", 0.1, 0.2, 0.0)]), 0.0);
    add_labels(&mut j, &[("q", 1, 1.0)], 1.0);
    // At W = 30 the cutoff is 0: ts 0 is not below it, the pair still waits.
    let out = add_labels(&mut j, &[], 30.0);
    assert!(out.unlabeled.is_empty());
    let out = add_labels(&mut j, &[], 30.5);
    assert_eq!(unlabeled(&out.unlabeled), [("v2".to_owned(), vec![0.0])]);
    assert!(out.evicted.is_empty());
    assert_eq!(out.unmatched_labels, 0, "the label at 1.0 is still within the horizon");
    let out = j.add_pairs(&Pairs::default(), 31.5);
    assert_eq!((out.unmatched_labels, out.evicted_labels), (1, 0));
    assert_eq!((j.pending_pairs(), j.pending_labels(), j.watermark()), (0, 0, Some(31.5)));
    // Already past the horizon when it comes: unlabeled at once, never kept.
    let out = j.add_pairs(&pairs(SHADOW, &[("b", 0.1, 0.2, 1.0)]), 31.5);
    assert_eq!(unlabeled(&out.unlabeled), [("v2".to_owned(), vec![1.0])]);
    assert_eq!(j.pending_pairs(), 0);
}

#[test]
fn a_second_label_is_a_duplicate_or_a_conflict_and_the_first_wins() {
    let mut j = Joiner::new(100.0, 10, 10).unwrap();
    let out = add_labels(&mut j, &[("a", 1, 0.0), ("a", 1, 0.5), ("a", 0, 0.7)], 1.0);
    assert_eq!((out.duplicate_labels, out.conflicting_labels), (1, 1));
    let out = j.add_pairs(&pairs(SHADOW, &[("a", 0.1, 0.2, 2.0)]), 2.0);
    assert_eq!(joined(&out)[0].2, [1]);
}

#[test]
fn past_the_bounds_the_oldest_goes() {
    let mut j = Joiner::new(1000.0, 2, 1).unwrap();
    let out = j.add_pairs(&pairs(SHADOW, &[("a", 0.1, 0.2, 3.0), ("b", 0.1, 0.2, 1.0), ("c", 0.1, 0.2, 2.0)]), 3.0);
    // The third waiting pair pushes out the oldest (ts 1): unlabeled and evicted.
    assert_eq!(unlabeled(&out.unlabeled), [("v2".to_owned(), vec![1.0])]);
    assert_eq!(unlabeled(&out.evicted), unlabeled(&out.unlabeled));
    assert_eq!(j.pending_pairs(), 2);
    // Labels: the second pushes out the first, which never matched.
    let out = add_labels(&mut j, &[("x", 1, 4.0), ("y", 1, 5.0)], 5.0);
    assert_eq!((out.evicted_labels, out.unmatched_labels), (1, 1));
    // A matched label evicted counts as evicted only.
    let out = add_labels(&mut j, &[("a", 0, 6.0), ("w", 1, 7.0)], 7.0);
    assert_eq!(joined(&out)[0].1, ["a"]);
    assert_eq!((out.evicted_labels, out.unmatched_labels), (2, 1));
}

#[test]
fn entries_are_the_arrays_orjson_writes() {
    let mut j = Joiner::new(100.0, 10, 10).unwrap();
    let mut p = pairs(SHADOW, &[("a\u{1}", 0.1, 0.25, 5.0)]);
    p.comparisons[0].prod_error[0] = true; // an errored side: NaN in memory, null in the entry
    j.add_pairs(&p, 5.0);
    add_labels(&mut j, &[("q", 1, 1e16)], 1e16 - 50.0);
    let mut sink = EntrySink::default();
    j.entries_into(&mut sink);
    let got: Vec<(&str, &str)> =
        sink.upserts.iter().map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap())).collect();
    assert_eq!(
        got,
        [("l1", r#"["q","m",1,1e+16,0]"#), ("m", "[2,1e+16,2]"),],
        "the pair (ts 5) expired when the label raised W to 1e16"
    );
    let mut j = Joiner::new(100.0, 10, 10).unwrap();
    j.add_pairs(&p, 5.0);
    add_labels(&mut j, &[("q", 0, 6.0)], 6.0);
    let mut sink = EntrySink::default();
    j.entries_into(&mut sink);
    let got: Vec<(&str, &str)> =
        sink.upserts.iter().map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap())).collect();
    assert_eq!(
        got,
        [("p0", r#"["a\u0001","m|v1|v2|shadow",null,0.25,5.0]"#), ("l1", r#"["q","m",0,6.0,0]"#), ("m", "[2,6.0,2]")]
    );
}

/// One call: (canary?, pairs (rid, prod, cand, ts), labels (rid, label, ts), now); labels when not empty.
type Call = (bool, Vec<(&'static str, f64, f64, f64)>, Vec<(&'static str, u8, f64)>, f64);

/// Calls with pairs of two comparisons and labels: matches, duplicates, late ones, evictions.
fn script() -> Vec<Call> {
    const RIDS: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];
    let mut calls = Vec::new();
    let mut t = 0.0;
    for k in 0..40usize {
        t += [1.0, 0.0, 7.5][k % 3];
        let rid = RIDS[k % 7];
        let other = RIDS[(k * 3 + 1) % 7];
        let jitter = [0.0, -12.0, -45.0][k % 3];
        if k % 2 == 0 {
            calls.push((
                k % 4 == 0,
                vec![(rid, 0.1 * (k % 10) as f64, 0.5, t + jitter), (other, 0.2, 0.3, t)],
                vec![],
                t,
            ));
        } else {
            calls.push((false, vec![], vec![(rid, (k % 2) as u8, t + jitter), (other, 0, t)], t));
        }
    }
    calls
}

fn run(j: &mut Joiner, call: &Call) -> String {
    let (canary, p, l, now) = call;
    let out = if l.is_empty() {
        j.add_pairs(&pairs(if *canary { CANARY } else { SHADOW }, p), *now)
    } else {
        add_labels(j, l, *now)
    };
    // Debug writes floats exactly (shortest round trip); NaN never occurs here.
    format!("{out:?}")
}

fn entries_of(j: &Joiner) -> HashMap<String, Vec<u8>> {
    let mut sink = EntrySink::default();
    j.entries_into(&mut sink);
    sink.upserts.into_iter().collect()
}

#[test]
fn deltas_accumulate_to_the_entries_and_a_restored_joiner_carries_on_identically() {
    let calls = script();
    let mut j = Joiner::new(40.0, 4, 3).unwrap();
    let mut stored: HashMap<String, Vec<u8>> = HashMap::new();
    for (i, call) in calls.iter().enumerate() {
        run(&mut j, call);
        if i % 4 == 1 {
            let mut sink = BlobSink::new("");
            j.delta_into(&mut sink);
            statelog::apply(&mut stored, &sink.finish()).unwrap();
            assert_eq!(stored, entries_of(&j), "after call {i}");
        }
        if i == 21 {
            let doc: serde_json::Value = serde_json::from_slice(&stored["m"]).unwrap();
            let (watermark, next_seq) = (doc[1].as_f64().unwrap(), doc[2].as_u64().unwrap());
            let items: Vec<RestoredEntry> = stored
                .iter()
                .filter(|(k, _)| k.as_str() != "m")
                .map(|(k, v)| parse_entry(k, v, next_seq).expect("written by a joiner"))
                .collect();
            assert!(!items.is_empty());
            let mut restored = Joiner::new(40.0, 4, 3).unwrap();
            restored.restore(watermark, next_seq, items).unwrap();
            assert_eq!(entries_of(&restored), stored);
            for call in &calls[22..] {
                assert_eq!(run(&mut j, call), run(&mut restored, call));
                let (mut a, mut b) = (EntrySink::default(), EntrySink::default());
                j.delta_into(&mut a);
                restored.delta_into(&mut b);
                assert_eq!(a, b);
            }
            return;
        }
    }
    unreachable!("the takeover happens at call 21");
}

#[test]
fn parse_entry_takes_what_it_is_sure_of_and_defers_the_rest() {
    let pair = parse_entry("pa", br#" [ "r" , "m|v1|v2|canary" , null , 1 , 2.5e0 ] "#, 11).unwrap();
    let RestoredEntry::Pair { seq, role, prod, cand, ts, ref candidate_version, .. } = pair else {
        panic!("a pair: {pair:?}");
    };
    assert_eq!((seq, role, &**candidate_version, cand, ts), (10, CANARY, "v2", 1.0, 2.5));
    assert!(prod.is_nan());
    let label = parse_entry("l0", br#"["q","n.2",1,-0.0,1]"#, 1).unwrap();
    assert!(
        matches!(label, RestoredEntry::Label { seq: 0, value: 1, matched: true, ts, .. } if ts == 0.0 && ts.is_sign_negative())
    );
    for (key, raw) in [
        ("p0", r#"["r","m|v1|v2|production",0.1,0.2,0.0]"#),
        ("p0", r#"["r","m|v1|v2",0.1,0.2,0.0]"#),
        ("p0", r#"["r","m|v1|v2|shadow",true,0.2,0.0]"#),
        ("p0", r#"["r","m|v1|v2|shadow",0.1,0.2,-0]"#),
        ("p0", r#"["r","m|v1|v2|shadow",0.1,0.2,null]"#),
        ("p0", r#"["r","m|v1|v2|shadow",0.1,0.2,9223372036854775808]"#),
        ("p0", r#"["r","m|v1|v2|shadow",0.1,0.2]"#),
        ("l0", r#"["q","m",1.0,0.0,0]"#),
        ("l0", r#"["q","m",2,0.0,0]"#),
        ("l0", r#"["q","m",1,"0",0]"#),
        ("l0", r#"["q",5,1,0.0,0]"#),
        ("x0", r#"["q","m",1,0.0,0]"#),
        ("p01", r#"["r","m|v1|v2|shadow",0.1,0.2,0.0]"#),
        ("p1", r#"["r","m|v1|v2|shadow",0.1,0.2,0.0]"#), // seq 1 is not below next_seq 1
        ("é0", r#"["q","m",1,0.0,0]"#),
        ("", "[]"),
    ] {
        assert_eq!(parse_entry(key, raw.as_bytes(), 1), None, "{key} {raw}");
    }
}

#[test]
fn restore_refuses_items_no_valid_state_holds_and_keeps_the_state() {
    let label = |seq: u64, value: u8| RestoredEntry::Label {
        seq,
        request_id: Arc::from("q"),
        model: intern("m"),
        value,
        ts: 1.0,
        matched: false,
    };
    let mut j = Joiner::new(30.0, 10, 10).unwrap();
    j.restore(1.0, 3, vec![label(2, 1)]).unwrap();
    let before = entries_of(&j);
    let pair = RestoredEntry::Pair {
        seq: 0,
        request_id: Arc::from("r"),
        model: intern("m"),
        production_version: intern("v1"),
        candidate_version: intern("v2"),
        role: PRODUCTION,
        prod: 0.1,
        cand: 0.2,
        ts: 1.0,
    };
    for bad in [vec![label(3, 1)], vec![label(1, 1), label(1, 0)], vec![label(0, 2)], vec![pair]] {
        assert!(matches!(j.restore(1.0, 3, bad), Err(CoreError::Invalid(_))));
    }
    assert_eq!(entries_of(&j), before);
}

#[test]
fn settings_are_checked() {
    assert_eq!(
        Joiner::new(f64::INFINITY, 1, 1).err(),
        Some(CoreError::Config("horizon_s=inf: must be a finite number > 0".into()))
    );
    assert_eq!(Joiner::new(1.0, 1, 0).err(), Some(CoreError::Config("max_labels=0: must be an integer >= 1".into())));
}
