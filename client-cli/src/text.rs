//! Text helpers shared by the subcommands: how payloads, durations and
//! statuses are shown to a person, and how they are typed in.
//!
//! One place decides the display format, so the shell, the script runner and
//! the reports print the same thing for the same bytes.

use std::fmt::Write as _;
use std::time::Duration;

use codec::{GateStatus, LoginStatus};

/// Longest payload prefix printed before the rest is summarised.
const SHOW_MAX: usize = 96;

/// A payload for people: a quoted, escaped string when it is text, else
/// `hex:…`; long payloads are cut with the total length noted.
pub fn payload(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(SHOW_MAX)];
    let mut out = match std::str::from_utf8(shown) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')) =>
        {
            quote(text)
        }
        // A multi-byte character cut at SHOW_MAX still counts as text.
        Err(e) if e.error_len().is_none() && bytes.len() > SHOW_MAX => {
            quote(std::str::from_utf8(&shown[..e.valid_up_to()]).unwrap_or_default())
        }
        _ => format!("hex:{}", hex(shown)),
    };
    if bytes.len() > SHOW_MAX {
        let _ = write!(out, "… ({} bytes)", bytes.len());
    }
    out
}

/// `"text"` with `\n`, `\t`, `\r`, `\\` and `\"` escaped.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Lowercase hex without separators.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses hex digits (either case); spaces, `_` and `:` between byte pairs
/// are ignored so `de ad be ef` and `de:ad:be:ef` work too.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'_' | b':'))
        .collect();
    if digits.len() % 2 != 0 {
        return Err(format!("hex text {text:?} has an odd number of digits"));
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            let hi = hex_digit(pair[0]);
            let lo = hex_digit(pair[1]);
            match (hi, lo) {
                (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
                _ => Err(format!("{text:?} is not hex")),
            }
        })
        .collect()
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Undoes the escapes of a quoted string (`\n \r \t \0 \\ \" \xHH`); the
/// quotes themselves are already stripped.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('"') => out.push(b'"'),
            Some('x') => {
                let hi = chars.next().and_then(|c| c.to_digit(16));
                let lo = chars.next().and_then(|c| c.to_digit(16));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(u8::try_from(hi << 4 | lo).unwrap_or(0)),
                    _ => return Err("\\x needs two hex digits".to_owned()),
                }
            }
            Some(other) => return Err(format!("unknown escape \\{other}")),
            None => return Err("a trailing \\ escapes nothing".to_owned()),
        }
    }
    Ok(out)
}

/// Parses `250ms`, `1.5s`, `2m` or a bare number of seconds (`3`, `0.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 250ms, 1.5s, 2m or 3)"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("{text:?} is not a valid duration"))
}

/// A duration for people: `850µs`, `12.3ms`, `4.20s`.
pub fn duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0}µs")
    } else if micros < 1e6 {
        format!("{:.1}ms", micros / 1e3)
    } else {
        format!("{:.2}s", micros / 1e6)
    }
}

/// What a login status means for the user who got it.
pub fn login_status_meaning(status: LoginStatus) -> &'static str {
    match status.code() {
        200 => "logged in",
        401 => {
            "the login server rejected the key exchange, the proof, the token or the credentials"
        }
        403 => "credentials accepted, but the gate refused the login (unknown server name?)",
        406 => "another login of the same user is in progress",
        429 => {
            "throttled: too many refused passwords for this user name or from this address, or too many logins of this user; the password was not checked, wait a minute and retry"
        }
        503 => {
            "the login server cannot place this login now (overloaded, the gate draining, or a cluster's session directory unreachable or being restored); retry in a few seconds"
        }
        _ => "unknown status",
    }
}

/// What a handshake status means for the user who got it.
pub fn gate_status_meaning(status: GateStatus) -> &'static str {
    match status.code() {
        200 => "connected",
        400 => "the index or the MAC field could not be parsed",
        401 => "the MAC did not verify (wrong secret)",
        403 => "the index is not greater than the last one the gate accepted",
        404 => "no such user on this gate (wrong subid or server, or logged out)",
        426 => "the gate serves sealed connections only (an x25519 login, without --no-seal)",
        _ => "unknown status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_show_as_text_or_hex() {
        assert_eq!(payload(b"echo"), "\"echo\"");
        assert_eq!(payload(b"a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(payload(b"\x00\x01\xff"), "hex:0001ff");
        assert_eq!(payload(b""), "\"\"");
        let long = vec![b'x'; 200];
        assert!(payload(&long).ends_with("… (200 bytes)"));
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(parse_hex("DEad be:ef").unwrap(), [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(hex(&[0xde, 0xad]), "dead");
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(parse_hex("").unwrap(), b"");
    }

    #[test]
    fn unescape_handles_escapes() {
        assert_eq!(unescape(r#"a\n\t\"\\\x41\0"#).unwrap(), b"a\n\t\"\\A\0");
        assert!(unescape(r"\q").is_err());
        assert!(unescape(r"\x4").is_err());
        assert!(unescape("\\").is_err());
        assert_eq!(unescape("héllo").unwrap(), "héllo".as_bytes());
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(duration(Duration::from_micros(850)), "850µs");
        assert_eq!(duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(duration(Duration::from_millis(4200)), "4.20s");
    }
}
