//! How [`FrameCodec`](crate::framing::FrameCodec) decodes a frame body,
//! with a fast path for the two frames that carry the game's traffic.
//!
//! Nearly every frame on a busy link is a `Request` (gate → service) or a
//! `Response` (service → gate). prost decodes them through its general
//! field loop: a call per field, a decode context, each `bytes` field cut
//! through a `Buf` adapter. The fast path reads the exact layout an
//! encoder writes (the frame's one field, then the message's fields each
//! at most once, in field-number order) straight off the body, slicing
//! `bytes` fields out of it as prost does. Anything else (another frame
//! kind, fields out of order or repeated, an unknown field, an unusual
//! varint) goes to prost unchanged, so the result is prost's in every case
//! and only the cost differs. The tests check that on valid and on
//! arbitrary bodies.

use std::any::{Any, TypeId};
use std::ops::Range;

use bytes::Bytes;
use prost::{DecodeError, Message};

use crate::backend::{GateFrame, Request, Response, ServiceFrame, response};

/// Decodes one frame body as a `D`: prost's decoding, through the fast
/// path when `D` is [`GateFrame`] or [`ServiceFrame`] (same result).
pub(crate) fn decode_body<D: Message + Default + 'static>(body: Bytes) -> Result<D, DecodeError> {
    let fast = if TypeId::of::<D>() == TypeId::of::<GateFrame>() {
        request(&body).map(GateFrame::from).and_then(cast)
    } else if TypeId::of::<D>() == TypeId::of::<ServiceFrame>() {
        response(&body).map(ServiceFrame::from).and_then(cast)
    } else {
        None
    };
    match fast {
        Some(frame) => Ok(frame),
        None => D::decode(body),
    }
}

/// `value` as a `D`, when `T` is `D` (the type test is resolved at compile
/// time; nothing is allocated).
fn cast<T: 'static, D: 'static>(value: T) -> Option<D> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<D>>()?
        .take()
}

/// Wire type of varint fields.
const VARINT: u64 = 0;
/// Wire type of length-delimited fields.
const LEN: u64 = 2;
/// Key of `GateFrame.request` (field 3, length-delimited).
const GATE_FRAME_REQUEST: u8 = 3 << 3 | LEN as u8;
/// Key of `ServiceFrame.response` (field 2, length-delimited).
const SERVICE_FRAME_RESPONSE: u8 = 2 << 3 | LEN as u8;

