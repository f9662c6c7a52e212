//! The x25519 login suite: X25519 key agreement, HKDF-SHA256 key schedule
//! bound to the transcript, an HMAC-SHA256 client proof and the token sealed
//! with ChaCha20-Poly1305.
//!
//! It runs on the same port and the same LF line framing as skynet's login
//! dialogue; the client picks the suite with the length of its key line, so
//! one server serves both. This module holds the primitives; the state
//! machines are in [`crate::login`] and the gate handshake MAC in
//! [`crate::handshake`].
//!
//! # Wire protocol (x25519 suite)
//!
//! Every line ends in a single LF (0x0A) and nothing else (no CR). `b64` is
//! standard base64 (RFC 4648 alphabet, `=` padding, no line breaks). All
//! lengths below are of the raw bytes before base64.
//!
//! | # | dir | line | notes |
//! |---|-----|------|-------|
//! | 1 | S→C | `b64(challenge)` | 8 random bytes. Sent on accept, before the server knows the suite (identical to skynet's first line). |
//! | 2 | C→S | `b64(client_pub)` | the client's ephemeral X25519 public key, **32 bytes**. A decoded length of 8 selects the skynet suite instead; any other length, or undecodable base64, gets `401 Unauthorized`. A server that has the skynet suite switched off answers an 8-byte key with `401 Unauthorized`. |
//! | 3 | S→C | `b64(server_pub)` | the server's fresh ephemeral X25519 public key, 32 bytes. |
//! | 4 | C→S | `b64(proof)` | `proof = HMAC-SHA256(proof_key, th)`, 32 bytes. A wrong proof gets `401 Unauthorized` at once; line 5 is not read. |
//! | 5 | C→S | `b64(sealed_token)` | `ChaCha20-Poly1305(key = token_key, nonce = 12 zero bytes, aad = th, plaintext = token)`, ciphertext ‖ 16-byte tag. Authentication failure gets `401 Unauthorized`. |
//! | 6 | S→C | status line | exactly as skynet: `200 b64(subid)`, `401 Unauthorized`, `403 Forbidden` or `406 Not Acceptable`. |
//!
//! Both sides compute, after line 3:
//!
//! ```text
//! shared      = X25519(own_private, peer_public)        (RFC 7748; all-zero result → 401)
//! th          = SHA-256("gatelogin x25519 v1" ‖ challenge ‖ client_pub ‖ server_pub)
//! prk         = HKDF-SHA256-Extract(salt = th, ikm = shared)          (RFC 5869)
//! proof_key   = HKDF-SHA256-Expand(prk, "client proof", 32)
//! token_key   = HKDF-SHA256-Expand(prk, "token key",    32)
//! gate_secret = HKDF-SHA256-Expand(prk, "gate secret",  32)
//! ```
//!
//! The label is the 19 ASCII bytes `gatelogin x25519 v1` with no terminator;
//! the `info` strings are ASCII without terminator. If the peer's public key
//! is a low-order point the shared secret is all zero: the server has already
//! sent line 3 by then and answers `401 Unauthorized` instead of reading line
//! 4; a client must abort.
//!
//! The token is the same text as in the skynet suite:
//! `b64(user) "@" b64(server) ":" b64(password)`.
//!
//! A zero nonce is safe because every `token_key` encrypts exactly one
//! message: both public keys are fresh per login, so the key is too.
//!
//! Every intermediate value of one complete login (keys, `th`, `prk`, the
//! three derived keys, each line's exact bytes, a gate handshake), computed
//! independently with pyca/cryptography, is in
//! `testdata/vectors/x25519_login.json` (generator:
//! `testdata/gen/x25519_login.py`).
//!
//! # Gate handshake (x25519 session)
//!
//! The first package on a gate connection has the same layout as skynet's,
//! `username ":" index ":" b64(mac)`, but for a session that logged in with
//! this suite the MAC is `HMAC-SHA256(gate_secret, username ":" index)`
//! (32 bytes, 44 base64 characters) instead of skynet's 8-byte
//! `hmac_hash(secret, username ":" index)`. `index` is the decimal text
//! exactly as sent.
//!
//! # What this buys over the skynet suite
//!
//! 128-bit security key agreement instead of 64-bit DH; a proof and a token
//! bound to the whole transcript (a tampered line 1–3 makes both fail); an
//! authenticated token instead of DES-ECB; a 256-bit gate MAC instead of a
//! 64-bit one. Like skynet's, the exchange is unauthenticated: it stops
//! passive eavesdroppers, not an active man in the middle; run it inside TLS
//! or pin a server key if that matters.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit as _};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};

