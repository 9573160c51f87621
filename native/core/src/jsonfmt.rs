//! Compact JSON writing byte-identical to orjson's output (`orjson.dumps` with no options), for state
//! entries that Python and native workers must read and write interchangeably.
//!
//! * floats: the shortest digits that round-trip, laid out as orjson lays them out: plain decimal for
//!   decimal exponents -5..=15 (`0.00001`, `1000000000000000.0`, always with a fraction), otherwise
//!   `d.ddde±x` without padding (`1e-7`, `1e+16`, `1.2345678901234568e+17`); `-0.0` keeps its sign.
//!   orjson (3.11+) formats with the zmij algorithm, so this writes zmij's output; non-finite floats
//!   are written as `null`, like orjson;
//! * strings: `"` and `\` escaped, `\b \t \n \f \r` short, other control characters `\u00xx` (lowercase
//!   hex); everything else (`/`, DEL, U+2028, non-ASCII) as raw UTF-8;
//! * ints in decimal, `null`.
//!
//! Checked against orjson by `tests/test_native_labels.py` (Hypothesis over random f64 and strings).

/// Append a float as orjson writes it (`null` for NaN and infinities).
#[inline]
pub fn write_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_finite() {
        let mut buffer = zmij::Buffer::new();
        out.extend_from_slice(buffer.format_finite(value).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

#[inline]
pub fn write_i64(out: &mut Vec<u8>, value: i64) {
    let mut buffer = itoa::Buffer::new();
    out.extend_from_slice(buffer.format(value).as_bytes());
}

#[inline]
pub fn write_u64(out: &mut Vec<u8>, value: u64) {
    let mut buffer = itoa::Buffer::new();
    out.extend_from_slice(buffer.format(value).as_bytes());
}

#[inline]
pub fn write_null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Any byte below 0x20, a quote or a backslash, eight bytes at a time (most strings need no escape).
fn needs_escape(bytes: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |w: u64| w.wrapping_sub(LO) & !w & HI;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // bytes < 0x20: (w - 0x20..) & !w & 0x80.. flags them (ASCII or not, no false negatives)
        if (w.wrapping_sub(0x20 * LO) & !w & HI)
            | zero_byte(w ^ (b'"' as u64 * LO))
            | zero_byte(w ^ (b'\\' as u64 * LO))
            != 0
        {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Append a JSON string as orjson escapes it.
#[inline]
pub fn write_str(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_as_orjson_writes_them() {
        let cases = [
            (1e-5, "0.00001"),
            (1e16, "1e+16"),
            (1e22, "1e+22"),
            (0.1, "0.1"),
            (5e-324, "5e-324"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (1767222000.123456, "1767222000.123456"),
            (1e15, "1000000000000000.0"),
            (1e-7, "1e-7"),
            (f64::NAN, "null"),
        ];
        for (v, want) in cases {
            assert_eq!(f(v), want);
        }
    }

    #[test]
    fn strings_as_orjson_escapes_them() {
        let mut out = Vec::new();
        write_str(&mut out, "\"\\/\u{0}\u{1f}\u{7f}\u{2028}é\t\n\r\u{8}\u{c}");
        assert_eq!(String::from_utf8(out).unwrap(), "\"\\\"\\\\/\\u0000\\u001f\u{7f}\u{2028}é\\t\\n\\r\\b\\f\"");
    }

    #[test]
    fn long_strings_escape_wherever_the_byte_falls() {
        // The 8-byte scan must find a special byte in any lane and in the tail.
        for at in 0..19 {
            for special in [b'"', b'\\', 0x01u8, 0x1f] {
                let mut text = vec![b'a'; 19];
                text[at] = special;
                let text = String::from_utf8(text).unwrap();
                let mut out = Vec::new();
                write_str(&mut out, &text);
                let escaped = match special {
                    b'"' => "\\\"".to_owned(),
                    b'\\' => "\\\\".to_owned(),
                    c => format!("\\u{c:04x}"),
                };
                let want = format!("\"{}{}{}\"", &text[..at], escaped, &text[at + 1..]);
                assert_eq!(String::from_utf8(out).unwrap(), want, "special byte {special:#x} at {at}");
            }
        }
        let mut out = Vec::new();
        write_str(&mut out, "é漢😀 plain text, no escapes at all");
        assert_eq!(String::from_utf8(out).unwrap(), "\"é漢😀 plain text, no escapes at all\"");
    }
}
