//! Line framing of the login server (spec §2.2): lines end in a single LF.
//!
//! Input is split **only** on LF; the returned line excludes the LF but keeps
//! any CR (a CRLF client therefore fails the following base64 decode and
//! gets `401`, exactly as against skynet). Output lines end in LF only.
//!
//! skynet closes the connection as soon as more than 8192 received bytes are
//! waiting to be consumed. [`LineCodec`] applies the same rule each time it
//! is asked to decode: a tokio-util `FramedRead` calls `decode` right after
//! every read and then again after every frame it took, so the first call
//! after data arrived sees the whole unconsumed buffer, as skynet's check
//! does. The decoder never reserves buffer space itself, so it never makes a
//! line grow beyond the limit.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Errors of the line layer.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// More than `max_buffered` bytes are waiting without being consumed
    /// (skynet closes the connection without a status line).
    #[error("more buffered line data than the limit allows")]
    TooLong,
    /// A line handed to the encoder contains an LF; it would be read as two
    /// lines by the peer.
    #[error("line to send contains an LF")]
    EmbeddedNewline,
    /// The underlying transport failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// tokio-util codec for LF-terminated lines with skynet's buffer limit.
///
/// Decoding yields each line without its LF (any CR stays). Encoding appends
/// the LF.
///
/// At end of stream a partial line (bytes after the last LF) is silently
/// discarded: [`Decoder::decode_eof`] returns `Ok(None)` and clears the
/// buffer, because skynet drops a partial line when the peer closes.
#[derive(Debug, Clone)]
pub struct LineCodec {
    /// Largest number of unconsumed bytes allowed (the line plus its LF,
    /// plus anything behind it).
    max_buffered: usize,
    /// How far the buffer was already searched for an LF without finding
    /// one, so a line arriving in many small reads is scanned once (O(n)).
    next_index: usize,
}

impl LineCodec {
    /// skynet's limit: 8191 characters + LF is the longest readable line.
    pub const DEFAULT_MAX_BUFFERED: usize = 8192;

    /// A codec with skynet's limit ([`LineCodec::DEFAULT_MAX_BUFFERED`]).
    pub const fn new() -> Self {
        Self::with_limit(Self::DEFAULT_MAX_BUFFERED)
    }

    /// A codec that fails once more than `max_buffered` bytes are waiting.
    pub const fn with_limit(max_buffered: usize) -> Self {
        LineCodec {
            max_buffered,
            next_index: 0,
        }
    }

    /// The configured limit.
    pub const fn max_buffered(&self) -> usize {
        self.max_buffered
    }
}

impl Default for LineCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = LineError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, LineError> {
        // Checked before looking for a line: skynet closes when the data
        // that arrived pushes the buffer over the limit, even if a complete
        // line is in it.
        if src.len() > self.max_buffered {
            return Err(LineError::TooLong);
        }
        let start = self.next_index.min(src.len());
        match src[start..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let lf = start + offset;
                self.next_index = 0;
                let mut line = src.split_to(lf + 1);
                line.truncate(lf);
                Ok(Some(line.freeze()))
            }
            None => {
                self.next_index = src.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, LineError> {
        match self.decode(src)? {
            Some(line) => Ok(Some(line)),
            None => {
                // Spec §2.2 / §2.1: a partial line is discarded on close.
                src.clear();
                self.next_index = 0;
                Ok(None)
            }
        }
    }
}

impl Encoder<&[u8]> for LineCodec {
    type Error = LineError;

    fn encode(&mut self, line: &[u8], dst: &mut BytesMut) -> Result<(), LineError> {
        encode_line(line, dst)
    }
}

impl Encoder<Bytes> for LineCodec {
    type Error = LineError;

    fn encode(&mut self, line: Bytes, dst: &mut BytesMut) -> Result<(), LineError> {
        encode_line(&line, dst)
    }
}

/// Appends `line ‖ LF` to `dst`; refuses a line that contains an LF
/// (`dst` is then unchanged). The length is not limited here: the sender
/// decides what it sends, the receiver's [`LineCodec`] enforces its limit.
pub fn encode_line(line: &[u8], dst: &mut BytesMut) -> Result<(), LineError> {
    if line.contains(&b'\n') {
        return Err(LineError::EmbeddedNewline);
    }
    dst.reserve(line.len() + 1);
    dst.put_slice(line);
    dst.put_u8(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut LineCodec, buf: &mut BytesMut) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(line) = codec.decode(buf).unwrap() {
            out.push(line);
        }
        out
    }

