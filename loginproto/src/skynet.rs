//! skynet's `crypt` primitives, bit-exact with skynet's C library.
//!
//! These are what every existing skynet client speaks, so they reproduce
//! skynet's behaviour including its quirks (spec `skynet-wire.md` §3 is the
//! authority; the vectors in `testdata/vectors/` were produced by skynet
//! itself):
//!
//! * [`dhexchange`] / [`dhsecret`]: Diffie–Hellman in the multiplicative group
//!   modulo p = 2^64 − 59 with g = 5.
//! * [`hmac64`]: one MD5 compression of a block built from two keys, without
//!   MD5's feed-forward. Not RFC 2104 HMAC.
//! * [`hashkey`] / [`hmac_hash`]: a pair of 32-bit string hashes, and the MAC the
//!   message gate uses on its handshake line.
//! * [`desencode`] / [`desdecode`]: single DES in ECB mode with ISO 7816-4
//!   (default) or PKCS#7 padding.
//! * [`base64_encode`] / [`base64_decode`]: the standard alphabet on output and
//!   skynet's lenient, quirky decoder on input.
//! * [`compat`]: primitives skynet exports but the protocols never use.
//!
//! Everything here is weak by modern standards (64-bit DH, DES, a truncated
//! hash as a MAC); it exists only for compatibility. Functions are pure: the
//! caller supplies any randomness ([`random_key`]).
//!
//! A "key" is always 8 bytes. Where skynet reads one as a number it is a
//! little-endian u64 (or two little-endian u32 words).

mod base64;
pub mod compat;
mod des_ecb;
mod dh;
mod hash;

pub use self::base64::{base64_decode, base64_encode, base64_encode_into};
pub use self::des_ecb::{Padding, desdecode, desencode};
pub use self::dh::{dhexchange, dhsecret};
pub use self::hash::{hashkey, hmac_hash, hmac64};

/// An 8-byte key, challenge, secret or MAC as skynet passes them around.
pub type Key = [u8; 8];

/// Everything that can go wrong in this module.
///
/// The messages are informative only: skynet's clients never see them, they
/// only observe that an operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CryptError {
    /// A byte string had a length the primitive does not accept: a key that
    /// is not 8 bytes, DES data that is not a non-zero multiple of 8 bytes,
    /// hex text of odd length.
    #[error("invalid {what} length {len}")]
    InvalidLength {
        /// What the bytes were meant to be (`"key"`, `"des crypt text"`, …).
        what: &'static str,
        /// The length that was passed.
        len: usize,
    },
    /// A DH private key, exponent or public value was zero.
    #[error("key can't be 0")]
    ZeroKey,
    /// DES decryption succeeded but the final block's padding was invalid.
    #[error("invalid des crypt text")]
    InvalidDesText,
    /// A numeric padding mode other than 0 (ISO 7816-4) or 1 (PKCS#7).
    #[error("invalid padding mode {0}")]
    InvalidPaddingMode(i64),
    /// Text that skynet's base64 decoder rejects.
    #[error("invalid base64 text")]
    InvalidBase64,
    /// A character skynet's hex decoder rejects.
    #[error("invalid hex text")]
    InvalidHex,
    /// `xor_str` with an empty key.
    #[error("can't xor empty string")]
    EmptyXorKey,
}

/// Reads an 8-byte [`Key`] out of a byte string of unchecked length.
///
/// skynet checks the length of every key argument at run time; here the types
/// carry the length, so this is where bytes from the network become a key.
/// `what` names the argument in the error (`"key"`, `"x"`, `"challenge"`, …).
pub fn key_from_slice(bytes: &[u8], what: &'static str) -> Result<Key, CryptError> {
    Key::try_from(bytes).map_err(|_| CryptError::InvalidLength {
        what,
        len: bytes.len(),
    })
}

/// Turns 8 bytes from the caller's CSPRNG into a private key (spec §3.1).
///
/// skynet's `randomkey` uses the C library's `random()`, which is not secure;
/// we only keep its one observable property: if the XOR of the eight bytes is
/// zero, the lowest bit of byte 0 is set. In particular an all-zero input
/// becomes `01 00 … 00`, so the result is never all-zero and is always
/// accepted by [`dhexchange`]. (The XOR of the result may still be zero, as
/// in skynet, when byte 0 already had its low bit set.)
pub fn random_key(random: [u8; 8]) -> Key {
    let mut key = random;
    if key.iter().fold(0u8, |acc, b| acc ^ b) == 0 {
        key[0] |= 1;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_key_is_never_zero() {
        assert_eq!(random_key([0; 8]), [1, 0, 0, 0, 0, 0, 0, 0]);
        // XOR zero with byte 0's low bit already set: unchanged, XOR stays 0.
        assert_eq!(
            random_key([1, 1, 0, 0, 0, 0, 0, 0]),
            [1, 1, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            random_key([2, 2, 0, 0, 0, 0, 0, 0]),
            [3, 2, 0, 0, 0, 0, 0, 0]
        );
        // Non-zero XOR: untouched.
        assert_eq!(
            random_key([0, 0, 0, 0, 0, 0, 0, 4]),
            [0, 0, 0, 0, 0, 0, 0, 4]
        );
        assert!(dhexchange(&random_key([0; 8])).is_ok());
    }

    #[test]
    fn key_from_slice_checks_length() {
        assert_eq!(key_from_slice(b"12345678", "key"), Ok(*b"12345678"));
        assert_eq!(
            key_from_slice(b"1234567", "x"),
            Err(CryptError::InvalidLength { what: "x", len: 7 })
        );
        assert!(key_from_slice(b"", "y").is_err());
        assert!(key_from_slice(b"123456789", "y").is_err());
    }
}
