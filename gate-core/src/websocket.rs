//! WebSocket frames on the server side of a connection (RFC 6455 §5),
//! without I/O: what the gate's plain `ws://` connections are read and
//! written with once the HTTP upgrade is done.
//!
//! [`FrameReader`] takes the bytes a client sent and gives whole messages
//! and control frames; [`write_frame`] and [`packages_to_frames`] write the
//! server's frames. The reader's state (a fragmented message being put
//! together) is plain data, so a connection moves to another process with
//! it (a live upgrade) and goes on mid-message.
//!
//! Rules kept, each a protocol error (close 1002) when broken: client
//! frames are masked; no reserved bit is set (no extension is ever
//! negotiated); the opcode is one RFC 6455 defines; a control frame is
//! final and carries at most 125 bytes; a continuation follows a started
//! message and a new message does not start inside one; a close frame's
//! payload is empty or a code of two bytes or more. A message (or a frame)
//! larger than the reader's limit is refused as too big (1009) before any
//! of it is buffered. Text is not checked for UTF-8: the gate refuses text
//! messages whole.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use codec::package::HEADER_LEN;
use serde::{Deserialize, Serialize};

/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest frame header a client sends: two bytes, eight of length, four
/// of mask.
pub const MAX_HEADER: usize = 14;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// The next fragment of a message.
    Continuation = 0,
    /// A text message (or its first fragment).
    Text = 1,
    /// A binary message (or its first fragment).
    Binary = 2,
    /// Close.
    Close = 8,
    /// Ping.
    Ping = 9,
    /// Pong.
    Pong = 10,
}

impl Opcode {
    fn of(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// What the reader took from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole binary message.
    Binary(Bytes),
    /// A whole text message (its payload dropped: the gate refuses text).
    Text,
    /// A ping; the answer is a pong with the same payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// The client's close frame, with its code if it had one.
    Close(Option<u16>),
    /// A fragment that completes no message yet.
    Fragment,
}

/// Why the input is not a valid WebSocket stream; the connection closes
/// with [`FrameError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A rule of RFC 6455 is broken (the text says which).
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message or frame larger than the limit.
    #[error("WebSocket message too big")]
    TooBig,
}

impl FrameError {
    /// The close code a server answers it with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => CLOSE_PROTOCOL,
            FrameError::TooBig => CLOSE_TOO_BIG,
        }
    }
}

/// A fragmented message being put together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Partial {
    /// Whether it is text (else binary).
    text: bool,
    /// The payload so far (empty for text, which is not kept).
    payload: BytesMut,
    /// Its length so far (text included).
    len: usize,
}

/// Reads a client's frames (see the module docs). Its state is a
/// fragmented message in progress, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameReader {
    /// Largest message accepted.
    max_message: usize,
    /// Boxed: most connections never see a fragment.
    partial: Option<Box<Partial>>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    /// Header length on the wire.
    len: usize,
    /// Payload length.
    payload: usize,
}

impl FrameReader {
    /// A reader of messages up to `max_message` bytes.
    pub fn new(max_message: usize) -> FrameReader {
        FrameReader {
            max_message,
            partial: None,
        }
    }

