//! [`RequestRef`]: a [`Request`](crate::backend::Request) frame written
//! from borrowed fields, for the gate's hot path.

use bytes::{BufMut, BytesMut};
use prost::encoding::{encode_varint, encoded_len_varint};

use crate::framing::{FrameCodec, FrameError, HEADER_LEN};

/// Field number of `GateFrame.request` (`oneof kind`).
const GATE_FRAME_REQUEST: u32 = 3;

/// A gate → service `Request`, fields borrowed. Field meanings are those
/// of [`backend::Request`](crate::backend::Request).
///
/// Building a [`GateFrame`](crate::backend::GateFrame) to encode a request
/// means owning every field: the uid and subid are cloned (`Bytes`
/// reference counts), the route is copied into a `String`, and prost's
/// encoder clones each `bytes` field once more to append it. A
/// [`RequestRef`] borrows them and writes exactly the bytes prost would
/// (proto3: fields at their default are left out; the `oneof` member is
/// always written), so the receiver cannot tell the two apart. The tests
/// compare both encodings byte for byte.
#[derive(Debug, Clone, Copy)]
pub struct RequestRef<'a> {
    /// `Request.request_id`.
    pub request_id: u64,
    /// `Request.uid`.
    pub uid: &'a [u8],
    /// `Request.subid`.
    pub subid: &'a [u8],
    /// `Request.route` (empty in agent mode).
    pub route: &'a str,
    /// `Request.payload`.
    pub payload: &'a [u8],
    /// `Request.deadline_ms`.
    pub deadline_ms: u32,
}

/// Wire type of varint fields.
const VARINT: u32 = 0;
/// Wire type of length-delimited fields.
const LEN: u32 = 2;

fn key(field: u32, wire_type: u32) -> u64 {
    u64::from(field << 3 | wire_type)
}

/// Length of a length-delimited field `field` of `len` bytes, 0 if empty
/// (proto3 leaves it out). Every field number here is below 16: one byte
/// of key.
fn bytes_field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + encoded_len_varint(len as u64) + len
    }
}

fn put_bytes_field(field: u32, value: &[u8], out: &mut &mut [u8]) {
    if !value.is_empty() {
        encode_varint(key(field, LEN), out);
        encode_varint(value.len() as u64, out);
        out.put_slice(value);
    }
}

impl RequestRef<'_> {
    /// Length of the `Request` message itself.
    fn request_len(&self) -> usize {
        let mut len = bytes_field_len(self.uid.len())
            + bytes_field_len(self.subid.len())
            + bytes_field_len(self.route.len())
            + bytes_field_len(self.payload.len());
        if self.request_id != 0 {
            len += 1 + encoded_len_varint(self.request_id);
        }
        if self.deadline_ms != 0 {
            len += 1 + encoded_len_varint(u64::from(self.deadline_ms));
        }
        len
    }

    /// Length of the `GateFrame` holding this request (the frame body,
    /// without the length header).
    pub fn encoded_len(&self) -> usize {
        let inner = self.request_len();
        1 + encoded_len_varint(inner as u64) + inner
    }

    /// Appends the `GateFrame` body (no length header): the bytes prost
    /// writes for `GateFrame { kind: Some(Kind::Request(..)) }`.
    pub fn encode_raw(&self, dst: &mut BytesMut) {
        self.append(self.request_len(), dst);
    }

    /// [`encode_raw`](Self::encode_raw) with the request's length known.
    /// The room is made (zeroed) first and written as a plain slice: a
    /// varint byte by byte into a `BytesMut` costs a capacity check and a
    /// copy call each.
    fn append(&self, inner: usize, dst: &mut BytesMut) {
        let start = dst.len();
        dst.resize(start + 1 + encoded_len_varint(inner as u64) + inner, 0);
        let mut out = &mut dst[start..];
        encode_varint(key(GATE_FRAME_REQUEST, LEN), &mut out);
        encode_varint(inner as u64, &mut out);
        if self.request_id != 0 {
            encode_varint(key(1, VARINT), &mut out);
            encode_varint(self.request_id, &mut out);
        }
        put_bytes_field(2, self.uid, &mut out);
        put_bytes_field(3, self.subid, &mut out);
        put_bytes_field(4, self.route.as_bytes(), &mut out);
        put_bytes_field(5, self.payload, &mut out);
        if self.deadline_ms != 0 {
            encode_varint(key(6, VARINT), &mut out);
            encode_varint(u64::from(self.deadline_ms), &mut out);
        }
        debug_assert!(out.is_empty(), "the room is exactly the frame");
    }
}

