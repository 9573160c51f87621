//! Score and label messages -> blocks.
//!
//! A hand-written parser for exactly the wire shapes of `governance/wire.py`. It answers `None` for
//! anything it is not certain the contract accepts with exactly these values; the Python caller then
//! runs its own path (msgspec, then the pydantic contract), which also names the field of an invalid
//! message. So this module only has to be right about what it accepts. It accepts:
//!
//! * strict RFC 8259 JSON (no NaN/Infinity, no trailing commas, no BOM, no raw control characters in
//!   strings, valid UTF-8, no lone surrogate escapes), with no duplicate keys and no escapes in keys;
//! * a score message `{"events": [event, ...]}` (1..=10000 events) or a single event object; a label
//!   message is one label object;
//! * names (model, version) of 1..=128 of `[A-Za-z0-9_.:-]`, feature names of 1..=128 of
//!   `[A-Za-z0-9_.-]`, both without escapes;
//! * numbers as Python reads them: integer literals stay ints (features) or become the float of the
//!   same value (score, latency_ms; only up to 2**53, where that is exact), others are parsed as
//!   correctly rounded doubles (Rust's `f64::from_str`, like Python's `float`); non-finite -> `None`;
//! * timestamps `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|z|+HH:MM|-HH:MM)` within 2**53 microseconds of the
//!   epoch (1684..2255), where `micros as f64 / 1e6` is exactly Python's `datetime.timestamp()`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use crate::block::{self, FeatureValue, Features, LabelBlock, LabelRow, ScoreBlock, ScoreRow};

pub const MAX_BATCH_EVENTS: usize = 10_000;
pub const MAX_FEATURES: usize = 256;
const MAX_NAME: usize = 128;
const MAX_REQUEST_ID: usize = 256;
const MAX_ERROR: usize = 1024;
const MAX_FEATURE_STRING: usize = 256;
/// Integers up to this magnitude convert to f64 exactly; so do microsecond counts.
const MAX_EXACT: i64 = 1 << 53;
/// Feature names of one event checked for duplicates by a linear scan up to this many, then by a set.
const LINEAR_DUPLICATE_SCAN: usize = 16;
/// Distinct model/version names remembered per message before calling `block::intern` (a mutex) again.
const NAME_CACHE: usize = 32;

/// Score messages: a block of the message's events, or None to let the Python contract decide.
pub fn decode_scores(raw: &[u8]) -> Option<ScoreBlock> {
    parse_scores(raw).map(|rows| ScoreBlock { rows })
}

/// One label message: a block of its one label, or None to let the Python contract decide.
pub fn decode_label(raw: &[u8]) -> Option<LabelBlock> {
    parse_label(raw).map(|row| LabelBlock { rows: vec![row] })
}

pub fn parse_scores(raw: &[u8]) -> Option<Vec<ScoreRow>> {
    let mut p = Parser::new(raw);
    let mut names = NameCache::default();
    p.ws();
    let open = p.i;
    p.eat(b'{')?;
    let key = p.string()?;
    let rows = if !key.escaped && key.bytes == b"events" {
        p.eat(b':')?;
        p.eat(b'[')?;
        let mut rows = Vec::with_capacity((raw.len() / 160 + 1).min(MAX_BATCH_EVENTS));
        loop {
            if rows.len() == MAX_BATCH_EVENTS {
                return None;
            }
            rows.push(p.score_event(&mut names)?);
            match p.next_byte()? {
                b',' => {}
                b']' => break,
                _ => return None,
            }
        }
        p.eat(b'}')?;
        rows
    } else {
        p.i = open;
        vec![p.score_event(&mut names)?]
    };
    p.end()?;
    Some(rows)
}

