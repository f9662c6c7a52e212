//! `desencode` / `desdecode` (spec §3.7): single DES in ECB mode.
//!
//! The key is used as-is (standard DES ignores each byte's low parity bit).
//! The last block always carries the padding, so the output is 8 bytes longer
//! than the whole blocks of the input; on decode only the final block's
//! padding is examined, exactly as skynet does.

use ::des::Des;
use ::des::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

use super::{CryptError, Key};

/// DES block size.
const BLOCK: usize = 8;

/// The padding scheme of the final block.
///
/// skynet numbers them 0 and 1 (its `crypt.padding` table); 0 is the default
/// and what the login protocol uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Padding {
    /// `0x80` then zero bytes (ISO/IEC 7816-4). skynet's mode 0, the default.
    #[default]
    Iso7816_4,
    /// `r` bytes of value `r` (PKCS#7). skynet's mode 1.
    Pkcs7,
}

impl TryFrom<i64> for Padding {
    type Error = CryptError;

    /// Maps skynet's numeric mode argument; anything but 0 or 1 is an error.
    fn try_from(mode: i64) -> Result<Self, CryptError> {
        match mode {
            0 => Ok(Padding::Iso7816_4),
            1 => Ok(Padding::Pkcs7),
            other => Err(CryptError::InvalidPaddingMode(other)),
        }
    }
}

/// Encrypts `text` with DES-ECB after padding it to a whole number of blocks.
///
/// The output is `⌊|text| / 8⌋ · 8 + 8` bytes: a full padding block is added
/// when the text is already a multiple of 8 bytes (including empty text).
pub fn desencode(key: &Key, text: &[u8], padding: Padding) -> Vec<u8> {
    let whole = text.len() / BLOCK * BLOCK;
    let total = whole + BLOCK;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(text);
    match padding {
        Padding::Iso7816_4 => {
            out.push(0x80);
            out.resize(total, 0);
        }
        Padding::Pkcs7 => {
            // 1..=8, so it fits a byte.
            let r = (total - text.len()) as u8;
            out.resize(total, r);
        }
    }
    let (blocks, _) = Array::slice_as_chunks_mut(&mut out);
    cipher(key).encrypt_blocks(blocks);
    out
}

/// Decrypts DES-ECB `data` and strips the padding of its final block.
///
/// `data` must be a non-zero multiple of 8 bytes. Earlier blocks are returned
/// verbatim even if they happen to look like padding.
pub fn desdecode(key: &Key, data: &[u8], padding: Padding) -> Result<Vec<u8>, CryptError> {
    if data.is_empty() || data.len() % BLOCK != 0 {
        return Err(CryptError::InvalidLength {
            what: "des crypt text",
            len: data.len(),
        });
    }
    let mut out = data.to_vec();
    let (blocks, _) = Array::slice_as_chunks_mut(&mut out);
    cipher(key).decrypt_blocks(blocks);
    let last = out
        .last_chunk::<BLOCK>()
        .ok_or(CryptError::InvalidDesText)?;
    let pad = match padding {
        Padding::Iso7816_4 => iso7816_4_len(last),
        Padding::Pkcs7 => pkcs7_len(last),
    }
    .ok_or(CryptError::InvalidDesText)?;
    out.truncate(out.len() - pad);
    Ok(out)
}

fn cipher(key: &Key) -> Des {
    Des::new(&Array::from(*key))
}

/// Padding length of an ISO 7816-4 final block: trailing zeros then `0x80`.
fn iso7816_4_len(last: &[u8; BLOCK]) -> Option<usize> {
    let marker = last.iter().rposition(|&b| b != 0)?;
    (last[marker] == 0x80).then_some(BLOCK - marker)
}

/// Padding length of a PKCS#7 final block: `v` bytes of value `v`, 1 ≤ v ≤ 8.
fn pkcs7_len(last: &[u8; BLOCK]) -> Option<usize> {
    let v = last[BLOCK - 1];
    let n = usize::from(v);
    ((1..=BLOCK).contains(&n) && last[BLOCK - n..].iter().all(|&b| b == v)).then_some(n)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const KEY: &Key = b"12345678";

    #[test]
    fn classic_known_answer() {
        let key = [0x13, 0x34, 0x57, 0x79, 0x9b, 0xbc, 0xdf, 0xf1];
        let plain = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        let out = desencode(&key, &plain, Padding::Iso7816_4);
        assert_eq!(out[..8], [0x85, 0xe8, 0x13, 0x54, 0x0f, 0x0a, 0xb4, 0x05]);
    }

    #[test]
    fn output_length_always_adds_a_block() {
        for len in 0..=17 {
            let text = vec![0x41; len];
            for padding in [Padding::Iso7816_4, Padding::Pkcs7] {
                assert_eq!(desencode(KEY, &text, padding).len(), len / 8 * 8 + 8);
            }
        }
    }

    #[test]
    fn padding_scan() {
        assert_eq!(iso7816_4_len(&[0x41, 0, 0, 0, 0, 0, 0, 0x80]), Some(1));
        assert_eq!(iso7816_4_len(&[0x80, 0, 0, 0, 0, 0, 0, 0]), Some(8));
        assert_eq!(iso7816_4_len(&[0; 8]), None);
        assert_eq!(iso7816_4_len(&[0x80, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(pkcs7_len(&[8; 8]), Some(8));
        assert_eq!(pkcs7_len(&[0x41, 0x42, 3, 3, 3, 3, 3, 3]), Some(3));
        assert_eq!(pkcs7_len(&[7, 8, 8, 8, 8, 8, 8, 8]), None);
        assert_eq!(pkcs7_len(&[0; 8]), None);
        assert_eq!(pkcs7_len(&[9; 8]), None);
    }

    #[test]
    fn bad_lengths_and_modes() {
        for len in [0, 7, 9] {
            assert_eq!(
                desdecode(KEY, &vec![0; len], Padding::default()),
                Err(CryptError::InvalidLength {
                    what: "des crypt text",
                    len
                })
            );
        }
        assert_eq!(Padding::try_from(0), Ok(Padding::Iso7816_4));
        assert_eq!(Padding::try_from(1), Ok(Padding::Pkcs7));
        assert_eq!(Padding::try_from(2), Err(CryptError::InvalidPaddingMode(2)));
        assert_eq!(
            Padding::try_from(-1),
            Err(CryptError::InvalidPaddingMode(-1))
        );
    }

    fn any_padding() -> impl Strategy<Value = Padding> {
        prop_oneof![Just(Padding::Iso7816_4), Just(Padding::Pkcs7)]
    }

    proptest! {
        #[test]
        fn round_trip(key: [u8; 8], text in proptest::collection::vec(any::<u8>(), 0..300), padding in any_padding()) {
            let sealed = desencode(&key, &text, padding);
            prop_assert_eq!(desdecode(&key, &sealed, padding).unwrap(), text);
        }

        #[test]
        fn decode_never_panics(key: [u8; 8], data in proptest::collection::vec(any::<u8>(), 0..100), padding in any_padding()) {
            if let Ok(plain) = desdecode(&key, &data, padding) {
                prop_assert!(plain.len() < data.len());
            }
        }
    }
}
