//! The handshake index as skynet reads it: a Lua number as `tonumber`
//! parses it (integer or float, decimal or hex, with Lua's exact
//! integer/float comparisons), because the gate must accept and refuse
//! exactly the indexes skynet does (spec §5.2).

use std::cmp::Ordering;

/// A Lua number as produced by `tonumber(string)`: an integer or a float.
///
/// The gate keeps the last accepted handshake index of a user as such a
/// number (it may be a float) and requires the next one to be strictly
/// greater, so the comparisons are Lua's: integers and floats compare by
/// their exact mathematical values (`Int(i64::MAX) < Float(2^63)`,
/// `Int(1) == Float(1.0)`), and NaN is unordered (it cannot come out of
/// [`LuaNumber::parse`], but a `Float(NAN)` built by hand behaves as in Lua).
#[derive(Debug, Clone, Copy)]
pub enum LuaNumber {
    /// A Lua integer (64-bit, wrapping hex literals).
    Int(i64),
    /// A Lua float (IEEE double).
    Float(f64),
}

impl LuaNumber {
    /// Lua 5.4/5.5 `tonumber(text)` for a string argument (spec §5.2 step 3).
    ///
    /// First as an integer: optional surrounding whitespace (space, `\t`,
    /// `\n`, `\v`, `\f`, `\r`), optional sign, then decimal digits (if the
    /// value does not fit an `i64` this attempt fails and the float one
    /// decides) or `0x`/`0X` and hex digits (wrapping modulo 2^64). Then as a
    /// float, the way C `strtod` reads it: decimal with optional fraction and
    /// `e` exponent, or hex with optional fraction and `p` exponent, correctly
    /// rounded, overflow giving ±inf; any text containing `n`/`N` is refused
    /// first, which excludes `inf` and `nan`. Trailing garbage and NUL bytes
    /// are refused; empty or blank text is not a number.
    pub fn parse(text: &[u8]) -> Option<LuaNumber> {
        // tonumber checks that the conversion consumed the whole string; C
        // stops at a NUL, so a string with an embedded NUL is never a number.
        if text.contains(&0) {
            return None;
        }
        if let Some(i) = str_to_int(text) {
            return Some(LuaNumber::Int(i));
        }
        str_to_float(text).map(LuaNumber::Float)
    }

    /// The value as a float (Lua's `int → float` conversion, rounding).
    pub fn as_f64(self) -> f64 {
        match self {
            LuaNumber::Int(i) => i as f64,
            LuaNumber::Float(f) => f,
        }
    }

    /// `true` for [`LuaNumber::Int`].
    pub const fn is_int(self) -> bool {
        matches!(self, LuaNumber::Int(_))
    }
}

impl From<i64> for LuaNumber {
    fn from(i: i64) -> Self {
        LuaNumber::Int(i)
    }
}

impl From<f64> for LuaNumber {
    fn from(f: f64) -> Self {
        LuaNumber::Float(f)
    }
}

impl PartialEq for LuaNumber {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

impl PartialOrd for LuaNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (*self, *other) {
            (LuaNumber::Int(a), LuaNumber::Int(b)) => Some(a.cmp(&b)),
            (LuaNumber::Float(a), LuaNumber::Float(b)) => a.partial_cmp(&b),
            (LuaNumber::Int(a), LuaNumber::Float(b)) => cmp_int_float(a, b),
            (LuaNumber::Float(a), LuaNumber::Int(b)) => cmp_int_float(b, a).map(Ordering::reverse),
        }
    }
}

/// Compares an integer with a float by exact mathematical value, as Lua's
/// mixed comparisons do (no rounding of the integer to a float).
fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    // Now -2^63 <= floor(f) < 2^63, so the cast is exact.
    let floor = f.floor();
    let fi = floor as i64;
    match i.cmp(&fi) {
        // i == floor(f): equal only if f has no fractional part, else f is
        // above i.
        Ordering::Equal if f == floor => Some(Ordering::Equal),
        Ordering::Equal => Some(Ordering::Less),
        // i < floor(f) <= f, or i >= floor(f) + 1 > f.
        other => Some(other),
    }
}

/// Lua's (and C's `isspace` in the C locale) whitespace.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn skip_spaces(text: &[u8], mut at: usize) -> usize {
    while text.get(at).copied().is_some_and(is_space) {
        at += 1;
    }
    at
}