pub fn parse_label(raw: &[u8]) -> Option<LabelRow> {
    const REQUEST_ID: u8 = 1;
    const MODEL: u8 = 2;
    const LABEL: u8 = 4;
    const TS: u8 = 8;
    let mut p = Parser::new(raw);
    let mut names = NameCache::default();
    let (mut request_id, mut model, mut label, mut ts) = (None, None, 0u8, 0f64);
    let mut seen = 0u8;
    p.eat(b'{')?;
    loop {
        let key = p.key()?;
        p.eat(b':')?;
        let bit = match key {
            b"request_id" => {
                request_id = Some(p.request_id()?);
                REQUEST_ID
            }
            b"model" => {
                model = Some(p.name(&mut names)?);
                MODEL
            }
            b"label" => {
                // Only the literals 0 and 1 (the contract's strict int refuses true, 1.0, 0e0).
                p.ws();
                let start = p.i;
                p.number()?;
                label = match &raw[start..p.i] {
                    b"0" => 0,
                    b"1" => 1,
                    _ => return None,
                };
                LABEL
            }
            b"ts" => {
                ts = p.timestamp()?;
                TS
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match p.next_byte()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    p.end()?;
    if seen != REQUEST_ID | MODEL | LABEL | TS {
        return None;
    }
    Some(LabelRow { request_id: request_id?, model: model?, label, ts })
}

/// A score event's fields, as bits.
const F_REQUEST_ID: u16 = 1;
const F_MODEL: u16 = 2;
const F_VERSION: u16 = 4;
const F_ROLE: u16 = 8;
const F_SCORE: u16 = 16;
const F_LATENCY: u16 = 32;
const F_TS: u16 = 64;
const F_ERROR: u16 = 128;
const F_FEATURES: u16 = 256;
const F_REQUIRED: u16 = F_REQUEST_ID | F_MODEL | F_VERSION | F_ROLE | F_SCORE | F_LATENCY | F_TS;

/// Byte classes inside a JSON string.
const PLAIN: u8 = 0;
const QUOTE: u8 = 1;
const BACKSLASH: u8 = 2;
const CONTROL: u8 = 3;
const NON_ASCII: u8 = 4;

static STRING_CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = if c < 0x20 {
            CONTROL
        } else if c == b'"' as usize {
            QUOTE
        } else if c == b'\\' as usize {
            BACKSLASH
        } else if c >= 0x80 {
            NON_ASCII
        } else {
            PLAIN
        };
        c += 1;
    }
    t
};

const fn name_table(colon: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-' || (colon && b == b':');
        c += 1;
    }
    t
}

/// `[A-Za-z0-9_.:-]`: model and version names (governance.wire.NAME_CHARS).
static NAME_CHARS: [bool; 256] = name_table(true);
/// `[A-Za-z0-9_.-]`: feature names (governance.wire.FEATURE_NAME_CHARS).
static FEATURE_NAME_CHARS: [bool; 256] = name_table(false);

const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Non-zero iff one of the 8 bytes is a quote, a backslash, a control character or non-ASCII.
#[inline]
fn special_bytes(w: u64) -> u64 {
    let ascii_specials = (w.wrapping_sub(LOW_BITS * 0x20)
        | (w ^ (LOW_BITS * b'"' as u64)).wrapping_sub(LOW_BITS)
        | (w ^ (LOW_BITS * b'\\' as u64)).wrapping_sub(LOW_BITS))
        & !w;
    (ascii_specials | w) & HIGH_BITS
}

fn is_name(bytes: &[u8], table: &[bool; 256]) -> bool {
    !bytes.is_empty() && bytes.len() <= MAX_NAME && bytes.iter().all(|&c| table[c as usize])
}

/// A JSON string's raw bytes between the quotes: valid UTF-8; `escaped` if it holds backslash escapes.
#[derive(Clone, Copy)]
struct RawStr<'a> {
    bytes: &'a [u8],
    escaped: bool,
    non_ascii: bool,
}

impl<'a> RawStr<'a> {
    /// The string's value, if it is at most `max_chars` code points (Python's `len`).
    fn text(self, min_chars: usize, max_chars: usize) -> Option<Cow<'a, str>> {
        let value: Cow<'a, str> = if self.escaped {
            Cow::Owned(unescape(self.bytes)?)
        } else {
            // SAFETY: checked by `Parser::string` (ASCII, or validated when it saw a non-ASCII byte).
            Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(self.bytes) })
        };
        let bytes = value.len();
        // Chars <= bytes <= 4 * chars: count only when the byte length does not settle it.
        let chars = if (self.non_ascii || self.escaped) && (bytes > max_chars || bytes < min_chars) {
            value.chars().count()
        } else {
            bytes
        };
        (min_chars..=max_chars).contains(&chars).then_some(value)
    }
}

