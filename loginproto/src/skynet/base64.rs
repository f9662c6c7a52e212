//! skynet's base64 (spec §3.8, §3.9).
//!
//! Encoding is plain RFC 4648 with `=` padding. Decoding is skynet's own
//! lenient and quirky algorithm, reproduced exactly because the login server
//! decides `401` versus success on it: unknown bytes are skipped, missing
//! padding is accepted, yet a trailing CR or newline (a final group of only
//! skipped bytes) is an error.

use super::CryptError;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Class of an input byte in [`DECODE`]: `=`.
const PAD: u8 = 64;
/// Class of an input byte in [`DECODE`]: outside the alphabet, skipped.
const SKIP: u8 = 65;

/// Byte → 6-bit value, or [`PAD`] / [`SKIP`].
const DECODE: [u8; 256] = {
    let mut table = [SKIP; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table[b'=' as usize] = PAD;
    table
};

/// Encodes `data` as standard base64 with `=` padding and no line breaks.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_len(data.len()));
    encode_quads(data, |quad| out.extend(quad.map(char::from)));
    out
}

/// Appends the base64 encoding of `data` to `out` (ASCII bytes), so a caller
/// building a line or a package can encode without a separate allocation.
pub fn base64_encode_into(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(encoded_len(data.len()));
    encode_quads(data, |quad| out.extend_from_slice(&quad));
}

fn encoded_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// Calls `emit` with each 4-character group of the encoding.
fn encode_quads(data: &[u8], mut emit: impl FnMut([u8; 4])) {
    let sextet = |v: u32, shift: u32| ALPHABET[((v >> shift) & 0x3f) as usize];
    let mut chunks = data.chunks_exact(3);
    for chunk in &mut chunks {
        let v = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
        emit([sextet(v, 18), sextet(v, 12), sextet(v, 6), sextet(v, 0)]);
    }
    match *chunks.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            emit([sextet(v, 18), sextet(v, 12), b'=', b'=']);
        }
        [a, b] => {
            let v = u32::from(a) << 16 | u32::from(b) << 8;
            emit([sextet(v, 18), sextet(v, 12), sextet(v, 6), b'=']);
        }
        _ => {}
    }
}

/// Decodes base64 text exactly as skynet does (spec §3.9).
///
/// Bytes outside the alphabet and `=` are skipped. Input is consumed in groups
/// of four slots, `=` and the end of input filling slots with padding; a group
/// is valid with no padding, with padding in its last slot (and zero low bits
/// in the third value), or in its last two slots (zero low bits in the
/// second). A new group starts whenever input bytes remain, so trailing
/// skipped bytes or an extra `=` produce an all-padding group: an error.
pub fn base64_decode(text: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 3);
    let mut input = text.iter().map(|&b| DECODE[usize::from(b)]);
    let mut remaining = text.len();
    while remaining > 0 {
        let mut slots = [PAD; 4];
        let mut filled = 0;
        // Past the end of input every slot is a virtual '='.
        while filled < 4 {
            let Some(class) = input.next() else { break };
            remaining -= 1;
            if class != SKIP {
                slots[filled] = class;
                filled += 1;
            }
        }
        let pads = slots.iter().filter(|&&s| s == PAD).count();
        let [v0, v1, v2, v3] = slots.map(u32::from);
        match pads {
            0 => {
                let v = v0 << 18 | v1 << 12 | v2 << 6 | v3;
                out.extend_from_slice(&v.to_be_bytes()[1..]);
            }
            1 if slots[3] == PAD && v2 & 0x3 == 0 => {
                let v = v0 << 10 | v1 << 4 | v2 >> 2;
                out.extend_from_slice(&(v as u16).to_be_bytes());
            }
            2 if slots[2] == PAD && slots[3] == PAD && v1 & 0xf == 0 => {
                out.push((v0 << 2 | v1 >> 4) as u8);
            }
            _ => return Err(CryptError::InvalidBase64),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn encode_tails() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"A"), "QQ==");
        assert_eq!(base64_encode(b"AB"), "QUI=");
        assert_eq!(base64_encode(b"ABC"), "QUJD");
        let mut out = b"200 ".to_vec();
        base64_encode_into(b"1", &mut out);
        assert_eq!(out, b"200 MQ==");
    }

    #[test]
    fn decode_quirks() {
        let ok = |t: &[u8], want: &[u8]| assert_eq!(base64_decode(t).as_deref(), Ok(want), "{t:?}");
        let bad = |t: &[u8]| assert_eq!(base64_decode(t), Err(CryptError::InvalidBase64), "{t:?}");
        ok(b"", b"");
        ok(b"QQ", b"A");
        ok(b"QUI", b"AB");
        ok(b"QQ==QQ==", b"AA");
        ok(b"\nQUJD", b"ABC");
        ok(b"Q Q = =", b"A");
        bad(b"Q");
        bad(b"QR==");
        bad(b"QUJ=");
        bad(b"QUJD\n");
        bad(b"QUJD=");
        bad(b"QQ=A");
        bad(b"QUJDREVGR0g=\r");
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = base64_encode(&data);
            prop_assert_eq!(text.len(), encoded_len(data.len()));
            prop_assert_eq!(base64_decode(text.as_bytes()).unwrap(), data.clone());
            let mut into = Vec::new();
            base64_encode_into(&data, &mut into);
            prop_assert_eq!(into, text.into_bytes());
        }

        #[test]
        fn decode_never_panics(text in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(data) = base64_decode(&text) {
                prop_assert!(data.len() <= text.len() / 4 * 3 + 3);
            }
        }

        #[test]
        fn decode_alphabet_heavy_never_panics(text in "[A-Za-z0-9+/=\n\r -]{0,64}") {
            let _ = base64_decode(text.as_bytes());
        }
    }
}
