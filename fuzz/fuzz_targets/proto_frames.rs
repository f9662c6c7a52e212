//! The gate ↔ service framing (`proto::framing`) on arbitrary bytes in
//! arbitrary reads, through both directions' decoders at once (the
//! service's, decoding `GateFrame`s, and the gate's, decoding
//! `ServiceFrame`s), with a frame limit taken from the input. Decoding
//! never panics and follows the length header exactly: a frame consumes
//! `4 + len` bytes, a partial one nothing, a header over the limit is
//! `TooLarge` with that length; a malformed body is a `Decode` error, after
//! which that direction stops (a real link closes). Every decoded frame
//! re-encodes (with the other side's codec) and decodes to the same
//! message, and so does a request payload that parses as a route envelope.
//! At the end of the stream, `decode_eof` fails exactly when a partial
//! frame is left.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::backend::gate_frame;
use proto::framing::{DEFAULT_MAX_FRAME_LEN, FrameError, GateCodec, HEADER_LEN, ServiceCodec};
use proto::route::RouteEnvelope;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    // Small limits make `TooLarge` reachable; 0 is the default (1 MiB).
    let max = match limit {
        0 => DEFAULT_MAX_FRAME_LEN,
        n => usize::from(n) * 4,
    };
    let mut service = Side::new(ServiceCodec::with_max_frame_len(max));
    let mut gate = Side::new(GateCodec::with_max_frame_len(max));
    for read in fuzz::reads(rest) {
        for frame in service.feed(read) {
            round_trip(
                &frame,
                &mut GateCodec::with_max_frame_len(usize::MAX),
                &mut ServiceCodec::with_max_frame_len(usize::MAX),
            );
            if let Some(gate_frame::Kind::Request(req)) = &frame.kind
                && let Ok(env) = RouteEnvelope::decode(req.payload.clone())
            {
                let again = RouteEnvelope::decode(env.encode_to_vec().as_slice())
                    .expect("a re-encoded envelope decodes");
                assert_eq!(again, env);
            }
        }
        for frame in gate.feed(read) {
            round_trip(
                &frame,
                &mut ServiceCodec::with_max_frame_len(usize::MAX),
                &mut GateCodec::with_max_frame_len(usize::MAX),
            );
        }
    }
    service.finish();
    gate.finish();
});

/// One direction's decoder, driven the way a link's reader drives it.
struct Side<C> {
    codec: C,
    buf: BytesMut,
    /// Stopped by a decode error, as the link would be.
    failed: bool,
}

impl<C: Decoder<Error = FrameError>> Side<C> {
    fn new(codec: C) -> Self {
        Side {
            codec,
            buf: BytesMut::new(),
            failed: false,
        }
    }

    /// Appends one read and decodes every whole frame, checking that each
    /// step follows the length header.
    fn feed(&mut self, read: &[u8]) -> Vec<C::Item> {
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
    fn finish(mut self) {
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
fn round_trip<M, E, D>(frame: &M, enc: &mut E, dec: &mut D)
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
