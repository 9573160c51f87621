//! The decoder's tests: decimals and timestamps against Rust's own parsers, the edge cases of what it takes
//! and defers, and an ignored throughput bench.

mod rounding {
    use super::super::*;

    #[test]
    fn decimals_round_like_the_parser() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        for _ in 0..400_000 {
            let digits = next() % 10u64.pow((next() % 19 + 1) as u32);
            let scale = (next() % 21) as usize;
            let exact: f64 = format!("{digits}e-{scale}").parse().unwrap();
            if let Some(fast) = decimal_to_f64(digits, scale) {
                assert_eq!(fast.to_bits(), exact.to_bits(), "{digits}e-{scale}");
                checked += 1;
            }
        }
        assert!(checked > 300_000, "{checked}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp(b"1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_timestamp(b"1969-12-31T23:59:59.999999Z"), Some(-1e-6));
        assert_eq!(parse_timestamp(b"2026-11-26T10:00:00+23:59"), Some(1795600860.0));
        assert_eq!(parse_timestamp(b"2026-11-26T10:00:00.5+05:30"), Some(1795667400.5));
        assert_eq!(parse_timestamp(b"2024-02-29T10:00:00Z"), Some(1709200800.0));
        for bad in [
            &b"2026-02-29T10:00:00Z"[..],
            b"2026-11-26T24:00:00Z",
            b"2026-11-26T10:00:60Z",
            b"2026-11-26T10:00:00+24:00",
            b"2026-11-26T10:00:00.1234567Z",
            b"2026-11-26T10:00:00.Z",
            b"2026-11-26t10:00:00Z",
            b"2026-11-26T10:00:00+0100",
            b"0000-01-01T00:00:00Z",
            b"9999-12-31T23:59:59Z",
            b"2026-11-26T10:00:00",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}

mod edge_cases {
    //! What the decoder takes, with the values the contract would give (timestamps computed with
    //! Python's `datetime.fromisoformat(...).timestamp()`), and what it leaves to the contract.

    use super::super::*;

    const EVENT: &str = r#"{"request_id":"r-1","model":"fraud","version":"1.4.0","role":"shadow","score":0.25,"latency_ms":12,"ts":"2026-11-26T10:00:00Z"}"#;

    fn event(replace: &str, with: &str) -> String {
        assert!(EVENT.contains(replace), "{replace}");
        EVENT.replacen(replace, with, 1)
    }

    fn one(raw: &str) -> Option<ScoreRow> {
        let mut rows = decode_scores(raw.as_bytes())?.rows;
        assert_eq!(rows.len(), 1);
        rows.pop()
    }