/// Length of an X25519 public or private key, and of every derived key.
pub const KEY_LEN: usize = 32;

/// Length of the client proof and of a gate MAC (HMAC-SHA256 output).
pub const MAC_LEN: usize = 32;

/// Length of the Poly1305 tag appended to the sealed token.
pub const TAG_LEN: usize = 16;

/// Domain-separation label hashed first into the transcript hash.
pub const TRANSCRIPT_LABEL: &[u8] = b"gatelogin x25519 v1";

/// Label of the transcript hash of a pinned login (the server proves a
/// long-term key the client pinned).
pub const PINNED_TRANSCRIPT_LABEL: &[u8] = b"gatelogin x25519 pinned v1";

/// The first byte of a pinned client's key line (`0x01 ‖ client_pub`).
/// The byte is a set of flags: this one, [`QUEUE_NOTICES`], or both.
pub const PINNED_V1: u8 = 0x01;

/// Flag of the key line's first byte: the client reads queue notices
/// (`# <position> <wait_ms>` lines before line 3) while the login server
/// holds it in its admission queue.
pub const QUEUE_NOTICES: u8 = 0x02;

/// Flag of the key line's first byte: the client pads its token to
/// [`TOKEN_BUCKET`] bytes ([`pad_token`]) and wants the server's key
/// confirmation on the `200` line ([`SessionKeys::server_confirmation`]);
/// without that confirmation it fails closed.
pub const CONFIRMED: u8 = 0x04;

/// Every flag of the key line's first byte this build knows.
pub const KNOWN_FLAGS: u8 = PINNED_V1 | QUEUE_NOTICES | CONFIRMED;

/// A padded token's length is a multiple of this, so the sealed token
/// tells nothing finer about the password's length.
pub const TOKEN_BUCKET: usize = 128;

/// HKDF `info` of the key the server's `200` line is confirmed with.
pub const INFO_SERVER_CONFIRM: &[u8] = b"server confirm";

/// HKDF `info` of the key the client proves possession of on line 4.
pub const INFO_CLIENT_PROOF: &[u8] = b"client proof";
/// HKDF `info` of the AEAD key that seals the token on line 5.
pub const INFO_TOKEN_KEY: &[u8] = b"token key";
/// HKDF `info` of the secret the gate handshake MAC is keyed with.
pub const INFO_GATE_SECRET: &[u8] = b"gate secret";

/// A 32-byte X25519 key or derived key.
pub type Key32 = [u8; KEY_LEN];

/// Failures of the x25519 suite's primitives.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum ModernError {
    /// The peer's public key is a low-order point: the shared secret is all
    /// zero and would be known to anyone.
    #[error("peer public key is a low-order point")]
    LowOrderPoint,
    /// The client proof does not match.
    #[error("client proof mismatch")]
    BadProof,
    /// The sealed token failed to authenticate (or was too short to hold a tag).
    #[error("sealed token failed to authenticate")]
    BadToken,
    /// The token is too long for ChaCha20-Poly1305 (never happens for a line).
    #[error("token too long to seal")]
    TokenTooLong,
    /// A padded token without its `0x80` end mark.
    #[error("token padding is malformed")]
    BadPadding,
    /// The server's `200` line did not carry a valid key confirmation.
    #[error("the server could not prove its key")]
    Unconfirmed,
}