/// Reads an optional sign at `*at`; returns whether it was `-`.
fn read_sign(text: &[u8], at: &mut usize) -> bool {
    match text.get(*at) {
        Some(b'-') => {
            *at += 1;
            true
        }
        Some(b'+') => {
            *at += 1;
            false
        }
        _ => false,
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn digit_value(b: u8) -> Option<u8> {
    b.is_ascii_digit().then(|| b - b'0')
}

fn is_hex_prefix(text: &[u8], at: usize) -> bool {
    text.get(at) == Some(&b'0') && matches!(text.get(at + 1), Some(b'x' | b'X'))
}

/// Lua's `l_str2int`: the integer reading of a numeral, or `None` if the text
/// is not an integer numeral (or a decimal one that does not fit).
fn str_to_int(text: &[u8]) -> Option<i64> {
    const MAX_BY_10: u64 = (i64::MAX / 10) as u64;
    const MAX_LAST_DIGIT: u64 = (i64::MAX % 10) as u64;

    let mut at = skip_spaces(text, 0);
    let negative = read_sign(text, &mut at);
    let mut value: u64 = 0;
    let mut empty = true;
    if is_hex_prefix(text, at) {
        at += 2;
        while let Some(d) = text.get(at).copied().and_then(hex_value) {
            // Hex integers wrap around (Lua reads them modulo 2^64).
            value = value.wrapping_mul(16).wrapping_add(u64::from(d));
            empty = false;
            at += 1;
        }
    } else {
        while let Some(d) = text.get(at).copied().and_then(digit_value) {
            let d = u64::from(d);
            // One more unit is allowed for a negative number (i64::MIN).
            if value >= MAX_BY_10 && (value > MAX_BY_10 || d > MAX_LAST_DIGIT + u64::from(negative))
            {
                return None;
            }
            value = value * 10 + d;
            empty = false;
            at += 1;
        }
    }
    at = skip_spaces(text, at);
    if empty || at != text.len() {
        return None;
    }
    let value = if negative {
        0u64.wrapping_sub(value)
    } else {
        value
    };
    Some(value as i64)
}

/// Lua's `l_str2d`: the float reading of a numeral.
fn str_to_float(text: &[u8]) -> Option<f64> {
    // Lua refuses any text whose first "special" character is n/N, which is
    // how `inf`, `nan` and their spellings never reach strtod.
    let special = text
        .iter()
        .find(|b| matches!(b, b'.' | b'x' | b'X' | b'n' | b'N'));
    if matches!(special, Some(b'n' | b'N')) {
        return None;
    }
    let (value, end) = strtod(text)?;
    (skip_spaces(text, end) == text.len()).then_some(value)
}

/// C `strtod` in the C locale without inf/nan: the value and the index just
/// past the recognised numeral, or `None` if nothing was recognised.
fn strtod(text: &[u8]) -> Option<(f64, usize)> {
    let mut at = skip_spaces(text, 0);
    let negative = read_sign(text, &mut at);
    let sign = |v: f64| if negative { -v } else { v };
    if is_hex_prefix(text, at) {
        return Some(match hex_float(text, at + 2) {
            Some((value, end)) => (sign(value), end),
            // "0x" without hex digits: strtod reads just the "0".
            None => (sign(0.0), at + 1),
        });
    }
    let start = at;
    let int_digits = count_digits(text, at);
    at += int_digits;
    let mut frac_digits = 0;
    if text.get(at) == Some(&b'.') {
        frac_digits = count_digits(text, at + 1);
        if int_digits + frac_digits > 0 {
            at += 1 + frac_digits;
        }
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if matches!(text.get(at), Some(b'e' | b'E')) {
        let mut exp_at = at + 1;
        read_sign(text, &mut exp_at);
        let exp_digits = count_digits(text, exp_at);
        // An exponent without digits is not part of the numeral.
        if exp_digits > 0 {
            at = exp_at + exp_digits;
        }
    }
    // The numeral is ASCII digits, '.', 'e' and signs: the grammar Rust's
    // correctly rounded float parser accepts; it saturates to ±inf / 0 on
    // overflow / underflow like strtod.
    let numeral = std::str::from_utf8(text.get(start..at)?).ok()?;
    let value: f64 = numeral.parse().ok()?;
    Some((sign(value), at))
}

fn count_digits(text: &[u8], at: usize) -> usize {
    text.get(at..).map_or(0, |rest| {
        rest.iter().take_while(|b| b.is_ascii_digit()).count()
    })
}

/// The magnitude of a hex float after `0x` (digits, optional `.`, optional
/// `p` exponent) rounded to nearest, ties to even, like glibc's strtod. `None`
/// when there is no hex digit at all.
fn hex_float(text: &[u8], mut at: usize) -> Option<(f64, usize)> {
    // Up to 15 significant hex digits (60 bits) are kept exactly; later
    // digits only matter as a "sticky" non-zero marker for rounding.
    const MAX_SIG_DIGITS: u32 = 15;
    let mut mantissa: u64 = 0;
    let mut sig_digits = 0u32;
    let mut sticky = false;
    let mut any_digit = false;
    let mut seen_dot = false;
    // Binary exponent: value = mantissa * 2^exp (ignoring sticky bits).
    let mut exp: i64 = 0;
    loop {
        match text.get(at).copied() {
            Some(b'.') if !seen_dot => seen_dot = true,
            Some(b) => {
                let Some(d) = hex_value(b) else { break };
                any_digit = true;
                if mantissa == 0 && d == 0 {
                    // Leading zero: only shifts the point.
                    if seen_dot {
                        exp -= 4;
                    }
                } else if sig_digits < MAX_SIG_DIGITS {
                    mantissa = mantissa * 16 + u64::from(d);
                    sig_digits += 1;
                    if seen_dot {
                        exp -= 4;
                    }
                } else {
                    sticky |= d != 0;
                    if !seen_dot {
                        exp += 4;
                    }
                }
            }
            None => break,
        }
        at += 1;
    }
    if !any_digit {
        return None;
    }
    if matches!(text.get(at), Some(b'p' | b'P')) {
        let mut exp_at = at + 1;
        let negative = read_sign(text, &mut exp_at);
        let digits = count_digits(text, exp_at);
        if digits > 0 {
            // Saturate: anything beyond ±2^40 is already inf or zero.
            const CAP: i64 = 1 << 40;
            let mut p: i64 = 0;
            for &b in &text[exp_at..exp_at + digits] {
                p = (p * 10 + i64::from(b - b'0')).min(CAP);
            }
            exp += if negative { -p } else { p };
            at = exp_at + digits;
        }
    }
    Some((round_to_f64(mantissa, exp, sticky), at))
}

/// `mantissa * 2^exp` (plus a non-zero fraction below the mantissa's last
/// bit when `sticky`) rounded to the nearest double, ties to even, with
/// gradual underflow and overflow to infinity.
fn round_to_f64(mantissa: u64, exp: i64, sticky: bool) -> f64 {
    const MANT_BITS: i64 = 52;
    const MIN_LSB: i64 = -1074; // weight of the smallest subnormal
    const MAX_TOP: i64 = 1023; // weight of the top bit of the largest normal

    if mantissa == 0 {
        return 0.0;
    }
    let bits = i64::from(64 - mantissa.leading_zeros());
    let top = bits - 1 + exp;
    if top > MAX_TOP {
        return f64::INFINITY;
    }
    // Weight of the last bit the result can keep.
    let mut lsb = (top - MANT_BITS).max(MIN_LSB);
    let shift = lsb - exp;
    let mut q = if shift <= 0 {
        // Exact: the top bit lands at most at bit 52. (Sticky digits only
        // exist with 57+ mantissa bits, which always means shift > 0.)
        mantissa << (-shift)
    } else if shift >= 64 {
        // Below half of the last kept bit (mantissa < 2^60 <= 2^(shift-1)).
        0
    } else {
        let q = mantissa >> shift;
        let rem = mantissa & ((1u64 << shift) - 1);
        let half = 1u64 << (shift - 1);
        let round_up = rem > half || (rem == half && (sticky || q & 1 == 1));
        q + u64::from(round_up)
    };
    if q == 1 << (MANT_BITS + 1) {
        // Rounding carried into a new bit.
        q >>= 1;
        lsb += 1;
    }
    if q >= 1 << MANT_BITS {
        let biased = lsb + MANT_BITS + 1023;
        if biased >= 2047 {
            return f64::INFINITY;
        }
        f64::from_bits(((biased as u64) << MANT_BITS) | (q & ((1 << MANT_BITS) - 1)))
    } else {
        // Subnormal (lsb == MIN_LSB): the bits are the mantissa itself.
        f64::from_bits(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Option<LuaNumber> {
        LuaNumber::parse(text.as_bytes())
    }

    fn assert_int(text: &str, v: i64) {
        match num(text) {
            Some(LuaNumber::Int(i)) => assert_eq!(i, v, "{text:?}"),
            other => panic!("{text:?} gave {other:?}, want Int({v})"),
        }
    }

    fn assert_float(text: &str, v: f64) {
        match num(text) {
            Some(LuaNumber::Float(f)) => {
                assert_eq!(f.to_bits(), v.to_bits(), "{text:?}: {f:e} vs {v:e}")
            }
            other => panic!("{text:?} gave {other:?}, want Float({v})"),
        }
    }

    #[test]
    fn lua_integers() {
        assert_int("1", 1);
        assert_int(" 2 ", 2);
        assert_int("\t\n\x0b\x0c\r3\r\n", 3);
        assert_int("0x10", 16);
        assert_int("0X1f", 31);
        assert_int("-3", -3);
        assert_int("+4", 4);
        assert_int("-0x10", -16);
        assert_int("007", 7);
        assert_int("9223372036854775807", i64::MAX);
        assert_int("-9223372036854775808", i64::MIN);
        assert_int("0xffffffffffffffff", -1);
        assert_int("0xffffffffffffffffff", -1);
        assert_int("0x10000000000000000", 0);
        assert_int("0x8000000000000000", i64::MIN);
        assert_int("-0", 0);
        assert_int("0x1e3", 0x1e3);
    }

    #[test]
    fn lua_floats() {
        assert_float("1e2", 100.0);
        assert_float("0x1p4", 16.0);
        assert_float("1.5", 1.5);
        assert_float(" -1.5e-1 ", -0.15);
        assert_float("1.", 1.0);
        assert_float(".5", 0.5);
        assert_float("1.e5", 1e5);
        assert_float("9223372036854775808", 9_223_372_036_854_775_808.0);
        assert_float("-9223372036854775809", -9_223_372_036_854_775_808.0);
        assert_float("1e999", f64::INFINITY);
        assert_float("-1e999", f64::NEG_INFINITY);
        assert_float("1e-999", 0.0);
        assert_float("-0.0", -0.0);
        assert_float("0x.8", 0.5);
        assert_float("0x1.", 1.0);
        assert_float("0xA.8p1", 21.0);
        assert_float("0x1P-1", 0.5);
        assert_float("0x1p+1", 2.0);
        assert_float("0x1p-1074", 5e-324);
        assert_float("0x1p-1075", 0.0);
        assert_float("0x1.8p-1075", 5e-324);
        assert_float("0x1p1023", 2f64.powi(1023));
        assert_float("0x1p1024", f64::INFINITY);
        assert_float("0x1fffffffffffffp971", f64::MAX);
        assert_float("0x1fffffffffffff8p967", f64::INFINITY);
        assert_float("0x1p99999999999999999999999", f64::INFINITY);
        assert_float("0x1p-99999999999999999999999", 0.0);
        assert_float("0x0p99999999999999999999999", 0.0);
        // Ties to even on the 54th bit, and the sticky bit beyond 15 digits.
        assert_float("0x20000000000001p0", 9_007_199_254_740_992.0);
        assert_float("0x20000000000003p0", 9_007_199_254_740_996.0);
        assert_float("0x200000000000010000000001p-40", 9_007_199_254_740_994.0);
        assert_float("0x20000000000001.00000000001p0", 9_007_199_254_740_994.0);
    }

    #[test]
    fn lua_not_numbers() {
        for text in [
            "", " ", "abc", "1x", "inf", "nan", "-inf", "INF", "NaN", "infinity", "0x", "0x.",
            "0x.p1", "0xg", "1e", "1e+", "0x1p", "0x1p+", ".", "-", "+", "- 1", "+-1", "--1",
            "1 2", "1.5.5", "0x1.8.1", "1e5e5", "1_000", "١", "0x1n", "1.5n", "\u{a0}1",
        ] {
            assert_eq!(num(text), None, "{text:?}");
        }
        assert_eq!(LuaNumber::parse(b"1\0"), None);
        assert_eq!(LuaNumber::parse(b"\x001"), None);
        assert_eq!(LuaNumber::parse(b"1\xff"), None);
    }

    #[test]
    fn lua_mixed_comparisons_are_exact() {
        use LuaNumber::{Float, Int};
        let two63 = 9_223_372_036_854_775_808.0;
        assert!(Int(i64::MAX) < Float(two63));
        assert!(Float(two63) > Int(i64::MAX));
        assert_ne!(Int(i64::MAX), Float(two63));
        assert_eq!(Int(i64::MIN), Float(-two63));
        assert!(Int(i64::MIN) > Float(-two63 * 2.0));
        assert_eq!(Int(1), Float(1.0));
        assert_eq!(Float(-0.0), Int(0));
        assert!(Int(1) < Float(1.5));
        assert!(Int(2) > Float(1.5));
        assert!(Int(-2) < Float(-1.5));
        assert!(Int(-1) > Float(-1.5));
        // 2^53 + 1 does not round-trip through f64; Lua still orders it.
        assert!(Int((1 << 53) + 1) > Float(9_007_199_254_740_992.0));
        assert!(Float(f64::INFINITY) > Int(i64::MAX));
        assert!(Float(f64::NEG_INFINITY) < Int(i64::MIN));
        let nan = Float(f64::NAN);
        assert_eq!(nan.partial_cmp(&Int(0)), None);
        assert_eq!(Int(0).partial_cmp(&nan), None);
        assert_ne!(nan, nan);
        assert!(Int(3) <= Int(3) && Float(0.5) < Float(1.0));
        assert_eq!(LuaNumber::from(3), Float(3.0));
        assert!(LuaNumber::from(3).is_int() && !LuaNumber::from(3.0).is_int());
        assert_eq!(Int(3).as_f64(), 3.0);
    }
}
