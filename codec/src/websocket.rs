//! The WebSocket mapping (`docs/PROTOCOL.md` §9): the login dialogue and
//! the gate's packages carried as WebSocket messages, so a browser can
//! speak the same protocol.
//!
//! * Login: each line is one **text** message, without its LF.
//! * Gate: each package is one **binary** message whose payload is the
//!   package's payload, without the BE16 length (an empty message is the
//!   empty package).
//!
//! [`MessageStream`] turns a WebSocket connection back into the byte stream
//! of the TCP protocol (LF lines or BE16 packages) in both directions, so
//! code written for TCP — `Framed` with [`crate::LineCodec`] or
//! [`crate::PackageCodec`] — runs over WebSocket unchanged. It opens no
//! socket: it wraps a [`WebSocketStream`] over any stream, after the HTTP
//! upgrade (done by `tokio_tungstenite::accept_hdr_async_with_config` or
//! `client_async_with_config`). [`Mapping`] is the mapping alone, as plain
//! functions.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::package::{MAX_PAYLOAD, SEAL_TAG_LEN};

/// Which of the two mappings a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Login: a text message is a line (LF not included).
    Lines,
    /// Gate: a binary message is a package's payload.
    Packages,
    /// Gate, sealed channel (`docs/PROTOCOL.md` §3.2): a binary message is
    /// a sealed package's `ciphertext ‖ tag`, in the byte stream
    /// `BE16(plaintext length) ‖ ciphertext ‖ tag`. A [`MessageStream`]
    /// maps the first message each way as [`Mapping::Packages`] (the
    /// handshake, the `200 OK`), every later one so.
    SealedPackages,
}

/// Why a message cannot be mapped; each has the close code the receiver
/// closes with (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// A binary message on the login, or a text message on the gate.
    #[error("{0} message where the mapping carries only the other kind")]
    WrongKind(&'static str),
    /// A login text message holding an LF (a message is exactly one line).
    #[error("text message holds a line feed")]
    LineFeed,
    /// A gate message longer than a package can be (65535 bytes).
    #[error("message of {0} bytes is over the package limit")]
    TooLarge(usize),
    /// A sealed message shorter than its tag.
    #[error("sealed message of {0} bytes is shorter than its tag")]
    Short(usize),
}

impl MappingError {
    /// The close code a receiver sends for this error: 1003 (unsupported
    /// data) for the wrong kind, 1007 (invalid payload) for an LF in a
    /// line, 1009 (too big) for an oversized message.
    pub fn close_code(self) -> u16 {
        match self {
            MappingError::WrongKind(_) => 1003,
            MappingError::LineFeed | MappingError::Short(_) => 1007,
            MappingError::TooLarge(_) => 1009,
        }
    }
}

