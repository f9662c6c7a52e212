//! Requests and responses after the handshake (spec §5.4), zero copy over
//! [`Bytes`]: `content ‖ BE32(number)` up, `content ‖ u8(flag) ‖
//! BE32(number)` down, with the size limits that keep each in one package.
//!
//! Parsing only splits bytes; it decides nothing. Whether a short request
//! closes the connection is the protocol layer's call (`gate`), so these
//! functions return `Option` rather than errors. The handshake and the
//! index live in [`crate::handshake`] and [`crate::lua_number`]; they are
//! re-exported here, where they were first written, so
//! `codec::message::Handshake` keeps working.

use bytes::{BufMut, Bytes, BytesMut};

pub use crate::handshake::Handshake;
pub use crate::lua_number::LuaNumber;
use crate::package::{FrameError, HEADER_LEN, header_for};

/// Largest request content: 65535 − 4 bytes of request number (spec §5.4).
pub const MAX_REQUEST_CONTENT: usize = 65531;

/// Largest response content: 65535 − 1 flag byte − 4 bytes of request
/// number (spec §5.4). A larger response cannot be framed; skynet then closes the
/// connection (spec §5.6).
pub const MAX_RESPONSE_CONTENT: usize = 65530;

/// Size of the request-number trailer of requests and responses (skynet's
/// "session").
const NUMBER_LEN: usize = 4;

/// A client request after the handshake: payload `content ‖ BE32(number)`
/// (spec §5.4).
///
/// `number` is the request number, skynet's "session": chosen by the
/// client, echoed by the response. It is not the player's session (the
/// login the gate keeps across connections), hence the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// The request body (a slice of the received payload).
    pub content: Bytes,
    /// The request number, chosen by the client; the response echoes it.
    pub number: u32,
}

impl Request {
    /// Splits a request payload. `None` when it is shorter than 4 bytes
    /// (including empty): skynet then closes the connection (spec §5.6).
    pub fn parse(payload: Bytes) -> Option<Request> {
        let (content, number) = split_number(payload)?;
        Some(Request { content, number })
    }

    /// Appends the whole request package
    /// (`BE16(len) ‖ content ‖ BE32(number)`) to `dst`.
    ///
    /// Content longer than [`MAX_REQUEST_CONTENT`] is refused with
    /// [`FrameError::TooLarge`] (its `len` is the payload length,
    /// content + 4); `dst` is then unchanged.
    pub fn encode(content: &[u8], number: u32, dst: &mut BytesMut) -> Result<(), FrameError> {
        let payload_len = content.len() + NUMBER_LEN;
        let header = header_for(payload_len)?;
        dst.reserve(HEADER_LEN + payload_len);
        dst.put_u16(header);
        dst.put_slice(content);
        dst.put_u32(number);
        Ok(())
    }
}

/// The flag byte in front of a response's number.
///
/// skynet sends only [`ResponseFlag::ERROR`] and [`ResponseFlag::OK`].
/// [`ResponseFlag::PUSH`] and [`ResponseFlag::KICK`] are this gate's
/// extensions; a plain skynet client never receives them unless it opted in
/// (through the handshake extension field), so it keeps seeing exactly what
/// skynet would send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseFlag(pub u8);

impl ResponseFlag {
    /// The handler raised an error; the content is empty (skynet).
    pub const ERROR: ResponseFlag = ResponseFlag(0);
    /// The handler succeeded; the content is its result (skynet).
    pub const OK: ResponseFlag = ResponseFlag(1);
    /// Extension: a server push. The number field carries the push
    /// sequence number instead of a request number.
    pub const PUSH: ResponseFlag = ResponseFlag(2);
    /// Extension: the last message before the gate closes the connection;
    /// the content is the reason text and the number field is 0.
    pub const KICK: ResponseFlag = ResponseFlag(3);
    /// Extension: pushes were lost (dropped from the gate's push backlog
    /// before the client came back for them). The content is empty and the
    /// number field is the sequence number of the last lost push: the
    /// next push the client receives has the next number.
    pub const PUSH_GAP: ResponseFlag = ResponseFlag(4);
    /// Extension: the gate accepted the client's opt-in; sent once, right
    /// after `200 OK`. The content is `v=<version>,idle=<ms>`
    /// ([`crate::ext::Welcome`]), the number field the sequence number of
    /// the session's last push (the replay that follows ends there).
    pub const WELCOME: ResponseFlag = ResponseFlag(5);
}

