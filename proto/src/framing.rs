//! Framing of the gate ↔ service link: `BE32(len) ‖ protobuf(len bytes)`.
//!
//! The format is exactly tokio-util's `LengthDelimitedCodec` with its
//! defaults (4-byte big-endian length that counts only the body), so a peer
//! in another language frames with any "length-prefixed protobuf" helper.
//! [`FrameCodec`] does the length prefix itself instead of wrapping
//! `LengthDelimitedCodec`, for two reasons: it checks the length header
//! against the limit *before* buffering the body and reports the offending
//! length ([`FrameError::TooLarge`]), and it encodes a message straight into
//! the write buffer without an intermediate copy. A test proves both
//! directions interoperate with `LengthDelimitedCodec`.
//!
//! Decoding is zero copy: the body is split off the read buffer and frozen,
//! and prost slices `bytes` fields (payloads) out of it. A malformed body is
//! an error ([`FrameError::Decode`]), never a panic; after any decode error
//! the stream is out of step and the link must be closed.

use std::fmt;
use std::io;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::backend::{GateFrame, ServiceFrame};
use crate::control::{ControlFrame, LoginFrame};

/// Size of the length header in front of every frame.
pub const HEADER_LEN: usize = 4;

/// Default limit on a frame's body (1 MiB): far above any game message, low
/// enough that a corrupt or hostile length cannot make a peer allocate much.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// Errors of the framing layer.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame body of `len` bytes exceeds the limit `max`: on decode the
    /// peer announced it (nothing was buffered), on encode nothing was
    /// written.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The refused body length.
        len: usize,
        /// The codec's limit.
        max: usize,
    },
    /// The body is not a valid protobuf message of the expected type.
    #[error("malformed frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Encoding failed (cannot happen with a growable buffer; kept so no
    /// error is swallowed).
    #[error("cannot encode frame: {0}")]
    Encode(#[from] prost::EncodeError),
    /// The transport failed, or the stream ended inside a frame.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// tokio-util codec that decodes `D` and encodes `E`, each length-prefixed.
///
/// Use [`ServiceCodec`] on the service side and [`GateCodec`] on the gate
/// side, so each side can only send its own direction's frames.
pub struct FrameCodec<D, E> {
    max_frame_len: usize,
    // `fn` pointer: the codec holds no `D` or `E`, so it is Send + Sync
    // whatever they are.
    _types: PhantomData<fn(E) -> D>,
}

/// The codec of a service: reads [`GateFrame`]s, writes [`ServiceFrame`]s.
pub type ServiceCodec = FrameCodec<GateFrame, ServiceFrame>;

/// The codec of a gate: reads [`ServiceFrame`]s, writes [`GateFrame`]s.
pub type GateCodec = FrameCodec<ServiceFrame, GateFrame>;

/// The login node's side of a control link: decodes [`ControlFrame`]s,
/// encodes [`LoginFrame`]s.
pub type LoginCodec = FrameCodec<ControlFrame, LoginFrame>;

/// The gate's side of a control link: decodes [`LoginFrame`]s, encodes
/// [`ControlFrame`]s.
pub type ControlCodec = FrameCodec<LoginFrame, ControlFrame>;

impl<D, E> FrameCodec<D, E> {
    /// A codec with the [`DEFAULT_MAX_FRAME_LEN`] limit.
    pub fn new() -> Self {
        Self::with_max_frame_len(DEFAULT_MAX_FRAME_LEN)
    }

    /// A codec refusing bodies longer than `max` bytes in both directions
    /// (capped at `u32::MAX`, the most the header can say).
    pub fn with_max_frame_len(max: usize) -> Self {
        FrameCodec {
            max_frame_len: max.min(u32::MAX as usize),
            _types: PhantomData,
        }
    }

    /// The limit on a frame body, in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl<D, E> Default for FrameCodec<D, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D, E> Clone for FrameCodec<D, E> {
    fn clone(&self) -> Self {
        Self::with_max_frame_len(self.max_frame_len)
    }
}

impl<D, E> fmt::Debug for FrameCodec<D, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameCodec")
            .field("max_frame_len", &self.max_frame_len)
            .finish()
    }
}