/// Pads a token for [`CONFIRMED`] logins: `token ‖ 0x80 ‖ 0x00…` up to the
/// next multiple of [`TOKEN_BUCKET`] (at least one byte is added).
pub fn pad_token(token: &[u8]) -> Vec<u8> {
    let len = (token.len() / TOKEN_BUCKET + 1) * TOKEN_BUCKET;
    let mut padded = Vec::with_capacity(len);
    padded.extend_from_slice(token);
    padded.push(0x80);
    padded.resize(len, 0);
    padded
}

/// Removes [`pad_token`]'s padding.
pub fn unpad_token(mut padded: Vec<u8>) -> Result<Vec<u8>, ModernError> {
    while padded.last() == Some(&0) {
        padded.pop();
    }
    match padded.pop() {
        Some(0x80) => Ok(padded),
        _ => Err(ModernError::BadPadding),
    }
}

/// The public key of an X25519 private key (`x25519_key` from the caller's
/// CSPRNG; clamping is applied inside, as RFC 7748 specifies).
pub fn public_key(private: &Key32) -> Key32 {
    let secret = StaticSecret::from(*private);
    DalekPublic::from(&secret).to_bytes()
}

/// `X25519(own_private, peer_public)`, refusing the all-zero result that a
/// low-order peer key produces.
pub fn shared_secret(own_private: &Key32, peer_public: &Key32) -> Result<Key32, ModernError> {
    let shared = x25519(own_private, peer_public);
    // Constant time: the shared secret is what an attacker wants to learn.
    if bool::from(shared.ct_eq(&[0u8; KEY_LEN])) {
        return Err(ModernError::LowOrderPoint);
    }
    Ok(shared)
}

/// RFC 7748's `X25519(k, u)`, bit for bit, for every `k` and `u`.
///
/// A peer key on the curve (any honest one) is multiplied on the twisted
/// Edwards form instead of with the Montgomery ladder: curve25519-dalek
/// has a vectorised (AVX2) constant-time variable-base multiplication
/// there, about a fifth faster than its ladder even with the two
/// conversions, and this is most of the CPU a login costs each side. The
/// birational map keeps the u-coordinate: `u([k]P) = u([k](-P))`, so
/// either Edwards point of `u` does; the clamped scalar is used unreduced
/// (it is a multiple of the cofactor, so a torsion component vanishes as in
/// the ladder), and the identity maps back to `u = 0` as the ladder's point
/// at infinity does. A `u` on the twist (including `u = -1`) has no
/// Edwards point and takes the ladder. Whether a public key is on the curve
/// is public, so the branch leaks nothing.
fn x25519(k: &Key32, u: &Key32) -> Key32 {
    match MontgomeryPoint(*u).to_edwards(0) {
        Some(point) => point.mul_clamped(*k).to_montgomery().to_bytes(),
        None => x25519_dalek::x25519(*k, *u),
    }
}

/// `th = SHA-256(TRANSCRIPT_LABEL ‖ challenge ‖ client_pub ‖ server_pub)`.
pub fn transcript_hash(challenge: &[u8; 8], client_public: &Key32, server_public: &Key32) -> Key32 {
    Sha256::new()
        .chain_update(TRANSCRIPT_LABEL)
        .chain_update(challenge)
        .chain_update(client_public)
        .chain_update(server_public)
        .finalize()
        .into()
}

/// `th = SHA-256(PINNED_TRANSCRIPT_LABEL ‖ challenge ‖ client_pub ‖
/// server_pub ‖ static_pub)`.
pub fn pinned_transcript_hash(
    challenge: &[u8; 8],
    client_public: &Key32,
    server_public: &Key32,
    static_public: &Key32,
) -> Key32 {
    Sha256::new()
        .chain_update(PINNED_TRANSCRIPT_LABEL)
        .chain_update(challenge)
        .chain_update(client_public)
        .chain_update(server_public)
        .chain_update(static_public)
        .finalize()
        .into()
}

