//! The handshake extension field: how a client opts in to the gate's
//! extensions (server push with replay, kick reasons, heartbeat).
//!
//! skynet ignores anything after a third `:` of the handshake
//! (spec §5.2 step 1), so a client appends `":" ext` there; a skynet gate
//! still accepts it, and a plain client that sends no ext is served exactly
//! as skynet would. The field is **not** covered by the handshake MAC (but
//! for `seal=1`, which changes the signed text, see below): it only
//! chooses what the client is sent, never who it is.
//!
//! # Grammar (ASCII, no spaces)
//!
//! ```text
//! ext   = item *( "," item )
//! item  = key "=" value
//! key   = 1*( %x61-7A / DIGIT / "_" / "-" )        ; a-z 0-9 _ -
//! value = *( %x21-2B / %x2D-7E )                   ; visible ASCII but ","
//! ```
//!
//! Known keys, each at most once:
//!
//! * `v` (required): the extension version the client speaks, a decimal
//!   integer ≥ 1 that fits 32 bits. This crate defines version 1
//!   ([`Ext::VERSION`]); a gate serves a higher `v` as the highest version
//!   it knows, so a newer client works with an older gate.
//! * `push`: the sequence number of the last push the client has seen in
//!   this session (decimal, 32 bits; `0`, or the key left out, means none).
//! * `seal`: `1` asks for the sealed channel (x25519 sessions only; every
//!   package after the handshake is sealed, `loginproto::seal`); `0`, or
//!   the key left out, does not. Unlike the rest of the field it **is**
//!   covered by the MAC: a handshake with `seal=1` signs
//!   `username ":" index ":seal"`.
//!
//! Unknown keys are ignored, so later versions can add keys without
//! breaking older gates. An empty ext (`…:mac:`) is the same as none.
//! Anything else — an empty item, a missing `=`, a bad character, no `v`,
//! `v=0`, a `v` or `push` that is not a 32-bit decimal, a `seal` that is
//! not `0` or `1`, a known key twice —
//! is malformed ([`ExtError`]); the gate answers `400 Bad Request`.
//!
//! Example: `aGVsbG8=@c2FtcGxl#MQ==:2:<mac>:v=1,push=17`.
//!
//! # The gate's answer: [`Welcome`]
//!
//! A gate that accepts the opt-in sends, right after `200 OK`, one package
//! with flag [`ResponseFlag::WELCOME`](crate::ResponseFlag::WELCOME) whose
//! content uses the same grammar: `v=<version it serves>,idle=<ms>` (its
//! idle timeout for this connection, 0 = none; clients ignore unknown
//! keys). A client learns from it that the gate speaks the extensions (a
//! skynet gate ignores the field and never sends it) and how often to send
//! heartbeats.

use std::fmt::Write as _;

/// A parsed extension field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ext {
    /// The extension version the client speaks (≥ 1).
    pub version: u32,
    /// The last push sequence number the client saw (0 = none).
    pub last_push: u32,
    /// The client asks for the sealed channel (`seal=1`).
    pub seal: bool,
}

/// Why an extension field is malformed (the gate answers `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExtError {
    /// Not `key=value` items separated by `,` with the allowed characters.
    #[error("extension field is not key=value items")]
    Syntax,
    /// No `v` key.
    #[error("extension field has no version (v=)")]
    MissingVersion,
    /// `v` is not a decimal integer in 1..=4294967295.
    #[error("extension version is not an integer >= 1")]
    BadVersion,
    /// `push` is not a decimal integer in 0..=4294967295.
    #[error("push sequence is not a 32-bit integer")]
    BadPush,
    /// `seal` is not `0` or `1`.
    #[error("seal is not 0 or 1")]
    BadSeal,
    /// A known key appears twice.
    #[error("extension key repeated")]
    Repeated,
}

impl Ext {
    /// The extension version this crate defines.
    pub const VERSION: u32 = 1;

    /// Version [`Ext::VERSION`], having seen pushes up to `last_push`.
    pub const fn new(last_push: u32) -> Ext {
        Ext {
            version: Ext::VERSION,
            last_push,
            seal: false,
        }
    }

    /// The same, asking for the sealed channel (or not).
    pub const fn sealed(self, seal: bool) -> Ext {
        Ext { seal, ..self }
    }