/// A gate response: payload `content ‖ u8(flag) ‖ BE32(number)`
/// (spec §5.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Response {
    /// The response body (empty for [`ResponseFlag::ERROR`]).
    pub content: Bytes,
    /// What kind of response this is.
    pub flag: ResponseFlag,
    /// The request's number (or a push sequence number, or 0 for a kick;
    /// see [`ResponseFlag`]).
    pub number: u32,
}

impl Response {
    /// Splits a response payload; `None` when it is shorter than 5 bytes.
    /// Any flag value is accepted: interpreting it is the caller's job.
    pub fn parse(payload: Bytes) -> Option<Response> {
        let (mut content, number) = split_number(payload)?;
        let flag_at = content.len().checked_sub(1)?;
        let flag = ResponseFlag(*content.get(flag_at)?);
        content.truncate(flag_at);
        Some(Response {
            content,
            flag,
            number,
        })
    }

    /// Appends the whole response package
    /// (`BE16(len) ‖ content ‖ u8(flag) ‖ BE32(number)`) to `dst`.
    ///
    /// Content longer than [`MAX_RESPONSE_CONTENT`] is refused with
    /// [`FrameError::TooLarge`] (its `len` is the payload length,
    /// content + 5); `dst` is then unchanged.
    pub fn encode(
        content: &[u8],
        flag: ResponseFlag,
        number: u32,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        // Refused before any room is made.
        header_for(content.len() + 1 + NUMBER_LEN)?;
        dst.reserve(HEADER_LEN + content.len() + 1 + NUMBER_LEN);
        Response::put(content, flag, number, dst)
    }

    /// [`Response::encode`] into any buffer, which must have room for the
    /// package (`content.len() + 7` bytes: a `&mut [u8]` that is too short
    /// panics, as [`BufMut`] does).
    pub fn put(
        content: &[u8],
        flag: ResponseFlag,
        number: u32,
        dst: &mut impl BufMut,
    ) -> Result<(), FrameError> {
        let header = header_for(content.len() + 1 + NUMBER_LEN)?;
        dst.put_u16(header);
        dst.put_slice(content);
        dst.put_u8(flag.0);
        dst.put_u32(number);
        Ok(())
    }
}