impl<D: Message + Default + 'static, E> Decoder for FrameCodec<D, E> {
    type Item = D;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, FrameError> {
        // Stateless: the header stays in the buffer until the whole frame is
        // there, so a partial frame costs one 4-byte peek per read.
        let Some(header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut be = [0u8; HEADER_LEN];
        be.copy_from_slice(header);
        let len = u32::from_be_bytes(be) as usize;
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            // Limit checked above, so this reserve is bounded.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let body = src.split_to(len).freeze();
        Ok(Some(crate::link_frame::decode_body(body)?))
    }
}

impl<D, E: Message> Encoder<E> for FrameCodec<D, E> {
    type Error = FrameError;

    fn encode(&mut self, item: E, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = item.encoded_len();
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst.reserve(HEADER_LEN + len);
        // `len ≤ max_frame_len ≤ u32::MAX` (see `with_max_frame_len`).
        dst.put_u32(len as u32);
        // Room for it all was reserved above: `encode` would only measure
        // the message a second time to check that.
        item.encode_raw(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use tokio_util::codec::LengthDelimitedCodec;

    use super::*;
    use crate::backend::*;
    use crate::route::RouteEnvelope;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// One frame of every kind the gate sends, with no field at its default
    /// (so a field lost in encoding would show).
    fn gate_frames() -> Vec<GateFrame> {
        vec![
            RegisterAck {
                protocol_version: 1,
                gate_name: "sample".into(),
                link_id: 7,
                heartbeat_interval_ms: 5000,
                max_frame_len: 1 << 20,
                proof: b("proof of the gate"),
            }
            .into(),
            LinkChallenge {
                gate_nonce: Bytes::from(vec![7; 32]),
            }
            .into(),
            RegisterRefused {
                reason: RefuseReason::IncompatibleVersion as i32,
                message: "service speaks 2, gate speaks 1".into(),
                gate_protocol_version: 1,
            }
            .into(),
            Request {
                request_id: u64::MAX,
                uid: b("hello"),
                subid: b("1"),
                route: "chat.say".into(),
                payload: Bytes::from_static(&[0, 1, 2, 255]),
                deadline_ms: 3000,
            }
            .into(),
            SessionEvent {
                uid: b("hello"),
                subid: b("1"),
                kind: SessionEventKind::Kicked as i32,
                reason: "cheating".into(),
            }
            .into(),
            AuthRequest {
                request_id: 9,
                user: b("hello"),
                server: b("sample"),
                password: b("password"),
                peer_addr: "127.0.0.1:5000".into(),
                deadline_ms: 1000,
            }
            .into(),
            Ping {
                nonce: 3,
                sent_at_ms: 1_700_000_000_000,
            }
            .into(),
            Pong {
                nonce: 4,
                sent_at_ms: 1_700_000_000_001,
            }
            .into(),
            Goodbye {
                reason: "gate shutting down".into(),
            }
            .into(),
        ]
    }

    /// One frame of every kind a service sends, every `oneof` branch included.
    fn service_frames() -> Vec<ServiceFrame> {
        vec![
            Register {
                protocol_version: 1,
                service: "chat".into(),
                instance_id: "chat-1".into(),
                routes: vec!["chat.join".into(), "chat.say".into()],
                all_session_events: true,
                max_in_flight: 64,
                service_nonce: Bytes::from(vec![9; 32]),
                proof: b("proof of the service"),
            }
            .into(),
            Response::ok(1, b("pong")).into(),
            Response::ok(2, Bytes::new()).into(),
            Response::error(3, "no such room").into(),
            Push::to_user(b("hello"), b("hi")).into(),
            Push::to_users(vec![b("a"), b("b"), Bytes::new()], b("hi all")).into(),
            Push::to_all(b("server restarts in 5 min")).into(),
            Kick {
                uid: b("hello"),
                subid: b("1"),
                reason: "banned".into(),
            }
            .into(),
            Logout {
                uid: b("hello"),
                subid: b("1"),
            }
            .into(),
            AuthReply::allow(9, b("hello")).into(),
            AuthReply::deny(10, "wrong password").into(),
            Ping {
                nonce: 5,
                sent_at_ms: 6,
            }
            .into(),
            Pong {
                nonce: 7,
                sent_at_ms: 8,
            }
            .into(),
            Goodbye {
                reason: "service stopping".into(),
            }
            .into(),
        ]
    }

    #[test]
    fn every_gate_frame_round_trips() {
        let mut gate = GateCodec::new();
        let mut service = ServiceCodec::new();
        let frames = gate_frames();
        let mut buf = BytesMut::new();
        for frame in &frames {
            gate.encode(frame.clone(), &mut buf).unwrap();
        }
        for frame in &frames {
            assert_eq!(service.decode(&mut buf).unwrap().as_ref(), Some(frame));
        }
        assert!(buf.is_empty());
        assert_eq!(service.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn every_service_frame_round_trips() {
        let mut gate = GateCodec::new();
        let mut service = ServiceCodec::new();
        let frames = service_frames();
        let mut buf = BytesMut::new();
        for frame in &frames {
            service.encode(frame.clone(), &mut buf).unwrap();
        }
        for frame in &frames {
            assert_eq!(gate.decode(&mut buf).unwrap().as_ref(), Some(frame));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn route_envelope_round_trips() {
        let env = RouteEnvelope {
            route: "chat.say".into(),
            body: b("hello room"),
        };
        let bytes = env.encode_to_vec();
        assert_eq!(RouteEnvelope::decode(&bytes[..]).unwrap(), env);
    }

    #[test]
    fn decoded_payload_shares_the_read_buffer() {
        let mut buf = BytesMut::new();
        let payload = Bytes::from(vec![7u8; 1000]);
        GateCodec::new()
            .encode(
                Request {
                    payload: payload.clone(),
                    ..Request::default()
                }
                .into(),
                &mut buf,
            )
            .unwrap();
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let Some(GateFrame {
            kind: Some(gate_frame::Kind::Request(req)),
        }) = ServiceCodec::new().decode(&mut buf).unwrap()
        else {
            panic!("not a request");
        };
        assert_eq!(req.payload, payload);
        let at = req.payload.as_ptr() as usize;
        assert!((start..end).contains(&at), "payload was copied");
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut whole = BytesMut::new();
        ServiceCodec::new()
            .encode(Response::ok(1, b("abc")).into(), &mut whole)
            .unwrap();
        let mut gate = GateCodec::new();
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert_eq!(gate.decode(&mut buf).unwrap(), None, "at byte {i}");
            buf.put_u8(*byte);
        }
        assert_eq!(
            gate.decode(&mut buf).unwrap(),
            Some(Response::ok(1, b("abc")).into())
        );
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 10, 1, 2][..]);
        assert!(matches!(
            GateCodec::new().decode_eof(&mut buf),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn oversize_frame_is_refused_before_buffering() {
        let mut codec = GateCodec::with_max_frame_len(16);
        // Header announcing 17 bytes, body not sent: refused on the header.
        let mut buf = BytesMut::from(&17u32.to_be_bytes()[..]);
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { len: 17, max: 16 }) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // A hostile 4 GiB announcement does not allocate.
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            GateCodec::new().decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn oversize_frame_is_not_encoded() {
        let mut codec = ServiceCodec::with_max_frame_len(64);
        let mut buf = BytesMut::new();
        let big = Response::ok(1, Bytes::from(vec![0u8; 100]));
        match codec.encode(big.into(), &mut buf) {
            Err(FrameError::TooLarge { len, max: 64 }) => assert!(len > 100),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(buf.is_empty(), "nothing may be written");
        // Exactly at the limit is fine.
        let mut codec = ServiceCodec::with_max_frame_len(usize::MAX);
        let frame: ServiceFrame = Response::ok(1, b("x")).into();
        let len = frame.encoded_len();
        let mut codec_at = ServiceCodec::with_max_frame_len(len);
        codec_at.encode(frame.clone(), &mut buf).unwrap();
        assert_eq!(buf.len(), HEADER_LEN + len);
        assert_eq!(codec.max_frame_len(), u32::MAX as usize);
        codec.encode(frame, &mut buf).unwrap();
    }

    #[test]
    fn malformed_body_is_a_decode_error() {
        // Field 1 of the frame as a length-delimited field longer than the body.
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 0x0a, 0x05][..]);
        assert!(matches!(
            ServiceCodec::new().decode(&mut buf),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn unknown_frame_kind_decodes_as_none() {
        // Field 99 (a frame kind from a newer peer), length-delimited, empty:
        // skipped as an unknown field, so the frame's `kind` is `None`.
        let body = [0x9a, 0x06, 0x00];
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(&body);
        assert_eq!(
            GateCodec::new().decode(&mut buf).unwrap(),
            Some(ServiceFrame { kind: None })
        );
    }

    #[test]
    fn interoperates_with_length_delimited_codec() {
        let frame: ServiceFrame = Push::to_all(b("news")).into();
        let mut ours = BytesMut::new();
        ServiceCodec::new()
            .encode(frame.clone(), &mut ours)
            .unwrap();
        let mut theirs = BytesMut::new();
        LengthDelimitedCodec::new()
            .encode(Bytes::from(frame.encode_to_vec()), &mut theirs)
            .unwrap();
        assert_eq!(ours, theirs);
        let body = LengthDelimitedCodec::new()
            .decode(&mut ours)
            .unwrap()
            .unwrap();
        assert_eq!(ServiceFrame::decode(body).unwrap(), frame);
        assert_eq!(GateCodec::new().decode(&mut theirs).unwrap(), Some(frame));
    }

    /// Feeds `data` to a decoder the way a reader would, until it wants more
    /// bytes or fails. Returns whether it failed.
    fn drain<D: Message + Default + 'static>(codec: &mut FrameCodec<D, ()>, data: &[u8]) -> bool {
        let mut buf = BytesMut::from(data);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            drain(&mut FrameCodec::<GateFrame, ()>::with_max_frame_len(1024), &data);
            drain(&mut FrameCodec::<ServiceFrame, ()>::with_max_frame_len(1024), &data);
            drain(&mut FrameCodec::<RouteEnvelope, ()>::new(), &data);
        }

        #[test]
        fn garbage_body_behind_a_valid_header_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut data = (body.len() as u32).to_be_bytes().to_vec();
            data.extend_from_slice(&body);
            drain(&mut FrameCodec::<GateFrame, ()>::new(), &data);
            drain(&mut FrameCodec::<ServiceFrame, ()>::new(), &data);
        }

        #[test]
        fn oversize_headers_always_fail(len in 1025u32.., tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut data = len.to_be_bytes().to_vec();
            data.extend_from_slice(&tail);
            prop_assert!(drain(&mut FrameCodec::<GateFrame, ()>::with_max_frame_len(1024), &data));
        }

        #[test]
        fn requests_round_trip(
            request_id in any::<u64>(),
            uid in proptest::collection::vec(any::<u8>(), 0..32),
            subid in proptest::collection::vec(any::<u8>(), 0..8),
            route in "[a-z]{0,8}(\\.[a-z]{1,8})?",
            payload in proptest::collection::vec(any::<u8>(), 0..1024),
            deadline_ms in any::<u32>(),
        ) {
            let frame: GateFrame = Request {
                request_id,
                uid: uid.into(),
                subid: subid.into(),
                route,
                payload: payload.into(),
                deadline_ms,
            }
            .into();
            let mut buf = BytesMut::new();
            GateCodec::new().encode(frame.clone(), &mut buf).unwrap();
            prop_assert_eq!(ServiceCodec::new().decode(&mut buf).unwrap(), Some(frame));
            prop_assert!(buf.is_empty());
        }
    }
}