fn hex4(bytes: &[u8]) -> Option<u32> {
    let mut v = 0;
    for &c in bytes {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// A JSON string body's value; None for an invalid escape or a lone surrogate.
fn unescape(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i] != b'\\' {
            i += 1;
        }
        // SAFETY: valid UTF-8 (see RawStr), split at an ASCII byte.
        out.push_str(unsafe { std::str::from_utf8_unchecked(&bytes[start..i]) });
        if i == bytes.len() {
            break;
        }
        let escape = *bytes.get(i + 1)?;
        i += 2;
        out.push(match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = hex4(bytes.get(i..i + 4)?)?;
                i += 4;
                let code = match high {
                    0xD800..=0xDBFF => {
                        if bytes.get(i..i + 2)? != b"\\u" {
                            return None;
                        }
                        let low = hex4(bytes.get(i + 2..i + 6)?)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        i += 6;
                        0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => high,
                };
                char::from_u32(code)?
            }
            _ => return None,
        });
    }
    Some(out)
}

/// 1e0..=1e22: exactly representable as f64.
static POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// 10**k as u128, k = 0..=20.
static POWERS_OF_TEN_U128: [u128; 21] = {
    let mut t = [1u128; 21];
    let mut k = 1;
    while k < 21 {
        t[k] = t[k - 1] * 10;
        k += 1;
    }
    t
};

/// `digits / 10**scale` correctly rounded, or None when the quick ways cannot tell (then `str::parse`).
///
/// Up to 2**53 both operands are exact and one IEEE division rounds correctly (Clinger's fast path).
/// Above (17-digit decimals are common: Python's repr of a double), the quotient of the rounded operands
/// is checked exactly in 128-bit integers: it is the correctly rounded value iff the decimal lies
/// strictly inside its rounding interval ((2m-1)/2, (2m+1)/2) * 2**e.
fn decimal_to_f64(digits: u64, scale: usize) -> Option<f64> {
    if digits <= MAX_EXACT as u64 && scale <= 22 {
        return Some(digits as f64 / POWERS_OF_TEN[scale]);
    }
    if scale > 20 {
        return None;
    }
    let x = digits as f64 / POWERS_OF_TEN[scale];
    if !x.is_normal() {
        return None;
    }
    let bits = x.to_bits();
    let m = (bits & ((1 << 52) - 1)) | (1 << 52);
    let e = ((bits >> 52) & 0x7ff) as i64 - 1075; // x = m * 2**e
                                                  // At a power of two the interval below is half as wide: leave that to the parser.
    if e >= 0 || m == 1 << 52 {
        return None;
    }
    let shift = (1 - e) as u32;
    if 64 - digits.leading_zeros() + shift > 127 {
        return None;
    }
    let twice_scaled = (digits as u128) << shift; // 2 * digits * 2**-e
    let p = POWERS_OF_TEN_U128[scale];
    let (low, high) = ((2 * m as u128 - 1) * p, (2 * m as u128 + 1) * p);
    (low < twice_scaled && twice_scaled < high).then_some(x)
}

enum Number {
    Int(i64),
    Float(f64),
}

/// Model/version names already interned in this message (by their raw bytes).
#[derive(Default)]
struct NameCache<'a> {
    names: Vec<(&'a [u8], Arc<str>)>,
}

impl<'a> NameCache<'a> {
    #[inline]
    fn get(&self, bytes: &[u8]) -> Option<Arc<str>> {
        self.names.iter().find(|(raw, _)| *raw == bytes).map(|(_, name)| name.clone())
    }