    #[test]
    fn splits_on_lf_only_and_keeps_cr() {
        let mut buf = BytesMut::from(&b"abc\nde\r\n\n\rx\ry\nrest"[..]);
        let lines = decode_all(&mut LineCodec::new(), &mut buf);
        assert_eq!(
            lines,
            vec![
                Bytes::from_static(b"abc"),
                Bytes::from_static(b"de\r"),
                Bytes::new(),
                Bytes::from_static(b"\rx\ry"),
            ]
        );
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn partial_reads_resume_scanning() {
        let mut codec = LineCodec::new();
        let mut buf = BytesMut::new();
        for chunk in [&b"ab"[..], b"c", b"", b"d\r"] {
            buf.extend_from_slice(chunk);
            assert!(codec.decode(&mut buf).unwrap().is_none());
            assert_eq!(codec.next_index, buf.len());
        }
        buf.extend_from_slice(b"\nxy");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"abcd\r"[..]);
        assert_eq!(codec.next_index, 0);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"z\n");
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"xyz"[..]);
    }

    #[test]
    fn limit_matches_skynet() {
        // 8191 characters + LF = 8192 bytes buffered: still a line.
        let mut at_limit = BytesMut::from(&vec![b'A'; 8191][..]);
        at_limit.put_u8(b'\n');
        let line = LineCodec::new().decode(&mut at_limit).unwrap().unwrap();
        assert_eq!(line.len(), 8191);

        // 8192 characters + LF = 8193 bytes: over the limit.
        let mut over = BytesMut::from(&vec![b'A'; 8192][..]);
        over.put_u8(b'\n');
        assert!(matches!(
            LineCodec::new().decode(&mut over),
            Err(LineError::TooLong)
        ));

        // 8192 characters without LF yet: waiting, not an error.
        let mut codec = LineCodec::new();
        let mut waiting = BytesMut::from(&vec![b'A'; 8192][..]);
        assert!(codec.decode(&mut waiting).unwrap().is_none());
        waiting.put_u8(b'\n');
        assert!(matches!(
            codec.decode(&mut waiting),
            Err(LineError::TooLong)
        ));
    }

    #[test]
    fn limit_counts_everything_buffered() {
        let mut codec = LineCodec::with_limit(8);
        let mut buf = BytesMut::from(&b"ab\ncdefgh"[..]);
        assert!(matches!(codec.decode(&mut buf), Err(LineError::TooLong)));
        let mut buf = BytesMut::from(&b"ab\ncdefg"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &b"ab"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(codec.max_buffered(), 8);
        assert_eq!(LineCodec::default().max_buffered(), 8192);
    }

    #[test]
    fn eof_discards_partial_line() {
        let mut codec = LineCodec::new();
        let mut buf = BytesMut::from(&b"one\ntwo"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap().unwrap(), &b"one"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
        assert_eq!(codec.next_index, 0);
    }

    #[test]
    fn encoder_appends_lf_and_refuses_embedded_lf() {
        let mut codec = LineCodec::new();
        let mut out = BytesMut::new();
        Encoder::<&[u8]>::encode(&mut codec, b"200 MQ==", &mut out).unwrap();
        Encoder::<Bytes>::encode(&mut codec, Bytes::from_static(b"x\r"), &mut out).unwrap();
        Encoder::<&[u8]>::encode(&mut codec, b"", &mut out).unwrap();
        assert_eq!(&out[..], b"200 MQ==\nx\r\n\n");
        let err = Encoder::<&[u8]>::encode(&mut codec, b"a\nb", &mut out).unwrap_err();
        assert!(matches!(err, LineError::EmbeddedNewline));
        assert_eq!(&out[..], b"200 MQ==\nx\r\n\n", "nothing written on error");
    }

    #[test]
    fn decode_is_zero_copy() {
        let mut buf = BytesMut::from(&b"abc\ndef\n"[..]);
        let base = buf.as_ptr() as usize;
        let mut codec = LineCodec::new();
        let a = codec.decode(&mut buf).unwrap().unwrap();
        let b = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(a.as_ptr() as usize, base);
        assert_eq!(b.as_ptr() as usize, base + 4);
    }
}
