//! Reading state entries on restore, for the fast path of both joins ([`crate::pairer::parse_entry`],
//! [`crate::joiner::parse_entry`]).
//!
//! The reference reads an entry with `orjson.loads` and checks the Python values. These readers take a
//! value only when they are sure orjson reads it as the same Python value, and answer `None` otherwise
//! (the entry is then deferred to the reference). They see each value's literal text (serde_json's raw
//! values), so they can tell what a parsed `serde_json::Value` hides:
//!
//! * an integer literal that fits 64 signed bits is an int (`-0` is refused: orjson reads the int 0,
//!   serde_json the float -0.0); a longer one is refused;
//! * a literal with a fraction or an exponent is a float, parsed correctly rounded (Rust's `f64::from_str`,
//!   like orjson); one that overflows to infinity or underflows to zero is refused;
//! * strings are unescaped by serde_json (which refuses lone surrogates, as orjson does);
//! * objects keep their keys in order, and one with a repeated key is refused (a Python dict keeps the
//!   first position and the last value: rare enough to leave to the reference).

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The values of a JSON array, as their literal texts; None when `raw` is not exactly one array.
pub fn items(raw: &[u8]) -> Option<Vec<&RawValue>> {
    serde_json::from_slice(raw).ok()
}

/// A JSON string's value.
pub fn string(value: &RawValue) -> Option<String> {
    serde_json::from_str(value.get()).ok()
}

pub fn is_null(value: &RawValue) -> bool {
    value.get() == "null"
}

fn is_number(text: &str) -> bool {
    text.as_bytes().first().is_some_and(|&c| c == b'-' || c.is_ascii_digit())
}

fn is_float_literal(text: &str) -> bool {
    text.bytes().any(|c| matches!(c, b'.' | b'e' | b'E'))
}

/// An integer literal as orjson reads it (a Python int), when it fits 64 signed bits.
pub fn int(value: &RawValue) -> Option<i64> {
    let text = value.get();
    if !is_number(text) || is_float_literal(text) || text == "-0" {
        return None;
    }
    text.parse().ok()
}

/// A float literal as orjson reads it (a Python float).
pub fn float(value: &RawValue) -> Option<f64> {
    let text = value.get();
    if !is_number(text) || !is_float_literal(text) {
        return None;
    }
    let parsed: f64 = text.parse().ok()?;
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let underflow = parsed == 0.0 && mantissa.bytes().any(|c| (b'1'..=b'9').contains(&c));
    (parsed.is_finite() && !underflow).then_some(parsed)
}

/// A number as the reference's `float(value)` of what orjson read (int or float literal).
pub fn number(value: &RawValue) -> Option<f64> {
    // An i64 converts to the nearest double, ties to even: Python's float(int) exactly.
    float(value).or_else(|| int(value).map(|v| v as f64))
}

/// An int literal in `0..=max` (the reference's `v in (0, 1, ..) and is_int(v)`).
pub fn small(value: &RawValue, max: u8) -> Option<u8> {
    let v = int(value)?;
    u8::try_from(v).ok().filter(|&v| v <= max)
}

/// A JSON object's items in order, keys unescaped; None when it is no object or repeats a key.
pub fn object(value: &RawValue) -> Option<Vec<(String, &RawValue)>> {
    struct Items;
    impl<'de> Visitor<'de> for Items {
        type Value = Vec<(String, &'de RawValue)>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut items: Vec<(String, &'de RawValue)> = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, &'de RawValue>()? {
                if items.iter().any(|(seen, _)| *seen == key) {
                    return Err(serde::de::Error::custom("a repeated key"));
                }
                items.push((key, value));
            }
            Ok(items)
        }
    }
    let mut de = serde_json::Deserializer::from_str(value.get());
    let items = (&mut de).deserialize_map(Items).ok()?;
    de.end().ok()?;
    Some(items)
}

/// The sequence number of an entry key: canonical lowercase hex (no leading zero) that fits 64 bits.
pub fn seq(digits: &str) -> Option<u64> {
    let canonical = !digits.is_empty()
        && digits.len() <= 16
        && digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !(digits.starts_with('0') && digits.len() > 1);
    if canonical {
        u64::from_str_radix(digits, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Vec<&RawValue> {
        items(raw.as_bytes()).expect("an array")
    }

    #[test]
    fn numbers_are_taken_only_as_orjson_reads_them() {
        let values = parse(
            r#" [ 0 , -0 , 17 , -17 , 9223372036854775807 , 9223372036854775808 , 1.5 , -0.0 , 1E2 , 2.5e-3 , 1e400 , 1e-400 , 0e5 , "1" , null , true ] "#,
        );
        let ints: Vec<Option<i64>> = values.iter().map(|v| int(v)).collect();
        assert_eq!(
            ints,
            [
                Some(0),
                None,
                Some(17),
                Some(-17),
                Some(i64::MAX),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        let numbers: Vec<Option<f64>> = values.iter().map(|v| number(v)).collect();
        assert_eq!(numbers[..4], [Some(0.0), None, Some(17.0), Some(-17.0)]);
        // i64::MAX is 2**63 - 1: the nearest double is 2**63
        assert_eq!(numbers[4], Some(9_223_372_036_854_775_808.0));
        assert_eq!(numbers[5], None);
        assert_eq!(numbers[6], Some(1.5));
        assert!(numbers[7].is_some_and(|v| v == 0.0 && v.is_sign_negative()));
        assert_eq!(numbers[8..10], [Some(100.0), Some(0.0025)]);
        assert_eq!(numbers[10..], [None, None, Some(0.0), None, None, None]);
        assert_eq!(small(values[0], 1), Some(0));
        assert_eq!(small(values[2], 2), None);
        assert!(is_null(values[14]));
    }

    #[test]
    fn strings_and_objects() {
        let values =
            parse(r#"["a\"\u00e9\ud83d\ude00", "\ud800", {"b": 1, "a\u0041": null}, {"k": 1, "k": 2}, {}, [1]]"#);
        assert_eq!(string(values[0]).as_deref(), Some("a\"é😀"));
        assert_eq!(string(values[1]), None, "a lone surrogate");
        let object_2 = object(values[2]).expect("an object");
        let keys: Vec<&str> = object_2.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "aA"]);
        assert_eq!(object_2[0].1.get(), "1");
        assert!(object(values[3]).is_none(), "a repeated key");
        assert_eq!(object(values[4]).map(|items| items.len()), Some(0));
        assert!(object(values[5]).is_none());
        assert!(items(b"[1,]").is_none());
        assert!(items(b"{}").is_none());
        assert!(items(b"[1] x").is_none());
    }

    #[test]
    fn sequence_keys_are_canonical_lowercase_hex() {
        assert_eq!(seq("0"), Some(0));
        assert_eq!(seq("ff"), Some(255));
        assert_eq!(seq("ffffffffffffffff"), Some(u64::MAX));
        for bad in ["", "00", "0f", "FF", "g", "-1", "1ffffffffffffffff", "１"] {
            assert_eq!(seq(bad), None, "{bad:?}");
        }
    }
}