impl<D> FrameCodec<D, crate::backend::GateFrame> {
    /// Appends `request` as one frame, length header included: the bytes
    /// [`Encoder::encode`](tokio_util::codec::Encoder::encode) writes for
    /// the equivalent owned frame, with the same limit.
    pub fn encode_request(
        &mut self,
        request: &RequestRef<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let inner = request.request_len();
        let len = 1 + encoded_len_varint(inner as u64) + inner;
        if len > self.max_frame_len() {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len(),
            });
        }
        dst.reserve(HEADER_LEN + len);
        // `len ≤ max_frame_len ≤ u32::MAX` (see `with_max_frame_len`).
        dst.put_u32(len as u32);
        request.append(inner, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use prost::Message;
    use tokio_util::codec::Encoder;

    use super::*;
    use crate::backend::{GateFrame, Request};
    use crate::framing::GateCodec;

    fn owned(r: &RequestRef<'_>) -> GateFrame {
        Request {
            request_id: r.request_id,
            uid: Bytes::copy_from_slice(r.uid),
            subid: Bytes::copy_from_slice(r.subid),
            route: r.route.to_owned(),
            payload: Bytes::copy_from_slice(r.payload),
            deadline_ms: r.deadline_ms,
        }
        .into()
    }

    /// Both codecs' output for `r`, the borrowed one first.
    fn both(
        r: &RequestRef<'_>,
        max: usize,
    ) -> (Result<BytesMut, String>, Result<BytesMut, String>) {
        let mut borrowed = BytesMut::from(&b"before"[..]);
        let mut prost = borrowed.clone();
        let a = GateCodec::with_max_frame_len(max)
            .encode_request(r, &mut borrowed)
            .map(|()| borrowed)
            .map_err(|e| e.to_string());
        let b = GateCodec::with_max_frame_len(max)
            .encode(owned(r), &mut prost)
            .map(|()| prost)
            .map_err(|e| e.to_string());
        (a, b)
    }

    #[test]
    fn a_typical_request_is_written_as_prost_writes_it() {
        let r = RequestRef {
            request_id: 300,
            uid: b"alice",
            subid: b"17",
            route: "",
            payload: b"hello world",
            deadline_ms: 5_000,
        };
        let (a, b) = both(&r, 1 << 20);
        assert_eq!(a.unwrap(), b.unwrap());
        let mut codec = GateCodec::new();
        let mut frame = BytesMut::new();
        codec.encode_request(&r, &mut frame).unwrap();
        assert_eq!(frame.len(), HEADER_LEN + r.encoded_len());
        let decoded = GateFrame::decode(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(decoded, owned(&r));
    }

    #[test]
    fn a_request_of_defaults_is_still_a_request() {
        let r = RequestRef {
            request_id: 0,
            uid: b"",
            subid: b"",
            route: "",
            payload: b"",
            deadline_ms: 0,
        };
        let (a, b) = both(&r, 16);
        let a = a.unwrap();
        assert_eq!(a, b.unwrap());
        // The header, then the oneof member with an empty message.
        assert_eq!(&a[6..], &[0, 0, 0, 2, 0x1a, 0][..]);
    }

    #[test]
    fn the_frame_limit_is_the_owned_encoders() {
        let payload = [7u8; 100];
        let r = RequestRef {
            request_id: 1,
            uid: b"u",
            subid: b"1",
            route: "chat.say",
            payload: &payload,
            deadline_ms: 0,
        };
        let len = r.encoded_len();
        let (a, b) = both(&r, len);
        assert_eq!(a.unwrap(), b.unwrap());
        let (a, b) = both(&r, len - 1);
        assert_eq!(a.unwrap_err(), b.unwrap_err());
        let mut untouched = BytesMut::from(&b"x"[..]);
        assert!(
            GateCodec::with_max_frame_len(len - 1)
                .encode_request(&r, &mut untouched)
                .is_err()
        );
        assert_eq!(&untouched[..], b"x");
    }

    proptest! {
        #[test]
        fn any_request_is_written_as_prost_writes_it(
            request_id in prop_oneof![Just(0u64), any::<u64>(), 0u64..300],
            uid in proptest::collection::vec(any::<u8>(), 0..40),
            subid in proptest::collection::vec(any::<u8>(), 0..12),
            route in "[a-z.]{0,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..400),
            deadline_ms in prop_oneof![Just(0u32), any::<u32>()],
        ) {
            let r = RequestRef {
                request_id,
                uid: &uid,
                subid: &subid,
                route: &route,
                payload: &payload,
                deadline_ms,
            };
            let (a, b) = both(&r, 1 << 20);
            prop_assert_eq!(a.unwrap(), b.unwrap());
        }
    }
}
