//! The sealed gate channel (`docs/PROTOCOL.md` §3.2): every package after
//! an x25519 session's gate handshake sealed with ChaCha20-Poly1305.
//!
//! A client asks for it with `seal=1` in the handshake's extension field;
//! the handshake MAC then covers `username ":" index ":seal"`, so a relay
//! can neither strip nor add the request. Both ends derive one key per
//! direction from the session's gate secret and the handshake's index (as
//! sent), so every connection of a session has fresh keys:
//!
//! ```text
//! prk      = HKDF-SHA256-Extract(salt = "gatelogin seal v1", ikm = gate_secret)
//! key_c2s  = HKDF-SHA256-Expand(prk, "c2s:" ‖ index, 32)
//! key_s2c  = HKDF-SHA256-Expand(prk, "s2c:" ‖ index, 32)
//! nonce_n  = 0x00000000 ‖ BE64(n)        n = 0, 1, 2, … per direction
//! ```
//!
//! The `n`-th package a side sends after the handshake (the gate: after
//! its `200 OK`) is `BE16(len(P)) ‖ ChaCha20-Poly1305(key, nonce_n, P)`,
//! the ciphertext followed by its 16-byte tag, with no associated data.
//! The header is the plaintext's length, so every package that fits the
//! plain protocol (up to 65535 bytes) fits sealed. Over WebSocket a sealed
//! package's message is the ciphertext and its tag.
//!
//! The nonce is a counter the receiver keeps too: a package that was
//! altered, dropped, replayed or reordered fails to open, and the receiver
//! closes the connection.
//!
//! Nothing here allocates per package but [`seal_packages`] when one call
//! seals several packages at once.
//!
//! The AEAD is ring's ChaCha20-Poly1305 (BoringSSL's assembly), not the
//! RustCrypto crate the login's token uses: every request and answer pays
//! it, and on the gate's packages (tens of bytes) it costs about a seventh
//! (`cargo bench -p loginproto --bench seal`: 195 ns against 1.48 µs for
//! 20 bytes on a 2-core x86-64 with AVX2, 457 ns against 2.24 µs for 517).
//! ring is in the build anyway, as rustls's provider.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hkdf::Hkdf;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::Sha256;

use crate::modern::Key32;

/// The HKDF salt the channel keys are extracted with.
pub const SALT: &[u8] = b"gatelogin seal v1";
/// The HKDF `info` prefix of the client-to-gate key (the index follows).
pub const INFO_C2S: &[u8] = b"c2s:";
/// The HKDF `info` prefix of the gate-to-client key (the index follows).
pub const INFO_S2C: &[u8] = b"s2c:";
/// The handshake MAC of a sealed session covers `username ":" index`
/// followed by this.
pub const SIGNED_SUFFIX: &[u8] = b":seal";
/// Bytes a sealed package has beyond its plaintext: the tag.
pub const TAG_LEN: usize = codec::package::SEAL_TAG_LEN;
/// Bytes of a package's length header.
const HEADER_LEN: usize = 2;

/// Why a package could not be opened or sealed. Either way the connection
/// is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The package did not authenticate: altered, dropped, replayed or
    /// reordered on the way, or sealed under another key.
    #[error("a sealed package failed to open")]
    Open,
    /// 2^64 - 1 packages went one way: the counter would repeat a nonce.
    #[error("the sealed channel's counter is exhausted")]
    Exhausted,
    /// A sealed package (WebSocket message) shorter than its tag.
    #[error("a sealed package is shorter than its tag")]
    Short,
}

/// One direction of a sealed channel: its key and the counter of the next
/// package. The key bytes are wiped when dropped; `Debug` shows only the
/// counter.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Direction {
    key: Key32,
    next: u64,
    /// The AEAD under `key`, made once (ring keeps its own copy).
    #[zeroize(skip)]
    aead: LessSafeKey,
}

impl PartialEq for Direction {
    fn eq(&self, other: &Direction) -> bool {
        self.key == other.key && self.next == other.next
    }
}

impl Eq for Direction {}