/// HMAC-SHA256 of the concatenation of `parts` under a 32-byte key.
fn hmac_sha256(key: &Key32, parts: &[&[u8]]) -> Key32 {
    // HMAC takes keys of any length; the error case of `new_from_slice` only
    // exists for MACs with fixed key sizes.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The keys of one x25519 login, derived from the shared secret and the
/// transcript hash. `Debug` does not print them; they are wiped when they
/// drop.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct SessionKeys {
    th: Key32,
    proof_key: Key32,
    token_key: Key32,
    gate_secret: Key32,
    confirm_key: Key32,
}

impl SessionKeys {
    /// Runs the key schedule: HKDF-SHA256 with `salt = th`, `ikm = shared`.
    pub fn derive(shared: &Key32, th: &Key32) -> SessionKeys {
        SessionKeys::derive_from(shared, th)
    }

    /// The key schedule over any input keying material (`ee ‖ es` for a
    /// pinned login).
    fn derive_from(ikm: &[u8], th: &Key32) -> SessionKeys {
        let hkdf = Hkdf::<Sha256>::new(Some(th), ikm);
        let expand = |info: &[u8]| {
            let mut out = [0u8; KEY_LEN];
            // 32 bytes is one HMAC block, far below HKDF's 255-block limit.
            hkdf.expand(info, &mut out)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            out
        };
        SessionKeys {
            th: *th,
            proof_key: expand(INFO_CLIENT_PROOF),
            token_key: expand(INFO_TOKEN_KEY),
            gate_secret: expand(INFO_GATE_SECRET),
            confirm_key: expand(INFO_SERVER_CONFIRM),
        }
    }

    /// Runs the whole agreement from one side's point of view: X25519, the
    /// transcript hash and the key schedule.
    pub fn agree(
        own_private: &Key32,
        peer_public: &Key32,
        challenge: &[u8; 8],
        client_public: &Key32,
        server_public: &Key32,
    ) -> Result<SessionKeys, ModernError> {
        let shared = zeroize::Zeroizing::new(shared_secret(own_private, peer_public)?);
        let th = transcript_hash(challenge, client_public, server_public);
        Ok(SessionKeys::derive(&shared, &th))
    }

    /// A pinned login from the client's side: `ee = X25519(own, server_pub)`,
    /// `es = X25519(own, static_pub)` (the pinned key), the pinned
    /// transcript hash, and the key schedule over `ee ‖ es`. A man in the
    /// middle without the static private key cannot compute `es`.
    pub fn agree_pinned_client(
        own_private: &Key32,
        server_public: &Key32,
        static_public: &Key32,
        challenge: &[u8; 8],
        client_public: &Key32,
    ) -> Result<SessionKeys, ModernError> {
        let ee = zeroize::Zeroizing::new(shared_secret(own_private, server_public)?);
        let es = zeroize::Zeroizing::new(shared_secret(own_private, static_public)?);
        let th = pinned_transcript_hash(challenge, client_public, server_public, static_public);
        Ok(SessionKeys::derive_pinned(&ee, &es, &th))
    }

    /// A pinned login from the server's side: `ee = X25519(own, client_pub)`,
    /// `es = X25519(static_private, client_pub)`.
    pub fn agree_pinned_server(
        own_private: &Key32,
        static_private: &Key32,
        client_public: &Key32,
        challenge: &[u8; 8],
        server_public: &Key32,
        static_public: &Key32,
    ) -> Result<SessionKeys, ModernError> {
        let ee = zeroize::Zeroizing::new(shared_secret(own_private, client_public)?);
        let es = zeroize::Zeroizing::new(shared_secret(static_private, client_public)?);
        let th = pinned_transcript_hash(challenge, client_public, server_public, static_public);
        Ok(SessionKeys::derive_pinned(&ee, &es, &th))
    }

    fn derive_pinned(ee: &Key32, es: &Key32, th: &Key32) -> SessionKeys {
        let mut ikm = zeroize::Zeroizing::new([0u8; 2 * KEY_LEN]);
        ikm[..KEY_LEN].copy_from_slice(ee);
        ikm[KEY_LEN..].copy_from_slice(es);
        SessionKeys::derive_from(&ikm[..], th)
    }

    /// The transcript hash the keys are bound to.
    pub fn transcript_hash(&self) -> &Key32 {
        &self.th
    }