    /// Whether a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Takes the next frame from `input`, if a whole one is there, and
    /// says how many bytes of input it took. `Ok(None)`: more input is
    /// needed (nothing was taken).
    pub fn read(&mut self, input: &mut BytesMut) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(header) = self.header(input)? else {
            return Ok(None);
        };
        let wire = header.len + header.payload;
        if input.len() < wire {
            // Room for the rest of the frame, so the next reads fill it.
            input.reserve(wire - input.len());
            return Ok(None);
        }
        input.advance(header.len);
        let mut payload = input.split_to(header.payload);
        unmask(&mut payload, header.mask);
        let frame = match header.opcode {
            Opcode::Ping => Frame::Ping(payload.freeze()),
            Opcode::Pong => Frame::Pong,
            Opcode::Close => Frame::Close(close_code(&payload)?),
            Opcode::Binary | Opcode::Text if header.fin => match header.opcode {
                Opcode::Binary => Frame::Binary(payload.freeze()),
                _ => Frame::Text,
            },
            Opcode::Binary | Opcode::Text => {
                let text = header.opcode == Opcode::Text;
                self.partial = Some(Box::new(Partial {
                    text,
                    len: payload.len(),
                    payload: if text { BytesMut::new() } else { payload },
                }));
                Frame::Fragment
            }
            Opcode::Continuation => {
                // `header` checked that a message is in progress.
                let Some(mut partial) = self.partial.take() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                partial.len += payload.len();
                if !partial.text {
                    partial.payload.extend_from_slice(&payload);
                }
                if !header.fin {
                    self.partial = Some(partial);
                    Frame::Fragment
                } else if partial.text {
                    Frame::Text
                } else {
                    Frame::Binary(partial.payload.freeze())
                }
            }
        };
        Ok(Some((frame, wire)))
    }

    /// Parses and checks the header at the start of `input`.
    fn header(&self, input: &[u8]) -> Result<Option<Header>, FrameError> {
        let [b0, b1, ..] = *input else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bit set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = Opcode::of(b0 & 0x0f).ok_or(FrameError::Protocol("unknown opcode"))?;
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frame not masked"));
        }
        let (mut len, mut at) = (u64::from(b1 & 0x7f), 2);
        if len >= 126 {
            let extra = if len == 126 { 2 } else { 8 };
            let Some(bytes) = input.get(2..2 + extra) else {
                return Ok(None);
            };
            len = bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
            at += extra;
        }
        if opcode.is_control() {
            if !fin {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(FrameError::Protocol("control frame over 125 bytes"));
            }
        } else {
            let so_far = match (&self.partial, opcode) {
                (None, Opcode::Continuation) => {
                    return Err(FrameError::Protocol("continuation without a message"));
                }
                (Some(_), Opcode::Text | Opcode::Binary) => {
                    return Err(FrameError::Protocol("a message inside a fragmented one"));
                }
                (Some(partial), _) => partial.len as u64,
                (None, _) => 0,
            };
            if so_far.saturating_add(len) > self.max_message as u64 {
                return Err(FrameError::TooBig);
            }
        }
        let Some(mask) = input.get(at..at + 4) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            len: at + 4,
            // At most `max_message` or 125, so it fits.
            payload: usize::try_from(len).unwrap_or(usize::MAX),
        }))
    }
}

/// The code of a close frame's payload.
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame of one byte")),
        [a, b, ..] => Ok(Some(u16::from_be_bytes([*a, *b]))),
    }
}

/// Whether a peer may send close code `code` (RFC 6455 §7.4).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The code a server answers a client's close frame with: the client's
/// own if it is a valid one, a protocol error if not.
pub fn close_reply(code: Option<u16>) -> u16 {
    match code {
        None => CLOSE_NORMAL,
        Some(code) if valid_close_code(code) => code,
        Some(_) => CLOSE_PROTOCOL,
    }
}

/// XORs `payload` with the client's mask.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

/// Appends a server frame (final, unmasked) header for a payload of
/// `len` bytes.
pub fn write_header(opcode: Opcode, len: usize, out: &mut BytesMut) {
    let b0 = 0x80 | opcode as u8;
    match len {
        0..=125 => out.put_slice(&[b0, len as u8]),
        126..=0xffff => {
            out.put_slice(&[b0, 126]);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_slice(&[b0, 127]);
            out.put_u64(len as u64);
        }
    }
}

/// Appends a whole server frame.
pub fn write_frame(opcode: Opcode, payload: &[u8], out: &mut BytesMut) {
    write_header(opcode, payload.len(), out);
    out.put_slice(payload);
}

/// Appends a close frame with `code`.
pub fn write_close(code: u16, out: &mut BytesMut) {
    write_frame(Opcode::Close, &code.to_be_bytes(), out);
}