impl fmt::Debug for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direction")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Direction {
    /// A direction under `key` whose next package has counter `next` (a
    /// fresh one starts at 0; a moved connection goes on where it was).
    pub fn from_parts(key: Key32, next: u64) -> Direction {
        // A 32-byte key is what ChaCha20-Poly1305 takes: this cannot fail.
        let aead = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte ChaCha20 key"),
        );
        Direction { key, next, aead }
    }

    /// The key (to carry the channel to another process).
    pub fn key(&self) -> &Key32 {
        &self.key
    }

    /// The counter of the next package.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The nonce of package `n`.
    fn nonce(n: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        Nonce::assume_unique_for_key(nonce)
    }

    /// The counter of the next package, taken.
    fn take(&mut self) -> Result<u64, SealError> {
        let n = self.next;
        self.next = n.checked_add(1).ok_or(SealError::Exhausted)?;
        Ok(n)
    }

    /// Encrypts `data` in place as package `n` and returns its tag.
    fn seal_at(&self, n: u64, data: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        // The only error is a plaintext beyond ChaCha20's 256 GiB.
        let tag = self
            .aead
            .seal_in_place_separate_tag(Self::nonce(n), Aad::empty(), data)
            .map_err(|_| SealError::Exhausted)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Encrypts `data` in place as the next package and returns its tag.
    pub fn seal_in_place(&mut self, data: &mut [u8]) -> Result<[u8; TAG_LEN], SealError> {
        let n = self.take()?;
        self.seal_at(n, data)
    }

    /// Opens the next package in place: `data` is its ciphertext, `tag` its
    /// tag. On failure the counter is not taken (the channel is over
    /// anyway) and `data` is garbage.
    pub fn open_in_place(&mut self, data: &mut [u8], tag: &[u8]) -> Result<(), SealError> {
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| SealError::Short)?;
        let n = self.next;
        if n == u64::MAX {
            return Err(SealError::Exhausted);
        }
        self.aead
            .open_in_place_separate_tag(Self::nonce(n), Aad::empty(), Tag::from(tag), data, 0..)
            .map_err(|_| SealError::Open)?;
        self.next = n + 1;
        Ok(())
    }

    /// Opens one sealed package's body (`ciphertext ‖ tag`, as
    /// [`decode_sealed`] or a WebSocket message gives it) and returns the
    /// plaintext, in the same memory.
    pub fn open_body(&mut self, mut body: BytesMut) -> Result<Bytes, SealError> {
        let len = body.len().checked_sub(TAG_LEN).ok_or(SealError::Short)?;
        let (data, tag) = body.split_at_mut(len);
        self.open_in_place(data, tag)?;
        body.truncate(len);
        Ok(body.freeze())
    }
}

/// Both directions of one connection's channel, from one side's point of
/// view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// What this side seals with.
    pub send: Direction,
    /// What this side opens with.
    pub recv: Direction,
}

impl Channel {
    /// The gate's side of the channel of the handshake with `index` (the
    /// index text exactly as sent) under `gate_secret`.
    pub fn gate(gate_secret: &Key32, index: &[u8]) -> Channel {
        let (c2s, s2c) = keys(gate_secret, index);
        Channel {
            send: Direction::from_parts(s2c, 0),
            recv: Direction::from_parts(c2s, 0),
        }
    }

    /// The client's side of the same channel.
    pub fn client(gate_secret: &Key32, index: &[u8]) -> Channel {
        let (c2s, s2c) = keys(gate_secret, index);
        Channel {
            send: Direction::from_parts(c2s, 0),
            recv: Direction::from_parts(s2c, 0),
        }
    }
}

