//! `hmac64`, `hashkey` and `hmac_hash` (spec §3.3, §3.5, §3.6).
//!
//! `hmac64` is written out here rather than borrowed from an MD5 crate: skynet
//! runs the 64 MD5 steps on a block it builds itself and skips MD5's final
//! feed-forward, which no MD5 API exposes directly.

use super::Key;

/// MD5's initial state (RFC 1321), the starting point of `hmac64`.
const IV: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// RFC 1321's table T: `K[i] = floor(|sin(i + 1)| · 2^32)`.
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, //
    0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501, //
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, //
    0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821, //
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, //
    0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8, //
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, //
    0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, //
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, //
    0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, //
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, //
    0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, //
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, //
    0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1, //
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, //
    0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391, //
];

/// MD5's per-round rotation amounts; step `i` uses `S[i / 16][i % 4]`.
const S: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

/// skynet's `hmac64(x, y)`: one MD5 compression without feed-forward.
///
/// The message block is `(x[4..8] ‖ x[0..4] ‖ y[4..8] ‖ y[0..4]) × 4`, and the
/// result is `LE32(c ⊕ d) ‖ LE32(a ⊕ b)` of the raw final state. Not
/// symmetric; the protocols always pass the secret as `y`.
pub fn hmac64(x: &Key, y: &Key) -> Key {
    // The 16 message words repeat with period 4, so M[j] = m[j % 4].
    let m = [word(x, 4), word(x, 0), word(y, 4), word(y, 0)];
    let [mut a, mut b, mut c, mut d] = IV;
    // One loop per round so each has a fixed boolean function and the
    // compiler can unroll it; the rotation (a, b, c, d) ← (d, b', b, c).
    let mut step = |i: usize, f: fn(u32, u32, u32) -> u32, j: usize| {
        let sum = a
            .wrapping_add(f(b, c, d))
            .wrapping_add(K[i])
            .wrapping_add(m[j % 4]);
        let next_b = b.wrapping_add(sum.rotate_left(S[i / 16][i % 4]));
        (a, b, c, d) = (d, next_b, b, c);
    };
    for i in 0..16 {
        step(i, |b, c, d| (b & c) | (!b & d), i);
    }
    for i in 16..32 {
        step(i, |b, c, d| (d & b) | (!d & c), 5 * i + 1);
    }
    for i in 32..48 {
        step(i, |b, c, d| b ^ c ^ d, 3 * i + 5);
    }
    for i in 48..64 {
        step(i, |b, c, d| c ^ (b | !d), 7 * i);
    }
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(c ^ d).to_le_bytes());
    out[4..].copy_from_slice(&(a ^ b).to_le_bytes());
    out
}

/// skynet's `hashkey(text)`: a DJB-style hash and a JS-style hash, each 32
/// bits, as `LE32(h1) ‖ LE32(h2)`. Accepts any length including empty.
pub fn hashkey(text: &[u8]) -> Key {
    let mut h1: u32 = 5381;
    let mut h2: u32 = 1_315_423_911;
    for &c in text {
        let c = u32::from(c);
        h1 = h1.wrapping_mul(33).wrapping_add(c);
        h2 ^= (h2 << 5).wrapping_add(c).wrapping_add(h2 >> 2);
    }
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&h1.to_le_bytes());
    out[4..].copy_from_slice(&h2.to_le_bytes());
    out
}

/// skynet's `hmac_hash(key, text) = hmac64(hashkey(text), key)`, the MAC on
/// the message gate's handshake line (key = the login secret).
pub fn hmac_hash(key: &Key, text: &[u8]) -> Key {
    hmac64(&hashkey(text), key)
}

/// The little-endian u32 at `key[at..at + 4]` (`at` is 0 or 4).
fn word(key: &Key, at: usize) -> u32 {
    u32::from_le_bytes([key[at], key[at + 1], key[at + 2], key[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_table_is_rfc1321_t() {
        for (i, &k) in K.iter().enumerate() {
            let expected = ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32;
            assert_eq!(k, expected, "K[{i}]");
        }
    }

    #[test]
    fn documented_examples() {
        assert_eq!(
            hmac64(b"12345678", b"abcdefgh"),
            [0xac, 0x9f, 0xfd, 0xa9, 0x54, 0x7a, 0x02, 0x7a]
        );
        assert_eq!(
            hashkey(b""),
            [0x05, 0x15, 0x00, 0x00, 0xa7, 0xc6, 0x67, 0x4e]
        );
        assert_eq!(
            hashkey(b"a"),
            [0x06, 0xb6, 0x02, 0x00, 0x4d, 0x00, 0xf5, 0xae]
        );
        assert_eq!(
            hashkey(b"aGVsbG8=@c2FtcGxl#MQ==:1"),
            [0x97, 0xc9, 0xf1, 0x5b, 0x0b, 0xef, 0x6f, 0x13]
        );
    }

    #[test]
    fn hmac64_is_not_symmetric() {
        assert_ne!(
            hmac64(b"12345678", b"abcdefgh"),
            hmac64(b"abcdefgh", b"12345678")
        );
    }
}