    #[test]
    fn a_single_event_and_an_envelope_give_the_contracts_values() {
        let row = one(EVENT).expect("a valid event");
        assert_eq!((&*row.request_id, &*row.model, &*row.version, row.role), ("r-1", "fraud", "1.4.0", block::SHADOW));
        assert_eq!((row.score, row.latency_ms, row.ts, row.error), (0.25, 12.0, 1795687200.0, false));
        assert!(row.features.is_none());
        let envelope =
            format!(" {{ \"events\" : [ {EVENT} ,\n{} ] }} ", event(r#""role":"shadow""#, r#""role":"production""#));
        let block = decode_scores(envelope.as_bytes()).expect("an envelope");
        assert_eq!(block.rows.iter().map(|r| r.role).collect::<Vec<_>>(), [block::SHADOW, block::PRODUCTION]);
        assert_eq!(block.max_ts(), Some(1795687200.0));
        assert!(Arc::ptr_eq(&block.rows[0].model, &block.rows[1].model), "names are shared");
    }

    #[test]
    fn timestamps_fractions_and_offsets() {
        let row = one(&event("2026-11-26T10:00:00Z", "2026-11-26T10:00:00.123456+01:00")).unwrap();
        assert_eq!(row.ts, 1795683600.123456);
        let row = one(&event("2026-11-26T10:00:00Z", "2026-01-01T00:00:00.5-00:30")).unwrap();
        assert_eq!(row.ts, 1767227400.5);
        // Forms the contract takes but this parser leaves to it.
        for ts in ["2026-11-26 10:00:00Z", "2026-11-26T10:00:00.1234567Z", "2026-11-26T10:00:00+0100"] {
            assert!(one(&event("2026-11-26T10:00:00Z", ts)).is_none(), "{ts}");
        }
    }

    #[test]
    fn numbers_as_python_reads_them() {
        let row = one(&event(r#""score":0.25"#, r#""score":1"#)).unwrap();
        assert_eq!(row.score, 1.0);
        let row = one(&event(r#""latency_ms":12"#, r#""latency_ms":1e3"#)).unwrap();
        assert_eq!(row.latency_ms, 1000.0);
        let row = one(&event(r#""latency_ms":12"#, r#""latency_ms":9007199254740992"#)).unwrap();
        assert_eq!(row.latency_ms, 9007199254740992.0);
        for (field, with) in [
            (r#""latency_ms":12"#, r#""latency_ms":9007199254740993"#), // past 2**53: not exact as a float
            (r#""score":0.25"#, r#""score":1.0000001"#),                // out of [0, 1]
            (r#""score":0.25"#, r#""score":NaN"#),
            (r#""score":0.25"#, r#""score":-0.5"#),
            (r#""latency_ms":12"#, r#""latency_ms":-1"#),
            (r#""latency_ms":12"#, r#""latency_ms":1e400"#),
            (r#""latency_ms":12"#, r#""latency_ms":012"#),
            (r#""score":0.25"#, r#""score":"0.25""#),
        ] {
            assert!(one(&event(field, with)).is_none(), "{with}");
        }
    }

    #[test]
    fn features_keep_their_types_and_order() {
        let raw = event(
            r#""score":0.25"#,
            r#""score":0.25,"features":{"b":-0,"a":1.5,"s":"\u00e9","n":null,"i":-9223372036854775808}"#,
        );
        let row = one(&raw).unwrap();
        use FeatureValue::*;
        let want: Vec<(Box<str>, FeatureValue)> = vec![
            ("b".into(), Int(0)), // -0 is the int 0, as Python reads it
            ("a".into(), Float(1.5)),
            ("s".into(), Str("é".into())),
            ("n".into(), Null),
            ("i".into(), Int(i64::MIN)),
        ];
        assert_eq!(row.features.as_deref(), Some(&want[..]));
        for features in [
            r#"{"a":1,"a":2}"#, // a repeated name
            r#"{"a":true}"#,    // bools are not feature values here
            r#"{"a":[1]}"#,
            r#"{"a b":1}"#,                 // a name outside [A-Za-z0-9_.-]
            r#"{"a":9223372036854775808}"#, // beyond 64 bits
        ] {
            let raw = event(r#""score":0.25"#, &format!(r#""score":0.25,"features":{features}"#));
            assert!(one(&raw).is_none(), "{features}");
        }
        let many: Vec<String> = (0..=MAX_FEATURES).map(|i| format!("\"f{i}\":{i}")).collect();
        let raw =
            event(r#""score":0.25"#, &format!(r#""score":0.25,"features":{{{}}}"#, many[..MAX_FEATURES].join(",")));
        assert_eq!(one(&raw).unwrap().features.unwrap().len(), MAX_FEATURES);
        let raw = event(r#""score":0.25"#, &format!(r#""score":0.25,"features":{{{}}}"#, many.join(",")));
        assert!(one(&raw).is_none(), "one feature too many");
    }

    #[test]
    fn strings_names_and_lengths() {
        let row = one(&event(r#""request_id":"r-1""#, r#""request_id":"a\"\\\/\u00e9\ud83d\ude00""#)).unwrap();
        assert_eq!(&*row.request_id, "a\"\\/é😀");
        let long = "é".repeat(MAX_REQUEST_ID); // 256 characters, 512 bytes: the limit counts characters
        assert!(one(&event(r#""request_id":"r-1""#, &format!(r#""request_id":"{long}""#))).is_some());
        let too_long = "é".repeat(MAX_REQUEST_ID + 1);
        assert!(one(&event(r#""request_id":"r-1""#, &format!(r#""request_id":"{too_long}""#))).is_none());
        let name = "n".repeat(MAX_NAME);
        assert!(one(&event(r#""model":"fraud""#, &format!(r#""model":"{name}""#))).is_some());
        assert!(one(&event(r#""model":"fraud""#, &format!(r#""model":"{name}n""#))).is_none());
        let row = one(&event(r#""role":"shadow""#, r#""role":"shadow","error":"timeout""#)).unwrap();
        assert!(row.error);
        let row = one(&event(r#""role":"shadow""#, r#""role":"shadow","error":null"#)).unwrap();
        assert!(!row.error);
        for (field, with) in [
            (r#""request_id":"r-1""#, r#""request_id":"""#),        // empty
            (r#""request_id":"r-1""#, r#""request_id":"\ud800""#),  // a lone surrogate
            (r#""request_id":"r-1""#, "\"request_id\":\"a\u{1}\""), // a raw control character
            (r#""model":"fraud""#, r#""model":"fr\u0061ud""#),      // an escaped name
            (r#""model":"fraud""#, r#""model":"fraud/x""#),
            (r#""role":"shadow""#, r#""role":"Shadow""#),
            (r#""role":"shadow""#, r#""role":"shadow","role":"canary""#),
            (r#""role":"shadow""#, r#""role":"shadow","extra":1"#),
            (r#""role":"shadow""#, r#""r\u006fle":"shadow""#), // an escaped key
        ] {
            assert!(one(&event(field, with)).is_none(), "{with}");
        }
        let missing = EVENT.replace(r#""role":"shadow","#, "");
        assert!(one(&missing).is_none(), "a required field is missing");
    }

    #[test]
    fn only_exactly_one_valid_json_document() {
        for raw in [
            format!("\u{feff}{EVENT}"),
            format!("{EVENT} x"),
            format!("{EVENT},"),
            r#"{"events":[]}"#.to_owned(),
            format!(r#"{{"events":[{EVENT},]}}"#),
            format!(r#"{{"events":[{EVENT}],"x":1}}"#),
            "".to_owned(),
        ] {
            assert!(decode_scores(raw.as_bytes()).is_none(), "{raw}");
        }
        let mut invalid_utf8 = event(r#""request_id":"r-1""#, r#""request_id":"r-é""#).into_bytes();
        let at = invalid_utf8.iter().position(|&b| b == 0xc3).unwrap();
        invalid_utf8[at + 1] = 0x28;
        assert!(decode_scores(&invalid_utf8).is_none());
        let full = vec![EVENT; MAX_BATCH_EVENTS].join(",");
        assert_eq!(
            decode_scores(format!(r#"{{"events":[{full}]}}"#).as_bytes()).map(|b| b.len()),
            Some(MAX_BATCH_EVENTS)
        );
        let over = format!(r#"{{"events":[{full},{EVENT}]}}"#);
        assert!(decode_scores(over.as_bytes()).is_none(), "more events than the contract allows");
    }

    #[test]
    fn labels() {
        let raw = r#"{"request_id":"r-1","model":"fraud","label":1,"ts":"2026-11-26T10:00:00Z"}"#;
        let block = decode_label(raw.as_bytes()).expect("a valid label");
        let row = &block.rows[0];
        assert_eq!((&*row.request_id, &*row.model, row.label, row.ts), ("r-1", "fraud", 1, 1795687200.0));
        for label in ["true", "1.0", "2", "-0", "0e0", "\"1\""] {
            let raw = raw.replace(r#""label":1"#, &format!(r#""label":{label}"#));
            assert!(decode_label(raw.as_bytes()).is_none(), "{label}");
        }
        let raw_0 = raw.replace(r#""label":1"#, r#""label":0"#);
        assert_eq!(decode_label(raw_0.as_bytes()).map(|b| b.rows[0].label), Some(0));
        assert!(decode_label(raw.replace(r#","ts":"2026-11-26T10:00:00Z""#, "").as_bytes()).is_none());
        assert!(decode_label(raw.replace("}", r#","label":1}"#).as_bytes()).is_none());
    }
}

mod bench {
    /// `SHADOWGATE_BENCH=file cargo test --release --lib bench -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn decode_file() {
        let path = std::env::var("SHADOWGATE_BENCH").expect("SHADOWGATE_BENCH=<file>");
        let raw = std::fs::read(path).unwrap();
        let reps: usize = std::env::var("REPS").ok().and_then(|r| r.parse().ok()).unwrap_or(2000);
        let n = super::super::parse_scores(&raw).expect("accepted").len();
        let start = std::time::Instant::now();
        for _ in 0..reps {
            std::hint::black_box(super::super::parse_scores(std::hint::black_box(&raw)));
        }
        let per_event = start.elapsed().as_secs_f64() / (reps * n) as f64 * 1e6;
        println!("{n} events: {per_event:.3} us/event");
    }
}