/// `(key_c2s, key_s2c)` of the handshake with `index` (see the module
/// docs).
pub fn keys(gate_secret: &Key32, index: &[u8]) -> (Key32, Key32) {
    let hkdf = Hkdf::<Sha256>::new(Some(SALT), gate_secret);
    let expand = |prefix: &[u8]| {
        let mut key = [0u8; 32];
        // 32 bytes is one block: far below HKDF's limit.
        hkdf.expand_multi_info(&[prefix, index], &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    };
    (expand(INFO_C2S), expand(INFO_S2C))
}

/// Seals, in place, the whole plain packages (`BE16(len) ‖ payload`) in
/// `buf[start..]`, in order, with `dir`: each gets its tag after its
/// ciphertext, its header unchanged. One package is sealed without a copy;
/// several are moved apart to make room for their tags.
///
/// # Panics
///
/// If `buf[start..]` does not hold whole packages (a caller's bug: every
/// writer of packages writes whole ones).
pub fn seal_packages(
    dir: &mut Direction,
    buf: &mut BytesMut,
    start: usize,
) -> Result<(), SealError> {
    let end = buf.len();
    let (mut at, mut count, mut first_len) = (start, 0usize, 0);
    while at < end {
        let len = usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
        if count == 0 {
            first_len = len;
        }
        count += 1;
        at += HEADER_LEN + len;
    }
    assert_eq!(at, end, "seal_packages: a partial package");
    match count {
        0 => return Ok(()),
        1 => {
            let data = &mut buf[start + HEADER_LEN..start + HEADER_LEN + first_len];
            let tag = dir.seal_in_place(data)?;
            buf.extend_from_slice(&tag);
            return Ok(());
        }
        _ => {}
    }
    let mut packages = Vec::with_capacity(count);
    let mut at = start;
    while at < end {
        let len = usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
        packages.push((at, len));
        at += HEADER_LEN + len;
    }
    // Counters in order, first package first.
    let first = dir.next;
    let count = packages.len() as u64;
    dir.next = first.checked_add(count).ok_or(SealError::Exhausted)?;
    buf.resize(end + TAG_LEN * packages.len(), 0);
    // From the last package back: each moves right by the tags of the
    // packages before it, never over one not yet moved.
    for (i, &(at, len)) in packages.iter().enumerate().rev() {
        let to = at + TAG_LEN * i;
        if to != at {
            buf.copy_within(at..at + HEADER_LEN + len, to);
        }
        let data = &mut buf[to + HEADER_LEN..to + HEADER_LEN + len];
        let tag = dir.seal_at(first + i as u64, data)?;
        let tag_at = to + HEADER_LEN + len;
        buf[tag_at..tag_at + TAG_LEN].copy_from_slice(&tag);
    }
    Ok(())
}

/// Appends `payload` to `buf` as the next sealed package of `dir`.
pub fn put_sealed(
    dir: &mut Direction,
    payload: &[u8],
    buf: &mut BytesMut,
) -> Result<(), SealError> {
    let len = u16::try_from(payload.len()).expect("a package payload is at most 65535 bytes");
    buf.reserve(HEADER_LEN + payload.len() + TAG_LEN);
    buf.put_u16(len);
    let at = buf.len();
    buf.extend_from_slice(payload);
    let tag = dir.seal_in_place(&mut buf[at..])?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// Takes one sealed package off the front of a byte stream: its body,
/// `ciphertext ‖ tag`, to open with [`Direction::open_body`]. `None` when
/// `src` does not hold a whole one yet (room for the rest is reserved,
/// bounded by the 16-bit header).
pub fn decode_sealed(src: &mut BytesMut) -> Option<BytesMut> {
    let Some(header) = src.get(..HEADER_LEN) else {
        src.reserve(HEADER_LEN - src.len());
        return None;
    };
    let body = usize::from(u16::from_be_bytes([header[0], header[1]])) + TAG_LEN;
    if src.len() < HEADER_LEN + body {
        src.reserve(HEADER_LEN + body - src.len());
        return None;
    }
    src.advance(HEADER_LEN);
    Some(src.split_to(body))
}

/// The length of the first unit in `buf` if it is a whole sealed package
/// (`BE16(len) ‖ ciphertext ‖ tag`): what a WebSocket writer cuts into one
/// message.
pub fn sealed_unit_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..HEADER_LEN)?;
    let unit = HEADER_LEN + usize::from(u16::from_be_bytes([header[0], header[1]])) + TAG_LEN;
    (buf.len() >= unit).then_some(unit)
}

#[cfg(test)]
mod tests;