/// Splits `rest ‖ BE32(number)`; `None` below 4 bytes.
fn split_number(mut payload: Bytes) -> Option<(Bytes, u32)> {
    let at = payload.len().checked_sub(NUMBER_LEN)?;
    let number: [u8; NUMBER_LEN] = payload.get(at..)?.try_into().ok()?;
    payload.truncate(at);
    Some((payload, u32::from_be_bytes(number)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::package::{MAX_PAYLOAD, PackageCodec};
    use tokio_util::codec::Decoder;

    #[test]
    fn request_parse_and_encode() {
        let r = Request::parse(Bytes::from_static(b"echo\x00\x00\x00\x00")).unwrap();
        assert_eq!(r.content, &b"echo"[..]);
        assert_eq!(r.number, 0);
        let r = Request::parse(Bytes::from_static(b"\x01\x02\x03\x04")).unwrap();
        assert!(r.content.is_empty());
        assert_eq!(r.number, 0x0102_0304);
        assert_eq!(Request::parse(Bytes::from_static(b"abc")), None);
        assert_eq!(Request::parse(Bytes::new()), None);

        let mut out = BytesMut::new();
        Request::encode(b"echo", 0, &mut out).unwrap();
        assert_eq!(&out[..], b"\x00\x08echo\x00\x00\x00\x00");
    }

    #[test]
    fn request_size_limit() {
        let mut out = BytesMut::new();
        Request::encode(&vec![b'y'; MAX_REQUEST_CONTENT], 201, &mut out).unwrap();
        assert_eq!(&out[..2], b"\xff\xff");
        assert_eq!(out.len(), 2 + MAX_PAYLOAD);
        let frame = PackageCodec.decode(&mut out).unwrap().unwrap();
        let r = Request::parse(frame).unwrap();
        assert_eq!((r.content.len(), r.number), (MAX_REQUEST_CONTENT, 201));

        let err = Request::encode(&vec![0; MAX_REQUEST_CONTENT + 1], 1, &mut out).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 65536 }));
        assert!(out.is_empty());
    }

    #[test]
    fn response_parse_and_encode() {
        let r = Response::parse(Bytes::from_static(b"echo\x01\x00\x00\x00\x00")).unwrap();
        assert_eq!(
            r,
            Response {
                content: Bytes::from_static(b"echo"),
                flag: ResponseFlag::OK,
                number: 0
            }
        );
        let r = Response::parse(Bytes::from_static(b"\x00\x00\x00\x00\x02")).unwrap();
        assert_eq!((r.flag, r.number), (ResponseFlag::ERROR, 2));
        assert!(r.content.is_empty());
        let r = Response::parse(Bytes::from_static(b"x\x07\x00\x00\x00\x02")).unwrap();
        assert_eq!(r.flag, ResponseFlag(7));
        assert_eq!(
            Response::parse(Bytes::from_static(b"\x01\x00\x00\x00")),
            None
        );
        assert_eq!(Response::parse(Bytes::new()), None);

        let mut out = BytesMut::new();
        Response::encode(b"echo", ResponseFlag::OK, 0, &mut out).unwrap();
        Response::encode(b"", ResponseFlag::ERROR, 2, &mut out).unwrap();
        Response::encode(b"bye", ResponseFlag::KICK, 0, &mut out).unwrap();
        Response::encode(b"p", ResponseFlag::PUSH, 9, &mut out).unwrap();
        assert_eq!(
            &out[..],
            &b"\x00\x09echo\x01\x00\x00\x00\x00\x00\x05\x00\x00\x00\x00\x02\
               \x00\x08bye\x03\x00\x00\x00\x00\x00\x06p\x02\x00\x00\x00\x09"[..]
        );
    }

    #[test]
    fn response_size_limit() {
        let mut out = BytesMut::new();
        Response::encode(
            &vec![b'z'; MAX_RESPONSE_CONTENT],
            ResponseFlag::OK,
            200,
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..2], b"\xff\xff");
        let frame = PackageCodec.decode(&mut out).unwrap().unwrap();
        let r = Response::parse(frame).unwrap();
        assert_eq!(r.content.len(), MAX_RESPONSE_CONTENT);
        assert_eq!((r.flag, r.number), (ResponseFlag::OK, 200));

        let err = Response::encode(
            &vec![0; MAX_RESPONSE_CONTENT + 1],
            ResponseFlag::OK,
            201,
            &mut out,
        )
        .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 65536 }));
        assert!(out.is_empty(), "nothing written on error");
    }

    #[test]
    fn request_and_response_are_zero_copy() {
        let payload = Bytes::from_static(b"abcdef\x01\x00\x00\x00\x05");
        let r = Response::parse(payload.clone()).unwrap();
        assert_eq!(r.content.as_ptr(), payload.as_ptr());
        let q = Request::parse(payload.clone()).unwrap();
        assert_eq!(q.content.as_ptr(), payload.as_ptr());
        assert_eq!(q.content, &b"abcdef\x01"[..]);
    }
}