    /// Parses the bytes after the handshake's third `:`. `Ok(None)` for
    /// an empty field (a plain handshake).
    pub fn parse(text: &[u8]) -> Result<Option<Ext>, ExtError> {
        if text.is_empty() {
            return Ok(None);
        }
        let (version, push) = version_and(text, b"push", ExtError::BadPush)?;
        let version = version.ok_or(ExtError::MissingVersion)?;
        let mut seal = None;
        for item in items(text) {
            let (key, value) = item?;
            if key == b"seal" {
                let asked = match value {
                    b"0" => false,
                    b"1" => true,
                    _ => return Err(ExtError::BadSeal),
                };
                if seal.replace(asked).is_some() {
                    return Err(ExtError::Repeated);
                }
            }
        }
        Ok(Some(Ext {
            version,
            last_push: push.unwrap_or(0),
            seal: seal.unwrap_or(false),
        }))
    }

    /// The field's text, `v=<version>,push=<last_push>` and `,seal=1` when
    /// asked (without the `:`).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(28);
        let _ = write!(text, "v={},push={}", self.version, self.last_push);
        if self.seal {
            text.push_str(",seal=1");
        }
        text
    }
}

/// What the gate answers an accepted opt-in with (the content of its
/// [`ResponseFlag::WELCOME`](crate::ResponseFlag::WELCOME) package).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Welcome {
    /// The extension version the gate serves this connection.
    pub version: u32,
    /// The gate's idle timeout for this connection in ms; 0 = none.
    pub idle_ms: u32,
}

impl Welcome {
    /// Parses the content (same grammar as [`Ext`]; `v` required, `idle`
    /// optional, unknown keys ignored).
    pub fn parse(text: &[u8]) -> Result<Welcome, ExtError> {
        let (version, idle) = version_and(text, b"idle", ExtError::Syntax)?;
        Ok(Welcome {
            version: version.ok_or(ExtError::MissingVersion)?,
            idle_ms: idle.unwrap_or(0),
        })
    }

    /// The content, `v=<version>,idle=<ms>`.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(24);
        let _ = write!(text, "v={},idle={}", self.version, self.idle_ms);
        text
    }
}

/// The `key=value` items of a non-empty field, checked against the grammar.
fn items(text: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), ExtError>> {
    text.split(|&b| b == b',').map(|item| {
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or(ExtError::Syntax)?;
        let (key, value) = (&item[..eq], &item[eq + 1..]);
        if key.is_empty() || !key.iter().all(|&b| is_key_byte(b)) {
            return Err(ExtError::Syntax);
        }
        if !value.iter().all(|&b| is_value_byte(b)) {
            return Err(ExtError::Syntax);
        }
        Ok((key, value))
    })
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
}

fn is_value_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b','
}

/// `1*DIGIT` as a `u32` (leading zeros allowed), `None` otherwise.
fn decimal_u32(text: &[u8]) -> Option<u32> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u32, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

