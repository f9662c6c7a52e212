//! skynet's 64-bit Diffie–Hellman (spec §3.2): p = 2^64 − 59, g = 5.
//!
//! Keys and public values are little-endian u64s. The arithmetic reproduces
//! skynet's `powmod` exactly, including that a base equal to p is not reduced
//! when the exponent is 1.

use super::{CryptError, Key};

/// The modulus, the largest prime below 2^64.
const P: u64 = 0xFFFF_FFFF_FFFF_FFC5;
/// 2^64 mod p: what a carry out of the low 64 bits is worth.
const FOLD: u64 = 59;
/// The generator.
const G: u64 = 5;

/// Returns `LE64(5^k mod p)`, the public value for private key `key`.
///
/// A zero key is rejected as skynet does (`5^0 = 1` would be a useless
/// public value).
pub fn dhexchange(key: &Key) -> Result<Key, CryptError> {
    let x = nonzero(key)?;
    Ok(powmod(G, x).to_le_bytes())
}

/// Returns `LE64(peer_public^own_private mod p)`, the shared secret.
///
/// The base comes first, the exponent second, as in skynet's
/// `dhsecret(x, y)`; either being zero is an error. Public values are not
/// validated otherwise (1, p − 1, p, values above p are all accepted), again
/// as in skynet.
pub fn dhsecret(peer_public: &Key, own_private: &Key) -> Result<Key, CryptError> {
    let base = nonzero(peer_public)?;
    let exponent = nonzero(own_private)?;
    Ok(powmod(base, exponent).to_le_bytes())
}

fn nonzero(key: &Key) -> Result<u64, CryptError> {
    match u64::from_le_bytes(*key) {
        0 => Err(CryptError::ZeroKey),
        x => Ok(x),
    }
}

/// skynet's `powmod(a, e)` for `e >= 1`.
///
/// Only a base strictly greater than p is reduced first, and `e == 1` returns
/// that base as is, so `powmod(p, 1) == p` (unreduced) — the vectors pin this
/// quirk down. For `e > 1` the result is the true residue in `[0, p)`.
fn powmod(a: u64, e: u64) -> u64 {
    // a < 2^64 < 2p, so one subtraction reduces a > p.
    let a = if a > P { a - P } else { a };
    if e == 1 {
        return a;
    }
    let mut result = 1u64;
    let mut base = a;
    let mut e = e;
    while e > 0 {
        if e & 1 == 1 {
            result = mul_mod(result, base);
        }
        base = mul_mod(base, base);
        e >>= 1;
    }
    result
}

/// `a · b mod p` for any u64 inputs (a, b may be ≥ p).
fn mul_mod(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

/// `x mod p` using 2^64 ≡ 59 (mod p), which avoids a 128-bit division.
fn reduce(x: u128) -> u64 {
    // x = hi·2^64 + lo ≡ hi·59 + lo, which is below 60·2^64.
    let folded = u128::from((x >> 64) as u64) * u128::from(FOLD) + u128::from(x as u64);
    // Fold again: the high part is now below 60, so hi·59 < 3541.
    let hi = (folded >> 64) as u64;
    let lo = folded as u64;
    let (mut r, carry) = lo.overflowing_add(hi * FOLD);
    if carry {
        // The lost 2^64 is worth 59; r is tiny after wrapping, no new carry.
        r += FOLD;
    }
    if r >= P { r - P } else { r }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn documented_example() {
        let public = dhexchange(b"11111111").unwrap();
        assert_eq!(public, [0xd5, 0x8a, 0x46, 0x9c, 0xfd, 0xed, 0x70, 0x5e]);
    }

    #[test]
    fn powmod_quirks() {
        assert_eq!(powmod(P, 1), P);
        assert_eq!(powmod(P, 2), 0);
        assert_eq!(powmod(P + 1, 1), 1);
        assert_eq!(powmod(u64::MAX, 1), 58);
        assert_eq!(powmod(2, 64), 59);
        assert_eq!(powmod(G, P - 1), 1);
    }

    #[test]
    fn zero_is_rejected() {
        assert_eq!(dhexchange(&[0; 8]), Err(CryptError::ZeroKey));
        assert_eq!(dhsecret(&[0; 8], &[1; 8]), Err(CryptError::ZeroKey));
        assert_eq!(dhsecret(&[1; 8], &[0; 8]), Err(CryptError::ZeroKey));
    }

    #[test]
    fn reduce_edges() {
        let max = u128::from(u64::MAX);
        for x in [
            0,
            1,
            u128::from(P) - 1,
            u128::from(P),
            u128::from(P) + 1,
            max,
            max + 1,
            max * max,
        ] {
            assert_eq!(reduce(x), (x % u128::from(P)) as u64, "x = {x:#x}");
        }
    }

    proptest! {
        #[test]
        fn reduce_matches_division(a: u64, b: u64) {
            let x = u128::from(a) * u128::from(b);
            prop_assert_eq!(reduce(x), (x % u128::from(P)) as u64);
        }

        #[test]
        fn both_sides_agree(a in 1u64.., b in 1u64..) {
            let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
            let public_a = dhexchange(&a).unwrap();
            let public_b = dhexchange(&b).unwrap();
            // A public value can only be zero if p divides 5^k, which it never does.
            prop_assert_eq!(dhsecret(&public_b, &a).unwrap(), dhsecret(&public_a, &b).unwrap());
        }
    }
}
