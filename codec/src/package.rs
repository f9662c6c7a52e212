//! Package framing of the message gate (spec §2.1): every message in both
//! directions is `BE16(n) ‖ payload` with `0 ≤ n ≤ 65535`.
//!
//! [`PackageCodec`] is the tokio-util `Decoder`/`Encoder` for it. Decoding is
//! zero copy: a frame is `split_to` off the read buffer and frozen, so the
//! payload shares the buffer's allocation. Inbound oversize cannot happen
//! (16 bits cannot say more than 65535); outbound, a payload that does not
//! fit is refused with [`FrameError::TooLarge`] and nothing is written —
//! never truncated, because a truncated package would desynchronise the
//! stream.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest payload a package can carry (the header is 16 bits).
pub const MAX_PAYLOAD: usize = 65535;

/// Bytes a sealed package (`docs/PROTOCOL.md` §3.2) carries beyond the
/// plaintext length its header gives: the AEAD tag.
pub const SEAL_TAG_LEN: usize = 16;

/// Size of the length header in front of every package.
pub const HEADER_LEN: usize = 2;

/// Errors of the package layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A payload of `len` bytes does not fit into one package
    /// (`len > 65535`). `len` is always the length of the package *payload*
    /// that would have been framed, including any request/response trailer.
    #[error("package payload of {len} bytes exceeds {MAX_PAYLOAD}")]
    TooLarge {
        /// Payload length that was refused.
        len: usize,
    },
    /// The underlying transport failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// tokio-util codec for BE16 length-prefixed packages.
///
/// Decoding yields each payload as [`Bytes`] (empty packages are delivered as
/// empty `Bytes`, spec §2.1). Encoding takes a payload and writes header and
/// payload.
///
/// At end of stream a partial package is silently discarded
/// ([`Decoder::decode_eof`] returns `Ok(None)`), as skynet does (spec §2.1).
#[derive(Debug, Default, Clone)]
pub struct PackageCodec;

impl PackageCodec {
    /// A new codec (it has no state; this is the same as `PackageCodec`).
    pub const fn new() -> Self {
        PackageCodec
    }
}

/// Takes the next complete package's payload off the front of `src`, or
/// `None` when `src` holds only part of one (then room for the rest is
/// reserved, bounded by the 16-bit header). The same as
/// [`PackageCodec`]'s `decode`, for callers without tokio-util.
pub fn decode_package(src: &mut BytesMut) -> Option<Bytes> {
    let Some(header) = src.get(..HEADER_LEN) else {
        // Partial header: ask for the rest of it only, nothing more is known.
        src.reserve(HEADER_LEN - src.len());
        return None;
    };
    let n = usize::from(u16::from_be_bytes([header[0], header[1]]));
    let frame_len = HEADER_LEN + n;
    if src.len() < frame_len {
        // The limit is implied by the 16-bit header, so reserving the
        // whole frame is bounded by 65537 bytes.
        src.reserve(frame_len - src.len());
        return None;
    }
    src.advance(HEADER_LEN);
    Some(src.split_to(n).freeze())
}

impl Decoder for PackageCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        Ok(decode_package(src))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                // Spec §2.1: on close, a partial package is discarded.
                src.clear();
                Ok(None)
            }
        }
    }
}

impl Encoder<Bytes> for PackageCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_package(&item, dst)
    }
}

impl Encoder<&[u8]> for PackageCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_package(item, dst)
    }
}

/// Appends one package (`BE16(len) ‖ payload`) to `dst`.
///
/// A payload longer than [`MAX_PAYLOAD`] is refused with
/// [`FrameError::TooLarge`]; `dst` is then left unchanged.
pub fn encode_package(payload: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
    let header = header_for(payload.len())?;
    dst.reserve(HEADER_LEN + payload.len());
    dst.put_u16(header);
    dst.put_slice(payload);
    Ok(())
}

/// The header value for a payload of `len` bytes, or `TooLarge`.
pub(crate) fn header_for(len: usize) -> Result<u16, FrameError> {
    u16::try_from(len).map_err(|_| FrameError::TooLarge { len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut PackageCodec, buf: &mut BytesMut) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(buf).unwrap() {
            out.push(frame);
        }
        out
    }

    #[test]
    fn decodes_one_package() {
        let mut buf = BytesMut::from(&b"\x00\x04echo"[..]);
        let frames = decode_all(&mut PackageCodec, &mut buf);
        assert_eq!(frames, vec![Bytes::from_static(b"echo")]);
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_header_and_payload_wait() {
        let mut codec = PackageCodec;
        let mut buf = BytesMut::new();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\x00");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= 2);
        buf.extend_from_slice(b"\x05ab");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        // The codec reserved room for the whole frame.
        assert!(buf.capacity() >= 7);
        assert_eq!(buf.len(), 4, "nothing consumed while partial");
        buf.extend_from_slice(b"cde");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"abcde"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn empty_package_is_delivered() {
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x01x\x00\x00"[..]);
        let frames = decode_all(&mut PackageCodec, &mut buf);
        assert_eq!(
            frames,
            vec![Bytes::new(), Bytes::from_static(b"x"), Bytes::new()]
        );
    }

    #[test]
    fn many_frames_per_buffer() {
        let mut buf = BytesMut::new();
        for i in 0..100u8 {
            encode_package(&vec![i; usize::from(i)], &mut buf).unwrap();
        }
        let frames = decode_all(&mut PackageCodec, &mut buf);
        assert_eq!(frames.len(), 100);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.len(), i);
            assert!(f.iter().all(|&b| usize::from(b) == i));
        }
    }

    #[test]
    fn decode_is_zero_copy() {
        let mut buf = BytesMut::from(&b"\x00\x03abc\x00\x02de"[..]);
        let base = buf.as_ptr() as usize;
        let a = PackageCodec.decode(&mut buf).unwrap().unwrap();
        let b = PackageCodec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(a.as_ptr() as usize, base + 2);
        assert_eq!(b.as_ptr() as usize, base + 7);
    }

    #[test]
    fn max_payload_roundtrip_and_limit() {
        let payload = vec![0x5a; MAX_PAYLOAD];
        let mut buf = BytesMut::new();
        encode_package(&payload, &mut buf).unwrap();
        assert_eq!(&buf[..2], b"\xff\xff");
        assert_eq!(buf.len(), MAX_PAYLOAD + 2);
        let frame = PackageCodec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.len(), MAX_PAYLOAD);

        let too_big = vec![0u8; MAX_PAYLOAD + 1];
        let mut out = BytesMut::from(&b"keep"[..]);
        let err = encode_package(&too_big, &mut out).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 65536 }));
        assert_eq!(&out[..], b"keep", "nothing written on error");
        let err = Encoder::<Bytes>::encode(&mut PackageCodec, Bytes::from(too_big), &mut out)
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 65536 }));
        assert_eq!(
            err.to_string(),
            "package payload of 65536 bytes exceeds 65535"
        );
    }

    #[test]
    fn encoders_write_header_and_payload() {
        let mut out = BytesMut::new();
        Encoder::<&[u8]>::encode(&mut PackageCodec, b"200 OK", &mut out).unwrap();
        Encoder::<Bytes>::encode(&mut PackageCodec, Bytes::new(), &mut out).unwrap();
        assert_eq!(&out[..], b"\x00\x06200 OK\x00\x00");
    }

    #[test]
    fn eof_discards_partial_package() {
        let mut codec = PackageCodec;
        let mut buf = BytesMut::from(&b"\x00\x01a\x00\x05ab"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap().unwrap(), &b"a"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&b"\x00"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }
}