    /// The client proof of line 4: `HMAC-SHA256(proof_key, th)`.
    pub fn client_proof(&self) -> Key32 {
        hmac_sha256(&self.proof_key, &[&self.th])
    }

    /// Checks a received proof in constant time (any length is accepted as
    /// input; a wrong length is simply a mismatch).
    pub fn verify_proof(&self, proof: &[u8]) -> Result<(), ModernError> {
        if bool::from(self.client_proof().as_slice().ct_eq(proof)) {
            Ok(())
        } else {
            Err(ModernError::BadProof)
        }
    }

    /// Seals the token for line 5 (ciphertext ‖ 16-byte tag).
    pub fn seal_token(&self, token: &[u8]) -> Result<Vec<u8>, ModernError> {
        let aead = ChaCha20Poly1305::new(&self.token_key.into());
        // Zero nonce: this key encrypts exactly one message (see module docs).
        aead.encrypt(
            &[0u8; 12].into(),
            Payload {
                msg: token,
                aad: &self.th,
            },
        )
        .map_err(|_| ModernError::TokenTooLong)
    }

    /// Opens a sealed token; fails unless the tag authenticates it.
    pub fn open_token(&self, sealed: &[u8]) -> Result<Vec<u8>, ModernError> {
        let aead = ChaCha20Poly1305::new(&self.token_key.into());
        aead.decrypt(
            &[0u8; 12].into(),
            Payload {
                msg: sealed,
                aad: &self.th,
            },
        )
        .map_err(|_| ModernError::BadToken)
    }

    /// The secret the gate handshake MAC is keyed with.
    pub fn gate_secret(&self) -> &Key32 {
        &self.gate_secret
    }

    /// The key confirmation of a successful [`CONFIRMED`] login, sent on
    /// the `200` line after the subid: `HMAC-SHA256(confirm_key, th ‖
    /// subid)`. Only a party that derived the same keys can compute it, so
    /// a man in the middle cannot forge a success to a pinned client.
    pub fn server_confirmation(&self, subid: &[u8]) -> Key32 {
        hmac_sha256(&self.confirm_key, &[&self.th, subid])
    }

    /// Checks a received confirmation in constant time.
    pub fn verify_confirmation(&self, subid: &[u8], mac: &[u8]) -> Result<(), ModernError> {
        if bool::from(self.server_confirmation(subid).as_slice().ct_eq(mac)) {
            Ok(())
        } else {
            Err(ModernError::Unconfirmed)
        }
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys { .. }")
    }
}