impl Mapping {
    /// Appends what an incoming data message stands for in the TCP byte
    /// stream to `out`: the line and its LF, or `BE16(len) ‖ payload`.
    /// Control messages (ping, pong, close) stand for nothing.
    pub fn incoming(self, message: &Message, out: &mut BytesMut) -> Result<(), MappingError> {
        match (self, message) {
            (Mapping::Lines, Message::Text(text)) => {
                if text.as_bytes().contains(&b'\n') {
                    return Err(MappingError::LineFeed);
                }
                out.reserve(text.len() + 1);
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\n");
            }
            (Mapping::Packages, Message::Binary(payload)) => {
                let len = u16::try_from(payload.len())
                    .map_err(|_| MappingError::TooLarge(payload.len()))?;
                out.reserve(payload.len() + 2);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(payload);
            }
            (Mapping::SealedPackages, Message::Binary(message)) => {
                let len = message
                    .len()
                    .checked_sub(SEAL_TAG_LEN)
                    .ok_or(MappingError::Short(message.len()))?;
                let len = u16::try_from(len).map_err(|_| MappingError::TooLarge(message.len()))?;
                out.reserve(message.len() + 2);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(message);
            }
            (Mapping::Lines, Message::Binary(_)) => return Err(MappingError::WrongKind("binary")),
            (Mapping::Packages | Mapping::SealedPackages, Message::Text(_)) => {
                return Err(MappingError::WrongKind("text"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Takes the next complete unit (a line, a package) off the front of
    /// the TCP byte stream `buf` as the message that carries it; `None`
    /// while `buf` holds only the beginning of one. A line that is not
    /// UTF-8 cannot be a text message: `Err` with the line's length.
    pub fn outgoing(self, buf: &mut BytesMut) -> Result<Option<Message>, usize> {
        match self {
            Mapping::Lines => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    return Ok(None);
                };
                let line = buf.split_to(end).freeze();
                buf.advance(1);
                Utf8Bytes::try_from(line)
                    .map(|text| Some(Message::Text(text)))
                    .map_err(|_| end)
            }
            Mapping::Packages | Mapping::SealedPackages => {
                let Some(len) = self.unit_len(buf) else {
                    return Ok(None);
                };
                buf.advance(2);
                Ok(Some(Message::Binary(buf.split_to(len - 2).freeze())))
            }
        }
    }

    /// The length of the package at the front of `buf` (header included),
    /// if it is all there.
    fn unit_len(self, buf: &[u8]) -> Option<usize> {
        let header = buf.get(..2)?;
        let tag = if self == Mapping::SealedPackages {
            SEAL_TAG_LEN
        } else {
            0
        };
        let len = 2 + usize::from(u16::from_be_bytes([header[0], header[1]])) + tag;
        (buf.len() >= len).then_some(len)
    }

    /// Whether `buf` begins with a complete unit (what
    /// [`Mapping::outgoing`] would take).
    pub fn has_unit(self, buf: &[u8]) -> bool {
        match self {
            Mapping::Lines => buf.contains(&b'\n'),
            Mapping::Packages | Mapping::SealedPackages => self.unit_len(buf).is_some(),
        }
    }

    /// The largest message this mapping receives: a package payload, or a
    /// line of `max_line` bytes (LF included).
    pub fn max_message(self, max_line: usize) -> usize {
        match self {
            Mapping::Lines => max_line.saturating_sub(1),
            // A sealed package's message carries its tag too.
            Mapping::Packages | Mapping::SealedPackages => MAX_PAYLOAD + SEAL_TAG_LEN,
        }
    }
}

/// A WebSocket connection seen as the TCP protocol's byte stream (see the
/// module docs): reads give the lines or packages the messages carry,
/// writes are cut into messages at each complete line or package.
///
/// Reads also drive writes still queued (and the automatic pong and close
/// replies), so a writer that does not flush, such as `write_all` followed
/// by a read, still gets its bytes out. A message that breaks the mapping
/// fails the read with [`io::ErrorKind::InvalidData`]; the close frame a
/// later [`AsyncWrite::poll_shutdown`] sends then carries the matching
/// code (see [`MappingError::close_code`], [`close_code_of`]); otherwise
/// it is 1000.
#[derive(Debug)]
pub struct MessageStream<S> {
    ws: WebSocketStream<S>,
    mapping: Mapping,
    /// Mapped input not yet read.
    input: BytesMut,
    /// Written bytes not yet cut into messages (the tail is a partial unit).
    output: BytesMut,
    /// The peer's close (or the end of the stream) was seen.
    eof: bool,
    /// A read error not yet reported (input before it is read first).
    failed: Option<io::Error>,
    /// The close code the shutdown sends.
    close: (u16, &'static str),
    close_sent: bool,
    /// [`Mapping::SealedPackages`]: no data message has been received yet
    /// (the first is plain).
    plain_in: bool,
    /// The same for sending.
    plain_out: bool,
}

impl<S> MessageStream<S> {
    /// Wraps an upgraded connection.
    pub fn new(ws: WebSocketStream<S>, mapping: Mapping) -> MessageStream<S> {
        MessageStream {
            ws,
            mapping,
            input: BytesMut::new(),
            output: BytesMut::new(),
            eof: false,
            failed: None,
            close: (1000, ""),
            close_sent: false,
            plain_in: mapping == Mapping::SealedPackages,
            plain_out: mapping == Mapping::SealedPackages,
        }
    }

    /// The mapping of the next data message received.
    fn mapping_in(&self) -> Mapping {
        if self.plain_in {
            Mapping::Packages
        } else {
            self.mapping
        }
    }

    /// The mapping of the next unit sent.
    fn mapping_out(&self) -> Mapping {
        if self.plain_out {
            Mapping::Packages
        } else {
            self.mapping
        }
    }

    /// The WebSocket connection inside.
    pub fn get_ref(&self) -> &WebSocketStream<S> {
        &self.ws
    }
}

/// The close code (and reason) for a WebSocket error of the peer's: 1009
/// for a message or frame over the limit, 1007 for a text message that is
/// not UTF-8, 1002 for the rest (RFC 6455 §7.4.1).
pub fn close_code_of(e: &tungstenite::Error) -> (u16, &'static str) {
    match e {
        tungstenite::Error::Capacity(_) => (1009, "message too big"),
        tungstenite::Error::Utf8(_) => (1007, "text is not UTF-8"),
        _ => (1002, "protocol error"),
    }
}

/// The `io::Error` for a WebSocket error.
pub fn io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::BrokenPipe.into()
        }
        tungstenite::Error::Capacity(e) => io::Error::new(io::ErrorKind::InvalidData, e),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> MessageStream<S> {
    /// Sends every complete unit written so far, as far as the WebSocket
    /// takes messages now.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.mapping_out().has_unit(&self.output) {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
            match self.mapping_out().outgoing(&mut self.output) {
                Ok(Some(message)) => {
                    self.plain_out = false;
                    Pin::new(&mut self.ws)
                        .start_send(message)
                        .map_err(io_error)?;
                }
                Ok(None) => break,
                Err(len) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("a line of {len} bytes is not UTF-8"),
                    )));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MessageStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Get queued writes out; a full socket does not stop reading.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        let _ = Pin::new(&mut this.ws).poll_flush(cx);
        // Every message already received, as far as the caller has room:
        // a reader gets a batch in one read, as from a socket.
        while !this.eof && this.failed.is_none() && this.input.len() < buf.remaining() {
            let Poll::Ready(next) = Pin::new(&mut this.ws).poll_next(cx) else {
                break;
            };
            match next {
                None | Some(Ok(Message::Close(_))) => this.eof = true,
                Some(Ok(message)) => {
                    let mapping = this.mapping_in();
                    if message.is_binary() || message.is_text() {
                        this.plain_in = false;
                    }
                    if let Err(e) = mapping.incoming(&message, &mut this.input) {
                        this.close = (e.close_code(), "message breaks the mapping");
                        this.failed = Some(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                Some(Err(e)) => {
                    this.close = close_code_of(&e);
                    this.failed = Some(io_error(e));
                }
            }
        }
        if !this.input.is_empty() {
            let n = this.input.len().min(buf.remaining());
            buf.put_slice(&this.input[..n]);
            this.input.advance(n);
            return Poll::Ready(Ok(()));
        }
        // What came before a failure was read first.
        if let Some(e) = this.failed.take() {
            this.eof = true;
            return Poll::Ready(Err(e));
        }
        if this.eof {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MessageStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        // After a send, `output` holds at most one partial unit; a line
        // may not grow past what a message can carry.
        if this.mapping == Mapping::Lines
            && this.output.len() + data.len() > MAX_PAYLOAD
            && !data.contains(&b'\n')
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "line longer than a message may be",
            )));
        }
        this.output.extend_from_slice(data);
        // Start sending now; what the socket does not take waits for the
        // next write, flush or read.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        let _ = Pin::new(&mut this.ws).poll_flush(cx);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.poll_send(cx))?;
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io_error)?;
            let (code, reason) = this.close;
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: Utf8Bytes::from_static(reason),
            };
            Pin::new(&mut this.ws)
                .start_send(Message::Close(Some(frame)))
                .map_err(io_error)?;
            this.close_sent = true;
        }
        match ready!(Pin::new(&mut this.ws).poll_flush(cx)) {
            // The peer closed first: its close was answered already.
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn lines_map_both_ways() {
        let mut out = BytesMut::new();
        Mapping::Lines
            .incoming(&Message::text("aGVsbG8="), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"aGVsbG8=\n");
        assert_eq!(
            Mapping::Lines.incoming(&Message::text("a\nb"), &mut out),
            Err(MappingError::LineFeed)
        );
        assert_eq!(
            Mapping::Lines.incoming(&Message::binary(&b"x"[..]), &mut out),
            Err(MappingError::WrongKind("binary"))
        );
        Mapping::Lines
            .incoming(&Message::Ping(Bytes::new()), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"aGVsbG8=\n");

        let mut wire = BytesMut::from(&b"200 MQ==\n# 1 2"[..]);
        assert_eq!(
            Mapping::Lines.outgoing(&mut wire),
            Ok(Some(Message::text("200 MQ==")))
        );
        assert_eq!(Mapping::Lines.outgoing(&mut wire), Ok(None));
        assert_eq!(&wire[..], b"# 1 2");
        let mut bad = BytesMut::from(&b"\xff\n"[..]);
        assert_eq!(Mapping::Lines.outgoing(&mut bad), Err(1));
    }

    #[test]
    fn packages_map_both_ways() {
        let mut out = BytesMut::new();
        Mapping::Packages
            .incoming(&Message::binary(&b"abc"[..]), &mut out)
            .unwrap();
        Mapping::Packages
            .incoming(&Message::binary(Bytes::new()), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"\x00\x03abc\x00\x00");
        let big = Message::binary(vec![0u8; MAX_PAYLOAD + 1]);
        assert_eq!(
            Mapping::Packages.incoming(&big, &mut out),
            Err(MappingError::TooLarge(MAX_PAYLOAD + 1))
        );
        assert_eq!(
            Mapping::Packages
                .incoming(&Message::text("x"), &mut out)
                .map_err(MappingError::close_code),
            Err(1003)
        );

        assert_eq!(
            Mapping::Packages.outgoing(&mut out),
            Ok(Some(Message::binary(&b"abc"[..])))
        );
        assert_eq!(
            Mapping::Packages.outgoing(&mut out),
            Ok(Some(Message::binary(Bytes::new())))
        );
        let mut partial = BytesMut::from(&b"\x00\x05ab"[..]);
        assert_eq!(Mapping::Packages.outgoing(&mut partial), Ok(None));
        assert_eq!(partial.len(), 4);
    }
}