/// Moves the whole packages (BE16 length, payload) at the front of
/// `packages` to `frames` as binary frames, one per package, leaving a
/// partial package where it is. `tag` is what a package carries beyond the
/// length its header gives: 0 for plain packages, the tag's 16 bytes for
/// sealed ones (`BE16(len) ‖ ciphertext ‖ tag` becomes the message
/// `ciphertext ‖ tag`). When every message is under 126 bytes and `frames`
/// is empty, the buffer is rewritten in place (a package's length bytes
/// `00 n` become the frame's `82 n+tag`), so a batch of small answers is
/// not copied.
pub fn packages_to_frames(packages: &mut BytesMut, frames: &mut BytesMut, tag: usize) {
    let (mut at, mut small) = (0, true);
    while let Some(&[hi, lo]) = packages.get(at..at + HEADER_LEN) {
        let len = usize::from(u16::from_be_bytes([hi, lo])) + tag;
        if packages.len() < at + HEADER_LEN + len {
            break;
        }
        small &= len < 126;
        at += HEADER_LEN + len;
    }
    if at == 0 {
        return;
    }
    if small && frames.is_empty() {
        let mut i = 0;
        while i < at {
            // Under 126 in all: the high byte is 0 and the sum fits.
            let len = usize::from(packages[i + 1]) + tag;
            packages[i] = 0x80 | Opcode::Binary as u8;
            packages[i + 1] = len as u8;
            i += HEADER_LEN + len;
        }
        *frames = packages.split_to(at);
        return;
    }
    frames.reserve(at + at / 2);
    let mut rest = &packages[..at];
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])) + tag;
        write_frame(Opcode::Binary, &tail[..len], frames);
        rest = &tail[len..];
    }
    packages.advance(at);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`.
    fn client(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn read_all(reader: &mut FrameReader, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut input = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some((frame, _)) = reader.read(&mut input)? {
            frames.push(frame);
        }
        assert!(input.is_empty(), "{} bytes left", input.len());
        Ok(frames)
    }

    #[test]
    fn the_rfc_examples_read() {
        // RFC 6455 §5.7: a masked "Hello" (text), and a ping.
        let mut r = FrameReader::new(65535);
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(read_all(&mut r, &hello).unwrap(), [Frame::Text]);
        let binary = client(0x82, b"Hello", M);
        assert_eq!(
            read_all(&mut r, &binary).unwrap(),
            [Frame::Binary(Bytes::from_static(b"Hello"))]
        );
        // The server's unmasked "Hello" and ping frames of §5.7.
        let mut out = BytesMut::new();
        write_frame(Opcode::Text, b"Hello", &mut out);
        write_frame(Opcode::Ping, b"Hello", &mut out);
        assert_eq!(
            &out[..],
            b"\x81\x05Hello\x89\x05Hello",
            "server frames are unmasked"
        );
    }

    #[test]
    fn every_length_form_and_a_frame_split_anywhere_read_the_same() {
        for len in [0, 1, 125, 126, 127, 65535] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let wire = client(0x82, &payload, M);
            for cut in [0, 1, 2, 3, 5, wire.len() / 2, wire.len() - 1] {
                let mut r = FrameReader::new(65535);
                let mut input = BytesMut::from(&wire[..cut]);
                if cut < wire.len() {
                    assert_eq!(r.read(&mut input).unwrap(), None, "len {len} cut {cut}");
                    assert_eq!(input.len(), cut, "nothing taken");
                }
                input.extend_from_slice(&wire[cut..]);
                let (frame, taken) = r.read(&mut input).unwrap().unwrap();
                assert_eq!(frame, Frame::Binary(payload.clone().into()));
                assert_eq!(taken, wire.len());
                assert!(input.is_empty());
            }
        }
    }

    #[test]
    fn fragments_make_one_message_with_controls_between_them() {
        let mut r = FrameReader::new(65535);
        let mut wire = client(0x02, b"ab", M);
        wire.extend(client(0x89, b"p", M));
        wire.extend(client(0x00, b"", M));
        wire.extend(client(0x80, b"cd", M));
        assert_eq!(
            read_all(&mut r, &wire).unwrap(),
            [
                Frame::Fragment,
                Frame::Ping(Bytes::from_static(b"p")),
                Frame::Fragment,
                Frame::Binary(Bytes::from_static(b"abcd"))
            ]
        );
        assert!(!r.in_message());
    }

    #[test]
    fn a_reader_in_the_middle_of_a_message_survives_serde() {
        let mut r = FrameReader::new(65535);
        read_all(&mut r, &client(0x02, b"ab", M)).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        let mut back: FrameReader = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            read_all(&mut back, &client(0x80, b"c", M)).unwrap(),
            [Frame::Binary(Bytes::from_static(b"abc"))]
        );
    }

    #[test]
    fn broken_frames_are_refused_with_their_code() {
        let cases: [(Vec<u8>, u16); 9] = [
            (b"\x82\x05Hello".to_vec(), 1002),   // not masked
            (client(0xc2, b"x", M), 1002),       // RSV1
            (client(0x83, b"x", M), 1002),       // opcode 3
            (client(0x09, b"x", M), 1002),       // fragmented ping
            (client(0x89, &[0; 126], M), 1002),  // long ping
            (client(0x80, b"x", M), 1002),       // continuation alone
            (client(0x88, b"\x03", M), 1002),    // close of one byte
            (client(0x82, &[0; 1001], M), 1009), // over the limit
            (
                [client(0x02, &[0; 600], M), client(0x80, &[0; 401], M)].concat(),
                1009,
            ),
        ];
        for (wire, code) in cases {
            let mut r = FrameReader::new(1000);
            let err = read_all(&mut r, &wire).unwrap_err();
            assert_eq!(err.close_code(), code, "{err}");
        }
        // A new message inside a fragmented one.
        let mut r = FrameReader::new(1000);
        let wire = [client(0x02, b"a", M), client(0x82, b"b", M)].concat();
        assert!(read_all(&mut r, &wire).is_err());
        // An oversized length is refused from its header alone.
        let mut r = FrameReader::new(1000);
        let mut input = BytesMut::from(&[0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0][..]);
        assert_eq!(r.read(&mut input).unwrap_err(), FrameError::TooBig);
    }

    #[test]
    fn close_frames_carry_their_code_and_are_answered() {
        let mut r = FrameReader::new(1000);
        let wire = [client(0x88, b"", M), client(0x88, b"\x0f\xa0bye", M)].concat();
        assert_eq!(
            read_all(&mut r, &wire).unwrap(),
            [Frame::Close(None), Frame::Close(Some(4000))]
        );
        assert_eq!(close_reply(None), 1000);
        assert_eq!(close_reply(Some(4000)), 4000);
        assert_eq!(close_reply(Some(1005)), 1002);
        let mut out = BytesMut::new();
        write_close(1012, &mut out);
        assert_eq!(&out[..], [0x88, 2, 0x03, 0xf4]);
    }

    /// Frames from arbitrary bytes: read whole, or cut anywhere with the
    /// reader's state written out and read back between the pieces (a
    /// live upgrade), the same frames come out, and an error at the same
    /// place.
    fn read_in(input: &[u8], cuts: &[usize], moved: bool) -> (Vec<Frame>, bool) {
        let mut reader = FrameReader::new(300);
        let mut buf = BytesMut::new();
        let (mut frames, mut at) = (Vec::new(), 0);
        for cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let end = (*cut).clamp(at, input.len());
            buf.extend_from_slice(&input[at..end]);
            at = end;
            loop {
                match reader.read(&mut buf) {
                    Ok(Some((frame, _))) => frames.push(frame),
                    Ok(None) => break,
                    Err(_) => return (frames, true),
                }
            }
            if moved {
                let json = serde_json::to_string(&reader).unwrap();
                reader = serde_json::from_str(&json).unwrap();
            }
        }
        (frames, false)
    }

    proptest::proptest! {
        #[test]
        fn cut_points_and_moves_change_nothing(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            mut cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            cuts.sort_unstable();
            proptest::prop_assert_eq!(read_in(&input, &[], false), read_in(&input, &cuts, true));
        }

        #[test]
        fn valid_fragmented_messages_read_back(
            payloads in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), 1..6),
            mask in proptest::prelude::any::<[u8; 4]>(),
        ) {
            // Each payload as one message of up to three fragments, a ping
            // between fragments.
            let mut wire = Vec::new();
            for p in &payloads {
                let (a, rest) = p.split_at(p.len() / 3);
                let (b, c) = rest.split_at(rest.len() / 2);
                wire.extend(client(0x02, a, mask));
                wire.extend(client(0x89, b"x", mask));
                wire.extend(client(0x00, b, mask));
                wire.extend(client(0x80, c, mask));
            }
            let (frames, failed) = read_in(&wire, &[wire.len() / 2], true);
            proptest::prop_assert!(!failed);
            let binaries: Vec<_> = frames
                .into_iter()
                .filter(|f| matches!(f, Frame::Binary(_)))
                .collect();
            let want: Vec<_> = payloads.iter().map(|p| Frame::Binary(Bytes::copy_from_slice(p))).collect();
            proptest::prop_assert_eq!(binaries, want);
        }
    }

    #[test]
    fn packages_become_frames_in_place_or_copied() {
        let mut packages = BytesMut::from(&b"\x00\x02hi\x00\x00\x00\x01!\x00"[..]);
        let mut frames = BytesMut::new();
        packages_to_frames(&mut packages, &mut frames, 0);
        assert_eq!(&frames[..], b"\x82\x02hi\x82\x00\x82\x01!");
        assert_eq!(&packages[..], b"\x00", "a partial package stays");
        // A large one: copied with the 16-bit length form.
        let mut packages = BytesMut::new();
        packages.put_u16(200);
        packages.put_slice(&[7; 200]);
        packages.put_slice(b"\x00\x01x");
        packages_to_frames(&mut packages, &mut frames, 0);
        assert_eq!(&frames[..9], b"\x82\x02hi\x82\x00\x82\x01!");
        assert_eq!(&frames[9..13], [0x82, 126, 0, 200]);
        assert_eq!(&frames[213..], b"\x82\x01x");
        assert!(packages.is_empty());
        // Behind frames already queued: appended, not in place.
        let mut packages = BytesMut::from(&b"\x00\x01y"[..]);
        packages_to_frames(&mut packages, &mut frames, 0);
        assert_eq!(&frames[frames.len() - 3..], b"\x82\x01y");
    }

    #[test]
    fn sealed_packages_become_frames_with_their_tags() {
        // Two sealed packages (plaintext lengths 1 and 0, tags of 16).
        let mut packages = BytesMut::from(&b"\x00\x01c"[..]);
        packages.put_slice(&[0xaa; 16]);
        packages.put_slice(b"\x00\x00");
        packages.put_slice(&[0xbb; 16]);
        packages.put_slice(b"\x00\x05par");
        let mut frames = BytesMut::new();
        packages_to_frames(&mut packages, &mut frames, 16);
        let mut want = BytesMut::from(&b"\x82\x11c"[..]);
        want.put_slice(&[0xaa; 16]);
        want.put_slice(b"\x82\x10");
        want.put_slice(&[0xbb; 16]);
        assert_eq!(frames, want, "in place");
        assert_eq!(&packages[..], b"\x00\x05par", "a partial package stays");
        // A message of 126 bytes or more (110 + 16): copied.
        let mut packages = BytesMut::new();
        packages.put_u16(110);
        packages.put_slice(&[1; 126]);
        let mut frames = BytesMut::new();
        packages_to_frames(&mut packages, &mut frames, 16);
        assert_eq!(&frames[..4], [0x82, 126, 0, 126]);
        assert_eq!(frames.len(), 4 + 126);
    }
}