/// Reads the two keys both the extension field and the welcome carry: the
/// required-once `v` (decimal, at least 1) and one optional-once decimal
/// `other` key (`bad` when its value is not a u32). Unknown keys are
/// ignored.
fn version_and(
    text: &[u8],
    other: &[u8],
    bad: ExtError,
) -> Result<(Option<u32>, Option<u32>), ExtError> {
    let mut version = None;
    let mut second = None;
    for item in items(text) {
        let (key, value) = item?;
        if key == b"v" {
            let v = decimal_u32(value)
                .filter(|&v| v >= 1)
                .ok_or(ExtError::BadVersion)?;
            if version.replace(v).is_some() {
                return Err(ExtError::Repeated);
            }
        } else if key == other {
            let n = decimal_u32(value).ok_or(bad)?;
            if second.replace(n).is_some() {
                return Err(ExtError::Repeated);
            }
        }
    }
    Ok((version, second))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Option<Ext> {
        Ext::parse(text.as_bytes()).unwrap()
    }

    fn err(text: &str) -> ExtError {
        Ext::parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn valid_fields() {
        assert_eq!(ok(""), None);
        assert_eq!(ok("v=1"), Some(Ext::new(0)));
        assert_eq!(ok("v=1,push=17"), Some(Ext::new(17)));
        assert_eq!(ok("push=17,v=1"), Some(Ext::new(17)));
        assert_eq!(
            ok("v=4294967295,push=4294967295"),
            Some(Ext {
                version: u32::MAX,
                last_push: u32::MAX,
                seal: false,
            })
        );
        assert_eq!(ok("v=007,push=0"), Some(Ext::new(0).with_version(7)));
        assert_eq!(ok("v=1,seal=1"), Some(Ext::new(0).sealed(true)));
        assert_eq!(ok("seal=0,push=3,v=1"), Some(Ext::new(3)));
        assert_eq!(Ext::new(4).sealed(true).encode(), "v=1,push=4,seal=1");
        assert_eq!(ok("v=1,push=4,seal=1"), Some(Ext::new(4).sealed(true)));
        // Unknown keys are ignored, repeated or not, with any visible value
        // (':' included: the field is everything after the third ':').
        assert_eq!(
            ok("v=2,zip=on,zip=off,x-y_1=a:b=c,empty="),
            Some(Ext::new(0).with_version(2))
        );
    }

    #[test]
    fn malformed_fields() {
        assert_eq!(err(","), ExtError::Syntax);
        assert_eq!(err("v=1,"), ExtError::Syntax);
        assert_eq!(err(",v=1"), ExtError::Syntax);
        assert_eq!(err("v=1,,push=2"), ExtError::Syntax);
        assert_eq!(err("v"), ExtError::Syntax);
        assert_eq!(err("=1"), ExtError::Syntax);
        assert_eq!(err("V=1"), ExtError::Syntax);
        assert_eq!(err("v=1,x=a b"), ExtError::Syntax);
        assert_eq!(err("v=1,x=\u{e9}"), ExtError::Syntax);
        assert_eq!(err("v=1,x=\t"), ExtError::Syntax);
        assert_eq!(err("push=3"), ExtError::MissingVersion);
        assert_eq!(err("x=1"), ExtError::MissingVersion);
        assert_eq!(err("v=0"), ExtError::BadVersion);
        assert_eq!(err("v="), ExtError::BadVersion);
        assert_eq!(err("v=+1"), ExtError::BadVersion);
        assert_eq!(err("v=1.0"), ExtError::BadVersion);
        assert_eq!(err("v=4294967296"), ExtError::BadVersion);
        assert_eq!(err("v=1,push=-1"), ExtError::BadPush);
        assert_eq!(err("v=1,push="), ExtError::BadPush);
        assert_eq!(err("v=1,push=4294967296"), ExtError::BadPush);
        assert_eq!(err("v=1,push=0x10"), ExtError::BadPush);
        assert_eq!(err("v=1,v=1"), ExtError::Repeated);
        assert_eq!(err("v=1,push=1,push=1"), ExtError::Repeated);
        assert_eq!(err("v=1,seal=2"), ExtError::BadSeal);
        assert_eq!(err("v=1,seal="), ExtError::BadSeal);
        assert_eq!(err("v=1,seal=yes"), ExtError::BadSeal);
        assert_eq!(err("v=1,seal=1,seal=1"), ExtError::Repeated);
    }

    #[test]
    fn welcome_round_trips_and_ignores_unknown_keys() {
        let w = Welcome {
            version: 1,
            idle_ms: 60_000,
        };
        assert_eq!(w.encode(), "v=1,idle=60000");
        assert_eq!(Welcome::parse(w.encode().as_bytes()), Ok(w));
        assert_eq!(
            Welcome::parse(b"v=2,later=x"),
            Ok(Welcome {
                version: 2,
                idle_ms: 0
            })
        );
        assert_eq!(Welcome::parse(b""), Err(ExtError::Syntax));
        assert_eq!(Welcome::parse(b"idle=5"), Err(ExtError::MissingVersion));
        assert_eq!(Welcome::parse(b"v=1,idle=x"), Err(ExtError::Syntax));
    }

    #[test]
    fn encode_round_trips() {
        for ext in [Ext::new(0), Ext::new(17), Ext::new(u32::MAX)] {
            let text = ext.encode();
            assert_eq!(Ext::parse(text.as_bytes()), Ok(Some(ext)));
        }
        assert_eq!(Ext::new(5).encode(), "v=1,push=5");
    }

    impl Ext {
        fn with_version(mut self, version: u32) -> Ext {
            self.version = version;
            self
        }
    }
}