/// The gate handshake MAC of an x25519 session:
/// `HMAC-SHA256(gate_secret, text)` with `text = username ":" index`.
pub fn gate_mac(gate_secret: &Key32, text: &[u8]) -> Key32 {
    hmac_sha256(gate_secret, &[text])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> Key32 {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn rfc7748_agreement() {
        // RFC 7748 §6.1.
        let a = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let a_pub = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let b = hex32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let b_pub = hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let k = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(public_key(&a), a_pub);
        assert_eq!(public_key(&b), b_pub);
        assert_eq!(shared_secret(&a, &b_pub), Ok(k));
        assert_eq!(shared_secret(&b, &a_pub), Ok(k));
    }

    #[test]
    fn low_order_points_are_refused() {
        let a = [7u8; 32];
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(shared_secret(&a, &[0; 32]), Err(ModernError::LowOrderPoint));
        assert_eq!(shared_secret(&a, &one), Err(ModernError::LowOrderPoint));
        // A point of order 8 (from the curve25519 low-order list).
        let order8 = hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        assert_eq!(shared_secret(&a, &order8), Err(ModernError::LowOrderPoint));
    }

    /// The Edwards path gives the ladder's bytes: for keys on the curve,
    /// on the twist, low-order and non-canonical ones.
    #[test]
    fn x25519_matches_the_ladder() {
        let p_minus = |d: u8| {
            // p - d for p = 2^255 - 19, little-endian.
            let mut v = [0xffu8; 32];
            v[0] = 0xed - d;
            v[31] = 0x7f;
            v
        };
        let mut special: Vec<Key32> = vec![
            [0; 32],
            {
                let mut one = [0; 32];
                one[0] = 1;
                one
            },
            p_minus(1), // u = -1, on the twist
            p_minus(0), // u = p, a non-canonical 0
            p_minus(2),
            [0xff; 32], // high bit set, non-canonical
            // Low-order points and non-canonical encodings of them
            // (libsodium's blocklist).
            hex32("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
            hex32("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
            hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex32("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex32("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex32("cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880"),
            hex32("4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7"),
            hex32("d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
            hex32("daffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
            hex32("dbffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
        ];
        // Pseudo-random points, about half on the curve and half on the
        // twist, and the public keys of pseudo-random private keys.
        let mut state = [7u8; 32];
        for i in 0..200u32 {
            state = Sha256::digest(state).into();
            special.push(state);
            if i % 4 == 0 {
                special.push(public_key(&state));
            }
        }
        let mut on_curve = 0;
        for (i, u) in special.iter().enumerate() {
            let k: Key32 = Sha256::digest((i as u32).to_le_bytes()).into();
            assert_eq!(x25519(&k, u), x25519_dalek::x25519(k, *u), "u = {u:02x?}");
            on_curve += usize::from(MontgomeryPoint(*u).to_edwards(0).is_some());
        }
        // Both paths were taken.
        assert!(on_curve > 50 && on_curve < special.len() - 50, "{on_curve}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn x25519_matches_the_ladder_for_any_input(
            k in proptest::prelude::any::<[u8; 32]>(),
            u in proptest::prelude::any::<[u8; 32]>(),
        ) {
            proptest::prop_assert_eq!(x25519(&k, &u), x25519_dalek::x25519(k, u));
        }
    }

    #[test]
    fn rfc7748_iterated_once() {
        // RFC 7748 §5.2, after one iteration of k, u = X25519(k, u), k (the
        // 1000-iteration vector takes long unoptimised; the comparison with
        // the ladder above covers more inputs anyway).
        let mut nine = [0u8; 32];
        nine[0] = 9;
        assert_eq!(
            x25519(&nine, &nine),
            hex32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
        );
    }

    #[test]
    fn both_sides_derive_the_same_keys() {
        let (c, s) = ([1u8; 32], [2u8; 32]);
        let (c_pub, s_pub) = (public_key(&c), public_key(&s));
        let challenge = *b"12345678";
        let ck = SessionKeys::agree(&c, &s_pub, &challenge, &c_pub, &s_pub).unwrap();
        let sk = SessionKeys::agree(&s, &c_pub, &challenge, &c_pub, &s_pub).unwrap();
        assert_eq!(ck.gate_secret(), sk.gate_secret());
        assert_eq!(ck.transcript_hash(), sk.transcript_hash());
        assert!(sk.verify_proof(&ck.client_proof()).is_ok());
        assert_eq!(sk.verify_proof(&[0; 32]), Err(ModernError::BadProof));
        assert_eq!(sk.verify_proof(&[]), Err(ModernError::BadProof));
        let sealed = ck.seal_token(b"token").unwrap();
        assert_eq!(sealed.len(), 5 + TAG_LEN);
        assert_eq!(sk.open_token(&sealed).unwrap(), b"token");
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert_eq!(sk.open_token(&bad), Err(ModernError::BadToken));
        assert_eq!(sk.open_token(&sealed[..10]), Err(ModernError::BadToken));
        // A different challenge gives different keys: the transcript binds them.
        let other = SessionKeys::agree(&s, &c_pub, b"87654321", &c_pub, &s_pub).unwrap();
        assert!(other.verify_proof(&ck.client_proof()).is_err());
        assert!(other.open_token(&sealed).is_err());
    }

    #[test]
    fn debug_hides_keys() {
        let keys = SessionKeys::derive(&[9; 32], &[8; 32]);
        assert_eq!(format!("{keys:?}"), "SessionKeys { .. }");
    }
}
