//! Helpers shared by the fuzz targets.

/// Splits fuzzer input into TCP-like reads: the first byte says how many
/// of the following bytes are chunk lengths (0–15); those lengths (1–256,
/// used cyclically) then cut the rest of the input. With no lengths the
/// whole rest is one read.
pub fn reads(data: &[u8]) -> Vec<&[u8]> {
    let Some((&first, rest)) = data.split_first() else {
        return Vec::new();
    };
    let n = usize::from(first % 16).min(rest.len());
    let (lengths, mut stream) = rest.split_at(n);
    if lengths.is_empty() {
        return vec![stream];
    }
    let mut out = Vec::new();
    let mut i = 0;
    while !stream.is_empty() {
        let len = (usize::from(lengths[i % lengths.len()]) + 1).min(stream.len());
        let (head, tail) = stream.split_at(len);
        out.push(head);
        stream = tail;
        i += 1;
    }
    out
}

/// Length-prefixed protobuf links (`proto::framing`) driven as a link's
/// reader drives them, with the checks every frames target makes.
pub mod frames {
    use std::fmt::Debug;

    use bytes::BytesMut;
    use prost::Message;
    use proto::framing::{FrameError, HEADER_LEN};
    use tokio_util::codec::{Decoder, Encoder};

    /// One direction's decoder, driven the way a link's reader drives it.
    pub struct Side<C> {
        codec: C,
        buf: BytesMut,
        /// Stopped by a decode error, as the link would be.
        failed: bool,
    }

    impl<C: Decoder<Error = FrameError>> Side<C> {
        pub fn new(codec: C) -> Self {
            Side {
                codec,
                buf: BytesMut::new(),
                failed: false,
            }
        }

        /// Appends one read and decodes every whole frame, checking that each
        /// step follows the length header.
        pub fn feed(&mut self, read: &[u8]) -> Vec<C::Item> {
            let mut frames = Vec::new();
            if self.failed {
                return frames;
            }
            self.buf.extend_from_slice(read);
            loop {
                let before = self.buf.len();
                let header = self
                    .buf
                    .get(..HEADER_LEN)
                    .map(|h| u32::from_be_bytes(h.try_into().expect("four bytes")) as usize);
                match self.codec.decode(&mut self.buf) {
                    Ok(Some(frame)) => {
                        let len = header.expect("a frame has a header");
                        assert_eq!(before - self.buf.len(), HEADER_LEN + len);
                        frames.push(frame);
                    }
                    Ok(None) => {
                        assert_eq!(self.buf.len(), before, "a partial frame is not consumed");
                        if let Some(len) = header {
                            assert!(before < HEADER_LEN + len);
                        }
                        return frames;
                    }
                    Err(FrameError::TooLarge { len, max }) => {
                        assert_eq!(Some(len), header);
                        assert!(len > max);
                        self.failed = true;
                        return frames;
                    }
                    Err(FrameError::Decode(_)) => {
                        self.failed = true;
                        return frames;
                    }
                    Err(other) => panic!("unexpected error from decode: {other}"),
                }
            }
        }

        /// End of stream: an error exactly when a partial frame is left.
        pub fn finish(mut self) {
            if self.failed {
                return;
            }
            let partial = !self.buf.is_empty();
            match self.codec.decode_eof(&mut self.buf) {
                Ok(None) => assert!(!partial, "a partial frame at the end must be an error"),
                Ok(Some(_)) => panic!("every whole frame was decoded already"),
                Err(FrameError::Io(_)) => assert!(partial),
                Err(other) => panic!("unexpected error at end of stream: {other}"),
            }
        }
    }

    /// Re-encodes `frame` and decodes it again: the same message, taking
    /// exactly the encoded bytes. (Not the same bytes as the input: protobuf
    /// allows unknown fields, overlong varints and explicit defaults, which the
    /// encoder drops.)
    pub fn round_trip<M, E, D>(frame: &M, enc: &mut E, dec: &mut D)
    where
        M: Message + Clone + PartialEq + Debug,
        E: Encoder<M, Error = FrameError>,
        D: Decoder<Item = M, Error = FrameError>,
    {
        let mut buf = BytesMut::new();
        enc.encode(frame.clone(), &mut buf)
            .expect("a decoded frame re-encodes");
        assert_eq!(buf.len(), HEADER_LEN + frame.encoded_len());
        let again = dec
            .decode(&mut buf)
            .expect("a re-encoded frame decodes")
            .expect("a whole frame");
        assert_eq!(&again, frame);
        assert!(buf.is_empty());
    }
}
