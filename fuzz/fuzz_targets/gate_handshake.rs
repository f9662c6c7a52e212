//! Gate handshake parsing and MAC verification with both kinds of secret.
//! The first byte picks the secret (skynet 8 bytes or x25519 32 bytes, its
//! value from the next bytes); the rest is the handshake payload. Nothing
//! panics; re-signing the parsed username and index with the same secret
//! gives a payload that parses back to them and verifies, and does not
//! verify under the other kind of secret.
#![no_main]

use bytes::Bytes;
use codec::Handshake;
use libfuzzer_sys::fuzz_target;
use loginproto::handshake::{self, HandshakeError, SessionSecret};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let seed = rest.first().copied().unwrap_or(0);
    let skynet = SessionSecret::Skynet([seed; 8]);
    let modern = SessionSecret::X25519([seed; 32]);
    let (secret, other) = if control & 1 == 0 {
        (&skynet, &modern)
    } else {
        (&modern, &skynet)
    };
    let payload = Bytes::copy_from_slice(rest);
    let Some(hs) = Handshake::parse(&payload) else {
        return;
    };
    let _ = handshake::verify(secret, &hs, false);
    let _ = handshake::verify(secret, &hs, true);

    let signed = if control & 2 == 0 {
        handshake::sign(secret, &hs.username, &hs.index)
    } else {
        handshake::sign_with_ext(
            secret,
            &hs.username,
            &hs.index,
            hs.ext.as_deref().unwrap_or(b"x"),
        )
    };
    let again = Handshake::parse(&Bytes::from(signed)).expect("a signed handshake parses");
    assert_eq!(again.username, hs.username);
    assert_eq!(again.index, hs.index);
    assert_eq!(handshake::verify(secret, &again, false), Ok(()));
    assert_eq!(
        handshake::verify(other, &again, false),
        Err(HandshakeError::MacMismatch)
    );
    // Signed for the sealed channel, it verifies only as such.
    let sealed = handshake::sign_sealed(secret, &hs.username, &hs.index, b"v=1,seal=1");
    let sealed = Handshake::parse(&Bytes::from(sealed)).expect("a signed handshake parses");
    assert_eq!(handshake::verify(secret, &sealed, true), Ok(()));
    assert_eq!(
        handshake::verify(secret, &sealed, false),
        Err(HandshakeError::MacMismatch)
    );
});