/// A cursor over a frame body.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    /// A varint of at most 9 bytes (63 bits); longer ones are left to
    /// prost.
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..63).step_by(7) {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// The range of a length-delimited value, within `end`.
    fn delimited(&mut self, end: usize) -> Option<Range<usize>> {
        let len = usize::try_from(self.varint()?).ok()?;
        let start = self.at;
        let stop = start.checked_add(len).filter(|&stop| stop <= end)?;
        self.at = stop;
        Some(start..stop)
    }

    /// The frame's only field, keyed `key`: the range of its message,
    /// which must end the body.
    fn only_field(&mut self, key: u8) -> Option<Range<usize>> {
        if self.bytes.first() != Some(&key) {
            return None;
        }
        self.at = 1;
        let inner = self.delimited(self.bytes.len())?;
        self.at = inner.start;
        (inner.end == self.bytes.len()).then_some(inner)
    }

    /// The next `(field, wire type)` within `end`, if its field number is
    /// above `last` (each field at most once, in order).
    fn key(&mut self, end: usize, last: &mut u64) -> Option<Option<(u64, u64)>> {
        if self.at >= end {
            return Some(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field <= *last {
            return None;
        }
        *last = field;
        Some(Some((field, key & 7)))
    }
}

/// A `Request` frame in the layout encoders write, else `None`.
fn request(body: &Bytes) -> Option<Request> {
    let mut r = Reader { bytes: body, at: 0 };
    let end = r.only_field(GATE_FRAME_REQUEST)?.end;
    let mut request = Request::default();
    let mut last = 0;
    while let Some((field, wire)) = r.key(end, &mut last)? {
        match (field, wire) {
            (1, VARINT) => request.request_id = r.varint()?,
            (2, LEN) => request.uid = body.slice(r.delimited(end)?),
            (3, LEN) => request.subid = body.slice(r.delimited(end)?),
            (4, LEN) => {
                let route = std::str::from_utf8(&body[r.delimited(end)?]).ok()?;
                request.route = route.to_owned();
            }
            (5, LEN) => request.payload = body.slice(r.delimited(end)?),
            (6, VARINT) => request.deadline_ms = u32::try_from(r.varint()?).ok()?,
            _ => return None,
        }
    }
    (r.at == end).then_some(request)
}

/// A `Response` frame in the layout encoders write, else `None`.
fn response(body: &Bytes) -> Option<Response> {
    let mut r = Reader { bytes: body, at: 0 };
    let end = r.only_field(SERVICE_FRAME_RESPONSE)?.end;
    let mut response = Response::default();
    let mut last = 0;
    while let Some((field, wire)) = r.key(end, &mut last)? {
        match (field, wire) {
            (1, VARINT) => response.request_id = r.varint()?,
            // The `oneof`: at most one of the two (prost keeps the last).
            (2, LEN) => response.result = Some(response::Result::Ok(body.slice(r.delimited(end)?))),
            (3, LEN) if response.result.is_none() => {
                let error = std::str::from_utf8(&body[r.delimited(end)?]).ok()?;
                response.result = Some(response::Result::Error(error.to_owned()));
            }
            _ => return None,
        }
    }
    (r.at == end).then_some(response)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::RequestRef;
    use crate::backend::Ping;

    fn prost_request(r: &Request) -> Bytes {
        GateFrame::from(r.clone()).encode_to_vec().into()
    }

    fn prost_response(r: &Response) -> Bytes {
        ServiceFrame::from(r.clone()).encode_to_vec().into()
    }

    /// `decode_body` agrees with prost on `body`: same frame, or both
    /// refuse it.
    fn agrees<F: Message + Default + PartialEq + std::fmt::Debug + 'static>(body: &Bytes) {
        let ours = decode_body::<F>(body.clone());
        let theirs = F::decode(body.clone());
        match (ours, theirs) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("fast {a:?} vs prost {b:?} on {body:?}"),
        }
    }

    #[test]
    fn requests_and_responses_take_the_fast_path() {
        let req = Request {
            request_id: 9,
            uid: Bytes::from_static(b"alice"),
            subid: Bytes::from_static(b"3"),
            route: "chat.say".into(),
            payload: Bytes::from_static(b"hi"),
            deadline_ms: 5000,
        };
        assert_eq!(request(&prost_request(&req)), Some(req.clone()));
        let empty = Request::default();
        assert_eq!(request(&prost_request(&empty)), Some(empty));
        for resp in [
            Response::ok(7, Bytes::from_static(b"answer")),
            Response::ok(8, Bytes::new()),
            Response::error(9, "no such route"),
            Response::default(),
        ] {
            assert_eq!(response(&prost_response(&resp)), Some(resp));
        }
    }

    #[test]
    fn other_layouts_are_left_to_prost() {
        // Another frame kind.
        let ping: Bytes = GateFrame::from(Ping::now(1)).encode_to_vec().into();
        assert_eq!(request(&ping), None);
        agrees::<GateFrame>(&ping);
        // Fields out of order (subid before uid): prost reads them fine.
        let mut inner = vec![0x1a, 1, b'7', 0x12, 2, b'u', b'1'];
        let mut body = vec![GATE_FRAME_REQUEST, inner.len() as u8];
        body.append(&mut inner);
        let body = Bytes::from(body);
        assert_eq!(request(&body), None);
        let frame = decode_body::<GateFrame>(body).unwrap();
        assert_eq!(
            frame,
            GateFrame::from(Request {
                uid: Bytes::from_static(b"u1"),
                subid: Bytes::from_static(b"7"),
                ..Request::default()
            })
        );
        // Both results of the oneof: prost keeps the last.
        let body = Bytes::from_static(&[SERVICE_FRAME_RESPONSE, 6, 0x12, 1, b'a', 0x1a, 1, b'e']);
        assert_eq!(response(&body), None);
        agrees::<ServiceFrame>(&body);
        // A route that is not UTF-8: prost's error, not ours.
        let body = Bytes::from_static(&[GATE_FRAME_REQUEST, 3, 0x22, 1, 0xff]);
        assert_eq!(request(&body), None);
        assert!(decode_body::<GateFrame>(body).is_err());
        // A truncated frame.
        let body = Bytes::from_static(&[GATE_FRAME_REQUEST, 4, 0x12, 9, b'a']);
        assert!(decode_body::<GateFrame>(body).is_err());
    }

    proptest! {
        #[test]
        fn encoded_requests_decode_as_prost_decodes_them(
            request_id in any::<u64>(),
            uid in proptest::collection::vec(any::<u8>(), 0..40),
            subid in proptest::collection::vec(any::<u8>(), 0..12),
            route in "[a-z.é]{0,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            deadline_ms in any::<u32>(),
        ) {
            let r = RequestRef {
                request_id,
                uid: &uid,
                subid: &subid,
                route: &route,
                payload: &payload,
                deadline_ms,
            };
            let mut body = bytes::BytesMut::new();
            r.encode_raw(&mut body);
            let body = body.freeze();
            agrees::<GateFrame>(&body);
            if request_id < 1 << 63 {
                prop_assert!(request(&body).is_some(), "the fast path declined {:?}", body);
            }
        }

        #[test]
        fn encoded_responses_decode_as_prost_decodes_them(
            request_id in any::<u64>(),
            ok in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            error in "[ -~é]{0,30}",
        ) {
            let resp = match ok {
                Some(ok) => Response::ok(request_id, ok.into()),
                None => Response::error(request_id, error),
            };
            let body = prost_response(&resp);
            agrees::<ServiceFrame>(&body);
            if request_id < 1 << 63 {
                prop_assert_eq!(response(&body), Some(resp));
            }
        }

        #[test]
        fn any_body_decodes_as_prost_decodes_it(
            head in prop_oneof![Just(GATE_FRAME_REQUEST), Just(SERVICE_FRAME_RESPONSE), any::<u8>()],
            rest in proptest::collection::vec(
                prop_oneof![Just(0x08u8), Just(0x12), Just(0x1a), Just(0x22), Just(0x2a), Just(0x30), Just(0x80), Just(0xff), any::<u8>(), 0u8..8],
                0..40,
            ),
        ) {
            let mut body = vec![head];
            body.extend_from_slice(&rest);
            let body = Bytes::from(body);
            agrees::<GateFrame>(&body);
            agrees::<ServiceFrame>(&body);
        }

        #[test]
        fn a_valid_frame_with_one_byte_changed_decodes_as_prost_decodes_it(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let req = Request {
                request_id: 300,
                uid: Bytes::from_static(b"bob"),
                subid: Bytes::from_static(b"12"),
                route: String::new(),
                payload: Bytes::from_static(b"payload"),
                deadline_ms: 10_000,
            };
            let mut body = prost_request(&req).to_vec();
            let i = at.index(body.len());
            body[i] = byte;
            agrees::<GateFrame>(&Bytes::from(body));
            let mut body = prost_response(&Response::ok(300, Bytes::from_static(b"answer"))).to_vec();
            let i = at.index(body.len());
            body[i] = byte;
            agrees::<ServiceFrame>(&Bytes::from(body));
        }
    }
}
