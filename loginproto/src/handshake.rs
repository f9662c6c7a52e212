//! The gate handshake MAC, for both suites (skynet spec §5.1–5.2; x25519 in
//! [`crate::modern`]).
//!
//! The payload is `username ":" index ":" b64(mac)` in both suites; only the
//! MAC differs: skynet's `hmac_hash(secret, username ":" index)` (8 bytes)
//! or `HMAC-SHA256(gate_secret, username ":" index)` (32 bytes). The index
//! is covered exactly as sent (`0x10` is signed as `0x10`). An extension
//! field after a third `:` is not covered by the MAC (skynet ignores it),
//! except that a handshake asking for the sealed channel (`seal=1`, x25519
//! suite only) signs `username ":" index ":seal"` instead
//! ([`crate::seal`]), so a relay can neither strip nor add that request.
//!
//! Parsing the payload ([`Handshake::parse`]) and reading the index are the
//! codec's job; the gate checks the username and the index before calling
//! [`verify`], in skynet's order.

use std::fmt;

use codec::message::Handshake;
use subtle::ConstantTimeEq;

use crate::modern::{self, Key32};
use crate::skynet::{self, Key};

/// The secret a session's gate handshakes are signed with, tagged with the
/// suite it came from. `Debug` never prints the key bytes; the bytes are
/// wiped when it drops.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub enum SessionSecret {
    /// skynet suite: the 8-byte DH secret.
    Skynet(Key),
    /// x25519 suite: the 32-byte `gate_secret` of the key schedule.
    X25519(Key32),
}

impl SessionSecret {
    /// The MAC of `text` (`username ":" index`) under this secret.
    fn mac(&self, text: &[u8]) -> MacBytes {
        match self {
            SessionSecret::Skynet(key) => MacBytes::Skynet(skynet::hmac_hash(key, text)),
            SessionSecret::X25519(key) => MacBytes::X25519(modern::gate_mac(key, text)),
        }
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionSecret::Skynet(_) => "SessionSecret::Skynet(..)",
            SessionSecret::X25519(_) => "SessionSecret::X25519(..)",
        })
    }
}

/// A computed MAC, without allocating.
enum MacBytes {
    Skynet(Key),
    X25519(Key32),
}

impl MacBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            MacBytes::Skynet(mac) => mac,
            MacBytes::X25519(mac) => mac,
        }
    }
}

/// Why a handshake MAC was refused.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// The MAC field is not valid (skynet) base64; the gate answers
    /// `400 Bad Request`, as skynet does.
    #[error("handshake MAC is not valid base64")]
    BadMacEncoding,
    /// The MAC does not match; the gate answers `401 Unauthorized`.
    #[error("handshake MAC mismatch")]
    MacMismatch,
}

/// The gate username `b64(uid) "@" b64(server) "#" b64(subid)` (spec §5.1).
pub fn username(uid: &[u8], server: &[u8], subid: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(4 * (uid.len() + server.len() + subid.len()) / 3 + 12);
    skynet::base64_encode_into(uid, &mut name);
    name.push(b'@');
    skynet::base64_encode_into(server, &mut name);
    name.push(b'#');
    skynet::base64_encode_into(subid, &mut name);
    name
}

/// The handshake payload `username ":" index ":" b64(mac)` (no package
/// header).
pub fn sign(secret: &SessionSecret, username: &[u8], index: &[u8]) -> Vec<u8> {
    sign_inner(secret, username, index, None, false)
}

/// Like [`sign`], with `":" ext` appended (not covered by the MAC).
pub fn sign_with_ext(secret: &SessionSecret, username: &[u8], index: &[u8], ext: &[u8]) -> Vec<u8> {
    sign_inner(secret, username, index, Some(ext), false)
}

/// The handshake of a client asking for the sealed channel: `ext` (which
/// must carry `seal=1`) appended, and the MAC over `username ":" index
/// ":seal"`.
pub fn sign_sealed(secret: &SessionSecret, username: &[u8], index: &[u8], ext: &[u8]) -> Vec<u8> {
    sign_inner(secret, username, index, Some(ext), true)
}

fn sign_inner(
    secret: &SessionSecret,
    username: &[u8],
    index: &[u8],
    ext: Option<&[u8]>,
    sealed: bool,
) -> Vec<u8> {
    let mut text = Vec::with_capacity(username.len() + 1 + index.len() + 5);
    text.extend_from_slice(username);
    text.push(b':');
    text.extend_from_slice(index);
    if sealed {
        text.extend_from_slice(crate::seal::SIGNED_SUFFIX);
    }
    let mac = skynet::base64_encode(secret.mac(&text).as_slice());
    Handshake::encode(username, index, mac.as_bytes(), ext)
}

