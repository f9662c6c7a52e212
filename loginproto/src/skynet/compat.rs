//! skynet `crypt` functions the login and gate protocols never use.
//!
//! Kept so tools and tests can reproduce skynet's results byte for byte
//! (spec §3.10, §3.12). skynet's `sha1`, `hmac_sha1` and `hmac64_md5` are
//! deliberately absent: nothing on the wire needs them, and this crate does
//! not pull in SHA-1/MD5 for them (the vector tests check them against the
//! `sha1`/`md-5` crates instead).

use super::CryptError;

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex, two characters per byte.
pub fn hexencode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 2);
    for &b in data {
        out.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
        out.push(char::from(HEX_DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// skynet's `hexdecode`, quirks included.
///
/// The length must be even. `0`–`9` are digits; any other character is taken
/// as `c − 0x57` (so `a`–`f` are 10–15) and must land in 0…16. Hence upper
/// case is rejected while the ten characters `W`…`` ` `` decode as 0…9 and `g`
/// as 16, which then spills into the neighbouring nibble:
/// byte = `((hi << 4) | lo) & 0xff`.
pub fn hexdecode(text: &[u8]) -> Result<Vec<u8>, CryptError> {
    if text.len() % 2 != 0 {
        return Err(CryptError::InvalidLength {
            what: "hex text",
            len: text.len(),
        });
    }
    text.chunks_exact(2)
        .map(|pair| {
            let hi = nibble(pair[0])?;
            let lo = nibble(pair[1])?;
            Ok(((hi << 4) | lo) as u8)
        })
        .collect()
}

/// One hex character's value as skynet computes it (0…16).
fn nibble(c: u8) -> Result<u32, CryptError> {
    match c {
        b'0'..=b'9' => Ok(u32::from(c - b'0')),
        0x57..=0x67 => Ok(u32::from(c - 0x57)),
        _ => Err(CryptError::InvalidHex),
    }
}

/// `out[i] = a[i] ⊕ b[i mod |b|]`, `|a|` bytes; `b` must not be empty.
pub fn xor_str(a: &[u8], b: &[u8]) -> Result<Vec<u8>, CryptError> {
    if b.is_empty() {
        return Err(CryptError::EmptyXorKey);
    }
    Ok(a.iter().zip(b.iter().cycle()).map(|(x, y)| x ^ y).collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hex_quirks() {
        assert_eq!(hexencode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(hexdecode(b"gg"), Ok(vec![0x10]));
        assert_eq!(hexdecode(b"2g"), Ok(vec![0x30]));
        assert_eq!(hexdecode(b"W0"), Ok(vec![0x00]));
        assert_eq!(hexdecode(b"FF"), Err(CryptError::InvalidHex));
        assert_eq!(
            hexdecode(b"abc"),
            Err(CryptError::InvalidLength {
                what: "hex text",
                len: 3
            })
        );
    }

    #[test]
    fn xor() {
        assert_eq!(xor_str(b"abc", b""), Err(CryptError::EmptyXorKey));
        assert_eq!(xor_str(b"", b"k"), Ok(vec![]));
        assert_eq!(xor_str(&[1, 2, 3], &[1]), Ok(vec![0, 3, 2]));
    }

    proptest! {
        #[test]
        fn hex_round_trip(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(hexdecode(hexencode(&data).as_bytes()).unwrap(), data);
        }

        #[test]
        fn hexdecode_never_panics(text in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = hexdecode(&text);
        }
    }
}