    /// A checked (ASCII) name, interned.
    fn add(&mut self, bytes: &'a [u8]) -> Arc<str> {
        // SAFETY: names are checked ASCII before they get here.
        let name = block::intern(unsafe { std::str::from_utf8_unchecked(bytes) });
        if self.names.len() < NAME_CACHE {
            self.names.push((bytes, name.clone()));
        }
        name
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    /// One event's features while they are parsed (reused: one allocation per message, not per event).
    features: Vec<(&'a [u8], FeatureValue)>,
}

impl<'a> Parser<'a> {
    fn new(b: &'a [u8]) -> Self {
        Parser { b, i: 0, features: Vec::new() }
    }
}

impl<'a> Parser<'a> {
    #[inline]
    fn ws(&mut self) {
        // Compact JSON: the next byte is already significant.
        if self.b.get(self.i).is_some_and(|&c| c > b' ') {
            return;
        }
        while let Some(&c) = self.b.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// The next byte after whitespace, consumed.
    #[inline]
    fn next_byte(&mut self) -> Option<u8> {
        self.ws();
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn eat(&mut self, expected: u8) -> Option<()> {
        (self.next_byte()? == expected).then_some(())
    }

    /// Only whitespace left.
    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.b.len()).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? == word {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// A JSON string (after whitespace), not yet unescaped.
    #[inline]
    fn string(&mut self) -> Option<RawStr<'a>> {
        self.eat(b'"')?;
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let (mut escaped, mut non_ascii) = (false, false);
        loop {
            // Eight bytes at a time to the next special byte (the lowest flagged byte is exact).
            if let Some(chunk) = b.get(i..i + 8) {
                let special = special_bytes(u64::from_le_bytes(chunk.try_into().ok()?));
                if special == 0 {
                    i += 8;
                    continue;
                }
                i += (special.trailing_zeros() / 8) as usize;
            }
            let c = *b.get(i)?;
            match STRING_CLASS[c as usize] {
                PLAIN => i += 1,
                QUOTE => break,
                // The escaped byte is checked by `unescape`; skipping it keeps `\"` inside the string.
                BACKSLASH => {
                    escaped = true;
                    i += 2;
                }
                NON_ASCII => {
                    non_ascii = true;
                    i += 1;
                }
                _ => return None, // a raw control character
            }
        }
        let bytes = b.get(start..i)?;
        self.i = i + 1;
        if non_ascii && std::str::from_utf8(bytes).is_err() {
            return None;
        }
        Some(RawStr { bytes, escaped, non_ascii })
    }

    /// An object key: a string without escapes (an escaped key defers).
    #[inline]
    fn key(&mut self) -> Option<&'a [u8]> {
        let key = self.string()?;
        (!key.escaped).then_some(key.bytes)
    }

    /// A JSON number (after whitespace): `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<Number> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        // The digits (integer and fraction) as one integer while they fit: the fast paths below.
        let mut mantissa = 0u64;
        let mut digits = 0usize;
        match *b.get(i)? {
            b'0' => {
                i += 1;
                digits = 1;
            }
            b'1'..=b'9' => {
                while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
                    mantissa = mantissa.wrapping_mul(10).wrapping_add((c - b'0') as u64);
                    digits += 1;
                    i += 1;
                }
            }
            _ => return None,
        }
        let mut fraction_digits = 0usize;
        let mut float = false;
        if b.get(i) == Some(&b'.') {
            i += 1;
            while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
                mantissa = mantissa.wrapping_mul(10).wrapping_add((c - b'0') as u64);
                fraction_digits += 1;
                i += 1;
            }
            if fraction_digits == 0 {
                return None;
            }
            float = true;
        }
        let mut exponent = false;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exponent_start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            // Huge exponents: parsers differ on whether they are out of range or 0/inf.
            if i == exponent_start || i - exponent_start > 3 {
                return None;
            }
            float = true;
            exponent = true;
        }
        self.i = i;
        // At most 19 digits cannot overflow the u64 (wrapping above only past that).
        let exact = digits + fraction_digits <= 19;
        if !float {
            if !exact {
                return None;
            }
            let value = if negative {
                // -0 is the int 0, as Python reads it (serde_json would make it -0.0).
                0i64.checked_sub_unsigned(mantissa)?
            } else {
                i64::try_from(mantissa).ok()?
            };
            return Some(Number::Int(value));
        }
        if exact && !exponent {
            if let Some(value) = decimal_to_f64(mantissa, fraction_digits) {
                return Some(Number::Float(if negative { -value } else { value }));
            }
        }
        // SAFETY: ASCII digits, sign, '.', 'e'.
        let value: f64 = unsafe { std::str::from_utf8_unchecked(&b[start..i]) }.parse().ok()?;
        value.is_finite().then_some(Number::Float(value))
    }

    /// A float field: an int literal is its exact float (up to 2**53), a float literal its double.
    fn float(&mut self) -> Option<f64> {
        match self.number()? {
            Number::Float(v) => Some(v),
            Number::Int(v) if (-MAX_EXACT..=MAX_EXACT).contains(&v) => Some(v as f64),
            Number::Int(_) => None,
        }
    }

    fn request_id(&mut self) -> Option<Box<str>> {
        Some(self.string()?.text(1, MAX_REQUEST_ID)?.into())
    }

    fn name(&mut self, names: &mut NameCache<'a>) -> Option<Arc<str>> {
        let bytes = self.key()?;
        if let Some(name) = names.get(bytes) {
            return Some(name); // checked when it entered the cache
        }
        is_name(bytes, &NAME_CHARS).then(|| names.add(bytes))
    }

    fn timestamp(&mut self) -> Option<f64> {
        let key = self.key()?;
        parse_timestamp(key)
    }

    /// A score event's key, matched in place (any other key, escaped ones included, defers).
    #[inline]
    fn score_key(&mut self) -> Option<u16> {
        self.eat(b'"')?;
        let rest = &self.b[self.i..];
        // Each name with its closing quote: the key is exactly this name (constant-length compares).
        let (bit, len) = match rest.first()? {
            b'r' if rest.starts_with(b"request_id\"") => (F_REQUEST_ID, 11),
            b'r' if rest.starts_with(b"role\"") => (F_ROLE, 5),
            b'm' if rest.starts_with(b"model\"") => (F_MODEL, 6),
            b'v' if rest.starts_with(b"version\"") => (F_VERSION, 8),
            b's' if rest.starts_with(b"score\"") => (F_SCORE, 6),
            b'l' if rest.starts_with(b"latency_ms\"") => (F_LATENCY, 11),
            b't' if rest.starts_with(b"ts\"") => (F_TS, 3),
            b'e' if rest.starts_with(b"error\"") => (F_ERROR, 6),
            b'f' if rest.starts_with(b"features\"") => (F_FEATURES, 9),
            _ => return None,
        };
        self.i += len;
        Some(bit)
    }

    fn score_event(&mut self, names: &mut NameCache<'a>) -> Option<ScoreRow> {
        let (mut request_id, mut model, mut version) = (None, None, None);
        let (mut role, mut ts, mut score, mut latency_ms) = (0u8, 0f64, 0f64, 0f64);
        let (mut error, mut features) = (false, None);
        let mut seen = 0u16;
        self.eat(b'{')?;
        loop {
            let field = self.score_key()?;
            if seen & field != 0 {
                return None; // a duplicate key
            }
            seen |= field;
            self.eat(b':')?;
            match field {
                F_REQUEST_ID => request_id = Some(self.request_id()?),
                F_MODEL => model = Some(self.name(names)?),
                F_VERSION => version = Some(self.name(names)?),
                F_ROLE => {
                    role = match self.key()? {
                        b"production" => block::PRODUCTION,
                        b"shadow" => block::SHADOW,
                        b"canary" => block::CANARY,
                        _ => return None,
                    };
                }
                F_SCORE => {
                    score = self.float()?;
                    if !(0.0..=1.0).contains(&score) {
                        return None;
                    }
                }
                F_LATENCY => {
                    latency_ms = self.float()?;
                    if latency_ms < 0.0 {
                        return None;
                    }
                }
                F_TS => ts = self.timestamp()?,
                F_ERROR => {
                    self.ws();
                    if self.b.get(self.i) == Some(&b'n') {
                        self.literal(b"null")?;
                        error = false;
                    } else {
                        self.string()?.text(0, MAX_ERROR)?;
                        error = true;
                    }
                }
                F_FEATURES => features = self.features()?,
                _ => unreachable!("score_key returns field bits"),
            }
            match self.next_byte()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        if seen & F_REQUIRED != F_REQUIRED {
            return None;
        }
        Some(ScoreRow {
            request_id: request_id?,
            model: model?,
            version: version?,
            role,
            ts,
            score,
            latency_ms,
            error,
            features,
        })
    }

    /// `null` or an object of at most MAX_FEATURES features with unique names.
    fn features(&mut self) -> Option<Option<Features>> {
        self.ws();
        match *self.b.get(self.i)? {
            b'n' => {
                self.literal(b"null")?;
                return Some(None);
            }
            b'{' => self.i += 1,
            _ => return None,
        }
        let mut items = std::mem::take(&mut self.features);
        items.clear();
        let mut seen_names: Option<HashSet<&'a [u8]>> = None;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Some(Some(Box::new([])));
        }
        loop {
            let name = self.key()?;
            if !is_name(name, &FEATURE_NAME_CHARS) || items.len() == MAX_FEATURES {
                return None;
            }
            if items.len() < LINEAR_DUPLICATE_SCAN {
                if items.iter().any(|(seen, _)| *seen == name) {
                    return None;
                }
            } else {
                let seen_names = seen_names.get_or_insert_with(|| items.iter().map(|(seen, _)| *seen).collect());
                if !seen_names.insert(name) {
                    return None;
                }
            }
            self.eat(b':')?;
            items.push((name, self.feature_value()?));
            match self.next_byte()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        // SAFETY: feature names are checked ASCII.
        let features = items
            .drain(..)
            .map(|(name, value)| (Box::from(unsafe { std::str::from_utf8_unchecked(name) }), value))
            .collect();
        self.features = items;
        Some(Some(features))
    }

    fn feature_value(&mut self) -> Option<FeatureValue> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => Some(FeatureValue::Str(self.string()?.text(0, MAX_FEATURE_STRING)?.into())),
            b'n' => {
                self.literal(b"null")?;
                Some(FeatureValue::Null)
            }
            b'-' | b'0'..=b'9' => Some(match self.number()? {
                Number::Int(v) => FeatureValue::Int(v),
                Number::Float(v) => FeatureValue::Float(v),
            }),
            _ => None, // true/false, arrays, objects
        }
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|z|+HH:MM|-HH:MM)` -> epoch seconds as `datetime.timestamp()` gives
/// them; None for any other form (the contract takes some: `t` or a space for `T`, `,` for `.`,
/// `+HHMM`, more fraction digits) and for instants beyond 2**53 microseconds of the epoch.
pub fn parse_timestamp(s: &[u8]) -> Option<f64> {
    let head: &[u8; 20] = s.get(..20)?.try_into().ok()?;
    let two = |i: usize| -> Option<i64> {
        let (tens, ones) = (head[i].wrapping_sub(b'0'), head[i + 1].wrapping_sub(b'0'));
        (tens < 10 && ones < 10).then_some((tens * 10 + ones) as i64)
    };
    if head[4] != b'-' || head[7] != b'-' || head[10] != b'T' || head[13] != b':' || head[16] != b':' {
        return None;
    }
    let year = two(0)? * 100 + two(2)?;
    let (month, day) = (two(5)?, two(8)?);
    let (hour, minute, second) = (two(11)?, two(14)?, two(17)?);
    if year < 1
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut fraction = 0i64;
    if s[i] == b'.' {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            fraction = fraction * 10 + (s[i] - b'0') as i64;
            i += 1;
            if i - start > 6 {
                return None; // the contract truncates more digits, msgspec rounds: let them decide
            }
        }
        if i == start {
            return None;
        }
        fraction *= 10i64.pow((6 - (i - start)) as u32);
    }
    let offset = match *s.get(i)? {
        b'Z' | b'z' => {
            i += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            if s.len() != i + 6 || s[i + 3] != b':' {
                return None;
            }
            let digit = |k: usize| -> Option<i64> {
                let d = s[k].wrapping_sub(b'0');
                (d < 10).then_some(d as i64)
            };
            let (hours, minutes) = (digit(i + 1)? * 10 + digit(i + 2)?, digit(i + 4)? * 10 + digit(i + 5)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            i += 6;
            let offset = hours * 3600 + minutes * 60;
            if sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    if i != s.len() {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let micros = seconds * 1_000_000 + fraction;
    // Beyond 2**53 the division below would round twice; Python divides the exact integer.
    (-MAX_EXACT..=MAX_EXACT).contains(&micros).then(|| micros as f64 / 1e6)
}

#[cfg(test)]
mod tests;