/// Checks a parsed handshake's MAC in constant time; `sealed`: the
/// handshake asks for the sealed channel, so its MAC covers
/// `username ":" index ":seal"`.
///
/// The MAC field is decoded with skynet's lenient base64 (a decode error is
/// [`HandshakeError::BadMacEncoding`]); a decoded MAC of the wrong length
/// for the suite is a mismatch.
pub fn verify(
    secret: &SessionSecret,
    handshake: &Handshake,
    sealed: bool,
) -> Result<(), HandshakeError> {
    let received =
        skynet::base64_decode(&handshake.mac).map_err(|_| HandshakeError::BadMacEncoding)?;
    let mut text = handshake.signed_text();
    if sealed {
        text.extend_from_slice(crate::seal::SIGNED_SUFFIX);
    }
    let expected = secret.mac(&text);
    if bool::from(expected.as_slice().ct_eq(&received)) {
        Ok(())
    } else {
        Err(HandshakeError::MacMismatch)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const SECRET: SessionSecret =
        SessionSecret::Skynet([0x8d, 0xbc, 0x0e, 0xb7, 0x6b, 0x7a, 0x12, 0xf8]);

    fn parse(payload: &[u8]) -> Handshake {
        Handshake::parse(&Bytes::copy_from_slice(payload)).unwrap()
    }

    #[test]
    fn spec_example() {
        // Spec §5.2.
        let name = username(b"hello", b"sample", b"1");
        assert_eq!(name, b"aGVsbG8=@c2FtcGxl#MQ==");
        let payload = sign(&SECRET, &name, b"1");
        assert_eq!(payload, b"aGVsbG8=@c2FtcGxl#MQ==:1:xEa32HAUlak=");
        assert_eq!(verify(&SECRET, &parse(&payload), false), Ok(()));
    }

    #[test]
    fn mismatches_and_bad_encodings() {
        let hs = parse(b"aGVsbG8=@c2FtcGxl#MQ==:2:xEa32HAUlak=");
        assert_eq!(
            verify(&SECRET, &hs, false),
            Err(HandshakeError::MacMismatch)
        );
        let hs = parse(b"aGVsbG8=@c2FtcGxl#MQ==:1:QUJD!");
        assert_eq!(
            verify(&SECRET, &hs, false),
            Err(HandshakeError::BadMacEncoding)
        );
        // Right MAC, truncated: a length mismatch is a mismatch.
        let hs = parse(b"aGVsbG8=@c2FtcGxl#MQ==:1:xEa32HAU");
        assert_eq!(
            verify(&SECRET, &hs, false),
            Err(HandshakeError::MacMismatch)
        );
        // A skynet MAC does not verify under an x25519 secret and back.
        let modern = SessionSecret::X25519([5; 32]);
        let hs = parse(b"aGVsbG8=@c2FtcGxl#MQ==:1:xEa32HAUlak=");
        assert_eq!(
            verify(&modern, &hs, false),
            Err(HandshakeError::MacMismatch)
        );
        let hs = parse(&sign(&modern, b"aGVsbG8=@c2FtcGxl#MQ==", b"1"));
        assert_eq!(verify(&modern, &hs, false), Ok(()));
        assert_eq!(
            verify(&SECRET, &hs, false),
            Err(HandshakeError::MacMismatch)
        );
    }

    #[test]
    fn ext_is_appended_and_not_signed() {
        let payload = sign_with_ext(&SECRET, b"aGVsbG8=@c2FtcGxl#MQ==", b"1", b"v=2:x");
        assert_eq!(payload, b"aGVsbG8=@c2FtcGxl#MQ==:1:xEa32HAUlak=:v=2:x");
        let hs = parse(&payload);
        assert_eq!(hs.ext.as_deref(), Some(&b"v=2:x"[..]));
        assert_eq!(verify(&SECRET, &hs, false), Ok(()));
    }

    #[test]
    fn x25519_mac_is_32_bytes() {
        let payload = sign(&SessionSecret::X25519([1; 32]), b"u", b"7");
        // "u:7:" + 44 base64 characters.
        assert_eq!(payload.len(), 4 + 44);
    }

    #[test]
    fn debug_hides_the_secret() {
        assert_eq!(format!("{SECRET:?}"), "SessionSecret::Skynet(..)");
        assert_eq!(
            format!("{:?}", SessionSecret::X25519([0xab; 32])),
            "SessionSecret::X25519(..)"
        );
    }

    #[test]
    fn secrets_are_wiped() {
        use zeroize::Zeroize;
        let mut secret = SessionSecret::X25519([7; 32]);
        secret.zeroize();
        assert_eq!(secret, SessionSecret::X25519([0; 32]));
        let mut secret = SessionSecret::Skynet([7; 8]);
        secret.zeroize();
        assert_eq!(secret, SessionSecret::Skynet([0; 8]));
    }
}
